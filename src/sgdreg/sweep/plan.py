"""Planning a sweep: expand the grid, load each distinct dataset once, group runs that share
one compiled program (static structure and data shapes)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, RunConfig, validate
from ..data import Dataset
from ..trace import to_json_value
from .grid import Grid, as_grid, label

PER_RUN_FIELDS = ("seed", "lr", "momentum", "egr", "randomization", "corruption", "label_noise")


@dataclass
class Run:
    index: int
    run_id: str
    cfg: RunConfig
    overrides: dict[str, Any]
    data_key: tuple
    group: int = -1

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        return to_json_value(self.cfg.to_dict())


@dataclass
class Group:
    """Runs compiled together: one vmapped program (flows too)."""

    id: int
    kind: str
    runs: list[int]
    shared_data: bool = True
    #: runs in this group of the whole grid (a shard holds part of it); the default block, and
    #: so every run's numbers, follow the whole group's size (``sgdreg.sweep.shard``)
    full_size: int | None = None

    @property
    def name(self) -> str:
        return f"group-{self.id:03d}"


@dataclass
class Plan:
    grid: Grid
    runs: list[Run]
    groups: list[Group]
    datasets: dict[tuple, Dataset]


def data_key(cfg: RunConfig) -> tuple:
    """What determines a run's data arrays: the source fields, the randomization, and the seed
    where it matters (synthetic tasks and randomized data are drawn from ``cfg.seed``)."""
    from ..datasets import SYNTHETIC

    randomized = cfg.randomization != "none"
    seeded = randomized or cfg.dataset in SYNTHETIC
    return (cfg.dataset, cfg.data_dir, cfg.preprocess, cfg.n_train, cfg.n_test,
            cfg.randomization, cfg.corruption if randomized else None,
            cfg.seed if seeded else None, cfg.crop)


def static_key(cfg: RunConfig, ds: Dataset) -> tuple:
    """Everything that changes the compiled program: config fields other than the per-run ones,
    whether EGR and label noise are on, and the data's shapes."""
    d = cfg.to_dict()
    for k in PER_RUN_FIELDS + ("data_dir", "preprocess"):
        d.pop(k)
    d["use_egr"] = cfg.egr > 0
    d["use_label_noise"] = cfg.label_noise > 0
    if cfg.full_batch:
        d.pop("batch_size")
    if not cfg.is_flow:
        d.pop("rtol"), d.pop("atol")
    shapes = (ds.x_train.shape, ds.y_train.shape, ds.x_test.shape, ds.y_test.shape,
              ds.num_classes, str(ds.x_train.dtype))
    return tuple(sorted(d.items())) + (shapes,)


RUN_LABEL_MAX = 80  # characters of the grid-value label in a run id


def sweep_run_id(i: int, over: dict[str, Any]) -> str:
    """``r<i:04d>_<label>``: unique by the run's index, bounded (a grid value of any length
    still gives a valid file name): a label longer than ``RUN_LABEL_MAX`` is cut and 8 hex
    digits of the sha256 of the run's grid values (keys sorted) appended."""
    from ..training import bounded_id

    return f"r{i:04d}_{bounded_id(label(over), to_json_value(over), RUN_LABEL_MAX)}"


def plan_sweep(grid: Grid | Mapping | str | os.PathLike | Sequence[RunConfig] | Plan,
               device_budget: int | None = None) -> Plan:
    """Expand the grid, load each distinct dataset once, validate and group the runs.

    ``device_budget`` (bytes): ``training.load_data``'s (MNIST/CIFAR-10 memory-mapped, checked
    against one chunk); a group whose data exceed it streams them from the host, which needs
    one dataset shared by the group (ConfigError otherwise: runs that draw their own data)."""
    from ..training import load_data, streamed

    if isinstance(grid, Plan):  # planned already (the CLI plans before it prints)
        return grid

    grid = as_grid(grid)
    runs, datasets = [], {}
    for i, (over, cfg) in enumerate(grid.runs()):
        key = data_key(cfg)
        if key not in datasets:
            datasets[key] = load_data(cfg, device_budget)
        try:
            validate(cfg, datasets[key].n_train, input_shape=datasets[key].input_shape)
        except ConfigError as e:
            raise ConfigError(f"grid run {i} ({label(over)}): {e}") from None
        runs.append(Run(i, sweep_run_id(i, over), cfg, to_json_value(over), key))
    groups: list[Group] = []
    by_key: dict[tuple, Group] = {}
    for r in runs:
        k = static_key(r.cfg, datasets[r.data_key])
        if k not in by_key:
            by_key[k] = Group(len(groups), "vmap", [])
            groups.append(by_key[k])
        g = by_key[k]
        g.runs.append(r.index)
        r.group = g.id
    for g in groups:
        g.shared_data = len({runs[i].data_key for i in g.runs}) == 1
        r0 = runs[g.runs[0]]
        if not g.shared_data and device_budget is not None and streamed(
                datasets[r0.data_key], r0.cfg.dtype, r0.cfg.eval_chunk):
            raise ConfigError(f"device_budget: the runs of grid run {r0.index}'s group draw "
                              "their own data (a randomization or synthetic task per seed), "
                              "which a sweep cannot stream; raise the budget above the data "
                              "or sweep the seeds in separate sweeps")
    return Plan(grid, runs, groups, datasets)
