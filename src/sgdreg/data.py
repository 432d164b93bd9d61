"""Datasets: the ``Dataset`` record, deterministic splits and standardisation.

Sources live in ``datasets.py`` (all offline), randomization transforms in ``randomization.py``.
Inputs keep their natural per-example shape (``(C, H, W)`` for images, ``(d,)`` for vectors);
labels are integer classes (``num_classes`` > 0) or float targets of shape ``(n, k)`` for
regression (``num_classes`` = 0). Inputs are NumPy arrays, or ``batching.HostArray`` for data
left on the host (memory-mapped raw files, standardized chunk by chunk by ``Affine`` with the
statistics of ``host_statistics``: the same numbers as ``preprocess``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from .batching import HostArray

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
    #: NumPy or ``np.memmap``) and streams chunks of ``eval_chunk`` rows to the device. Inputs
    #: may already be ``HostArray`` (``open_dataset(..., device_budget=)``: memory-mapped files).
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
    def head(a, n):
        return a if n is None else a.head(n) if isinstance(a, HostArray) else a[:n]

    return ds.replace(
        x_train=head(ds.x_train, n_train), y_train=ds.y_train[:n_train],
        x_test=head(ds.x_test, n_test), y_test=ds.y_test[:n_test],
    )


# ---------------------------------------------------------------- host data, chunk by chunk

class Affine:
    """Per-chunk transform of raw host rows (``HostArray(..., transform=)``): keep ``columns``
    of each record (CIFAR-10: the 3072 pixel bytes after the label byte), reshape to ``shape``
    per example, then in float64 (x − ``shift``)/``scale`` — ``preprocess``'s arithmetic, so a
    chunk equals the same rows of the in-memory arrays. ``key``: bytes naming it (for digests)."""

    def __init__(self, shape, shift=None, scale=None, columns: slice | None = None):
        self.shape, self.columns = tuple(int(d) for d in shape), columns
        self.shift = None if shift is None else np.asarray(shift, np.float64)
        self.scale = None if scale is None else np.asarray(scale, np.float64)
        h = hashlib.sha256(repr((self.shape, columns)).encode())
        for a in (self.shift, self.scale):
            h.update(b"-" if a is None else a.tobytes())
        self.key = b"affine " + h.hexdigest().encode()

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = raw if self.columns is None else raw[:, self.columns]
        x = x.reshape((len(x),) + self.shape).astype(np.float64)  # a new array: in place below
        if self.shift is not None:
            np.subtract(x, self.shift, out=x)
        if self.scale is not None:
            np.divide(x, self.scale, out=x)
        return x


def host_statistics(x: HostArray, how: str = "standardize", chunk: int = 4096):
    """``(shift, scale)`` of ``preprocess(how)`` from train inputs on the host, in one pass over
    chunks with float64 accumulators: per-feature mean and variance merged chunk by chunk (Chan,
    Golub & LeVeque 1979: δ = μ_b − μ, μ ← μ + δ·n_b/(n + n_b),
    M2 ← M2 + M2_b + δ²·n·n_b/(n + n_b); σ = √(M2/n), constant features σ → 1), or the largest
    magnitude (``unit``); ``(None, None)`` for ``none``."""
    if how == "none":
        return None, None
    if how not in PREPROCESS:
        raise ValueError(f"unknown preprocessing {how!r}; choose one of {', '.join(PREPROCESS)}")
    n, mean, m2, peak = 0, 0.0, 0.0, 0.0
    for _, b in x.chunks(chunk):
        b = np.asarray(b, np.float64)
        if how == "unit":
            peak = max(peak, float(np.abs(b).max()) if b.size else 0.0)
            continue
        nb, mb = len(b), b.mean(axis=0)
        m2b = np.square(b - mb).sum(axis=0)
        delta, tot = mb - mean, n + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + np.square(delta) * (n * nb / tot)
        n = tot
    if how == "unit":
        return None, max(peak, 1e-12)
    sd = np.sqrt(m2 / max(n, 1))
    return mean, np.where(sd > 1e-12, sd, 1.0)


class CenterCrop:
    """x[..., t:t+size, l:l+size], t = ⌊(h − size)/2⌋, l = ⌊(w − size)/2⌋: ``training.center_crop``
    (in-memory arrays: a view; host data: applied to each chunk as it is read, ``HostArray.map``)."""

    def __init__(self, size: int, h: int, w: int):
        self.size, self.top, self.left = int(size), (h - size) // 2, (w - size) // 2
        self.key = f"crop {self.size} at {self.top},{self.left}".encode()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t, lft, s = self.top, self.left, self.size
        return x[..., t:t + s, lft:lft + s]  # a view (HostArray.read copies it into its chunk)
