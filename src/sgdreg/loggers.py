"""Logger adapters: a run's logged rows mirrored to TensorBoard, Weights & Biases or MLflow.

The JSON trace stays the source of truth; a logger receives a copy of each row the engine
writes to it. One small protocol (``Logger``): ``start(run_id, config)`` once, ``log(step,
metrics)`` at every logged row (``metrics``: the row's finite numbers, see ``scalars``) and
``finish(status)`` once with the trace's final status.

Adapters, each imported lazily and each an optional extra (``pip install 'sgdreg[loggers]'``):

* ``TensorBoardLogger``: event files through ``tensorboardX`` (no TensorFlow) in
  ``<out>/tensorboard/<run_id>/``; scalars are stored as float32 (TensorBoard's format).
* ``WandbLogger``: Weights & Biases in offline mode (``WANDB_MODE=offline``; nothing is sent)
  under ``<out>/wandb/``; ``wandb sync`` uploads it later.
* ``MLflowLogger``: MLflow's file store ``file:<out>/mlruns`` (``mlflow ui --backend-store-uri
  <out>/mlruns``), one MLflow run per sgdreg run in the experiment ``sgdreg`` (MLflow ≥ 3.7
  keeps that store behind ``MLFLOW_ALLOW_FILE_STORE``, which is set to ``true`` unless set).

A logger that raises (disk full, a closed file, ...) is disabled for the rest of the run; the
run goes on and its trace records the failure in ``loggers`` (``LoggerSet.record``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError

INSTALL_HINT = "pip install 'sgdreg[loggers]'"


@runtime_checkable
class Logger(Protocol):
    """What the engine calls: ``start`` once, ``log`` at each logged row, ``finish`` once."""

    name: str

    def start(self, run_id: str, config: dict[str, Any]) -> None: ...

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, status: str) -> None: ...


_INDEX = re.compile(r"\[(\d+)\]")
_BAD = re.compile(r"[^A-Za-z0-9_./ -]")


def scalars(row: dict[str, Any], layers: Sequence[str] = ()) -> dict[str, float]:
    """The loggable values of one trace row: every finite number (booleans as 0/1) except
    ``step``; a vector metric ``layer_*`` becomes ``<name>/<layer>`` (as ``to_dataframe``),
    other vectors ``<name>/<i>``. Nulls and non-finite values are left out. Names keep to the
    characters every backend accepts (MLflow's): ``layers[0]`` → ``layers.0``, any other
    character outside ``A-Za-z0-9_./ -`` → ``_``."""
    out: dict[str, float] = {}

    def put(key, v):
        key = _BAD.sub("_", _INDEX.sub(r".\1", key))
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[key] = float(v)

    for k, v in row.items():
        if k == "step":
            continue
        if isinstance(v, list):
            named = k.startswith("layer_") and len(layers) == len(v)
            for lab, x in zip(layers if named else range(len(v)), v):
                put(f"{k}/{lab}", x)
        else:
            put(k, v)
    return out


class TensorBoardLogger:
    """TensorBoard event files via ``tensorboardX.SummaryWriter`` in ``root/tensorboard/<run_id>``
    (or ``logdir`` itself when given): one scalar per metric, tag = metric name, global step =
    the trace's ``step``. The config is written as text (tag ``config``)."""

    name = "tensorboard"
    module = "tensorboardX"

    def __init__(self, root: str | os.PathLike | None = None, *, logdir=None):
        if root is None and logdir is None:
            raise ConfigError("TensorBoardLogger: give root (the run's output folder) or logdir")
        self.root, self.logdir, self.writer = root, logdir, None

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        import json

        from tensorboardX import SummaryWriter

        d = Path(self.logdir) if self.logdir is not None else Path(self.root) / "tensorboard" / run_id
        self.dir = d
        self.writer = SummaryWriter(logdir=str(d), flush_secs=10)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)
        # tensorboardX writes from a background thread, where a failed write (a full disk)
        # would go unnoticed; flushing here raises it in the run's thread (one fsync per row)
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            w, self.writer = self.writer, None
            w.add_text("status", status, 0)
            w.close()

    def describe(self) -> dict[str, Any]:
        return {"dir": str(getattr(self, "dir", self.logdir))}


class WandbLogger:
    """Weights & Biases, offline (``mode="offline"``: nothing leaves the machine) under
    ``root/wandb/``: one W&B run per sgdreg run (name = run id, config = the trace's config),
    ``run.log(metrics, step=step)`` per row, ``run.finish(exit_code)`` (0 when the run completed,
    1 when it diverged, failed or was interrupted)."""

    name = "wandb"
    module = "wandb"
    _lock = threading.Lock()  # wandb.init is not meant to run in two threads at once

    def __init__(self, root: str | os.PathLike, *, project: str = "sgdreg", mode: str = "offline"):
        self.root, self.project, self.mode, self.run = Path(root), project, mode, None

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        import wandb

        self.root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                  x_disable_meta=True, disable_git=True, save_code=False)
        with self._lock:
            self.run = wandb.init(project=self.project, name=run_id, config=config,
                                  dir=str(self.root), mode=self.mode, reinit="create_new",
                                  settings=settings)
        self.dir = getattr(self.run, "dir", None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            with self._lock:
                run.finish(exit_code=0 if status == "completed" else 1)

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.root / "wandb"), "mode": self.mode}


class MLflowLogger:
    """MLflow tracking through ``MlflowClient`` on the file store ``file:<root>/mlruns`` (or
    ``tracking_uri``): experiment ``sgdreg``, one MLflow run per sgdreg run (run name = run id),
    the config's scalars as params, each row's metrics via ``log_batch`` at ``step``; the run
    ends FINISHED, FAILED (diverged/failed) or KILLED (interrupted)."""

    name = "mlflow"
    module = "mlflow"
    _lock = threading.Lock()  # creating the experiment: one thread at a time

    def __init__(self, root: str | os.PathLike | None = None, *, tracking_uri: str | None = None,
                 experiment: str = "sgdreg"):
        if root is None and tracking_uri is None:
            raise ConfigError("MLflowLogger: give root (the run's output folder) or tracking_uri")
        self.uri = tracking_uri or (Path(root).absolute() / "mlruns").as_uri()
        self.experiment, self.client, self.run_id = experiment, None, None

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("file:"):  # MLflow ≥ 3.7 asks to opt in to its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        with self._lock:
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        run = self.client.create_run(exp_id, run_name=run_id, tags={"sgdreg.run_id": run_id})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in config.items()
                  if v is None or isinstance(v, (str, int, float, bool))]
        if params:
            self.client.log_batch(self.run_id, params=params)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            state = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(self.run_id, status=state)

    def describe(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "mlflow_run_id": self.run_id}


ADAPTERS: dict[str, type] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger,
                             "mlflow": MLflowLogger}
#: The package each adapter needs (pip name in the ``loggers`` extra).
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow-skinny"}


def installed(name: str) -> bool:
    """Whether the package of adapter ``name`` can be imported (no import is done)."""
    mod = ADAPTERS[name].module
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def check_names(names: Sequence[str], argument: str = "loggers") -> list[str]:
    """``names`` if each is a known adapter whose package is installed; otherwise a ConfigError
    naming ``argument`` and the extra to install. Nothing is imported or created."""
    out = []
    for n in names:
        if n not in ADAPTERS:
            raise ConfigError(f"{argument}: unknown logger {n!r}; known: {', '.join(ADAPTERS)}")
        if n in out:
            raise ConfigError(f"{argument}: {n!r} is given twice")
        if not installed(n):
            raise ConfigError(f"{argument}: the {n} logger needs {PACKAGES[n]}, which is not "
                              f"installed: {INSTALL_HINT}")
        out.append(n)
    return out


def check_specs(specs, argument: str = "loggers") -> list:
    """``specs`` (a name, a comma list, or a sequence of names and ``Logger`` objects) checked:
    names by ``check_names``, objects must have ``start``/``log``/``finish``."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    elif isinstance(specs, Logger):
        specs = [specs]
    specs = list(specs)
    names = [s for s in specs if isinstance(s, str)]
    check_names(names, argument)
    for s in specs:
        if not isinstance(s, str) and not isinstance(s, Logger):
            raise ConfigError(f"{argument}: {s!r} is neither a logger name ({', '.join(ADAPTERS)}) "
                              "nor an object with name, start, log and finish")
    return specs


def resolve(specs, out_dir: str | os.PathLike | None, argument: str = "loggers") -> list:
    """Logger objects for ``specs`` (``check_specs``): a name becomes its adapter writing under
    ``out_dir`` (the run's output folder, where its trace is); objects are used as given."""
    specs = check_specs(specs, argument)
    if any(isinstance(s, str) for s in specs) and out_dir is None:
        raise ConfigError(f"{argument}: loggers given by name write beside the trace; pass "
                          "trace_path (or out_dir), or give configured logger objects")
    return [ADAPTERS[s](out_dir) if isinstance(s, str) else s for s in specs]


def _error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class LoggerSet:
    """The engine's side: calls every live logger, disables one that raises and keeps, per
    logger, a record for the trace's ``loggers`` field: ``{"status": "ok"|"failed",
    "rows": rows logged, "detail": the error, "step": the row it failed at, ...}``."""

    def __init__(self, loggers: Sequence[Logger], layers: Sequence[str] = ()):
        self.loggers = list(loggers)
        self.layers = list(layers)
        self.live = [True] * len(self.loggers)
        self.names = self._names()
        self.records: dict[str, dict[str, Any]] = {
            n: {"status": "ok", "rows": 0} for n in self.names}

    def _names(self) -> list[str]:
        names: list[str] = []
        for lg in self.loggers:
            base = str(getattr(lg, "name", None) or type(lg).__name__)
            n, i = base, 2
            while n in names:
                n, i = f"{base}-{i}", i + 1
            names.append(n)
        return names

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _call(self, i: int, what: str, step: int | None, fn, *args) -> None:
        if not self.live[i]:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a logger never stops the run
            self.live[i] = False
            rec = self.records[self.names[i]]
            rec.update(status="failed", detail=f"{what}: {_error(e)}", step=step)
            if what != "finish":
                try:  # release what it holds; its own failure is already recorded
                    self.loggers[i].finish("failed")
                except Exception:  # noqa: BLE001
                    pass

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        for i, lg in enumerate(self.loggers):
            self._call(i, "start", None, lg.start, run_id, config)
            if self.live[i] and hasattr(lg, "describe"):
                try:
                    self.records[self.names[i]].update(lg.describe())
                except Exception:  # noqa: BLE001 - a description only
                    pass

    def log(self, step: int, row: dict[str, Any]) -> None:
        metrics = scalars(row, self.layers)
        for i, lg in enumerate(self.loggers):
            self._call(i, "log", step, lg.log, step, metrics)
            if self.live[i]:
                self.records[self.names[i]]["rows"] += 1

    def finish(self, status: str) -> None:
        for i, lg in enumerate(self.loggers):
            self._call(i, "finish", None, lg.finish, status)

    def record(self) -> dict[str, dict[str, Any]]:
        """The trace's ``loggers`` field (JSON-ready)."""
        from .trace import to_json_value

        return to_json_value({n: dict(r) for n, r in self.records.items()})


__all__ = ["ADAPTERS", "INSTALL_HINT", "Logger", "LoggerSet", "MLflowLogger", "TensorBoardLogger",
           "WandbLogger", "check_names", "check_specs", "resolve", "scalars"]
