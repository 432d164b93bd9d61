"""Double descent with random Fourier features and the effective model complexity.

Belkin et al. 2019 ("Reconciling modern machine learning practice and the bias-variance trade-off"):
the minimum-norm least-squares fit a = Φ⁺Y on N random Fourier features has its test error and ‖a‖
peak at the interpolation threshold N = n and descend again for N ≫ n. Nakkiran et al. 2019 ("Deep
double descent"): the effective model complexity. Features are drawn with JAX keys exactly as
``models.RandomFeatures``; the least-squares algebra runs in NumPy float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .data import Dataset
from .kernels import flatten_inputs, prediction_error, rows_per_chunk, target_matrix


def random_fourier_features(x: np.ndarray, num_features: int, sigma: float, key) -> np.ndarray:
    """Φ (n, N) with φ(x) = √(2/N)·cos(⟨v,x⟩ + b), v ~ N(0, σ⁻²I), b ~ U[0, 2π) (Rahimi & Recht
    2007). ``key`` (JAX key or int seed) draws the same v, b as ``RandomFeatures(bandwidth=σ)``."""
    x = flatten_inputs(x)
    V, b = _rff_params(x.shape[1], num_features, sigma, key)
    return _rff(x, V, b)


def min_norm_least_squares(Phi: np.ndarray, Y: np.ndarray, rcond: float = 1e-10) -> np.ndarray:
    """a = Φ⁺Y, the minimum-norm least-squares solution (Belkin et al. 2019), float64.

    Via the smaller Gram matrix: a = (ΦᵀΦ)⁺ΦᵀY for N < n, a = Φᵀ(ΦΦᵀ)⁺Y for N ≥ n. Gram eigenvalues
    below ``rcond``·λ_max are dropped, i.e. singular values of Φ below √rcond·s_max.
    """
    Phi = np.asarray(Phi, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n, N = Phi.shape
    if N < n:
        return _psd_pinv_solve(Phi.T @ Phi, Phi.T @ Y, rcond)
    return Phi.T @ _psd_pinv_solve(Phi @ Phi.T, Y, rcond)


def rff_double_descent(ds: Dataset, num_features: list[int], seeds: list[int], sigma: float = 5.0,
                       rcond: float = 1e-10) -> list[dict]:
    """Sweep N (Belkin et al. 2019): rows N, seed, train/test error, train/test MSE, norm ‖a‖_F.

    a = Φ⁺Y on one-hot targets (float targets for regression, where the errors are the MSEs).
    Errors are 0–1 (argmax); MSE is summed over outputs, averaged over examples. σ = 5 suits MNIST
    pixels in [0,1] (median pairwise distance ≈ 10); 8×8 digits in [0,1] (median ≈ 3) want σ ≈ 1.5.
    Features are nested: width N uses the first N of the max(num_features) features drawn for
    the seed (those of ``RandomFeatures(width=max N, key=PRNGKey(seed))``), so the sweep compiles
    one JAX draw and varies only N. For N ≥ n the fit runs on n×n Gram blocks accumulated over
    feature chunks, so N ≫ n is cheap in memory. The interpolation threshold is N = n.
    """
    X, Xt = flatten_inputs(ds.x_train), flatten_inputs(ds.x_test)
    Y, Yt = target_matrix(ds.y_train, ds.num_classes), target_matrix(ds.y_test, ds.num_classes)
    rows = []
    for seed in seeds:
        V_all, b_all = _rff_params(X.shape[1], max(num_features), sigma, seed)
        for N in num_features:
            pred, test_pred, norm = _fit_rff(X, Y, Xt, V_all[:N], b_all[:N], rcond)
            rows.append({
                "N": int(N), "seed": seed, "n": len(X), "sigma": sigma,
                "train_error": prediction_error(pred, ds.y_train, ds.num_classes),
                "test_error": prediction_error(test_pred, ds.y_test, ds.num_classes),
                "train_mse": prediction_error(pred, ds.y_train, 0, Y),
                "test_mse": prediction_error(test_pred, ds.y_test, 0, Yt), "norm": norm,
            })
    return sorted(rows, key=lambda r: r["N"])  # stable: seeds keep their order within each N


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """One row per N with every numeric column averaged over seeds (``seed`` dropped)."""
    out = []
    for N in sorted({r["N"] for r in rows}):
        group = [r for r in rows if r["N"] == N]
        keys = [k for k in group[0] if k not in ("N", "seed")]
        out.append({"N": N, "num_seeds": len(group),
                    **{k: float(np.mean([r[k] for r in group])) for k in keys}})
    return out


def feature_grid(n: int, low: float = 0.1, high: float = 10.0, num: int = 13) -> list[int]:
    """Log-spaced N from low·n to high·n, always including the interpolation threshold N = n."""
    grid = np.rint(np.geomspace(max(low * n, 1), high * n, num)).astype(int)
    return sorted({int(N) for N in grid if N >= 1} | {int(n)})


def effective_model_complexity(train_error_by_n: dict[int, float], eps: float = 0.1) -> int:
    """EMC = max{n : train error on n samples ≤ ε} (Nakkiran et al. 2019); 0 if no n qualifies."""
    fitted = [int(n) for n, err in train_error_by_n.items() if err <= eps]
    return max(fitted, default=0)


def _fit_rff(X, Y, Xt, V, b, rcond):
    """(train predictions, test predictions, ‖a‖_F) of a = Φ⁺Y, chunked over features for N ≥ n."""
    n, N = len(X), len(V)
    if N < n:
        Phi = _rff(X, V, b)
        a = min_norm_least_squares(Phi, Y, rcond)
        test_pred = np.concatenate([_rff(Xt[i:i + rows_per_chunk(N)], V, b) @ a
                                    for i in range(0, len(Xt), rows_per_chunk(N))])
        return Phi @ a, test_pred, float(np.linalg.norm(a))
    G, C = np.zeros((n, n)), np.zeros((len(Xt), n))
    step = rows_per_chunk(n + len(Xt))
    for j in range(0, N, step):  # φ-blocks: the √(2/N) scale uses the total N
        P = np.sqrt(2.0 / N) * np.cos(X @ V[j:j + step].T + b[j:j + step])
        Pt = np.sqrt(2.0 / N) * np.cos(Xt @ V[j:j + step].T + b[j:j + step])
        G += P @ P.T
        C += Pt @ P.T
    alpha = _psd_pinv_solve(G, Y, rcond)  # a = Φᵀα
    pred = G @ alpha
    return pred, C @ alpha, float(np.sqrt(max(np.sum(alpha * pred), 0.0)))


def _psd_pinv_solve(G, B, rcond):
    """G⁺B for symmetric PSD G, eigenvalues below rcond·λ_max treated as zero."""
    lam, U = np.linalg.eigh(G)
    keep = lam > rcond * max(lam.max(), 0.0)
    Uk = U[:, keep]
    return Uk @ ((Uk.T @ B) / lam[keep].reshape(-1, *([1] * (B.ndim - 1))))


def _rff_params(d, N, sigma, key):
    """v (N, d) and b (N,) as drawn by ``models.RandomFeatures(kind="fourier")`` for this key."""
    kv, kb, _ = jax.random.split(as_key(key), 3)
    dtype = jnp.zeros(()).dtype
    V = np.asarray(jax.random.normal(kv, (N, d), dtype), dtype=np.float64) / sigma
    b = np.asarray(jax.random.uniform(kb, (N,), dtype, 0.0, 2 * math.pi), dtype=np.float64)
    return V, b


def as_key(key_or_seed):
    """A JAX PRNG key from an int seed (``jax.random.PRNGKey``) or the key itself."""
    if isinstance(key_or_seed, (int, np.integer)):
        return jax.random.PRNGKey(int(key_or_seed))
    return key_or_seed


def _rff(x, V, b):
    return np.sqrt(2.0 / len(V)) * np.cos(x @ V.T + b)

