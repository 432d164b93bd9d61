"""Exact oracles for Theorem 1 expressivity, min-norm/kernel interpolation and RFF double descent."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from sgdreg import double_descent as dd
from sgdreg import kernels
from sgdreg.data import Dataset, split
from sgdreg.errors import ConfigError
from sgdreg.expressivity import expressivity_report, fit_two_layer_relu
from sgdreg.kernels import (
    error_interval,
    kernel_interpolate,
    linear_kernel,
    median_distance,
    min_norm_interpolant,
    preprocessing_norm_table,
    random_label_norms,
    rbf_kernel,
)
from sgdreg.models import RandomFeatures

DIGITS_SIGMA = 1.5  # σ / median pairwise distance ≈ 1/2, as σ = 5 on MNIST pixels in [0,1]


def _digits(n_train=None, n_test=None) -> Dataset:
    """scikit-learn digits as (1, 8, 8) images scaled to [0, 1], a fixed 75/25 split."""
    x, y = load_digits(return_X_y=True)
    xtr, ytr, xte, yte = split(x.reshape(-1, 1, 8, 8) / 16.0, y, 0.25, seed=0)
    return Dataset("digits", xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test], 10)


# --- expressivity (Zhang et al. 2017, Theorem 1) -------------------------------------------------

def test_two_layer_relu_fits_random_labels_exactly():
    report = expressivity_report(_digits(), n=200, labels="random", seed=0)
    assert report["n"] == 200 and report["d"] == 64
    assert report["num_params"] == 2 * 200 + 64
    assert report["residual"] < 1e-6
    assert report["train_acc"] == 1.0


def test_two_layer_relu_construction_is_lower_triangular():
    z = np.random.default_rng(0).normal(size=(50, 7))
    y = np.random.default_rng(1).normal(size=50)
    fit = fit_two_layer_relu(z, y, jax.random.PRNGKey(3))
    xs = np.sort(z @ fit.a)
    assert np.all(fit.b < xs) and np.all(fit.b[1:] > xs[:-1])  # b_1 < x_(1) < b_2 < x_(2) < …
    A = np.maximum(xs[:, None] - fit.b[None, :], 0.0)
    assert np.allclose(A, np.tril(A)) and np.all(np.diag(A) > 0)
    assert fit.residual < 1e-9 and np.max(np.abs(fit(z) - y)) == pytest.approx(fit.residual)


def test_two_layer_relu_multi_output_and_duplicates():
    z = np.random.default_rng(0).normal(size=(40, 5))
    Y = np.random.default_rng(1).normal(size=(40, 3))
    fit = fit_two_layer_relu(z, Y, 0)
    assert fit.num_params == 5 + 40 + 40 * 3 and fit.residual < 1e-9
    with pytest.raises(ValueError, match="duplicate points"):
        fit_two_layer_relu(np.concatenate([z, z[:1]]), np.zeros(41), 0)


# --- min-norm and kernel interpolation (Zhang et al. 2017 §5) ------------------------------------

def test_min_norm_interpolant_is_the_pinv_solution_and_smallest():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 100)), rng.normal(size=(30, 2))
    w = min_norm_interpolant(X, y)
    assert np.max(np.abs(X @ w - y)) < 1e-10
    assert np.allclose(w, np.linalg.pinv(X) @ y, atol=1e-10)
    u = rng.normal(size=(100, 2))
    w_other = w + u - np.linalg.pinv(X) @ (X @ u)  # add a null-space component
    assert np.max(np.abs(X @ w_other - y)) < 1e-10
    assert np.linalg.norm(w_other) > np.linalg.norm(w) + 1e-3


def test_gradient_descent_from_zero_reaches_min_norm_interpolant():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 60)) / np.sqrt(60), rng.normal(size=20)
    w, lr = np.zeros(60), 1.0 / np.linalg.norm(X, 2) ** 2
    for _ in range(3000):
        w -= lr * X.T @ (X @ w - y)
    assert np.allclose(w, min_norm_interpolant(X, y), atol=1e-8)


def test_linear_model_cannot_interpolate_n_greater_than_d():
    with pytest.raises(ValueError, match="use an RBF kernel"):
        min_norm_interpolant(np.ones((100, 20)), np.zeros(100))
    with pytest.raises(ValueError, match="kernel='rbf'"):
        kernel_interpolate(_digits(n_train=200), kernel="linear")


def test_linear_kernel_norm_is_min_norm_interpolant_norm():
    ds = _digits(n_train=50, n_test=100)
    fit = kernel_interpolate(ds, kernel="linear")
    W = min_norm_interpolant(ds.x_train, np.eye(10)[ds.y_train])
    assert fit.train_error == 0.0 and fit.bandwidth is None
    assert fit.rkhs_norm == pytest.approx(np.linalg.norm(W), rel=1e-8)
    assert np.allclose(linear_kernel(ds.x_train, ds.x_train), ds.x_train.reshape(50, -1) @
                       ds.x_train.reshape(50, -1).T)


def test_rbf_interpolation_on_digits():
    ds = _digits()
    fit = kernel_interpolate(ds)
    assert fit.bandwidth == pytest.approx(median_distance(ds.x_train))
    assert (fit.n, fit.d, fit.metric) == (ds.n_train, 64, "0-1")
    assert fit.train_error == 0.0
    assert fit.test_error < 0.03  # measured 0.7% (1348 train, 449 test)
    lo, hi = fit.test_error_ci
    assert fit.n_test == ds.n_test and lo < fit.test_error < hi


def test_rbf_kernel_convention_and_random_fourier_limit():
    a, b = np.zeros((1, 3)), np.array([[2.0, 0.0, 0.0]])
    assert rbf_kernel(a, b, bandwidth=2.0)[0, 0] == pytest.approx(np.exp(-0.5))
    x = _digits(n_train=40).x_train
    Phi = dd.random_fourier_features(x, 20000, DIGITS_SIGMA, 0)
    assert np.max(np.abs(Phi @ Phi.T - rbf_kernel(x, x, DIGITS_SIGMA))) < 0.05


def test_preprocessing_norm_table_rows():
    rows = preprocessing_norm_table(_digits(n_train=400, n_test=300), bandwidth_scales=(0.5, 1.0))
    assert [(r["preprocessing"], r["bandwidth_scale"]) for r in rows] == [
        ("unit", 0.5), ("unit", 1.0), ("standardize", 0.5), ("standardize", 1.0),
        ("unit, random labels", 0.5), ("unit, random labels", 1.0)]
    assert all(r["train_error"] == 0.0 for r in rows)
    true, rand = rows[:2], rows[4:]
    assert all(r["test_error"] > 0.7 for r in rand) and all(r["test_error"] < 0.1 for r in true)
    assert all(r["rkhs_norm"] > t["rkhs_norm"] for r, t in zip(rand, true))


def test_random_label_norms_at_a_fixed_kernel_match_direct_solves():
    """Per kernel and seed: ‖f‖_H = √(tr YᵀK⁻¹Y) from a dense solve of the same K, and the
    interpolant of the same random labels from ``kernel_interpolate``; random labels need the
    larger norm (5–6× on all of digits)."""
    from sgdreg.data import preprocess
    from sgdreg.randomization import randomize

    ds = _digits(n_train=300, n_test=200)
    rows = random_label_norms(ds, preprocessings=("standardize",), bandwidth_scales=(0.5, 1.0),
                              seeds=(0, 3))
    assert [(r["preprocessing"], r["bandwidth_scale"], r["seeds"]) for r in rows] == [
        ("standardize", 0.5, [0, 3]), ("standardize", 1.0, [0, 3])]
    x_tr, x_te = preprocess(ds.x_train, ds.x_test, "standardize")
    for r in rows:
        K = rbf_kernel(x_tr, x_tr, r["bandwidth"])
        assert r["bandwidth"] == pytest.approx(r["bandwidth_scale"] * median_distance(x_tr))
        labels = [ds.y_train] + [randomize(ds, "random-labels", seed=s).y_train for s in (0, 3)]
        norms = [np.sqrt(np.trace(Y.T @ np.linalg.solve(K, Y))) for Y in np.eye(10)[labels]]
        assert [r["rkhs_norm_true"], *r["rkhs_norm_random"]] == pytest.approx(norms, rel=1e-8)
        assert r["ratio"] == pytest.approx([v / norms[0] for v in norms[1:]], rel=1e-8)
        fit = kernel_interpolate(ds.replace(x_train=x_tr, x_test=x_te, y_train=labels[2]),
                                 bandwidth=r["bandwidth"])
        assert fit.rkhs_norm == pytest.approx(r["rkhs_norm_random"][1], rel=1e-8)
        assert fit.test_error == r["test_error_random"][1] and fit.train_error == 0.0
        assert r["ratio_min"] > 2.0 and r["test_error_true"] < 0.1


def test_random_label_norms_rejects_regression_and_no_seeds():
    with pytest.raises(ConfigError, match="seeds"):
        random_label_norms(_digits(n_train=50, n_test=10), seeds=())
    ds = _digits(n_train=50, n_test=10)
    with pytest.raises(ConfigError, match="classification"):
        random_label_norms(ds.replace(y_train=ds.y_train.astype(float), num_classes=0))


@pytest.mark.parametrize("errors,n", [(0, 359), (3, 359), (359, 359), (42, 1000), (1, 2)])
def test_error_interval_is_the_exact_binomial_interval(errors, n):
    """Against SciPy's independent Clopper–Pearson (``binomtest(...).proportion_ci('exact')``)."""
    from scipy.stats import binomtest

    ci = binomtest(errors, n).proportion_ci(0.95, method="exact")
    assert error_interval(errors, n) == pytest.approx((ci.low, ci.high), abs=1e-10)
    with pytest.raises(ConfigError):
        error_interval(n + 1, n)


# --- random Fourier features and double descent (Belkin et al. 2019; Nakkiran et al. 2019) ------

def test_random_fourier_features_match_the_model():
    x = _digits(n_train=10).x_train
    key = jax.random.PRNGKey(7)
    model = RandomFeatures(64, 10, width=300, bandwidth=DIGITS_SIGMA, key=key, dtype=np.float64)
    expected = np.asarray(jax.vmap(model.features)(x))
    assert np.allclose(dd.random_fourier_features(x, 300, DIGITS_SIGMA, key), expected, atol=1e-12)


@pytest.mark.parametrize("N", [20, 60, 200])
def test_min_norm_least_squares_is_pinv(N):
    rng = np.random.default_rng(N)
    Phi, Y = rng.normal(size=(60, N)), rng.normal(size=(60, 3))
    a = dd.min_norm_least_squares(Phi, Y)
    assert np.allclose(a, np.linalg.pinv(Phi) @ Y, atol=1e-9)


def test_chunked_sweep_agrees_with_direct_fit(monkeypatch):
    ds = _digits(n_train=60, n_test=50)
    monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 1000)  # force many feature/test blocks
    rows = dd.rff_double_descent(ds, [30, 200], seeds=[4], sigma=DIGITS_SIGMA)
    Phi_all = dd.random_fourier_features(ds.x_train, 200, DIGITS_SIGMA, 4)  # nested features:
    Phi_t_all = dd.random_fourier_features(ds.x_test, 200, DIGITS_SIGMA, 4)  # N = first N of 200
    for row in rows:
        N = row["N"]
        Phi, Phi_t = Phi_all[:, :N] * np.sqrt(200 / N), Phi_t_all[:, :N] * np.sqrt(200 / N)
        a = dd.min_norm_least_squares(Phi, np.eye(10)[ds.y_train])
        assert row["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-6)
        mse = np.mean(np.sum((Phi_t @ a - np.eye(10)[ds.y_test]) ** 2, 1))
        assert row["test_mse"] == pytest.approx(mse, rel=1e-6)


def test_rff_double_descent_on_digits():
    n = 300
    ds = _digits(n_train=n, n_test=600)
    grid = dd.feature_grid(n, num=9)
    assert n in grid and 10 * n in grid
    rows = dd.mean_over_seeds(dd.rff_double_descent(ds, grid, seeds=[0, 1, 2], sigma=DIGITS_SIGMA))
    by_N = {r["N"]: r for r in rows}
    assert by_N[n]["test_error"] >= 3 * by_N[10 * n]["test_error"]  # measured ≈ 0.8 vs 0.03
    assert max(rows, key=lambda r: r["norm"])["N"] == n
    assert max(rows, key=lambda r: r["test_error"])["N"] == n
    for r in rows:
        if r["N"] >= n:
            assert r["train_error"] == 0.0 and r["train_mse"] < 1e-6
        else:
            assert r["train_mse"] > 1e-3


def test_effective_model_complexity_on_a_table():
    table = {100: 0.0, 200: 0.02, 400: 0.09, 800: 0.15, 1600: 0.3}
    assert dd.effective_model_complexity(table) == 400
    assert dd.effective_model_complexity(table, eps=0.2) == 800
    assert dd.effective_model_complexity({100: 0.5}) == 0
    assert dd.feature_grid(100, num=3) == [10, 100, 1000]
