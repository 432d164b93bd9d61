"""The main job's default over seeds: what `sgdreg compare --optimizers gd,sgd --lr 0.1` shows.

Runs the default command (digits, first 256 training examples, tanh MLP 64-128-128-10, MSE,
h = 0.1, 3000 steps, SGD with B = 16, curvature probes about 10 per run) for seeds 0, 1, 2, one
process each, exactly as a user would:

    sgdreg compare --optimizers gd,sgd --lr 0.1 --seed S --out figures/data/compare_default/seedS

and reports, over the 3 seeds, mean ± s.d. of each run's end-of-run quantities and of the paired
difference GD − SGD (same θ0 within a seed). "Settled" values are medians over the last third of
the run (the EoS regime oscillates). Writes figures/data/compare_default/stats.json and copies
seed 0's figure to figures/compare_default.png; prints the README table.

    python experiments/compare_default.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from sgdreg.experiments import paper

ROOT = Path(__file__).resolve().parents[1] / "figures"
DATA = ROOT / "data" / "compare_default"
COMMAND = ["compare", "--optimizers", "gd,sgd", "--lr", "0.1"]


def settled(doc: dict, name: str, fraction: float = 1 / 3) -> float | None:
    """Median of a metric over the rows with t in the last ``fraction`` of the run."""
    m = doc["metrics"]
    t_end = m["step"][-1]
    vals = [v for s, v in zip(m["step"], m.get(name, [])) if v is not None
            and s >= (1 - fraction) * t_end]
    return statistics.median(vals) if vals else None


def quantities(doc: dict) -> dict[str, float | None]:
    s = doc["summary"]
    thr = s.get("eos_threshold")
    lam = settled(doc, "lambda_max")
    bs = settled(doc, "batch_sharpness")
    return {
        "train_loss": s["train_loss"], "test_loss": s["test_loss"], "gen_gap": s["gen_gap"],
        "test_acc": s.get("test_acc"), "weight_norm": s["weight_norm"],
        "dist_from_init": s["dist_from_init"],
        "hessian_trace": s.get("hessian_trace"),
        "hessian_trace_stderr": s.get("hessian_trace_stderr"),
        "lambda_max_over_eos": lam / thr if lam is not None and thr else None,
        "batch_sharpness_over_eos": bs / thr if bs is not None and thr else None,
        "igr_gd": settled(doc, "igr_gd"), "igr_sgd_var": settled(doc, "igr_sgd_var"),
    }


def mean_sd(values: list[float | None]) -> tuple[float, float] | None:
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None
    return statistics.mean(v), statistics.stdev(v)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = paper.at_scale(__file__, argv, __doc__, parser=ap)
    if args is None:
        return
    runs: dict[str, list[dict]] = {"gd": [], "sgd": []}
    repo = ROOT.parent
    for seed in range(args.seeds):
        out = DATA / f"seed{seed}"
        if out.exists():
            shutil.rmtree(out)
        subprocess.run([sys.executable, "-m", "sgdreg", *COMMAND, "--seed", str(seed),
                        "--out", str(out.relative_to(repo))], check=True, cwd=repo,
                       stdout=subprocess.DEVNULL)
        summary = json.loads((out / "summary.json").read_text())
        for r in summary["runs"]:
            doc = json.loads((repo / r["trace"]).read_text())
            runs[r["config"]["optimizer"]].append(quantities(doc))

    keys = list(runs["gd"][0])
    stats = {}
    for k in keys:
        gd, sgd = [r[k] for r in runs["gd"]], [r[k] for r in runs["sgd"]]
        diff = [a - b if a is not None and b is not None else None for a, b in zip(gd, sgd)]
        stats[k] = {"gd": gd, "sgd": sgd, "gd_mean_sd": mean_sd(gd), "sgd_mean_sd": mean_sd(sgd),
                    "diff_mean_sd": mean_sd(diff)}
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "stats.json").write_text(json.dumps({"command": "sgdreg " + " ".join(COMMAND),
                                                 "seeds": list(range(args.seeds)),
                                                 "stats": stats}, indent=1))
    shutil.copy(DATA / "seed0" / "compare.png", ROOT / "compare_default.png")
    fmt = lambda ms: "–" if ms is None else f"{ms[0]:.4g} ± {ms[1]:.2g}"  # noqa: E731
    print(f"| quantity ({args.seeds} seeds, mean ± s.d.) | GD | SGD (B = 16) | GD − SGD (paired) |")
    print("|---|---|---|---|")
    for k in keys:
        st = stats[k]
        print(f"| {k} | {fmt(st['gd_mean_sd'])} | {fmt(st['sgd_mean_sd'])} | "
              f"{fmt(st['diff_mean_sd'])} |")


if __name__ == "__main__":
    main()
