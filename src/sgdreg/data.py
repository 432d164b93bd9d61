"""In-memory datasets: the ``Dataset`` record, deterministic splits and standardisation.

Sources live in ``datasets.py`` (all offline), randomization transforms in ``randomization.py``.
Inputs keep their natural per-example shape (``(C, H, W)`` for images, ``(d,)`` for vectors);
labels are integer classes (``num_classes`` > 0) or float targets of shape ``(n, k)`` for
regression (``num_classes`` = 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

PREPROCESS = ("standardize", "unit", "none")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    meta: dict = field(default_factory=dict)
    #: bytes of device memory the data may take (None: no limit). When x and y of both splits,
    #: in the model's dtype, exceed it, a run keeps them on the host (``batching.HostArray``;
    #: NumPy or ``np.memmap``) and streams chunks of ``eval_chunk`` rows to the device.
    device_budget: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def out_size(self) -> int:
        return self.num_classes if self.num_classes else int(self.y_train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def replace(self, **changes) -> Dataset:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """Summary recorded in traces: sizes, shapes, classes and provenance."""
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            **self.meta,
            **({"device_budget": self.device_budget} if self.device_budget is not None else {}),
        }

    def device_bytes(self, itemsize: int) -> int:
        """Bytes of x and y of both splits on the device, inputs and float targets at
        ``itemsize`` bytes per number, integer labels as int32."""
        lab = 4 if self.num_classes else itemsize
        return sum(a.size * s for a, s in ((self.x_train, itemsize), (self.y_train, lab),
                                           (self.x_test, itemsize), (self.y_test, lab)))


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int = 0):
    """Deterministic shuffled split: the same ``seed`` always gives the same partition."""
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def preprocess(x_train: np.ndarray, x_test: np.ndarray, how: str = "standardize"):
    """``standardize``: per-feature z-score with train statistics (constant features → 0);
    ``unit``: divide by the train maximum magnitude; ``none``: unchanged."""
    x_train = x_train.astype(np.float64)
    x_test = x_test.astype(np.float64)
    if how == "standardize":
        mu = x_train.mean(axis=0)
        sd = x_train.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        return (x_train - mu) / sd, (x_test - mu) / sd
    if how == "unit":
        scale = max(float(np.abs(x_train).max()), 1e-12)
        return x_train / scale, x_test / scale
    if how == "none":
        return x_train, x_test
    raise ValueError(f"unknown preprocessing {how!r}; choose one of {', '.join(PREPROCESS)}")


def subsample(ds: Dataset, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """First ``n_train``/``n_test`` examples (the split is already shuffled)."""
    for n, have, what in ((n_train, ds.n_train, "train"), (n_test, ds.n_test, "test")):
        if n is not None and not 0 < n <= have:
            raise ValueError(f"--n-{what} must be in 1..{have} for {ds.name}, got {n}")
    return ds.replace(
        x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test],
    )
