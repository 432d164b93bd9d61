"""Cost of streaming host data (``batching.HostArray``) against the same data on the device.

1. Full-batch loss+gradient and one HVP of an MLP 784-256-10 on n random examples (float32), in
   chunks of ``--chunk`` rows: (a) device arrays, (b) a NumPy array on the host, (c) an np.memmap
   file. Each timed call is jitted once and repeated (median of ``--repeat``); the results are
   checked equal. On a CPU "device" and "host" are the same memory, so (b)/(a) is the pure
   overhead of the per-chunk host callback; on a GPU it adds the PCIe transfer, which the
   prefetch overlaps with compute where the runtime allows.
2. ``--cifar N`` (e.g. 50000): N random CIFAR-10 records written as the binary batches into a
   temporary folder (``--tmp``), then, each in a fresh process, ``open_dataset("cifar10")`` in
   memory (float32, today's path) and memory-mapped (``device_budget=``): wall time and memory
   (peak RSS = VmHWM, and the resident anonymous/file-backed pages after opening), and the
   full-batch loss of an MLP 3072-64-10 over the training set, in memory vs streamed from the
   memmap (median of ``--repeat``, after one compiling call; the two values are checked equal).

    python benchmarks/bench_streaming.py [--n 20000] [--chunk 2048] [--repeat 5]
    python benchmarks/bench_streaming.py --cifar 50000 --chunk 4096 --repeat 3 [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sgdreg.batching import HostArray, full_batch_hvp, full_batch_value_and_grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--cifar", type=int, default=0, help="CIFAR-10-sized memmap benchmark: N "
                   "training records (0: run part 1 instead)")
    p.add_argument("--tmp", default=None, help="folder for the CIFAR files (default: $TMPDIR)")
    p.add_argument("--probe", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe:
        return probe(*a.probe, a.chunk, a.repeat)
    if a.cifar:
        return cifar(a)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.n, 784)).astype(np.float32)
    y = rng.integers(0, 10, a.n).astype(np.int32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (784, 256)) / 28,
              "w2": jax.random.normal(k2, (256, 10)) / 16}

    def loss(p_, xi, yi):
        return -jax.nn.log_softmax(jnp.tanh(xi @ p_["w1"]) @ p_["w2"])[yi]

    v = jax.tree.map(jnp.ones_like, params)
    with tempfile.TemporaryDirectory() as tmp:
        mm = np.memmap(Path(tmp) / "x.f32", np.float32, "w+", shape=x.shape)
        mm[:] = x
        mm.flush()
        sources = {"device": (jnp.asarray(x), jnp.asarray(y)),
                   "host": (HostArray(x), HostArray(y)),
                   "memmap": (HostArray(np.memmap(Path(tmp) / "x.f32", np.float32, "r",
                                                  shape=x.shape)), HostArray(y))}
        ref, times = None, {}
        for name, (xx, yy) in sources.items():
            vg = jax.jit(lambda q, xx=xx, yy=yy: full_batch_value_and_grad(loss, q, xx, yy,
                                                                           a.chunk))
            hv = jax.jit(lambda q, xx=xx, yy=yy: full_batch_hvp(loss, q, xx, yy, v, a.chunk))
            out = jax.block_until_ready((vg(params), hv(params)))
            if ref is None:
                ref = out
            err = max(float(jnp.max(jnp.abs(u - w)) / (jnp.max(jnp.abs(w)) + 1e-30))
                      for u, w in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True))
            ts = {}
            for label, f in (("loss+grad", vg), ("hvp", hv)):
                rs = []
                for _ in range(a.repeat):
                    t = time.perf_counter()
                    jax.block_until_ready(f(params))
                    rs.append(time.perf_counter() - t)
                ts[label] = statistics.median(rs)
            times[name] = ts
            print(f"{name:>7}: loss+grad {ts['loss+grad'] * 1e3:8.1f} ms, "
                  f"hvp {ts['hvp'] * 1e3:8.1f} ms, max rel diff to device {err:.1e}")
        for name in ("host", "memmap"):
            r = {k: times[name][k] / times["device"][k] for k in ("loss+grad", "hvp")}
            print(f"{name} ÷ device: loss+grad {r['loss+grad']:.2f}×, hvp {r['hvp']:.2f}×")
        print(f"backend {jax.default_backend()}, n = {a.n}, chunk = {a.chunk}, "
              f"{-(-a.n // a.chunk)} chunks")


def _memory() -> dict:
    """Resident memory of this process (Linux /proc/self/status), MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) / 1024
    return out


def probe(mode: str, folder: str, chunk: int, repeat: int) -> None:
    """One fresh process: open CIFAR-10 from ``folder`` (``mode`` memory | memmap), report
    memory, then time the full-batch loss of an MLP 3072-64-10 (JSON on stdout)."""
    from sgdreg.batching import full_batch_mean
    from sgdreg.datasets import open_dataset

    base = _memory()  # the interpreter with JAX and sgdreg imported
    t = time.perf_counter()
    ds = open_dataset("cifar10", data_dir=folder, device_budget=1 << 20 if mode == "memmap"
                      else None)
    opened = time.perf_counter() - t
    mem = _memory()
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (3072, 64)) / 55,
              "w2": jax.random.normal(k2, (64, 10)) / 8}

    def loss(p_, xi, yi):
        return -jax.nn.log_softmax(jnp.tanh(xi.reshape(-1) @ p_["w1"]) @ p_["w2"])[yi]

    if mode == "memmap":
        x, y = HostArray(ds.x_train), HostArray(ds.y_train)
    else:
        x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    f = jax.jit(lambda q, xx, yy: full_batch_mean(loss, q, xx, yy, chunk))  # data: arguments
    t = time.perf_counter()
    value = float(f(params, x, y))
    first = time.perf_counter() - t
    rs = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(f(params, x, y))
        rs.append(time.perf_counter() - t)
    print(json.dumps({"mode": mode, "open_s": opened, "memory_mb": mem, "baseline_mb": base,
                      "after_loss_mb":
                      _memory(), "loss": value, "first_call_s": first,
                      "loss_s": statistics.median(rs), "n": ds.n_train}))


def cifar(a) -> None:
    """Part 2: write the files once, probe both modes in fresh processes, print a table."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        folder = Path(tmp) / "cifar-10-batches-bin"
        folder.mkdir()
        per = -(-a.cifar // 5)
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for i, name in enumerate(names):
            n = min(per, a.cifar - i * per) if i < 5 else 10_000
            rec = np.empty((n, 3073), np.uint8)
            rec[:, 0] = rng.integers(0, 10, n)
            rec[:, 1:] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            rec.tofile(folder / name)
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{a.cifar} + 10000 random CIFAR-10 records: {size:.0f} MB of binary batches "
              f"in {folder}")
        res = {}
        for mode in ("memory", "memmap"):
            out = subprocess.run([sys.executable, __file__, "--probe", mode, str(folder),
                                  "--chunk", str(a.chunk), "--repeat", str(a.repeat)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r, m = res[mode], res[mode]["memory_mb"]
            print(f"{mode:>7}: open {r['open_s']:6.1f} s, peak RSS {m['VmHWM']:7.0f} MB "
                  f"(imports alone {r['baseline_mb']['VmHWM']:.0f}), "
                  f"after opening RSS {m['VmRSS']:6.0f} MB (anonymous {m['RssAnon']:6.0f}, "
                  f"file-backed {m['RssFile']:5.0f}); full-batch loss over n = {r['n']}: "
                  f"{r['loss_s']:6.2f} s (first call {r['first_call_s']:.1f} s), peak RSS "
                  f"after {r['after_loss_mb']['VmHWM']:.0f} MB")
        diff = abs(res["memory"]["loss"] - res["memmap"]["loss"]) / abs(res["memory"]["loss"])
        speed = res["memmap"]["loss_s"] / res["memory"]["loss_s"]
        peak = res["memmap"]["memory_mb"]["VmHWM"] / res["memory"]["memory_mb"]["VmHWM"]
        print(f"memmap ÷ memory: loss time {speed:.2f}×, peak RSS after opening {peak:.2f}×; "
              f"relative loss difference {diff:.1e}")
        print(f"backend {jax.default_backend()}, chunk = {a.chunk}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
