"""The edge-of-stability figure (``sgdreg.experiments.eos``), from the stored ``eos.json`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..experiments.eos import read_eos
from .common import none_nan, save, setup


def render_eos(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Three panels on one shared axis, time t = k·h (GD step k, step size h; the flow's own t),
    logarithmic so that the early rise and the late hovering both show: λ_max per h with its
    threshold dashed and the flow (uncapped), the training loss, and λ_max / threshold
    (1 = the edge) with each run's settling window shaded."""
    plt, sns = setup()
    r = read_eos(results_dir)
    cfg, runs, flow = r["config"], r["runs"], r["flow"]
    colors = dict(zip([g["lr"] for g in runs], sns.color_palette("flare", len(runs))))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharex=True)
    opt = cfg["optimizer"]
    name = {"gd": "GD", "momentum": "heavy ball", "nesterov": "Nesterov"}[opt]
    thr_label = {"gd": "2/h", "momentum": "2(1+β)/h", "nesterov": "(2+2β)/((1+2β)h)"}[opt]
    for g in runs:
        c, s, h = colors[g["lr"]], g["series"], g["lr"]
        label = f"{name} h={h:g}"
        t, lam = _positive_t(s["step"], h, s["lambda_max"])
        axes[0].plot(t, lam, color=c, lw=1.3, label=label, zorder=3)
        axes[0].axhline(g["threshold"], color=c, ls="--", lw=1)
        axes[1].plot(*_positive_t(s["loss_step"], h, s["train_loss"]), color=c, lw=1, label=label,
                     zorder=3)
        axes[2].plot(t, lam / g["threshold"], color=c, lw=1.2,
                     label=f"h={h:g}" + (f": settled median {g['ratio']:.3f}" if g["ratio"]
                                         else f" ({g['status']})"))
        lo, hi = g["settle_window"]
        axes[2].axvspan(lo * h, hi * h, color=c, alpha=0.12, lw=0)
    if flow:
        s = flow["series"]
        for ax, key, step_key in ((axes[0], "lambda_max", "step"), (axes[1], "train_loss",
                                                                    "loss_step")):
            ax.plot(*_positive_t(s[step_key], flow["lr"], s[key]), color="k", lw=2.2, alpha=0.75,
                    zorder=1, label=f"gradient flow dθ/dt = −∇L (to t = {flow['t_end']:g})")
    t_min = min(g["lr"] * min(k for k in g["series"]["loss_step"] if k > 0) for g in runs)
    t_max = max(g["t_end"] for g in runs)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlim(t_min, t_max * 1.05)
        ax.set_xlabel("time t = k·h  (k: GD step, h: step size; log axis)")
    top = max(g["threshold"] for g in runs)
    if flow and flow["lambda_max_peak"]:
        top = max(top, flow["lambda_max_peak"])
    lam0 = runs[0]["lambda_max_initial"]
    axes[0].set(ylabel="sharpness λ_max(∇²L)", ylim=(0, 1.15 * top),
                title=f"λ_max rises from {lam0:.2f} to {thr_label} (dashed) and hovers")
    axes[0].legend(fontsize=8, loc="upper left")
    axes[1].set(ylabel="training loss L", yscale="log",
                title="Loss keeps falling, non-monotonically")
    axes[1].legend(fontsize=8, loc="lower left")
    axes[2].axhline(1, color="0.3", ls="--", lw=1)
    axes[2].axhspan(0.9, 1.1, color="0.85", alpha=0.5, lw=0)
    axes[2].set(ylabel=f"λ_max / ({thr_label})", ylim=(0, 1.6),
                title="Normalised: grey band ±10%; shaded per h: settling window\n"
                      "(last third of the steps, where the median is taken)")
    axes[2].legend(fontsize=8, loc="lower right")
    ds, run = r["dataset"], cfg["run"]
    fig.suptitle(f"Edge of stability: full-batch {name} on {ds['name']} (n={ds['n_train']}), "
                 f"{run['model']} {run['width']}×{run['depth']} {run['activation']}, "
                 f"{run['loss']}, {run['dtype']}, P={r['num_params']}"
                 + (f", β={cfg['momentum']:g}" if opt != "gd" else "")
                 + f"; one θ0 (seed {run['seed']}) shared by all runs", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def _positive_t(steps, h: float, values) -> tuple[np.ndarray, np.ndarray]:
    """(t = k·h, values) without t = 0, which a log axis cannot show; stored nulls as NaN."""
    t = np.asarray(steps, dtype=float) * h
    v = np.asarray(none_nan(values), dtype=float)
    return t[t > 0], v[t > 0]
