"""The label-noise SGD figure (``sgdreg.experiments.label_noise``), from the stored
``label_noise.json`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..experiments.label_noise import LABELS, read_label_noise, read_label_noise_curvature
from .common import none_nan, save, setup

COLORS = {"label-noise-sgd": 3, "sgd": 0, "gd": 7}  # indices into the deep palette
STYLES = {"label-noise-sgd": "-", "sgd": "--", "gd": ":"}
LOSS_FLOOR = 1e-6  # the train-loss panel's lower limit (plain SGD/GD sit at ~1e-30)


def render_label_noise(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Four panels against the step k: tr H (exact dense Hessian) with the manifold's floor, the
    distance from θ0 ‖θ_k − θ_0‖, the train loss on the clean targets, and ‖u⊙v − w*‖ (the
    distance to the sparse teacher); per method the median over seeds with a min–max band."""
    plt, sns = setup()
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    r = read_label_noise(results_dir)
    cfg, step = r["config"], np.asarray(r["step"], float)
    palette = sns.color_palette("deep", 10)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4), sharex=True)
    panels = (("hessian_trace", "tr H  (exact dense Hessian, float64)"),
              ("distance", "distance from θ0, ‖θ_k − θ_0‖"),
              ("train_loss", "train loss L(θ_k) (clean targets)"),
              ("teacher_distance", "‖u⊙v − w*‖  (distance to the sparse teacher)"))
    for method, series in r["series"].items():
        summ = r["summary"][method]
        label = LABELS[method] + (f" (δ={cfg['label_noise']:g})" if method == "label-noise-sgd"
                                  else "")
        for ax, (key, _) in zip(axes, panels):
            band = series[key]
            med, lo, hi = (np.asarray(none_nan(band[q]), float) for q in ("median", "min", "max"))
            if key == "train_loss":
                med, lo, hi = (np.maximum(a, LOSS_FLOOR) for a in (med, lo, hi))
            text = label
            if key == "hessian_trace":
                text += (f": {r['trace_initial']:.3g} → {summ['final_trace_min']:.3g}–"
                         f"{summ['final_trace_max']:.3g}")
            elif key == "train_loss" and summ["max_train_loss"] < LOSS_FLOOR:
                text += (": 0 after step 0" if summ["max_train_loss"] == 0 else
                         f": ≤ {summ['max_train_loss']:.2g}") + " (below the axis)"
            ax.plot(step, med, STYLES[method], color=palette[COLORS[method]], lw=1.8,
                    label=text, zorder=3)
            ax.fill_between(step, lo, hi, color=palette[COLORS[method]], alpha=0.25, lw=0)
    proj = r["summary"].get("label-noise-sgd", {}).get("projected_trace")
    if proj:
        axes[0].plot([step[-1]] * len(proj), proj, "x", color="k", ms=7, zorder=4,
                     label=f"final iterates projected onto the manifold\n({cfg['project_steps']:,} "
                           f"GD steps): {min(proj):.4g}–{max(proj):.4g}")
    axes[0].axhline(r["trace_floor"], color="0.3", ls="-.", lw=1,
                    label=f"min over the manifold {r['trace_floor']:.4g}")
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(ScalarFormatter())
    axes[0].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (3, 5, 20, 50)
                                                    else ""))
    axes[2].axhline(r["loss_at_zero"], color="0.5", ls="-.", lw=1,
                    label=f"L(θ = 0) = {r['loss_at_zero']:.3g}")
    axes[2].set_yscale("log")
    axes[2].set_ylim(LOSS_FLOOR, None)
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set(xlabel=f"step k  (t = k·h, h = {cfg['lr']:g})", ylabel=ylabel)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
        ax.legend(fontsize=8, loc="best")
    axes[0].set_title("Label noise lowers tr H; SGD and GD stay put", fontsize=10)
    axes[1].set_title("…by moving along the manifold of minima", fontsize=10)
    axes[2].set_title("…while the loss stays near its minimum", fontsize=10)
    axes[3].set_title("…toward the sparse, weighted-ℓ1-minimal interpolant", fontsize=10)
    ds = r["dataset"]
    seeds = ", ".join(map(str, cfg["seeds"]))
    fig.suptitle(
        f"Label-noise SGD (Blanc et al. 2020; Damian et al. 2021) on the diagonal network "
        f"f(x) = ⟨u⊙v, x⟩: n = {ds['n_train']} < d = {ds['dim']} (P = {r['num_params']}), "
        f"teacher w* = {ds['teacher']}, ½·MSE, float64, B = {cfg['batch_size']}, "
        f"h = {cfg['lr']:g}; θ0 on the manifold: u = {cfg['imbalance']:g}·1, v = (X⁺y)/"
        f"{cfg['imbalance']:g}.\nLines: median over seeds {seeds} (minibatch order and label "
        f"noise; data and θ0 fixed); bands: min–max over those seeds. The iterates sit "
        f"O(√h·δ) off the manifold, where tr H can dip below its on-manifold minimum (×: "
        f"projected back).", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def render_label_noise_curvature(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """The paper-scale figure (``label_noise_curvature.json``): tr H and λ_max at the end of
    SGD against the label-noise δ, one marker per seed (lines pair a seed's runs from the same
    θ0), the mean ± s.d. over seeds, and the values at θ0 (hollow)."""
    plt, sns = setup()
    r = read_label_noise_curvature(results_dir)
    cfg, runs = r["config"], r["runs"]
    noises, seeds = cfg["noises"], cfg["seeds"]
    palette = sns.color_palette("deep", 10)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (key, label) in zip(axes, (("hessian_trace", "tr H (Hutchinson)"),
                                       ("lambda_max", "λ_max (Lanczos)"))):
        for i, seed in enumerate(seeds):
            rows = sorted((x for x in runs if x["seed"] == seed), key=lambda x: x["label_noise"])
            xs = [x["label_noise"] for x in rows]
            ax.plot(xs, none_nan([x[key] for x in rows]), "o-", color=palette[i % 10], lw=1,
                    label=f"seed {seed}, end", zorder=3)
            ax.plot(xs, none_nan([x[f"{key}_initial"] for x in rows]), "o", mfc="none",
                    color=palette[i % 10], alpha=0.6, label="θ0 (hollow)" if i == 0 else None)
        for d in noises:
            m = r["summary"][f"{d:g}"][key]
            if m["mean"] is not None:
                ax.errorbar([d], [m["mean"]], yerr=[m["sd"] or 0.0], fmt="_", color="k", ms=18,
                            capsize=4, zorder=4)
        ax.set(xlabel="label noise δ (probability of a replaced label per step)", ylabel=label,
               xticks=noises)
        ax.legend(fontsize=8, loc="best")
    diffs = [r["summary"][f"{d:g}"].get("hessian_trace_minus_plain") for d in noises if d]
    text = "; ".join(f"δ = {d:g}: Δ tr H = {x['mean']:.4g} ± {x['sd'] or 0:.2g}, lower in "
                     f"{len(x['lower_in_seeds'])}/{len(seeds)} seeds"
                     for d, x in zip([d for d in noises if d], diffs) if x and x["mean"] is not None)
    run, ds = cfg["run"], r["dataset"]
    fig.suptitle(f"Curvature at the end of SGD with and without label noise (Damian et al. "
                 f"2021): {run['model']} (P = {r['num_params']:,}) on {ds['n_train']} "
                 f"{ds['name']} images, h = {run['lr']:g}, B = {run['batch_size']}, "
                 f"{run['steps']} steps\n{text}", fontsize=9)
    return save(fig, out_path)
