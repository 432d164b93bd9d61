"""Wall time of the main job, `sgdreg compare --optimizers gd,sgd --lr 0.1`, as a user sees it.

Each run is a fresh `sgdreg` process (import, data, compilation, training, curvature probes,
figure, table), timed from the outside:

  * cold: an empty JAX compilation cache (a new temporary cache folder),
  * warm: the same command again, reusing that cache (what every later run costs),
  * no cache: `--no-cache`, the baseline for the cache's effect,

and prints warm/cold and no-cache/warm ratios. Goal (issue 11): cold ≤ 45 s, warm ≤ 15 s on a
2-core CPU.

    python benchmarks/bench_cli.py [--repeats 2] [-- extra compare options]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

COMMAND = ["compare", "--optimizers", "gd,sgd", "--lr", "0.1"]


def sgdreg(args: list[str], cache: str, out: str) -> float:
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    env.pop("SGDREG_NO_CACHE", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sgdreg", *args, "--out", out], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="extra options for compare")
    args = ap.parse_args()
    cmd = COMMAND + args.extra
    print(f"sgdreg {' '.join(cmd)}  ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs), median of {args.repeats}")
    cold, warm, none = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            cache = os.path.join(tmp, f"cache{i}")
            cold.append(sgdreg(cmd, cache, os.path.join(tmp, f"cold{i}")))
            warm.append(sgdreg(cmd, cache, os.path.join(tmp, f"warm{i}")))
            none.append(sgdreg(["--no-cache", *cmd], cache, os.path.join(tmp, f"none{i}")))
    c, w, n = (statistics.median(v) for v in (cold, warm, none))
    print(f"cold (empty cache)   {c:6.1f} s")
    print(f"warm (cache reused)  {w:6.1f} s   warm/cold = {w / c:.2f}")
    print(f"--no-cache           {n:6.1f} s   no-cache/warm = {n / w:.2f}")


if __name__ == "__main__":
    main()
