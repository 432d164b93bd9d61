"""Minimum-norm interpolation: the linear min-norm solution and exact kernel interpolation.

Zhang et al. 2017 §5: for d ≥ n, GD on least squares from θ0 = 0 converges to w = Xᵀ(XXᵀ)⁻¹y; its
kernel form is Kα = y. Closed-form solves run in NumPy/SciPy float64 (exact oracles regardless of
JAX's x64 flag); inputs are flattened to (n, d).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .data import Dataset, preprocess
from .randomization import randomize

KERNELS = ("linear", "rbf")
_CHUNK_ELEMENTS = 2**22  # block size (rows × columns) of kernel/feature blocks, 32 MiB in float64


def min_norm_interpolant(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """w = Xᵀ(XXᵀ)⁻¹y, the minimum-ℓ2 solution of Xw = y for d ≥ n (Zhang et al. 2017 §5)."""
    X = flatten_inputs(X)
    n, d = X.shape
    if n > d:
        raise ValueError(
            f"a linear model cannot interpolate n = {n} points in d = {d} dimensions (n > d); "
            "use an RBF kernel (kernel_interpolate(ds, kernel='rbf'))"
        )
    G = X @ X.T
    from scipy.linalg import LinAlgError, cho_factor, cho_solve  # lazy: ~0.25 s

    try:
        c = cho_factor(G, lower=True)
    except LinAlgError as err:
        raise ValueError("XXᵀ is singular (linearly dependent inputs): no exact interpolant") \
            from err
    return X.T @ cho_solve(c, np.asarray(y, dtype=np.float64))


def linear_kernel(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """k(a, b) = ⟨a, b⟩ on flattened inputs: (m, p)."""
    return flatten_inputs(A) @ flatten_inputs(B).T


def rbf_kernel(A: np.ndarray, B: np.ndarray, bandwidth: float) -> np.ndarray:
    """k(a, b) = exp(−‖a − b‖² / (2·bandwidth²)), Gaussian kernel with length scale ``bandwidth``:
    the N → ∞ limit of ΦΦᵀ for random Fourier features with σ = bandwidth (Rahimi & Recht 2007)."""
    A, B = flatten_inputs(A), flatten_inputs(B)
    sq = np.sum(A**2, 1)[:, None] + np.sum(B**2, 1)[None, :] - 2.0 * (A @ B.T)
    return np.exp(-np.maximum(sq, 0.0) / (2.0 * bandwidth**2))


def median_distance(X: np.ndarray, max_points: int = 1000) -> float:
    """Median pairwise Euclidean distance among the first ``max_points`` rows: the default RBF
    bandwidth (the "median heuristic")."""
    X = flatten_inputs(X)[:max_points]
    sq = np.sum(X**2, 1)[:, None] + np.sum(X**2, 1)[None, :] - 2.0 * (X @ X.T)
    iu = np.triu_indices(len(X), k=1)
    return float(np.median(np.sqrt(np.maximum(sq[iu], 0.0))))


@dataclass(frozen=True)
class KernelInterpolation:
    """Summary of f = Σ_i α_i k(x_i, ·) with (K + reg·I)α = Y.

    Errors are 0–1 classification error (argmax) for classes, mean squared error (summed over
    outputs, averaged over examples) for regression; ``rkhs_norm`` = √(tr αᵀKα).
    """

    kernel: str
    bandwidth: float | None
    reg: float
    n: int
    d: int
    metric: str
    train_error: float
    test_error: float
    rkhs_norm: float

    def as_dict(self) -> dict:
        return asdict(self)


def kernel_interpolate(ds: Dataset, kernel: str = "rbf", bandwidth: float | None = None,
                       reg: float = 0.0) -> KernelInterpolation:
    """Exact kernel interpolation Kα = Y (one-hot Y for classes), Cholesky in float64.

    ``bandwidth`` defaults to the median pairwise distance of the train inputs (``rbf`` only);
    ``reg`` > 0 gives kernel ridge regression (K + reg·I)α = Y.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    X, Xt = flatten_inputs(ds.x_train), flatten_inputs(ds.x_test)
    n, d = X.shape
    if kernel == "linear" and n > d and reg == 0.0:
        raise ValueError(
            f"a linear kernel cannot interpolate n = {n} points in d = {d} dimensions (n > d); "
            "use kernel='rbf' or reg > 0"
        )
    if kernel == "rbf":
        bandwidth = median_distance(X) if bandwidth is None else float(bandwidth)
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        kfn = lambda A, B: rbf_kernel(A, B, bandwidth)
    else:
        bandwidth = None
        kfn = linear_kernel
    Y = target_matrix(ds.y_train, ds.num_classes)
    K = kfn(X, X)
    from scipy.linalg import LinAlgError, cho_factor, cho_solve  # lazy: ~0.25 s

    try:
        c = cho_factor(K + reg * np.eye(n), lower=True)
    except LinAlgError as err:
        raise ValueError(
            "the kernel matrix is singular (duplicate or dependent inputs); pass reg > 0"
        ) from err
    alpha = cho_solve(c, Y)
    test_pred = np.concatenate(
        [kfn(Xt[i:i + rows_per_chunk(n)], X) @ alpha for i in range(0, len(Xt), rows_per_chunk(n))]
    ) if len(Xt) else np.zeros((0, Y.shape[1]))
    return KernelInterpolation(
        kernel=kernel, bandwidth=bandwidth, reg=float(reg), n=n, d=d,
        metric="0-1" if ds.num_classes else "mse",
        train_error=prediction_error(K @ alpha, ds.y_train, ds.num_classes),
        test_error=prediction_error(test_pred, ds.y_test, ds.num_classes),
        rkhs_norm=float(np.sqrt(max(np.sum(alpha * (K @ alpha)), 0.0))),
    )


def preprocessing_norm_table(ds: Dataset, preprocessings=("unit", "standardize"),
                             bandwidth_scales=(0.5, 1.0, 2.0), random_labels: bool = True,
                             seed: int = 0) -> list[dict]:
    """RBF interpolants of one dataset under several input preprocessings: rows (preprocessing,
    bandwidth_scale, test_error, rkhs_norm, ...), bandwidth = scale × median pairwise distance.

    Zhang et al. 2017 §5: the min-norm solution's norm does not track test error. A global
    rescaling (``unit`` vs ``none``) is invisible here because the median heuristic rescales with
    the inputs; ``standardize`` changes the geometry. ``random_labels`` adds rows for uniform random
    classes (``randomize(ds, "random-labels", seed=seed)``) under the first preprocessing.
    """
    rows = []
    variants = [(how, ds.y_train, how) for how in preprocessings]
    if random_labels and ds.num_classes:
        y_rand = randomize(ds, "random-labels", seed=seed).y_train
        variants.append((preprocessings[0], y_rand, f"{preprocessings[0]}, random labels"))
    for how, y_train, name in variants:
        x_tr, x_te = preprocess(ds.x_train, ds.x_test, how)
        h = median_distance(x_tr)
        for scale in bandwidth_scales:
            fit = kernel_interpolate(ds.replace(x_train=x_tr, x_test=x_te, y_train=y_train),
                                     bandwidth=scale * h)
            rows.append({"preprocessing": name, "bandwidth_scale": scale, **fit.as_dict()})
    return rows


def target_matrix(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot (n, K) for integer classes, float (n, k) targets otherwise."""
    if num_classes:
        return np.eye(num_classes)[np.asarray(y, dtype=int)]
    y = np.asarray(y, dtype=np.float64)
    return y.reshape(len(y), -1)


def prediction_error(pred: np.ndarray, y: np.ndarray, num_classes: int, targets=None) -> float:
    """0–1 error of argmax for classes (``num_classes`` > 0); otherwise the MSE against ``targets``
    (default: y as float targets), summed over outputs and averaged over examples."""
    if len(pred) == 0:
        return float("nan")
    if num_classes:
        return float(np.mean(np.argmax(pred, 1) != np.asarray(y)))
    targets = target_matrix(y, 0) if targets is None else targets
    return float(np.mean(np.sum((pred - targets) ** 2, 1)))


def rows_per_chunk(width: int) -> int:
    """Rows per block so that a (rows × ``width``) float64 block stays near 32 MiB."""
    return max(1, _CHUNK_ELEMENTS // max(width, 1))


def flatten_inputs(X) -> np.ndarray:
    """Inputs as a float64 (n, d) matrix (images flattened)."""
    X = np.asarray(X, dtype=np.float64)
    return X.reshape(X.shape[0], -1)
