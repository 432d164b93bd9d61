"""The SDE of SGD and SVAG (docs/science.md#sde-of-sgd) against exact oracles, float64."""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl
from jax.flatten_util import ravel_pytree
from scipy.integrate import quad_vec

from sgdreg import dynamics as dyn
from sgdreg import engine
from sgdreg.dynamics.sde import (
    SGDSDE,
    SVAG,
    diffusion_operator,
    increment_operator,
    noise_factor,
    svag_coefficients,
    svag_gradient,
    weighted_grad,
)
from sgdreg.errors import ConfigError, OptimizerError
from sgdreg.experiments import sde as ex


def _mlp_problem(n=7, d=3, seed=0):
    """A tiny tanh MLP regression: per-example loss, params pytree, data (float64)."""
    key = jax.random.key(seed)
    model = eqx.nn.MLP(d, 1, 4, 1, activation=jnp.tanh, key=key, dtype=jnp.float64)
    params, static = eqx.partition(model, eqx.is_array)
    rng = np.random.default_rng(seed)
    x, y = jnp.asarray(rng.normal(size=(n, d))), jnp.asarray(rng.normal(size=(n, 1)))

    def example_loss(p, xi, yi):
        return 0.5 * jnp.sum((eqx.combine(p, static)(xi) - yi) ** 2)

    return example_loss, params, x, y


def _per_example_grads(example_loss, params, x, y):
    g = jax.vmap(jax.grad(example_loss), (None, 0, 0))
    return np.asarray(jax.jit(lambda p: jax.vmap(lambda t: ravel_pytree(t)[0])(g(p, x, y)))(params))


def test_minibatch_covariance_factor_by_enumeration():
    """Cov of the mean gradient over all B-subsets (uniform, without replacement) equals
    (n−B)/(B(n−1))·Σ_1 with Σ_1 the 1/n per-example covariance."""
    loss, params, x, y = _mlp_problem()
    g = _per_example_grads(loss, params, x, y)
    n = len(g)
    sigma1 = np.cov(g.T, bias=True)
    for b in (1, 2, 3, n):
        means = np.array([g[list(s)].mean(0) for s in itertools.combinations(range(n), b)])
        exact = np.cov(means.T, bias=True)
        np.testing.assert_allclose(exact, noise_factor(n, b) * sigma1, atol=1e-13)
    with pytest.raises(ConfigError, match="batch_size"):
        noise_factor(n, n + 1)


def test_diffusion_operator_is_matrix_free_square_root():
    """D Dᵀ = h·Σ_B exactly, D built column by column from the matrix-free operator (ragged
    chunks); weighted_grad is Σ a_i ∇ℓ_i; the fused EM increment is −∇L·dt + D w."""
    loss, params, x, y = _mlp_problem()
    g = _per_example_grads(loss, params, x, y)
    n, h, b = len(g), 0.3, 2
    a = np.random.default_rng(1).normal(size=n)
    w, dt = jnp.asarray(a[::-1].copy()), 0.01

    @jax.jit
    def matrix_free(params):
        wg = ravel_pytree(weighted_grad(loss, params, x, y, jnp.asarray(a), chunk_size=3))[0]
        op = diffusion_operator(loss, params, x, y, h, b, chunk_size=3)
        cols = jax.vmap(lambda e: ravel_pytree(op.mv(e))[0])(jnp.eye(n))  # rows: D e_i
        inc = increment_operator(loss, params, x, y, h, b, chunk_size=3).mv((jnp.asarray(dt), w))
        return wg, cols, ravel_pytree(inc)[0]

    wg, cols, inc = matrix_free(params)
    np.testing.assert_allclose(wg, a @ g, atol=1e-13)
    d = np.asarray(cols).T  # P × n
    dense = h * noise_factor(n, b) * np.cov(g.T, bias=True)
    np.testing.assert_allclose(d @ d.T, dense, atol=1e-13)
    np.testing.assert_allclose(inc, -dt * g.mean(0) + d @ np.asarray(w),
                               atol=1e-13)


def test_svag_gradient_ell1_and_exact_moments():
    """ℓ = 1: g = g_B1 exactly. ℓ = 3: over all pairs of B-subsets, E g = ∇L and
    Cov g = ℓ·Σ_B (c₁ + c₂ = 1, c₁² + c₂² = ℓ)."""
    loss, params, x, y = _mlp_problem(n=5)
    g = _per_example_grads(loss, params, x, y)
    n, b = len(g), 2
    i1, i2 = jnp.array([0, 3]), jnp.array([1, 4])
    subsets = jnp.asarray(list(itertools.combinations(range(n), b)))
    pairs = jnp.asarray(list(itertools.product(range(len(subsets)), repeat=2)))

    @jax.jit
    def estimates(params):
        g1 = ravel_pytree(svag_gradient(loss, params, x, y, i1, i2, 1))[0]
        return g1, jax.vmap(lambda p: ravel_pytree(svag_gradient(
            loss, params, x, y, subsets[p[0]], subsets[p[1]], 3))[0])(pairs)

    g1, est = estimates(params)
    np.testing.assert_allclose(g1, g[[0, 3]].mean(0), rtol=0, atol=1e-15)
    for ell in (2, 7):
        c1, c2 = svag_coefficients(ell)
        assert math.isclose(c1 + c2, 1) and math.isclose(c1 ** 2 + c2 ** 2, ell)
    est = np.asarray(est)
    np.testing.assert_allclose(est.mean(0), g.mean(0), atol=1e-13)
    np.testing.assert_allclose(np.cov(est.T, bias=True),
                               3 * noise_factor(n, b) * np.cov(g.T, bias=True), atol=1e-12)


def _quad_state(d, a, x, theta0, h, key=0):
    n = x.shape[0]
    xj = jnp.asarray(x)
    data = dyn.Data(xj, jnp.zeros(n), xj, jnp.zeros(n))
    problem = engine.Problem(ex.QuadraticObjective(jnp.asarray(a)), d, 4096)
    hyper = dyn.Hyper(lr=jnp.asarray(h), momentum=jnp.asarray(0.0), egr=jnp.asarray(0.0))
    state = engine.init_state(problem, jnp.asarray(theta0, jnp.float64), hyper,
                              jax.random.key(key), jax.random.key(1), n)
    return problem, data, state


def test_svag_ell1_step_is_sgd_with_its_draws():
    """One SVAG step with ℓ = 1 is θ − h·g_B1 on the minibatch it draws (B distinct indices)."""
    a, x = ex.quadratic_problem([1.0, 2.0], 6, seed=3)
    d = SVAG(batch_size=3, amplification=1)
    problem, data, state = _quad_state(d, a, x, [0.5, -1.0], 0.1)
    new, _ = d.advance(state, problem, data, jnp.asarray(4, jnp.int32), 1)
    i1, _ = d.draws(state.data_key, jnp.asarray(4, jnp.int32), 0, 6)
    assert len(set(np.asarray(i1).tolist())) == 3
    th = np.array([0.5, -1.0])
    expect = th - 0.1 * (a @ th - x[np.asarray(i1)].mean(0))
    np.testing.assert_allclose(new.params, expect, atol=1e-15)
    assert int(new.step) == 5


def test_sde_stationary_covariance_lyapunov_vmap_freeze_chunking():
    """Quadratic with additive noise Σ_B: the SDE dynamics' covariance over 2000 vmapped paths at
    t = 3 (transient e^{−6}) solves AC + CA = hΣ_B within Monte Carlo error (EM at dt = 0.01,
    bias ≈ dt·a/2 < 1.3%). In the same vmapped program: a frozen run stays unchanged and 30 steps
    in one chunk equal 10 + 20 (the noise is keyed by the step, not the chunk)."""
    a, x = ex.quadratic_problem([1.0, 1.5, 2.5], 8, seed=0)
    h, b, paths = 0.1, 2, 2001
    sb = ex.minibatch_covariance(x, b)
    c = sl.solve_continuous_lyapunov(a, h * sb)
    np.testing.assert_allclose(a @ c + c @ a, h * sb, atol=1e-14)
    d = SGDSDE(batch_size=b, substeps=10)
    problem, data, state = _quad_state(d, a, x, np.zeros(3), h)
    keys = jax.random.key_data(jax.random.split(jax.random.key(7), paths))
    states = jax.vmap(lambda kd: eqx.tree_at(lambda s: s.data_key, state, kd))(keys)
    frozen = jnp.zeros(paths, jnp.int32).at[1:].set(-1)  # run 0 diverged at step 0
    states = eqx.tree_at(lambda s: (s.diverged_at, s.params), states,
                         (frozen, states.params.at[0].set(jnp.array([1.0, 2.0, 3.0]))))
    run = eqx.filter_jit(jax.vmap(lambda s, k0, k: d.advance(s, problem, data, k0, k)[0],
                                  (0, None, None)))
    i32 = lambda v: jnp.asarray(v, jnp.int32)
    one = run(states, i32(0), i32(30))
    two = run(run(states, i32(0), i32(10)), i32(10), i32(20))
    np.testing.assert_allclose(one.params, two.params, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(one.params[0], [1.0, 2.0, 3.0])
    assert int(one.step[0]) == 0 and np.all(np.asarray(one.step[1:]) == 30)
    assert not np.any(np.asarray(one.failed))
    th = np.asarray(one.params[1:])
    z, rel, rel_se = ex.covariance_z(th, c)
    assert np.abs(z).max() < 4.5, z
    assert rel < 3 * rel_se + 0.013, (rel, rel_se)
    assert np.abs(th.mean(0)).max() < 4.5 * np.sqrt(np.diag(c).max() / len(th))


def test_linear_sde_moments_closed_form():
    """Closed-form moments of dθ = −Aθdt + √S dW against quadrature of e^{−As}Se^{−As}."""
    a, x = ex.quadratic_problem([0.5, 1.0, 3.0], 6, seed=2)
    s = 0.2 * ex.minibatch_covariance(x, 2)
    th0, t = np.array([1.0, -2.0, 0.5]), 1.7
    m, c = ex.linear_sde_moments(a, s, th0, t)
    np.testing.assert_allclose(m, sl.expm(-a * t) @ th0, atol=1e-13)
    quad = quad_vec(lambda u: sl.expm(-a * u) @ s @ sl.expm(-a * u), 0, t, epsabs=1e-14)[0]
    np.testing.assert_allclose(c, quad, atol=1e-12)
    c_inf = ex.linear_sde_moments(a, s, th0, 60.0)[1]
    np.testing.assert_allclose(c_inf, sl.solve_continuous_lyapunov(a, s), atol=1e-13)


def test_svag_weak_error_order_exact_moments():
    """SVAG_ℓ's exact second moment (moment recursion) converges to the SDE's closed form with
    weak order 1 in 1/ℓ (Li, Malladi & Arora 2021)."""
    a, x = ex.quadratic_problem([1.0, 1.5, 2.5], 8, seed=0)
    sb, h, th0 = ex.minibatch_covariance(x, 2), 0.2, np.ones(3)
    f_sde = ex.second_moment(*ex.linear_sde_moments(a, h * sb, th0, 1.0))
    ells = [1, 2, 4, 8, 16]
    err = [abs(ex.second_moment(*ex.svag_linear_moments(a, sb, h, ell, th0, 5)) - f_sde)
           for ell in ells]
    assert all(e2 < e1 for e1, e2 in zip(err, err[1:]))
    assert abs(ex.fit_order(ells, err) - 1) < 0.05


def test_svag_monte_carlo_moments_match_recursion():
    """The SVAG dynamics over 4000 paths: mean and E‖θ‖² at t = 1 agree with the exact moment
    recursion of SVAG_ℓ (ℓ = 4) within 4 standard errors."""
    a, x = ex.quadratic_problem([1.0, 1.5, 2.5], 8, seed=0)
    sb, h, th0, paths = ex.minibatch_covariance(x, 2), 0.2, np.ones(3), 4000
    m, c = ex.svag_linear_moments(a, sb, h, 4, th0, 5)
    th = ex.quadratic_paths(SVAG(batch_size=2, amplification=4), a, x, th0, h, 5, paths, seed=3)
    assert np.all(np.abs(th.mean(0) - m) < 4 * np.sqrt(np.diag(c) / paths))
    f = np.sum(th ** 2, axis=1)
    assert abs(f.mean() - ex.second_moment(m, c)) < 4 * f.std() / math.sqrt(paths)


def test_constructor_errors():
    with pytest.raises(OptimizerError, match="batch_size"):
        SGDSDE(batch_size=0)
    with pytest.raises(OptimizerError, match="substeps"):
        SGDSDE(substeps=0)
    with pytest.raises(OptimizerError, match="amplification"):
        SVAG(amplification=0)
    assert SVAG().describe()["amplification"] == 8 and SGDSDE().name == "sde"


@pytest.mark.slow
def test_svag_weak_order_monte_carlo():
    """The SVAG dynamics' Monte Carlo weak error against the closed-form SDE second moment over
    ℓ = 1, 2, 4, 8 (20000 paths each) has order ≈ 1 in 1/ℓ."""
    q = ex.quadratic_part(stationary_paths=2000, ells=(1, 2, 4, 8), exact_ells=(1, 2, 4, 8),
                          mc_paths=20000)
    w = q["weak"]
    assert abs(w["exact_order"] - 1) < 0.05
    assert 0.8 < w["mc_order"] < 1.2, w
    for e, m, s in zip(w["ells"], w["mc_error"], w["mc_se"]):
        exact = w["exact_error"][w["exact_ells"].index(e)]
        assert abs(abs(m) - exact) < 4 * s


@pytest.mark.slow
def test_sweep_matches_single_runs(tmp_path):
    """``sde`` and ``svag`` by name through ``train`` and vmapped/sharded in ``run_sweep``: the
    same losses (up to float reassociation)."""
    import json

    import sgdreg
    from sgdreg.config import RunConfig

    cfgs = [RunConfig(dataset="digits", n_train=64, width=8, optimizer=o, lr=lr, batch_size=8,
                      steps=10, log_every=5, dtype="float64", svag_amplification=3)
            for o in ("sde", "svag") for lr in (0.05, 0.1)]
    sgdreg.run_sweep(cfgs, tmp_path)
    for f, c in zip(sorted((tmp_path / "traces").glob("*.json")), cfgs):
        swept = json.loads(f.read_text())["metrics"]["train_loss"]
        single = sgdreg.train(c).trace
        assert single["status"] == "completed"
        np.testing.assert_allclose(swept, single["metrics"]["train_loss"], rtol=1e-10)


@pytest.mark.slow
def test_experiment_and_figure(tmp_path):
    """A tiny ``run_sde_svag`` stores its results and the figure renders from them alone."""
    from sgdreg.plotting.sde import render_sde_svag

    ex.run_sde_svag(quadratic=dict(stationary_paths=200, stationary_time=1.0, ells=(1, 2),
                                   exact_ells=(1, 2, 4), mc_paths=200, sde_substeps=2),
                    network=dict(n_train=32, width=4, steps=4, log_every=2, paths=2, ells=(1, 2),
                                 sde_substeps=2), out_dir=tmp_path)
    out = render_sde_svag(tmp_path, tmp_path / "sde_svag.png")
    assert all(p.exists() for p in out) and len(out) == 2
