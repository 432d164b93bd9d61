"""Figures from traces (never re-training): seaborn, one consistent style, PNG + SVG.

Imported lazily by the CLI and figure scripts; the numerical core never imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

STYLE = {"context": "paper", "style": "whitegrid", "font_scale": 1.1}


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(**STYLE)
    return plt, sns


def save(fig, path: str | Path, svg: bool = True) -> list[Path]:
    """Write ``path`` (PNG) and, with ``svg``, the same figure as SVG beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    out = [path]
    if svg:
        out.append(path.with_suffix(".svg"))
        fig.savefig(out[-1], bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def traces_frame(traces: Sequence[dict]):
    """Long-form DataFrame of several traces, with a ``run`` label (optimizer, lr)."""
    import pandas as pd

    from .trace import to_dataframe

    frames = []
    for doc in traces:
        df = to_dataframe(doc)
        cfg = doc["config"]
        df["run"] = f"{cfg['optimizer']} (h={cfg['lr']:g})"
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


COMPARE_PANELS = (
    ("train_loss", "training loss L", True),
    ("test_acc", "test accuracy", False),
    ("grad_norm_sq", "‖∇L‖² (full batch)", True),
    ("dist_from_init", "‖θ − θ₀‖", False),
)


def compare_figure(traces: Sequence[dict], path: str | Path, svg: bool = False) -> list[Path]:
    """Training loss, test accuracy (or loss), ‖∇L‖² and distance from init against t = k·h."""
    plt, sns = _setup()
    df = traces_frame(traces)
    panels = [p for p in COMPARE_PANELS if (df["metric"] == p[0]).any()]
    if not (df["metric"] == "test_acc").any():
        panels.insert(1, ("test_loss", "test loss", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (metric, label, log) in zip(axes, panels):
        sub = df[df["metric"] == metric]
        sns.lineplot(data=sub, x="t", y="value", hue="run", ax=ax, legend=ax is axes[0])
        ax.set(xlabel="time t = k·h", ylabel=label, yscale="log" if log else "linear")
    fig.suptitle("Same θ₀, different dynamics")
    fig.tight_layout()
    return save(fig, path, svg)


def spectral_density_figure(nodes, weights, path, sigma: float | None = None,
                            svg: bool = False) -> tuple[list[Path], float]:
    """SLQ density φ(t) = (1/n_v)Σ τ_j N(t; θ_j, σ²), σ a standard deviation (default 1% of the
    node range), on a linear and a log scale; returns the files and the σ used."""
    import numpy as np

    from .curvature import slq_density

    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = float(sigma) if sigma else max(0.01 * (hi - lo), 1e-8)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000)
    phi = np.asarray(slq_density(nodes, weights, grid, sigma))
    plt, _ = _setup()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(grid, phi)
    axes[1].semilogy(grid, np.maximum(phi, 1e-12))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.set(xlabel="eigenvalue λ of H", ylabel=f"density φ(λ) ({scale})")
    fig.suptitle(f"Hessian spectral density (SLQ, Gaussian kernel σ = {sigma:.3g}, std)")
    fig.tight_layout()
    return save(fig, path, svg), sigma
