"""Sweeps: a grid of runs vmapped into one compiled program per group, sharded over devices,
checkpointed every chunk and resumable after a kill at any point.

Grid file (TOML, read with ``tomllib``)::

    name = "digits-lr-seed"          # optional label (default: the file's stem)

    [base]                           # RunConfig fields shared by every run
    dataset = "digits"
    optimizer = "sgd"
    steps = 300
    log_every = 30

    [grid]                           # RunConfig fields with a list of values each; the runs are
    seed = [0, 1, 2, 3]              # the Cartesian product, in file order (last key fastest)
    lr = [0.01, 0.05, 0.2]
    momentum = [0.0, 0.9]            # (needs optimizer = "momentum" to matter)

Any ``RunConfig`` field may appear in either table (``[grid]`` scalars count as one value; a field
may not be in both). ``corruption`` needs ``randomization`` set to a label kind.

Execution. Runs are grouped by static structure: everything except ``seed``, ``lr``,
``momentum``, ``egr`` (its value; whether μ > 0 is static), ``randomization`` and
``corruption`` (which change the data's values but not its shapes) must agree within a group.
A group is one compiled program (``sweep_chunk``, compiled once per group shape): a loop of
``dynamics.train_step`` + ``probes.cheap_metrics``, ``vmap``ped over blocks of runs: θ0 from each
run's seed (``training.build``), ``Hyper`` and data key per run. Label corruption and
seed-dependent (synthetic) data are vmapped as per-run data arrays when the group's runs differ
in data (memory: one dataset copy per run); otherwise the data are shared (one copy,
broadcast). Optimizer, batch size, width and dataset split groups; so do steps and log_every
(same compiled program, different schedule). Flows (``flow``, ``modified-flow``) are not
vmapped: each runs alone through ``training.train`` (resumed per run: a finished run is kept,
an unfinished one restarts).

A sweep run gives the trace ``training.train`` gives for its config alone, up to float
reassociation under ``vmap`` (tested). A run that goes non-finite is frozen by
``TrainState.diverged_at`` and marked ``diverged`` at its step; no value crosses between runs,
so it cannot change any other run (tested bit for bit).

Devices. The run axis is sharded over the chosen devices (``Mesh`` with axis ``"runs"``,
``NamedSharding(PartitionSpec("runs"))``, ``shard_map``); each device loops over its blocks of
``block`` runs (default min(8, runs in the group)). The run count is padded to whole blocks on
every device (a multiple of the device count) with copies of the last run, discarded. A run's
arithmetic depends on its block size and on whether the data are shared, never on the device
count or the other runs: 1 and n devices give bit-identical traces. Shared data are
replicated. Multi-host: call
``jax.distributed.initialize()`` first (``run_sweep(..., distributed=True)`` or
``sgdreg sweep --distributed``, configured by JAX's usual environment/cluster detection); every
process builds the same inputs, the mesh spans all global devices, results are gathered with
``multihost_utils.process_allgather`` and only process 0 writes files. ``out_dir`` must then be
on a filesystem all processes share (they read checkpoints on resume).

Output directory::

    sweep.json                  index: grid, groups, runs (config, status, trace path, summary)
    summary.csv                 one row per run: grid values, status, final metrics
    traces/<run_id>.json        one trace per run (trace schema, ``sgdreg trace validate``)
    checkpoints/group-NNN.json  committed progress of a group (step, chunk, status per run)
    checkpoints/group-NNN.rows.jsonl   its trace rows, one line per chunk (append-only)
    checkpoints/group-NNN.cKKKKK.eqx   its stacked TrainState after chunk KKKKK (latest only;
                                removed when the group finishes)
    models/<run_id>.eqx         final models (``save_models=True``; ``checkpoint.load_model``)

Resume. After every chunk: the chunk's rows appended past the committed length → state file
(``eqx.tree_serialise_leaves``, keys as key data, atomic) → group JSON naming both (atomic: the
commit point) → older state files removed. Traces, index and table are views of the commits,
rewritten atomically when a group finishes and otherwise at most every ``VIEW_EVERY_S``.
``resume=True`` reloads each group's last commit and continues; finished groups are kept as
they are, so a finished run is never lost or re-run; a group with no commit restarts. A
resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import dynamics as dyn
from .checkpoint import CheckpointError, load_tree, save_model, save_tree
from .config import ConfigError, RunConfig, validate
from .data import Dataset
from .models import layer_names, num_params
from .probes import cheap_metrics
from .trace import TraceWriter, atomic_write_text, device_info, to_json_value, versions

INDEX_SCHEMA = "sgdreg.sweep/1"
GROUP_SCHEMA = "sgdreg.sweep-group/1"
TRACE_COUNTS: Counter = Counter()
DEFAULT_BLOCK = 8
VIEW_EVERY_S = 5.0  # traces and index are rewritten at most this often (and at the end)
PER_RUN_FIELDS = ("seed", "lr", "momentum", "egr", "randomization", "corruption")
SHORT = {"seed": "s", "lr": "lr", "batch_size": "b", "momentum": "m", "corruption": "p",
         "width": "w", "depth": "d", "optimizer": "", "egr": "egr", "n_train": "n"}
SUMMARY_COLUMNS = ("train_loss", "test_loss", "train_acc", "test_acc", "gen_gap", "weight_norm",
                   "steps_to_fit")
ProgressFn = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------- the grid


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
    grid = Grid(str(doc.get("name", name)), base, axes)
    for i, (over, cfg) in enumerate(grid.runs()):
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"grid run {i} ({_label(over)}): {e}") from None
        if cfg.corruption > 0 and cfg.randomization == "none":
            raise ConfigError("corruption has no effect with randomization = \"none\"; set "
                              "randomization = \"label-corruption\" in [base]")
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


def _label(over: Mapping[str, Any]) -> str:
    """``s1_lr0.1_m0.9``: the grid values, safe as a file name."""
    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    text = "_".join(f"{SHORT.get(k, k)}{fmt(v)}" for k, v in over.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", text)


# ---------------------------------------------------------------- planning


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
    """Runs compiled together (``kind="vmap"``) or a flow run alone (``"sequential"``)."""

    id: int
    kind: str
    runs: list[int]
    shared_data: bool = True

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
    from .datasets import SYNTHETIC

    randomized = cfg.randomization != "none"
    seeded = randomized or cfg.dataset in SYNTHETIC
    return (cfg.dataset, cfg.data_dir, cfg.preprocess, cfg.n_train, cfg.n_test,
            cfg.randomization, cfg.corruption if randomized else None,
            cfg.seed if seeded else None)


def static_key(cfg: RunConfig, ds: Dataset) -> tuple:
    """Everything that changes the compiled program: config fields other than the per-run ones,
    whether EGR is on, and the data's shapes."""
    d = cfg.to_dict()
    for k in PER_RUN_FIELDS + ("data_dir", "preprocess"):
        d.pop(k)
    d["use_egr"] = cfg.egr > 0
    if cfg.full_batch:
        d.pop("batch_size")
    if not cfg.is_flow:
        d.pop("rtol"), d.pop("atol")
    shapes = (ds.x_train.shape, ds.y_train.shape, ds.x_test.shape, ds.y_test.shape,
              ds.num_classes, str(ds.x_train.dtype))
    return tuple(sorted(d.items())) + (shapes,)


def plan_sweep(grid: Grid | Mapping | str | os.PathLike | Sequence[RunConfig]) -> Plan:
    """Expand the grid, load each distinct dataset once, validate and group the runs."""
    from .training import load_data

    grid = as_grid(grid)
    runs, datasets = [], {}
    for i, (over, cfg) in enumerate(grid.runs()):
        key = data_key(cfg)
        if key not in datasets:
            datasets[key] = load_data(cfg)
        try:
            validate(cfg, datasets[key].n_train)
        except ConfigError as e:
            raise ConfigError(f"grid run {i} ({_label(over)}): {e}") from None
        runs.append(Run(i, f"r{i:04d}_{_label(over)}", cfg, to_json_value(over), key))
    groups: list[Group] = []
    by_key: dict[tuple, Group] = {}
    for r in runs:
        if r.cfg.is_flow:
            g = Group(len(groups), "sequential", [])
            groups.append(g)
        else:
            k = static_key(r.cfg, datasets[r.data_key])
            if k not in by_key:
                by_key[k] = Group(len(groups), "vmap", [])
                groups.append(by_key[k])
            g = by_key[k]
        g.runs.append(r.index)
        r.group = g.id
    for g in groups:
        g.shared_data = len({runs[i].data_key for i in g.runs}) == 1
    return Plan(grid, runs, groups, datasets)


# ---------------------------------------------------------------- devices


def select_devices(devices: int | Sequence[Any] | None = None) -> list:
    """``None``: all devices (global ones under ``jax.distributed``); an int n: the first n."""
    every = jax.devices()
    if devices is None:
        return list(every)
    if isinstance(devices, int):
        if not 1 <= devices <= len(every):
            raise ConfigError(f"--devices must be in 1..{len(every)} (devices: "
                              f"{len(every)} × {every[0].platform}), got {devices}")
        return list(every[:devices])
    return list(devices)


def _place(tree, sharding):
    """Host arrays → global arrays with ``sharding`` (each process fills its own shards)."""
    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(put, tree)


def _gather(tree):
    """Global arrays → host NumPy (all processes take part under ``jax.distributed``)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


# ---------------------------------------------------------------- the compiled chunk


class RunConsts(eqx.Module):
    """Per-run inputs that do not change during training (leading run axis)."""

    params0: Any
    problem: Any  # array part of the run's dyn.Problem (frozen model arrays, if any)
    data: dyn.Data | None  # per-run data, or None when the group shares one dataset


def _wrap(state: dyn.TrainState) -> dyn.TrainState:
    return eqx.tree_at(lambda s: s.data_key, state, jax.random.wrap_key_data(state.data_key))


def _unwrap(state: dyn.TrainState) -> dyn.TrainState:
    return eqx.tree_at(lambda s: s.data_key, state, jax.random.key_data(state.data_key))


@eqx.filter_jit
def shared_step(state: dyn.TrainState, problem: dyn.Problem, data: dyn.Data, step: jax.Array):
    """``dynamics.train_step`` with the step counter given as ``step``, the group's step.

    Every running run of a group is at the group's step; passing it unbatched keeps the epoch
    reshuffle a real ``lax.cond`` under ``vmap`` (a per-run counter would make its predicate
    batched and turn it into a select that sorts a permutation at every step). A diverged run
    keeps its frozen counter, so the result is ``train_step``'s for every run."""
    new, _ = dyn.train_step(eqx.tree_at(lambda s: s.step, state, step), problem, data)
    frozen = jnp.where(state.diverged_at >= 0, state.step, new.step)
    return eqx.tree_at(lambda s: s.step, new, frozen)


@eqx.filter_jit
def sweep_chunk(states: dyn.TrainState, consts: RunConsts, problem_static, shared_data,
                step0: jax.Array, num_steps: jax.Array, mesh: jax.sharding.Mesh, block: int):
    """``num_steps`` updates of every run from the group's step ``step0``, then each run's
    cheap metrics.

    Each device (``shard_map`` over the ``"runs"`` axis of ``mesh``) loops (``lax.map``) over its
    blocks of ``block`` runs; a block is one ``vmap`` over runs of a loop over
    ``dynamics.train_step``. A run's arithmetic therefore depends on the block size and on
    whether the group's data are shared (the compiled program), not on the device count or on
    the other runs: results are bit-identical on 1 or n devices and with or without other runs.
    ``num_steps`` is traced (0 gives the initial metrics), so all chunks share one compilation.
    ``states`` hold PRNG keys as raw key data."""
    TRACE_COUNTS["sweep_chunk"] += 1

    def one(state, c, shared, step0, n):
        problem = eqx.combine(c.problem, problem_static)
        data = shared if c.data is None else c.data
        state = _wrap(state)
        state = jax.lax.fori_loop(0, n, lambda i, s: shared_step(s, problem, data, step0 + i),
                                  state)
        metrics = cheap_metrics(problem, data, state.params, c.params0, state.perm,
                                state.hyper.lr)
        return _unwrap(state), metrics

    def local(states, consts, shared, step0, n):
        size = jax.tree.leaves(states)[0].shape[0]
        blocks = jax.tree.map(lambda a: a.reshape((size // block, block) + a.shape[1:]),
                              (states, consts))
        vone = jax.vmap(one, (0, 0, None, None, None))
        out = jax.lax.map(lambda sc: vone(*sc, shared, step0, n), blocks)
        return jax.tree.map(lambda a: a.reshape((size,) + a.shape[2:]), out)

    runs, rep = jax.sharding.PartitionSpec("runs"), jax.sharding.PartitionSpec()
    return jax.shard_map(local, mesh=mesh, in_specs=(runs, runs, rep, rep, rep),
                         out_specs=runs, check_vma=False)(states, consts, shared_data, step0,
                                                          num_steps)


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _pad(tree, size: int):
    """Pad the run axis to ``size`` with copies of the last run."""
    def pad(a):
        extra = size - a.shape[0]
        return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a

    return jax.tree.map(pad, tree)


# ---------------------------------------------------------------- running


@dataclass
class SweepResult:
    """What a sweep left in ``out_dir``: the index and one trace per run (grid order)."""

    out_dir: Path
    index: dict[str, Any]
    traces: list[dict[str, Any]]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        return summary_table(self.index)


def run_sweep(grid: Grid | Mapping | str | os.PathLike | Sequence[RunConfig],
              out_dir: str | os.PathLike, resume: bool = False,
              devices: int | Sequence[Any] | None = None, *, progress: ProgressFn | None = None,
              distributed: bool = False, save_models: bool = False,
              block: int | None = None) -> SweepResult:
    """Run every run of ``grid`` into ``out_dir`` (see the module docstring for the layout).

    ``resume=True`` continues a sweep in ``out_dir`` from its last committed chunk (or starts it
    when there is none); without it an existing sweep there is an error. ``devices``: None for
    all, an int for the first n, or a list of devices. ``progress`` receives a dict after every
    chunk. ``distributed=True`` calls ``jax.distributed.initialize()`` first. ``block``: runs per
    vmapped block, default min(``DEFAULT_BLOCK``, runs in the group). A run's numbers depend on
    its block size and on nothing else of the sweep (device count, other runs), so compare
    sweeps bit for bit at the same block. On CPU blocks of 4–8 are fastest (larger ones leave the
    cache); on accelerators raise it (one block per device). ``save_models`` writes each run's
    final model to ``models/<run_id>.eqx``.
    """
    if block is not None and block < 1:
        raise ConfigError(f"--block must be ≥ 1, got {block}")
    if distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    plan = plan_sweep(grid)
    return _Sweep(plan, Path(out_dir), resume, select_devices(devices), progress,
                  save_models, block).run()


class _Sweep:
    """One execution of a plan into ``out``: groups in order, a commit after every chunk."""

    def __init__(self, plan: Plan, out: Path, resume: bool, devices: list, progress, save_models,
                 block: int):
        self.plan, self.out, self.resume, self.devices = plan, out, resume, devices
        self.progress, self.save_models, self.block = progress, save_models, block
        self.writer = jax.process_index() == 0
        self.metas: dict[int, dict | None] = {}  # group id → committed progress
        self.rows: dict[int, list[dict]] = {r.index: [] for r in plan.runs}  # committed rows
        self.docs: dict[int, dict] = {}  # run index → its latest trace
        self.common = {"versions": versions(), "device": device_info()}
        self.model_info: dict[int, dict] = {}
        self.headers: dict[int, dict] = {}
        self.memory: dict[int, dict] = {}
        self.start = time.perf_counter()
        self.last_views = -float("inf")
        self.status = "running"
        self._check_out_dir()

    def _block(self, g: Group) -> int:
        """Runs per vmapped block: a resumed group keeps the block it started with."""
        meta = self.metas.get(g.id) or {}
        return meta.get("block") or self.block or min(DEFAULT_BLOCK, len(g.runs))

    def _padded(self, g: Group) -> int:
        """Run count padded to whole blocks on every device."""
        unit = self._block(g) * len(self.devices)
        return -(-len(g.runs) // unit) * unit

    def _path(self, *parts) -> Path:
        return self.out.joinpath(*parts)

    def _check_out_dir(self):
        index = self._path("sweep.json")
        if not index.exists():
            return
        if not self.resume:
            raise ConfigError(f"{self.out} already holds a sweep; pass --resume to continue it "
                              "or choose another --out")
        old = json.loads(index.read_text())
        if old.get("grid") != to_json_value(self.plan.grid.to_dict()):
            raise ConfigError(f"--resume: the grid differs from the one of the sweep in "
                              f"{self.out}; use the same grid file or another --out")

    # ---- the whole sweep

    def run(self) -> SweepResult:
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
        for g in self.plan.groups:
            self.metas[g.id] = self._load(g) if self.resume else None
        self._views([g for g in self.plan.groups if self.metas[g.id] is not None])
        try:
            for g in self.plan.groups:
                meta = self.metas[g.id]
                if meta is None or not meta["finished"]:
                    (self._run_vmap if g.kind == "vmap" else self._run_sequential)(g)
        except KeyboardInterrupt:
            self.status = "interrupted"
            self._views([g for g in self.plan.groups
                         if self.metas[g.id] is not None and not self.metas[g.id]["finished"]])
            raise
        self.status = "completed"
        index = self._views([])
        return SweepResult(self.out, index, [self.docs[r.index] for r in self.plan.runs])

    # ---- committed progress of a group: checkpoints/group-NNN.{json,rows.jsonl,cKKKKK.eqx}

    def _meta_path(self, g: Group) -> Path:
        return self._path("checkpoints", f"{g.name}.json")

    def _rows_path(self, g: Group) -> Path:
        return self._path("checkpoints", f"{g.name}.rows.jsonl")

    def _load(self, g: Group) -> dict | None:
        if g.kind == "sequential":
            return self._load_sequential(g)
        path = self._meta_path(g)
        if not path.exists():
            return None
        meta = json.loads(path.read_text())
        if meta.get("schema") != GROUP_SCHEMA or meta.get("runs") != g.runs:
            raise CheckpointError(f"{path} does not belong to this sweep's {g.name}")
        if self.block and meta["block"] != self.block:
            raise ConfigError(f"--block {self.block}: {g.name} of this sweep runs in blocks of "
                              f"{meta['block']} (a run's numbers depend on it); resume without "
                              "--block or with the same value")
        with open(self._rows_path(g), "rb") as f:  # only the committed bytes
            for line in f.read(meta["rows_bytes"]).splitlines():
                for i, row in json.loads(line):
                    self.rows[i].append(row)
        return meta

    def _new_meta(self, g: Group) -> dict:
        return {"schema": GROUP_SCHEMA, "group": g.id, "runs": g.runs, "block": self._block(g),
                "step": 0, "chunk": -1,
                "finished": False, "state_file": None, "rows_bytes": 0, "wall_time_s": 0.0,
                "run_status": [{"status": "running", "detail": None, "diverged_step": None}
                               for _ in g.runs]}

    def _commit(self, g: Group, meta: dict, host_states, new_rows: list):
        """Rows appended past the committed length → state file → group JSON (the commit) →
        old state files removed. A kill anywhere leaves the previous commit intact."""
        line = (json.dumps(to_json_value(new_rows), allow_nan=False) + "\n").encode()
        meta["state_file"] = None if meta["finished"] else f"{g.name}.c{meta['chunk']:05d}.eqx"
        if self.writer:
            path = self._rows_path(g)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "r+b" if path.exists() else "wb") as f:
                f.truncate(meta["rows_bytes"])
                f.seek(meta["rows_bytes"])
                f.write(line)
            if meta["state_file"]:
                save_tree(self._path("checkpoints", meta["state_file"]), host_states,
                          {"group": g.id, "chunk": meta["chunk"], "step": meta["step"]})
        meta["rows_bytes"] += len(line)
        if self.writer:
            atomic_write_text(self._meta_path(g), json.dumps(to_json_value(meta)))
            for f in self._path("checkpoints").glob(f"{g.name}.c*.eqx"):
                if f.name != meta["state_file"]:
                    f.unlink(missing_ok=True)

    # ---- a vmapped group

    def _run_vmap(self, g: Group):
        from .training import build

        runs = [self.plan.runs[i] for i in g.runs]
        models: dict[int, eqx.Module] = {}  # θ0 depends on the seed only (within a group)
        setups = []
        for r in runs:
            setups.append(build(r.cfg, self.plan.datasets[r.data_key], models.get(r.cfg.seed)))
            models.setdefault(r.cfg.seed, setups[-1].model0)
        states0, consts = [], []
        for s in setups:
            state = dyn.init_state(s.problem, s.params0, s.hyper, s.keys["data"],
                                   s.dataset.n_train)
            states0.append(_unwrap(state))
            consts.append(RunConsts(s.params0, eqx.filter(s.problem, eqx.is_array),
                                    None if g.shared_data else s.data))
        problem_static = eqx.filter(setups[0].problem, eqx.is_array, inverse=True)
        host_states = _stack(states0)
        meta = self.metas[g.id]
        if meta is None:  # nothing committed: start the group
            meta = self.metas[g.id] = self._new_meta(g)
        else:  # an unfinished commit always names its state file
            host_states, _ = load_tree(self._path("checkpoints", meta["state_file"]), host_states)

        size = self._padded(g)
        mesh = jax.sharding.Mesh(np.array(self.devices), ("runs",))
        by_run = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        states = _place(_pad(host_states, size), by_run)
        consts = _place(_pad(_stack(consts), size), by_run)
        shared = _place(jax.tree.map(np.asarray, setups[0].data), replicated) \
            if g.shared_data else None
        cfg = runs[0].cfg

        while not meta["finished"]:
            t0 = time.perf_counter()
            n = 0 if meta["chunk"] < 0 else min(cfg.log_every, cfg.steps - meta["step"])
            states, metrics = sweep_chunk(states, consts, problem_static, shared,
                                          jnp.asarray(meta["step"], jnp.int32),
                                          jnp.asarray(n, jnp.int32), mesh, self._block(g))
            step, div, metrics = _gather((states.step, states.diverged_at, metrics))
            meta["step"] += n
            meta["chunk"] += 1
            new_rows = self._record(runs, meta, step, div, metrics)
            host_states = jax.tree.map(lambda a: a[: len(runs)], _gather(states))
            if meta["finished"] and self.save_models:
                self._save_models(runs, setups, host_states)
            meta["wall_time_s"] += time.perf_counter() - t0
            self._commit(g, meta, host_states, new_rows)
            if meta["finished"] or time.perf_counter() - self.last_views > VIEW_EVERY_S:
                self._views([g])
            if self.progress:
                self.progress({"group": g.id, "groups": len(self.plan.groups), "runs": len(runs),
                               "step": meta["step"], "steps": cfg.steps,
                               "diverged": sum(r["status"] == "diverged"
                                               for r in meta["run_status"])})

    def _record(self, runs, meta, step, div, metrics) -> list:
        """Rows of the runs still going, exactly as ``training.train`` writes them; a run that
        diverged gets its last row at its divergence step and stops."""
        new = []
        for i, (r, rs) in enumerate(zip(runs, meta["run_status"])):
            if rs["status"] != "running":
                continue
            row = {"step": int(step[i]), "t": int(step[i]) * r.cfg.lr}
            for k, v in metrics.items():
                v = np.asarray(v[i])
                row[k] = v.tolist() if v.ndim else float(v)
            row = to_json_value(row)
            self.rows[r.index].append(row)
            new.append([r.index, row])
            if div[i] >= 0:
                rs.update(status="diverged", diverged_step=int(div[i]),
                          detail=f"non-finite training loss at step {int(div[i])} "
                                 f"(lr={r.cfg.lr:g})")
            elif meta["step"] >= r.cfg.steps:
                rs["status"] = "completed"
        meta["finished"] = all(rs["status"] != "running" for rs in meta["run_status"])
        return new

    def _save_models(self, runs, setups, host_states):
        for i, (r, s) in enumerate(zip(runs, setups)):
            params = jax.tree.map(lambda a, i=i: jnp.asarray(a[i]), host_states.params)
            if self.writer:
                save_model(self._path("models", f"{r.run_id}.eqx"),
                           eqx.combine(params, s.problem.objective.frozen), r.cfg,
                           s.dataset.describe())

    # ---- a flow run (not vmapped): training.train, resumable per run

    def _load_sequential(self, g: Group) -> dict | None:
        from .trace import TraceError, load_trace

        r = self.plan.runs[g.runs[0]]
        try:
            doc = load_trace(self._path("traces", f"{r.run_id}.json"))
        except TraceError:
            return None
        if doc.get("config") != r.config:
            return None
        return {"finished": doc["status"] in ("completed", "diverged", "failed"), "trace": doc}

    def _run_sequential(self, g: Group):
        from .training import train

        r = self.plan.runs[g.runs[0]]
        path = self._path("traces", f"{r.run_id}.json")
        self.metas[g.id] = {"finished": False, "trace": None}
        res = train(r.cfg, self.plan.datasets[r.data_key], trace_path=path if self.writer else None)
        res.trace["sweep"] = self._sweep_field(g, r)
        self.metas[g.id] = {"finished": True, "trace": res.trace}
        if self.save_models and self.writer:
            save_model(self._path("models", f"{r.run_id}.eqx"), res.model, r.cfg,
                       res.setup.dataset.describe())
        self._views([g])

    # ---- views: traces, index and table (rebuilt from the committed progress)

    def _sweep_field(self, g: Group, r: Run) -> dict:
        return {"name": self.plan.grid.name, "index": r.index, "group": g.id,
                "group_size": len(g.runs), "grid_values": r.overrides,
                "devices": len(self.devices),
                "block": self._block(g) if g.kind == "vmap" else None}

    def _trace(self, g: Group, r: Run) -> dict:
        """Run ``r``'s trace: the header and rows ``training.train`` writes, plus its place in
        the sweep and the group's wall time."""
        from .training import summarize

        if g.kind == "sequential":
            doc = self.metas[g.id]["trace"]
            if doc is None:  # interrupted inside training.train, which wrote its trace
                doc = self._load_sequential(g) or {"trace": {"status": "pending"}}
                doc = doc["trace"]
            return {**doc, "run_id": r.run_id, "sweep": self._sweep_field(g, r)}
        if g.id not in self.model_info:  # parameter count and names: same for the group
            ds = self.plan.datasets[r.data_key]
            params = _abstract_model(r.cfg, ds.input_shape, ds.out_size)[0]
            self.model_info[g.id] = {"num_params": num_params(params),
                                     "layers": layer_names(params)}
        meta = self.metas[g.id]
        rs = meta["run_status"][g.runs.index(r.index)]
        if r.index not in self.headers:
            self.headers[r.index] = to_json_value({
                "run_id": r.run_id, "config": r.config,
                "dataset": self.plan.datasets[r.data_key].describe(), **self.common,
                "seed": r.cfg.seed, **self.model_info[g.id], "probes": {},
                "sweep": self._sweep_field(g, r)})
        w = TraceWriter(None, self.headers[r.index])
        w.rows = self.rows[r.index]
        status, detail = rs["status"], rs["detail"]
        if status == "running" and self.status == "interrupted":
            status, detail = "interrupted", "sweep interrupted; continue it with --resume"
        w.doc.update(status=status, status_detail=detail, diverged_step=rs["diverged_step"],
                     wall_time_s=meta["wall_time_s"])
        w.doc["summary"] = summarize(w.to_dict()) if w.rows else {}
        return w.to_dict()

    def _views(self, groups: Sequence[Group]) -> dict:
        """Rewrite the traces of ``groups``, then the index and the summary table (compact
        JSON: every value is already strict JSON, see ``_record``)."""
        for g in groups:
            for i in g.runs:
                r = self.plan.runs[i]
                self.docs[i] = self._trace(g, r)
                if self.writer and self.docs[i].get("status") != "pending":
                    atomic_write_text(self._path("traces", f"{r.run_id}.json"),
                                      json.dumps(self.docs[i], allow_nan=False))
        self.last_views = time.perf_counter()
        index = self._index()
        if self.writer:
            atomic_write_text(self._path("sweep.json"), json.dumps(index, allow_nan=False))
            cols, rows = summary_table(index)
            buf = io.StringIO()
            csv.writer(buf).writerows([cols] + [["" if v is None else v for v in r]
                                                for r in rows])
            atomic_write_text(self._path("summary.csv"), buf.getvalue())
        return index

    def _index(self) -> dict:
        groups = []
        for g in self.plan.groups:
            meta = self.metas.get(g.id) or {}
            groups.append({
                "id": g.id, "kind": g.kind, "runs": g.runs, "size": len(g.runs),
                "padded_size": self._padded(g) if g.kind == "vmap" else 1,
                "block": self._block(g) if g.kind == "vmap" else None,
                "shared_data": g.shared_data, "steps": self.plan.runs[g.runs[0]].cfg.steps,
                "step": meta.get("step"),
                "status": "completed" if meta.get("finished") else
                ("running" if meta else "pending"),
                "checkpoint": f"checkpoints/{g.name}.json" if g.kind == "vmap" else None,
                "memory_estimate": self._memory(g)})
        runs = []
        for r in self.plan.runs:
            doc = self.docs.get(r.index, {})
            runs.append({"index": r.index, "run_id": r.run_id, "group": r.group,
                         "grid_values": r.overrides, "trace": f"traces/{r.run_id}.json",
                         "config": r.config, "status": doc.get("status", "pending"),
                         "status_detail": doc.get("status_detail"),
                         "diverged_step": doc.get("diverged_step"),
                         "summary": doc.get("summary", {})})
        return {
            "schema": INDEX_SCHEMA, "name": self.plan.grid.name, "status": self.status,
            "grid": to_json_value(self.plan.grid.to_dict()), "num_runs": len(self.plan.runs),
            "devices": to_json_value({**self.common["device"], "used": len(self.devices),
                                      "process_count": jax.process_count()}),
            "versions": self.common["versions"],
            "wall_time_s": time.perf_counter() - self.start, "groups": groups,
            "runs": runs}

    def _memory(self, g: Group) -> dict:
        if g.id not in self.memory:
            r0 = self.plan.runs[g.runs[0]]
            ds = self.plan.datasets[r0.data_key]
            self.memory[g.id] = estimate_memory(
                r0.cfg, _shape(ds), out_size=ds.out_size, n_test=ds.n_test, runs=len(g.runs),
                block=self._block(g), shared_data=g.shared_data)
        return self.memory[g.id]


def summary_table(index: dict) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): one row per run with its grid values, status and final metrics."""
    axes = list(index["runs"][0]["grid_values"]) if index["runs"] else []
    cols = ["run_id", *axes, "status", "diverged_step", *SUMMARY_COLUMNS]
    rows = [[r["run_id"], *(r["grid_values"].get(a) for a in axes), r["status"],
             r["diverged_step"], *(r["summary"].get(k) for k in SUMMARY_COLUMNS)]
            for r in index["runs"]]
    return cols, rows


def _shape(ds: Dataset) -> tuple[int, ...]:
    return (ds.n_train, *ds.input_shape)


# ---------------------------------------------------------------- memory


def _abstract_model(cfg: RunConfig, in_shape: Sequence[int], out_size: int):
    """(θ, frozen) of the config's model with unallocated zero arrays (shapes and names only)."""
    from .models import make_model, partition

    shapes = eqx.filter_eval_shape(
        lambda: make_model(cfg.model, tuple(in_shape), out_size, key=jax.random.key(0),
                           width=cfg.width, depth=cfg.depth, activation=cfg.activation))
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype)
                         if isinstance(a, jax.ShapeDtypeStruct) else a, shapes)
    return partition(zeros)


def _activations_per_example(cfg: RunConfig, in_shape: Sequence[int], out_size: int) -> int:
    """Floats one example keeps for the backward pass (inputs, pre- and post-activations)."""
    d = int(np.prod(in_shape))
    if cfg.model == "mlp":
        return d + 2 * cfg.depth * cfg.width + 2 * out_size
    if cfg.model == "cnn":
        _, h, w = in_shape
        h2, w2 = -(-h // 2), -(-w // 2)
        return d + 2 * cfg.width * h * w + 2 * 2 * cfg.width * h2 * w2 + 2 * cfg.width \
            + 2 * out_size
    if cfg.model == "random-features":
        return d + 2 * cfg.width + 2 * out_size
    return d + 2 * out_size


def estimate_memory(cfg: RunConfig, dataset_shape: Sequence[int], *, out_size: int = 10,
                    n_test: int = 0, runs: int = 1, block: int | None = None,
                    shared_data: bool = True) -> dict[str, int]:
    """Bytes a run and a sweep need, from the config and the training inputs' shape
    ``(n, *input_shape)``: exact parameter count (``jax.eval_shape``), activations estimated.

    Kept per run for the whole sweep (``state``): θ, θ0 (for ``dist_from_init``), the gradient,
    optimizer slots (momentum/nesterov 1×θ, adam 2×θ, flows ~8×θ for the Tsit5 stages), frozen
    arrays (random features), the epoch permutation (n int32), and the run's own data when runs
    differ in data. Per run while its block computes (``activations``): the larger of one
    full-batch chunk (``min(eval_chunk, n)`` examples; ×3 with EGR or the modified flow, for the
    HVP) and one minibatch, counting inputs, pre- and post-activations and outputs. Shared: the
    data once (train + test; replicated on every device); chunks are read in place (no padded
    copy, whatever ``eval_chunk``). ``per_run`` = state + activations: one run alone.
    ``total`` = shared + runs × state + block × activations, with
    ``block = min(8, runs)`` by default (blocks of a device run one after another).
    """
    n, *in_shape = (int(v) for v in dataset_shape)
    item = 8 if cfg.dtype == "float64" else 4
    params, frozen_part = _abstract_model(cfg, in_shape, out_size)
    p = num_params(params)
    frozen = num_params(eqx.filter(frozen_part, eqx.is_array))
    slots = {"momentum": 1, "nesterov": 1, "adam": 2, "flow": 8, "modified-flow": 8}
    act = _activations_per_example(cfg, in_shape, out_size)
    chunk = max(1, min(cfg.eval_chunk, n))
    eval_act = chunk * act * (3 if cfg.egr > 0 or cfg.optimizer == "modified-flow" else 1)
    batch_act = (0 if cfg.full_batch else cfg.batch_size) * act
    d = int(np.prod(in_shape))
    data = (n + n_test) * (d + 1) * item
    out = {
        "params": p * item,
        "params0": p * item,
        "gradient": p * item,
        "optimizer_state": slots.get(cfg.optimizer, 0) * p * item,
        "frozen": frozen * item,
        "permutation": n * 4,
    }
    state = sum(out.values()) + (0 if shared_data else data)
    activations = max(eval_act, batch_act) * item
    block = min(block or DEFAULT_BLOCK, runs)
    shared = data if shared_data else 0
    return {**out, "state": state, "activations": activations,
            "per_run": state + activations, "data": data, "shared": shared,
            "runs": runs, "block": block, "total": shared + runs * state + block * activations}


def format_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b} B"  # pragma: no cover
