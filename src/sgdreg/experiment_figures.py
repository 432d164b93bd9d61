"""Renderers of the generalization experiments: ``render_<name>(results_dir, out_path)`` reads
only the results stored by ``sgdreg.experiments`` in ``results_dir`` and writes PNG + SVG.

Seaborn through ``plots._setup``/``plots.save``; where several seeds were run, lines are seed
means with ±1 s.d. bands (seaborn ``errorbar="sd"``).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import NullFormatter

from .experiments import load_results
from .plots import _setup, save

BAND = "sd"  # seeds as ±1 s.d. bands


def _frame(rows, **extra):
    import pandas as pd

    df = pd.DataFrame(rows)
    for k, v in extra.items():
        df[k] = v
    return df


def render_randomization(results_dir, out_path) -> list[Path]:
    """Zhang et al. 2017, Fig. 1: (a) training loss per variant, (b) steps to fit relative to
    true labels vs label corruption p, (c) test error vs p."""
    res = load_results(results_dir, "randomization")
    plt, sns = _setup()
    m = res["steps_per_epoch"]
    curves = [{"variant": r["variant"], "seed": r["seed"], "epoch": s / m, "train_loss": v}
              for r in res["runs"] for s, v in zip(r["curve"]["step"], r["curve"]["train_loss"])
              if v is not None]
    labelled = [r for r in res["runs"] if r["p"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.7), width_ratios=(1.3, 1, 1))
    order = list(dict.fromkeys(r["variant"] for r in res["runs"]))
    sns.lineplot(data=_frame(curves), x="epoch", y="train_loss", hue="variant", hue_order=order,
                 errorbar=BAND, ax=axes[0])
    axes[0].set(yscale="log", xlabel=f"epoch ({m} SGD steps each)",
                ylabel="training loss (cross-entropy, nats)",
                title="(a) training loss")
    axes[0].legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.0, 1.02))
    df = _frame(labelled)
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
    plt, sns = _setup()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.7))
    ax = axes[0]
    df = _frame(res["trained"])
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
    sns.lineplot(data=_frame(curves), x="step", y="train_acc", hue="params", ax=axes[1])
    axes[1].set(xlabel="training step", ylabel="train accuracy (fraction)", ylim=(0, 1.05),
                title="(b) training curves")
    axes[1].legend(fontsize=7, title="parameters")
    fig.tight_layout()
    return save(fig, out_path)


def render_kernel(results_dir, out_path) -> list[Path]:
    """Min-norm interpolation: GD-from-zero distance to W* over training, and RKHS norm against
    test error under several preprocessings (the norm does not track the error)."""
    res = load_results(results_dir, "kernel")
    plt, sns = _setup()
    panels = [k for k in ("gd", "preprocessing_table") if k in res]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.8),
                             squeeze=False)
    axes = list(axes[0])
    i = res["interpolation"]
    if "gd" in res:
        g, ax = res["gd"], axes.pop(0)
        ax.plot(g["step"], g["dist_to_min_norm"], marker=".")
        ax.set(yscale="log", xlabel="GD step", ylabel="‖W − W*‖_F / ‖W*‖_F",
               title=f"(a) GD from W₀ = 0 → min-norm (n={g['n']}, d={g['d']}, κ={g['kappa']:.0f})")
    if "preprocessing_table" in res:
        ax = axes.pop(0)
        df = _frame(res["preprocessing_table"])
        sns.scatterplot(data=df, x="rkhs_norm", y="test_error", hue="preprocessing",
                        size="bandwidth_scale", sizes=(30, 120), ax=ax)
        ax.set(xscale="log", xlabel="RKHS norm √(αᵀKα)", ylabel="test error (fraction)",
               title="(b) RBF interpolants: norm vs test error")
        ax.legend(fontsize=7, loc="center right")
    lines = [f"Min-norm interpolation ({i['kernel']} kernel, n = {i['n']}): train error "
             f"{i['train_error']:.3g}, test error {i['test_error']:.3g}, norm {i['rkhs_norm']:.3g}"]
    lines += [f"{o['dataset']} ({o['kernel']}, n = {o['n']}): train error {o['train_error']:.3g}, "
              f"test error {o['test_error']:.3g}, norm {o['rkhs_norm']:.3g}"
              for o in res.get("other_interpolations", [])]
    fig.suptitle("\n".join(lines))
    fig.tight_layout()
    return save(fig, out_path)


DD_KINDS = ("rff", "samples", "width", "epoch")


def render_double_descent(results_dir, out_path) -> list[Path]:
    """Double descent panels for every kind stored in ``results_dir``
    (``double_descent_<kind>.json``): RFF model-wise (train/test error and ‖a‖ vs N/n),
    sample-wise (test error vs n), deep model-wise (error vs width per noise), epoch-wise."""
    stored = {k: load_results(results_dir, f"double_descent_{k}") for k in DD_KINDS
              if (Path(results_dir) / f"double_descent_{k}.json").is_file()}
    if not stored:
        raise FileNotFoundError(f"no double_descent_<kind>.json in {results_dir}")
    plt, sns = _setup()
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
    df = _frame(res["rows"])
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
    df = _frame(res["rows"])
    sns.lineplot(data=df, x="n", y="test_error", marker="o", errorbar=BAND, ax=ax)
    ax.axvline(res["N"], ls="--", c="gray", lw=1, label=f"n = N = {res['N']}")
    ax.set(xscale="log", xlabel="training samples n", ylabel="test error (fraction)",
           title=f"sample-wise, N = {res['N']} features")
    ax.legend()


def _dd_width(sns, res, axes):
    df = _frame(res["rows"])
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
