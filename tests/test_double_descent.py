"""Minimum-norm random-features fits against numpy.linalg.pinv at and around the interpolation
threshold N = n (Belkin et al. 2019), the blockwise QR behind them, and the seed summaries of the
double-descent figures (peak height over seeds, peaks against their spread)."""

import numpy as np
import pytest

from sgdreg import double_descent as dd
from sgdreg import kernels
from sgdreg.config import ConfigError
from sgdreg.datasets import open_dataset

SIGMA = 1.5  # ½ median pairwise distance of 8×8 digits in [0,1]
N_TRAIN = 120


@pytest.fixture(scope="module")
def digits():
    ds = open_dataset("digits", preprocess="unit", n_train=N_TRAIN, n_test=100, dtype=np.float64)
    return ds, kernels.flatten_inputs(ds.x_train), kernels.target_matrix(ds.y_train, 10)


@pytest.fixture(scope="module")
def features():
    """v, b of ``RandomFeatures(width=10n, key=PRNGKey(3))``: width N takes the first N."""
    return dd._rff_params(64, 10 * N_TRAIN, SIGMA, 3)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("N", [12, N_TRAIN - 1, N_TRAIN, N_TRAIN + 1, 4 * N_TRAIN + 1, 10 * N_TRAIN])
@pytest.mark.parametrize("whole", [True, False])
def test_rff_solution_is_pinv_at_around_and_far_from_the_threshold(digits, features, monkeypatch,
                                                                   N, whole):
    """a = Φ⁺Y equals numpy.linalg.pinv(Φ) @ Y to 1e-8 relative (float64), with Φ held whole
    (N ≤ 4n) and through the blockwise QR (forced here for every N ≥ n, in blocks of n
    features)."""
    ds, X, Y = digits
    if not whole:
        monkeypatch.setattr(dd, "WHOLE_PHI", 0)
        monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 1000)  # blocks of n features
    V, b = features[0][:N], features[1][:N]
    Phi = np.sqrt(2 / N) * np.cos(X @ V.T + b)
    assert _rel(dd.min_norm_rff(X, Y, V, b), np.linalg.pinv(Phi) @ Y) < 1e-8


def test_threshold_with_a_tiny_singular_value_is_still_pinv(digits, features):
    """Two nearly equal features (v₁ = v₀ + 1e-6·v₂, b₁ = b₀) at N = n: κ(Φ) ~ 1e8, ‖a‖ ~ 1e6.
    The old solve through ΦΦᵀ with eigenvalues below 1e-10·λ_max dropped (singular values below
    1e-5·s_max) lost that direction entirely (relative error 1.0); the SVD solve keeps it."""
    ds, X, Y = digits
    V, b = features[0][:N_TRAIN].copy(), features[1][:N_TRAIN].copy()
    V[1], b[1] = V[0] + 1e-6 * V[2], b[0]
    Phi = dd._rff(X, V, b)
    s = np.linalg.svd(Phi, compute_uv=False)
    assert s[-1] < 1e-5 * s[0]  # the direction the Gram cut-off dropped
    a_pinv = np.linalg.pinv(Phi) @ Y
    assert _rel(dd.min_norm_rff(X, Y, V, b), a_pinv) < 1e-8
    assert _rel(dd.min_norm_least_squares(Phi, Y), a_pinv) < 1e-8
    lam, U = np.linalg.eigh(Phi @ Phi.T)  # the old Gram solve, for contrast
    keep = lam > 1e-10 * lam.max()
    a_gram = Phi.T @ (U[:, keep] @ ((U[:, keep].T @ Y) / lam[keep, None]))
    assert _rel(a_gram, a_pinv) > 0.5


def test_sweep_rows_are_the_pinv_fit(digits, monkeypatch):
    """``rff_double_descent`` rows (norm, train/test MSE and error, wrong test images) at N = n
    and N = 10n equal those of a = pinv(Φ) @ Y on the same nested features."""
    ds, X, Y = digits
    n = N_TRAIN
    monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 3000)  # several feature and row blocks
    rows = dd.rff_double_descent(ds, [n, 10 * n], seeds=[5], sigma=SIGMA, wrong_at=[n])
    Phi_all = dd.random_fourier_features(ds.x_train, 10 * n, SIGMA, 5)
    Phi_t_all = dd.random_fourier_features(ds.x_test, 10 * n, SIGMA, 5)
    Yt = kernels.target_matrix(ds.y_test, 10)
    for row in rows:
        N = row["N"]
        scale = np.sqrt(10 * n / N)  # nested: the first N of 10n features, rescaled to √(2/N)
        Phi, Phi_t = Phi_all[:, :N] * scale, Phi_t_all[:, :N] * scale
        a = np.linalg.pinv(Phi) @ Y
        assert row["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-8)
        assert row["test_mse"] == pytest.approx(np.mean(np.sum((Phi_t @ a - Yt) ** 2, 1)), rel=1e-8)
        wrong = np.flatnonzero(np.argmax(Phi_t @ a, 1) != ds.y_test)
        assert row["test_error"] == len(wrong) / ds.n_test and row["n_test"] == ds.n_test
        assert row["train_error"] == 0.0 and row["train_mse"] < 1e-12
        assert row.get("test_wrong", wrong.tolist()) == wrong.tolist()
    assert "test_wrong" in rows[0] and "test_wrong" not in rows[1]


def test_stacked_r_is_the_qr_of_the_stacked_blocks_and_keeps_the_min_norm_solution():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 8)) @ np.diag(np.geomspace(1, 1e-7, 8))  # κ = 1e7
    A = np.hstack([A, A[:, :2]])  # rank 8 of 10 columns: a non-unique least-squares problem
    B = rng.normal(size=(50, 3))
    parts = [(0, 3), (3, 20), (20, 50)]  # a first block with fewer rows than columns
    R, QtB = dd.stacked_r((A[i:j] for i, j in parts), (B[i:j] for i, j in parts))
    assert R.shape == (10, 10) and np.allclose(R, np.triu(R))
    np.testing.assert_allclose(R.T @ R, A.T @ A, atol=1e-13)
    np.testing.assert_allclose(np.linalg.svd(R, compute_uv=False)[:8],
                               np.linalg.svd(A, compute_uv=False)[:8], rtol=1e-8)
    theta = dd.min_norm_least_squares(R, QtB, rcond=1e-12)
    assert _rel(theta, np.linalg.pinv(A, rcond=1e-12) @ B) < 1e-8
    R_only, none = dd.stacked_r(A[i:j] for i, j in parts)
    assert none is None and np.allclose(np.abs(R_only), np.abs(R))


def _rows(err_n, err_far, n_test=100):
    return ([{"N": 10, "seed": s, "test_error": e, "n_test": n_test} for s, e in enumerate(err_n)] +
            [{"N": 100, "seed": s, "test_error": e, "n_test": n_test} for s, e in enumerate(err_far)])


def test_threshold_ratio_per_seed_and_bootstrap():
    q = dd.threshold_ratio(_rows([0.8, 0.9], [0.02, 0.0]), n=10)
    assert [p["ratio"] for p in q["per_seed"]] == [pytest.approx(40.0), None]
    assert [p["wrong_far"] for p in q["per_seed"]] == [2, 0]
    assert q["ratio"] == pytest.approx(0.85 / 0.01) and q["ratio_min"] == pytest.approx(40.0)
    assert q["ratio_max"] is None and q["bootstrap"] is None  # a seed without wrong images
    rows = _rows([0.5, 0.5], [0.1, 0.1])
    for r, wrong in zip(rows, [range(50), range(50, 100), range(10), range(10)]):
        r["test_wrong"] = list(wrong)
    q = dd.threshold_ratio(rows, n=10, resamples=500)
    assert q["ratio"] == pytest.approx(5.0) and q["ratio_min"] == q["ratio_max"] == pytest.approx(5.0)
    b = q["bootstrap"]
    assert b["low"] < 5.0 < b["high"] and b["high"] < 20  # 10 wrong images of 100: a wide interval
    with pytest.raises(ConfigError, match="N = 7"):
        dd.threshold_ratio(rows, n=7)


def test_width_peaks_separate_a_peak_from_its_spread():
    def rows(values_by_width, noise=0.2):
        return [{"width": w, "noise": noise, "seed": s, "test_error": e}
                for w, vals in values_by_width.items() for s, e in enumerate(vals)]

    clear = dd.width_peaks(rows({4: [.3, .31], 8: [.1, .12], 16: [.2, .22], 32: [.1, .11]}))[0]
    assert (clear["peak"], clear["valley_left"], clear["valley_right"]) == (16, 8, 32)
    assert clear["separated"] and clear["seeds_up"] == 2
    assert clear["rise"] == pytest.approx(0.1) and clear["fall"] == pytest.approx(0.105)
    inside = dd.width_peaks(rows({4: [.3, .3], 8: [.1, .2], 16: [.16, .18], 32: [.1, .11]}))[0]
    assert inside["peak"] == 16 and not inside["separated"]
    monotone = dd.width_peaks(rows({4: [.3], 8: [.2], 16: [.1]}))[0]
    assert monotone["peak"] is None and not monotone["separated"]
