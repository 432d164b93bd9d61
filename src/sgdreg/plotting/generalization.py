"""The figure of the generalization study (``sgdreg.experiments.generalization``), from its
stored ``correlation.json`` only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..experiments.generalization import CORRELATION_FILE, FAMILIES
from ..jsonio import load_json, require_fields
from .common import save, setup


def render_generalization(results_dir: str | Path, out_path: str | Path) -> list[Path]:
    """Gallery renderer: the ranking in ``results_dir/correlation.json`` → PNG + SVG.

    (a) Kendall τ of each measure with the gap over all runs (bar, coloured by family; whiskers:
    percentile-bootstrap CI over runs); (b) the granulated Ψ with its CI; (c) ψ_i per
    hyper-parameter i, annotated. Rows in the stored order (by |τ|, largest first).
    """
    path = Path(results_dir) / CORRELATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CORRELATION_FILE} in {results_dir}; run `sgdreg correlate` "
                                "or experiments/generalization_measures.py first")
    doc = require_fields(load_json(path, "correlation results"),
                         {"ranking": "list", "hyperparams": "list", "gap": "str",
                          "level": "number"}, path, "correlation results",
                         required=("ranking", "hyperparams", "gap", "level"))
    return ranking_figure(doc, out_path)


def ranking_figure(doc: dict, out_path: str | Path) -> list[Path]:
    plt, sns = setup()
    rows = doc["ranking"]
    hps = doc["hyperparams"]
    names = [r["measure"] for r in rows]
    val = lambda v: math.nan if v is None else float(v)  # noqa: E731 (JSON null → NaN)
    ci = lambda r, key: r.get(key) or [None, None]  # noqa: E731 (older files: no Ψ CI)
    tau = np.array([val(r["tau"]) for r in rows])
    psi = np.array([val(r["psi"]) for r in rows])
    colors = dict(zip(FAMILIES, sns.color_palette("tab10", len(FAMILIES))))
    y = np.arange(len(rows))
    level = f"{100 * doc['level']:g}%"
    resamples = f", {doc['num_resamples']} resamples" if doc.get("num_resamples") else ""
    widths = [3.0, 2.0] + ([0.75 * len(hps) + 0.3] if hps else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(4.6 + 2.3 * sum(widths[1:]),
                                                      2.2 + 0.3 * len(rows)),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    ax, ax_psi = axes[0, 0], axes[0, 1]
    ax.barh(y, tau, color=[colors.get(r["family"], "0.5") for r in rows], alpha=0.85, height=0.7)
    _whiskers(ax, tau, rows, "tau_ci", val)
    _whiskers(ax_psi, psi, [{"psi_ci": ci(r, "psi_ci")} for r in rows], "psi_ci", val)
    ax_psi.scatter(psi, y, marker="D", s=22, color="black", zorder=3)
    for a in (ax, ax_psi):
        a.axvline(0, color="0.3", lw=0.8)
        a.set(xlim=(-1.05, 1.05), ylim=(len(rows) - 0.5, -0.5), yticks=y)
        a.xaxis.set_ticks_position("both")
        a.tick_params(axis="x", labeltop=True, labelsize=9)
    ax.set_yticklabels(names, fontsize=9)
    ax_psi.set_yticklabels([])
    ax.set_title(f"(a) Kendall τ with {doc['gap']}, all runs\n"
                 f"whiskers: {level} bootstrap CI over runs{resamples}", fontsize=10)
    ax.set_xlabel("τ  (measures sorted by |τ|)")
    ax_psi.set_title(f"(b) granulated Ψ = mean of ψ_i\nwhiskers: {level} bootstrap CI", fontsize=10)
    ax_psi.set_xlabel("Ψ")
    families = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[f]) for f in families]
    fig.legend(handles, families, loc="upper center", ncol=len(families), fontsize=9,
               title="family of measure", title_fontsize=9, bbox_to_anchor=(0.5, 0.0),
               frameon=False)
    if hps:
        hm = axes[0, 2]
        grid = np.array([[val(r["psi_per_hp"].get(h)) for h in hps] for r in rows])
        values = doc.get("hyperparam_values", {})
        labels = [h + (f"\n{' / '.join(_sorted_values(values[h]))}" if values.get(h) else "")
                  for h in hps]
        sns.heatmap(grid, ax=hm, cmap="vlag", vmin=-1, vmax=1, center=0, annot=True,
                    fmt=".2f", annot_kws={"fontsize": 8}, linewidths=0.6, linecolor="white",
                    cbar=False, xticklabels=labels, yticklabels=names)
        hm.set(ylim=(len(rows), 0))
        hm.xaxis.tick_top()
        hm.yaxis.tick_right()
        hm.tick_params(axis="x", labelsize=8, rotation=0, length=0)
        hm.tick_params(axis="y", labelsize=8, rotation=0, length=0)
        hm.set_title("(c) ψ_i per hyper-parameter i: mean τ within groups of\n"
                     "runs differing only in i (other settings and seed equal)", fontsize=10)
    target = doc.get("target_loss")
    seeds = doc.get("seeds")
    fig.suptitle(f"Measures vs generalization gap ({doc['gap']}): {doc['num_kept']} of "
                 f"{doc['num_runs']} runs" + (f" at train loss ≤ {target:g}" if target else "")
                 + (f", seeds {', '.join(map(str, seeds))}" if seeds else ""), fontsize=11, y=1.0)
    fig.tight_layout(w_pad=0.6)
    return save(fig, out_path)


def _sorted_values(values) -> list[str]:
    """Hyper-parameter values as stored (strings), in numeric order where they are numbers."""
    def key(v):
        try:
            return (0, float(v), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))
    return [str(v) for v in sorted(values, key=key)]


def _whiskers(ax, centre: np.ndarray, rows: list[dict], key: str, val) -> None:
    lo = np.array([val(r[key][0]) for r in rows])
    hi = np.array([val(r[key][1]) for r in rows])
    ok = ~(np.isnan(lo) | np.isnan(hi) | np.isnan(centre))
    y = np.arange(len(rows))
    ax.errorbar(centre[ok], y[ok], xerr=np.abs(np.vstack([centre[ok] - lo[ok], hi[ok] - centre[ok]])),
                fmt="none", ecolor="0.2", elinewidth=0.9, capsize=2)


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
