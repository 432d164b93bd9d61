"""The min-norm interpolation figure (``sgdreg.experiments.kernel``) from the stored results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results import load_results
from .common import save, setup

PREPROCESSING_LABEL = {"unit": "pixels/max", "standardize": "standardized"}


def render_kernel(results_dir, out_path) -> list[Path]:
    """Min-norm interpolation: (a) GD-from-zero distance to W* over training; (b) across kernels
    (preprocessing × bandwidth, each a different function space): RKHS norm against test error
    with its exact 95% binomial interval over the test points; (c) at each fixed kernel: the norm
    of the true labels against that of random labels (one mark per seed)."""
    res = load_results(results_dir, "kernel")
    plt, sns = setup()
    panels = [k for k in ("gd", "preprocessing_table", "fixed_kernel") if k in res]
    widths = {"gd": 1.0, "preprocessing_table": 1.0, "fixed_kernel": 1.25}
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.4 * max(1, len(panels)) + 1, 4.6),
                             width_ratios=[widths[p] for p in panels] or None, squeeze=False)
    axes = dict(zip(panels, axes[0]))
    letters = dict(zip(panels, "abc"))
    colors = dict(zip(PREPROCESSING_LABEL, sns.color_palette("deep", 2)))
    i = res["interpolation"]
    if "gd" in res:
        g, ax = res["gd"], axes["gd"]
        ax.plot(g["step"], g["dist_to_min_norm"], marker=".")
        ax.set(yscale="log", xlabel="GD step", ylabel="‖W − W*‖_F / ‖W*‖_F",
               title=f"({letters['gd']}) GD from W₀ = 0 → min-norm W*\n"
                     f"(linear, n={g['n']} < d={g['d']}, κ={g['kappa']:.0f})")
    if "preprocessing_table" in res:
        _across_kernels(axes["preprocessing_table"], res["preprocessing_table"], colors,
                        letters["preprocessing_table"])
    if "fixed_kernel" in res:
        _fixed_kernel(axes["fixed_kernel"], res["fixed_kernel"], colors, letters["fixed_kernel"])
    lines = [f"Min-norm interpolation ({i['kernel']} kernel, n = {i['n']}): train error "
             f"{i['train_error']:.3g}, test error {i['test_error']:.3g}, norm {i['rkhs_norm']:.3g}"]
    lines += [f"{o['dataset']} ({o['kernel']}, n = {o['n']}): train error {o['train_error']:.3g}, "
              f"test error {o['test_error']:.3g}, norm {o['rkhs_norm']:.3g}"
              for o in res.get("other_interpolations", [])]
    fig.suptitle("\n".join(lines), fontsize=11)
    fig.tight_layout()
    return save(fig, out_path)


def _label(how: str) -> str:
    return PREPROCESSING_LABEL.get(how, how)


def _across_kernels(ax, table, colors, letter) -> None:
    """True labels only: one point per kernel, test error on a log axis with its interval."""
    rows = [r for r in table if r["preprocessing"] in PREPROCESSING_LABEL]
    for how in PREPROCESSING_LABEL:
        sub = [r for r in rows if r["preprocessing"] == how]
        if not sub:
            continue
        x = np.array([r["rkhs_norm"] for r in sub])
        y = np.array([r["test_error"] for r in sub]) * 100
        ci = [r.get("test_error_ci") for r in sub]
        if all(c is not None for c in ci):
            lo, hi = (np.array([c[j] for c in ci]) * 100 for j in (0, 1))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor=colors[how], alpha=0.6,
                        capsize=3, lw=1)
        ax.plot(x, y, "o-", color=colors[how], label=_label(how), ms=7, lw=0.8)
        for r, xi, yi in zip(sub, x, y):
            errors = round(r["test_error"] * r["n_test"]) if r.get("n_test") else None
            ax.annotate(f"σ×{r['bandwidth_scale']:g}" + (f"\n{errors}/{r['n_test']}" if errors
                                                           is not None else ""),
                        (xi, yi), textcoords="offset points", xytext=(6, -4 if how == "unit" else 4),
                        fontsize=8, color=colors[how], va="top" if how == "unit" else "bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax.xaxis, [10, 20, 50, 100, 200, 500, 1000, 2000, 5000], "{:g}")
    _log_ticks(ax.yaxis, [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10], "{:g}%")
    ax.set_ylim(0.05, 10)
    if rows:
        x = [r["rkhs_norm"] for r in rows]
        ax.set_xlim(min(x) / 1.6, max(x) * 1.8)
    n_test = rows[0].get("n_test") if rows else None
    ax.set(xlabel="RKHS norm √(tr αᵀKα)  (each point: a different kernel)",
           ylabel="test error (log axis)",
           title=f"({letter}) Across kernels, true labels: norm vs test error\n"
                 + (f"bars: exact 95% binomial interval over {n_test} test images" if n_test
                    else ""))
    ax.legend(fontsize=8, title="preprocessing", title_fontsize=8, loc="upper left")


def _fixed_kernel(ax, rows, colors, letter) -> None:
    """Per kernel: the true labels' norm (●) and each random-label seed's norm (×), ratio range."""
    names, rng = [], np.random.default_rng(0)  # jitter only spreads the marks sideways
    for k, r in enumerate(rows):
        c = colors.get(r["preprocessing"], "0.3") if r["dataset"] == rows[0]["dataset"] else "0.3"
        ax.plot([k], [r["rkhs_norm_true"]], "o", color=c, ms=8, zorder=3,
                label="true labels" if k == 0 else None)
        xs = k + rng.uniform(-0.15, 0.15, len(r["rkhs_norm_random"]))
        ax.plot(xs, r["rkhs_norm_random"], "x", color=c, ms=5, mew=1,
                label=f"random labels (one × per seed, seeds {_seeds(r['seeds'])})" if k == 0
                else None)
        ax.annotate(f"×{r['ratio_min']:.2f}–{r['ratio_max']:.2f}", (k, max(r["rkhs_norm_random"])),
                    textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
        names.append(f"{r['dataset']}\n{_label(r['preprocessing'])}\nσ×{r['bandwidth_scale']:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    lo = min(r["rkhs_norm_true"] for r in rows)
    hi = max(max(r["rkhs_norm_random"]) for r in rows)
    ax.set_ylim(lo / 5, hi * 3)
    ax.set(ylabel="RKHS norm √(tr YᵀK⁻¹Y)",
           title=f"({letter}) At a fixed kernel: true vs random labels\n"
                 "label: random / true norm, min–max over seeds")
    ax.legend(fontsize=8, loc="lower right")


def _log_ticks(axis, ticks, fmt) -> None:
    """Major ticks at ``ticks`` labelled by ``fmt``; minor tick labels off (log axes)."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    axis.set_major_locator(FixedLocator(ticks))
    axis.set_ticklabels([fmt.format(t) for t in ticks])
    axis.set_minor_formatter(NullFormatter())


def _seeds(seeds) -> str:
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))
