"""The grid of a sweep: ``[base]`` fields shared by every run and ``[grid]`` lists whose
Cartesian product (last key fastest) gives the runs; see ``sgdreg.sweep`` for the file format."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, validate

SHORT = {"seed": "s", "lr": "lr", "batch_size": "b", "momentum": "m", "corruption": "p",
         "width": "w", "depth": "d", "optimizer": "", "egr": "egr", "n_train": "n"}

@dataclass(frozen=True)
class Grid:
    """A sweep definition: shared ``base`` fields and ``axes`` (field → values, in order)."""

    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]

    def runs(self) -> list[tuple[dict[str, Any], RunConfig]]:
        """(grid values, config) per run: the Cartesian product, last axis fastest."""
        out = []
        for values in itertools.product(*self.axes.values()):
            over = dict(zip(self.axes, values))
            out.append((over, RunConfig(**{**self.base, **over})))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "grid": self.axes}


_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}


def _coerce(table: str, key: str, value: Any) -> Any:
    if key not in _FIELD_TYPES:
        raise ConfigError(f"[{table}]: unknown field {key!r}; RunConfig fields: "
                          f"{', '.join(_FIELD_TYPES)}")
    kind = _FIELD_TYPES[key].split(" |")[0]
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str)}.get(kind, True)
    if not ok:
        raise ConfigError(f"[{table}] {key}: expected {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def parse_grid(doc: Mapping[str, Any], name: str = "sweep") -> Grid:
    """A ``Grid`` from a parsed TOML document (see the module docstring); one-line ConfigError
    for unknown tables or fields, wrong types, empty lists and invalid runs."""
    unknown = set(doc) - {"name", "base", "grid"}
    if unknown:
        raise ConfigError(f"sweep file: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                          "allowed: name, [base], [grid]")
    base = {k: _coerce("base", k, v) for k, v in dict(doc.get("base", {})).items()}
    axes: dict[str, list] = {}
    for k, v in dict(doc.get("grid", {})).items():
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if not values:
            raise ConfigError(f"[grid] {k}: give at least one value")
        if k in base:
            raise ConfigError(f"{k!r} is in both [base] and [grid]; keep it in one")
        axes[k] = [_coerce("grid", k, x) for x in values]
        dup = next((x for j, x in enumerate(axes[k]) if x in axes[k][:j]), None)
        if dup is not None:  # two runs of one configuration
            raise ConfigError(f"[grid] {k}: {dup!r} is given twice; give each value once")
    grid = Grid(str(doc.get("name", name)), base, axes)
    for i, (over, cfg) in enumerate(grid.runs()):
        if cfg.corruption > 0 and cfg.randomization == "none":
            raise ConfigError("corruption has no effect with randomization = \"none\"; set "
                              "randomization = \"label-corruption\" in [base]")
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"grid run {i} ({label(over)[:60]}): {e}") from None
    return grid


def load_grid(path: str | os.PathLike) -> Grid:
    """Read a sweep TOML file (``tomllib``; ``tomli`` before Python 3.11)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file at {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    return parse_grid(doc, name=path.stem)


def as_grid(grid: Grid | Mapping | str | os.PathLike | Sequence[RunConfig]) -> Grid:
    """Accept a Grid, a parsed TOML mapping, a TOML path or an explicit list of configs."""
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, (str, os.PathLike)):
        return load_grid(grid)
    if isinstance(grid, Mapping):
        return parse_grid(grid)
    cfgs = list(grid)
    if not cfgs or not all(isinstance(c, RunConfig) for c in cfgs):
        raise ConfigError("a sweep needs a grid file, a grid mapping or a list of RunConfig")
    return _ListGrid("sweep", {}, {}, tuple(cfgs))


@dataclass(frozen=True)
class _ListGrid(Grid):
    """An explicit list of configs (Python API); grid values are the fields that vary."""

    cfgs: tuple[RunConfig, ...] = ()

    def runs(self):
        dicts = [c.to_dict() for c in self.cfgs]
        vary = [k for k in dicts[0] if len({repr(d[k]) for d in dicts}) > 1]
        return [({k: d[k] for k in vary}, c) for d, c in zip(dicts, self.cfgs)]

    def to_dict(self):
        return {"name": self.name, "configs": [c.to_dict() for c in self.cfgs]}


def label(over: Mapping[str, Any]) -> str:
    """``s1_lr0.1_m0.9``: the grid values, safe as a file name."""
    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    text = "_".join(f"{SHORT.get(k, k)}{fmt(v)}" for k, v in over.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", text)

