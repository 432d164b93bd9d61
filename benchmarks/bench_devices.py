"""Sweep scaling over forced CPU devices: same results, timing ratio (not a test).

The host platform is split into ``--max-devices`` CPU devices (``XLA_FLAGS`` and
``jax_num_cpu_devices``, set before JAX starts); one sweep of ``--runs`` runs (digits, MLP
64-``--width``-10, SGD B=32) is run with its run axis sharded over 1, 2, 4, ... devices, each
warmed up (compiled) first. Checks that every run's trace is bit-identical on every device count
(blocks of 8 runs: a run's arithmetic does not depend on the device count) and prints the time
ratio t(1 device) / t(n devices). Forced CPU devices share the machine's cores, so the ratio is
bounded by the core count (``os.cpu_count()`` is printed).

    python benchmarks/bench_devices.py [--max-devices 4] [--runs 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-devices", type=int, default=4)
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.max_devices}")
    import jax

    jax.config.update("jax_num_cpu_devices", args.max_devices)

    from sgdreg.config import RunConfig
    from sgdreg.sweep import run_sweep

    cfgs = [RunConfig(optimizer="sgd", lr=(0.01, 0.03, 0.1, 0.3)[i % 4], seed=i, batch_size=32,
                      width=args.width, steps=args.steps, log_every=50)
            for i in range(args.runs)]
    counts = [n for n in (1, 2, 4, 8, 16) if n <= len(jax.devices())]
    root = Path(tempfile.mkdtemp(prefix="bench_devices-"))
    print(f"{args.runs} runs, digits, MLP 64-{args.width}-10, SGD B=32, {args.steps} steps; "
          f"{len(jax.devices())} forced {jax.devices()[0].platform} devices on "
          f"{os.cpu_count()} cores")
    times, traces = {}, {}
    try:
        for n in counts:
            run_sweep(cfgs, root / f"warm{n}", devices=n)
            t0 = time.perf_counter()
            res = run_sweep(cfgs, root / f"d{n}", devices=n)
            times[n] = time.perf_counter() - t0
            traces[n] = [t["metrics"] for t in res.traces]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'devices':>8} {'time s':>8} {'t1/tn':>7} {'identical to 1 device':>22}")
    for n in counts:
        print(f"{n:>8} {times[n]:>8.2f} {times[1] / times[n]:>7.2f} "
              f"{str(traces[n] == traces[1]):>22}")
    return 0 if all(traces[n] == traces[1] for n in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
