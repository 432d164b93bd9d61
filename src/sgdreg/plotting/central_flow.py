"""The central-flow figure (``sgdreg.experiments.central_flow``), from the stored
``central_flow.json`` only."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..experiments.central_flow import LABELS, MODELS, read_central_flow
from .common import none_nan, save, setup

COLORS = {"flow": "#4c72b0", "modified-flow": "#55a868", "central-flow": "#c44e52"}


def render_central_flow(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Three panels over time t = k·h: (a) the headline, ‖θ_model(t) − θ̄_GD(t)‖ for the three
    continuous models (line: mean over seeds, band: min–max over seeds); (b) the training loss
    of seed 0: GD raw, GD's time average, the three flows and the central flow's predicted
    time-averaged loss L + tr X/h; (c) λ_max of GD, the gradient and modified flows and the
    central flow's tracked eigenvalues (seed 0) against 2/h."""
    with warnings.catch_warnings():  # the window's first/last m steps have no average (NaN)
        warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice", RuntimeWarning)
        return _render(results_dir, out_path)


def _render(results_dir, out_path) -> list[Path]:
    plt, sns = setup()
    r = read_central_flow(results_dir)
    cfg, seeds, summ = r["config"], r["seeds"], r["summary"]
    m = str(cfg["window"])
    h, edge = cfg["lr"], cfg["threshold"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    s0 = seeds[0]
    t = np.asarray(s0["t"])
    ax = axes[0]
    for name in MODELS:
        d = np.array([none_nan(s["windows"][m]["models"][name]["distance"]) for s in seeds])
        mean = summ["models"][name]["distance_mean_min_max"]
        ax.plot(t, np.nanmean(d, 0), color=COLORS[name], lw=1.8,
                label=f"{LABELS[name]} (EoS-window mean {mean[0]:.3g})")
        if len(seeds) > 1:
            ax.fill_between(t, np.nanmin(d, 0), np.nanmax(d, 0), color=COLORS[name], alpha=0.2,
                            lw=0)
    osc = np.array([none_nan(s["windows"][m]["gd_oscillation"]) for s in seeds])
    tg = np.asarray(s0["gd"]["step"]) * h
    ax.plot(tg, np.nanmean(osc, 0), color="0.5", lw=0.7, alpha=0.7,
            label="GD's own ‖θ_k − θ̄_k‖ (oscillation)")
    for s in seeds:
        if s["step_at_edge"] is not None:
            ax.axvline(s["step_at_edge"] * h, color="0.3", ls=":", lw=0.8)
    ax.set(xlabel="time t = k·h", ylabel="‖θ_model(t) − θ̄_GD(t)‖",
           title="Distance to GD's time-averaged iterate")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    gl = np.asarray(none_nan(s0["gd"]["train_loss"]))
    ax.plot(tg, gl, color="0.6", lw=0.7, label="GD L(θ_k)")
    ax.plot(tg, none_nan(s0["windows"][m]["gd_avg_loss"]), color="k", lw=1.5,
            label="GD time average L̄")
    for name in MODELS:
        ax.plot(t, none_nan(s0["models"][name]["train_loss"]), color=COLORS[name], lw=1.2,
                ls="--" if name == "central-flow" else "-", label=f"{LABELS[name]} L(θ(t))")
    ax.plot(t, none_nan(s0["models"]["central-flow"]["predicted_loss"]), color=COLORS[
        "central-flow"], lw=2, label="central flow L + tr X/h (predicted average)")
    ax.set(xlabel="time t = k·h", ylabel="training loss", yscale="log",
           title=f"Loss (seed {s0['seed']})")
    ax.legend(fontsize=7.5, loc="upper right")
    ax = axes[2]
    ax.plot(np.asarray(s0["gd"]["lambda_max_step"]) * h, none_nan(s0["gd"]["lambda_max"]),
            color="0.4", lw=1, label="GD λ_max")
    for name in ("flow", "modified-flow"):
        mm = s0["models"][name]
        ax.plot(np.asarray(mm["lambda_max_step"]) * h, none_nan(mm["lambda_max"]),
                color=COLORS[name], lw=1.3, label=f"{LABELS[name]} λ_max")
    eig = np.array(s0["models"]["central-flow"]["eigenvalues"], float)
    for i in range(eig.shape[1]):
        ax.plot(t, eig[:, i], color=COLORS["central-flow"], lw=1.6 if i == 0 else 1,
                alpha=1 if i == 0 else 0.6,
                label="central flow λ_1 … λ_k (tracked)" if i == 0 else None)
    ax.axhline(edge, color="k", ls="--", lw=1, label=f"2/h = {edge:g}")
    ax.set(xlabel="time t = k·h", ylabel="Hessian eigenvalues",
           title="Sharpness: the central flow holds it at 2/h")
    ax.legend(fontsize=8, loc="upper left")
    ds = r["dataset"]
    ratio_d = summ["other_over_central_distance"]
    fig.suptitle(
        f"Central flow vs gradient flow vs modified flow at the edge of stability: GD h = {h:g} "
        f"on {ds['n_train']} {ds['name']} examples, tanh MLP {cfg['run']['width']}×"
        f"{cfg['run']['depth']} (P = {r['num_params']}), MSE, float64; seeds "
        f"{', '.join(str(s['seed']) for s in seeds)} (θ0 per seed; bands: min–max over seeds).\n"
        f"θ̄_GD, L̄_GD: centred window over GD's oscillation, weights (½,1,…,1,½)/(2m), m = "
        f"{cfg['window']}; central flow with k = {cfg['eigs']} tracked eigenvalues, "
        f"{cfg['substeps']} Euler substeps per step; dotted: GD reaches "
        f"{cfg['edge_fraction']:g}·2/h. Best other flow / central flow, EoS-window distance: "
        + ", ".join(f"{x:.2g}" for x in ratio_d), fontsize=9.5)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return save(fig, out_path)
