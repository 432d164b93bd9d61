"""Figures of Zhang et al. 2017 (``sgdreg.experiments.zhang``) from the stored results;
where several seeds were run, lines are seed means with ±1 s.d. bands."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import load_results
from .common import BAND, save, setup


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
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.7), width_ratios=(1.3, 1, 1))
    order = list(dict.fromkeys(r["variant"] for r in res["runs"]))
    sns.lineplot(data=pd.DataFrame(curves), x="epoch", y="train_loss", hue="variant", hue_order=order,
                 errorbar=BAND, ax=axes[0])
    axes[0].set(yscale="log", xlabel=f"epoch ({m} SGD steps each)",
                ylabel="training loss (cross-entropy, nats)",
                title="(a) training loss")
    axes[0].legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.0, 1.02))
    df = pd.DataFrame(labelled)
    sns.lineplot(data=df, x="p", y="relative_time", marker="o", errorbar=BAND, ax=axes[1])
    axes[1].set(xlabel="label corruption p", ylabel="steps to 100% train acc. / true labels",
                title="(b) convergence slowdown")
    sns.lineplot(data=df, x="p", y="test_error", marker="o", errorbar=BAND, ax=axes[2])
    axes[2].axhline(0.9, ls="--", c="gray", lw=1, label="chance (90%)")
    axes[2].set(xlabel="label corruption p", ylabel="test error (fraction)", ylim=(0, 1),
                title="(c) generalization error")
    axes[2].legend(loc="upper left")
    fig.suptitle(f"Randomization tests (Zhang et al. 2017), n = {res['n_train']}, "
                 f"{len(res['seeds'])} seed(s)")
    fig.tight_layout()
    return save(fig, out_path)


def render_expressivity(results_dir, out_path) -> list[Path]:
    """Theorem 1 vs training: train accuracy on n random labels against parameter count."""
    res = load_results(results_dir, "expressivity")
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
           ylim=(0, 1.05), title=f"(a) fitting n = {c['n']} random labels (d = {c['d']})")
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
