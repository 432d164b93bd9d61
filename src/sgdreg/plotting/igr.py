"""The implicit-gradient-regularization figures (``sgdreg.experiments.igr``), from the stored
``igr_backward_error.json``, ``igr_two_param.json`` and ``igr_sweep.json`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..experiments.igr import BACKWARD_ERROR, SWEEP, TWO_PARAM, read_results
from .common import none_nan, save, setup


def render_backward_error(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Distances GD↔flows against h (log-log, fitted orders), against t, and projected paths."""
    plt, sns = setup()
    r = read_results(results_dir, BACKWARD_ERROR)
    rows = [row for row in r["rows"] if row["status"] == "completed"]
    hs = np.array([row["lr"] for row in rows])
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.0))
    ax = axes[0]
    pal = sns.color_palette("deep")
    for key, label, c, mk in (("flow", "GD ↔ plain flow", pal[3], "o"),
                              ("modified_flow", "GD ↔ modified flow", pal[0], "s")):
        d = np.array([row[f"dist_{key}"] for row in rows])
        p = r["orders"].get(key)
        ax.plot(hs, d, mk + "-", color=c, label=f"{label} (order {p:.2f})" if p else label)
    if rows and "dist_egr" in rows[0]:
        ax.plot(hs, none_nan(row["dist_egr"] for row in rows), "^--", color=pal[4],
                label=f"GD(h) ↔ EGR (s={r['egr_lr']:g}, μ=h/4)")
        ax.plot(hs, none_nan(row["dist_small_step"] for row in rows), "v:", color=pal[7],
                label=f"GD(h) ↔ GD(s={r['egr_lr']:g})")
    if len(rows):
        h0 = hs.max()
        for order, key, ls in ((1, "dist_flow", "--"), (2, "dist_modified_flow", ":")):
            d0 = max(row[key] for row in rows if row["lr"] == h0)
            ax.plot(hs, d0 * (hs / h0) ** order, ls, color="0.5", lw=1,
                    label="reference ∝ h" if order == 1 else "reference ∝ h²")
    ax.set(xscale="log", yscale="log", xlabel="step size h",
           ylabel=f"‖θ_GD − θ‖ at t = {r['time']:g}", title="Backward error: global order in h")
    ax.set_xticks(hs, [f"{h:g}" for h in hs])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax = axes[1]
    colors = sns.color_palette("viridis", len(r["series"]))
    for (h, s), c in zip(r["series"].items(), colors):
        t = np.array(s["t"])
        ax.plot(t[1:], s["dist_flow"][1:], "-", color=c, label=f"h={h} plain flow")
        ax.plot(t[1:], s["dist_modified_flow"][1:], "--", color=c, label=f"h={h} modified flow")
    ax.set(yscale="log", xlabel="time t = k·h", ylabel="‖θ_GD(t) − θ(t)‖",
           title="Distance along the run (solid: plain, dashed: modified)")
    ax.legend(fontsize=7, ncol=1)
    ax = axes[2]
    h = max(r["series"], key=float)
    s = r["series"][h]
    for method, style, label in (("flow", "-", "plain flow"), ("modified-flow", "--", "modified flow"),
                                 ("gd", "o", f"GD h={h}")):
        p = np.array(s["proj"][method])
        ax.plot(p[0], p[1], style, ms=4, label=label)
    ax.set(xlabel="random projection 1 of θ − θ₀", ylabel="random projection 2",
           title=f"Paths (h={h}, seeded projection)")
    ax.legend(fontsize=8)
    cfg = r["config"]
    fig.suptitle(f"GD vs gradient flows from one θ₀: {r['dataset']['name']} (n={r['dataset']['n_train']}"
                 f"), {cfg['model']} width {cfg['width']} {cfg['activation']}, {cfg['loss']}, "
                 f"{cfg['dtype']}, P={r['num_params']}", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def render_two_param(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """(a, b) plane with the minima ab = y/x and the trajectories (full and zoomed on where they
    land); final gap ||a| − |b|| against h."""
    plt, sns = setup()
    r = read_results(results_dir, TWO_PARAM)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.7))
    x, y, f = r["x"], r["y"], r["flattest"]
    pal = sns.color_palette("deep")
    styles = {"flow": (pal[2], "-", "plain flow"),
              "gd_small": (pal[2], "o", f"GD h={r['h_small']:g}"),
              "gd_moderate": (pal[3], "o-", f"GD h={r['h_moderate']:g}"),
              "modified_flow": (pal[0], "--", f"modified flow h={r['h_moderate']:g}"),
              "egr": (pal[4], "-.", f"EGR h={r['h_small']:g}, μ={r['egr']:g}")}
    ends = np.array([[p["final_a"], p["final_b"]] for p in r["paths"].values()])
    lo, hi = ends.min(0), ends.max(0)
    pad = 0.25 * (hi - lo).max()
    lim = 1.15 * max(r["a0"], r["b0"])
    views = (((0, lim), (0, lim), "trajectories"),
             ((lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad), "where they land (zoom)"))
    for ax, (xl, yl, title) in zip(axes[:2], views):
        A, B = np.meshgrid(np.linspace(*xl, 200), np.linspace(*yl, 200))
        ax.contour(A, B, np.log10(0.5 * (y - A * B * x) ** 2 + 1e-4), levels=10, colors="0.85",
                   linewidths=0.6, linestyles="solid")
        a = np.linspace(max(xl[0], 1e-3), xl[1], 300)
        ax.plot(a, y / x / a, "k--", lw=1, label="minima ab = y/x")
        ax.plot([f], [f], "kx", ms=9, mew=2, label="flattest |a| = |b|")
        for k, (c, st, label) in styles.items():
            p = r["paths"][k]
            ax.plot(p["a"], p["b"], st, color=c, ms=2.5, lw=1.3, label=label)
            ax.plot([p["final_a"]], [p["final_b"]], "o", color=c, ms=7, mec="k")
        ax.plot([r["a0"]], [r["b0"]], "k*", ms=10)
        ax.set(xlim=xl, ylim=yl, xlabel="a", ylabel="b", title=title)
    axes[0].set_aspect("equal")
    axes[0].legend(fontsize=7, loc="lower right")
    ax = axes[2]
    g = r["gaps"]
    hs = [row["lr"] for row in g]
    ax.plot(hs, none_nan(row["gd_gap"] for row in g), "o-", color=pal[3], label="GD")
    ax.plot(hs, none_nan(row["modified_flow_gap"] for row in g), "s--", color=pal[0],
            label="modified flow (same h)")
    ax.axhline(r["paths"]["flow"]["final_gap"], color=pal[2], ls="-", label="plain flow")
    ax.axhline(r["paths"]["egr"]["final_gap"], color=pal[4], ls="-.",
               label=f"EGR (h={r['h_small']:g}, μ={r['egr']:g})")
    ax.set(xlabel="step size h", ylabel=f"final ||a| − |b|| at t = {r['time']:g}",
           title="Larger h lands nearer |a| = |b|")
    ax.legend(fontsize=8)
    fig.suptitle(f"E(a,b) = ½(y − abx)², x = {x:g}, y = {y:g}, from (a, b) = ({r['a0']:g}, "
                 f"{r['b0']:g})", fontsize=11)
    fig.tight_layout()
    return save(fig, out_path)


def render_sweep(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """R_IG = ‖∇L‖², igr_gd and test accuracy against h, one line per width; top: at t = T,
    bottom: at the matched training loss."""
    plt, sns = setup()
    r = read_results(results_dir, SWEEP)
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.2), sharex=True)
    colors = dict(zip(r["widths"], sns.color_palette("crest", len(r["widths"]))))
    panels = (("grad_norm_sq", "R_IG = ‖∇L‖²", True), ("igr_gd", "igr_gd = (h/4)‖∇L‖²", True),
              ("test_acc", "test accuracy", False))
    views = (("final", f"at t = {r['time']:g}"), ("at_loss", f"at train loss {r['target_loss']:g}"))
    for i, (view, vlabel) in enumerate(views):
        for j, (key, label, log) in enumerate(panels):
            ax = axes[i, j]
            for w in r["widths"]:
                pts = [(row["lr"], row[view][key]) for row in r["rows"] if row["width"] == w
                       and row["status"] == "completed" and row[view]
                       and row[view].get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), "o-", color=colors[w], label=f"width {w}")
                div = [row["lr"] for row in r["rows"] if row["width"] == w
                       and row["status"] != "completed"]
                for h in div:
                    ax.axvline(h, color=colors[w], ls=":", lw=1)
            ax.set(xscale="log", yscale="log" if log else "linear", ylabel=label,
                   title=f"{label} {vlabel}")
            if i == 1:
                ax.set_xlabel("step size h")
    axes[0, 0].legend(fontsize=8)
    cfg = r["config"]
    ds = r["dataset"]
    fig.suptitle(f"Full-batch GD on {ds['name']} (n={ds['n_train']}; test n={ds['n_test']}: one "
                 f"example = {100 / ds['n_test']:.2g}%), {cfg['model']} {cfg['activation']}, "
                 f"{cfg['loss']}, seed {cfg['seed']} (dotted: diverged)", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)
