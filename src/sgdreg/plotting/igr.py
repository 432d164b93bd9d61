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
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 5.0))
    ax = axes[0]
    pal = sns.color_palette("deep")
    for key, label, c, mk in (("flow", "GD ↔ plain flow", pal[3], "o"),
                              ("modified_flow", "GD ↔ modified flow", pal[0], "s")):
        d = np.array([row[f"dist_{key}"] for row in rows])
        p = r["orders"].get(key)
        ax.plot(hs, d, mk + "-", color=c, label=f"{label} (order {p:.2f})" if p else label)
    if rows and "dist_egr" in rows[0]:
        s = r["egr_lr"]
        p = r["orders"].get("egr")
        ax.plot(hs, none_nan(row["dist_egr"] for row in rows), "^-", color=pal[4],
                label=f"GD(h) ↔ EGR (s={s:g}, μ=(h−s)/4)" + (f" (order {p:.2f})" if p else ""))
        if "dist_egr_naive" in rows[0]:
            ax.plot(hs, none_nan(row["dist_egr_naive"] for row in rows), "^:", color=pal[4],
                    alpha=0.55, mfc="none", label=f"GD(h) ↔ EGR (s={s:g}, μ=h/4: step h+s)")
        ax.plot(hs, none_nan(row["dist_small_step"] for row in rows), "v:", color=pal[7],
                label=f"GD(h) ↔ GD(s={s:g})")
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
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
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
                 f"{cfg['dtype']}, P={r['num_params']}; one θ₀ (seed {cfg['seed']}), deterministic",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def render_two_param(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """(a, b) plane with the minima ab = y/x and the trajectories (full and zoomed on where they
    land); final gap ||a| − |b|| against h, the stable range h < 2/λ_max(θ0) apart from the
    unstable one, EGR as its one run."""
    plt, sns = setup()
    r = read_results(results_dir, TWO_PARAM)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.0))
    x, y, f = r["x"], r["y"], r["flattest"]
    pal = sns.color_palette("deep")
    h_st = r.get("stable_lr_max")
    styles = {"flow": (pal[2], "-", "plain flow"),
              "gd_small": (pal[2], "o", f"GD h={r['h_small']:g}"),
              "gd_moderate": (pal[3], "o-", f"GD h={r['h_moderate']:g}"),
              "modified_flow": (pal[0], "--", f"modified flow h={r['h_moderate']:g}"),
              "egr": (pal[4], "-.", f"EGR step {r['h_small']:g}, μ={r['egr']:g}")}
    if "gd_unstable" in r["paths"]:
        styles["gd_unstable"] = (pal[1], "o:", f"GD h={r['paths']['gd_unstable']['lr']:g} "
                                 "(> 2/λ_max(θ0))")
    stable_keys = [k for k in styles if k != "gd_unstable"]
    ends = np.array([[r["paths"][k]["final_a"], r["paths"][k]["final_b"]] for k in stable_keys])
    lo, hi = ends.min(0), ends.max(0)
    pad = 0.25 * (hi - lo).max()
    lim = 1.15 * max(r["a0"], r["b0"])
    a_min = min(min(r["paths"][k]["a"]) for k in styles)  # an unstable first step may cross a = 0
    a_lo = 0 if a_min >= 0 else a_min - 0.1 * lim
    views = (((a_lo, lim), (0, lim), "trajectories"),
             ((lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad),
              "where the stable runs land (zoom)"))
    for ax, (xl, yl, title) in zip(axes[:2], views):
        A, B = np.meshgrid(np.linspace(*xl, 200), np.linspace(*yl, 200))
        ax.contour(A, B, np.log10(0.5 * (y - A * B * x) ** 2 + 1e-4), levels=10, colors="0.85",
                   linewidths=0.6, linestyles="solid")
        a = np.linspace(max(xl[0], 1e-3), xl[1], 300)
        ax.plot(a, y / x / a, "k--", lw=1, label="minima ab = y/x")
        ax.plot([f], [f], "kx", ms=9, mew=2, label="flattest |a| = |b|")
        for k, (c, st, label) in styles.items():
            p = r["paths"][k]
            ax.plot(p["a"], p["b"], st, color=c, ms=2.5, lw=1.0 if k == "gd_unstable" else 1.3,
                    label=label)
            ax.plot([p["final_a"]], [p["final_b"]], "o", color=c, ms=7, mec="k")
        ax.plot([r["a0"]], [r["b0"]], "k*", ms=10)
        ax.set(xlim=xl, ylim=yl, xlabel="a", ylabel="b", title=title)
    axes[0].set_aspect("equal")
    axes[0].legend(fontsize=7, loc="lower right")
    ax = axes[2]
    g = r["gaps"]
    hs = np.array([row["lr"] for row in g])
    stable = np.array([row.get("stable", True) for row in g])
    if h_st is not None:
        ax.axvspan(h_st, hs.max() * 1.03, color=pal[3], alpha=0.08, lw=0)
        ax.axvline(h_st, color="k", ls=":", lw=1.2,
                   label=f"2/λ_max(θ0) = {h_st:.4f} (λ_max = {r['lambda_max_theta0']:.3f}, exact)")
    for key, c, mk, ls, label in (("gd_gap", pal[3], "o", "-", "GD"),
                                  ("modified_flow_gap", pal[0], "s", "--",
                                   "modified flow (same h)")):
        v = np.array(none_nan(row[key] for row in g), float)
        ax.plot(hs, v, ls, color=c, lw=1.2, label=label)
        ax.plot(hs[stable], v[stable], mk, color=c)
        ax.plot(hs[~stable], v[~stable], mk, color=c, mfc="white")
    ax.axhline(r["paths"]["flow"]["final_gap"], color=pal[2], ls="-", lw=1, label="plain flow")
    ax.plot([r["h_moderate"]], [r["paths"]["egr"]["final_gap"]], "*", color=pal[4], ms=13,
            mec="k", label=f"EGR, one run: step {r['h_small']:g}, μ = ({r['h_moderate']:g} − "
            f"{r['h_small']:g})/4, drawn at h = {r['h_moderate']:g}")
    if h_st is not None:
        ax.text(0.99, 0.5, "unstable at θ0:\nthe first steps\novershoot the valley\n(hollow markers)",
                transform=ax.transAxes, ha="right", va="center", fontsize=8, color=pal[3])
    ax.set(xlabel="step size h", ylabel=f"final ||a| − |b|| at t = {r['time']:g}",
           title="Stable h (left of 2/λ_max): IGR; beyond: instability")
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"E(a,b) = ½(y − abx)², x = {x:g}, y = {y:g}, from (a, b) = ({r['a0']:g}, "
                 f"{r['b0']:g}); deterministic (one θ0, float64)", fontsize=11)
    fig.tight_layout()
    return save(fig, out_path)


def render_sweep(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """R_IG = ‖∇L‖², a loss/time column, test loss and test accuracy against h, one line per width
    (mean over the seeds that did not diverge, band = min–max over them); top: at t = T, bottom:
    at the matched training loss. Dotted vertical lines: h where a run of that width diverged."""
    plt, sns = setup()
    r = read_results(results_dir, SWEEP)
    seeds = r.get("seeds", [r["config"]["seed"]])
    summary = r["summary"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.6), sharex=True)
    colors = dict(zip(r["widths"], sns.color_palette("crest", len(r["widths"]))))
    T, L = r["time"], r["target_loss"]
    rows_of_panels = (
        ("final", f"at t = {T:g}", (("grad_norm_sq", "R_IG = ‖∇L‖²", True),
                                    ("train_loss", "train loss", True),
                                    ("test_loss", "test loss", True),
                                    ("test_acc", "test accuracy", False))),
        ("at_loss", f"at train loss {L:g}", (("grad_norm_sq", "R_IG = ‖∇L‖²", True),
                                             ("t", "time t = k·h to reach it", False),
                                             ("test_loss", "test loss", True),
                                             ("test_acc", "test accuracy", False))))
    any_div = False
    for i, (view, vlabel, panels) in enumerate(rows_of_panels):
        for j, (key, label, log) in enumerate(panels):
            ax = axes[i, j]
            for w in r["widths"]:
                cells = [e for e in summary if e["width"] == w and e["view"] == view
                         and e.get(key) is not None]
                if cells:
                    h = np.array([e["lr"] for e in cells])
                    st = [e[key] for e in cells]
                    ax.fill_between(h, [v["min"] for v in st], [v["max"] for v in st],
                                    color=colors[w], alpha=0.22, lw=0)
                    ax.plot(h, [v["mean"] for v in st], "-", color=colors[w], label=f"width {w}")
                    full = np.array([e["n"] == e["seeds"] for e in cells])
                    m = np.array([v["mean"] for v in st])
                    ax.plot(h[full], m[full], "o", color=colors[w], ms=5)
                    ax.plot(h[~full], m[~full], "o", color=colors[w], ms=5, mfc="white")
            for k, w in enumerate(r["widths"]):  # dotted line per h, one × per width at the top
                for e in summary:
                    if e["width"] == w and e["view"] == "final" and e["diverged"]:
                        any_div = True
                        ax.axvline(e["lr"], color="0.35", ls=":", lw=1.4)
                        ax.plot([e["lr"]], [0.96 - 0.06 * k], "x", color=colors[w], ms=7, mew=2,
                                transform=ax.get_xaxis_transform(), clip_on=False)
            ax.set(xscale="log", yscale="log" if log else "linear", title=f"{label} {vlabel}")
            ax.set_xticks(r["lrs"], [f"{h:g}" for h in r["lrs"]], fontsize=8)
            ax.xaxis.set_minor_locator(plt.NullLocator())
            if i == 1:
                ax.set_xlabel("step size h")
    axes[0, 0].legend(fontsize=8)
    div = sorted({(e["width"], e["lr"], e["diverged"]) for e in summary if e["diverged"]})
    div_txt = ("dotted vertical lines, × in the width's colour: h where runs diverged (loss "
               "non-finite or above its start): "
               + ", ".join(f"width {w} h={h:g} ({k}/{len(seeds)})" for w, h, k in div)
               if any_div else "no run diverged")
    part = (" (hollow marker: not all seeds)" if any(0 < e["n"] < e["seeds"] for e in summary)
            else "")
    cfg = r["config"]
    ds = r["dataset"]
    fig.suptitle(f"Full-batch GD on {ds['name']} (n={ds['n_train']} drawn by the seed; fixed test "
                 f"n={ds['n_test']}: one example = {100 / ds['n_test']:.2g}%), {cfg['model']} "
                 f"{cfg['activation']}, {cfg['loss']}, {cfg['dtype']}; seeds "
                 f"{', '.join(map(str, seeds))}: line = mean, band = min–max over the seeds that did"
                 f" not diverge{part}\n{div_txt}", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)
