"""Minimum-norm interpolation: the linear min-norm solution and exact kernel interpolation.

Zhang et al. 2017 §5: for d ≥ n, GD on least squares from θ0 = 0 converges to w = Xᵀ(XXᵀ)⁻¹y; its
kernel form is Kα = y. Closed-form solves run in NumPy/SciPy float64 (exact oracles regardless of
JAX's x64 flag); inputs are flattened to (n, d).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .data import Dataset, preprocess
from .errors import ConfigError
from .randomization import randomize

KERNELS = ("linear", "rbf")
_CHUNK_ELEMENTS = 2**22  # block size (rows × columns) of kernel/feature blocks, 32 MiB in float64


def min_norm_interpolant(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """w = Xᵀ(XXᵀ)⁻¹y, the minimum-ℓ2 solution of Xw = y for d ≥ n (Zhang et al. 2017 §5)."""
    X = flatten_inputs(X)
    n, d = X.shape
    if n > d:
        raise ConfigError(
            f"a linear model cannot interpolate n = {n} points in d = {d} dimensions (n > d); "
            "use an RBF kernel (kernel_interpolate(ds, kernel='rbf'))"
        )
    G = X @ X.T
    from scipy.linalg import LinAlgError, cho_factor, cho_solve  # lazy: ~0.25 s

    try:
        c = cho_factor(G, lower=True)
    except LinAlgError as err:
        raise ConfigError("XXᵀ is singular (linearly dependent inputs): no exact interpolant") \
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
    outputs, averaged over examples) for regression; ``rkhs_norm`` = √(tr αᵀKα). For classes,
    ``test_error_ci`` is the exact 95% binomial interval of the test error over the ``n_test``
    test points (``error_interval``).
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
    n_test: int = 0
    test_error_ci: tuple[float, float] | None = None  # 95% Clopper–Pearson over the test points

    def as_dict(self) -> dict:
        return asdict(self)


def kernel_interpolate(ds: Dataset, kernel: str = "rbf", bandwidth: float | None = None,
                       reg: float = 0.0) -> KernelInterpolation:
    """Exact kernel interpolation Kα = Y (one-hot Y for classes), Cholesky in float64.

    ``bandwidth`` defaults to the median pairwise distance of the train inputs (``rbf`` only);
    ``reg`` > 0 gives kernel ridge regression (K + reg·I)α = Y.
    """
    if kernel not in KERNELS:
        raise ConfigError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    X, Xt = flatten_inputs(ds.x_train), flatten_inputs(ds.x_test)
    n, d = X.shape
    if kernel == "linear" and n > d and reg == 0.0:
        raise ConfigError(
            f"a linear kernel cannot interpolate n = {n} points in d = {d} dimensions (n > d); "
            "use kernel='rbf' or reg > 0"
        )
    if kernel == "rbf":
        bandwidth = median_distance(X) if bandwidth is None else float(bandwidth)
        if not bandwidth > 0:
            raise ConfigError(f"bandwidth must be positive, got {bandwidth}")
        kfn = lambda A, B: rbf_kernel(A, B, bandwidth)
    else:
        bandwidth = None
        kfn = linear_kernel
    fit, = _interpolants(kfn, X, Xt, [target_matrix(ds.y_train, ds.num_classes)], reg)
    return _summary(fit, ds, ds.y_train, kernel, bandwidth, reg, d)


def _interpolants(kfn, X: np.ndarray, Xt: np.ndarray, targets: list[np.ndarray],
                  reg: float = 0.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Solve (K + reg·I)α = Y for every Y in ``targets`` with one Cholesky factor of K.

    Per target: (α, train predictions Kα, test predictions k(Xt, X)α, RKHS norm √(tr αᵀKα)).
    """
    n = len(X)
    K = kfn(X, X)
    from scipy.linalg import LinAlgError, cho_factor, cho_solve  # lazy: ~0.25 s

    try:
        c = cho_factor(K + reg * np.eye(n), lower=True)
    except LinAlgError as err:
        raise ConfigError(
            "the kernel matrix is singular (duplicate or dependent inputs); pass reg > 0"
        ) from err
    alphas = [cho_solve(c, Y) for Y in targets]
    A = np.concatenate(alphas, axis=1)  # one pass over the test rows for every target
    rows = rows_per_chunk(n)
    test_all = np.concatenate([kfn(Xt[i:i + rows], X) @ A for i in range(0, len(Xt), rows)]) \
        if len(Xt) else np.zeros((0, A.shape[1]))
    out, col = [], 0
    for alpha in alphas:
        k = alpha.shape[1]
        train_pred = K @ alpha
        out.append((alpha, train_pred, test_all[:, col:col + k],
                    float(np.sqrt(max(np.sum(alpha * train_pred), 0.0)))))
        col += k
    return out


def _summary(fit, ds: Dataset, y_train, kernel: str, bandwidth, reg: float, d: int
             ) -> KernelInterpolation:
    _, train_pred, test_pred, norm = fit
    test_error = prediction_error(test_pred, ds.y_test, ds.num_classes)
    ci = error_interval(round(test_error * ds.n_test), ds.n_test) \
        if ds.num_classes and ds.n_test else None
    return KernelInterpolation(
        kernel=kernel, bandwidth=bandwidth, reg=float(reg), n=len(train_pred), d=d,
        metric="0-1" if ds.num_classes else "mse",
        train_error=prediction_error(train_pred, y_train, ds.num_classes),
        test_error=test_error, rkhs_norm=norm, n_test=int(ds.n_test), test_error_ci=ci,
    )


def error_interval(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a 0–1 error rate from ``errors`` mistakes on ``n``
    independent test points: the α/2 and 1 − α/2 quantiles of Beta(k, n − k + 1) and
    Beta(k + 1, n − k), α = 1 − ``level`` (Clopper & Pearson 1934); 0 and 1 at the ends."""
    if not 0 <= errors <= n or n < 1:
        raise ConfigError(f"need 0 ≤ errors ≤ n and n ≥ 1, got errors = {errors}, n = {n}")
    from scipy.stats import beta  # lazy

    a = 1.0 - level
    lo = 0.0 if errors == 0 else float(beta.ppf(a / 2, errors, n - errors + 1))
    hi = 1.0 if errors == n else float(beta.ppf(1 - a / 2, errors + 1, n - errors))
    return lo, hi


def preprocessing_norm_table(ds: Dataset, preprocessings=("unit", "standardize"),
                             bandwidth_scales=(0.5, 1.0, 2.0), random_labels: bool = True,
                             seed: int = 0) -> list[dict]:
    """RBF interpolants of one dataset under several input preprocessings: rows (preprocessing,
    bandwidth_scale, test_error, rkhs_norm, ...), bandwidth = scale × median pairwise distance.

    Zhang et al. 2017 §5. Each (preprocessing, bandwidth) is a different kernel, i.e. a different
    function space, so norms in different rows are in different units: the table compares
    kernels (across them the norm varies far more than the test error), not label sets; for the
    latter, at one fixed kernel, see ``random_label_norms``. A global rescaling (``unit`` vs
    ``none``) is invisible here because the median heuristic rescales with the inputs;
    ``standardize`` changes the geometry. ``random_labels`` adds rows for uniform random classes
    (``randomize(ds, "random-labels", seed=seed)``) under the first preprocessing.
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


def random_label_norms(ds: Dataset, preprocessings=("unit", "standardize"),
                       bandwidth_scales=(0.5, 1.0, 2.0), seeds=tuple(range(10))) -> list[dict]:
    """RKHS norms of the RBF interpolants of the true and of uniform random labels at one fixed
    kernel: one row per (preprocessing, bandwidth_scale), bandwidth = scale × median pairwise
    distance of the preprocessed train inputs.

    Zhang et al. 2017 §5: a kernel fixes the function space, so only at a fixed kernel does
    ‖f‖_H = √(tr YᵀK⁻¹Y) compare how hard labels are to fit. Each seed draws labels by
    ``randomize(ds, "random-labels", seed=seed)``; one Cholesky factor of K serves every label
    set. Row keys: ``rkhs_norm_true``, ``test_error_true``, per seed ``rkhs_norm_random``,
    ``test_error_random`` (against the true test labels) and ``ratio`` = random / true, with its
    min and max over the seeds.
    """
    if not ds.num_classes:
        raise ConfigError(f"random labels need a classification dataset; {ds.name} is regression")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    labels = [randomize(ds, "random-labels", seed=s).y_train for s in seeds]
    rows = []
    for how in preprocessings:
        x_tr, x_te = preprocess(ds.x_train, ds.x_test, how)
        X, Xt = flatten_inputs(x_tr), flatten_inputs(x_te)
        h = median_distance(X)
        for scale in bandwidth_scales:
            fits = _interpolants(lambda A, B, bw=scale * h: rbf_kernel(A, B, bw), X, Xt,
                                 [target_matrix(y, ds.num_classes) for y in [ds.y_train, *labels]])
            test = [prediction_error(f[2], ds.y_test, ds.num_classes) for f in fits]
            norms = [f[3] for f in fits]
            ratio = [v / norms[0] for v in norms[1:]]
            rows.append({"dataset": ds.name, "preprocessing": how, "bandwidth_scale": scale,
                         "bandwidth": scale * h, "n": len(X), "n_test": len(Xt),
                         "seeds": [int(s) for s in seeds], "rkhs_norm_true": norms[0],
                         "test_error_true": test[0], "rkhs_norm_random": norms[1:],
                         "test_error_random": test[1:], "ratio": ratio,
                         "ratio_min": min(ratio), "ratio_max": max(ratio)})
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
