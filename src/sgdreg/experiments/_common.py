"""Helpers shared by the experiment modules (not public)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import ConfigError
from ..results import sig

Progress = Callable[[str], None]


def curve(trace: dict, keys=("train_loss", "train_acc", "test_acc")) -> dict:
    """The logged ``step`` and ``keys`` of a trace, rounded to 5 significant digits."""
    m = trace["metrics"]
    return {k: [sig(v, 5) for v in m[k]] for k in ("step", *keys) if k in m}


def trace_path(trace_dir, name: str) -> Path | None:
    """``trace_dir/<name>.json``, or None (no trace written) without a ``trace_dir``."""
    return None if trace_dir is None else Path(trace_dir) / f"{name}.json"


def say(progress: Progress | None, text: str) -> None:
    if progress:
        progress(text)


def check_noise(noises: Sequence[float], option: str = "--noise") -> None:
    for q in noises:
        if not 0 <= q < 1:
            raise ConfigError(f"{option} must be in [0, 1), got {q:g}")
