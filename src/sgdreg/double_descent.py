"""Double descent with random Fourier features and the effective model complexity.

Belkin et al. 2019 ("Reconciling modern machine learning practice and the bias-variance trade-off"):
the minimum-norm least-squares fit a = Φ⁺Y on N random Fourier features has its test error and ‖a‖
peak at the interpolation threshold N = n and descend again for N ≫ n. Nakkiran et al. 2019 ("Deep
double descent"): the effective model complexity. Features are drawn with JAX keys exactly as
``models.RandomFeatures``; the least-squares algebra runs in NumPy float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config import ConfigError
from .data import Dataset
from .kernels import flatten_inputs, prediction_error, rows_per_chunk, target_matrix

WHOLE_PHI = 4  # min_norm_rff holds Φ (n, N) whole up to N = 4n


def random_fourier_features(x: np.ndarray, num_features: int, sigma: float, key) -> np.ndarray:
    """Φ (n, N) with φ(x) = √(2/N)·cos(⟨v,x⟩ + b), v ~ N(0, σ⁻²I), b ~ U[0, 2π) (Rahimi & Recht
    2007). ``key`` (JAX key or int seed) draws the same v, b as ``RandomFeatures(bandwidth=σ)``."""
    x = flatten_inputs(x)
    V, b = _rff_params(x.shape[1], num_features, sigma, key)
    return _rff(x, V, b)


def min_norm_least_squares(Phi: np.ndarray, Y: np.ndarray, rcond: float | None = None) -> np.ndarray:
    """a = Φ⁺Y = V S⁻¹UᵀY, the minimum-norm least-squares solution (Belkin et al. 2019), float64.

    From Φ itself (SVD-based LAPACK gelsd via ``numpy.linalg.lstsq``), never through a Gram
    matrix ΦΦᵀ or ΦᵀΦ, whose eigenvalues square the condition number and lose Φ's small singular
    values near N = n. Singular values of Φ at or below ``rcond``·s_max are dropped; ``None``
    is the LAPACK/NumPy default eps·max(n, N).
    """
    Phi = np.asarray(Phi, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    return np.linalg.lstsq(Phi, Y, rcond=rcond)[0]


def stacked_r(blocks, rhs=None):
    """(R, QᵀB) of the thin QR A = QR of A given as row blocks A_i (TSQR; memory ~ (p + m_i)·p).

    ``blocks`` yields the A_i (m_i, p); ``rhs`` the matching B_i (m_i, K), or None. R has
    AᵀA = RᵀR and A's singular values, computed from A's rows (Householder QR is backward
    stable), never from AᵀA. ‖Aθ − B‖² = ‖Rθ − QᵀB‖² + ‖(I − QQᵀ)B‖², so A and R have the same
    minimum-norm least-squares solution. Returns (R, None) without ``rhs``.
    """
    R = Z = None
    rhs = None if rhs is None else iter(rhs)
    for A in blocks:
        A = np.asarray(A, dtype=np.float64)
        R = A if R is None else np.vstack([R, A])
        if rhs is None:
            R = np.linalg.qr(R, mode="r")
            continue
        B = np.asarray(next(rhs), dtype=np.float64)
        Z = B if Z is None else np.vstack([Z, B])
        Q, R = np.linalg.qr(R)
        Z = Q.T @ Z
    return R, Z


def rff_double_descent(ds: Dataset, num_features: list[int], seeds: list[int], sigma: float = 5.0,
                       rcond: float | None = None, wrong_at: Sequence[int] = ()) -> list[dict]:
    """Sweep N (Belkin et al. 2019): rows N, seed, train/test error, train/test MSE, norm ‖a‖_F.

    a = Φ⁺Y on one-hot targets (float targets for regression, where the errors are the MSEs).
    Errors are 0–1 (argmax); MSE is summed over outputs, averaged over examples. σ = 5 suits MNIST
    pixels in [0,1] (median pairwise distance ≈ 10); 8×8 digits in [0,1] (median ≈ 3) want σ ≈ 1.5.
    Features are nested: width N uses the first N of the max(num_features) features drawn for
    the seed (those of ``RandomFeatures(width=max N, key=PRNGKey(seed))``), so the sweep compiles
    one JAX draw and varies only N. The interpolation threshold is N = n. a = Φ⁺Y from Φ's own
    singular values, cut at ``rcond``·s_max (default eps·max(n, N)); for N > 4n, Φ is never held
    whole (``min_norm_rff``), so N ≫ n costs O(n²) memory. Rows at an N in ``wrong_at`` (classes
    only) also list the misclassified test images (``test_wrong``, indices).
    """
    X, Xt = flatten_inputs(ds.x_train), flatten_inputs(ds.x_test)
    Y, Yt = target_matrix(ds.y_train, ds.num_classes), target_matrix(ds.y_test, ds.num_classes)
    rows = []
    for seed in seeds:
        V_all, b_all = _rff_params(X.shape[1], max(num_features), sigma, seed)
        for N in num_features:
            pred, test_pred, norm = _fit_rff(X, Y, Xt, V_all[:N], b_all[:N], rcond)
            rows.append({
                "N": int(N), "seed": seed, "n": len(X), "n_test": len(Xt), "sigma": sigma,
                "train_error": prediction_error(pred, ds.y_train, ds.num_classes),
                "test_error": prediction_error(test_pred, ds.y_test, ds.num_classes),
                "train_mse": prediction_error(pred, ds.y_train, 0, Y),
                "test_mse": prediction_error(test_pred, ds.y_test, 0, Yt), "norm": norm,
            })
            if N in wrong_at and ds.num_classes:
                wrong = np.argmax(test_pred, 1) != np.asarray(ds.y_test)
                rows[-1]["test_wrong"] = np.flatnonzero(wrong).tolist()
    return sorted(rows, key=lambda r: r["N"])  # stable: seeds keep their order within each N


def threshold_ratio(rows: list[dict], n: int, far: int = 10, resamples: int = 2000,
                    seed: int = 0) -> dict:
    """Height of the peak: err(N = n)/err(N = far·n), test 0–1 errors of ``rff_double_descent``
    rows (Belkin et al. 2019 report the peak; the ratio summarises it).

    Per seed (features redrawn): both errors, the count of wrong test images at far·n and the
    ratio (None where no test image is wrong at far·n); the ratio of the seed means
    mean_s err_s(n)/mean_s err_s(far·n) with the seeds' min–max; and, where the rows hold
    ``test_wrong`` at both N, a 95% percentile interval of that ratio over ``resamples`` paired
    bootstrap resamples of the test images (the test set's sampling error, large when few
    images are wrong; a resample with no wrong image at far·n gives ∞).
    """
    by = {(r["N"], r["seed"]): r for r in rows}
    seeds = [s for s in dict.fromkeys(r["seed"] for r in rows) if (n, s) in by and (far * n, s) in by]
    if not seeds:
        raise ConfigError(f"rows: need N = {n} and N = {far * n} for some seed")
    per = []
    for s in seeds:
        lo, hi = by[(n, s)], by[(far * n, s)]
        per.append({"seed": s, "err_n": lo["test_error"], "err_far": hi["test_error"],
                    "wrong_far": int(round(hi["test_error"] * hi["n_test"])),
                    "ratio": lo["test_error"] / hi["test_error"] if hi["test_error"] > 0 else None})
    mean_n = float(np.mean([p["err_n"] for p in per]))
    mean_far = float(np.mean([p["err_far"] for p in per]))
    ratios = [p["ratio"] for p in per]
    finite = [r for r in ratios if r is not None]
    out = {"n": n, "far": far, "seeds": seeds, "n_test": by[(n, seeds[0])]["n_test"],
           "per_seed": per, "err_n": mean_n, "err_far": mean_far,
           "ratio": mean_n / mean_far if mean_far > 0 else None,
           "ratio_min": min(finite) if finite else None,
           "ratio_max": max(finite) if len(finite) == len(ratios) else None,
           "bootstrap": None}
    if all("test_wrong" in by[(N, s)] for s in seeds for N in (n, far * n)):
        m = out["n_test"]
        W = {N: np.array([np.isin(np.arange(m), by[(N, s)]["test_wrong"]) for s in seeds])
             for N in (n, far * n)}
        idx = np.random.default_rng(seed).integers(0, m, size=(resamples, m))
        num = W[n][:, idx].sum(axis=(0, 2)).astype(float)
        den = W[far * n][:, idx].sum(axis=(0, 2)).astype(float)
        with np.errstate(divide="ignore"):
            boot = np.where(den > 0, num / np.maximum(den, 1), np.inf)
        lo, hi = np.quantile(boot, [0.025, 0.975], method="inverted_cdf")
        out["bootstrap"] = {"resamples": resamples, "level": 0.95, "low": float(lo),
                            "high": None if np.isinf(hi) else float(hi)}
    return out


def width_peaks(rows: list[dict], x: str = "width", y: str = "test_error") -> list[dict]:
    """Per label noise, the largest bump of the seed-mean ``y`` over ``x`` (model-wise deep double
    descent, Nakkiran et al. 2019) and whether it is larger than its spread over seeds.

    For each interior x: m(x) the mean over seeds; valleys x_l = argmin_{x' < x} m and
    x_r = argmin_{x' > x} m. A bump has m(x) > m(x_l) and m(x) > m(x_r); the reported peak is the
    bump of largest rise m(x) − m(x_l). ``separated``: min over seeds at the peak > max over
    seeds at both valleys (the min–max bands do not overlap), the criterion for a reproduced
    peak; ``seeds_up`` counts seeds whose own y rises from x_l to the peak. Peak None: no bump.
    """
    out = []
    for noise in sorted({r["noise"] for r in rows}):
        sub = [r for r in rows if r["noise"] == noise]
        xs = sorted({r[x] for r in sub})
        vals = {v: {r["seed"]: r[y] for r in sub if r[x] == v} for v in xs}
        m = {v: float(np.mean(list(vals[v].values()))) for v in xs}
        best = None
        for i in range(1, len(xs) - 1):
            left = min(xs[:i], key=m.get)
            right = min(xs[i + 1:], key=m.get)
            v = xs[i]
            if m[v] > m[left] and m[v] > m[right] and (best is None or
                                                       m[v] - m[left] > best[0]):
                best = (m[v] - m[left], v, left, right)
        row = {"noise": noise, "seeds": len(vals[xs[0]]), "peak": None, "separated": False}
        if best:
            rise, v, left, right = best
            common = [s for s in vals[v] if s in vals[left]]
            row |= {"peak": v, "valley_left": left, "valley_right": right, "rise": rise,
                    "fall": m[v] - m[right], "mean": [m[left], m[v], m[right]],
                    "seeds_up": sum(vals[v][s] > vals[left][s] for s in common),
                    "separated": bool(min(vals[v].values()) > max(vals[left].values())
                                      and min(vals[v].values()) > max(vals[right].values()))}
        out.append(row)
    return out


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """One row per N with every numeric column averaged over seeds (``seed`` dropped)."""
    out = []
    for N in sorted({r["N"] for r in rows}):
        group = [r for r in rows if r["N"] == N]
        keys = [k for k in group[0] if k not in ("N", "seed", "test_wrong")]
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


def min_norm_rff(x: np.ndarray, Y: np.ndarray, V: np.ndarray, b: np.ndarray,
                 rcond: float | None = None) -> np.ndarray:
    """a = Φ⁺Y (N, K) for the random Fourier features Φ = √(2/N)·cos(xVᵀ + b) (n, N), float64.

    N ≤ ``WHOLE_PHI``·n (the interpolation threshold N = n and around it): Φ held whole,
    ``min_norm_least_squares`` (LAPACK's SVD solve, as ``numpy.linalg.pinv``). N > WHOLE_PHI·n,
    without holding Φ: Φᵀ = QR accumulated over feature chunks (``stacked_r``, memory ~ n²) and
    Rᵀ = U S Wᵀ, so Φ = U S (QW)ᵀ with Φ's own singular values; keeping s > ``rcond``·s_max
    (None: eps·max(n, N)), a = Φᵀα with α = U S⁻²UᵀY (= V S⁻¹UᵀY), formed chunk by chunk. Its
    error is ~eps·κ(Φ) relative, and κ(Φ) is small there: measured 74 (digits, n = 500) and 104
    (mnist5k, n = 1000, σ = 5) at N = 4n, against 5.6e3 and 3.2e5 at N = n.
    """
    X, Y = flatten_inputs(x), np.asarray(Y, dtype=np.float64)
    n, N = len(X), len(V)
    if N <= WHOLE_PHI * n:
        return min_norm_least_squares(_rff(X, V, b), Y, rcond)
    step = max(rows_per_chunk(n), n)  # QR cost ~ N·n²·(1 + n/step)

    def columns(j):  # Φ[:, j:j+step]; the √(2/N) scale uses the total N
        return np.sqrt(2.0 / N) * np.cos(X @ V[j:j + step].T + b[j:j + step])

    R, _ = stacked_r(columns(j).T for j in range(0, N, step))
    U, s, _ = np.linalg.svd(R.T, full_matrices=False)
    keep = s > (np.finfo(np.float64).eps * max(n, N) if rcond is None else rcond) * s[0]
    U, s = U[:, keep], s[keep]
    alpha = U @ ((U.T @ Y) / s[:, None] ** 2)
    return np.concatenate([columns(j).T @ alpha for j in range(0, N, step)])


def _fit_rff(X, Y, Xt, V, b, rcond):
    """(train predictions, test predictions, ‖a‖_F) of a = Φ⁺Y (``min_norm_rff``)."""
    a = min_norm_rff(X, Y, V, b, rcond)
    step = rows_per_chunk(len(V))
    pred = [np.concatenate([_rff(Z[i:i + step], V, b) @ a for i in range(0, len(Z), step)])
            for Z in (X, Xt)]
    return pred[0], pred[1], float(np.linalg.norm(a))


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

