"""Data larger than device memory (issue 14, item 2): host data streamed in chunks give the
in-memory numbers.

Oracle: the in-memory path (``batching._scan_sum`` over device arrays, itself tested against
dense/unchunked sums in test_curvature/test_training) on the same data, float64, ~1e-12.
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdreg
from sgdreg import curvature as cv
from sgdreg.batching import HostArray, full_batch_hvp, full_batch_mean, full_batch_value_and_grad
from sgdreg.data import Dataset
from sgdreg.errors import ConfigError

N, D, H, K = 37, 5, 6, 3  # 37 rows in chunks of 8: a ragged last chunk
CHUNK = 8


def _loss(p, x, y):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
    return -jax.nn.log_softmax(logits)[y]


def _metrics(p, x, y):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
    return -jax.nn.log_softmax(logits)[y], (jnp.argmax(logits) == y).astype(x.dtype)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = rng.integers(0, K, size=N).astype(np.int32)
    path = tmp_path_factory.mktemp("mm") / "x.f64"
    mm = np.memmap(path, np.float64, "w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    p = {"w1": jnp.asarray(rng.normal(size=(D, H))), "b1": jnp.asarray(rng.normal(size=H)),
         "w2": jnp.asarray(rng.normal(size=(H, K)))}
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), p)
    dev = (jnp.asarray(x), jnp.asarray(y))
    host = (HostArray(np.memmap(path, np.float64, "r", shape=x.shape)), HostArray(y))
    return p, v, dev, host


def _close(a, b, rtol=1e-12):
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=rtol, atol=1e-14)


def test_streamed_loss_equals_in_memory(problem):
    p, _, dev, host = problem
    got = full_batch_mean(_loss, p, *host, CHUNK)
    _close(got, full_batch_mean(_loss, p, *dev, CHUNK))
    lv = jax.vmap(_loss, (None, 0, 0))  # and the definition: an unchunked mean
    np.testing.assert_allclose(got, jnp.mean(lv(p, *dev)), rtol=1e-12)


@pytest.mark.slow
def test_aux_mean_hvp_equal_in_memory(problem):
    p, v, dev, host = problem
    _close(full_batch_value_and_grad(_metrics, p, *host, CHUNK, has_aux=True),
           full_batch_value_and_grad(_metrics, p, *dev, CHUNK, has_aux=True))
    _close(full_batch_hvp(_loss, p, *host, v, CHUNK), full_batch_hvp(_loss, p, *dev, v, CHUNK))
    # under jit too (the HostArray is static structure)
    jitted = jax.jit(lambda q, xx, yy: full_batch_hvp(_loss, q, xx, yy, v, CHUNK))
    _close(jitted(p, *host), full_batch_hvp(_loss, p, *dev, v, CHUNK))


def _operators(problem):
    """The Hessian operator in memory and streamed, and a shared key."""
    p, _, dev, host = problem
    return (cv.hessian_matvec(_loss, p, *dev, chunk_size=CHUNK),
            cv.hessian_matvec(_loss, p, *host, chunk_size=CHUNK), jax.random.key(3))


@pytest.mark.slow
def test_hutchinson_lanczos_equal_in_memory(problem):
    p, _, dev, _ = problem
    hd, hh, key = _operators(problem)
    a = cv.hutchinson(hd, hd.dim, key, 6)
    b = cv.hutchinson(hh, hh.dim, key, 6)  # the same probes
    _close((b.estimate, b.trace_sq, b.diag), (a.estimate, a.trace_sq, a.diag))
    a = cv.lanczos_eigs(hd, hd.dim, 1, 20, key=key)
    b = cv.lanczos_eigs(hh, hh.dim, 1, 20, key=key)
    _close(b.eigenvalues, a.eigenvalues)
    dense = np.linalg.eigvalsh(np.asarray(cv.dense_hessian(_loss, p, *dev)))
    np.testing.assert_allclose(b.eigenvalues[0], dense[-1], rtol=1e-10)


@pytest.mark.slow
def test_vmapped_probes_adaptive_lanczos_slq_equal_in_memory(problem):
    p, _, dev, _ = problem
    hd, hh, key = _operators(problem)
    a = cv.hutchinson(hd, hd.dim, key, 6, batching="vmap")
    b = cv.hutchinson(hh, hh.dim, key, 6, batching="vmap")
    _close((b.estimate, b.trace_sq, b.diag), (a.estimate, a.trace_sq, a.diag))
    dense = np.linalg.eigvalsh(np.asarray(cv.dense_hessian(_loss, p, *dev)))
    lo = cv.lanczos_adaptive(hh, hh.dim, 1, hh.dim, key=key, tol=1e-10)
    np.testing.assert_allclose(lo.eigenvalues[0], dense[0], atol=1e-8)
    _close(cv.slq(hh, hh.dim, key, 2, 8), cv.slq(hd, hd.dim, key, 2, 8))


def test_host_array_gather_and_shapes(problem):
    _, _, dev, host = problem
    hx = host[0]
    assert hx.shape == (N, D) and len(hx) == N and hx.nbytes == N * D * 8
    idx = jnp.asarray([[3, 0], [36, 5]])
    np.testing.assert_array_equal(jax.jit(lambda i: hx[i])(idx), dev[0][idx])
    np.testing.assert_array_equal(jax.vmap(lambda i: hx[i])(idx), dev[0][idx])
    np.testing.assert_array_equal(hx[2], np.asarray(dev[0][2]))
    f32 = HostArray(hx.array, np.float32)
    assert jax.jit(lambda i: f32[i])(idx).dtype == jnp.float32


def test_host_array_of_parts_with_a_transform():
    """Several arrays read as one (CIFAR-10's batch files), a per-row transform applied on
    every read path (host indexing, jit/vmap gathers, chunks), head/map views, digests."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 256, (5, 7), dtype=np.uint8), rng.integers(0, 256, (4, 7),
                                                                       dtype=np.uint8)
    whole = np.concatenate([a, b])

    def tf(raw):  # drop column 0, scale, reshape to (2, 3)
        return (raw[:, 1:].astype(np.float64) / 255).reshape(len(raw), 2, 3)

    ref = tf(whole)
    h = HostArray([a, b], None, tf)
    assert h.shape == (9, 2, 3) and h.dtype == np.float64 and h.nbytes == 9 * 6 * 8
    np.testing.assert_array_equal(h[:], ref)
    np.testing.assert_array_equal(h[[8, 0, 5, 4]], ref[[8, 0, 5, 4]])
    np.testing.assert_array_equal(h[3, 1], ref[3, 1])
    idx = jnp.asarray([[8, 0], [4, 5]])
    np.testing.assert_array_equal(jax.jit(lambda i: h[i])(idx), ref[np.asarray(idx)])
    np.testing.assert_array_equal(jax.vmap(lambda i: h[i])(idx), ref[np.asarray(idx)])
    np.testing.assert_array_equal(np.concatenate([c for _, c in h.chunks(4)]), ref)
    head = h.head(6)
    assert len(head) == 6 and len(h) == 9
    np.testing.assert_array_equal(head[:], ref[:6])
    f32 = HostArray(h, np.float32).map(lambda x: x[:, :, 1:])
    assert f32.shape == (9, 2, 2) and f32.dtype == np.float32
    np.testing.assert_array_equal(f32[:], ref.astype(np.float32)[:, :, 1:])
    assert HostArray([a, b], None, tf).digest() == HostArray(whole, None, tf).digest()
    assert head.digest() != h.digest()
    with pytest.raises(ConfigError, match="equal row shapes"):
        HostArray([a, b[:, :3]])


def _dataset(budget):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(np.int32)
    return Dataset("tiny", x[:32], y[:32], x[32:], y[32:], 2, device_budget=budget)


class _Net(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(4, 5, key=k1, dtype=jnp.float64)
        self.l2 = eqx.nn.Linear(5, 2, key=k2, dtype=jnp.float64)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, batch", [("gd", None), ("sgd", 8)])
def test_training_streamed_equals_in_memory(optimizer, batch):
    """A run whose data exceed the budget (so streamed: eval, GD gradients, SGD minibatches,
    curvature probe) logs the in-memory run's trace."""
    probes = [sgdreg.CurvatureProbe(3, num_probes=4, lanczos_steps=6, top_k=1,
                                    lambda_min_max_steps=0)] if optimizer == "gd" else []
    kw = dict(lr=0.1, steps=6, log_every=3, eval_chunk=8, batch_size=batch, probes=probes)
    ref = sgdreg.run(_Net(jax.random.key(0)), _dataset(None), optimizer, **kw).trace
    got = sgdreg.run(_Net(jax.random.key(0)), _dataset(1000), optimizer, **kw).trace
    assert got["provenance"]["data"]["placement"] == "host (streamed)"  # 1,600 bytes > 1,000
    assert ref["provenance"]["data"]["placement"] == "device"
    cols = ("train_loss", "test_loss", "grad_norm_sq") + (
        ("hessian_trace", "lambda_max") if optimizer == "gd" else ("minibatch_grad_norm_sq",))
    for col in cols:
        np.testing.assert_allclose(got["metrics"][col], ref["metrics"][col], rtol=1e-12)


def test_budget_below_one_chunk_is_one_line():
    with pytest.raises(ConfigError, match=r"device_budget 100 bytes is below one chunk \(288 "):
        sgdreg.run(_Net(jax.random.key(0)), _dataset(100), "gd", lr=0.1, steps=1, eval_chunk=8)


@pytest.mark.parametrize("budget, needle", [
    ("100", "--device-budget 100 bytes is below one chunk (2080 bytes"),  # 8 rows × (64·4 + 4)
    ("0", "--device-budget must be a positive number of bytes, got 0"),
])
def test_cli_budget_below_one_chunk_is_one_line_exit_2(budget, needle, tmp_path, monkeypatch,
                                                      capsys):
    from sgdreg_cli.main import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--steps", "2", "--n-train", "8", "--device-budget", budget,
                 "--out", "o"])
    out, err = capsys.readouterr()
    assert code == 2 and err.strip().count("\n") == 0 and needle in err, err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_cli_train_streams_over_budget(tmp_path, monkeypatch):
    from sgdreg_cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--steps", "4", "--n-train", "64", "--log-every", "2",
                 "--device-budget", "70000", "--out", "o"]) == 0  # 64+359 rows × 260 B > 70 kB
    trace = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    assert trace["provenance"]["data"]["placement"] == "host (streamed)"
    assert trace["dataset"]["device_budget"] == 70000
