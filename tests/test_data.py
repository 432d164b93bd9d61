"""Data sources (all offline) and the randomization tests of Zhang et al.
(docs/science.md#generalization-experiments)."""

import gzip
import pickle
import struct

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sgdreg.data import split
from sgdreg.datasets import (
    CIFAR_BIN,
    CIFAR_PY,
    DATASETS,
    MNIST_FILES,
    DataError,
    open_dataset,
    read_idx,
)
from sgdreg.randomization import RANDOMIZATIONS, randomize


@pytest.fixture(scope="module")
def digits():
    return open_dataset("digits")


# ---------------------------------------------------------------- built-in sources

def test_digits_shapes_split_and_determinism(digits):
    assert (digits.n_train, digits.n_test) == (1438, 359)  # data.split: round(0.2·1797) = 359
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    d = load_digits()  # the split is data.split(..., 0.2, seed=0) of sklearn's digits
    y_test = split(d.images, d.target, 0.2, seed=0)[3]
    np.testing.assert_array_equal(digits.y_test, y_test)
    again = open_dataset("digits", seed=123)  # real-data splits ignore seed
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    assert digits.meta["original_n_train"] == 1438 and digits.meta["preprocess"] == "standardize"


def test_standardised_train_features(digits):
    flat = digits.x_train.reshape(digits.n_train, -1).astype(np.float64)
    sd = flat.std(axis=0)
    varying = sd > 0  # constant pixels (digit borders) map to 0
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(sd[varying], 1.0, atol=1e-5)
    assert varying.sum() > 50


def test_unit_preprocess_and_subsample():
    ds = open_dataset("digits", preprocess="unit", n_train=100, n_test=20, dtype=np.float64)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and ds.x_train.max() > 0.99
    assert (ds.n_train, ds.n_test) == (100, 20) and ds.x_train.dtype == np.float64
    full = open_dataset("digits", preprocess="unit", dtype=np.float64)
    np.testing.assert_array_equal(ds.x_train, full.x_train[:100])


def test_float64_run_reads_float64_data():
    """A float64 run's data equal the float64 source (sklearn's raw digits, split and z-scored by
    numpy in float64), not its float32 rounding; float32 runs keep float32 data."""
    import jax

    from sgdreg.config import RunConfig
    from sgdreg.training import device_data, load_data

    raw = load_digits().data  # float64 pixels 0..16
    x_tr, _, x_te, _ = split(raw, np.zeros(len(raw)), 0.2, seed=0)
    mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    want_tr, want_te = ((x_tr - mu) / sd)[:100], ((x_te - mu) / sd)[:50]
    assert np.any(want_tr != want_tr.astype(np.float32))  # the source is not float32-exact
    cfg = RunConfig(dataset="digits", n_train=100, n_test=50, width=4, dtype="float64")
    ds = load_data(cfg)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float64
    np.testing.assert_array_equal(ds.x_train.reshape(100, -1), want_tr)
    np.testing.assert_array_equal(ds.x_test.reshape(50, -1), want_te)
    assert jax.config.jax_enable_x64  # tests/conftest.py: the run's device copy is float64 too
    on_device = device_data(ds, np.float64).x_train
    np.testing.assert_array_equal(np.asarray(on_device).reshape(100, -1), want_tr)
    reg = load_data(RunConfig(dataset="teacher", n_train=20, n_test=10, loss="mse",
                              dtype="float64"))
    assert reg.x_train.dtype == reg.y_train.dtype == np.float64  # targets in the run's dtype
    f32 = load_data(cfg.replace(dtype="float32"))
    assert f32.x_train.dtype == np.float32
    np.testing.assert_array_equal(f32.x_train.reshape(100, -1), want_tr.astype(np.float32))


def test_mnist1d_offline():
    state = np.random.get_state()[1].copy()
    ds = open_dataset("mnist1d")  # the first load in this process generates the data
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.num_classes) == (4000, 1000, (40,), 10)
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_mnist5k_offline():
    ds = open_dataset("mnist5k", preprocess="unit")
    assert (ds.n_train, ds.n_test, ds.input_shape) == (4000, 1000, (1, 28, 28))
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1  # raw pixels were 0..255
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() > 50  # the file is sorted by class; the split must be shuffled


def test_unknown_dataset_and_bad_options():
    with pytest.raises(DataError, match="digits"):
        open_dataset("imagenet")
    with pytest.raises(DataError, match="standardize"):
        open_dataset("digits", preprocess="whiten")
    with pytest.raises(DataError, match="n-train"):
        open_dataset("digits", n_train=10**6)
    assert set(DATASETS) >= {"digits", "mnist1d", "mnist5k", "gmm", "teacher", "linreg",
                             "mnist", "cifar10"}


# ---------------------------------------------------------------- synthetic tasks

@pytest.mark.parametrize("name", ["gmm", "teacher", "linreg"])
def test_synthetic_deterministic_per_seed(name):
    a, b, c = (open_dataset(name, seed=s) for s in (0, 0, 1))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.meta["seed"] == 0 and a.meta["preprocess"] == "none"
    small = open_dataset(name, seed=0, n_train=7, n_test=5)  # nested draws
    np.testing.assert_array_equal(small.x_train, a.x_train[:7])
    np.testing.assert_array_equal(small.y_test, a.y_test[:5])


def test_gmm_classes_and_bayes_error():
    ds = open_dataset("gmm", dtype=np.float64)
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.num_classes) == (1000, 500, (20,), 4)
    means = np.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(4)])
    pred = np.argmin(((ds.x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert 0.8 < np.mean(pred == ds.y_test) < 0.97  # moderate Bayes error (≈ 9%)


def test_teacher_and_linreg_regression():
    t = open_dataset("teacher")
    assert t.num_classes == 0 and t.y_train.shape == (500, 1) and t.out_size == 1
    assert t.y_train.dtype == np.float32 and 0.05 < t.y_train.std() < 2
    lr = open_dataset("linreg", dtype=np.float64)
    assert lr.input_shape[0] > lr.n_train and lr.y_train.shape == (50, 1)
    # y = X w* + noise: least squares on the 200 test points (n > d) recovers w* nearly exactly
    w = np.linalg.lstsq(lr.x_test, lr.y_test, rcond=None)[0]
    assert np.mean((lr.x_test @ w - lr.y_test) ** 2) < np.var(lr.y_test) * 1e-2


# ---------------------------------------------------------------- MNIST IDX files

def _write_idx(path, arr, gz):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    raw = struct.pack(">BBBB", 0, 0, codes[arr.dtype], arr.ndim)
    raw += struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    (gzip.open if gz else open)(f"{path}.gz" if gz else path, "wb").write(raw)


def _tiny_mnist(folder, rng, gz):
    arrays = [rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, 7, dtype=np.uint8),
              rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, 3, dtype=np.uint8)]
    folder.mkdir(exist_ok=True)
    for name, arr in zip(MNIST_FILES, arrays):
        _write_idx(folder / name, arr, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip(tmp_path, gz):
    x_tr, y_tr, x_te, y_te = _tiny_mnist(tmp_path, np.random.default_rng(0), gz)
    ds = open_dataset("mnist", data_dir=tmp_path, preprocess="none", dtype=np.float64)
    assert ds.input_shape == (1, 28, 28) and (ds.n_train, ds.n_test) == (7, 3)
    np.testing.assert_array_equal(ds.x_train[:, 0], x_tr)
    np.testing.assert_array_equal(ds.x_test[:, 0], x_te)
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.y_test, y_te)


def test_read_idx_big_endian_and_corrupt(tmp_path):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i4")
    _write_idx(tmp_path / "a", arr, gz=False)
    out = read_idx(tmp_path / "a")
    np.testing.assert_array_equal(out, arr)
    assert out.shape == (2, 3, 4) and out.dtype == np.int32 and out.dtype.isnative
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(DataError, match="corrupt"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x00")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "c")


def test_mnist_missing_dir_and_files(tmp_path):
    for data_dir in (None, tmp_path / "nope"):
        with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
            open_dataset("mnist", data_dir=data_dir)
        assert "\n" not in str(e.value)
    _tiny_mnist(tmp_path, np.random.default_rng(0), gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing in .*: t10k-labels-idx1-ubyte\[\.gz\]$"):
        open_dataset("mnist", data_dir=tmp_path)


# ---------------------------------------------------------------- CIFAR-10

def _tiny_cifar(rng, n=4):
    xs = rng.integers(0, 256, (6, n, 3, 32, 32), dtype=np.uint8)
    ys = rng.integers(0, 10, (6, n), dtype=np.uint8)
    return xs, ys


@pytest.mark.parametrize("version", ["bin", "py", "py2"])
def test_cifar10_round_trip(tmp_path, version):
    """``py2``: protocol 2 with numpy 1's module path, like the official python2-era pickles."""
    xs, ys = _tiny_cifar(np.random.default_rng(1))
    folder = tmp_path / ("cifar-10-batches-" + ("bin" if version == "bin" else "py"))
    folder.mkdir()
    for name_bin, name_py, x, y in zip(CIFAR_BIN, CIFAR_PY, xs, ys):
        if version == "bin":
            rec = np.concatenate([y[:, None], x.reshape(len(x), -1)], axis=1)
            (folder / name_bin).write_bytes(rec.tobytes())
        else:
            batch = {b"data": x.reshape(len(x), -1), b"labels": y.tolist()}
            raw = pickle.dumps(batch, protocol=2 if version == "py2" else 4)
            if version == "py2":
                raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            (folder / name_py).write_bytes(raw)
    ds = open_dataset("cifar10", data_dir=tmp_path, preprocess="none", dtype=np.float64)
    assert ds.input_shape == (3, 32, 32) and (ds.n_train, ds.n_test) == (20, 4)
    np.testing.assert_array_equal(ds.x_train, xs[:5].reshape(20, 3, 32, 32))
    np.testing.assert_array_equal(ds.y_train, ys[:5].reshape(-1))
    np.testing.assert_array_equal(ds.x_test, xs[5])
    np.testing.assert_array_equal(ds.y_test, ys[5])
    assert ("binary" if version == "bin" else "python") in ds.meta["source"]


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="data_batch_1.bin.*test_batch.bin.*data_batch_1"):
        open_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match="no --data-dir"):
        open_dataset("cifar10")
    for name in CIFAR_BIN:
        (tmp_path / name).write_bytes(bytes(3073 + 1))
    with pytest.raises(DataError, match="3073-byte"):
        open_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_python_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in CIFAR_PY:
        (tmp_path / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing"):
        open_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------- randomization (Zhang et al.)

@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_label_corruption_fraction_binomial(digits, p):
    n, q = digits.n_train, p * 0.9  # P(changed) = p·(1 − 1/K)
    for seed in range(3):
        r = randomize(digits, "label-corruption", p=p, seed=seed)
        frac = np.mean(r.y_train != digits.y_train)
        assert abs(frac - q) < 4 * np.sqrt(q * (1 - q) / n)
        assert r.meta["randomization"]["fraction_labels_changed"] == pytest.approx(frac)
        np.testing.assert_array_equal(r.y_test, digits.y_test)
        np.testing.assert_array_equal(r.x_train, digits.x_train)
    assert r.y_train.dtype == np.int32 and set(np.unique(r.y_train)) <= set(range(10))


def test_random_labels_is_uniform_p1(digits):
    r = randomize(digits, "random-labels", seed=0)
    assert r.meta["randomization"]["p"] == 1.0
    q = 0.9
    assert abs(np.mean(r.y_train != digits.y_train) - q) < 4 * np.sqrt(q * (1 - q) / r.n_train)
    np.testing.assert_array_equal(r.y_train, randomize(digits, "label-corruption", p=1.0).y_train)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.37, 1.0])
def test_label_corruption_incorrect_exact(digits, p):
    r = randomize(digits, "label-corruption-incorrect", p=p, seed=3)
    changed = r.y_train != digits.y_train
    assert changed.sum() == round(p * digits.n_train)
    assert r.meta["randomization"]["fraction_labels_changed"] == changed.mean()
    np.testing.assert_array_equal(r.y_test, digits.y_test)


def test_randomization_deterministic(digits):
    for kind in RANDOMIZATIONS:
        a, b = (randomize(digits, kind, p=0.3, seed=7) for _ in range(2))
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_train, b.y_train)
        np.testing.assert_array_equal(a.x_test, b.x_test)
        assert a.meta["randomization"]["kind"] == kind and a.meta["randomization"]["seed"] == 7


def test_shuffled_pixels_one_permutation(digits):
    r = randomize(digits, "shuffled-pixels", seed=0)
    # recover π from an image of distinct feature indices pushed through the same transform
    probe = digits.replace(x_train=np.arange(64.0).reshape(1, 1, 8, 8), x_test=digits.x_test)
    perm = randomize(probe, "shuffled-pixels", seed=0).x_train.reshape(-1).astype(int)
    assert sorted(perm) == list(range(64)) and not np.array_equal(perm, np.arange(64))
    flat = lambda x: x.reshape(len(x), -1)
    np.testing.assert_array_equal(flat(r.x_train), flat(digits.x_train)[:, perm])
    np.testing.assert_array_equal(flat(r.x_test), flat(digits.x_test)[:, perm])
    np.testing.assert_array_equal(r.y_train, digits.y_train)


def test_random_pixels_keeps_each_images_values(digits):
    r = randomize(digits, "random-pixels", seed=0)
    for x, xr in ((digits.x_train, r.x_train), (digits.x_test, r.x_test)):
        flat, flat_r = x.reshape(len(x), -1), xr.reshape(len(xr), -1)
        np.testing.assert_array_equal(np.sort(flat, axis=1), np.sort(flat_r, axis=1))
        assert np.mean(np.any(flat != flat_r, axis=1)) > 0.99
    # images of distinct feature indices reveal each image's permutation: all differ
    probe = digits.replace(x_train=np.tile(np.arange(64.0), (20, 1)).reshape(20, 1, 8, 8))
    perms = randomize(probe, "random-pixels", seed=0).x_train.reshape(20, -1)
    assert len({tuple(q) for q in perms}) == 20


def test_gaussian_inputs_match_moments():
    raw = open_dataset("digits", preprocess="none", dtype=np.float64)  # pixel moments vary a lot
    r = randomize(raw, "gaussian", seed=0)
    assert r.x_train.shape == raw.x_train.shape and r.x_train.dtype == raw.x_train.dtype
    mu, var, n = raw.x_train.mean(0), raw.x_train.var(0), raw.n_train
    assert np.all(np.abs(r.x_train.mean(0) - mu) <= 5 * np.sqrt(var / n) + 1e-9)
    assert np.all(np.abs(r.x_train.var(0) - var) <= 6 * var * np.sqrt(2 / n) + 1e-9)
    assert np.all(np.abs(r.x_test.mean(0) - mu) <= 5 * np.sqrt(var / raw.n_test) + 1e-9)
    assert not np.allclose(r.x_test, raw.x_test)
    np.testing.assert_array_equal(r.y_train, raw.y_train)
    np.testing.assert_array_equal(r.y_test, raw.y_test)


def test_randomize_errors(digits):
    with pytest.raises(ValueError, match="label-corruption"):
        randomize(digits, "label-noise")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        randomize(digits, "label-corruption", p=1.5)
    with pytest.raises(ValueError, match="regression"):
        randomize(open_dataset("linreg"), "random-labels")
    assert randomize(open_dataset("linreg"), "gaussian").meta["randomization"]["p"] is None
