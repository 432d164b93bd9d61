"""Preconditioned sharpness of adaptive methods (Cohen et al. 2022; docs/science.md#adaptive-sharpness):
the curvature
probe's λ_max(P⁻¹H) against the dense float64 oracle with Adam's P recomputed by hand from the
optax state, the preconditioner read from optax transforms, and the threshold formula."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import regression_dataset
from jax.flatten_util import ravel_pytree

import sgdreg
from sgdreg import curvature as cv
from sgdreg.probes import CurvatureProbe, ProbeContext, adaptive_preconditioner

F64 = jnp.float64


def tanh_mlp(key=0):
    return eqx.nn.MLP(5, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(key), dtype=F64)


def adam_state_by_hand(opt_state):
    """The one ScaleByAdamState in the tree (searched without the library's helper)."""
    found = []

    def visit(node):
        if isinstance(node, optax.ScaleByAdamState):
            found.append(node)
        elif isinstance(node, (tuple, list)):
            for c in node:
                visit(c)
        elif hasattr(node, "inner_state"):
            visit(node.inner_state)

    visit(opt_state)
    assert len(found) == 1
    return found[0]


PROBE = dict(num_probes=2, lanczos_steps=40, top_k=1, lambda_min_max_steps=0)


@pytest.fixture(scope="module")
def adam_run():
    """Full-batch Adam (the preset) at h = 0.01 for 10 steps, curvature probe every 5 steps."""
    return sgdreg.run(tanh_mlp(), regression_dataset(), "adam", loss="mse", lr=0.01, steps=10,
                      log_every=5, batch_size=None, probes=[CurvatureProbe(5, **PROBE)])


def test_probe_preconditioned_sharpness_matches_dense_oracle(adam_run):
    """Full-batch Adam (the preset: b1 = 0.9 traced from momentum, b2 = 0.999, ε = 1e-8), 10
    steps, float64 tanh MLP (57 parameters): the probe's λ_max(P^{-1/2}HP^{-1/2}) equals the top
    eigenvalue of the dense float64 matrix with P = √(ν/(1 − 0.999^count)) + 1e-8 recomputed by
    hand from the optax state, and the top (real) eigenvalue of the non-symmetric P⁻¹H; converged;
    threshold 38/h; nothing recorded at step 0 (no update yet)."""
    res, h, steps = adam_run, 0.01, 10
    m = res.trace["metrics"]
    assert m["step"] == [0, 5, 10]
    assert m["preconditioned_sharpness"][0] is None  # count 0: no preconditioner yet
    assert "λ_max(P⁻¹H)" in res.trace["probes"]["curvature"]["preconditioned_sharpness"]

    st = adam_state_by_hand(res.final.opt_state)
    assert int(st.count) == steps
    nu = ravel_pytree(st.nu)[0]
    p = np.sqrt(np.asarray(nu) / (1 - 0.999**steps)) + 1e-8
    obj, d = res.setup.problem.objective, res.setup.data
    hess = np.asarray(cv.dense_hessian(obj.example_loss, res.final.params, d.x_train, d.y_train))
    assert hess.shape == (57, 57)
    sym = hess / np.sqrt(p)[:, None] / np.sqrt(p)[None, :]
    exact = np.linalg.eigvalsh(sym)[-1]
    nonsym = np.linalg.eigvals(hess / p[:, None])
    top = nonsym[np.argmax(nonsym.real)]
    got = m["preconditioned_sharpness"][-1]
    print(f"probe {got:.12g} dense P^-1/2HP^-1/2 {exact:.12g} eig(P^-1H) {top:.12g} "
          f"λ_max(H) {m['lambda_max'][-1]:.6g}")
    assert abs(top.imag) < 1e-8 * abs(top.real)
    np.testing.assert_allclose(top.real, exact, rtol=1e-9)
    np.testing.assert_allclose(got, exact, rtol=1e-9)
    assert m["preconditioned_sharpness_converged"][-1] is True
    assert m["preconditioned_sharpness_residual"][-1] <= 1e-6 * exact
    assert not np.isclose(got, m["lambda_max"][-1], rtol=1e-2)  # P really preconditions
    np.testing.assert_allclose(m["preconditioned_eos_threshold"][-1], 38 / h, rtol=1e-12)


def test_probe_records_nothing_preconditioned_for_gd_and_sgd(adam_run):
    """The curvature probe on the same θ and data with the dynamics and optimizer state of the
    gd and sgd presets (injected optax.sgd, after 3 updates), or with no
    optimizer state (a loaded checkpoint): λ_max as usual, no preconditioned_* metric."""
    res = adam_run
    params = res.final.params
    for name, b in (("gd", None), ("sgd", 10)):
        dyn = sgdreg.named(name, batch_size=b)
        problem = eqx.tree_at(lambda p: p.dynamics, res.setup.problem, dyn)
        state = _updated(dyn.transform, params)[0]
        for opt_state in (state, None) if name == "gd" else (state,):
            ctx = ProbeContext(problem, res.setup.data, 0.05, 3, jax.random.key(0), {},
                               opt_state=opt_state)
            out = CurvatureProbe(1, **PROBE)(params, ctx)
            assert out["lambda_max"] > 0
            assert not [k for k in out if k.startswith("preconditioned")], name
    for name in ("momentum", "nesterov"):
        tx = sgdreg.named(name).transform
        assert adaptive_preconditioner(tx, _updated(tx, params)[0], 0.05) is None


def _updated(tx, params, steps=3, seed=0):
    """``steps`` optax updates with random gradients; the final state."""
    state = tx.init(params)
    for k in range(steps):
        key = jax.random.key(seed + k)
        g = jax.tree.map(lambda a, key=key: jax.random.normal(key, a.shape, a.dtype), params)
        _, state = tx.update(g, state, params)
    return state, g


PARAMS = {"a": jnp.linspace(0.1, 1.0, 4, dtype=F64), "b": jnp.ones((2, 3), F64)}


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _nu(state, cls):
    leaves = jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, cls))
    return _flat(next(n for n in leaves if isinstance(n, cls)).nu)


@pytest.mark.parametrize("make, b1, b2, eps, eps_root, h", [
    (lambda: optax.adam(0.01), 0.9, 0.999, 1e-8, 0.0, 0.01),
    (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.02, b1=0.95, eps=1e-4,
                                                  eps_root=1e-6), 0.95, 0.999, 1e-4, 1e-6, 0.02),
    (lambda: optax.chain(optax.scale_by_adam(b1=0.8, b2=0.99, eps=1e-3), optax.scale(-0.005)),
     0.8, 0.99, 1e-3, 0.0, 0.005),
])
def test_adam_preconditioner_from_optax_state(make, b1, b2, eps, eps_root, h):
    """Adam as optax.adam, inside inject_hyperparams, as a chain: P = √(ν/(1 − b2^t) + eps_root)
    + eps with t the update count, threshold (2 + 2β1)/((1 − β1)h), all read from the transform."""
    tx = make()
    state, _ = _updated(tx, PARAMS, steps=3)
    pre = adaptive_preconditioner(tx, state)
    nu = _nu(state, optax.ScaleByAdamState)
    expect = np.sqrt(nu / (1 - b2**3) + eps_root) + eps
    assert pre.method == "adam" and pre.detail["count"] == 3
    np.testing.assert_allclose(_flat(pre.diag), expect, rtol=1e-12)
    np.testing.assert_allclose(pre.threshold, (2 + 2 * b1) / ((1 - b1) * h), rtol=1e-12)
    assert adaptive_preconditioner(tx, tx.init(PARAMS)) is None  # before the first update


def test_rmsprop_preconditioner_and_unsupported_transforms():
    """RMSProp: P = √(ν + eps) (eps_in_sqrt) or √ν̂ + eps with bias correction, threshold 2/h,
    2(1+β)/h with heavy-ball momentum β; AdamW (weight decay) and Nadam: P but no threshold;
    nothing for clipping, Yogi and centered RMSProp."""
    tx = optax.rmsprop(0.01, decay=0.9, eps=1e-6)
    state, _ = _updated(tx, PARAMS)
    pre = adaptive_preconditioner(tx, state)
    nu = _flat(state[0].nu)
    np.testing.assert_allclose(_flat(pre.diag), np.sqrt(nu + 1e-6), rtol=1e-12)
    assert pre.method == "rmsprop" and pre.threshold == pytest.approx(2 / 0.01, rel=1e-12)

    tx = optax.rmsprop(0.01, decay=0.9, eps=1e-6, eps_in_sqrt=False, bias_correction=True,
                       momentum=0.5)
    state, _ = _updated(tx, PARAMS)
    pre = adaptive_preconditioner(tx, state)
    np.testing.assert_allclose(_flat(pre.diag), np.sqrt(_flat(state[0].nu) / (1 - 0.9**3)) + 1e-6,
                               rtol=1e-12)
    assert pre.threshold == pytest.approx(2 * 1.5 / 0.01, rel=1e-12)

    for tx in (optax.adamw(0.01, weight_decay=1e-2), optax.nadam(0.01)):
        pre = adaptive_preconditioner(tx, _updated(tx, PARAMS)[0])
        assert pre is not None and pre.method == "adam" and pre.threshold is None
    for tx in (optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01)), optax.yogi(0.01),
               optax.rmsprop(0.01, centered=True)):  # Yogi's state is a ScaleByAdamState too
        assert adaptive_preconditioner(tx, _updated(tx, PARAMS, steps=1)[0]) is None, tx


def test_curvature_preconditioned_sharpness_on_explicit_matrix():
    """``curvature.preconditioned_sharpness`` on v ↦ Av (random symmetric indefinite A, 30×30)
    with a positive diagonal P: the top eigenvalue of P^{-1/2}AP^{-1/2} (numpy), converged."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 30))
    a = a + a.T
    p = rng.uniform(0.1, 2.0, 30)
    res = cv.preconditioned_sharpness(lambda v: jnp.asarray(a) @ v, jnp.asarray(p), 30,
                                      key=jax.random.key(1))
    exact = np.linalg.eigvalsh(a / np.sqrt(np.outer(p, p)))[-1]
    np.testing.assert_allclose(res.eigenvalues[0], exact, rtol=1e-10)
    assert bool(res.converged[0])


@pytest.mark.parametrize("b1", [0.0, 0.5, 0.9, 0.99])
def test_threshold_is_the_linear_stability_edge_of_adam(b1):
    """(2 + 2β1)/((1 − β1)h) is where Adam with a frozen preconditioner becomes unstable on the
    quadratic ½a x² in the P⁻¹-metric (a = eigenvalue of P⁻¹H): m ← β1 m + (1 − β1) a x,
    x ← x − h m; the companion matrix's spectral radius crosses 1 there (38/h at β1 = 0.9, 2/h
    at β1 = 0: RMSProp/GD)."""
    h = 0.01
    thr = (2 + 2 * b1) / ((1 - b1) * h)

    def radius(a):
        step = np.array([[1 - h * (1 - b1) * a, -h * b1], [(1 - b1) * a, b1]])  # (x, m)
        return max(abs(np.linalg.eigvals(step)))

    assert radius(thr * (1 - 1e-6)) < 1 < radius(thr * (1 + 1e-6))
    pre = adaptive_preconditioner(
        optax.inject_hyperparams(optax.adam)(learning_rate=h, b1=b1),
        _updated(optax.inject_hyperparams(optax.adam)(learning_rate=h, b1=b1), PARAMS)[0])
    assert pre.threshold == pytest.approx(thr, rel=1e-12)
    if b1 == 0.9:
        assert thr == pytest.approx(38 / h, rel=1e-12)
