"""Value tests of the update rules and of `sgdreg hessian`: each preset dynamics against its
formula written out by hand, and the CLI's curvature numbers against a dense Hessian.

Float64 (``jax_enable_x64`` is on for the whole test session, tests/conftest.py), full batch, a
tiny 1-hidden-layer tanh net on 12 examples. The reference gradient comes from ``jax.grad`` of
the loss written here, L(θ) = (1/n) Σ_i ½‖f_θ(x_i) − y_i‖² (``losses.MSE``), so a wrong formula
in the package's loss, gradient, EGR term or optimizer wiring shows up as a mismatch.
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sgdreg

N, D, WIDTH = 12, 3, 4
LR, BETA, STEPS = 0.05, 0.7, 3
TOL = 1e-12


@pytest.fixture(scope="module")
def problem():
    """(model, data, θ0 flat, unravel, L(θ flat), x, y): float64 throughout."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N + 4, D))
    y = np.sin(x @ rng.normal(size=(D, 1))) + 0.1 * rng.normal(size=(N + 4, 1))
    data = (x[:N], y[:N], x[N:], y[N:])
    model = eqx.nn.MLP(D, 1, WIDTH, 1, activation=jnp.tanh, key=jax.random.key(3),
                       dtype=jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat0, unravel = ravel_pytree(params)
    assert flat0.dtype == jnp.float64
    xj, yj = jnp.asarray(x[:N]), jnp.asarray(y[:N])

    def loss_at(flat, targets=yj):
        m = eqx.combine(unravel(flat), static)
        out = jax.vmap(m)(xj)
        return jnp.mean(0.5 * jnp.sum((out - targets) ** 2, axis=-1))

    return model, data, np.asarray(flat0), unravel, loss_at, xj, yj


def _flat(model) -> np.ndarray:
    return np.asarray(ravel_pytree(eqx.filter(model, eqx.is_inexact_array))[0])


def _run(problem, optimizer, **kw):
    model, data = problem[0], problem[1]
    return sgdreg.run(model, data, optimizer, lr=LR, momentum=BETA, steps=STEPS, log_every=1,
                      loss="mse", **kw)


def _check(res, ref_thetas, loss_at):
    """Final θ and every logged train loss (steps 0..STEPS) against the reference path."""
    np.testing.assert_allclose(_flat(res.model), ref_thetas[-1], rtol=0, atol=TOL)
    losses = [float(loss_at(jnp.asarray(t))) for t in ref_thetas]
    assert res.trace["metrics"]["step"] == list(range(STEPS + 1))
    np.testing.assert_allclose(res.trace["metrics"]["train_loss"], losses, rtol=1e-12, atol=0)


def _grad(loss_at):
    g = jax.jit(jax.grad(loss_at))
    return lambda t: np.asarray(g(jnp.asarray(t)))


@pytest.fixture(scope="module")
def gd_path(problem):
    """θ0, θ1, …: θ ← θ − h∇L."""
    theta, loss_at = problem[2], problem[4]
    g = _grad(loss_at)
    path = [theta]
    for _ in range(STEPS):
        path.append(path[-1] - LR * g(path[-1]))
    return path


def test_gd_is_theta_minus_h_grad(problem, gd_path):
    _check(_run(problem, "gd"), gd_path, problem[4])


def test_heavy_ball_momentum(problem):
    """v ← βv + g, θ ← θ − h·v (optax/PyTorch convention, v0 = 0)."""
    theta, loss_at = problem[2], problem[4]
    g = _grad(loss_at)
    path, v = [theta], np.zeros_like(theta)
    for _ in range(STEPS):
        v = BETA * v + g(path[-1])
        path.append(path[-1] - LR * v)
    _check(_run(problem, sgdreg.named("momentum")), path, loss_at)


def test_nesterov(problem):
    """v ← βv + g, θ ← θ − h·(βv + g) (optax's Nesterov, v0 = 0)."""
    theta, loss_at = problem[2], problem[4]
    g = _grad(loss_at)
    path, v = [theta], np.zeros_like(theta)
    for _ in range(STEPS):
        gt = g(path[-1])
        v = BETA * v + gt
        path.append(path[-1] - LR * (BETA * v + gt))
    _check(_run(problem, sgdreg.named("nesterov")), path, loss_at)


def test_adam_bias_corrected(problem):
    """m ← b1 m + (1−b1) g, s ← b2 s + (1−b2) g², θ ← θ − h·m̂/(√ŝ + ε), m̂ = m/(1−b1ᵗ),
    ŝ = s/(1−b2ᵗ); b1 = ``momentum``, b2 = 0.999, ε = 1e-8."""
    theta, loss_at = problem[2], problem[4]
    g = _grad(loss_at)
    b1, b2, eps = BETA, 0.999, 1e-8
    path, m, s = [theta], np.zeros_like(theta), np.zeros_like(theta)
    for t in range(1, STEPS + 1):
        gt = g(path[-1])
        m = b1 * m + (1 - b1) * gt
        s = b2 * s + (1 - b2) * gt**2
        mh, sh = m / (1 - b1**t), s / (1 - b2**t)
        path.append(path[-1] - LR * mh / (np.sqrt(sh) + eps))
    _check(_run(problem, sgdreg.named("adam")), path, loss_at)


def test_egr_trains_on_loss_plus_mu_grad_norm_sq(problem, gd_path):
    """GD on L + μ‖∇L‖²: θ ← θ − h(g + 2μ·Hg), H the dense Hessian of the hand-written L; the
    same as GD on the explicitly regularised loss (jax.grad of L + μ‖∇L‖²)."""
    theta, loss_at = problem[2], problem[4]
    mu = 0.3
    g, hess = _grad(loss_at), jax.jit(jax.hessian(loss_at))
    path = [theta]
    for _ in range(STEPS):
        gt = g(path[-1])
        H = np.asarray(hess(jnp.asarray(path[-1])))
        path.append(path[-1] - LR * (gt + 2 * mu * H @ gt))
    reg = jax.jit(jax.grad(lambda t: loss_at(t) + mu * jnp.sum(jax.grad(loss_at)(t) ** 2)))
    alt = [theta]
    for _ in range(STEPS):
        alt.append(alt[-1] - LR * np.asarray(reg(jnp.asarray(alt[-1]))))
    np.testing.assert_allclose(path[-1], alt[-1], rtol=0, atol=TOL)  # the reference itself
    res = _run(problem, "gd", egr=mu)
    _check(res, path, loss_at)  # train_loss logs L itself, not the regularised objective
    assert np.max(np.abs(path[-1] - gd_path[-1])) > 1e-4  # μ made a difference


def test_label_noise_off_is_gd_and_on_trains_on_y_plus_delta_eps(problem, gd_path):
    """δ = 0 of the label-noise dynamics is GD exactly; δ > 0 trains step k on ỹ = y + δ·ε_k,
    ε_k ~ N(0, I) from the key fold_in(fold_in(model key, 0x1AB1), k), model key the third of
    split(key(seed), 3)."""
    theta, loss_at, yj = problem[2], problem[4], problem[6]
    noisy_gd = sgdreg.named("gd", label_noise=True)  # one dynamics (one compilation) for both
    _check(_run(problem, noisy_gd, label_noise=0.0), gd_path, loss_at)

    delta, seed = 0.5, 0
    k_model = jax.random.split(jax.random.key(seed), 3)[2]
    stream = jax.random.fold_in(k_model, 0x1AB1)
    grad_at = jax.jit(jax.grad(loss_at))  # (θ, targets)
    path = [theta]
    for k in range(STEPS):
        eps = jax.random.normal(jax.random.fold_in(stream, k), yj.shape, yj.dtype)
        path.append(path[-1] - LR * np.asarray(grad_at(jnp.asarray(path[-1]), yj + delta * eps)))
    res = _run(problem, noisy_gd, label_noise=delta, seed=seed)
    np.testing.assert_allclose(_flat(res.model), path[-1], rtol=0, atol=TOL)
    assert np.max(np.abs(path[-1] - gd_path[-1])) > 1e-3


# --------------------------------------------------------------------------- sgdreg hessian


def test_hessian_command_matches_dense_eigvalsh(tmp_path, capsys):
    """`sgdreg hessian --json` on a float64 checkpoint against the dense Hessian of the mean MSE
    loss on the same training examples: λ_max and the top-k to 1e-6 of ‖H‖ (numpy eigvalsh),
    tr H and the per-layer traces within 4 stderr of the (block) diagonal sums."""
    from sgdreg_cli.main import main

    from sgdreg.config import RunConfig
    from sgdreg.models import make_model
    from sgdreg.training import load_data

    # a preset model and its config in a checkpoint, as `sgdreg train --save-checkpoint` writes
    # one (θ0 of the preset: training it first would only add a compilation)
    cfg = RunConfig(dataset="teacher", model="mlp", activation="tanh", width=3, loss="mse",
                    n_train=20, optimizer="gd", dtype="float64")
    ds0 = load_data(cfg)
    ck = tmp_path / "tiny.eqx"
    sgdreg.save_model(ck, make_model("mlp", ds0.input_shape, ds0.out_size, key=jax.random.key(1),
                                     width=3, activation="tanh", dtype=jnp.float64), cfg, ds0)
    capsys.readouterr()
    top_k = 3
    assert main(["hessian", str(ck), "--probes", "200", "--lanczos-steps", "40", "--top-k",
                 str(top_k), "--slq-starts", "1", "--lambda-min-steps", "0",
                 "--out", str(tmp_path / "h"), "--json"]) == 0
    # (λ_min off: its adaptive Lanczos is one more compilation, ~2.5 s)
    res = json.loads(capsys.readouterr().out)

    model, cfg = sgdreg.load_model(ck)
    ds = load_data(cfg)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    assert x.dtype == jnp.float64 and x.shape[0] == 20
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def example_loss(p, xi, yi):
        return 0.5 * jnp.sum((eqx.combine(p, static)(xi) - yi.reshape(-1)) ** 2)

    H = np.asarray(sgdreg.dense_hessian(example_loss, params, x, y))
    assert H.dtype == np.float64 and H.shape[0] == ravel_pytree(params)[0].size
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    ev = np.linalg.eigvalsh(H)[::-1]
    scale = np.max(np.abs(ev))

    assert res["lambda_max_converged"] is True
    assert abs(res["lambda_max"] - ev[0]) <= 1e-6 * scale
    np.testing.assert_allclose(res["top_eigenvalues"], ev[:top_k], rtol=0, atol=1e-6 * scale)

    tr, se = res["hessian_trace"], res["hessian_trace_stderr"]
    assert 0 < se and abs(tr - np.trace(H)) <= 4 * se, (tr, se, np.trace(H))
    # per-layer traces: the diagonal blocks of H in the order of `layers`
    sizes = [sum(int(a.size) for a in jax.tree.leaves(getattr_path(params, name)))
             for name in res["layers"]]
    assert sum(sizes) == H.shape[0]
    diag, start = np.diag(H), 0
    for name, size, t, s in zip(res["layers"], sizes, res["layer_hessian_traces"],
                                res["layer_hessian_traces_stderr"]):
        block = diag[start:start + size].sum()
        start += size
        assert abs(t - block) <= 4 * s + 1e-12 * scale, (name, t, s, block)
    assert abs(sum(res["layer_hessian_traces"]) - tr) <= 1e-9 * max(1.0, abs(tr))


def getattr_path(tree, name: str):
    """The subtree at a ``keystr`` path such as ``layers[0]``."""
    node = tree
    for part in name.replace("]", "").replace("[", ".").split("."):
        if part:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node
