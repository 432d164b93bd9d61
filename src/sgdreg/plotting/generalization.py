"""The figure of the generalization study (``sgdreg.experiments.generalization``), from its
stored ``correlation.json`` only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..experiments.generalization import CORRELATION_FILE, FAMILIES
from .common import save, setup


def render_generalization(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Gallery renderer: the ranking in ``results_dir/correlation.json`` → PNG + SVG.

    Left: τ of each measure with the gap (bar, bootstrap CI) and Ψ (◆), coloured by family.
    Right: ψ_i per hyper-parameter.
    """
    path = Path(results_dir) / CORRELATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CORRELATION_FILE} in {results_dir}; run `sgdreg correlate` "
                                "or experiments/generalization_measures.py first")
    return ranking_figure(json.loads(path.read_text()), out_path)


def ranking_figure(doc: dict, out_path: str | Path) -> list[Path]:
    plt, sns = setup()
    rows = doc["ranking"]
    hps = doc["hyperparams"]
    names = [r["measure"] for r in rows]
    val = lambda v: math.nan if v is None else float(v)  # noqa: E731 (JSON null → NaN)
    tau = np.array([val(r["tau"]) for r in rows])
    lo = np.array([val(r["tau_ci"][0]) for r in rows])
    hi = np.array([val(r["tau_ci"][1]) for r in rows])
    psi = np.array([val(r["psi"]) for r in rows])
    colors = dict(zip(FAMILIES, sns.color_palette("tab10", len(FAMILIES))))
    y = np.arange(len(rows))
    height = 1.6 + 0.24 * len(rows)
    widths = [3.2, 0.55 * len(hps) + 0.6] if hps else [1]
    fig, axes = plt.subplots(1, len(widths), figsize=(5.2 + widths[-1] * 1.2 * bool(hps), height),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    ax = axes[0, 0]
    ax.barh(y, tau, color=[colors[r["family"]] for r in rows], alpha=0.85)
    ok = ~(np.isnan(lo) | np.isnan(hi))
    ax.errorbar(tau[ok], y[ok], xerr=np.abs(np.vstack([tau[ok] - lo[ok], hi[ok] - tau[ok]])),
                fmt="none", ecolor="0.2", elinewidth=0.8, capsize=2)
    ax.scatter(psi, y, marker="D", s=18, color="black", zorder=3, label="granulated Ψ")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set(yticks=y, yticklabels=names, xlim=(-1.05, 1.05), ylim=(len(rows) - 0.5, -0.5),
           xlabel=f"Kendall τ with {doc['gap']} ({100 * doc['level']:g}% bootstrap CI)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[f]) for f in FAMILIES
               if any(r["family"] == f for r in rows)]
    labels = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    handles.append(plt.Line2D([], [], marker="D", color="black", ls="none", markersize=4))
    labels.append("Ψ")
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=7,
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    if hps:
        grid = np.array([[val(r["psi_per_hp"].get(h)) for h in hps] for r in rows])
        sns.heatmap(grid, ax=axes[0, 1], cmap="vlag", vmin=-1, vmax=1, center=0, annot=True,
                    fmt=".2f", annot_kws={"fontsize": 6}, cbar=False,
                    xticklabels=hps, yticklabels=False)
        axes[0, 1].set(title="ψ per hyper-parameter", ylim=(len(rows), 0))
        axes[0, 1].tick_params(axis="x", rotation=45 if len(hps) > 2 else 0)
    target = doc.get("target_loss")
    fig.suptitle(f"Measures vs generalization gap: {doc['num_kept']} of {doc['num_runs']} runs"
                 + (f" at train loss ≤ {target:g}" if target else ""), fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def ranking_table(doc: dict, top: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the ranking for a terminal table: τ and Ψ with their CIs, ψ_i."""
    hps = doc["hyperparams"]
    cols = ["measure", f"τ [{100 * doc['level']:g}% CI]", "Ψ [CI]", *(f"ψ {h}" for h in hps),
            "runs"]
    rows = []
    for r in doc["ranking"][:top]:
        rows.append([r["measure"], _with_ci(r["tau"], r["tau_ci"]), _with_ci(r["psi"], r["psi_ci"]),
                     *(_fmt(r["psi_per_hp"].get(h)) for h in hps), r["n_runs"]])
    return cols, rows


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _with_ci(v, ci) -> str:
    return f"{_fmt(v)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
