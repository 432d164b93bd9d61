"""Figures of Zhang et al. 2017 (``sgdreg.experiments.zhang``) from the stored results;
where several seeds were run, lines are seed means and bands the min–max range over the seeds
(with few seeds the range, not an s.d. estimate, is what the data show; it also stays positive
on log axes), with each seed's value as a dot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import load_document, load_results
from .common import save, setup

RANGE = ("pi", 100)  # seaborn errorbar: the 0–100th percentile over seeds = min–max


def render_randomization(results_dir, out_path) -> list[Path]:
    """Zhang et al. 2017, Fig. 1: (a) training loss per variant, (b) steps to fit relative to
    true labels vs label corruption p, (c) test error vs p."""
    res = load_results(results_dir, "randomization")
    plt, sns = setup()
    m = res["steps_per_epoch"]
    curves = [{"variant": r["variant"], "seed": r["seed"], "epoch": s / m, "train_loss": v}
              for r in res["runs"] for s, v in zip(r["curve"]["step"], r["curve"]["train_loss"])
              if v is not None]
    labelled = [r for r in res["runs"] if r["p"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), width_ratios=(1.3, 1, 1))
    order = list(dict.fromkeys(r["variant"] for r in res["runs"]))
    seeds = ", ".join(map(str, res["seeds"]))
    many = len(res["seeds"]) > 1
    band = f"line: mean over seeds {seeds}; band: min–max over seeds" if many else f"seed {seeds}"
    sns.lineplot(data=pd.DataFrame(curves), x="epoch", y="train_loss", hue="variant", hue_order=order,
                 errorbar=RANGE if many else None, ax=axes[0])
    axes[0].set(yscale="log", xlabel=f"epoch ({m} SGD steps each)",
                ylabel="training loss (cross-entropy, nats)", title="(a) training loss")
    axes[0].legend(fontsize=8, title=None, loc="upper left", bbox_to_anchor=(1.0, 1.02))
    df = pd.DataFrame(labelled)
    for ax, key in ((axes[1], "relative_time"), (axes[2], "test_error")):
        sns.lineplot(data=df, x="p", y=key, marker="o", errorbar=RANGE if many else None, ax=ax,
                     label="mean over seeds" if many else f"seed {seeds}", zorder=3)
        if many:
            ax.scatter(df["p"], df[key], s=14, color="0.25", alpha=0.7, zorder=4, lw=0,
                       label="single seeds")
    axes[1].set(xlabel="label corruption p",
                ylabel="steps to 100% train acc.\n÷ same seed's true-label steps",
                title="(b) convergence slowdown")
    axes[1].legend(fontsize=8, loc="lower right")
    axes[2].axhline(0.9, ls="--", c="gray", lw=1, label="chance (90%)")
    axes[2].set(xlabel="label corruption p", ylabel="test error (true test labels)", ylim=(0, 1),
                title="(c) generalization error")
    axes[2].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Randomization tests (Zhang et al. 2017), n = {res['n_train']}; {band}"
                 + (" (all panels)" if many else ""))
    fig.tight_layout()
    return save(fig, out_path)


def render_expressivity(results_dir, out_path) -> list[Path]:
    """Theorem 1 vs training: train accuracy on n random labels against parameter count."""
    doc = load_document(results_dir, "expressivity")
    res, seed = doc["results"], doc["config"].get("seed")
    c = res["construction"]
    plt, sns = setup()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.7))
    ax = axes[0]
    df = pd.DataFrame(res["trained"])
    sns.lineplot(data=df, x="num_params", y="best_train_acc", marker="o", ax=ax,
                 label="two-layer ReLU net, trained (best)")
    ax.scatter([c["num_params"]], [c["train_acc"]], marker="*", s=180, c="C3", zorder=3,
               label=f"Theorem 1 construction (2n+d = {c['num_params']}), "
                     f"residual {c['residual']:.1e}")
    ax.axvline(c["num_params"], ls=":", c="gray", lw=1)
    ax.axhline(res["chance"], ls="--", c="gray", lw=1, label="chance")
    ax.set(xscale="log", xlabel="number of parameters", ylabel="train accuracy (fraction)",
           ylim=(0, 1.05), title=f"(a) fitting n = {c['n']} random labels (d = {c['d']})\n"
                                  f"one run per size, seed {seed} (labels and θ0); no bands")
    ax.legend(fontsize=7, loc="lower right")
    curves = [{"params": f"{t['num_params']} (width {t['width']})", "step": s, "train_acc": a}
              for t in res["trained"]
              for s, a in zip(t["curve"]["step"], t["curve"]["train_acc"]) if a is not None]
    sns.lineplot(data=pd.DataFrame(curves), x="step", y="train_acc", hue="params", ax=axes[1])
    axes[1].set(xlabel="training step", ylabel="train accuracy (fraction)", ylim=(0, 1.05),
                title="(b) training curves")
    axes[1].legend(fontsize=7, title="parameters")
    fig.tight_layout()
    return save(fig, out_path)
