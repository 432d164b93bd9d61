"""Paths of one dynamics from one θ0 through the engine, recorded at chosen step counts (the
IGR checks compare such paths at matched times t = k·h), and their traces and stored results.

``run_path`` drives ``engine.advance`` chunk by chunk between the logged steps and keeps θ,
L and ‖∇L‖² (the engine's cheap metrics on the full batch) at each of them.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import dynamics as dyn
from .. import engine, training
from ..config import RunConfig
from ..data import Dataset
from ..errors import ConfigError
from ..results import load_document, save_results
from ..trace import TraceWriter, device_info, versions


def build(cfg: RunConfig, dataset: Dataset | None = None, model: eqx.Module | None = None
          ) -> training.Setup:
    """Validate, load data and build θ0 from ``cfg.seed`` (or ``model``) once for all paths."""
    return training.build(cfg.replace(optimizer="gd", egr=0.0), dataset, model)


@dataclass
class Trajectory:
    """θ (flattened) and L, ‖∇L‖² at logged steps k of one run; t = k·lr."""

    method: str  # gd | egr | flow | modified-flow | sgd-modified-flow
    lr: float
    egr: float
    step: list[int]
    theta: np.ndarray
    loss: np.ndarray
    grad_norm_sq: np.ndarray
    status: str = "completed"
    detail: str | None = None
    solver_steps: int = 0
    diverged_step: int | None = None

    @property
    def t(self) -> np.ndarray:
        return np.asarray(self.step[: len(self.theta)], float) * self.lr

    @property
    def run_id(self) -> str:
        return f"{self.method}_lr{self.lr:g}" + (f"_mu{self.egr:g}" if self.method == "egr" else "")


def flat(params) -> np.ndarray:
    return np.asarray(ravel_pytree(params)[0])


def dynamics_for(method: str, cfg: RunConfig) -> dyn.AbstractDynamics:
    """gd/egr: GD with the EGR branch on (μ traced); flow, modified-flow: the diffrax flows with
    the check's tolerances."""
    if method in ("gd", "egr"):
        return dyn.named("gd", egr=True)
    if method == "flow":
        return dyn.GradientFlow(rtol=cfg.rtol, atol=cfg.atol)
    if method == "modified-flow":
        return dyn.ModifiedFlow(rtol=cfg.rtol, atol=cfg.atol)
    raise ValueError(f"unknown IGR method {method!r}")


def run_path(s: training.Setup, method: str, lr: float, steps: Sequence[int], egr: float = 0.0,
             *, dynamics: dyn.AbstractDynamics | None = None, data: dyn.Data | None = None
             ) -> Trajectory:
    """Run one dynamics from θ0 by ``engine.advance`` and record it after each of ``steps``
    (increasing, from 0).

    gd/egr: θ ← θ − h∇(L + μ‖∇L‖²) with μ = ``egr``; flow: dθ/dt = −∇L; modified-flow:
    dθ/dt = −∇(L + (h/4)‖∇L‖²); flows reach t = k·h at step k. ``dynamics`` overrides the
    method's (e.g. ``SGDModifiedFlow``), ``data`` the setup's training data."""
    dynamics = dynamics or dynamics_for(method, s.cfg)
    data = s.data if data is None else data
    problem = engine.Problem(s.problem.objective, dynamics, s.problem.eval_chunk,
                             s.problem.ghost_batch)
    dt = jax.tree.leaves(s.params0)[0].dtype
    hyper = dyn.Hyper(*(jnp.asarray(v, dt) for v in (lr, 0.0, egr, 0.0)))
    state = engine.init_state(problem, s.params0, hyper, s.keys["data"], s.keys["model"],
                              data.x_train.shape[0], s.model_state0)
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    thetas, losses, gns = [], [], []

    def log(state, metrics):
        thetas.append(flat(state.params))
        losses.append(float(metrics["train_loss"]))
        gns.append(float(metrics["grad_norm_sq"]))

    log(*engine.advance(state, problem, data, s.params0, i32(0), i32(0)))
    status, detail, solver, diverged = "completed", None, 0, None
    for k0, k1 in zip(steps, steps[1:]):
        state, metrics = engine.advance(state, problem, data, s.params0, i32(k0), i32(k1 - k0))
        solver += int(metrics.get("solver_steps", 0))
        if dynamics.is_flow and (int(state.diverged_at) >= 0 or bool(state.failed)):
            why = "non-finite state" if int(state.diverged_at) >= 0 else "max steps reached"
            status, detail = "failed", f"flow solver stopped before t={k1 * lr:g} ({why})"
            break
        if int(state.diverged_at) >= 0:
            diverged = int(state.diverged_at)
            status, detail = "diverged", f"non-finite loss at step {diverged} (lr={lr:g})"
            break
        log(state, metrics)
    return Trajectory(method, float(lr), float(egr), list(steps), np.stack(thetas),
                      np.array(losses), np.array(gns), status, detail, solver, diverged)


def log_steps(num_steps: int, n_log: int, spacing: str = "linear") -> list[int]:
    """About ``n_log`` step counts 0 = k_0 < … < k_n = num_steps, evenly or log-spaced (every
    early step, sparse late: for paths that move fast at first)."""
    if spacing == "log":
        ks = np.geomspace(1, num_steps, min(n_log, num_steps))
        return sorted({0, *(int(round(k)) for k in ks)})
    n = min(n_log, num_steps)
    return sorted({round(j * num_steps / n) for j in range(n + 1)})


def steps_for(time: float, lr: float, option: str = "time") -> int:
    """K with K·h = T; ConfigError unless T is a whole number of steps of h."""
    if not (math.isfinite(time) and time > 0):
        raise ConfigError(f"{option} must be a finite number > 0, got {time:g}")
    k = round(time / lr)
    if k < 1 or abs(k * lr - time) > 1e-9 * max(time, 1.0):
        raise ConfigError(f"{option} {time:g} must be a positive whole number of steps of lr={lr:g}")
    if k > 2**31 - 1:  # the engine's int32 step counter
        raise ConfigError(f"{option} {time:g} means {k} steps of lr={lr:g}; at most {2**31 - 1}")
    return k


def observed_order(hs: Sequence[float], dists: Sequence[float]) -> float | None:
    """Least-squares slope p of log d = p·log h + c (the global order of the error in h)."""
    pts = [(math.log(h), math.log(d)) for h, d in zip(hs, dists) if d is not None and d > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def random_projection(num_params: int, k: int = 2, seed: int = 0) -> np.ndarray:
    """A fixed (k, P) Gaussian projection with unit rows, from ``seed``, for plotting paths."""
    p = np.random.default_rng(seed).normal(size=(k, num_params))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def write_trace(traj: Trajectory, directory: Path, s: training.Setup, proj: np.ndarray) -> Path:
    """The run as a standard trace (schema sgdreg.trace/1): L, ‖∇L‖², igr_gd, ‖θ − θ0‖ and the
    projection ``proj``·(θ − θ0) per logged step."""
    cfg = s.cfg.replace(optimizer="gd" if traj.method == "egr" else traj.method, lr=traj.lr,
                        egr=traj.egr, steps=traj.step[-1])
    theta0 = flat(s.params0)
    prov = {k: v for k, v in s.provenance.items() if k != "dynamics"}  # the method is in config
    w = TraceWriter(directory / f"{traj.run_id}.json", {
        "run_id": traj.run_id, "config": cfg.to_dict(), "dataset": s.dataset.describe(),
        "provenance": prov, "versions": versions(), "device": device_info(), "seed": cfg.seed,
        "num_params": int(theta0.size),
        "projection": {"kind": "gaussian, unit rows", "seed": cfg.seed, "of": "θ − θ0"}})
    for i, theta in enumerate(traj.theta):
        w.append({"step": traj.step[i], "t": traj.step[i] * traj.lr, "train_loss": traj.loss[i],
                  "grad_norm_sq": traj.grad_norm_sq[i],
                  "igr_gd": traj.lr / 4 * traj.grad_norm_sq[i],
                  "dist_from_init": np.linalg.norm(theta - theta0),
                  "proj": proj @ (theta - theta0)})
    w.finish(traj.status, traj.detail, diverged_step=traj.diverged_step,
             solver_steps=traj.solver_steps or None)
    return w.path


def finish(out_dir: Path | None, experiment: str, config: dict, results: dict, start: float,
           paths: Sequence[Trajectory] = (), s: training.Setup | None = None,
           proj: np.ndarray | None = None) -> dict:
    """Store ``results`` as ``out_dir/<experiment>.json`` (``sgdreg.results``) with one trace per
    path in ``out_dir/traces``; return them with ``config`` and ``wall_time_s`` beside them."""
    wall = _time.perf_counter() - start
    if out_dir is not None:
        for p in paths:
            write_trace(p, Path(out_dir) / "traces", s, proj)
        if paths:
            results["traces"] = sorted(f"traces/{p.run_id}.json" for p in paths)
        save_results(out_dir, experiment, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def read_results(results_dir: str | Path, experiment: str) -> dict:
    """The stored ``<experiment>.json`` (BACKWARD_ERROR, TWO_PARAM or SWEEP): its results with
    ``config`` and ``wall_time_s`` beside them, as the experiment returned them."""
    doc = load_document(results_dir, experiment)
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}


def validate_lrs(lrs: Sequence[float], option: str = "lrs") -> list[float]:
    lrs = [float(h) for h in lrs]
    if not lrs:
        raise ConfigError(f"{option}: give at least one step size")
    for h in lrs:
        if not (h > 0 and math.isfinite(h)):
            raise ConfigError(f"{option} must be finite numbers > 0, got {h:g}")
    return lrs
