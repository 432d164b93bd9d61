"""Randomization tests of Zhang et al. (2017), "Understanding deep learning requires rethinking
generalization" (docs/science.md#generalization-experiments): the one place where data is randomized.

Each transform is drawn once from ``seed`` (a numpy Generator) and is deterministic, so the
randomized data stay fixed across epochs. Labels change only on the training set; input transforms
apply to train and test alike. A "pixel" is one input feature (all C·H·W values of an image).
"""

from __future__ import annotations

import numpy as np

from .data import Dataset

LABEL_KINDS = ("label-corruption", "label-corruption-incorrect", "random-labels")
INPUT_KINDS = ("shuffled-pixels", "random-pixels", "gaussian")
RANDOMIZATIONS = ("none", *LABEL_KINDS, *INPUT_KINDS)


def label_corruption(y: np.ndarray, num_classes: int, p: float, rng: np.random.Generator):
    """Each label independently, with probability p, replaced by a uniform class in 0..K−1 (may
    equal the old one, so a fraction ≈ (1 − 1/K)·p changes)."""
    replace = rng.random(len(y)) < p
    return np.where(replace, rng.integers(num_classes, size=len(y)), y).astype(y.dtype)


def label_corruption_incorrect(y: np.ndarray, num_classes: int, p: float,
                               rng: np.random.Generator):
    """Exactly round(p·n) labels (a uniform random subset) replaced by a uniform *incorrect* class:
    y ← (y + U{1..K−1}) mod K, so exactly that fraction changes."""
    idx = rng.choice(len(y), size=int(round(p * len(y))), replace=False)
    out = y.copy()
    out[idx] = (y[idx] + rng.integers(1, num_classes, size=len(idx))) % num_classes
    return out


def shuffled_pixels(x_train: np.ndarray, x_test: np.ndarray, rng: np.random.Generator):
    """One permutation π of the features applied to every image: x ↦ x_π (train and test)."""
    perm = rng.permutation(int(np.prod(x_train.shape[1:])))

    def apply(x):
        return x.reshape(len(x), -1)[:, perm].reshape(x.shape)

    return apply(x_train), apply(x_test)


def random_pixels(x: np.ndarray, rng: np.random.Generator):
    """An independent permutation of the features of each image (its multiset of values kept)."""
    return rng.permuted(x.reshape(len(x), -1), axis=1).reshape(x.shape)


def gaussian_inputs(x_train: np.ndarray, x_test: np.ndarray, rng: np.random.Generator):
    """Inputs replaced by N(μ, σ²) noise, μ and σ² the per-feature mean and variance of x_train."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)

    def draw(x):
        return (mu + sd * rng.standard_normal(x.shape)).astype(x.dtype)

    return draw(x_train), draw(x_test)


def randomize(ds: Dataset, kind: str, *, p: float = 0.0, seed: int = 0) -> Dataset:
    """Apply randomization ``kind`` (one of ``RANDOMIZATIONS``) to ``ds``; p is the corruption
    probability of the label kinds (random-labels is p = 1 and ignores it; input kinds ignore it).
    Records kind, p, seed and the measured fraction of train labels changed in
    ``meta["randomization"]``; test labels are never changed."""
    if kind not in RANDOMIZATIONS:
        raise ValueError(
            f"unknown randomization {kind!r}; choose one of {', '.join(RANDOMIZATIONS)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"corruption probability p must be in [0, 1], got {p}")
    if kind in LABEL_KINDS and not ds.num_classes:
        raise ValueError(f"{kind} needs a classification dataset; {ds.name} is regression")
    rng = np.random.default_rng(seed)
    changes, p_used = {}, (1.0 if kind == "random-labels" else float(p))
    if kind in ("label-corruption", "random-labels"):
        changes["y_train"] = label_corruption(ds.y_train, ds.num_classes, p_used, rng)
    elif kind == "label-corruption-incorrect":
        changes["y_train"] = label_corruption_incorrect(ds.y_train, ds.num_classes, p_used, rng)
    elif kind == "shuffled-pixels":
        changes["x_train"], changes["x_test"] = shuffled_pixels(ds.x_train, ds.x_test, rng)
    elif kind == "random-pixels":
        changes["x_train"], changes["x_test"] = (random_pixels(x, rng)
                                                 for x in (ds.x_train, ds.x_test))
    elif kind == "gaussian":
        changes["x_train"], changes["x_test"] = gaussian_inputs(ds.x_train, ds.x_test, rng)
    y_new = changes.get("y_train", ds.y_train)
    record = {"kind": kind, "p": p_used if kind in LABEL_KINDS else None, "seed": seed,
              "fraction_labels_changed": float(np.mean(y_new != ds.y_train)) if ds.n_train else 0.0}
    return ds.replace(**changes, meta={**ds.meta, "randomization": record})
