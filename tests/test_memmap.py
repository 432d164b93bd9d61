"""Memory-mapped raw data (issue 14, item 2: "CIFAR-10 and MNIST from --data-dir use it").

Small files in the real formats (CIFAR-10 binary batches, MNIST IDX, gzipped and not) opened with
a device budget stay in their files (``np.memmap``; gzip and the CIFAR-10 pickles: raw uint8 in
RAM), standardized chunk by chunk. Oracle: the in-memory path from the same files
(``open_dataset`` without a budget), float64: the data, the full-batch loss, gradient and HVP,
GD and SGD traces and a vmapped sweep agree to ~1e-11 (the statistics are summed in another
order, so not bit for bit).
"""

import gzip
import json
import struct

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdreg
from sgdreg import data as sd
from sgdreg.batching import HostArray, full_batch_hvp, full_batch_value_and_grad
from sgdreg.config import RunConfig
from sgdreg.datasets import CIFAR_BIN, MNIST_FILES, open_dataset
from sgdreg.errors import ConfigError, DataError
from sgdreg.training import center_crop, load_data

N_BATCH, N_TEST, CHUNK = 7, 6, 8  # 35 training rows in chunks of 8: a ragged last chunk


def _write_cifar(folder, rng):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CIFAR_BIN):
        n = N_TEST if i == 5 else N_BATCH
        rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))],
                             axis=1).astype(np.uint8)
        (folder / name).write_bytes(rec.tobytes())
    return folder


def _write_idx(path, arr, gz):
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    (gzip.open if gz else open)(f"{path}.gz" if gz else path, "wb").write(raw + arr.tobytes())


def _write_mnist(folder, rng):
    """Training files uncompressed (memory-mapped), test files gzipped (read into RAM)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = (20, 20, 6, 6)
    for k, (name, n) in enumerate(zip(MNIST_FILES, sizes)):
        arr = rng.integers(0, 256 if k % 2 == 0 else 10, (n, 28, 28) if k % 2 == 0 else n,
                           dtype=np.uint8)
        if k % 2 == 0:
            arr[:, :2] = 7  # constant pixels: σ = 0 → 1
        _write_idx(folder / name, arr, gz=k >= 2)
    return folder


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return _write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin",
                        np.random.default_rng(0)).parent


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return _write_mnist(tmp_path_factory.mktemp("mnist"), np.random.default_rng(1))


def _both(name, folder, **kw):
    """In memory, and memory-mapped with a budget of 300 kB: over one chunk of 8 CIFAR rows
    (8 × (3072 · 8 + 4) bytes), under the data (41 rows)."""
    mem = open_dataset(name, data_dir=folder, dtype=np.float64, **kw)
    host = open_dataset(name, data_dir=folder, dtype=np.float64, device_budget=300_000, **kw)
    return mem, host


def _close(a, b, rtol=1e-12, atol=1e-13):
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("how", ["standardize", "unit", "none"])
def test_cifar_memmapped_equals_in_memory(cifar, how):
    mem, host = _both("cifar10", cifar, preprocess=how)
    x = host.x_train
    assert isinstance(x, HostArray) and len(x.parts) == 5
    assert all(isinstance(p, np.memmap) and p.dtype == np.uint8 and p.shape == (N_BATCH, 3073)
               for p in x.parts)  # the files themselves, not a copy
    assert isinstance(host.x_test.array, np.memmap)
    assert x.shape == mem.x_train.shape == (35, 3, 32, 32) and x.dtype == np.float64
    assert host.meta["storage"].startswith("host: np.memmap")
    np.testing.assert_array_equal(host.y_train, mem.y_train)
    _close(x[:], mem.x_train, atol=1e-14)
    _close(host.x_test[:], mem.x_test, atol=1e-14)
    rows = np.array([34, 0, 7, 6])  # across files, unordered
    _close(x[rows], mem.x_train[rows], atol=1e-14)
    # one streaming pass = numpy's two-pass mean/std (to rounding)
    raw = HostArray(x.parts, None, sd.Affine((3, 32, 32), columns=slice(1, None)))
    mu, sdv = sd.host_statistics(raw, chunk=CHUNK)
    if how == "standardize":
        ref = np.concatenate([np.asarray(p[:, 1:], np.float64) for p in x.parts])
        _close((mu, sdv), (ref.mean(0).reshape(3, 32, 32), ref.std(0).reshape(3, 32, 32)),
               rtol=1e-13)


def test_mnist_memmapped_train_gzip_test_in_ram(mnist):
    mem, host = _both("mnist", mnist, n_train=15, n_test=4)
    assert isinstance(host.x_train.array, np.memmap)
    assert not isinstance(host.x_test.array, np.memmap) and host.x_test.array.dtype == np.uint8
    assert host.x_train.shape == (15, 1, 28, 28) and host.n_test == 4
    _close(host.x_train[:], mem.x_train, atol=1e-14)
    _close(host.x_test[:], mem.x_test, atol=1e-14)
    assert host.meta["original_n_train"] == 20
    assert host.meta["storage"].endswith("gzipped ones in RAM as uint8")


def test_cifar_python_version_is_read_into_ram_as_uint8(tmp_path):
    """Pickles cannot be memory-mapped: the raw uint8 batches in RAM, converted per chunk."""
    import pickle

    from sgdreg.datasets import CIFAR_PY

    rng = np.random.default_rng(6)
    for i, name in enumerate(CIFAR_PY):
        n = N_TEST if i == 5 else N_BATCH
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    mem, host = _both("cifar10", tmp_path)
    assert host.meta["storage"].startswith("host: raw uint8 in RAM")
    assert all(p.dtype == np.uint8 and not isinstance(p, np.memmap) for p in host.x_train.parts)
    _close(host.x_train[:], mem.x_train, atol=1e-14)
    _close(host.x_test[:], mem.x_test, atol=1e-14)


def test_center_crop_per_chunk(cifar):
    mem, host = (center_crop(d, 28) for d in _both("cifar10", cifar))
    assert host.x_train.shape == (35, 3, 28, 28) and isinstance(host.x_train, HostArray)
    _close(host.x_train[:], mem.x_train, atol=1e-14)
    _close(jax.jit(lambda i: host.x_train[i])(jnp.asarray([3, 30])), mem.x_train[[3, 30]],
           atol=1e-14)


def _loss(p, x, y):
    return -jax.nn.log_softmax(jnp.tanh(x.reshape(-1) @ p["w1"]) @ p["w2"])[y]


def _problem(cifar):
    mem, host = _both("cifar10", cifar)
    rng = np.random.default_rng(4)
    p = {"w1": jnp.asarray(rng.normal(size=(3072, 3)) / 50),
         "w2": jnp.asarray(rng.normal(size=(3, 10)))}
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), p)
    dev = (jnp.asarray(mem.x_train), jnp.asarray(mem.y_train))
    return p, v, dev, (HostArray(host.x_train), HostArray(host.y_train))


def test_full_batch_loss_grad_equal_in_memory(cifar):
    p, _, dev, hx = _problem(cifar)
    got, ref = jax.jit(lambda q, x, y: (full_batch_value_and_grad(_loss, q, *hx, CHUNK),
                                        full_batch_value_and_grad(_loss, q, x, y, CHUNK)))(p, *dev)
    _close(got, ref)


@pytest.mark.slow
def test_full_batch_hvp_equal_in_memory(cifar):
    p, v, dev, hx = _problem(cifar)
    _close(full_batch_hvp(_loss, p, *hx, v, CHUNK), full_batch_hvp(_loss, p, *dev, v, CHUNK))


class _Net(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __init__(self, d, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(d, 4, key=k1, dtype=jnp.float64)
        self.l2 = eqx.nn.Linear(4, 10, key=k2, dtype=jnp.float64)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x.reshape(-1))))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, batch", [("gd", None), ("sgd", 8)])
def test_training_from_memmap_equals_in_memory(cifar, optimizer, batch):
    """3 steps from the same θ0: GD (streamed full-batch gradients) and SGD (minibatches
    gathered from the files) log the in-memory run's trace."""
    mem, host = (center_crop(d, 28) for d in _both("cifar10", cifar))
    kw = dict(lr=0.05, steps=3, log_every=1, eval_chunk=CHUNK, batch_size=batch)
    ref = sgdreg.run(_Net(3 * 28 * 28, jax.random.key(0)), mem, optimizer, **kw).trace
    got = sgdreg.run(_Net(3 * 28 * 28, jax.random.key(0)), host, optimizer, **kw).trace
    assert got["provenance"]["data"]["placement"] == "host (streamed)"
    assert ref["provenance"]["data"]["placement"] == "device"
    for col in ("train_loss", "test_loss", "train_acc", "grad_norm_sq", "weight_norm"):
        _close(got["metrics"][col], ref["metrics"][col], rtol=1e-11)


def test_load_data_with_budget_memmaps_and_checks_the_chunk(cifar):
    cfg = RunConfig(dataset="cifar10", data_dir=str(cifar), dtype="float64", crop=28,
                    eval_chunk=CHUNK)
    ds = load_data(cfg, device_budget=10**6)
    assert isinstance(ds.x_train.parts[0], np.memmap) and ds.input_shape == (3, 28, 28)
    with pytest.raises(ConfigError, match=r"device_budget 1000 bytes is below one chunk"):
        load_data(cfg, device_budget=1000)
    # an input randomization rewrites every input: read into RAM first, same values
    cfg = cfg.replace(randomization="shuffled-pixels")
    got, ref = load_data(cfg, device_budget=10**6), load_data(cfg)
    assert isinstance(got.x_train, np.ndarray)
    _close((got.x_train, got.x_test), (ref.x_train, ref.x_test), atol=1e-14)


@pytest.mark.parametrize("which", ["cifar", "mnist"])
def test_truncated_file_is_one_line_naming_it(tmp_path, which):
    rng = np.random.default_rng(2)
    if which == "cifar":
        folder = _write_cifar(tmp_path / "d", rng)
        bad = folder / "data_batch_3.bin"
    else:
        folder = _write_mnist(tmp_path / "d", rng)
        bad = folder / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    for budget in (None, 10**6):
        with pytest.raises(DataError, match="corrupt") as e:
            open_dataset("cifar10" if which == "cifar" else "mnist", data_dir=folder,
                         device_budget=budget)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_cli_truncated_file_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    from sgdreg_cli.main import main

    folder = _write_cifar(tmp_path / "d", np.random.default_rng(3))
    (folder / "test_batch.bin").write_bytes(bytes(100))
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--dataset", "cifar10", "--data-dir", str(folder), "--steps", "1",
                 "--device-budget", "100000", "--out", "o"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "test_batch.bin is corrupt" in err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- sweep and eos


def _sweep_doc(cifar, **base):
    return {"name": "mm", "base": dict(dataset="cifar10", data_dir=str(cifar), model="linear",
                                       steps=2, log_every=1, eval_chunk=CHUNK, batch_size=8,
                                       dtype="float64", **base),
            "grid": {"optimizer": ["gd", "sgd"], "lr": [0.01, 0.02]}}


@pytest.mark.slow
def test_sweep_streams_from_memmap_and_equals_in_memory(cifar, tmp_path):
    """Every run of a vmapped group streams the one shared memory-mapped copy: full-batch GD
    (chunks fetched by a callback that does not depend on the run) and SGD (rows gathered per
    run) give the in-memory sweep's traces."""
    from sgdreg import sweep

    doc = _sweep_doc(cifar)
    ref = sweep.run_sweep(doc, tmp_path / "mem", devices=1)
    got = sweep.run_sweep(doc, tmp_path / "host", devices=1, device_budget=300_000)
    assert len(got.traces) == 4 and all(r["status"] == "completed" for r in got.index["runs"])
    for a, b in zip(got.traces, ref.traces, strict=True):
        assert a["provenance"]["data"]["placement"] == "host (streamed)"
        assert b["provenance"]["data"]["placement"] == "device"
        for col in ("train_loss", "test_loss", "train_acc", "grad_norm_sq", "weight_norm"):
            _close(a["metrics"][col], b["metrics"][col], rtol=1e-11)


def test_sweep_budget_errors_are_one_line_exit_2(cifar, tmp_path, monkeypatch, capsys):
    from sgdreg_cli.main import main

    from sgdreg import sweep

    grid = tmp_path / "g.toml"
    base = "\n".join(f"{k} = {json.dumps(v)}" for k, v in _sweep_doc(cifar)["base"].items())
    grid.write_text(f'name = "mm"\n[base]\n{base}\n[grid]\nlr = [0.01, 0.02]\n')
    monkeypatch.chdir(tmp_path)
    for budget, needle in (("1000", "--device-budget 1000 bytes is below one chunk (196640 "),
                           ("0", "--device-budget must be a positive number of bytes, got 0")):
        code = main(["sweep", str(grid), "--out", "o", "--device-budget", budget])
        err = capsys.readouterr().err
        assert code == 2 and err.strip().count("\n") == 0 and needle in err, err
        assert not (tmp_path / "o").exists()
    doc = _sweep_doc(cifar, randomization="random-labels")  # labels drawn per seed
    doc["grid"] = {"seed": [0, 1]}
    with pytest.raises(ConfigError, match="draw their own data"):
        sweep.run_sweep(doc, tmp_path / "o", device_budget=300_000)
    assert not (tmp_path / "o").exists()


def test_eos_budget_below_one_chunk_exit_2(cifar, tmp_path, capsys):
    from sgdreg_cli.main import main

    out = tmp_path / "eos"
    code = main(["eos", "--dataset", "cifar10", "--data-dir", str(cifar), "--lr", "0.1",
                 "--steps", "4", "--device-budget", "5000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "--device-budget 5000 bytes is " \
        "below one chunk" in err and not out.exists(), err
