"""The one engine: compiled chunks of any dynamics, probes between them, a trace after each.

``advance`` is the single compiled program: ``dynamics.advance`` over n steps, then the cheap
metrics at the new iterate; numeric hyper-parameters are traced, so a new lr shares the
compilation. ``execute`` alternates

    ``advance`` (one jit)  →  host: expensive probes, divergence check, trace row, atomic write,

and ``sweep`` vmaps/shards the same ``advance`` over runs. ``TRACE_COUNTS["advance"]`` counts
compilations (the tests assert it).

Stopping. ``STOP`` (a ``threading.Event``) asks every running ``execute`` (and sweep) to stop:
each checks it before its first chunk and after every chunk and then finishes its trace as
``interrupted`` (0 rows allowed) and raises ``KeyboardInterrupt``. The CLI's SIGINT/SIGTERM
handlers only set it (``request_stop``), so no exception is ever raised inside tracing or XLA;
runs register an abort hook (``stoppable``) that marks their trace ``interrupted`` when a second
signal ends the process at once (``abort_all``). A plain ``KeyboardInterrupt`` (Python's default
Ctrl-C handler, outside the CLI) is caught the same way.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .batching import full_batch_hvp, full_batch_value_and_grad, ghost_value_and_grad, is_host
from .dynamics import AbstractDynamics, Data, Hyper, TrainState, epoch_permutation
from .errors import ConfigError
from .losses import Objective
from .probes import Probe, ProbeContext, cheap_metrics
from .trace import TraceWriter

TRACE_COUNTS: Counter = Counter()

STOP = threading.Event()  # set: every run stops at its next chunk boundary as 'interrupted'
_stop_signal: list[int] = []  # the signal that set STOP (SIGINT, SIGTERM), if any
_abort_hooks: dict[int, Callable[[], None]] = {}
_hooks_lock = threading.Lock()
_hook_ids = itertools.count()
INTERRUPTED: list = []  # trace paths this process marked 'interrupted' (for the CLI's message)


def request_stop(signum: int | None = None) -> None:
    """Ask every running ``execute``/sweep to stop at its next chunk boundary."""
    if signum is not None and not _stop_signal:
        _stop_signal.append(signum)
    STOP.set()


def stop_signal() -> int | None:
    """The signal number that requested the stop (None: none, or not by a signal)."""
    return _stop_signal[0] if _stop_signal else None


def reset_stop() -> None:
    """Clear ``STOP``, the recorded signal and ``INTERRUPTED`` (the CLI, per invocation)."""
    STOP.clear()
    _stop_signal.clear()
    INTERRUPTED.clear()


def stop_detail() -> str:
    import signal

    sig = stop_signal()
    if sig is None or sig == signal.SIGINT:
        return "stopped by the user (Ctrl-C)"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return f"stopped by {name}"


@contextmanager
def stoppable(on_abort: Callable[[], None]) -> Iterator[None]:
    """Register ``on_abort`` (marks this writer's outputs 'interrupted') while the body runs:
    a run that honours ``STOP``. ``abort_all`` calls the hooks of every registered run."""
    token = next(_hook_ids)
    with _hooks_lock:
        _abort_hooks[token] = on_abort
    try:
        yield
    finally:
        with _hooks_lock:
            _abort_hooks.pop(token, None)


@contextmanager
def stop_scope() -> Iterator[None]:
    """Mark the body as the set-up of a run that will honour ``STOP`` (its ``execute`` checks it
    before the first chunk): a signal while building the model or data then leaves an
    ``interrupted`` trace with 0 rows instead of raising inside the set-up."""
    with stoppable(lambda: None):
        yield


def stoppable_running() -> bool:
    """Whether a run that honours ``STOP`` is running (the CLI's handler then only sets it)."""
    with _hooks_lock:
        return bool(_abort_hooks)


def abort_all() -> None:
    """Mark the outputs of every running run 'interrupted' now (the process is about to end)."""
    with _hooks_lock:
        hooks = list(_abort_hooks.values())
    for fn in hooks:
        try:
            fn()
        except Exception:  # best effort: the process ends next
            pass


class _Stopped(KeyboardInterrupt):
    """``STOP`` was seen at a chunk boundary."""


def check_stop() -> None:
    """Raise KeyboardInterrupt (``_Stopped``) if ``STOP`` is set."""
    if STOP.is_set():
        raise _Stopped


class _Writer(TraceWriter):
    """A trace writer whose metrics always have the ``step`` and ``t`` columns (a run stopped
    before its first row has a valid trace with 0 rows)."""

    def to_dict(self) -> dict[str, Any]:
        doc = super().to_dict()
        if "step" not in doc["metrics"]:
            doc["metrics"] = {"step": [], "t": [], **doc["metrics"]}
        return doc


class Problem(eqx.Module):
    """What to optimise and how: the objective, the dynamics, the evaluation chunk size and,
    for a BatchNorm/dropout model, the ghost batch size G of its training-mode batches (None:
    a batch is one forward; docs/science.md#batchnorm-and-dropout)."""

    objective: Objective
    dynamics: AbstractDynamics
    eval_chunk: int = eqx.field(static=True, default=4096)
    ghost_batch: int | None = eqx.field(static=True, default=None)

    @property
    def full_batch(self) -> bool:
        return self.dynamics.full_batch

    @property
    def batch_size(self) -> int | None:
        return self.dynamics.batch_size

    def at(self, model_state) -> Problem:
        """This problem with the objective's BatchNorm statistics set to ``model_state``."""
        if not self.objective.stateful:
            return self
        return eqx.tree_at(lambda p: p.objective, self, self.objective.with_state(model_state))

    def training_gradient(self, params, model_state, x, y, key, mu, egr: bool):
        """(L̂, ∇, new model state) of the training objective on the batch (x, y), plus μ‖∇L̂‖²
        when ``egr``: gradient g + 2μ·Hg. A deterministic, stateless model is evaluated in
        chunks (memory of one chunk); a stateful or stochastic one in training mode: in one
        vmap (BatchNorm batch statistics over the whole batch, one dropout key per example),
        or, with ``ghost_batch`` G and more than G rows (or host data), in ghost batches of G
        rows (``batching.ghost_value_and_grad``; no EGR)."""
        obj = self.objective
        if not (obj.stateful or obj.stochastic):
            loss, g = full_batch_value_and_grad(obj.example_loss, params, x, y, self.eval_chunk)
            if egr:
                hg = full_batch_hvp(obj.example_loss, params, x, y, g, self.eval_chunk)
                g = jax.tree.map(lambda a, b: a + 2 * mu * b, g, hg)
            return loss, g, model_state
        if self.ghost_batch is not None and (x.shape[0] > self.ghost_batch or is_host(x)):
            if egr:
                raise ConfigError("EGR of a BatchNorm/dropout model in ghost batches is not "
                                  "implemented")
            return ghost_value_and_grad(obj.batch_loss, params, model_state, x, y, key,
                                        self.ghost_batch)
        f = lambda p: obj.batch_loss(p, model_state, x, y, key)
        (loss, new_state), g = jax.value_and_grad(f, has_aux=True)(params)
        if egr:
            hg = jax.jvp(lambda p: jax.grad(f, has_aux=True)(p)[0], (params,), (g,))[1]
            g = jax.tree.map(lambda a, b: a + 2 * mu * b, g, hg)
        return loss, g, new_state


def init_state(problem: Problem, params, hyper: Hyper, data_key, model_key, n: int,
               model_state=None) -> TrainState:
    """Step 0 of a run: θ0, the dynamics' own state, the epoch-0 order, keys as key data."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=problem.dynamics.init(params, hyper), model_state=model_state,
        perm=epoch_permutation(data_key, 0, n).astype(jnp.int32),
        data_key=jax.random.key_data(data_key), model_key=jax.random.key_data(model_key),
        diverged_at=jnp.full((), -1, jnp.int32), failed=jnp.zeros((), bool), hyper=hyper)


def advance_chunk(state: TrainState, problem: Problem, data: Data, params0, step0, num_steps):
    """``num_steps`` steps of ``problem.dynamics`` from the group's step ``step0``, then the
    cheap metrics at the new iterate (``num_steps`` = 0: the metrics at the current one)."""
    state, info = problem.dynamics.advance(state, problem, data, step0, num_steps)
    metrics = cheap_metrics(problem.at(state.model_state), data, state.params, params0,
                            state.perm, problem.dynamics.step_size(state))
    return state, {**metrics, **info}


@eqx.filter_jit
def advance(state: TrainState, problem: Problem, data: Data, params0, step0, num_steps):
    """``advance_chunk`` compiled once per problem structure. ``step0`` is traced; ``num_steps``
    is traced when given as an array (one program for every chunk length: sweeps, IGR paths) and
    static when given as a Python int (a fixed-length loop, measurably faster on CPU: single runs,
    whose chunks have at most three lengths: 0, ``log_every`` and the remainder)."""
    TRACE_COUNTS["advance"] += 1
    return advance_chunk(state, problem, data, params0, step0, num_steps)


def host_metrics(metrics: dict) -> dict:
    """Device metrics → plain Python (floats, lists)."""
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = v.tolist() if v.ndim else (int(v) if v.dtype.kind in "iu" else float(v))
    return out


@dataclass
class Run:
    """A run ready to execute: the problem, data, θ0 and its state, and how long to run."""

    problem: Problem
    data: Data
    state0: TrainState
    params0: Any
    steps: int
    log_every: int
    lr: float
    probe_key: jax.Array
    header: dict[str, Any]
    stop_loss: float | None = None
    probes: Sequence[Probe] = ()
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What ``execute`` returns: the final trace and the final state."""

    trace: dict[str, Any]
    state: TrainState


def execute(run: Run, *, trace_path=None, progress: Callable[[int, int, dict], None] | None = None,
            summarize: Callable[[dict], dict] | None = None, loggers: Sequence = ()) -> Outcome:
    """Run to ``run.steps`` (or divergence, solver failure, the stop loss, ``STOP`` or Ctrl-C),
    calling expensive probes at their cadence and writing the trace after every chunk. Stopped:
    the trace is finished as ``interrupted`` (possibly with 0 rows), then KeyboardInterrupt.
    ``loggers`` (``sgdreg.loggers.Logger`` objects) get a copy of every row written; one that
    raises is disabled and the trace's ``loggers`` field records it (``loggers.LoggerSet``)."""
    from .loggers import LoggerSet

    problem, data, probes = run.problem, run.data, list(run.probes)
    logs = LoggerSet(loggers, run.header.get("layers") or ())
    is_flow = problem.dynamics.is_flow
    writer = _Writer(trace_path, {
        **run.header, "probes": {p.name: {"every": p.every, **p.describe()} for p in probes}})
    memory: dict[str, dict] = {p.name: {} for p in probes}
    state = run.state0
    start = time.perf_counter()
    io = threading.Lock()  # one writer of the file at a time (the run, or abort_all)
    done = threading.Event()  # the final status is written: abort_all leaves it alone

    def record(step: int, metrics: dict):
        row = {"step": step, "t": step * run.lr, **host_metrics(metrics)}
        for p in probes:
            if step % p.every == 0 or step == run.steps:
                check_stop()  # a probe may compile and take seconds
                ctx = ProbeContext(problem.at(state.model_state), data, run.lr, step,
                                   jax.random.fold_in(run.probe_key, step), memory[p.name],
                                   opt_state=state.opt_state)
                row |= p(state.params, ctx)
        with io:
            writer.append(row)
            if logs:
                logs.log(step, writer.rows[-1])
                writer.doc["loggers"] = logs.record()
            writer.flush()
        if progress:
            progress(step, run.steps, writer.rows[-1])

    def abort():  # a second signal: the process ends right after this
        if trace_path is None or not io.acquire(timeout=5.0):
            return
        try:
            if not done.is_set():
                writer.finish("interrupted", stop_detail() + "; the last chunk was lost",
                              wall_time_s=time.perf_counter() - start)
                done.set()
                INTERRUPTED.append(trace_path)
        finally:
            io.release()

    status, detail, diverged_step = "completed", None, None
    if logs:
        logs.start(str(run.header.get("run_id")), run.header.get("config") or {})
        writer.doc["loggers"] = logs.record()
    with stoppable(abort):
        try:
            check_stop()
            step = 0
            state, metrics = advance(state, problem, data, run.params0,
                                     jnp.asarray(0, jnp.int32), 0)
            check_stop()
            record(0, metrics)
            while step < run.steps:
                check_stop()
                n = min(run.log_every, run.steps - step)
                state, metrics = advance(state, problem, data, run.params0,
                                         jnp.asarray(step, jnp.int32), n)
                div, failed = int(state.diverged_at), bool(state.failed)
                if div >= 0:
                    status, diverged_step = "diverged", div
                    detail = (f"non-finite training loss at step {div} (lr={run.lr:g})"
                              if not is_flow else f"flow solver stopped before "
                              f"t={(step + n) * run.lr:g} (non-finite state)")
                    if not is_flow:
                        record(int(state.step), metrics)
                    break
                if failed:
                    status = "failed"
                    detail = (f"flow solver stopped before t={(step + n) * run.lr:g} "
                              "(max steps reached)")
                    break
                step = int(state.step)
                check_stop()
                record(step, metrics)
                last = writer.rows[-1].get("train_loss")
                if run.stop_loss is not None and last is not None and last <= run.stop_loss:
                    detail = f"reached train_loss ≤ {run.stop_loss:g} at step {step}"
                    break
        except KeyboardInterrupt as e:
            status = "interrupted"
            detail = stop_detail() if isinstance(e, _Stopped) or STOP.is_set() else \
                "stopped by the user (Ctrl-C)"
        fields = {"diverged_step": diverged_step, "wall_time_s": time.perf_counter() - start}
        if logs:
            logs.finish(status)
            fields["loggers"] = logs.record()
        with io:
            if not done.is_set():
                if summarize:
                    fields["summary"] = summarize(writer.to_dict()) if writer.rows else {}
                trace = writer.finish(status, detail, **fields)
                done.set()
            else:
                trace = writer.to_dict()
    if status == "interrupted":
        if trace_path is not None:
            INTERRUPTED.append(trace_path)
        raise KeyboardInterrupt
    return Outcome(trace, state)
