"""The min-norm interpolation figure (``sgdreg.experiments.kernel``) from the stored results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import load_results
from .common import save, setup


def render_kernel(results_dir, out_path) -> list[Path]:
    """Min-norm interpolation: GD-from-zero distance to W* over training, and RKHS norm against
    test error under several preprocessings (the norm does not track the error)."""
    res = load_results(results_dir, "kernel")
    plt, sns = setup()
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
        df = pd.DataFrame(res["preprocessing_table"])
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
