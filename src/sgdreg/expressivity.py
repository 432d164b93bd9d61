"""Finite-sample expressivity: a two-layer ReLU net with 2n + d weights fits any n labels.

Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization"), Theorem 1.
The construction is closed-form linear algebra, done in NumPy/SciPy float64 so the exact-fit oracle
(residual ~1e-9) holds whether or not JAX runs with x64 enabled.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from scipy.linalg import solve_triangular

from .data import Dataset, subsample
from .double_descent import as_key
from .kernels import flatten_inputs
from .randomization import randomize

LABELS = ("random", "true")


@dataclass(frozen=True)
class TwoLayerReLUFit:
    """c(x) = Σ_j w_j ReLU(⟨a,x⟩ − b_j): a (d,), b (n,), w (n,) or (n, k) for k outputs."""

    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    residual: float  # max_i |c(z_i) − y_i| on the fitted points

    @property
    def num_params(self) -> int:
        """|a| + |b| + |w| = d + n + n·k, i.e. 2n + d for scalar labels (Theorem 1)."""
        return int(self.a.size + self.b.size + self.w.size)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """c(z) for a batch z (m, *shape): (m,) or (m, k)."""
        x = flatten_inputs(z) @ self.a
        return np.maximum(x[:, None] - self.b[None, :], 0.0) @ self.w


def fit_two_layer_relu(z: np.ndarray, y: np.ndarray, key_or_seed=0) -> TwoLayerReLUFit:
    """Exact fit of y on n distinct points z by the Theorem 1 construction (Zhang et al. 2017).

    x_i = ⟨a, z_i⟩ with a ~ N(0, I_d); thresholds b_1 < x_(1) < b_2 < x_(2) < … (midpoints, b_1 one
    median gap below the minimum); A_ij = max(x_(i) − b_j, 0) is lower triangular with positive
    diagonal; A w = y by forward substitution. ``key_or_seed``: a JAX key or an int seed for a.
    """
    z = flatten_inputs(z)
    y = np.asarray(y, dtype=np.float64)
    n, d = z.shape
    if y.shape[0] != n:
        raise ValueError(f"got {n} points but {y.shape[0]} labels")
    if len(np.unique(z, axis=0)) < n:
        raise ValueError("duplicate points: Theorem 1 needs n distinct inputs; remove duplicates")
    key = as_key(key_or_seed)
    for k in jax.random.split(key, 8):  # redraw a in the (measure-zero) event of tied projections
        a = np.asarray(jax.random.normal(k, (d,)), dtype=np.float64)
        x = z @ a
        order = np.argsort(x)
        xs = x[order]
        gaps = np.diff(xs)
        if n == 1 or gaps.min() > 1e-12 * max(np.abs(xs).max(), 1.0):
            break
    else:
        raise ValueError("could not draw a direction a with distinct projections ⟨a, z_i⟩")
    below = np.median(gaps) if n > 1 else 1.0
    b = np.concatenate([[xs[0] - below], (xs[:-1] + xs[1:]) / 2])
    A = np.maximum(xs[:, None] - b[None, :], 0.0)
    w = solve_triangular(A, y[order], lower=True)
    fit = TwoLayerReLUFit(a=a, b=b, w=w, residual=0.0)
    residual = float(np.max(np.abs(fit(z) - y))) if n else 0.0
    return TwoLayerReLUFit(a=a, b=b, w=w, residual=residual)


def expressivity_report(ds: Dataset, n: int | None = None, labels="random", seed: int = 0) -> dict:
    """Fit the Theorem 1 net to the first n training points of ``ds`` and report the fit.

    ``labels``: "random" (``randomize(ds, "random-labels", seed=seed)``), "true", or an array of n
    labels. Classification accuracy rounds c(x) to the nearest class; regression targets (n, k) are
    fitted column-wise with shared a, b. Returns residual, n, d, num_params and train_acc (None for
    regression).
    """
    ds = subsample(ds, n_train=n)
    if isinstance(labels, str):
        if labels not in LABELS:
            raise ValueError(f"unknown labels {labels!r}; choose one of {', '.join(LABELS)}")
        y = randomize(ds, "random-labels", seed=seed).y_train if labels == "random" else ds.y_train
    else:
        y = np.asarray(labels)
        if y.shape[0] != ds.n_train:
            raise ValueError(f"got {y.shape[0]} labels for n = {ds.n_train} points")
    z = flatten_inputs(ds.x_train)
    fit = fit_two_layer_relu(z, y, seed)
    train_acc = None
    if ds.num_classes:
        pred = np.clip(np.rint(fit(z)), 0, ds.num_classes - 1)
        train_acc = float(np.mean(pred == y))
    return {
        "dataset": ds.name, "labels": labels if isinstance(labels, str) else "given",
        "n": ds.n_train, "d": int(z.shape[1]), "num_params": fit.num_params,
        "residual": fit.residual, "train_acc": train_acc,
    }
