"""The training loop: compiled chunks of steps, probes between them, a trace after each.

``train(cfg)`` loads the data, builds the model from ``seed`` (so every optimizer of a
comparison starts from the identical θ0), then alternates

    one jitted ``lax.scan`` over ``log_every`` steps + cheap metrics  →  host: expensive probes,
    divergence check, trace row, atomic trace write.

Numeric hyper-parameters are traced, so a new lr reuses the compiled chunk (``TRACE_COUNTS``
counts compilations; the tests assert it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import dynamics as dyn
from .config import RunConfig, validate
from .data import Dataset
from .losses import Objective
from .models import layer_names, make_model, num_params, partition
from .probes import CurvatureProbe, Probe, ProbeContext, cheap_metrics
from .trace import TraceWriter, device_info, versions

TRACE_COUNTS: Counter = Counter()
FLOW_MAX_STEPS = 100_000


def load_data(cfg: RunConfig) -> Dataset:
    """The run's dataset: source, preprocessing, subset and randomization from ``cfg``."""
    from .datasets import open_dataset
    from .randomization import randomize

    ds = open_dataset(cfg.dataset, data_dir=cfg.data_dir, preprocess=cfg.preprocess,
                      n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    if cfg.randomization != "none":
        ds = randomize(ds, cfg.randomization, p=cfg.corruption, seed=cfg.seed)
    return ds


def dtype_of(cfg: RunConfig):
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32


def device_data(ds: Dataset, dtype) -> dyn.Data:
    lab = (lambda y: jnp.asarray(y, jnp.int32)) if ds.num_classes else (
        lambda y: jnp.asarray(y, dtype))
    return dyn.Data(jnp.asarray(ds.x_train, dtype), lab(ds.y_train),
                    jnp.asarray(ds.x_test, dtype), lab(ds.y_test))


@dataclass
class Setup:
    """Everything a run needs, built once from (cfg, dataset)."""

    cfg: RunConfig
    dataset: Dataset
    data: dyn.Data
    model0: eqx.Module
    params0: Any
    problem: dyn.Problem
    hyper: dyn.Hyper
    keys: dict[str, jax.Array] = field(default_factory=dict)


def build(cfg: RunConfig, dataset: Dataset | None = None, model: eqx.Module | None = None
          ) -> Setup:
    """Validate, load data, initialise the model from ``cfg.seed``; no compilation yet."""
    validate(cfg)
    dtype = dtype_of(cfg)
    ds = dataset if dataset is not None else load_data(cfg)
    validate(cfg, ds.n_train)
    k_init, k_data, k_probe = jax.random.split(jax.random.key(cfg.seed), 3)
    if model is None:
        model = make_model(cfg.model, ds.input_shape, ds.out_size, key=k_init, width=cfg.width,
                           depth=cfg.depth, activation=cfg.activation, dtype=dtype)
    params0, frozen = partition(model)
    problem = dyn.Problem(
        objective=Objective(frozen, cfg.loss, ds.num_classes),
        optimizer=cfg.optimizer,
        batch_size=ds.n_train if cfg.full_batch else cfg.batch_size,
        eval_chunk=cfg.eval_chunk,
        use_egr=cfg.egr > 0,
    )
    hyper = dyn.Hyper(*(jnp.asarray(v, dtype) for v in (cfg.lr, cfg.momentum, cfg.egr)))
    return Setup(cfg, ds, device_data(ds, dtype), model, params0, problem, hyper,
                 {"data": k_data, "probe": k_probe})


@eqx.filter_jit
def discrete_chunk(state: dyn.TrainState, problem: dyn.Problem, data: dyn.Data, params0,
                   num_steps: int):
    """``num_steps`` updates in one ``lax.scan``, then the cheap metrics at the new iterate."""
    TRACE_COUNTS["discrete_chunk"] += 1
    state, losses = jax.lax.scan(lambda s, _: dyn.train_step(s, problem, data), state, None,
                                 length=num_steps)
    metrics = cheap_metrics(problem, data, state.params, params0, state.perm, state.hyper.lr)
    return state, losses, metrics


@eqx.filter_jit
def flow_chunk(params, t0, t1, problem: dyn.Problem, data: dyn.Data, params0, hyper, perm,
               rtol, atol):
    """Integrate the flow over [t0, t1], then the cheap metrics at θ(t1)."""
    TRACE_COUNTS["flow_chunk"] += 1
    params, acc, rej, ok = dyn.flow_segment(params, t0, t1, hyper.lr, problem, data, rtol, atol,
                                            FLOW_MAX_STEPS)
    return params, acc, rej, ok, cheap_metrics(problem, data, params, params0, perm, hyper.lr)


initial_metrics = eqx.filter_jit(cheap_metrics)


@dataclass
class RunResult:
    trace: dict[str, Any]
    model: eqx.Module
    model0: eqx.Module
    setup: Setup


def _host(metrics: dict) -> dict:
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = v.tolist() if v.ndim else float(v)
    return out


def train(cfg: RunConfig, dataset: Dataset | None = None, *, trace_path=None,
          probes: Sequence[Probe] = (), progress: Callable[[int, int, dict], None] | None = None,
          model: eqx.Module | None = None, setup: Setup | None = None) -> RunResult:
    """Run one configuration to ``cfg.steps`` (or divergence), writing the trace as it goes."""
    s = setup or build(cfg, dataset, model)
    cfg, problem, data = s.cfg, s.problem, s.data
    if cfg.hessian_every and not any(p.name == "curvature" for p in probes):
        probes = [*probes, CurvatureProbe.from_config(cfg)]
    writer = TraceWriter(trace_path, {
        "run_id": run_id(cfg), "config": cfg.to_dict(), "dataset": s.dataset.describe(),
        "versions": versions(), "device": device_info(), "seed": cfg.seed,
        "num_params": num_params(s.params0), "layers": layer_names(s.params0),
        "probes": {p.name: {"every": p.every, **p.describe()} for p in probes},
    })
    start = time.perf_counter()
    state = dyn.init_state(problem, s.params0, s.hyper, s.keys["data"], s.dataset.n_train)
    params = s.params0
    memory: dict[str, dict] = {p.name: {} for p in probes}

    def record(step: int, metrics: dict, extra: dict | None = None):
        row = {"step": step, "t": step * cfg.lr, **_host(metrics), **(extra or {})}
        for p in probes:
            if step % p.every == 0 or step == cfg.steps:
                ctx = ProbeContext(problem, data, cfg.lr, step,
                               jax.random.fold_in(s.keys["probe"], step), memory[p.name])
                row |= p(params, ctx)
        writer.append(row)
        writer.flush()
        if progress:
            progress(step, cfg.steps, writer.rows[-1])

    status, detail, diverged_step = "completed", None, None
    try:
        record(0, initial_metrics(problem, data, params, s.params0, state.perm, s.hyper.lr),
               {"solver_steps": 0} if cfg.is_flow else None)
        step = 0
        while step < cfg.steps:
            n = min(cfg.log_every, cfg.steps - step)
            if cfg.is_flow:
                dt = jnp.asarray(cfg.lr, params0_dtype(s))
                params, acc, rej, ok, metrics = flow_chunk(
                    params, dt * step, dt * (step + n), problem, data, s.params0, s.hyper,
                    state.perm, cfg.rtol, cfg.atol)
                step += n
                record(step, metrics, {"solver_steps": int(acc), "solver_rejected": int(rej)})
                if not bool(ok):
                    finite = all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(params))
                    status = "failed" if finite else "diverged"
                    diverged_step = None if finite else step
                    detail = (f"flow solver stopped before t={step * cfg.lr:g} "
                              f"({'max steps reached' if finite else 'non-finite state'})")
                    break
            else:
                state, losses, metrics = discrete_chunk(state, problem, data, s.params0, n)
                params = state.params
                step = int(state.step)
                div = int(state.diverged_at)
                record(step, metrics)
                if div >= 0:
                    status, diverged_step = "diverged", div
                    detail = f"non-finite training loss at step {div} (lr={cfg.lr:g})"
                    break
            if cfg.stop_loss is not None and writer.rows[-1]["train_loss"] is not None \
                    and writer.rows[-1]["train_loss"] <= cfg.stop_loss:
                detail = f"reached train_loss ≤ {cfg.stop_loss:g} at step {step}"
                break
    except KeyboardInterrupt:
        status, detail = "interrupted", "stopped by the user (Ctrl-C)"
    trace = writer.finish(status, detail, diverged_step=diverged_step,
                          wall_time_s=time.perf_counter() - start,
                          summary=summarize(writer.to_dict()))
    if status == "interrupted":
        raise KeyboardInterrupt
    return RunResult(trace, eqx.combine(params, problem.objective.frozen), s.model0, s)


def params0_dtype(s: Setup):
    return jax.tree.leaves(s.params0)[0].dtype


def run_id(cfg: RunConfig) -> str:
    return f"{cfg.optimizer}_lr{cfg.lr:g}_b{cfg.batch_size}_s{cfg.seed}"


SUMMARY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "gen_gap", "acc_gap",
                "weight_norm", "dist_from_init", "grad_norm_sq", "igr_gd", "igr_sgd_var",
                "modified_loss_gd", "modified_loss_sgd")


def summarize(doc: dict) -> dict:
    """Final values of the standard metrics and the first logged step at 100% train accuracy."""
    m = doc["metrics"]
    out: dict[str, Any] = {"final_step": m["step"][-1] if m.get("step") else None}
    for k in SUMMARY_KEYS:
        if k in m:
            out[k] = m[k][-1]
    acc = m.get("train_acc")
    out["steps_to_fit"] = next(
        (st for st, a in zip(m["step"], acc) if a is not None and a >= 1.0), None
    ) if acc else None
    return out
