"""The double-descent figure (``sgdreg.experiments.double_descent``) from the stored results;
where several seeds were run, lines are seed means with ±1 s.d. bands."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import NullFormatter

from ..results import load_results
from .common import BAND, save, setup

DD_KINDS = ("rff", "samples", "width", "epoch")


def render_double_descent(results_dir, out_path) -> list[Path]:
    """Double descent panels for every kind stored in ``results_dir``
    (``double_descent_<kind>.json``): RFF model-wise (train/test error and ‖a‖ vs N/n),
    sample-wise (test error vs n), deep model-wise (error vs width per noise), epoch-wise."""
    stored = {k: load_results(results_dir, f"double_descent_{k}") for k in DD_KINDS
              if (Path(results_dir) / f"double_descent_{k}.json").is_file()}
    if not stored:
        raise FileNotFoundError(f"no double_descent_<kind>.json in {results_dir}")
    plt, sns = setup()
    count = {"rff": 3, "samples": 1, "width": 2, "epoch": 1}
    total = sum(count[k] for k in stored)
    cols = min(total, 4)
    rows = -(-total // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.7 * rows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[total:]:
        ax.set_visible(False)
    if "rff" in stored:
        _dd_rff(sns, stored["rff"], [axes.pop(0) for _ in range(3)])
    if "samples" in stored:
        _dd_samples(sns, stored["samples"], axes.pop(0))
    if "width" in stored:
        _dd_width(sns, stored["width"], [axes.pop(0) for _ in range(2)])
    if "epoch" in stored:
        _dd_epoch(stored["epoch"], axes.pop(0))
    fig.tight_layout()
    return save(fig, out_path)


def _dd_rff(sns, res, axes):
    n = res["n"]
    df = pd.DataFrame(res["rows"])
    df["N/n"] = df["N"] / n
    train = df.melt(id_vars=["N/n", "seed"], value_vars=["train_error", "train_mse"],
                    var_name="train", value_name="value")
    train["train"] = train["train"].map({"train_error": "0-1 error", "train_mse": "squared loss"})
    sns.lineplot(data=train, x="N/n", y="value", hue="train", marker="o", errorbar=BAND,
                 ax=axes[0])
    axes[0].legend(title=None)
    for ax, (y, label) in zip(axes, ((None, "train error / loss"),
                                     ("test_error", "test error (fraction)"),
                                     ("norm", "‖a‖ (Frobenius)"))):
        if y:
            sns.lineplot(data=df, x="N/n", y=y, marker="o", errorbar=BAND, ax=ax)
        ax.axvline(1.0, ls="--", c="gray", lw=1)
        ax.set(xscale="log", xlabel="random features N / n", ylabel=label,
               yscale="log" if y == "norm" else "linear")
    axes[1].set_title(f"RFF min-norm, n = {n}, σ = {res['sigma']:.2g}")
    axes[2].xaxis.set_minor_formatter(NullFormatter())


def _dd_samples(sns, res, ax):
    df = pd.DataFrame(res["rows"])
    sns.lineplot(data=df, x="n", y="test_error", marker="o", errorbar=BAND, ax=ax)
    ax.axvline(res["N"], ls="--", c="gray", lw=1, label=f"n = N = {res['N']}")
    ax.set(xscale="log", xlabel="training samples n", ylabel="test error (fraction)",
           title=f"sample-wise, N = {res['N']} features")
    ax.legend()


def _dd_width(sns, res, axes):
    df = pd.DataFrame(res["rows"])
    df["label noise"] = [f"{q:.0%}" for q in df["noise"]]
    for ax, y in zip(axes, ("test_error", "train_error")):
        sns.lineplot(data=df, x="num_params", y=y, hue="label noise", marker="o", errorbar=BAND,
                     ax=ax)
        ax.axvline(res["interpolation_params"], ls="--", c="gray", lw=1)
        ax.text(res["interpolation_params"], 0.98, " n·K", transform=ax.get_xaxis_transform(),
                va="top", fontsize=8, color="gray")
        ax.set(xscale="log", xlabel="parameters of the MLP (one hidden layer)",
               ylabel=y.replace("_", " ") + " (fraction)")
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_title(f"model-wise, n = {res['n_train']}, widths {min(df['width'])}–"
                      f"{max(df['width'])}")
    axes[1].set_title("training error at the end of the budget")


def _dd_epoch(res, ax):
    e = [i for i, x in enumerate(res["epoch"]) if x > 0]  # log axis: from the first epoch
    for key, label in (("test_error", "test"), ("train_error", "train")):
        ax.plot([res["epoch"][i] for i in e], [res[key][i] for i in e], label=label)
    ax.set(xscale="log", xlabel="epoch", ylabel="error (fraction)",
           title=f"epoch-wise, width {res['width']}, noise {res['noise']:.0%}")
    ax.legend()
