"""The figure gallery: every figure in figures/ is rendered from stored results, never by
re-training (``sgdreg figures``).

Each entry maps a figure name to ``"module:function"``; the function has the signature
``render(results_dir: Path, out_path: Path) -> list[Path]`` and reads only what the experiment
stored in ``results_dir`` (= ``figures/data/<name>/`` for the gallery), writing PNG (+ SVG).
"""

from __future__ import annotations

import importlib
from pathlib import Path

GALLERY: dict[str, str] = {
    "igr_backward_error": "sgdreg.plotting.igr:render_backward_error",
    "igr_two_param": "sgdreg.plotting.igr:render_two_param",
    "igr_sweep": "sgdreg.plotting.igr:render_sweep",
    "zhang_randomization": "sgdreg.plotting.zhang:render_randomization",
    "zhang_expressivity": "sgdreg.plotting.zhang:render_expressivity",
    "min_norm_kernel": "sgdreg.plotting.kernel:render_kernel",
    "double_descent_rff": "sgdreg.plotting.double_descent:render_double_descent",
    "double_descent_width": "sgdreg.plotting.double_descent:render_double_descent",
    "eos": "sgdreg.plotting.eos:render_eos",
    "generalization_measures": "sgdreg.plotting.generalization:render_generalization",
    "label_noise": "sgdreg.plotting.label_noise:render_label_noise",
    "adam_eos": "sgdreg.plotting.adam_sharpness:render_adam_sharpness",
    "sde_svag": "sgdreg.plotting.sde:render_sde_svag",
    "central_flow": "sgdreg.plotting.central_flow:render_central_flow",
}


def render(name: str, data_root: Path, out_root: Path) -> list[Path]:
    """Render figure ``name`` from ``data_root/name`` into ``out_root/name.png``."""
    module, func = GALLERY[name].split(":")
    fn = getattr(importlib.import_module(module), func)
    src = Path(data_root) / name
    if not src.is_dir():
        raise FileNotFoundError(f"no stored results for figure {name!r} in {src}; run its "
                                "experiment first (see experiments/)")
    return fn(src, Path(out_root) / f"{name}.png")
