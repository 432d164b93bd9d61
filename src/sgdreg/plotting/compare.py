"""Figures of ``sgdreg compare`` (several traces from one θ0) and ``sgdreg hessian`` (the SLQ
spectral density), from traces and stored estimates only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import FULL_BATCH
from .common import save, setup, setup_light

RUN_STYLES = ("-", "--", "-.", ":")


def _series(doc: dict, name: str):
    """(t, values) of one metric at the rows where it was recorded (nulls dropped)."""
    import numpy as np

    m = doc["metrics"]
    vals = m.get(name)
    if vals is None:
        return np.empty(0), np.empty(0)
    t = m.get("t") or m["step"]
    pts = [(ti, v) for ti, v in zip(t, vals) if isinstance(v, (int, float)) and v is not None]
    if not pts:
        return np.empty(0), np.empty(0)
    a = np.asarray(pts, float)
    return a[:, 0], a[:, 1]


def run_label(doc: dict) -> str:
    cfg = doc["config"]
    b = "" if cfg.get("optimizer") in FULL_BATCH else f", B={cfg.get('batch_size')}"
    if cfg.get("label_noise"):
        b += f", label noise {cfg['label_noise']:g}"
    if cfg.get("optimizer") == "svag":
        b += f", ℓ={cfg.get('svag_amplification')}"
    return f"{cfg.get('optimizer')} (h={cfg.get('lr'):g}{b})"


def compare_panels(traces: Sequence[dict]) -> list[str]:
    """The panels ``compare_figure`` draws for these traces (those with data)."""
    have = {k for doc in traces for k, v in doc["metrics"].items() if any(x is not None for x in v)}
    panels = ["loss"] + (["gap"] if "gen_gap" in have else [])
    panels += [p for p, need in (("igr", "igr_gd"), ("trace", "hessian_trace"),
                                 ("sharpness", "lambda_max"), ("norms", "weight_norm"),
                                 ("min_norm", "dist_to_min_norm")) if need in have]
    if {"hessian_trace", "gen_gap"} <= have:
        panels.append("link")
    return panels


def compare_figure(traces: Sequence[dict], path: str | Path, svg: bool = False) -> list[Path]:
    """The ``sgdreg compare`` figure, one colour and line style per run, against t = k·h:
    train and test loss with the generalization gap shaded, and the gap itself; the IGR terms
    igr_gd = (h/4)‖∇L‖² and igr_sgd_var = (h/4)(1/m)Σ‖∇L̂_k − ∇L‖² (log axis); Hutchinson tr H
    ± its standard error; λ_max (Lanczos; hollow markers where not converged) with each run's
    EoS threshold (2/h, heavy ball 2(1+β)/h, Nesterov (2+2β)/((1+2β)h)) and the batch
    sharpness of minibatch methods; ‖θ‖ and ‖θ − θ₀‖; the distance to the minimum-norm solution
    (linear models); and the linking panel: generalization gap against tr H along each run."""
    import numpy as np

    plt = setup_light()
    panels = compare_panels(traces)
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.1 * ncol, 3.3 * nrow + 0.6), squeeze=False,
                             layout="constrained")
    ax_of = dict(zip(panels, axes.flat))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # seaborn's "deep" palette
    colors = [cycle[i % len(cycle)] for i in range(len(traces))]
    # later runs thinner, so a run hidden under another still shows as a coloured core
    widths = np.linspace(2.6, 1.2, len(traces)) if len(traces) > 1 else [1.8]
    thresholds: dict[tuple[str, float], list[int]] = {}
    for i, doc in enumerate(traces):
        st = dict(color=colors[i], ls=RUN_STYLES[i % len(RUN_STYLES)], lw=widths[i])
        lab = run_label(doc)
        if ax := ax_of.get("loss"):
            t, tr = _series(doc, "train_loss")
            t2, te = _series(doc, "test_loss")
            ax.plot(t, tr, label=lab, **st)
            if len(te):
                ax.plot(t2, te, **{**st, "lw": st["lw"] * 0.6}, alpha=0.8)
                if len(t2) == len(t) and np.allclose(t, t2):
                    ax.fill_between(t, tr, te, color=colors[i], alpha=0.12, lw=0)
        if ax := ax_of.get("gap"):
            ax.plot(*_series(doc, "gen_gap"), **st)
        if ax := ax_of.get("igr"):
            ax.plot(*_series(doc, "igr_gd"), **st)
            t, v = _series(doc, "igr_sgd_var")
            if len(v):
                ax.plot(t, v, **st, marker="o", ms=3, alpha=0.7)
        if ax := ax_of.get("trace"):
            t, v = _series(doc, "hessian_trace")
            _, se = _series(doc, "hessian_trace_stderr")
            ax.plot(t, v, marker=".", **st)
            if len(se) == len(v):
                ax.fill_between(t, v - se, v + se, color=colors[i], alpha=0.2, lw=0)
        if ax := ax_of.get("sharpness"):
            t, v = _series(doc, "lambda_max")
            _, conv = _series(doc, "lambda_max_converged")
            ax.plot(t, v, **st)
            if len(conv) == len(v):
                ax.scatter(t[conv > 0], v[conv > 0], color=colors[i], s=12, zorder=3)
                ax.scatter(t[conv == 0], v[conv == 0], facecolor="none", edgecolor=colors[i],
                           s=16, zorder=3)
            t, v = _series(doc, "batch_sharpness")
            if len(v):
                ax.plot(t, v, **{**st, "lw": 1.0}, marker="x", ms=4, mew=1.0, alpha=0.8)
            thr = _series(doc, "eos_threshold")[1]
            preset = doc["config"].get("optimizer")
            if len(thr) and preset in _THRESHOLD_NAMES:
                thresholds.setdefault((_THRESHOLD_NAMES[preset], float(thr[-1])), []).append(i)
        if ax := ax_of.get("norms"):
            ax.plot(*_series(doc, "weight_norm"), **st)
            ax.plot(*_series(doc, "dist_from_init"), **{**st, "lw": st["lw"] * 0.6}, alpha=0.8)
        if ax := ax_of.get("min_norm"):
            ax.plot(*_series(doc, "dist_to_min_norm"), **st)
        if ax := ax_of.get("link"):
            link_path(ax, doc, st)
    if ax := ax_of.get("sharpness"):  # one dotted line per distinct threshold, grey if shared
        for (name, value), runs in thresholds.items():
            c = colors[runs[0]] if len(runs) < len(traces) else "0.3"
            ax.axhline(value, color=c, ls=":", lw=1.2)
            ax.annotate(f"{name} = {value:.3g}", (0.02, value), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=8, color=c)
    titles = {
        "loss": ("training loss (thick) and test loss (thin);\nshaded: generalization gap", True),
        "gap": ("generalization gap: test L − train L", False),
        "igr": ("IGR terms: (h/4)‖∇L‖² (line),\n(h/4)·minibatch variance (dots)", True),
        "trace": ("tr H (Hutchinson) ± stderr", False),
        "sharpness": ("λ_max (Lanczos; hollow: not converged),\nbatch sharpness (×); dotted: EoS",
                      False),
        "norms": ("‖θ‖ (thick) and ‖θ − θ₀‖ (thin)", False),
        "min_norm": ("‖θ − θ*‖/‖θ*‖, θ* min-norm solution", True),
        "link": ("generalization gap vs tr H\n(circle: first probe, square: last)", False),
    }
    for name, ax in ax_of.items():
        title, log = titles[name]
        ax.set_title(title, fontsize=9)
        if name != "link":
            ax.set_xlabel("time t = k·h")
            if log:
                ax.set_yscale("log")
    handles, labels = ax_of["loss"].get_legend_handles_labels()
    spare = list(axes.flat)[len(panels):]
    if spare:  # the legend in the first free panel slot, else below the panels
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(handles, labels, loc="center", frameon=False, title="runs (same θ₀)")
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4),
                   frameon=False)
    seeds = sorted({doc.get("seed") for doc in traces}, key=str)
    bands = "; bands: Hutchinson ±1 stderr" if "trace" in ax_of else ""
    fig.suptitle(f"Same θ₀, different dynamics (seed {', '.join(map(str, seeds))}; one run "
                 f"each{bands})", fontsize=10)
    return save(fig, path, svg, tight=False)


_THRESHOLD_NAMES = {"gd": "2/h", "sgd": "2/h", "momentum": "2(1+β)/h",
                    "nesterov": "(2+2β)/((1+2β)h)"}


def link_path(ax, doc: dict, style: dict) -> None:
    """Generalization gap against tr H at the curvature probes of one run, in time order."""
    import numpy as np

    t_h, trh = _series(doc, "hessian_trace")
    t_g, gap = _series(doc, "gen_gap")
    if not len(trh):
        return
    at = {round(float(t), 9): g for t, g in zip(t_g, gap)}
    pts = np.asarray([(h, at[round(float(t), 9)]) for t, h in zip(t_h, trh)
                      if round(float(t), 9) in at])
    if not len(pts):
        return
    ax.plot(pts[:, 0], pts[:, 1], **style)
    ax.scatter(*pts[0], color=style["color"], marker="o", s=22, zorder=3)
    ax.scatter(*pts[-1], color=style["color"], marker="s", s=22, zorder=3)
    ax.set(xlabel="tr H", ylabel="test L − train L")


def spectral_density_figure(nodes, weights, path, sigma: float | None = None,
                            svg: bool = False) -> tuple[list[Path], float]:
    """SLQ density φ(t) = (1/n_v)Σ τ_j N(t; θ_j, σ²), σ a standard deviation (default 1% of the
    node range), on a linear and a log scale; returns the files and the σ used."""
    import numpy as np

    from ..curvature import slq_density

    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = float(sigma) if sigma else max(0.01 * (hi - lo), 1e-8)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000)
    phi = np.asarray(slq_density(nodes, weights, grid, sigma))
    plt, _ = setup()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(grid, phi)
    axes[1].semilogy(grid, np.maximum(phi, 1e-12))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.set(xlabel="eigenvalue λ of H", ylabel=f"density φ(λ) ({scale})")
    fig.suptitle(f"Hessian spectral density (SLQ, Gaussian kernel σ = {sigma:.3g}, std)")
    fig.tight_layout()
    return save(fig, path, svg), sigma
