"""The SDE-of-SGD / SVAG figure (``sgdreg.experiments.sde``), from the stored
``sde_svag.json`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..experiments.sde import read_sde_svag
from .common import save, setup

_LABELS = {"sgd": "SGD (epoch reshuffle)", "sde": "SDE (Euler–Maruyama)", "gd": "GD"}


def _label(name: str) -> str:
    if name.startswith("svag_l"):
        ell = name[len("svag_l"):]
        return f"SVAG ℓ={ell}" + (" (= i.i.d.-batch SGD)" if ell == "1" else "")
    return _LABELS.get(name, name)


def render_sde_svag(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Six panels. Network (top): training loss and ‖θ − θ0‖ (mean ± 1 std over paths) against
    t = k·h for SGD, SVAG_ℓ and the SDE (GD dashed), and each method's mean loss minus the SDE's
    (band ± 2 s.e. of that difference). Quadratic (bottom): SVAG's weak error against ℓ (exact
    and Monte Carlo ± 2 s.e.) with the fitted order, the SDE's stationary covariance (Monte
    Carlo) against the Lyapunov solution, and the final losses per path."""
    plt, sns = setup()
    r = read_sde_svag(results_dir)
    net, q = r["network"], r["quadratic"]
    t = np.asarray(net["t"])
    methods = net["methods"]
    ref = net.get("reference", "sde")  # the run the losses are compared with
    names = [m for m in methods if m != "gd"]
    colors = dict(zip(names, sns.color_palette("viridis", len(names))))
    colors["sde"] = (0.85, 0.2, 0.2)
    colors["sgd"] = (0.93, 0.55, 0.1)
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    paths = net["paths"]
    for name in names:
        m, c = methods[name], colors[name]
        for ax, key in ((axes[0, 0], "train_loss"), (axes[0, 2], "distance")):
            mu, sd = np.asarray(m[key]["mean"]), np.asarray(m[key]["std"])
            ax.plot(t, mu, color=c, lw=1.6 if name == "sde" else 1.1, label=_label(name))
            ax.fill_between(t, mu - sd, mu + sd, color=c, alpha=0.15, lw=0)
        mu = np.asarray(m["train_loss"]["mean"]) - np.asarray(methods[ref]["train_loss"]["mean"])
        se = np.sqrt((np.asarray(m["train_loss"]["std"]) ** 2
                      + np.asarray(methods[ref]["train_loss"]["std"]) ** 2) / paths)
        if name != ref:
            axes[0, 1].plot(t, mu, color=c, lw=1.2, label=_label(name))
            axes[0, 1].fill_between(t, mu - 2 * se, mu + 2 * se, color=c, alpha=0.15, lw=0)
    if "gd" in methods:
        for ax, key in ((axes[0, 0], "train_loss"), (axes[0, 2], "distance")):
            ax.plot(t, methods["gd"][key]["mean"], color="k", ls="--", lw=1, label="GD")
        gd_diff = (np.asarray(methods["gd"]["train_loss"]["mean"])
                   - np.asarray(methods[ref]["train_loss"]["mean"]))
        axes[0, 1].plot(t, gd_diff, color="k", ls="--", lw=1, label="GD")
    axes[0, 1].axhline(0, color=colors[ref], lw=1)
    ds = net["dataset"]
    h, b = net["lr"], net["batch_size"]
    axes[0, 0].set(yscale="log", xlabel="t = k·h", ylabel="training loss L (full batch)",
                   title=f"{net.get('model', 'mlp')} on {ds.get('n_train', '?')} "
                         f"{ds.get('name', '')}: h={h:g}, B={b}")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].set(xlabel="t = k·h", ylabel=f"mean loss − {_label(ref)} mean loss",
                   title=f"Loss relative to {_label(ref)} (bands ± 2 s.e.)")
    axes[0, 1].legend(fontsize=8)
    axes[0, 2].set(xlabel="t = k·h", ylabel="‖θ − θ0‖", title="Distance from θ0")
    axes[0, 2].legend(fontsize=8)

    w = q["weak"]
    ax = axes[1, 0]
    ax.loglog(w["exact_ells"], w["exact_error"], "o-", color="C0", ms=4,
              label=f"exact moments: order {w['exact_order']:.3f}")
    mc = np.abs(w["mc_error"])
    ax.errorbar(w["ells"], mc, yerr=2 * np.asarray(w["mc_se"]), fmt="s", color="C3", ms=5,
                capsize=3, label=f"SVAG dynamics, {w['mc_paths']} paths: order "
                                 + (f"{w['mc_order']:.2f} ± {w.get('mc_order_se', float('nan')):.2f}"
                                    if w["mc_order"] else "n/a"))
    e0 = w["exact_ells"]
    ax.loglog(e0, w["exact_error"][0] * np.asarray(e0, float) ** -1.0, ":", color="gray",
              label="slope −1 (order 1 in 1/ℓ)")
    ax.set(xlabel="amplification ℓ", ylabel="|E‖θ_T‖²_SVAG − E‖θ_T‖²_SDE|",
           title=f"SVAG → SDE weak error (quadratic, T={w['t']:g}, h={w['h']:g}, B={w['batch_size']})")
    ax.legend(fontsize=8)

    st = q["stationary"]
    ax = axes[1, 1]
    lyap, emp = np.asarray(st["lyapunov"]), np.asarray(st["monte_carlo"])
    iu = np.triu_indices(len(lyap))
    se = np.sqrt((np.outer(np.diag(lyap), np.diag(lyap)) + lyap ** 2) / st["paths"])
    ax.errorbar(lyap[iu], emp[iu], yerr=2 * se[iu], fmt="o", color="C2", capsize=3)
    lo, hi = min(lyap.min(), emp.min()), max(lyap.max(), emp.max())
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    ax.set(xlabel="Lyapunov C_jk (AC + CA = hΣ_B)", ylabel="SDE Monte Carlo C_jk (± 2 s.e.)",
           title=f"Stationary covariance: rel. error {st['relative_error']:.3f} "
                 f"(MC s.e. {st['relative_error_mc_se']:.3f})")
    ax.text(0.04, 0.96, f"{st['paths']} paths at t={st['t']:g}, h={st['h']:g}, "
                        f"dt={st['dt']:g}\nEuler–Maruyama bias {st['em_bias_relative']:.3f}",
            transform=ax.transAxes, va="top", fontsize=8)

    ax = axes[1, 2]
    for i, name in enumerate(names):
        f = np.asarray(methods[name]["final_loss"])
        ax.scatter(np.full(len(f), i) + np.linspace(-0.15, 0.15, len(f)), f, color=colors[name],
                   s=14)
        ax.errorbar(i + 0.3, f.mean(), yerr=f.std(ddof=1), fmt="_", color="k", capsize=4)
    if "gd" in methods:
        ax.axhline(methods["gd"]["final_loss"][0], color="k", ls="--", lw=1, label="GD")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), [_label(n).split(" (")[0] for n in names], fontsize=8)
    ax.set(ylabel=f"training loss at t={t[-1]:g}", title="Final loss per path (bar: mean ± 1 std)")
    fig.suptitle(f"SDE of SGD vs SVAG vs SGD. Network: {paths} paths (data seeds) per method from "
                 "one θ0, bands mean ± 1 std over paths; quadratic: Monte Carlo ± 2 s.e.",
                 fontsize=11)
    return save(fig, out_path)
