"""Figures of ``sgdreg compare`` (several traces from one θ0) and ``sgdreg hessian`` (the SLQ
spectral density), from traces and stored estimates only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .common import save, setup


def traces_frame(traces: Sequence[dict]):
    """Long-form DataFrame of several traces, with a ``run`` label (optimizer, lr)."""
    import pandas as pd

    from ..trace import to_dataframe

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
    plt, sns = setup()
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
