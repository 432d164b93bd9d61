"""Exact oracles for probe formulas (mutation testing, issue 17 item 1): the EoS threshold of
RMSProp with Nesterov or heavy-ball momentum against the linear-stability edge of the update
on a quadratic (spectral radius of its 2×2 iteration matrix) and P against ν written by hand.
(The curvature probe's λ_max·‖θ‖² is checked against a dense Hessian in
tests/test_training.py::test_curvature_probe_in_training_matches_dense_hessian.)"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdreg import probes


def _radius(lam, h, beta, nesterov):
    """ρ of (x, m) ↦ (x − h·u, m') for L = ½λx², m' = βm + λx, u = m' (heavy ball) or
    λx + βm' (Nesterov, optax ``trace(nesterov=True)``)."""
    if nesterov:
        a = np.array([[1 - h * lam * (1 + beta), -h * beta**2], [lam, beta]])
    else:
        a = np.array([[1 - h * lam, -h * beta], [lam, beta]])
    return np.max(np.abs(np.linalg.eigvals(a)))


@pytest.mark.parametrize("beta,nesterov", [(None, False), (0.6, False), (0.6, True), (0.9, True)])
def test_rmsprop_threshold_is_the_linear_stability_edge(beta, nesterov):
    h, decay, eps = 0.02, 0.9, 1e-6
    kw = {} if beta is None else {"momentum": beta, "nesterov": nesterov}
    tx = optax.rmsprop(h, decay=decay, eps=eps, **kw)
    params = {"w": jnp.asarray([0.5, -2.0, 3.0])}
    state = tx.init(params)
    g = {"w": jnp.asarray([1.0, -0.5, 2.0])}
    _, state = tx.update(g, state, params)
    pre = probes.adaptive_preconditioner(tx, state)
    nu = (1 - decay) * np.asarray(g["w"]) ** 2
    np.testing.assert_allclose(np.asarray(pre.diag["w"]), np.sqrt(nu + eps), rtol=1e-12)
    thr = pre.threshold
    b = 0.0 if beta is None else beta
    assert _radius(thr * (1 - 1e-7), h, b, nesterov) < 1 < _radius(thr * (1 + 1e-7), h, b, nesterov)


def _least_squares(w, x, y):
    return 0.5 * (x @ w - y) ** 2


@pytest.mark.parametrize("steps, converged", [(4, False), (6, True)])
def test_lambda_max_converged_is_the_top_pairs_flag(steps, converged):
    """``lambda_max_converged`` is the flag of the top Ritz pair, ‖Hy − θy‖ ≤ √eps·max|θ|, not of
    another pair: H = XᵀX/n with eigenvalues 10 (isolated) and 11 clustered in [1, 1.3]; after 6
    Lanczos steps the top pair has converged while the second has not (its Ritz value is still
    off the cluster's edge 1.3 by more than the tolerance); after 4 the top pair has not."""
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    p = 12
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    ev = np.r_[10.0, np.linspace(1.0, 1.3, p - 1)]
    x = np.sqrt(p * ev)[:, None] * q.T  # XᵀX/p = q diag(ev) qᵀ
    out = probes._curvature(_least_squares, jnp.zeros(p), jnp.asarray(x), jnp.asarray(rng.normal(size=p)),
                            jax.random.key(0), jnp.zeros(p), num_probes=2, kind="rademacher",
                            lanczos_steps=steps, top_k=2, chunk=p, slq_starts=0,
                            lambda_min_max_steps=0, lambda_min_tol=1e-6)
    out = out[0] if isinstance(out, tuple) else out
    tol = np.sqrt(np.finfo(np.float64).eps) * 10.0
    second = float(out["top_eigenvalues"][1])
    assert abs(second - 1.3) > tol  # the second pair is unconverged in both cases
    assert float(out["lambda_max"]) == pytest.approx(10.0, rel=1e-6)
    assert bool(out["lambda_max_converged"]) is converged
    assert bool(float(out["lambda_max_residual"]) <= tol) is converged
