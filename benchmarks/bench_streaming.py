"""Cost of streaming host data (``batching.HostArray``) against the same data on the device.

Full-batch loss+gradient and one HVP of an MLP 784-256-10 on n random examples (float32), in
chunks of ``--chunk`` rows: (a) device arrays, (b) a NumPy array on the host, (c) an np.memmap
file. Each timed call is jitted once and repeated (median of ``--repeat``); the results are
checked equal. On a CPU "device" and "host" are the same memory, so (b)/(a) is the pure
overhead of the per-chunk host callback; on a GPU it adds the PCIe transfer, which the
prefetch overlaps with compute where the runtime allows.

    python benchmarks/bench_streaming.py [--n 20000] [--chunk 2048] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
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
    a = p.parse_args(argv)
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


if __name__ == "__main__":
    main()
