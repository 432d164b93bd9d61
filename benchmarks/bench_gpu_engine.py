"""sgdreg's own engine on the device (not a test): the numbers that bench_gpu.py's plain-JAX
baselines are compared with, all measured in this process.

(f1) engine step: ``engine.advance`` of SGD on ResNet-18 (width k, BatchNorm in training mode,
     CIFAR-shaped synthetic data, batch B) — steps/s from the difference of two chunk lengths
     (so the chunk's metrics pass cancels), against a plain jitted ``lax.scan`` of the same
     update written directly in JAX/optax (ratio engine_time/plain_time; goal ≈ 1).
(f2) sweep: ``run_sweep`` of R runs (digits MLP 64-128-10, GD, 8 seeds × R/8 step sizes, one
     vmapped block) end to end, against the same R runs one after another with ``train``
     (compiled once; lr is traced). Ratio sequential/vmapped (goal ≥ 20× on a GPU at R = 64).
(f3) the default ``sgdreg compare`` job (GD and SGD, 1000 steps, digits) through ``compare``.

    PYTHONPATH=src python benchmarks/bench_gpu_engine.py [--small] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def now():
    return time.perf_counter()


def part_engine_step(a) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from sgdreg import engine, training
    from sgdreg.data import Dataset
    from sgdreg.zoo import ResNet18

    rng = np.random.default_rng(0)
    n = a.batch * 4
    x = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    ds = Dataset("synthetic-cifar", x, y, x[: a.batch], y[: a.batch], 10)
    model, state = eqx.nn.make_with_state(ResNet18)(num_classes=10, k=a.k, key=jax.random.key(0))
    dyn = training.dyn.named("sgd", batch_size=a.batch)
    s = training.prepare(model, ds, dyn, "ce", lr=0.1, state=state, eval_chunk=a.batch)
    st0 = s.state0()

    def chunk(n_steps):
        t0 = now()
        out = engine.advance(st0, s.problem, s.data, s.params0, jnp.asarray(0, jnp.int32),
                             jnp.asarray(n_steps, jnp.int32))
        jax.block_until_ready(out)
        return now() - t0

    t_c = now()
    chunk(1)
    compile_s = now() - t_c
    short, long_ = min(chunk(2) for _ in range(3)), min(chunk(2 + a.steps) for _ in range(3))
    engine_step = (long_ - short) / a.steps

    # the same update without the engine: vmap(model, axis_name="batch"), optax.sgd, lax.scan
    params, frozen = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.sgd(0.1)
    xb, yb = jnp.asarray(x[: a.batch]), jnp.asarray(y[: a.batch])

    def loss_fn(p, st):
        out, st = jax.vmap(eqx.combine(p, frozen), axis_name="batch", in_axes=(0, None),
                           out_axes=(0, None))(xb, st)
        return optax.softmax_cross_entropy_with_integer_labels(out, yb).mean(), st

    @jax.jit
    def plain(p, st, o):
        def step(c, _):
            p, st, o = c
            (_, st), g = jax.value_and_grad(loss_fn, has_aux=True)(p, st)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), st, o), None
        return jax.lax.scan(step, (p, st, o), None, length=a.steps)[0]

    o0 = opt.init(params)
    jax.block_until_ready(plain(params, state, o0))
    times = []
    for _ in range(2):
        t0 = now()
        jax.block_until_ready(plain(params, state, o0))
        times.append(now() - t0)
    plain_step = min(times) / a.steps
    return {"k": a.k, "batch": a.batch, "engine_ms_per_step": engine_step * 1e3,
            "plain_ms_per_step": plain_step * 1e3, "engine_over_plain": engine_step / plain_step,
            "engine_compile_s": compile_s}


def part_sweep(a) -> dict:
    import numpy as np

    from sgdreg.config import RunConfig
    from sgdreg.sweep import run_sweep
    from sgdreg.training import load_data, train

    lrs = [float(v) for v in np.geomspace(0.02, 0.2, a.runs // 8)]
    cfgs = [RunConfig(optimizer="gd", lr=h, seed=s, steps=a.sweep_steps, log_every=a.sweep_steps // 4)
            for s in range(8) for h in lrs]
    ds = load_data(cfgs[0])
    with tempfile.TemporaryDirectory() as tmp:
        run_sweep(cfgs[:2], Path(tmp) / "warm", block=len(cfgs))  # compile the block size
        t0 = now()
        run_sweep(cfgs, Path(tmp) / "sweep", block=len(cfgs))
        vmapped = now() - t0
    train(cfgs[0], ds)  # compile
    t0 = now()
    for c in cfgs:
        train(c, ds)
    sequential = now() - t0
    return {"runs": len(cfgs), "steps": a.sweep_steps, "vmapped_s": vmapped,
            "sequential_s": sequential, "sequential_over_vmapped": sequential / vmapped}


def part_compare(a) -> dict:
    from sgdreg.config import RunConfig
    from sgdreg.training import load_data, train

    ds = load_data(RunConfig())
    out = {}
    for opt in ("gd", "sgd"):
        cfg = RunConfig(optimizer=opt, lr=0.1, steps=a.compare_steps)
        t0 = now()
        train(cfg, ds)
        cold = now() - t0
        t0 = now()
        train(cfg, ds)
        out[opt] = {"cold_s": cold, "warm_s": now() - t0}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--parts", default="123")
    a = p.parse_args(argv)
    # --small is a CPU dry run: at k = 1 the chunk (SGD steps + the full-batch cheap metrics: train,
    # test and an epoch of minibatch gradients, BatchNorm in both modes) compiles in ~2.5 min on
    # 2 CPU cores (a single plain SGD step: ~11 s); k = 4 took > 9 min under load
    a.k, a.batch, a.steps = (1, 16, 3) if a.small else (64, 128, 30)
    a.runs, a.sweep_steps, a.compare_steps = (16, 40, 100) if a.small else (64, 200, 1000)
    import jax

    print(f"devices: {jax.devices()}", flush=True)
    results: dict = {"devices": [str(d) for d in jax.devices()], "small": a.small}
    for key, name, fn in (("1", "f1_engine_step", part_engine_step),
                          ("2", "f2_sweep", part_sweep), ("3", "f3_compare", part_compare)):
        if key not in a.parts:
            continue
        t0 = now()
        try:
            results[name] = fn(a)
        except Exception as e:  # report and go on with the next part
            results[name] = {"error": f"{e.__class__.__name__}: {e}"}
        results[name]["wall_s"] = now() - t0
        print(name, json.dumps(results[name]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
