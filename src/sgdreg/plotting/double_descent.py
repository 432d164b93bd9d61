"""The double-descent figure (``sgdreg.experiments.double_descent``) from the stored results:
lines are means over seeds, bands the min–max over seeds; a caption under the panels says how
many seeds and what the bands and markers are."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import NullFormatter

from ..results import load_results
from .common import save, setup

DD_KINDS = ("rff", "samples", "width", "epoch")
MINMAX = ("pi", 100)  # seaborn errorbar: the 0–100 percentile interval, i.e. min–max over seeds


def _num_seeds(res) -> int:
    return len({r["seed"] for r in res["rows"]})


def render_double_descent(results_dir, out_path) -> list[Path]:
    """Double descent panels for every kind stored in ``results_dir``
    (``double_descent_<kind>.json``): RFF model-wise (train/test error and ‖a‖ vs N/n), also for
    every further dataset stored as ``double_descent_rff_<dataset>.json``, sample-wise (test
    error vs n), the RFF peak height err(N = n)/err(N = 10n) per seed and dataset, deep
    model-wise (error vs width per noise) and epoch-wise."""
    results_dir = Path(results_dir)
    stored = {k: load_results(results_dir, f"double_descent_{k}") for k in DD_KINDS
              if (results_dir / f"double_descent_{k}.json").is_file()}
    extra_rff = [load_results(results_dir, p.stem)
                 for p in sorted(results_dir.glob("double_descent_rff_*.json"))]
    if not stored and not extra_rff:
        raise FileNotFoundError(f"no double_descent_<kind>.json in {results_dir}")
    rffs = ([stored["rff"]] if "rff" in stored else []) + extra_rff
    ratios = [r for r in rffs if r.get("ratio")]
    panels = []  # (draw, number of axes), in reading order, 4 per row
    for i, res in enumerate(rffs):
        panels.append((lambda axes, res=res: _dd_rff(sns, res, axes), 3))
        if i == 0 and "samples" in stored:
            panels.append((lambda axes: _dd_samples(sns, stored["samples"], axes[0]), 1))
    if "samples" in stored and not rffs:
        panels.append((lambda axes: _dd_samples(sns, stored["samples"], axes[0]), 1))
    if ratios:
        panels.append((lambda axes: _dd_ratio(ratios, axes[0]), 1))
    if "width" in stored:
        panels.append((lambda axes: _dd_width(sns, stored["width"], axes), 2))
    if "epoch" in stored:
        panels.append((lambda axes: _dd_epoch(stored["epoch"], axes[0]), 1))
    plt, sns = setup()
    total = sum(k for _, k in panels)
    cols = min(total, 4)
    rows = -(-total // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.7 * rows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[total:]:
        ax.set_visible(False)
    for draw, k in panels:
        draw([axes.pop(0) for _ in range(k)])
    fig.tight_layout()
    caption = _caption(rffs, stored, ratios)
    fig.text(0.01, 0.0, caption, ha="left", va="top", fontsize=9, wrap=True,
             transform=fig.transFigure)
    return save(fig, out_path)


def _caption(rffs, stored, ratios) -> str:
    lines = []
    for res in rffs:
        lines.append(f"RFF {res.get('dataset', '')} n = {res['n']}: {_num_seeds(res)} seeds "
                     "(features redrawn); lines: mean over seeds, bands: min–max over seeds.")
    if "samples" in stored:
        lines.append(f"Sample-wise: {_num_seeds(stored['samples'])} seeds, band min–max.")
    if ratios:
        unbounded = any(p["ratio"] is None for r in ratios for p in r["ratio"]["per_seed"])
        lines.append("Peak height err(N = n)/err(N = 10n): dots one seed each"
                     + (" (▲ at the top: no wrong test image at N = 10n)" if unbounded else "")
                     + ", ◆ ratio of the seed means, bar: its 95% bootstrap interval over test "
                     "images (the test set is fixed; seeds redraw only the features).")
    if "width" in stored:
        lines += _width_caption(stored["width"])
    if "epoch" in stored:
        lines.append("Epoch-wise: one seed.")
    return "\n".join(lines)


def _width_caption(res) -> list[str]:
    from ..double_descent import width_peaks

    peaks = width_peaks(res["rows"])
    k = _num_seeds(res)
    lines = [f"Model-wise MLP: {k} seeds (init, minibatches, corrupted labels); lines: mean, "
             f"bands: min–max over the {k} seeds. A peak counts when its min over seeds exceeds "
             "the max over seeds at the lowest-error widths on both sides (★; ○: largest bump, "
             "inside the spread; double_descent.width_peaks)."]
    parts = []
    for p in peaks:
        if p["peak"] is None:
            parts.append(f"{p['noise']:.0%}: no bump")
            continue
        parts.append(f"{p['noise']:.0%}: width {p['valley_left']} → {p['peak']} "
                     f"{p['mean'][0]:.1%} → {p['mean'][1]:.1%} ({p['seeds_up']}/{p['seeds']} seeds "
                     f"up), {'larger than' if p['separated'] else 'inside'} the spread")
    verdict = ("A peak is reproduced" if any(p["separated"] for p in peaks)
               else "No peak larger than its spread: not reproduced")
    lines.append(f"Noise {'; '.join(parts)}. {verdict}.")
    return lines


def _dd_rff(sns, res, axes):
    n = res["n"]
    df = pd.DataFrame(res["rows"])
    df["N/n"] = df["N"] / n
    train = df.melt(id_vars=["N/n", "seed"], value_vars=["train_error", "train_mse"],
                    var_name="train", value_name="value")
    train["train"] = train["train"].map({"train_error": "0-1 error", "train_mse": "squared loss"})
    sns.lineplot(data=train, x="N/n", y="value", hue="train", marker="o", errorbar=MINMAX,
                 ax=axes[0])
    axes[0].legend(title=None)
    for ax, (y, label) in zip(axes, ((None, "train error / loss"),
                                     ("test_error", "test error (fraction)"),
                                     ("norm", "‖a‖ (Frobenius)"))):
        if y:
            sns.lineplot(data=df, x="N/n", y=y, marker="o", errorbar=MINMAX, ax=ax)
        ax.axvline(1.0, ls="--", c="gray", lw=1)
        ax.set(xscale="log", xlabel="random features N / n", ylabel=label,
               yscale="log" if y == "norm" else "linear")
    name = res.get("dataset", "")
    axes[0].set_title(f"{name}: train", fontsize=10)
    axes[1].set_title(f"RFF min-norm, {name} n = {n}, σ = {res['sigma']:.2g}", fontsize=10)
    at_n = df[df["N"] == n]
    if len(at_n):
        axes[2].set_title(f"‖a‖ at N = n: mean {at_n['norm'].mean():.0f}, seeds "
                          f"{at_n['norm'].min():.0f}–{at_n['norm'].max():.0f}", fontsize=10)
    axes[2].xaxis.set_minor_formatter(NullFormatter())


def _dd_samples(sns, res, ax):
    df = pd.DataFrame(res["rows"])
    sns.lineplot(data=df, x="n", y="test_error", marker="o", errorbar=MINMAX, ax=ax)
    ax.axvline(res["N"], ls="--", c="gray", lw=1, label=f"n = N = {res['N']}")
    ax.set(xscale="log", xlabel="training samples n", ylabel="test error (fraction)",
           title=f"sample-wise, N = {res['N']} features")
    ax.legend()


def _dd_ratio(rffs, ax):
    """err(N = n)/err(N = 10n): one dot per seed, the ratio of seed means with its test-image
    bootstrap interval, per dataset."""
    top = max([p["ratio"] for r in rffs for p in r["ratio"]["per_seed"] if p["ratio"]] +
              [r["ratio"]["bootstrap"]["high"] for r in rffs
               if r["ratio"]["bootstrap"] and r["ratio"]["bootstrap"]["high"]] + [1.0])
    labels = []
    for i, res in enumerate(rffs):
        q = res["ratio"]
        for j, p in enumerate(q["per_seed"]):
            x = i + 0.06 * (j - (len(q["per_seed"]) - 1) / 2)
            if p["ratio"] is None:
                ax.plot(x, top * 1.4, "^", c="C0", ms=6)
            else:
                ax.plot(x, p["ratio"], "o", c="C0", ms=5, alpha=0.7)
        b = q["bootstrap"]
        if b:
            hi = b["high"] if b["high"] else top * 1.4
            ax.plot([i + 0.25, i + 0.25], [b["low"], hi], c="C3", lw=2)
        if q["ratio"]:
            ax.plot(i + 0.25, q["ratio"], "D", c="C3", ms=6)
            ci = ""
            if b:
                high = "∞" if b["high"] is None else f"{b['high']:.0f}"
                ci = f"\n[{b['low']:.0f}, {high}]"
            ax.annotate(f"{q['ratio']:.0f}{ci}", (i + 0.25, q["ratio"]), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8, color="C3")
        wrong = [p["wrong_far"] for p in q["per_seed"]]
        labels.append(f"{res.get('dataset', '')}\nn = {res['n']}\nwrong at 10n:\n"
                      f"{', '.join(map(str, wrong))} / {q['n_test']}")
    ax.set_xticks(range(len(rffs)), labels, fontsize=8)
    ax.set_xlim(-0.4, len(rffs) - 0.05)  # room for the labels right of the diamonds
    ax.set(yscale="log", ylabel="err(N = n) / err(N = 10n)", title="peak height per seed")


def _dd_width(sns, res, axes):
    from ..double_descent import width_peaks

    df = pd.DataFrame(res["rows"])
    df["label noise"] = [f"{q:.0%}" for q in df["noise"]]
    palette = dict(zip(sorted(df["label noise"].unique(), key=lambda s: float(s[:-1])),
                       sns.color_palette()))
    for ax, y in zip(axes, ("test_error", "train_error")):
        sns.lineplot(data=df, x="num_params", y=y, hue="label noise", marker="o", errorbar=MINMAX,
                     ax=ax, palette=palette)
        ax.axvline(res["interpolation_params"], ls="--", c="gray", lw=1)
        ax.text(res["interpolation_params"], 0.98, " n·K", transform=ax.get_xaxis_transform(),
                va="top", fontsize=8, color="gray")
        ax.set(xscale="log", xlabel="parameters of the MLP (one hidden layer)",
               ylabel=y.replace("_", " ") + " (fraction)")
        ax.xaxis.set_minor_formatter(NullFormatter())
    params = dict(zip(df["width"], df["num_params"]))
    for p in width_peaks(res["rows"]):
        if p["peak"] is None:
            continue
        c = palette[f"{p['noise']:.0%}"]
        axes[0].plot(params[p["peak"]], p["mean"][1], "*" if p["separated"] else "o", ms=14,
                     mfc=c if p["separated"] else "none", mec=c, mew=1.5, zorder=5)
    axes[0].set_title(f"model-wise, n = {res['n_train']}, widths {min(df['width'])}–"
                      f"{max(df['width'])}, {_num_seeds(res)} seeds", fontsize=10)
    axes[1].set_title("training error at the end of the budget", fontsize=10)


def _dd_epoch(res, ax):
    e = [i for i, x in enumerate(res["epoch"]) if x > 0]  # log axis: from the first epoch
    for key, label in (("test_error", "test"), ("train_error", "train")):
        ax.plot([res["epoch"][i] for i in e], [res[key][i] for i in e], label=label)
    ax.set(xscale="log", xlabel="epoch", ylabel="error (fraction)",
           title=f"epoch-wise, width {res['width']}, noise {res['noise']:.0%}, one seed")
    ax.legend()
