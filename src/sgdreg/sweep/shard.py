"""Sweeps across processes: ``sgdreg sweep GRID --out DIR --shard i/N`` (``run_sweep(...,
shard=(i, N))``) runs a deterministic slice of the grid; any number of shards, in any processes
or on any hosts sharing ``DIR``, may run at once, be killed and be rerun (the Slurm-array or
submitit pattern). ``sgdreg sweep GRID --out DIR --status`` (``sweep_status``) merges what the
shards committed.

The rule (``assignment``). Each run's key is the sha256 of its config (``config_hash``: the
``RunConfig`` as canonical JSON, keys sorted); the runs sorted by (key, grid index) are dealt
round-robin: the run at position p of that order belongs to shard p mod N. Shards differ in size
by at most one run, a shard's runs are spread over the grid (so its groups cost about the same
as the others'), and the slice depends on the grid and N only. Within a shard, runs are grouped
as in the whole sweep (``plan.Group``, with the whole group's size: the default block and
whether the data are shared are those of the unsharded sweep), so a run's numbers are those of
the unsharded sweep bit for bit (tested).

Layout (next to the unsharded files ``traces/``, ``models/``, ``sweep.json``, ``summary.csv``)::

    shards.json                       manifest: grid, grid hash, N, --block, each run's config
                                      hash and shard; created once, atomically (link(2) of a
                                      complete temp file: the first shard wins, the others check
                                      that they agree)
    shards/<i>-of-<N>/.sgdreg.lock    shard i's writer lock (one live process per shard)
    shards/<i>-of-<N>/checkpoints/    shard i's commits: group-NNN.json, .rows.jsonl, .cKKKKK.eqx
                                      (the unsharded sweep's commit protocol, per shard)
    shards/.index.lock                flock held while the index is merged and written
    traces/<run_id>.json              written only by the run's shard (atomic renames)

Each run is owned by exactly one shard, so no two processes ever write one file, except the
index and the table: those are views of every shard's commits, rebuilt (``merge_index``) under
an exclusive ``flock`` after each of a shard's view updates (a group finished, or every
``run.VIEW_EVERY_S``). A commit precedes its shard's merge, so the last merge reads every commit
made before it: no run is lost, none counted twice, and no file is ever seen half-written (every
write is a rename). The index is written only when it changes, so rerunning a finished shard
changes no file. A shard killed anywhere (SIGKILL included) leaves its last commit; rerunning it
continues from there (``resume`` is implied for a shard) and skips finished groups.

Checks before anything is written (``ConfigError``, one line; the CLI exits with code 2): a shard
spec outside 0 ≤ i < N, another N, another grid (its hash) or another ``--block`` than the
manifest's, an unsharded sweep in ``DIR``; an unsharded sweep refuses a directory holding
``shards.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError
from ..config import ConfigError, RunConfig
from ..jsonio import load_checked, load_json
from ..trace import atomic_write_text, to_json_value
from .grid import Grid
from .plan import Group, Plan, Run, plan_sweep
from .run import INDEX_SCHEMA, MANIFEST, load_commit, write_table

MANIFEST_SCHEMA = "sgdreg.sweep-shards/1"
MANIFEST_SPEC = {"schema": "str", "num_shards": "int", "grid_hash": "str", "grid": "object",
                 "block": "int?", "runs": "list"}
INDEX_LOCK = ".index.lock"
RULE = ("runs sorted by (sha256 of the config as canonical JSON, grid index); the run at "
        "position p belongs to shard p mod N")
FINISHED = ("completed", "diverged", "failed")

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: merges are not serialised)
    fcntl = None


# ---------------------------------------------------------------- the rule


def check_shard(shard: Any) -> tuple[int, int]:
    """``(i, N)`` checked: integers with N ≥ 1 and 0 ≤ i < N (``ConfigError`` otherwise)."""
    ok = (isinstance(shard, (tuple, list)) and len(shard) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in shard))
    if not ok:
        raise ConfigError(f"shard must be a pair (i, N) of integers, got {shard!r}")
    i, n = shard
    if n < 1:
        raise ConfigError(f"--shard {i}/{n}: N (the number of shards) must be ≥ 1")
    if not 0 <= i < n:
        raise ConfigError(f"--shard {i}/{n}: need 0 ≤ i < N (shards 0/{n} … {n - 1}/{n})")
    return int(i), int(n)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` → ``(i, N)`` (``ConfigError`` for anything else or i, N out of range)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard {text}: expected i/N with integers 0 ≤ i < N, e.g. 0/8")
    return check_shard((int(m[1]), int(m[2])))


def _canonical(obj: Any) -> bytes:
    return json.dumps(to_json_value(obj), sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode()


def config_hash(config: RunConfig | Mapping[str, Any]) -> str:
    """sha256 (hex) of a run's config as canonical JSON (keys sorted, no spaces)."""
    d = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    return hashlib.sha256(_canonical(d)).hexdigest()


def grid_hash(grid: Grid) -> str:
    """sha256 (hex) of the grid (name, base and axes, or the list of configs)."""
    return hashlib.sha256(_canonical(grid.to_dict())).hexdigest()


def assignment(plan: Plan, num_shards: int) -> list[int]:
    """The shard of every run (grid order): see the module docstring."""
    order = sorted(plan.runs, key=lambda r: (config_hash(r.config), r.index))
    shard_of = [0] * len(plan.runs)
    for pos, r in enumerate(order):
        shard_of[r.index] = pos % num_shards
    return shard_of


def shard_plan(plan: Plan, i: int, n: int, shard_of: Sequence[int] | None = None) -> Plan:
    """Shard i of n of ``plan``: every run (addressed by grid index), the groups restricted to
    this shard's runs (groups without any dropped), each keeping its id, whether its data are
    shared and its whole size (the default block)."""
    shard_of = assignment(plan, n) if shard_of is None else shard_of
    groups = []
    for g in plan.groups:
        mine = [k for k in g.runs if shard_of[k] == i]
        if mine:
            groups.append(Group(g.id, g.kind, mine, g.shared_data,
                                full_size=g.full_size or len(g.runs)))
    return Plan(plan.grid, plan.runs, groups, plan.datasets)


def shard_dir(out: str | os.PathLike, i: int, n: int) -> Path:
    return Path(out) / "shards" / f"{i}-of-{n}"


# ---------------------------------------------------------------- the manifest


def read_manifest(out: str | os.PathLike) -> dict | None:
    """``out/shards.json`` checked (None: no shard has started there)."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    return load_checked(path, "sweep shard manifest", MANIFEST_SPEC, schema=MANIFEST_SCHEMA,
                        error=CheckpointError)


def _block_text(b: int | None) -> str:
    return "default" if b is None else str(b)


def check_manifest(out: str | os.PathLike, plan: Plan, n: int, block: int | None) -> dict | None:
    """The manifest of ``out`` if shard N = ``n`` of ``plan``'s grid with ``block`` may join it
    (None: no shard has started); ``ConfigError`` (one line) otherwise. Writes nothing."""
    out = Path(out)
    m = read_manifest(out)
    if m is None:
        if (out / "sweep.json").exists():
            raise ConfigError(f"{out} holds a sweep run without --shard; continue it with "
                              "--resume (without --shard) or choose another --out")
        return None
    if m["num_shards"] != n:
        raise ConfigError(f"--shard i/{n}: the sweep in {out} is split into N = "
                          f"{m['num_shards']} shards ({MANIFEST}); use i/{m['num_shards']} or "
                          "another --out")
    if m["grid_hash"] != grid_hash(plan.grid):
        raise ConfigError(f"the grid differs from the one the shards in {out} started with "
                          f"(grid hash {m['grid_hash'][:12]}…, {MANIFEST}); use the same grid "
                          "file or another --out")
    if m["block"] != block:
        raise ConfigError(f"--block {_block_text(block)}: the shards in {out} run with --block "
                          f"{_block_text(m['block'])} (a run's numbers depend on it); give the "
                          "same --block (or none, for default)")
    return m


def ensure_manifest(out: str | os.PathLike, plan: Plan, n: int, block: int | None) -> dict:
    """The manifest of ``out``, created by the first shard (atomically: a complete temp file
    hard-linked to ``shards.json``, which fails if another shard created it first; then that
    one is checked). ``ConfigError`` as ``check_manifest``."""
    out = Path(out)
    found = check_manifest(out, plan, n, block)
    if found is not None:
        return found
    shard_of = assignment(plan, n)
    doc = {"schema": MANIFEST_SCHEMA, "name": plan.grid.name, "num_shards": n,
           "rule": RULE, "grid_hash": grid_hash(plan.grid),
           "grid": to_json_value(plan.grid.to_dict()), "block": block,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "runs": [{"index": r.index, "run_id": r.run_id, "config_hash": config_hash(r.config),
                     "shard": shard_of[r.index]} for r in plan.runs]}
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{MANIFEST}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc, allow_nan=False, indent=1).encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, out / MANIFEST)
        except FileExistsError:  # another shard was first: it must agree
            return check_manifest(out, plan, n, block)  # type: ignore[return-value]
    finally:
        os.unlink(tmp)
    return doc


def clean_run_temps(out: Path, runs: Sequence[Run]) -> None:
    """Temp files of the atomic writers left by a killed writer of these runs' traces and models
    (only their shard writes them; call it holding the shard's lock)."""
    for r in runs:
        for folder, name in (("traces", f"{r.run_id}.json"), ("models", f"{r.run_id}.eqx")):
            for p in (out / folder).glob(f".{glob_escape(name)}.*.tmp"):
                p.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------- merging


@contextlib.contextmanager
def _index_lock(out: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``out/shards/.index.lock`` (released by the kernel if we die)."""
    path = out / "shards" / INDEX_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _live(d: Path) -> bool:
    """Whether a live process holds the writer lock of ``d`` (another process's or ours)."""
    from .. import locking
    from ..errors import LockError

    if not (d / locking.LOCK_NAME).exists():
        return False
    if locking.holding() and any(Path(os.path.abspath(d)) == p for p in locking._held):
        return True
    try:
        locking.check_unlocked(d)
    except LockError:
        return True
    return False


def _columns(rows: list[dict]) -> dict[str, list]:
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    return {k: [r.get(k) for r in rows] for k in names}


def merged_index(out: str | os.PathLike, plan: Plan, manifest: dict | None,
                 own: int | None = None, own_live: bool = True) -> dict:
    """The index of what is committed in ``out``: every shard's commits (``manifest``) or the
    unsharded sweep's (None), read, never written. A run is ``pending`` (no commit), ``running``
    (committed, its writer alive), ``interrupted`` (committed, unfinished, no live writer) or as
    committed (completed, diverged, failed); summaries come from the committed rows. ``own``:
    the shard this process runs (alive unless ``own_live`` is false: it is stopping)."""
    from ..training import summarize

    out = Path(out)
    n = manifest["num_shards"] if manifest else 1
    shard_of = assignment(plan, n) if manifest else [0] * len(plan.runs)
    parts = ([(k, shard_plan(plan, k, n, shard_of), shard_dir(out, k, n)) for k in range(n)]
             if manifest else [(None, plan, out)])
    info: dict[int, dict] = {}
    group_parts: dict[int, list] = {g.id: [] for g in plan.groups}
    shards, wall = [], 0.0
    for k, part, root in parts:
        live = own_live if (k == own and own is not None) else _live(root)
        counts = {"runs": 0, "finished": 0}
        started = False
        for g in part.groups:
            meta, rows = load_commit(root, g, check_state=False)
            group_parts[g.id].append({"shard": k, "runs": len(g.runs),
                                      "step": meta and meta["step"],
                                      "finished": bool(meta and meta["finished"])})
            started |= meta is not None
            wall += meta["wall_time_s"] if meta else 0.0
            for j, i in enumerate(g.runs):
                rs = meta["run_status"][j] if meta else {"status": "pending", "detail": None,
                                                         "diverged_step": None}
                status, detail = rs["status"], rs["detail"]
                if status == "running" and not live:
                    status = "interrupted"
                    detail = (f"shard {k}/{n} stopped; rerun it to continue" if manifest else
                              "sweep stopped; continue it with --resume")
                info[i] = {"status": status, "status_detail": detail,
                           "diverged_step": rs["diverged_step"],
                           "step": rows[i][-1]["step"] if rows[i] else None,
                           "summary": summarize({"metrics": _columns(rows[i]), "probes": {}})
                           if rows[i] else {}}
                counts["runs"] += 1
                counts["finished"] += status in FINISHED
        state = ("completed" if counts["finished"] == counts["runs"] else
                 "running" if live else "interrupted" if started else "pending")
        shards.append({"shard": k, "status": state, **counts,
                       "dir": str(root.relative_to(out)) if manifest else "."})
    runs = []
    for r in plan.runs:
        runs.append({"index": r.index, "run_id": r.run_id, "group": r.group,
                     "shard": shard_of[r.index] if manifest else None,
                     "config_hash": config_hash(r.config), "grid_values": r.overrides,
                     "trace": f"traces/{r.run_id}.json", "config": r.config, **info[r.index]})
    groups = []
    for g in plan.groups:
        ps = group_parts[g.id]
        groups.append({"id": g.id, "kind": g.kind, "runs": g.runs, "size": len(g.runs),
                       "shared_data": g.shared_data,
                       "steps": plan.runs[g.runs[0]].cfg.steps,
                       "status": "completed" if all(p["finished"] for p in ps) else
                       "pending" if all(p["step"] is None for p in ps) else "running",
                       "parts": ps})
    done = all(r["status"] in FINISHED for r in runs)
    status = ("completed" if done else
              "running" if any(s["status"] == "running" for s in shards) else "incomplete")
    return {"schema": INDEX_SCHEMA, "name": plan.grid.name, "status": status,
            "grid": to_json_value(plan.grid.to_dict()), "num_runs": len(plan.runs),
            "sharding": {"num_shards": n, "rule": RULE} if manifest else None,
            "counts": {s: sum(r["status"] == s for r in runs)
                       for s in ("completed", "diverged", "failed", "running", "interrupted",
                                 "pending") if any(r["status"] == s for r in runs)},
            "shards": shards, "wall_time_s": wall, "groups": groups, "runs": runs}


def merge_index(out: str | os.PathLike, plan: Plan, *, own: int | None = None,
                own_live: bool = True, write: bool = True) -> dict:
    """Rebuild ``out/sweep.json`` and ``out/summary.csv`` from every shard's commits under the
    index lock (written only when they change; left-over temp files of an earlier merger
    removed first). ``write=False``: only the index."""
    out = Path(out)
    manifest = read_manifest(out)
    if not write:
        return merged_index(out, plan, manifest, own, own_live)
    with _index_lock(out):
        for name in ("sweep.json", "summary.csv"):  # only mergers write these, one at a time
            for p in out.glob(f".{name}.*.tmp"):
                p.unlink(missing_ok=True)
        index = merged_index(out, plan, manifest, own, own_live)
        path = out / "sweep.json"
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != index:
            atomic_write_text(path, json.dumps(index, allow_nan=False))
            write_table(out, index)
    return index


def sweep_status(grid: Grid | Mapping | str | os.PathLike | Sequence[RunConfig],
                 out_dir: str | os.PathLike) -> dict:
    """The merged index of the sweep in ``out_dir`` (sharded or not), from its commits; writes
    nothing. ``ConfigError``: no sweep there, or one of another grid."""
    out = Path(out_dir)
    plan = plan_sweep(grid)
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest["grid_hash"] != grid_hash(plan.grid):
            raise ConfigError(f"the grid differs from the one the shards in {out} run "
                              f"({MANIFEST}); pass the same grid file")
        return merged_index(out, plan, manifest)
    index = out / "sweep.json"
    if not index.is_file() and not (out / "checkpoints").is_dir():
        raise ConfigError(f"{out}: no sweep there (neither sweep.json nor {MANIFEST})")
    if index.is_file():
        old = load_json(index, "sweep index", error=CheckpointError)
        if not isinstance(old, dict) or old.get("grid") != to_json_value(plan.grid.to_dict()):
            raise ConfigError(f"the grid differs from the one of the sweep in {out}; pass the "
                              "same grid file")
    return merged_index(out, plan, None)
