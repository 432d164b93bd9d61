"""Exact oracles for the kernel and random-feature formulas (mutation testing, issue 17 item 1):
dense solves, a second implementation of the Clopper–Pearson interval (binomial tail roots),
the Rahimi–Recht kernel limit of random Fourier features, hand-computed errors (numpy only)."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from sgdreg import double_descent as dd
from sgdreg import kernels as kn


def test_interpolants_are_the_dense_ridge_solves():
    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    Y1, Y2 = rng.normal(size=(6, 1)), rng.normal(size=(6, 3))
    reg, bw = 0.3, 1.7
    kfn = lambda A, B: kn.rbf_kernel(A, B, bw)
    K = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / (2 * bw**2))
    Kt = np.exp(-((Xt[:, None] - X[None]) ** 2).sum(-1) / (2 * bw**2))
    np.testing.assert_allclose(kfn(X, X), K, rtol=1e-13)
    for (alpha, train, test, norm), Y in zip(kn._interpolants(kfn, X, Xt, [Y1, Y2], reg), [Y1, Y2]):
        a = np.linalg.solve(K + reg * np.eye(6), Y)
        np.testing.assert_allclose(alpha, a, rtol=1e-10)
        np.testing.assert_allclose(train, K @ a, rtol=1e-10)
        np.testing.assert_allclose(test, Kt @ a, rtol=1e-10)
        assert norm == pytest.approx(math.sqrt(np.trace(a.T @ K @ a)), rel=1e-10)
    (_, _, empty, _), = kn._interpolants(kfn, X, Xt[:0], [Y2], reg)  # no test points
    assert empty.shape == (0, 3)
    lin = kn.linear_kernel(X, Xt)
    np.testing.assert_allclose(lin, X @ Xt.T, rtol=1e-13)


@pytest.mark.parametrize("k,n,level", [(0, 20, 0.95), (3, 20, 0.95), (7, 40, 0.9), (20, 20, 0.95)])
def test_error_interval_solves_the_binomial_tail_equations(k, n, level):
    """Clopper–Pearson: P(X ≥ k | p_lo) = α/2 and P(X ≤ k | p_hi) = α/2, solved by root-finding."""
    a = 1 - level
    lo = 0.0 if k == 0 else brentq(lambda p: binom.sf(k - 1, n, p) - a / 2, 1e-12, 1 - 1e-12, xtol=1e-14)
    hi = 1.0 if k == n else brentq(lambda p: binom.cdf(k, n, p) - a / 2, 1e-12, 1 - 1e-12, xtol=1e-14)
    got = kn.error_interval(k, n, level)
    np.testing.assert_allclose(got, (lo, hi), rtol=1e-8, atol=1e-12)


def test_prediction_error_and_target_matrix_by_hand():
    pred = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.6, 0.4]])
    assert kn.prediction_error(pred, np.array([1, 0, 0, 2]), 3) == 0.5
    np.testing.assert_array_equal(kn.target_matrix(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    reg_pred = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, 3.0]])
    y = np.array([[0.0, 2.0], [1.0, 1.0], [1.0, 2.0]])
    assert kn.prediction_error(reg_pred, y, 0) == pytest.approx((1 + 1 + 5) / 3, rel=1e-15)
    assert kn.prediction_error(reg_pred, y, 0, targets=np.zeros((3, 2))) == pytest.approx((5 + 1 + 18) / 3)
    assert kn.median_distance(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])) == pytest.approx(
        float(np.median([5.0, 1.0, math.sqrt(18)])))


def test_random_fourier_features_approach_the_gaussian_kernel():
    """E[φ(x)·φ(y)] summed over N features = exp(−‖x−y‖²/(2σ²)) (Rahimi & Recht 2007); the
    error at N features is O(1/√N): 4e-3 at N = 2·10⁵ here."""
    rng = np.random.default_rng(1)
    x, sigma = rng.normal(size=(4, 3)), 1.3
    phi = dd.random_fourier_features(x, 200_000, sigma, 0)
    np.testing.assert_allclose(phi @ phi.T, kn.rbf_kernel(x, x, sigma), atol=1.5e-2)
    assert np.allclose(np.sum(phi**2, 1), 1.0, atol=1.5e-2)  # k(x, x) = 1


def test_min_norm_rff_far_from_the_threshold_is_pinv():
    """N > 4n: the chunked QR path against numpy's pinv of the whole Φ."""
    rng = np.random.default_rng(2)
    n, d, N = 5, 3, 40
    x, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 2))
    V, b = dd._rff_params(d, N, 2.0, 3)
    phi = np.sqrt(2.0 / N) * np.cos(x @ V.T + b)
    np.testing.assert_allclose(dd._rff(x, V, b), phi, rtol=1e-14)
    np.testing.assert_allclose(dd.min_norm_rff(x, Y, V, b), np.linalg.pinv(phi) @ Y, rtol=1e-8, atol=1e-10)
    train, test, norm = dd._fit_rff(x, Y, x[:2], V, b, None)
    np.testing.assert_allclose(train, Y, atol=1e-9)  # interpolates (N > n)
    assert norm == pytest.approx(np.linalg.norm(np.linalg.pinv(phi) @ Y), rel=1e-8)


def test_effective_model_complexity_and_feature_grid_by_hand():
    assert dd.effective_model_complexity({10: 0.0, 20: 0.05, 40: 0.1, 80: 0.3}) == 40
    assert dd.effective_model_complexity({10: 0.2}) == 0
    assert dd.feature_grid(10, 0.5, 2.0, 3) == [5, 10, 20]
    rows = [{"N": 2, "seed": 0, "err": 0.5}, {"N": 2, "seed": 1, "err": 0.25},
            {"N": 1, "seed": 0, "err": 1.0}]
    assert dd.mean_over_seeds(rows) == [{"N": 1, "num_seeds": 1, "err": 1.0},
                                        {"N": 2, "num_seeds": 2, "err": 0.375}]
