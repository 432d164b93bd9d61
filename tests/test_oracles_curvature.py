"""Exact oracles for curvature formulas that the estimator tests only bound statistically
(mutation testing, issue 17 item 1): brute force over minibatches, closed-form Gaussians,
hand sums, dense residuals of small explicit matrices (float64 throughout)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from sgdreg import curvature as cv


def test_minibatch_variance_expectation_by_enumerating_every_minibatch():
    """E over a random shuffle of (1/m)Σ_k‖ḡ_k − ḡ‖² is E over one uniform B-subset S of
    ‖mean_S g − ḡ‖² (each minibatch is one); enumerate all C(n, B) subsets."""
    rng = np.random.default_rng(0)
    n, dim = 7, 3
    g = rng.normal(size=(n, dim))
    gbar = g.mean(0)
    gamma = float(np.mean(np.sum((g - gbar) ** 2, axis=1)))  # Γ = (1/n)Σ‖g_i − ḡ‖²
    for b in (1, 2, 3, 5):
        devs = [np.sum((g[list(s)].mean(0) - gbar) ** 2) for s in itertools.combinations(range(n), b)]
        want = float(np.mean(devs))
        assert float(cv.minibatch_variance_expectation(gamma, n, b)) == pytest.approx(want, rel=1e-12)
        # and Γ̂ inverts it: E(1/m)Σ‖ḡ_k‖² = ‖ḡ‖² + E(1/m)Σ‖ḡ_k − ḡ‖²
        mean_sq = float(gbar @ gbar) + want
        est = float(cv.gradient_noise_from_minibatches(mean_sq, float(gbar @ gbar), n, b))
        assert est == pytest.approx(gamma, rel=1e-12)


def test_mean_stderr_and_trace_estimate_by_hand():
    q = jnp.asarray([1.0, 2.0, 4.0, 9.0])
    mean, se = cv._mean_stderr(q)
    assert float(mean) == 4.0
    assert float(se) == pytest.approx(math.sqrt(np.var([1, 2, 4, 9], ddof=1) / 4), rel=1e-14)
    blocks = jnp.asarray([[1.0, 0.0], [3.0, 2.0], [2.0, 7.0], [6.0, 3.0]])
    est = cv._trace_estimate(q, q**2, jnp.asarray([8.0, 4.0]), blocks)
    assert est.num_probes == 4 and float(est.estimate) == 4.0
    assert float(est.trace_sq) == pytest.approx(np.mean([1, 4, 16, 81]), rel=1e-14)
    np.testing.assert_allclose(np.asarray(est.diag), [2.0, 1.0], rtol=1e-14)  # Σ_k diag / K
    np.testing.assert_allclose(np.asarray(est.block_estimates), [3.0, 3.0], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(est.block_stderr), np.std(np.asarray(blocks), 0, ddof=1) / 2,
                               rtol=1e-14)


def test_slq_density_is_a_gaussian_mixture_and_moments_by_hand():
    sigma = 0.5
    nodes = jnp.asarray([[0.0, 2.0], [1.0, -1.0]])
    weights = jnp.asarray([[0.25, 0.75], [0.6, 0.4]])
    grid = jnp.asarray([0.0, 0.3, 2.0])
    pdf = lambda t, mu: math.exp(-0.5 * ((t - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    want = [sum(float(weights[v, j]) * pdf(float(t), float(nodes[v, j]))
                for v in range(2) for j in range(2)) / 2 for t in grid]
    np.testing.assert_allclose(np.asarray(cv.slq_density(nodes, weights, grid, sigma)), want, rtol=1e-13)
    fine = jnp.linspace(-6.0, 8.0, 4001)
    mass = float(jnp.sum(cv.slq_density(nodes, weights, fine, sigma)) * (fine[1] - fine[0]))
    assert mass == pytest.approx(1.0, abs=1e-6)  # a probability density
    dim = 10
    for p in (1, 2, 3):
        want = dim * np.mean([sum(float(weights[v, j]) * float(nodes[v, j]) ** p for j in range(2))
                              for v in range(2)])
        assert float(cv.slq_moment(nodes, weights, dim, p)) == pytest.approx(want, rel=1e-13)
    assert float(cv.slq_trace(nodes, weights, dim)) == pytest.approx(
        float(cv.slq_moment(nodes, weights, dim, 1)), rel=1e-15)


def _matrix(p=30, seed=3):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    lam = np.concatenate([[5.0, 4.0, -3.0], rng.uniform(-1, 1, p - 3)])
    a = (q * lam) @ q.T
    return a, Partial(jnp.matmul, jnp.asarray(a))


def test_lanczos_residuals_are_the_dense_residuals_before_convergence():
    """After m = 6 < P steps every Ritz pair (k = m) has residual |β_m s_{m,i}| = ‖Hy − θy‖ and
    is CONVERGED exactly when that is ≤ √eps·max|θ|."""
    a, mv = _matrix()
    r = cv.lanczos_eigs(mv, a.shape[0], 6, 6, key=jax.random.key(1))
    y, th = np.asarray(r.eigenvectors), np.asarray(r.eigenvalues)
    assert np.all(np.diff(th) <= 0)  # largest first
    dense = np.linalg.norm(y @ a - th[:, None] * y, axis=1)
    np.testing.assert_allclose(np.asarray(r.residuals), dense, rtol=1e-7, atol=1e-12)
    assert np.all(dense > 1e-6)  # 6 steps: not yet converged, so the check is not vacuous
    scale = np.max(np.abs(th))
    np.testing.assert_array_equal(np.asarray(r.converged), dense <= np.sqrt(np.finfo(float).eps) * scale)


@pytest.mark.slow  # ~20 s of CPU: one compilation per checked step count
def test_lanczos_adaptive_stops_at_the_first_converged_check():
    """num_steps is the first multiple of check_every at which the k wanted Ritz pairs of the
    same start have dense residual ≤ tol·max|θ| (lanczos_eigs of that many steps: same Krylov
    space), and the Ritz pairs returned are those."""
    a, mv = _matrix(16)
    p, c, tol, k = a.shape[0], 3, 1e-6, 1
    for which in ("largest", "smallest"):
        r = cv.lanczos_adaptive(mv, p, k, p, key=jax.random.key(2), which=which, tol=tol, check_every=c)
        n = int(r.num_steps)
        first = None
        for j in range(c, p + 1, c):
            e = cv.lanczos_eigs(mv, p, j, j, key=jax.random.key(2), which=which, tol=tol)  # all Ritz
            y, th = np.asarray(e.eigenvectors)[:k], np.asarray(e.eigenvalues)[:k]
            res = np.linalg.norm(y @ a - th[:, None] * y, axis=1)
            if np.all(res <= tol * np.max(np.abs(np.asarray(e.eigenvalues)))):
                first = j
                break
        assert first is not None and first < p and n == first, (which, n, first)
        want = np.linalg.eigvalsh(a)[:k] if which == "smallest" else np.linalg.eigvalsh(a)[::-1][:k]
        np.testing.assert_allclose(np.asarray(r.eigenvalues), want, rtol=1e-8)
        y = np.asarray(r.eigenvectors)
        dense = np.linalg.norm(y @ a - np.asarray(r.eigenvalues)[:, None] * y, axis=1)
        np.testing.assert_allclose(np.asarray(r.residuals), dense, rtol=1e-5, atol=1e-12)


def test_lanczos_adaptive_on_a_matrix_of_small_norm():
    """‖H‖ ≪ 1: the decoupled padding of the convergence checks (±2·(Gershgorin bound + 1)) must
    still lie outside H's spectrum, so the smallest Ritz value is H's, not a padding entry."""
    a, _ = _matrix(16)
    a = 0.01 * a
    r = cv.lanczos_adaptive(Partial(jnp.matmul, jnp.asarray(a)), 16, 1, 16, key=jax.random.key(2),
                            which="smallest", tol=1e-6, check_every=4)
    assert float(r.eigenvalues[0]) == pytest.approx(np.linalg.eigvalsh(a)[0], rel=1e-8)
