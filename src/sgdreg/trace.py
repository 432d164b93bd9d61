"""The trace of a run: strict JSON with a schema version, written atomically after each chunk.

Layout (``schema = "sgdreg.trace/1"``)::

    {"schema", "run_id", "status", "status_detail", "diverged_step", "config", "dataset",
     "versions", "device", "seed", "wall_time_s", "num_params", "layers",
     "probes": {name: definition}, "summary": {...},
     "metrics": {"step": [...], "t": [...], "<metric>": [... one value or null per row ...]}}

``metrics`` is columnar: one row per logged step; a metric not measured at a row is ``null``.
Vector metrics (every ``layer_*`` metric: ``layer_norms``, ``layer_hessian_traces`` and
``layer_hessian_traces_stderr``) hold a list per row, named by ``layers``. Non-finite numbers
are written as ``null`` and ``status``/``status_detail`` say why. The file is rewritten
atomically as rows arrive (at most once a second, and at every status change), so a crash loses
at most the last second of rows and a reader never sees a partial file.

Every trace written by ``TraceWriter`` also carries ``"writer": {"pid", "host", "started",
"heartbeat"}`` (ISO-8601 UTC times; ``heartbeat`` refreshed at every write), kept in finished
traces as provenance. ``is_stale`` uses it to recognise a ``running`` trace whose writer died
(killed, crashed machine). Traces written before this field existed stay valid.

A run with logger adapters (``sgdreg.loggers``: TensorBoard, W&B, MLflow) also carries
``"loggers": {name: {"status": "ok"|"failed", "rows", "detail", "step", ...}}``: how many rows
each received and, for one that raised (and was then disabled), the error and the row's step.
Optional: traces without it stay valid.

Reading is strict (``load_trace``/``validate_trace``): ``NaN``/``Infinity`` literals, a field of
the wrong type (``config`` not an object, ``seed`` not an integer, a metric value that is not a
number, null or list, ...) make a ``TraceError`` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "sgdreg.trace/1"
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
REQUIRED = ("schema", "run_id", "status", "config", "versions", "device", "seed", "metrics")


from ._optional import require  # noqa: E402
from .errors import TraceError  # noqa: F401,E402
from .jsonio import field_problems, load_json  # noqa: E402

#: Top-level field kinds (``jsonio.KINDS``; ``?``: null allowed) checked when present.
FIELD_KINDS = {
    "schema": "str", "run_id": "str", "status": "str", "status_detail": "str?",
    "diverged_step": "nonneg_int?", "config": "object", "dataset": "object?",
    "versions": "object", "device": "object", "seed": "int", "wall_time_s": "number?",
    "num_params": "nonneg_int?", "layers": "str_list?", "probes": "object", "summary": "object",
    "provenance": "object?", "sweep": "object?", "writer": "object", "loggers": "object?",
}
#: Each entry of ``loggers`` (one per logger adapter of the run, ``sgdreg.loggers``).
LOGGER_KINDS = {"status": "str", "rows": "nonneg_int", "detail": "str?", "step": "nonneg_int?"}
WRITER_KINDS = {"pid": "int", "host": "str", "started": "str", "heartbeat": "str"}
#: A ``running`` trace written on another host is stale once its heartbeat is this old (its
#: pid cannot be checked from here); generous: a heartbeat is refreshed at every write.
STALE_AFTER_S = 3600.0
#: A live process that started this long after the writer did cannot be the writer (pid reuse).
PID_REUSE_SLACK_S = 60.0


def utc_now() -> str:
    """Now as ISO-8601 UTC, to the second (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_time(text: Any) -> float | None:
    """Epoch seconds of an ISO-8601 time (naive means UTC); None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def writer_info() -> dict[str, Any]:
    """The ``writer`` record of this process: pid, host, start and heartbeat times."""
    now = utc_now()
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": now, "heartbeat": now}


def to_json_value(v: Any) -> Any:
    """Strict-JSON form: arrays to lists, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json_value(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return to_json_value(np.asarray(v).tolist())
    if isinstance(v, float) or isinstance(v, np.floating):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``);
    otherwise set-and-restore, which is what ``os.umask`` offers."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers see the old file or
    the new one, never half of one (traces, checkpoints, indexes all go through here).

    Permissions are those of a plain ``open(path, "w")``: an existing file keeps its mode, a new
    one gets ``0o666 & ~umask`` (``mkstemp`` alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(to_json_value(obj), allow_nan=False, indent=indent))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("sgdreg", "jax", "jaxlib", "equinox", "optax", "diffrax", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def device_info() -> dict[str, Any]:
    import jax

    devs = jax.devices()
    return {"platform": devs[0].platform, "kind": devs[0].device_kind, "count": len(devs)}


class TraceWriter:
    """Accumulates rows and rewrites the trace file atomically on ``flush``."""

    def __init__(self, path: str | os.PathLike | None, header: dict[str, Any],
                 min_interval_s: float = 1.0):
        self.path = Path(path) if path is not None else None
        self.min_interval_s = min_interval_s
        self._last_write = -math.inf
        self.doc = {"schema": SCHEMA, "status": "running", "status_detail": None,
                    "diverged_step": None, "probes": {}, "summary": {}, **header,
                    "writer": writer_info()}
        self.rows: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: to_json_value(v) for k, v in row.items()})

    def update_last(self, values: dict[str, Any]) -> None:
        self.rows[-1].update({k: to_json_value(v) for k, v in values.items()})

    def finish(self, status: str, detail: str | None = None, **fields) -> dict:
        assert status in STATUSES, status
        self.doc.update(status=status, status_detail=detail, **fields)
        self.flush(force=True)
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        names: list[str] = []
        for r in self.rows:
            names.extend(k for k in r if k not in names)
        return {**self.doc, "metrics": {k: [r.get(k) for r in self.rows] for k in names}}

    def flush(self, force: bool = False) -> None:
        """Rewrite the file atomically; between forced writes at most every ``min_interval_s``
        seconds (rewriting a long trace after every short chunk would dominate the run)."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._last_write < self.min_interval_s):
            return
        self.doc["writer"]["heartbeat"] = utc_now()
        atomic_write_json(self.path, self.to_dict(), indent=None)
        self._last_write = now


def last_value(column: Any) -> Any:
    """The last non-null scalar of a metric column (probes log at their own cadence; vector
    metrics are skipped), None if there is none."""
    return next((v for v in reversed(column or []) if v is not None and not isinstance(v, list)),
                None)


def _metric_value_ok(v: Any) -> bool:
    """A metric cell: a number, a boolean (``lambda_max_converged``), null, or a (nested) list
    of them (vector metrics)."""
    if v is None or isinstance(v, (int, float)):
        return True
    return isinstance(v, list) and all(_metric_value_ok(x) for x in v)


def _metrics_problems(metrics: Any) -> list[str]:
    if not isinstance(metrics, dict) or "step" not in metrics:
        return ["metrics must be an object with a 'step' column"]
    bad_cols = [k for k, v in metrics.items() if not isinstance(v, list)]
    if bad_cols:
        return [f"every metrics column must be a list (metrics.{bad_cols[0]} is not)"]
    problems = []
    lengths = {k: len(v) for k, v in metrics.items()}
    if len(set(lengths.values())) > 1:
        problems.append(f"metrics columns differ in length: {lengths}")
    steps = metrics["step"]
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in steps) \
            or any(a > b for a, b in zip(steps, steps[1:])):
        problems.append("metrics.step must be increasing integers >= 0")
    for name, col in metrics.items():
        if name == "step":
            continue
        row = next((i for i, v in enumerate(col) if not _metric_value_ok(v)), None)
        if row is not None:
            problems.append(f"metrics.{name}[{row}] is {col[row]!r}: expected a number, boolean, "
                            "null or a list of them")
    return problems


def validate_trace(doc: Any) -> list[str]:
    """Problems found in a loaded trace (empty list: valid): required fields, the type of every
    known field, the status, the metrics columns (equal-length lists of numbers, booleans, nulls or lists;
    ``step`` non-decreasing integers) and the ``writer`` record when present."""
    if not isinstance(doc, dict):
        return ["top level is not a JSON object"]
    problems = [f"missing field {k!r}" for k in REQUIRED if k not in doc]
    problems += field_problems(doc, FIELD_KINDS)
    if isinstance(doc.get("schema"), str) and doc["schema"] != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    if isinstance(doc.get("status"), str) and doc["status"] not in STATUSES:
        problems.append(f"status {doc['status']!r} not one of {', '.join(STATUSES)}")
    if "metrics" in doc:
        problems += _metrics_problems(doc["metrics"])
    if doc.get("status") == "diverged" and doc.get("diverged_step") is None:
        problems.append("status 'diverged' without diverged_step")
    writer = doc.get("writer")
    if isinstance(writer, dict):
        wp = field_problems(writer, WRITER_KINDS, required=tuple(WRITER_KINDS), prefix="writer.")
        if not wp and writer["pid"] <= 0:
            wp.append(f"writer.pid is {writer['pid']}, expected a process id > 0")
        wp += [f"writer.{k} is {writer[k]!r}, expected an ISO-8601 time"
               for k in ("started", "heartbeat")
               if isinstance(writer.get(k), str) and parse_time(writer[k]) is None]
        problems += wp
    logs = doc.get("loggers")
    if isinstance(logs, dict):
        for name, rec in logs.items():
            if not isinstance(rec, dict):
                problems.append(f"loggers.{name} is {rec!r}, expected an object")
            else:
                problems += field_problems(rec, LOGGER_KINDS, required=("status",),
                                           prefix=f"loggers.{name}.")
    return problems


def _pid_state(pid: int) -> tuple[bool, float | None]:
    """(alive, start time in epoch seconds or None) of process ``pid`` on this host. A zombie
    counts as dead; the start time comes from ``/proc`` (Linux) and is None elsewhere."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass  # another user's process: alive
    except OSError:
        return False, None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            return False, None
        btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                     .splitlines() if line.startswith("btime"))
        return True, btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True, None


def is_stale(doc: Any, *, now: float | None = None,
             max_age_s: float = STALE_AFTER_S) -> str | None:
    """Why a ``running`` trace's writer is known to be gone, or None (not running, alive, or
    unknown: a trace without a ``writer`` record).

    On the writer's host: its pid is not running (or is a zombie, or belongs to a process
    started after the writer: a reused pid). On another host: the heartbeat is older than
    ``max_age_s`` (``STALE_AFTER_S``, one hour; the heartbeat is refreshed at every write)."""
    if not isinstance(doc, dict) or doc.get("status") != "running":
        return None
    w = doc.get("writer")
    if not isinstance(w, dict) or field_problems(w, WRITER_KINDS, tuple(WRITER_KINDS)):
        return None
    pid, host = w["pid"], w["host"]
    if host == socket.gethostname() and pid > 0:
        alive, started_at = _pid_state(pid)
        if not alive:
            return f"writer pid {pid} is not running (trace left at 'running')"
        began = parse_time(w["started"])
        if started_at is not None and began is not None and \
                started_at > began + PID_REUSE_SLACK_S:
            return f"writer pid {pid} is not running (the pid now belongs to a later process)"
        return None
    beat = parse_time(w["heartbeat"])
    if beat is None:
        return None
    age = (time.time() if now is None else now) - beat
    if age > max_age_s:
        return (f"writer pid {pid} on host {host} last wrote {age / 60:.0f} min ago "
                f"(heartbeat {w['heartbeat']})")
    return None


def _read_json(path: Path, what: str = "trace") -> Any:
    return load_json(path, what, error=TraceError)


def load_trace(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a trace; TraceError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"no trace file at {path}")
    return _checked(path, _read_json(path))


def _checked(path: Path, doc: Any) -> dict[str, Any]:
    """``doc`` read from ``path`` if it is a valid trace; TraceError naming the file otherwise."""
    problems = validate_trace(doc)
    if problems:
        raise TraceError(f"{path} is not a valid sgdreg trace: {'; '.join(problems)}")
    return doc


def to_dataframe(trace: dict | str | os.PathLike):
    """Long-form pandas DataFrame: one row per (step, metric[, component]) with the run's
    optimizer, lr, seed and run_id as columns; vector metrics become ``name/component``.

    Example: ``sgdreg.to_dataframe("runs/gd.json").query("metric == 'train_loss'")``."""
    pd = require("pandas", "plot", "sgdreg.to_dataframe")

    doc = load_trace(trace) if not isinstance(trace, dict) else trace
    cfg = doc.get("config", {})
    cols = doc["metrics"]
    layers = doc.get("layers") or []
    records = []
    for i, step in enumerate(cols["step"]):
        t = cols.get("t", [None] * len(cols["step"]))[i]
        for name, values in cols.items():
            if name in ("step", "t"):
                continue
            v = values[i]
            if isinstance(v, list):
                named = name.startswith("layer_") and len(layers) == len(v)
                labels = layers if named else range(len(v))
                for lab, x in zip(labels, v):
                    if x is None or isinstance(x, (int, float)):
                        records.append((step, t, f"{name}/{lab}", x))
            elif v is None or isinstance(v, (int, float)):
                records.append((step, t, name, v))
    df = pd.DataFrame.from_records(records, columns=["step", "t", "metric", "value"])
    df["value"] = df["value"].astype(float)
    for key in ("optimizer", "lr", "seed", "batch_size", "dataset", "model"):
        df[key] = cfg.get(key)
    df["run_id"] = doc.get("run_id")
    df["status"] = doc.get("status")
    return df


def _scan(folder: Path) -> list[tuple[Path, dict]]:
    """(path, validated trace) for every JSON file under ``folder`` whose ``schema`` is the trace
    schema; other JSON (``summary.json``, sweep indexes) is skipped; none at all is an error."""
    if not folder.is_dir():
        raise TraceError(f"no folder at {folder}")
    found = []
    for path in sorted(folder.rglob("*.json")):
        doc = _read_json(path, "JSON file")
        if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
            found.append((path, _checked(path, doc)))
    if not found:
        raise TraceError(f"no sgdreg traces (schema {SCHEMA}) under {folder}")
    return found


def find_traces(paths: str | os.PathLike | list) -> list[tuple[Path, dict]]:
    """(path, validated trace) for each path: a file must be a trace (``load_trace``); a folder
    contributes every trace under it, recursively, skipping JSON that is not a trace."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out = []
    for p in map(Path, items):
        out.extend(_scan(p) if p.is_dir() else [(p, load_trace(p))])
    return out


def load_traces(directory: str | os.PathLike | list):
    """One long-form DataFrame (``to_dataframe`` rows, ``run_id`` column) over every trace JSON
    under ``directory`` (recursively: flat ``compare`` folders and sweep ``traces/`` alike; a list
    of folders and trace files is accepted too).

    JSON files that are not traces (``summary.json``, sweep indexes, ...) are skipped; a file
    that is not JSON, or claims the trace schema but does not validate, is a ``TraceError``, as
    is a folder with no trace at all.

    Example:
        >>> df = sgdreg.load_traces("runs")                                 # doctest: +SKIP
        >>> df[df.metric == "lambda_max"].pivot(index="step", columns="run_id", values="value")
    """
    pd = require("pandas", "plot", "sgdreg.load_traces")

    if isinstance(directory, (str, os.PathLike)) and not Path(directory).is_dir():
        raise TraceError(f"no folder at {directory}")
    frames = [to_dataframe(doc) for _, doc in find_traces(directory)]
    return pd.concat(frames, ignore_index=True)


PARQUET_SUFFIXES = (".parquet", ".pq")


def parquet_engine() -> str | None:
    """The installed pandas parquet engine (``pyarrow`` or ``fastparquet``), or None."""
    import importlib.util

    return next((m for m in ("pyarrow", "fastparquet") if importlib.util.find_spec(m)), None)


def write_table(df, path: str | os.PathLike) -> Path:
    """Write a DataFrame atomically: parquet for ``.parquet``/``.pq`` (needs pyarrow or
    fastparquet: ``pip install 'sgdreg[parquet]'``), CSV otherwise."""
    import io

    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        engine = parquet_engine()
        if engine is None:
            raise TraceError(f"writing {path.name} needs pyarrow or fastparquet "
                             "(pip install 'sgdreg[parquet]'); or write a .csv file")
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, engine=engine)
        atomic_write_bytes(path, buf.getvalue())
    else:
        atomic_write_text(path, df.to_csv(index=False))
    return path
