"""Throughput of S vmapped sweep runs against S sequential ``training.train`` runs (not a test).

Same work on both sides, for two model sizes: digits (1438 training examples) with MLP
64-128-10 ReLU (as bench_torch.py), and a toy MLP 64-16-10 on 256 digits; SGD batch 32,
``--steps`` steps logged every ``--log-every`` (cheap metrics at every log, as in any run),
float32, one CPU device, seeds 0..S-1 with different step sizes. Both sides are warmed up
(compiled) before timing. Sweep: ``run_sweep`` end to end, files and checkpoints included,
default blocks (min(S, 8) runs per vmap). Sequential: ``training.train`` per run without a trace
file, the compiled chunk reused (lr is traced); for S > ``MEASURED`` the sequential time is
extrapolated from ``MEASURED`` measured runs (the runs are identical in cost), as the output says.

    python benchmarks/bench_sweep.py [--steps 200] [--log-every 50]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

SIZES = (1, 8, 32, 128)
MEASURED = 8
MODELS = (("MLP 64-128-10 on digits (n=1438)", 128, None),
          ("toy MLP 64-16-10 on 256 digits", 16, 256))


def configs(n: int, steps: int, log_every: int, width: int, n_train: int | None):
    from sgdreg.config import RunConfig

    lrs = (0.01, 0.03, 0.1, 0.3)
    return [RunConfig(optimizer="sgd", lr=lrs[i % 4], seed=i, batch_size=32, width=width,
                      n_train=n_train, steps=steps, log_every=log_every) for i in range(n)]


def time_sweep(cfgs, root: Path, tag: str) -> float:
    from sgdreg.sweep import run_sweep

    run_sweep(cfgs, root / f"warm-{tag}", devices=1)  # compile
    t0 = time.perf_counter()
    res = run_sweep(cfgs, root / tag, devices=1)
    dt = time.perf_counter() - t0
    assert all(t["status"] == "completed" for t in res.traces)
    return dt


def time_sequential(cfgs, ds) -> float:
    from sgdreg.training import train

    train(cfgs[0], ds)  # compile
    t0 = time.perf_counter()
    for c in cfgs:
        train(c, ds)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()

    import jax

    from sgdreg.sweep import DEFAULT_BLOCK
    from sgdreg.training import load_data

    root = Path(tempfile.mkdtemp(prefix="bench_sweep-"))
    start = time.perf_counter()
    print(f"SGD B=32, {args.steps} steps, metrics every {args.log_every}, float32, "
          f"1 {jax.devices()[0].platform} device")
    try:
        for label, width, n_train in MODELS:
            ds = load_data(configs(1, 1, 1, width, n_train)[0])
            print(f"\n{label}")
            print(f"{'S':>5} {'block':>6} {'vmapped s':>10} {'sequential s':>13} "
                  f"{'runs/s vmap':>12} {'runs/s seq':>11} {'speed-up':>9}")
            for s in SIZES:
                cfgs = configs(s, args.steps, args.log_every, width, n_train)
                t_vmap = time_sweep(cfgs, root, f"w{width}-s{s}")
                k = min(s, MEASURED)
                t_seq = time_sequential(cfgs[:k], ds) * s / k
                note = "" if k == s else f"  (sequential: {k} runs measured, ×{s // k} " \
                    "extrapolated)"
                print(f"{s:>5} {min(s, DEFAULT_BLOCK):>6} {t_vmap:>10.2f} {t_seq:>13.2f} "
                      f"{s / t_vmap:>12.1f} {s / t_seq:>11.1f} {t_seq / t_vmap:>8.2f}×{note}",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"(speed-up = sequential time / vmapped time, same work; total "
          f"{time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
