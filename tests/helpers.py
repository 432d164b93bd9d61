"""Small in-memory datasets for tests (fast, deterministic)."""

import numpy as np

from sgdreg.data import Dataset


def regression_dataset(n=40, d=5, k=1, n_test=20, seed=0, dtype=np.float64, noise=0.1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_test, d))
    w = rng.normal(size=(d, k))
    y = x @ w + noise * rng.normal(size=(n + n_test, k))
    return Dataset("toy-regression", x[:n].astype(dtype), y[:n].astype(dtype),
                   x[n:].astype(dtype), y[n:].astype(dtype), 0)


def classification_dataset(n=64, d=6, k=3, n_test=32, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.normal(size=(k, d))
    y = rng.integers(0, k, n + n_test)
    x = means[y] + rng.normal(size=(n + n_test, d))
    return Dataset("toy-classes", x[:n].astype(dtype), y[:n].astype(np.int32),
                   x[n:].astype(dtype), y[n:].astype(np.int32), k)
