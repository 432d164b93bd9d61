"""Running a plan: the vmapped engine chunk sharded over devices (``sweep_chunk``), a commit
after every chunk, and the traces, index and table rebuilt from the commits."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
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

from .. import dynamics as dyn
from .. import engine
from ..checkpoint import CheckpointError, load_tree, read_header, save_model, save_tree
from ..config import ConfigError, RunConfig
from ..engine import advance_chunk, host_metrics
from ..jsonio import load_checked, load_json, read_json_lines
from ..locking import output_lock
from ..models import layer_names, num_params
from ..trace import TraceWriter, atomic_write_text, device_info, to_json_value, versions
from .grid import Grid
from .memory import DEFAULT_BLOCK, dataset_shape, estimate_memory
from .plan import Group, Plan, Run, plan_sweep

INDEX_SCHEMA = "sgdreg.sweep/1"
GROUP_SCHEMA = "sgdreg.sweep-group/1"
TRACE_COUNTS: Counter = Counter()
VIEW_EVERY_S = 5.0  # traces and index are rewritten at most this often (and at the end)
SUMMARY_COLUMNS = ("train_loss", "test_loss", "train_acc", "test_acc", "gen_gap", "weight_norm",
                   "steps_to_fit")
ProgressFn = Callable[[dict[str, Any]], None]
#: Field kinds of a group commit (``jsonio.KINDS``), all required.
GROUP_SPEC = {"schema": "str", "group": "nonneg_int", "runs": "int_list", "block": "int",
              "step": "nonneg_int", "chunk": "int", "finished": "bool", "state_file": "str?",
              "rows_bytes": "nonneg_int", "wall_time_s": "number", "run_status": "list"}
RUN_STATUSES = ("running", "completed", "diverged", "failed")
#: Field kinds of the index checked on resume.
INDEX_SPEC = {"schema": "str", "grid": "object", "status": "str", "runs": "list",
              "wall_time_s": "number"}
MANIFEST = "shards.json"  # a sharded sweep's manifest (``sgdreg.sweep.shard``)


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
    problem: Any  # array part of the run's engine.Problem (frozen model arrays, if any)
    data: dyn.Data | None  # per-run data, or None when the group shares one dataset


@eqx.filter_jit
def sweep_chunk(states: dyn.TrainState, consts: RunConsts, problem_static, shared_data,
                step0: jax.Array, num_steps: jax.Array, mesh: jax.sharding.Mesh, block: int):
    """``engine.advance_chunk`` (``num_steps`` steps of every run from the group's step
    ``step0``, then each run's cheap metrics), vmapped over runs.

    Each device (``shard_map`` over the ``"runs"`` axis of ``mesh``) loops (``lax.map``) over its
    blocks of ``block`` runs; a block is one ``vmap`` of the engine's chunk. A run's arithmetic
    therefore depends on the block size and on whether the group's data are shared (the
    compiled program), not on the device count or on the other runs: results are bit-identical
    on 1 or n devices and with or without other runs. ``num_steps`` is traced (0 gives the
    initial metrics), so all chunks share one compilation. The group's step is passed unbatched,
    so the epoch reshuffle stays a real ``lax.cond`` under ``vmap``."""
    TRACE_COUNTS["sweep_chunk"] += 1

    def one(state, c, shared, step0, n):
        problem = eqx.combine(c.problem, problem_static)
        data = shared if c.data is None else c.data
        return advance_chunk(state, problem, data, c.params0, step0, n)

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


@jax.jit
def _freeze(stopped, done):
    """``TrainState.stopped`` of the runs that reached their stop_loss set (jit: global arrays)."""
    return stopped | done


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _pad(tree, size: int):
    """Pad the run axis to ``size`` with copies of the last run."""
    def pad(a):
        extra = size - a.shape[0]
        return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a

    return jax.tree.map(pad, tree)


# ---------------------------------------------------------------- committed progress


def load_commit(root: Path, g: Group, *, block: int | None = None, check_state: bool = True
                ) -> tuple[dict | None, dict[int, list[dict]]]:
    """Group ``g``'s last commit under ``root/checkpoints`` (None: none) and its committed rows
    (run index → rows), checked: the group file, the rows up to the committed length and, with
    ``check_state``, an unfinished group's state-file header (the state itself is loaded when
    the group continues). A reader of another live writer's commits passes
    ``check_state=False`` (the writer removes older state files; group files are replaced
    atomically and rows only grow past the committed length, so what is read is a commit)."""
    path = root / "checkpoints" / f"{g.name}.json"
    rows_path = root / "checkpoints" / f"{g.name}.rows.jsonl"
    rows: dict[int, list[dict]] = {i: [] for i in g.runs}
    if not path.exists():
        return None, rows
    meta = load_checked(path, "sweep group file", GROUP_SPEC, schema=GROUP_SCHEMA,
                        error=CheckpointError)
    if meta["runs"] != g.runs or len(meta["run_status"]) != len(g.runs):
        raise CheckpointError(f"{path} does not belong to this sweep's {g.name}")
    for rs in meta["run_status"]:
        if not isinstance(rs, dict) or rs.get("status") not in RUN_STATUSES or not all(
                k in rs for k in ("detail", "diverged_step")):
            raise CheckpointError(f"{path}: not a valid sweep group file: run_status "
                                  "entries must be objects with status (one of "
                                  f"{', '.join(RUN_STATUSES)}), detail and diverged_step")
    if block and meta["block"] != block:
        raise ConfigError(f"--block {block}: {g.name} of this sweep runs in blocks of "
                          f"{meta['block']} (a run's numbers depend on it); resume without "
                          "--block or with the same value")
    if not meta["finished"] and check_state:
        if not meta["state_file"]:
            raise CheckpointError(f"{path}: an unfinished group names no state file")
        read_header(root / "checkpoints" / meta["state_file"])
    for chunk in read_json_lines(rows_path, "sweep rows file", nbytes=meta["rows_bytes"],
                                 error=CheckpointError):
        try:
            for i, row in chunk:
                rows[i].append(row)
        except (TypeError, ValueError, KeyError):
            raise CheckpointError(f"{rows_path}: a line is not a list of [run index, row] "
                                  "pairs of this group") from None
    return meta, rows


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
              distributed: bool | Mapping[str, Any] = False, save_models: bool = False,
              block: int | None = None, shard: tuple[int, int] | None = None,
              device_budget: int | None = None) -> SweepResult:
    """Run every run of ``grid`` into ``out_dir`` (layout and resume: ``sgdreg.sweep``).

    ``resume=True`` continues a sweep in ``out_dir`` from its last committed chunk (or starts it
    when there is none); without it an existing sweep there is an error. ``devices``: None for
    all, an int for the first n, or a list of devices. ``progress`` receives a dict after every
    chunk. ``distributed=True`` calls ``jax.distributed.initialize()`` first (a mapping:
    its keyword arguments, e.g. ``{"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
    "process_id": i}``; nothing when JAX is initialized already). ``block``: runs per
    vmapped block, default min(``DEFAULT_BLOCK``, runs in the group). A run's numbers depend on
    its block size and on nothing else of the sweep (device count, other runs), so compare
    sweeps bit for bit at the same block. On CPU blocks of 4–8 are fastest (larger ones leave the
    cache); on accelerators raise it (one block per device). ``save_models`` writes each run's
    final model to ``models/<run_id>.eqx``.

    ``shard=(i, N)``: run only shard i of N (``sgdreg.sweep.shard``: the rule, the layout, the
    checks), into an ``out_dir`` that any number of shards share; a shard always continues its
    own last commits (rerunning a finished shard runs nothing) and ``resume`` is implied. The
    result's traces are this shard's runs; its index merges every shard's commits.

    ``device_budget`` (bytes): data above it stay on the host (MNIST/CIFAR-10: memory-mapped)
    and every run of a group streams the one shared copy in chunks of ``eval_chunk`` rows
    (``plan_sweep``): the in-memory sweep's numbers.

    Example:
        >>> sgdreg.run_sweep({"base": {"optimizer": "sgd", "steps": 300},
        ...                   "grid": {"lr": [0.05, 0.1], "seed": [0, 1]}}, "sweep")  # doctest: +SKIP
        >>> df = sgdreg.load_traces("sweep")                                   # doctest: +SKIP
    """
    if block is not None and block < 1:
        raise ConfigError(f"--block must be ≥ 1, got {block}")
    if distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize(**(distributed if isinstance(distributed, Mapping) else {}))
    if shard is not None:
        return _run_shard(grid, Path(out_dir), shard, devices, progress, save_models, block,
                          device_budget)
    plan = plan_sweep(grid, device_budget)
    devs = select_devices(devices)
    if (Path(out_dir) / MANIFEST).exists():  # before the lock (which cleans temp files)
        raise ConfigError(f"{out_dir} holds a sharded sweep; run it with --shard i/N "
                          "(shard=(i, N)), see it with --status, or choose another --out")
    if jax.process_index() != 0:  # only process 0 writes (and locks)
        return _Sweep(plan, Path(out_dir), resume, devs, progress, save_models, block).run()
    with output_lock(out_dir, "sweep"):
        return _Sweep(plan, Path(out_dir), resume, devs, progress, save_models, block).run()


def _run_shard(grid, out: Path, shard, devices, progress, save_models, block,
               device_budget=None) -> SweepResult:
    """Shard i of N into ``out``: checks (shard spec, the other shards' manifest, the lock of an
    unsharded sweep) before anything is written, then the manifest (first shard only), then this
    shard's lock and its groups."""
    from ..locking import check_unlocked
    from . import shard as sh

    i, n = sh.check_shard(shard)
    plan = plan_sweep(grid, device_budget)
    devs = select_devices(devices)
    if out.is_dir():
        check_unlocked(out)  # an unsharded sweep writing there
    if jax.process_index() == 0:
        sh.ensure_manifest(out, plan, n, block)
    else:
        sh.check_manifest(out, plan, n, block)
    part = sh.shard_plan(plan, i, n)
    if jax.process_index() != 0:
        return _Sweep(part, out, True, devs, progress, save_models, block, shard=(i, n),
                      full_plan=plan).run()
    with output_lock(sh.shard_dir(out, i, n), f"sweep --shard {i}/{n}"):
        sh.clean_run_temps(out, [plan.runs[k] for g in part.groups for k in g.runs])
        return _Sweep(part, out, True, devs, progress, save_models, block, shard=(i, n),
                      full_plan=plan).run()


def check_sweep_dir(grid: Grid | Mapping | str | os.PathLike | Sequence[RunConfig],
                    out_dir: str | os.PathLike, resume: bool = False,
                    block: int | None = None, shard: tuple[int, int] | None = None,
                    device_budget: int | None = None) -> None:
    """The checks ``run_sweep`` makes on ``out_dir`` before it writes anything, without running
    or writing (for a validation pass): another live process's lock, an existing sweep without
    ``resume``, a different grid, and with ``resume`` every committed group file, rows file and
    state-file header. Raises what ``run_sweep`` would (one line naming the file).
    ``device_budget``: as ``run_sweep``'s (the data are opened the same way)."""
    from ..locking import check_unlocked

    out = Path(out_dir)
    if shard is not None:  # the checks of _run_shard, then this shard's commits
        from . import shard as sh

        i, n = sh.check_shard(shard)
        plan = plan_sweep(grid, device_budget)
        if out.is_dir():
            check_unlocked(out)
            check_unlocked(sh.shard_dir(out, i, n))
        if sh.check_manifest(out, plan, n, block) is not None:
            s = _Sweep(sh.shard_plan(plan, i, n), out, True, select_devices(1), None, False,
                       block, shard=(i, n))
            for g in s.plan.groups:
                s._load(g)
        return
    check_unlocked(out)
    if not out.exists():
        return
    if (out / MANIFEST).exists():
        raise ConfigError(f"{out} holds a sharded sweep; run it with --shard i/N, see it with "
                          "--status, or choose another --out")
    s = _Sweep(plan_sweep(grid, device_budget), out, resume, select_devices(1), None, False,
               block)
    if resume:
        for g in s.plan.groups:
            s._load(g)


class _Sweep:
    """One execution of a plan into ``out``: groups in order, a commit after every chunk."""

    def __init__(self, plan: Plan, out: Path, resume: bool, devices: list, progress, save_models,
                 block: int, shard: tuple[int, int] | None = None,
                 full_plan: Plan | None = None):
        self.plan, self.out, self.resume, self.devices = plan, out, resume, devices
        self.shard = shard  # (i, N): commits under shards/<i>-of-<N>/, the index merged
        self.full_plan = full_plan or plan  # every group of the grid (for the merged index)
        self.ckpt_root = out if shard is None else out / "shards" / f"{shard[0]}-of-{shard[1]}"
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
        self.old_index: dict | None = None  # the index of the sweep being resumed
        self.io = threading.Lock()  # one writer of the views at a time (the loop, or abort)
        self._check_out_dir()

    def _block(self, g: Group) -> int:
        """Runs per vmapped block: a resumed group keeps the block it started with."""
        meta = self.metas.get(g.id) or {}
        return meta.get("block") or self.block or min(DEFAULT_BLOCK, g.full_size or len(g.runs))

    def _padded(self, g: Group) -> int:
        """Run count padded to whole blocks on every device."""
        unit = self._block(g) * len(self.devices)
        return -(-len(g.runs) // unit) * unit

    def _path(self, *parts) -> Path:
        return self.out.joinpath(*parts)

    def _ckpt(self, *parts) -> Path:
        """``checkpoints/...`` of this sweep (of this shard: under ``shards/<i>-of-<N>/``)."""
        return self.ckpt_root.joinpath("checkpoints", *parts)

    def _check_out_dir(self):
        if self.shard is not None:  # the manifest was checked by _run_shard
            return
        index = self._path("sweep.json")
        if not index.exists():
            return
        if not self.resume:
            raise ConfigError(f"{self.out} already holds a sweep; pass --resume to continue it "
                              "or choose another --out")
        old = load_checked(index, "sweep index", INDEX_SPEC, schema=INDEX_SCHEMA,
                           required=("grid", "status", "runs"), error=CheckpointError)
        self.old_index = old
        if old.get("grid") != to_json_value(self.plan.grid.to_dict()):
            raise ConfigError(f"--resume: the grid differs from the one of the sweep in "
                              f"{self.out}; use the same grid file or another --out")

    # ---- the whole sweep

    def run(self) -> SweepResult:
        # everything committed is read and checked before any file is written: a bad state
        # file fails with one line and leaves the sweep as it was
        for g in self.plan.groups:
            self.metas[g.id] = self._load(g) if self.resume else None
        if self._finished_before():
            return self._as_found()  # a finished sweep: resuming it changes nothing
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
        # the traces of groups finished before this resume, for the index (rewritten only
        # where a kill between a group's last commit and its traces left them stale)
        finished = [g for g in self.plan.groups if (self.metas[g.id] or {}).get("finished")]
        self._views(finished, write=False)
        self._heal(finished)
        try:
            with engine.stoppable(self._abort):
                for g in self.plan.groups:
                    meta = self.metas[g.id]
                    if meta is None or not meta["finished"]:
                        engine.check_stop()
                        self._run_vmap(g)
        except KeyboardInterrupt:
            with self.io:
                self.status = "interrupted"
                self._views(self._unfinished())
            raise
        self.status = "completed"
        with self.io:
            index = self._views([])
        mine = sorted(i for g in self.plan.groups for i in g.runs)  # a shard: its runs
        return SweepResult(self.out, index, [self.docs[i] for i in mine])

    def _heal(self, groups: Sequence[Group]) -> None:
        """Rewrite the traces of finished ``groups`` whose file is missing or differs from the
        commits in status or metrics (the commit precedes the traces' rewrite)."""
        if not self.writer:
            return
        for g in groups:
            for i in g.runs:
                path = self._path("traces", f"{self.plan.runs[i].run_id}.json")
                try:
                    old = json.loads(path.read_text())
                except (OSError, ValueError):
                    old = None
                doc = self.docs[i]
                if not isinstance(old, dict) or (old.get("status"), old.get("metrics")) != (
                        doc["status"], doc["metrics"]):
                    atomic_write_text(path, json.dumps(doc, allow_nan=False))

    def _unfinished(self) -> list[Group]:
        return [g for g in self.plan.groups
                if self.metas[g.id] is not None and not self.metas[g.id]["finished"]]

    def _abort(self):
        """A second signal: mark the unfinished runs' traces 'interrupted' now (the process
        ends next; the commits are intact, so --resume continues from the last one)."""
        if not self.io.acquire(timeout=5.0):
            return
        try:
            if self.status == "running":
                self.status = "interrupted"
                self._views(self._unfinished())
        finally:
            self.io.release()

    def _finished_before(self) -> bool:
        """Resuming a sweep whose every group and whose index are complete."""
        return (self.resume and self.old_index is not None
                and self.old_index.get("status") == "completed"
                and all(m is not None and m["finished"] for m in self.metas.values()))

    def _as_found(self) -> SweepResult:
        """The finished sweep in ``out`` as it is on disk (nothing written)."""
        try:
            paths = [self._path(r["trace"]) for r in self.old_index["runs"]]
        except (KeyError, TypeError):
            raise CheckpointError(f"{self._path('sweep.json')}: not a valid sweep index: runs "
                                  "must be objects with a trace path") from None
        docs = [load_json(p, "trace", error=CheckpointError) for p in paths]
        return SweepResult(self.out, self.old_index, docs)

    # ---- committed progress of a group: checkpoints/group-NNN.{json,rows.jsonl,cKKKKK.eqx}

    def _meta_path(self, g: Group) -> Path:
        return self._ckpt(f"{g.name}.json")

    def _rows_path(self, g: Group) -> Path:
        return self._ckpt(f"{g.name}.rows.jsonl")

    def _load(self, g: Group) -> dict | None:
        """``g``'s last commit (None: none), checked (``load_commit``); its rows are kept."""
        meta, rows = load_commit(self.ckpt_root, g, block=self.block)
        for i, rs in rows.items():
            self.rows[i].extend(rs)
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
                save_tree(self._ckpt(meta["state_file"]), host_states,
                          {"group": g.id, "chunk": meta["chunk"], "step": meta["step"]})
        meta["rows_bytes"] += len(line)
        if self.writer:
            atomic_write_text(self._meta_path(g), json.dumps(to_json_value(meta)))
            for f in self._ckpt().glob(f"{g.name}.c*.eqx"):
                if f.name != meta["state_file"]:
                    f.unlink(missing_ok=True)

    # ---- a vmapped group

    def _run_vmap(self, g: Group):
        from ..training import build

        runs = [self.plan.runs[i] for i in g.runs]
        # θ0 (and a BatchNorm preset's state) depends on the seed only (within a group)
        models: dict[int, tuple] = {}
        setups = []
        for r in runs:
            setups.append(build(r.cfg, self.plan.datasets[r.data_key],
                                *models.get(r.cfg.seed, (None, None))))
            models.setdefault(r.cfg.seed, (setups[-1].model0, setups[-1].model_state0))
        for r, s in zip(runs, setups):  # the header train() writes; θ0 reused only by seed
            prov = {**s.provenance, "model": {**s.provenance["model"], "preset": r.cfg.model}}
            self.model_info[r.index] = {"provenance": prov, "num_params": num_params(s.params0),
                                        "layers": layer_names(s.params0)}
        states0, consts = [], []
        for s in setups:
            states0.append(s.state0())
            consts.append(RunConsts(s.params0, eqx.filter(s.problem, eqx.is_array),
                                    None if g.shared_data else s.data))
        problem_static = eqx.filter(setups[0].problem, eqx.is_array, inverse=True)
        host_states = _stack(states0)
        meta = self.metas[g.id]
        if meta is None:  # nothing committed: start the group
            meta = self.metas[g.id] = self._new_meta(g)
        else:  # an unfinished commit always names its state file
            host_states, _ = load_tree(self._ckpt(meta["state_file"]), host_states)

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
            engine.check_stop()  # before the first chunk and after every commit
            t0 = time.perf_counter()
            n = 0 if meta["chunk"] < 0 else min(cfg.log_every, cfg.steps - meta["step"])
            states, metrics = sweep_chunk(states, consts, problem_static, shared,
                                          jnp.asarray(meta["step"], jnp.int32),
                                          jnp.asarray(n, jnp.int32), mesh, self._block(g))
            step, div, failed, metrics = _gather((states.step, states.diverged_at, states.failed,
                                                  metrics))
            meta["step"] += n
            meta["chunk"] += 1
            new_rows = self._record(runs, meta, step, div, failed, metrics)
            done = np.array([rs["status"] == "completed" for rs in meta["run_status"]])
            if done.any() and not meta["finished"]:  # reached stop_loss: frozen from now on
                states = eqx.tree_at(lambda s: s.stopped, states, _freeze(
                    states.stopped, _place(_pad(done, size), by_run)))
            host_states = jax.tree.map(lambda a: a[: len(runs)], _gather(states))
            if meta["finished"] and self.save_models:
                self._save_models(runs, setups, host_states)
            meta["wall_time_s"] += time.perf_counter() - t0
            with self.io:
                self._commit(g, meta, host_states, new_rows)
                if meta["finished"] or time.perf_counter() - self.last_views > VIEW_EVERY_S:
                    self._views([g])
            if self.progress:
                self.progress({"group": g.id, "groups": len(self.full_plan.groups), "runs": len(runs),
                               "step": meta["step"], "steps": cfg.steps,
                               "diverged": sum(r["status"] == "diverged"
                                               for r in meta["run_status"])})

    def _record(self, runs, meta, step, div, failed, metrics) -> list:
        """Rows of the runs still going, exactly as ``engine.execute`` writes them: a discrete
        run that diverged gets its last row at its divergence step and stops; a flow whose
        solve failed or went non-finite stops without a row; a run whose logged train_loss
        (after step 0) is ≤ its ``stop_loss`` is ``completed`` there (then frozen: ``_freeze``)."""
        new = []
        for i, (r, rs) in enumerate(zip(runs, meta["run_status"])):
            if rs["status"] != "running":
                continue
            stopped = div[i] >= 0 or failed[i]
            if not (stopped and r.cfg.is_flow):
                row = {"step": int(step[i]), "t": int(step[i]) * r.cfg.lr,
                       **host_metrics({k: v[i] for k, v in metrics.items()})}
                row = to_json_value(row)
                self.rows[r.index].append(row)
                new.append([r.index, row])
            t_end = meta["step"] * r.cfg.lr
            if div[i] >= 0:
                rs.update(status="diverged", diverged_step=int(div[i]), detail=(
                    f"non-finite training loss at step {int(div[i])} (lr={r.cfg.lr:g})"
                    if not r.cfg.is_flow else
                    f"flow solver stopped before t={t_end:g} (non-finite state)"))
            elif failed[i]:
                rs.update(status="failed",
                          detail=f"flow solver stopped before t={t_end:g} (max steps reached)")
            elif (r.cfg.stop_loss is not None and meta["chunk"] > 0
                  and row.get("train_loss") is not None and row["train_loss"] <= r.cfg.stop_loss):
                rs.update(status="completed", detail=f"reached train_loss ≤ {r.cfg.stop_loss:g} "
                                                     f"at step {int(step[i])}")
            elif meta["step"] >= r.cfg.steps:
                rs["status"] = "completed"
        meta["finished"] = all(rs["status"] != "running" for rs in meta["run_status"])
        return new

    def _save_models(self, runs, setups, host_states):
        for i, (r, s) in enumerate(zip(runs, setups)):
            params, mstate = jax.tree.map(lambda a, i=i: jnp.asarray(a[i]),
                                          (host_states.params, host_states.model_state))
            if self.writer:  # a BatchNorm preset: its final running statistics too
                save_model(self._path("models", f"{r.run_id}.eqx"),
                           eqx.combine(params, s.problem.objective.frozen), r.cfg,
                           s.dataset.describe(), state=mstate)

    # ---- views: traces, index and table (rebuilt from the committed progress)

    def _trace(self, g: Group, r: Run) -> dict:
        """Run ``r``'s trace: the header and rows ``training.train`` writes, plus its place in
        the sweep and the group's wall time."""
        from ..training import summarize

        if r.index not in self.model_info:  # a group finished before a resume: rebuild
            from ..training import build

            st = build(r.cfg, self.plan.datasets[r.data_key])
            self.model_info[r.index] = {"provenance": st.provenance,
                                        "num_params": num_params(st.params0),
                                        "layers": layer_names(st.params0)}
        meta = self.metas[g.id]
        rs = meta["run_status"][g.runs.index(r.index)]
        if r.index not in self.headers:
            self.headers[r.index] = to_json_value({
                "run_id": r.run_id, "config": r.config,
                "dataset": self.plan.datasets[r.data_key].describe(), **self.common,
                "seed": r.cfg.seed, **self.model_info[r.index], "probes": {},
                "sweep": {"name": self.plan.grid.name, "index": r.index, "group": g.id,
                          "group_size": g.full_size or len(g.runs), "grid_values": r.overrides,
                          "devices": len(self.devices), "block": self._block(g),
                          **({"shard": list(self.shard)} if self.shard else {})}})
        w = TraceWriter(None, self.headers[r.index])
        w.rows = self.rows[r.index]
        status, detail = rs["status"], rs["detail"]
        if status == "running" and self.status == "interrupted":
            status, detail = "interrupted", "sweep interrupted; continue it with --resume"
        w.doc.update(status=status, status_detail=detail, diverged_step=rs["diverged_step"],
                     wall_time_s=meta["wall_time_s"])
        w.doc["summary"] = summarize(w.to_dict()) if w.rows else {}
        doc = w.to_dict()
        if "step" not in doc["metrics"]:  # interrupted before its first chunk: 0 rows
            doc["metrics"] = {"step": [], "t": [], **doc["metrics"]}
        return doc

    def _views(self, groups: Sequence[Group], write: bool = True) -> dict | None:
        """Rewrite the traces of ``groups``, then the index and the summary table (compact
        JSON: every value is already strict JSON, see ``_record``). ``write=False``: only
        rebuild the traces in memory."""
        for g in groups:
            for i in g.runs:
                r = self.plan.runs[i]
                self.docs[i] = self._trace(g, r)
                if write and self.writer and self.docs[i].get("status") != "pending":
                    atomic_write_text(self._path("traces", f"{r.run_id}.json"),
                                      json.dumps(self.docs[i], allow_nan=False))
        if not write:
            return None
        self.last_views = time.perf_counter()
        if self.shard is not None:  # the index of every shard's commits (after ours)
            from .shard import merge_index

            return merge_index(self.out, self.full_plan, own=self.shard[0],
                               own_live=self.status != "interrupted", write=self.writer)
        index = self._index()
        if self.writer:
            atomic_write_text(self._path("sweep.json"), json.dumps(index, allow_nan=False))
            write_table(self.out, index)
        return index

    def _index(self) -> dict:
        groups = []
        for g in self.plan.groups:
            meta = self.metas.get(g.id) or {}
            groups.append({
                "id": g.id, "kind": g.kind, "runs": g.runs, "size": len(g.runs),
                "padded_size": self._padded(g), "block": self._block(g),
                "shared_data": g.shared_data, "steps": self.plan.runs[g.runs[0]].cfg.steps,
                "step": meta.get("step"),
                "status": "completed" if meta.get("finished") else
                ("running" if meta else "pending"),
                "checkpoint": f"checkpoints/{g.name}.json",
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
            "wall_time_s": self._previous_wall() + time.perf_counter() - self.start,
            "groups": groups,
            "runs": runs}

    def _previous_wall(self) -> float:
        """The wall time of the sessions before this resume (the index keeps their sum)."""
        w = (self.old_index or {}).get("wall_time_s")
        return float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else 0.0

    def _memory(self, g: Group) -> dict:
        if g.id not in self.memory:
            r0 = self.plan.runs[g.runs[0]]
            ds = self.plan.datasets[r0.data_key]
            self.memory[g.id] = estimate_memory(
                r0.cfg, dataset_shape(ds), out_size=ds.out_size, n_test=ds.n_test,
                runs=len(g.runs), block=self._block(g), shared_data=g.shared_data)
        return self.memory[g.id]


def write_table(out: Path, index: dict) -> None:
    """``summary.csv`` (atomic): ``summary_table`` of ``index``."""
    cols, rows = summary_table(index)
    buf = io.StringIO()
    csv.writer(buf).writerows([cols] + [["" if v is None else v for v in r] for r in rows])
    atomic_write_text(out / "summary.csv", buf.getvalue())


def summary_table(index: dict) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): one row per run with its grid values, status and final metrics."""
    axes = list(index["runs"][0]["grid_values"]) if index["runs"] else []
    cols = ["run_id", *axes, "status", "diverged_step", *SUMMARY_COLUMNS]
    rows = [[r["run_id"], *(r["grid_values"].get(a) for a in axes), r["status"],
             r["diverged_step"], *(r["summary"].get(k) for k in SUMMARY_COLUMNS)]
            for r in index["runs"]]
    return cols, rows

