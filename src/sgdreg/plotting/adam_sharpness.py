"""Adam's preconditioned sharpness against 38/h (``sgdreg.experiments.adam_sharpness``), from the
stored ``adam_eos.json`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..experiments.adam_sharpness import read_adam_eos
from .common import none_nan, save, setup


def _band(runs, key, step_key="step"):
    """(steps, median, min, max) over seeds of ``series[key]`` (the runs share their steps)."""
    steps = runs[0]["series"][step_key]
    vals = np.array([np.asarray(none_nan(r["series"][key]), float)[: len(steps)] for r in runs])
    return (np.asarray(steps), np.nanmedian(vals, 0), np.nanmin(vals, 0), np.nanmax(vals, 0))


def render_adam_sharpness(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """One column per step size h, against the Adam step k: the preconditioned sharpness
    λ_max(P⁻¹H) with (2 + 2β1)/((1 − β1)h) dashed and the settling window shaded, the raw
    λ_max(H), and the training loss; lines are the median over seeds, bands their min–max."""
    plt, sns = setup()
    r = read_adam_eos(results_dir)
    cfg, runs, groups = r["config"], r["runs"], r["per_lr"]
    colors = dict(zip([g["lr"] for g in groups], sns.color_palette("flare", len(groups))))
    fig, axes = plt.subplots(3, len(groups), figsize=(5.2 * len(groups), 10), sharex="col",
                             squeeze=False)
    b1 = cfg["b1"]
    thr_name = "38/h" if abs(b1 - 0.9) < 1e-12 else "(2+2β1)/((1−β1)h)"
    for j, g in enumerate(groups):
        h, c, thr = g["lr"], colors[g["lr"]], g["threshold"]
        rs = [x for x in runs if x["lr"] == h]
        ax = axes[0, j]
        k, med, lo, hi = _band(rs, "preconditioned_sharpness")
        ax.fill_between(k, lo, hi, color=c, alpha=0.3, lw=0)
        ratio = (f"settled/threshold: median {g['median_ratio']:.3f} "
                 f"[{g['min_ratio']:.3f}, {g['max_ratio']:.3f}]" if g["median_ratio"] else "")
        ax.plot(k, med, color=c, lw=1.4, label="λ_max(P⁻¹H), median over seeds")
        ax.axhline(thr, color="k", ls="--", lw=1, label=f"{thr_name} = {thr:,.0f}")
        s0, s1 = rs[0]["settle_window"]
        ax.axvspan(s0, s1, color="0.85", alpha=0.5, lw=0, label="settling window (median)")
        ax.set(ylim=(0, 1.3 * max(thr, np.nanmax(hi))), ylabel="preconditioned sharpness",
               title=f"h = {h:g}: {ratio}")
        ax.legend(fontsize=8, loc="lower right")
        ax = axes[1, j]
        k, med, lo, hi = _band(rs, "lambda_max")
        ax.fill_between(k, lo, hi, color=c, alpha=0.3, lw=0)
        ax.plot(k, med, color=c, lw=1.4, label="raw λ_max(H)")
        ax.set(ylabel="raw sharpness λ_max(∇²L)", ylim=(0, None),
               title=f"raw λ_max (for comparison, 2/h = {2 / h:,.0f})")
        ax.legend(fontsize=8, loc="lower right")
        ax = axes[2, j]
        k, med, lo, hi = _band(rs, "train_loss", "loss_step")
        ax.fill_between(k, lo, hi, color=c, alpha=0.3, lw=0)
        ax.plot(k, med, color=c, lw=1)
        ax.set(ylabel="training loss L", yscale="log", xlabel="Adam step k")
    ds, run = r["dataset"], cfg["run"]
    fig.suptitle(f"Adam at the edge of stability (Cohen et al. 2022): full-batch Adam (β1={b1:g}, "
                 f"β2={cfg['b2']:g}, ε={cfg['eps']:g}) on {ds['name']} (n={ds['n_train']}), "
                 f"{run['model']} {run['width']}×{run['depth']} {run['activation']}, "
                 f"{run['loss']}, {run['dtype']}, P={r['num_params']}\n"
                 f"seeds {', '.join(str(s) for s in cfg['seeds'])} (θ0 from the seed): lines = "
                 "median over seeds, bands = min–max over seeds; P = diag(√v̂ + ε) from the "
                 "optimizer state; settled = median over the shaded last "
                 f"{_fraction(cfg['settle_fraction'])} of the steps", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def _fraction(f: float) -> str:
    return {1 / 3: "third", 1 / 2: "half", 1 / 4: "quarter"}.get(f, f"{f:.2g}")
