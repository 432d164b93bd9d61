"""The edge-of-stability figure (``sgdreg.experiments.eos``), from the stored ``eos.json`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..experiments.eos import read_eos
from .common import none_nan, save, setup


def render_eos(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """λ_max against t = k·h per h with its threshold dashed (and the flow, uncapped), the
    training loss against t, and λ_max / threshold against the step (1 = the edge)."""
    plt, sns = setup()
    r = read_eos(results_dir)
    cfg, runs, flow = r["config"], r["runs"], r["flow"]
    colors = dict(zip([g["lr"] for g in runs], sns.color_palette("flare", len(runs))))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    opt = cfg["optimizer"]
    name = {"gd": "GD", "momentum": "heavy ball", "nesterov": "Nesterov"}[opt]
    thr_label = {"gd": "2/h", "momentum": "2(1+β)/h", "nesterov": "(2+2β)/((1+2β)h)"}[opt]
    for g in runs:
        c, s = colors[g["lr"]], g["series"]
        t = np.array(s["step"]) * g["lr"]
        label = f"{name} h={g['lr']:g}"
        axes[0].plot(t, none_nan(s["lambda_max"]), color=c, lw=1.3, label=label, zorder=3)
        axes[0].axhline(g["threshold"], color=c, ls="--", lw=1)
        axes[1].plot(np.array(s["loss_step"]) * g["lr"], none_nan(s["train_loss"]), color=c,
                     lw=1, label=label, zorder=3)
        axes[2].plot(s["step"], np.array(none_nan(s["lambda_max"])) / g["threshold"], color=c,
                     lw=1.2, label=f"h={g['lr']:g}" + (f": settled {g['ratio']:.3f}"
                                                       if g["ratio"] else f" ({g['status']})"))
    if flow:
        s = flow["series"]
        for ax, key, step_key in ((axes[0], "lambda_max", "step"), (axes[1], "train_loss",
                                                                    "loss_step")):
            ax.plot(np.array(s[step_key]) * flow["lr"], none_nan(s[key]), color="k", lw=2.2,
                    alpha=0.75, zorder=1, label="gradient flow (under GD until its edge)")
    t_max = max(g["t_end"] for g in runs)
    if flow:  # the rise and the flow's contrast happen early; later the runs only hover
        t_max = min(t_max, 2 * flow["t_end"])
    axes[0].set(xlabel="time t = k·h", ylabel="sharpness λ_max(∇²L)",
                title=f"λ_max rises to {thr_label} (dashed) and hovers", xlim=(0, t_max))
    top = max(g["threshold"] for g in runs)
    if flow and flow["lambda_max_peak"]:
        top = max(top, flow["lambda_max_peak"])
    axes[0].set_ylim(0, 1.15 * top)
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="time t = k·h", ylabel="training loss L", yscale="log", xlim=(0, t_max),
                title="Loss keeps falling, non-monotonically")
    axes[1].legend(fontsize=8)
    axes[2].axhline(1, color="0.3", ls="--", lw=1)
    axes[2].axhspan(0.9, 1.1, color="0.85", alpha=0.5, lw=0)
    lo, hi = r["runs"][0]["settle_window"]
    axes[2].axvspan(lo, hi, color="C0", alpha=0.07, lw=0)
    axes[2].set(xlabel="step k", ylabel=f"λ_max / ({thr_label})", ylim=(0, 1.6),
                title="Normalised (band ±10%; shaded: settling window)")
    axes[2].legend(fontsize=8, loc="lower right")
    ds, run = r["dataset"], cfg["run"]
    fig.suptitle(f"Edge of stability: full-batch {name} on {ds['name']} (n={ds['n_train']}), "
                 f"{run['model']} {run['width']}×{run['depth']} {run['activation']}, "
                 f"{run['loss']}, {run['dtype']}, P={r['num_params']}"
                 + (f", β={cfg['momentum']:g}" if opt != "gd" else ""), fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)
