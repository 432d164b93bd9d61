"""The one plotting style and the one figure writer (PNG, + SVG beside it)."""

from __future__ import annotations

import math
from pathlib import Path

STYLE = {"context": "paper", "style": "whitegrid", "font_scale": 1.1}
BAND = "sd"  # seeds as ±1 s.d. bands (seaborn errorbar)


def setup():
    """(pyplot, seaborn) with the Agg backend and the sgdreg theme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(**STYLE)
    return plt, sns


LIGHT_STYLE = ("seaborn-v0_8-whitegrid", "seaborn-v0_8-paper", "seaborn-v0_8-deep")


def setup_light():
    """pyplot with the Agg backend and the sgdreg theme from matplotlib's own copies of the
    seaborn styles (whitegrid, paper, deep palette): the same look without importing seaborn
    (≈ 2 s with SciPy and pandas), for figures that use only pyplot (``sgdreg compare``)."""
    _import_pyplot()
    import matplotlib
    import matplotlib.pyplot as plt

    plt.style.use(list(LIGHT_STYLE))
    plt.rcParams["font.size"] = matplotlib.rcParamsDefault["font.size"] * STYLE["font_scale"]
    return plt


def _import_pyplot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def preload() -> None:
    """Import matplotlib's pyplot (Agg) in a background thread, so a command that plots at its
    end does not wait for it after training. Only the import: the style is set by the figure's
    own ``setup_light`` (Python's import lock makes a concurrent import wait, not repeat)."""
    import threading

    threading.Thread(target=_import_pyplot, name="sgdreg-preload-plotting", daemon=True).start()


def save(fig, path: str | Path, svg: bool = True, tight: bool = True) -> list[Path]:
    """Write ``path`` (PNG) and, with ``svg``, the same figure as SVG beside it; close ``fig``.
    ``tight=False`` for figures laid out by matplotlib's constrained layout (one layout pass
    instead of two: faster)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bbox = "tight" if tight else None
    fig.savefig(path, dpi=130, bbox_inches=bbox)
    out = [path]
    if svg:
        out.append(path.with_suffix(".svg"))
        fig.savefig(out[-1], bbox_inches=bbox)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def none_nan(values) -> list[float]:
    """Stored nulls (non-finite or missing values) as NaN, so matplotlib leaves gaps."""
    return [math.nan if v is None else v for v in values]
