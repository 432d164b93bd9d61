"""Cost of logging cheap probes, and training throughput of ``RunConfig()``'s problem.

Prints, for GD and SGD on ``RunConfig()``'s defaults (all of digits, ReLU MLP 64-128-10,
cross-entropy, h = 0.1, B = 32; the command line's `compare` default differs, see
`bench_cli.py`):
  * steps/second of training alone (metrics only at the end),
  * the same run logging the cheap probes every 10 steps (full-batch losses/accuracies,
    ‖∇L‖², IGR terms, norms, trace written after every chunk) ÷ training alone.
Compilation is excluded (each configuration is run once before timing). Goal: ≤ 1.15×.

    python benchmarks/bench_training.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sgdreg.config import RunConfig
from sgdreg.training import build, load_data, train


def timed(cfg, ds, trace_path=None, repeats=3):
    train(cfg, ds, trace_path=trace_path)  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train(cfg, ds, trace_path=trace_path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ds = load_data(RunConfig())
    print(f"digits n={ds.n_train}, MLP 64-128-10, {args.steps} steps, median of {args.repeats}")
    print(f"{'method':8} {'steps/s alone':>14} {'steps/s logged':>15} {'overhead':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for opt in ("gd", "sgd"):
            base = RunConfig(optimizer=opt, lr=0.1, steps=args.steps)
            build(base, ds)
            alone = timed(base.replace(log_every=args.steps), ds, repeats=args.repeats)
            logged = timed(base.replace(log_every=10), ds, Path(tmp) / f"{opt}.json",
                           repeats=args.repeats)
            print(f"{opt:8} {args.steps / alone:14.0f} {args.steps / logged:15.0f} "
                  f"{logged / alone:8.2f}×")


if __name__ == "__main__":
    main()
