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

``--scale paper --data-dir DIR``: the same command and statistics on Cohen et al.'s scale
(fc-tanh 200×2 on 5,000 CIFAR-10 images, h = 2/50, ``paper.RECIPES["compare_default"]``, its
seeds) into figures/data/compare_default_paper/ and figures/compare_default_paper.png.
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


def configure(args) -> tuple[list[str], list[int]]:
    """(the sgdreg command, seeds): COMMAND, or at ``--scale paper`` the recipe's setup as the
    same command's options."""
    r = args.recipe
    if r is None:
        return COMMAND, list(range(args.seeds))
    c = paper.run_config(r, args.data_dir)
    opts = dict(optimizers=",".join(r.grid["optimizer"]), lr=c.lr, dataset=c.dataset,
                data_dir=c.data_dir, n_train=c.n_train, model=c.model, width=c.width,
                depth=c.depth, activation=c.activation, loss=c.loss, steps=c.steps,
                batch_size=r.extra["sgd_batch_size"], log_every=c.log_every,
                hessian_every=c.hessian_every, probes=c.probes, lanczos_steps=c.lanczos_steps,
                lambda_min_steps=c.lambda_min_steps, dtype=c.dtype) | paper.budget(args)
    cmd = ["compare"] + [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    return cmd, list(r.seeds)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = paper.at_scale(__file__, argv, __doc__, parser=ap)
    if args is None:
        return
    command, seeds = configure(args)
    data, figure = paper.outputs(args, ROOT, "compare_default")
    runs: dict[str, list[dict]] = {"gd": [], "sgd": []}
    repo = ROOT.parent
    for seed in seeds:
        out = (data / f"seed{seed}").resolve()
        if out.exists():
            shutil.rmtree(out)
        rel = out.relative_to(repo) if out.is_relative_to(repo) else out
        subprocess.run([sys.executable, "-m", "sgdreg", *command, "--seed", str(seed),
                        "--out", str(rel)], check=True, cwd=repo, stdout=subprocess.DEVNULL)
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
    data.mkdir(parents=True, exist_ok=True)
    (data / "stats.json").write_text(json.dumps({"command": "sgdreg " + " ".join(command),
                                                 "seeds": seeds, "stats": stats}, indent=1))
    paper.record(args, data)
    shutil.copy(data / f"seed{seeds[0]}" / "compare.png", figure)
    fmt = lambda ms: "–" if ms is None else f"{ms[0]:.4g} ± {ms[1]:.2g}"  # noqa: E731
    print(f"| quantity ({len(seeds)} seeds, mean ± s.d.) | GD | SGD (B = 16) | GD − SGD (paired) |")
    print("|---|---|---|---|")
    for k in keys:
        st = stats[k]
        print(f"| {k} | {fmt(st['gd_mean_sd'])} | {fmt(st['sgd_mean_sd'])} | "
              f"{fmt(st['diff_mean_sd'])} |")


if __name__ == "__main__":
    main()
