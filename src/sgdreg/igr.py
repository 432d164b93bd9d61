"""Implicit gradient regularization made visible (Barrett & Dherin 2021; SCIENCE.md §2).

* ``backward_error_check``: from one θ0, GD with step h, the plain flow dθ/dt = −∇L and the
  modified flow dθ/dt = −∇(L + (h/4)‖∇L‖²) at matched times t = k·h. Globally GD is O(h) from
  the plain flow and O(h²) from the modified flow; the observed orders are the slopes of
  log‖θ_GD − θ_flow‖ against log h. Also EGR: GD at a small step s on L + μ‖∇L‖², μ = h/4,
  mimics GD at step h.
* ``sgd_epoch_check``: one epoch of SGD over a fixed partition into m minibatches, averaged over
  the minibatch orders, against the SGD modified flow of L + (h/4m)Σ_k‖∇L̂_k‖² (Smith et al.
  2021: the flow the mean iterate follows over one epoch, to O(m³h³)).
* ``two_param_example``: E(a, b) = ½(y − a·b·x)² from (a, b) = (2.8, 3.5), run by the real
  engine (model f(x) = a·b·x, one example, loss mse). The plain flow conserves a² − b²; GD
  multiplies it by (1 − h²r²x²) per step (r = y − abx), so larger h lands nearer |a| = |b|.
* ``igr_sweep``: GD over a grid of h × width; ‖∇L‖² (R_IG), igr_gd and test accuracy at a matched
  time and at a matched training loss (Barrett & Dherin 2021, §5, claim: larger h and larger
  models give smaller R_IG and higher test accuracy).
* ``render_*``: figures from the stored results (never re-training).

Every run starts from the θ0 of ``cfg.seed``. For speed the four dynamics share two compiled
programs per model: GD runs with the EGR branch on (μ = 0 is plain GD: g + 2·0·Hg = g exactly),
and the plain flow is the modified-flow field with h = 0 (g + 0·Hg = g).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import dynamics as dyn
from . import training
from .batching import full_batch_value_and_grad
from .config import ConfigError, RunConfig, validate
from .data import Dataset
from .probes import sq_norm
from .trace import TraceWriter, atomic_write_text, device_info, to_json_value, versions

RESULTS = "results.json"
CHECK_DEFAULTS = dict(dataset="digits", n_train=64, model="mlp", width=16, activation="tanh",
                      loss="mse", dtype="float64", rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Paths: one dynamics from θ0, recorded at chosen step counts.


@dataclass
class Engine:
    """A built run (data, θ0) and the two problems every IGR comparison shares."""

    setup: training.Setup
    discrete: dyn.Problem  # GD with the EGR branch on: θ ← θ − h(g + 2μHg)
    flow: dyn.Problem  # modified-flow field −(g + (h/2)Hg); h = 0 gives the plain flow

    @property
    def dtype(self):
        return jax.tree.leaves(self.setup.params0)[0].dtype


def engine(cfg: RunConfig, dataset: Dataset | None = None, model: eqx.Module | None = None
           ) -> Engine:
    """Validate, load data and build θ0 from ``cfg.seed`` (or ``model``) once for all runs."""
    s = training.build(cfg.replace(optimizer="gd", egr=0.0), dataset, model)
    return Engine(s, dataclasses.replace(s.problem, use_egr=True),
                  dataclasses.replace(s.problem, optimizer="modified-flow", use_egr=False))


@dataclass
class Trajectory:
    """θ (flattened) and L, ‖∇L‖² at logged steps k of one run; t = k·lr."""

    method: str  # gd | egr | flow | modified-flow
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


def eng_theta0(eng: Engine) -> np.ndarray:
    return flat(eng.setup.params0)


@eqx.filter_jit
def _advance_discrete(state: dyn.TrainState, problem: dyn.Problem, data: dyn.Data, num_steps):
    """``num_steps`` (traced) engine updates in one ``fori_loop``: no recompile per count."""
    return jax.lax.fori_loop(0, num_steps, lambda _, s: dyn.train_step(s, problem, data)[0], state)


@eqx.filter_jit
def _advance_flow(params, t0, t1, h, problem: dyn.Problem, data: dyn.Data, rtol, atol):
    return dyn.flow_segment(params, t0, t1, h, problem, data, rtol, atol, training.FLOW_MAX_STEPS)


@eqx.filter_jit
def _loss_and_grad_sq(objective, params, data: dyn.Data, chunk: int):
    loss, g = full_batch_value_and_grad(objective.example_loss, params, data.x_train,
                                        data.y_train, chunk)
    return loss, sq_norm(g)


def run_path(eng: Engine, method: str, lr: float, steps: Sequence[int], egr: float = 0.0) -> Trajectory:
    """Run one dynamics from θ0 and record it after each of ``steps`` (increasing, from 0).

    gd/egr: θ ← θ − h∇(L + μ‖∇L‖²) with μ = ``egr``; flow: dθ/dt = −∇L; modified-flow:
    dθ/dt = −∇(L + (h/4)‖∇L‖²); flows are integrated to t = k·h between logged steps."""
    s, cfg = eng.setup, eng.setup.cfg
    if method not in ("gd", "egr", "flow", "modified-flow"):
        raise ValueError(f"unknown IGR method {method!r}")
    dt = eng.dtype
    arr = lambda v: jnp.asarray(v, dt)
    obj, chunk = s.problem.objective, s.problem.eval_chunk
    thetas, losses, gns = [], [], []

    def log(params):
        loss, gn = _loss_and_grad_sq(obj, params, s.data, chunk)
        thetas.append(flat(params))
        losses.append(float(loss))
        gns.append(float(gn))

    params = s.params0
    log(params)
    status, detail, solver, diverged = "completed", None, 0, None
    if method in ("gd", "egr"):
        hyper = dyn.Hyper(arr(lr), arr(0.0), arr(egr))
        state = dyn.init_state(eng.discrete, params, hyper, s.keys["data"], s.dataset.n_train)
        for k0, k1 in zip(steps, steps[1:]):
            state = _advance_discrete(state, eng.discrete, s.data, jnp.asarray(k1 - k0, jnp.int32))
            if int(state.diverged_at) >= 0:
                diverged = int(state.diverged_at)
                status, detail = "diverged", f"non-finite loss at step {diverged} (lr={lr:g})"
                break
            log(state.params)
    else:
        field_h = arr(lr if method == "modified-flow" else 0.0)
        for k0, k1 in zip(steps, steps[1:]):
            params, acc, _, ok = _advance_flow(params, arr(k0 * lr), arr(k1 * lr), field_h,
                                               eng.flow, s.data, cfg.rtol, cfg.atol)
            solver += int(acc)
            if not bool(ok):
                status, detail = "failed", f"flow solver stopped before t={k1 * lr:g}"
                break
            log(params)
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


def steps_for(time: float, lr: float, option: str = "--time") -> int:
    """K with K·h = T; ConfigError unless T is a whole number of steps of h."""
    k = round(time / lr)
    if k < 1 or abs(k * lr - time) > 1e-9 * max(time, 1.0):
        raise ConfigError(f"{option} {time:g} must be a positive whole number of steps of lr={lr:g}")
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


def write_trace(traj: Trajectory, directory: Path, eng: Engine, proj: np.ndarray) -> Path:
    """The run as a standard trace (schema sgdreg.trace/1): L, ‖∇L‖², igr_gd, ‖θ − θ0‖ and the
    projection ``proj``·(θ − θ0) per logged step."""
    cfg = eng.setup.cfg.replace(optimizer="gd" if traj.method == "egr" else traj.method,
                                lr=traj.lr, egr=traj.egr, steps=traj.step[-1])
    theta0 = eng_theta0(eng)
    w = TraceWriter(directory / f"{traj.run_id}.json", {
        "run_id": traj.run_id, "config": cfg.to_dict(), "dataset": eng.setup.dataset.describe(),
        "versions": versions(), "device": device_info(), "seed": cfg.seed,
        "num_params": int(theta0.size), "projection": {"kind": "gaussian, unit rows",
                                                       "seed": cfg.seed, "of": "θ − θ0"}})
    for i, theta in enumerate(traj.theta):
        w.append({"step": traj.step[i], "t": traj.step[i] * traj.lr, "train_loss": traj.loss[i],
                  "grad_norm_sq": traj.grad_norm_sq[i],
                  "igr_gd": traj.lr / 4 * traj.grad_norm_sq[i],
                  "dist_from_init": np.linalg.norm(theta - theta0),
                  "proj": proj @ (theta - theta0)})
    w.finish(traj.status, traj.detail, diverged_step=traj.diverged_step,
             solver_steps=traj.solver_steps or None)
    return w.path


def write_results(directory: Path, results: dict) -> Path:
    """Compact strict JSON (atomic), small enough to keep beside the figures."""
    path = Path(directory) / RESULTS
    atomic_write_text(path, json.dumps(to_json_value(results), allow_nan=False,
                                       separators=(",", ":")))
    return path


def read_results(directory: Path) -> dict:
    return json.loads((Path(directory) / RESULTS).read_text())


def _r(x, digits: int = 6):
    """Round to significant digits for storage (results stay small)."""
    a = np.asarray(x, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(a != 0, np.floor(np.log10(np.abs(a))), 0)
    out = np.round(a / 10**mag, digits - 1) * 10**mag
    return out.tolist() if out.ndim else float(out)


# ---------------------------------------------------------------------------------------------
# 1. Backward-error check: GD vs plain flow vs modified flow at matched times.


def validate_lrs(lrs: Sequence[float], option: str = "--lr") -> list[float]:
    lrs = [float(h) for h in lrs]
    if not lrs:
        raise ConfigError(f"{option}: give at least one step size")
    for h in lrs:
        if not (h > 0 and math.isfinite(h)):
            raise ConfigError(f"{option} must be > 0, got {h:g}")
    return lrs


def backward_error_check(cfg: RunConfig, lrs: Sequence[float] = (0.2, 0.1, 0.05),
                         time: float = 2.0, *, dataset: Dataset | None = None,
                         model: eqx.Module | None = None, n_log: int = 10,
                         egr_lr: float | None = None, out_dir: Path | None = None,
                         progress: Callable[[str], None] | None = None) -> dict:
    """GD(h) vs plain flow vs modified flow from one θ0 at t = k·h, for each h in ``lrs``.

    Reports ‖θ_GD − θ_flow‖ (O(h)) and ‖θ_GD − θ_mod‖ (O(h²)) at t = ``time`` with the observed
    orders, |ΔL|, and, with EGR at the small step s = ``egr_lr`` (default min(h)/4; 0: skip),
    ‖θ_GD(h) − θ_EGR(s, μ=h/4)‖ against ‖θ_GD(h) − θ_GD(s)‖. ``out_dir``: traces + results.json.
    """
    lrs = sorted(validate_lrs(lrs), reverse=True)
    if not (time > 0 and math.isfinite(time)):
        raise ConfigError(f"--time must be > 0, got {time:g}")
    if n_log < 1:
        raise ConfigError(f"--n-log must be ≥ 1, got {n_log}")
    egr_lr = min(lrs) / 4 if egr_lr is None else float(egr_lr)
    if egr_lr < 0:
        raise ConfigError(f"--egr-lr must be ≥ 0, got {egr_lr:g}")
    ks = {h: steps_for(time, h) for h in lrs}
    k_small = steps_for(time, egr_lr, "--time (with --egr-lr)") if egr_lr else 0
    start = _time.perf_counter()
    eng = engine(cfg, dataset, model)
    theta0 = eng_theta0(eng)
    proj = random_projection(theta0.size, 2, cfg.seed)
    say = progress or (lambda _: None)
    rows, series, paths = [], {}, []
    small = None
    if egr_lr:
        say(f"gd h={egr_lr:g} (small step)")
        small = run_path(eng, "gd", egr_lr, log_steps(k_small, n_log))
        paths.append(small)
    for h in lrs:
        steps = log_steps(ks[h], n_log)
        say(f"h={h:g}: gd, flow, modified flow ({ks[h]} steps)")
        gd, fl, mf = (run_path(eng, m, h, steps) for m in ("gd", "flow", "modified-flow"))
        paths += [gd, fl, mf]
        n = min(len(gd.theta), len(fl.theta), len(mf.theta))
        d_fl = np.linalg.norm(gd.theta[:n] - fl.theta[:n], axis=1)
        d_mf = np.linalg.norm(gd.theta[:n] - mf.theta[:n], axis=1)
        ok = all(p.status == "completed" for p in (gd, fl, mf))
        row = {"lr": h, "steps": ks[h], "status": "completed" if ok else "failed",
               "dist_flow": float(d_fl[-1]) if ok else None,
               "dist_modified_flow": float(d_mf[-1]) if ok else None,
               "loss_gd": float(gd.loss[-1]),
               "loss_diff_flow": float(abs(gd.loss[-1] - fl.loss[-1])) if ok else None,
               "loss_diff_modified_flow": float(abs(gd.loss[-1] - mf.loss[-1])) if ok else None,
               "moved": float(np.linalg.norm(fl.theta[-1] - theta0))}
        row["ratio"] = row["dist_flow"] / row["dist_modified_flow"] if ok else None
        if egr_lr:
            say(f"h={h:g}: egr at s={egr_lr:g}, μ={h / 4:g}")
            eg = run_path(eng, "egr", egr_lr, [0, k_small], egr=h / 4)
            paths.append(eg)
            fine = ok and eg.status == small.status == "completed"
            row |= {"egr_lr": egr_lr, "egr": h / 4,
                    "dist_egr": float(np.linalg.norm(gd.theta[-1] - eg.theta[-1])) if fine else None,
                    "dist_small_step": float(np.linalg.norm(gd.theta[-1] - small.theta[-1]))
                    if fine else None}
        rows.append(row)
        series[f"{h:g}"] = {
            "t": _r(gd.t[:n]), "dist_flow": _r(d_fl), "dist_modified_flow": _r(d_mf),
            "loss": {p.method: _r(p.loss[:n]) for p in (gd, fl, mf)},
            "proj": {p.method: _r(proj @ (p.theta - theta0).T) for p in (gd, fl, mf)}}
    done = [r for r in rows if r["status"] == "completed"]
    orders = {k: observed_order([r["lr"] for r in done], [r[f"dist_{k}"] for r in done])
              for k in ("flow", "modified_flow")}
    results = {
        "kind": "sgdreg.igr.backward_error/1", "config": cfg.to_dict(), "time": time,
        "lrs": lrs, "n_log": n_log, "egr_lr": egr_lr or None, "num_params": int(theta0.size),
        "dataset": eng.setup.dataset.describe(), "rows": rows, "orders": orders,
        "series": series, "versions": versions(), "device": device_info(),
        "wall_time_s": _time.perf_counter() - start,
        "note": "dist_*: ‖θ_GD(T) − θ_method(T)‖ at T = steps·lr; orders: slopes of log dist vs "
                "log h (expected 1 for the plain flow, 2 for the modified flow)",
    }
    if out_dir is not None:
        _write_all(out_dir, eng, proj, paths, results)
    return results


def _write_all(out_dir: Path, eng: Engine, proj: np.ndarray, paths: Sequence[Trajectory],
               results: dict) -> None:
    out_dir = Path(out_dir)
    for p in paths:
        write_trace(p, out_dir / "traces", eng, proj)
    results["traces"] = sorted(f"traces/{p.run_id}.json" for p in paths)
    write_results(out_dir, results)


# ---------------------------------------------------------------------------------------------
# 1b. SGD over one epoch of a fixed partition (Smith et al. 2021).


def sgd_modified_field(objective, xb, yb):
    """−∇(L + (h/4m)Σ_k‖∇L̂_k‖²) = −(ḡ + (h/2)(1/m)Σ_k H_k g_k) for the fixed partition
    xb: (m, B, …) of the data (ḡ = ∇L when the m minibatches cover it)."""

    def minibatch(params, x, y):
        loss = lambda p: jnp.mean(jax.vmap(objective.example_loss, (None, 0, 0))(p, x, y))
        g = jax.grad(loss)(params)
        return g, jax.jvp(jax.grad(loss), (params,), (g,))[1]

    def field(t, params, h):
        g, hg = jax.lax.map(lambda b: minibatch(params, *b), (xb, yb))
        return jax.tree.map(lambda a, b: -(jnp.mean(a, 0) + 0.5 * h * jnp.mean(b, 0)), g, hg)

    return field


@eqx.filter_jit
def _sgd_flow(params, t1, h, objective, xb, yb, rtol, atol):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(sgd_modified_field(objective, xb, yb)), diffrax.Tsit5(), t0=0.0, t1=t1,
        dt0=None, y0=params, args=h, saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=training.FLOW_MAX_STEPS, throw=False)
    return jax.tree.map(lambda a: a[-1], sol.ys), sol.result == diffrax.RESULTS.successful


@eqx.filter_jit
def _sgd_epoch_mean(params, objective, xb, yb, h, orders):
    """Mean over the given orders of the iterate after one epoch θ ← θ − h∇L̂_{π(k)}(θ)."""

    def one(order):
        def step(p, k):
            loss = lambda q: jnp.mean(jax.vmap(objective.example_loss, (None, 0, 0))(q, xb[k],
                                                                                    yb[k]))
            return jax.tree.map(lambda a, b: a - h * b, p, jax.grad(loss)(p)), None

        return jax.lax.scan(step, params, order)[0]

    return jax.tree.map(lambda a: jnp.mean(a, 0), jax.lax.map(one, orders))


def sgd_epoch_check(cfg: RunConfig, lrs: Sequence[float] = (0.02, 0.01, 0.005), *,
                    batch_size: int = 8, dataset: Dataset | None = None,
                    max_orders: int = 120) -> dict:
    """One epoch of SGD over a fixed partition into m = n/B minibatches (seeded), averaged over
    the orders of the minibatches (all m! when m! ≤ ``max_orders``, else a seeded sample), against
    the SGD modified flow (``sgd_modified_field``), the GD modified flow and the plain flow at
    t = m·h. Smith et al. 2021: the mean iterate follows the SGD modified flow to O(m³h³), while
    the others miss an O(h²) term (the minibatch-variance penalty)."""
    lrs = sorted(validate_lrs(lrs), reverse=True)
    eng = engine(cfg, dataset)
    s = eng.setup
    n, m = s.dataset.n_train, s.dataset.n_train // max(batch_size, 1)
    if batch_size < 1 or m < 2:
        raise ConfigError(f"--batch-size must give at least 2 minibatches, got {batch_size}")
    part = np.random.default_rng(cfg.seed).permutation(n)[: m * batch_size].reshape(m, batch_size)
    sub = s.data.x_train[part.reshape(-1)], s.data.y_train[part.reshape(-1)]
    xb = sub[0].reshape((m, batch_size) + sub[0].shape[1:])
    yb = sub[1].reshape((m, batch_size) + sub[1].shape[1:])
    exact = math.factorial(m) <= max_orders
    orders = (np.array(list(itertools.permutations(range(m)))) if exact else
              np.array([np.random.default_rng([cfg.seed, i]).permutation(m)
                        for i in range(max_orders)]))
    # the flows see exactly the partitioned data (drops n − m·B examples when B ∤ n)
    data = dyn.Data(jnp.concatenate(xb), jnp.concatenate(yb), s.data.x_test, s.data.y_test)
    obj, dt = s.problem.objective, eng.dtype
    rows = []
    for h in lrs:
        t1 = jnp.asarray(m * h, dt)
        mean = flat(_sgd_epoch_mean(s.params0, obj, xb, yb, jnp.asarray(h, dt),
                                    jnp.asarray(orders, jnp.int32)))
        sgd_mod, ok = _sgd_flow(s.params0, t1, jnp.asarray(h, dt), obj, xb, yb, cfg.rtol, cfg.atol)
        ends = {"sgd_modified_flow": flat(sgd_mod)}
        for name, fh in (("modified_flow", h), ("flow", 0.0)):
            p, _, _, ok2 = _advance_flow(s.params0, jnp.asarray(0.0, dt), t1, jnp.asarray(fh, dt),
                                         eng.flow, data, cfg.rtol, cfg.atol)
            ends[name] = flat(p)
            ok = ok & ok2
        rows.append({"lr": h, "m": m, "status": "completed" if bool(ok) else "failed",
                     **{f"dist_{k}": float(np.linalg.norm(mean - v)) for k, v in ends.items()}})
    orders_fit = {k: observed_order([r["lr"] for r in rows], [r[f"dist_{k}"] for r in rows])
                  for k in ("sgd_modified_flow", "modified_flow", "flow")}
    return {"kind": "sgdreg.igr.sgd_epoch/1", "config": cfg.to_dict(), "batch_size": batch_size,
            "m": m, "orders_averaged": len(orders), "exact_mean": exact, "rows": rows,
            "orders": orders_fit,
            "note": "dist_*: ‖E[θ_SGD after one epoch] − θ_method(m·h)‖ over the minibatch orders"}


# ---------------------------------------------------------------------------------------------
# 2. The two-parameter model E(a, b) = ½(y − a·b·x)² (Barrett & Dherin 2021, Fig. 1).


class TwoParamModel(eqx.Module):
    """f(x) = a·b·x; with one example (x, y) and loss mse, L = E(a, b) = ½(y − abx)²."""

    a: jax.Array
    b: jax.Array

    def __init__(self, a: float = 2.8, b: float = 3.5, *, dtype=jnp.float64):
        self.a = jnp.asarray(a, dtype)
        self.b = jnp.asarray(b, dtype)

    def __call__(self, x):
        return self.a * self.b * x.reshape(-1)[:1]


def two_param_dataset(x: float = 1.0, y: float = 1.0) -> Dataset:
    """The single example (x, y) as a regression Dataset (test set = the same example)."""
    xs, ys = np.array([[x]], np.float64), np.array([[y]], np.float64)
    return Dataset("two-param", xs, ys, xs.copy(), ys.copy(), 0,
                   meta={"source": "E(a,b) = ½(y − a·b·x)² (Barrett & Dherin 2021)", "x": x,
                         "y": y})


TWO_PARAM_LRS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1)


def two_param_example(lrs: Sequence[float] = TWO_PARAM_LRS, *, h_small: float = 0.005,
                      h_moderate: float = 0.05, time: float = 20.0, x: float = 1.0,
                      y: float = 1.0, a0: float = 2.8, b0: float = 3.5, n_log: int = 120,
                      out_dir: Path | None = None,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Trajectories of E(a, b) = ½(y − abx)² from (a0, b0): GD at h_small and h_moderate, the plain
    flow, the modified flow of h_moderate and EGR (step h_small, μ = h_moderate/4); then the
    final gap ||a| − |b|| of GD and of the modified flow for each h in ``lrs``.

    Minima lie on ab = y/x with tr H = x²(a² + b²), smallest at |a| = |b| = √(y/x). The flow
    conserves a² − b²; GD multiplies it by (1 − h²r²x²) each step, so the gap shrinks as h grows.
    """
    lrs = sorted(validate_lrs(lrs))
    for name, v in (("h_small", h_small), ("h_moderate", h_moderate)):
        validate_lrs([v], f"--{name.replace('_', '-')}")
    if not (time > 0 and math.isfinite(time)):
        raise ConfigError(f"--time must be > 0, got {time:g}")
    if not (x != 0 and y / x > 0):
        raise ConfigError("the two-parameter example needs y/x > 0 (minima on ab = y/x)")
    ks = {h: math.ceil(time / h - 1e-9) for h in {*lrs, h_small, h_moderate}}  # t ≥ time
    start = _time.perf_counter()
    cfg = RunConfig(dataset="two-param", model="two-param", loss="mse", dtype="float64",
                    rtol=1e-10, atol=1e-12, lr=h_moderate, steps=ks[h_moderate])
    model = TwoParamModel(a0, b0, dtype=training.dtype_of(cfg))  # dtype_of enables float64
    eng = engine(cfg, two_param_dataset(x, y), model)
    say = progress or (lambda _: None)
    say("trajectories: gd (small, moderate h), flow, modified flow, egr")
    small, moderate = (log_steps(ks[h], n_log, "log") for h in (h_small, h_moderate))
    runs = {
        "gd_small": run_path(eng, "gd", h_small, small),
        "gd_moderate": run_path(eng, "gd", h_moderate, moderate),
        "flow": run_path(eng, "flow", h_small, small),
        "modified_flow": run_path(eng, "modified-flow", h_moderate, moderate),
        "egr": run_path(eng, "egr", h_small, small, egr=h_moderate / 4),
    }
    gaps = []
    for h in lrs:
        say(f"final gap at h={h:g}")
        g = run_path(eng, "gd", h, [0, ks[h]])
        m = run_path(eng, "modified-flow", h, [0, ks[h]])
        gaps.append({"lr": h, "steps": ks[h], "status": g.status, **_ab_summary(g, x, y, "gd_"),
                     **_ab_summary(m, x, y, "modified_flow_")})
    flow_end = runs["flow"].theta[-1]
    results = {
        "kind": "sgdreg.igr.two_param/1", "x": x, "y": y, "a0": a0, "b0": b0, "time": time,
        "h_small": h_small, "h_moderate": h_moderate, "egr": h_moderate / 4,
        "flattest": math.sqrt(y / x),
        "paths": {k: {"method": p.method, "lr": p.lr, "egr": p.egr, "status": p.status,
                      "t": _r(p.t), "a": _r(p.theta[:, 0]), "b": _r(p.theta[:, 1]),
                      "loss": _r(p.loss), **_ab_summary(p, x, y, "final_")}
                  for k, p in runs.items()},
        "gaps": gaps,
        "flow_conservation": float(abs((flow_end[0] ** 2 - flow_end[1] ** 2) - (a0**2 - b0**2))),
        "versions": versions(), "device": device_info(),
        "wall_time_s": _time.perf_counter() - start,
        "note": "gap = ||a| − |b|| at t = time; flow_conservation = |Δ(a² − b²)| along the plain "
                "flow (0 in exact arithmetic)",
    }
    if out_dir is not None:
        proj = np.eye(2)
        for p in runs.values():
            write_trace(p, Path(out_dir) / "traces", eng, proj)
        results["traces"] = sorted(f"traces/{p.run_id}.json" for p in runs.values())
        write_results(out_dir, results)
    return results


def _ab_summary(p: Trajectory, x: float, y: float, prefix: str = "") -> dict:
    """Final (a, b), gap ||a| − |b||, E, ‖∇E‖² and tr H = x²(a² + b²) (None unless completed)."""
    keys = ("a", "b", "gap", "loss", "grad_norm_sq", "trace_H")
    if p.status != "completed":
        return {prefix + k: None for k in keys}
    a, b = (float(v) for v in p.theta[-1])
    vals = (a, b, abs(abs(a) - abs(b)), float(p.loss[-1]), float(p.grad_norm_sq[-1]),
            x**2 * (a**2 + b**2))
    return {prefix + k: v for k, v in zip(keys, vals)}


# ---------------------------------------------------------------------------------------------
# 3. Sweep over h × width: R_IG = ‖∇L‖², igr_gd and test accuracy (Barrett & Dherin 2021, §5).

SWEEP_DEFAULTS = dict(dataset="digits", n_train=512, model="mlp", activation="relu", loss="ce",
                      dtype="float32")
SWEEP_LRS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
SWEEP_WIDTHS = (32, 128, 512)


def at_loss(metrics: dict, target: float) -> dict | None:
    """Values where the training loss first reaches ``target``: ‖∇L‖² and t interpolated
    log-linearly in L between the two bracketing logged rows; accuracies at the first row ≤ target."""
    L = [v if v is not None else math.inf for v in metrics["train_loss"]]
    i = next((j for j, v in enumerate(L) if v <= target), None)
    if i is None or i == 0:
        return None
    f = (math.log(target) - math.log(L[i - 1])) / (math.log(L[i]) - math.log(L[i - 1]))
    g0, g1 = metrics["grad_norm_sq"][i - 1], metrics["grad_norm_sq"][i]
    t0, t1 = metrics["t"][i - 1], metrics["t"][i]
    return {"t": t0 + f * (t1 - t0), "grad_norm_sq": math.exp(math.log(g0) + f * math.log(g1 / g0)),
            "test_acc": metrics.get("test_acc", [None] * (i + 1))[i],
            "test_loss": metrics["test_loss"][i], "train_loss": L[i]}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """τ = mean over pairs of sign(x_i − x_j)·sign(y_i − y_j) (None with fewer than 2 points)."""
    pts = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    pairs = [(p, q) for i, p in enumerate(pts) for q in pts[i + 1:]]
    if not pairs:
        return None
    return float(np.mean([np.sign(p[0] - q[0]) * np.sign(p[1] - q[1]) for p, q in pairs]))


def igr_sweep(base: RunConfig, lrs: Sequence[float] = SWEEP_LRS,
              widths: Sequence[int] = SWEEP_WIDTHS, *, time: float = 150.0,
              target_loss: float = 0.03, log_every: int = 5, dataset: Dataset | None = None,
              out_dir: Path | None = None, traces: bool = True,
              progress: Callable[[str], None] | None = None) -> dict:
    """GD for each (h, width) to t ≈ ``time``: ⌈time/h⌉ steps rounded up to a multiple of
    ``log_every`` (one compiled chunk per width for every h).

    Per run: R_IG = ‖∇L‖², igr_gd = (h/4)‖∇L‖², test accuracy at t = ``time`` and where the training
    loss first reaches ``target_loss`` (matched loss); Kendall τ trends (``sweep_trends``).
    Published claim (Barrett & Dherin 2021): larger h and larger width → smaller R_IG, higher test
    accuracy. ``out_dir``: results.json and, with ``traces``, one trace per run in traces/.
    """
    lrs = sorted(validate_lrs(lrs))
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ConfigError("--width: give positive integers")
    for name, v in (("--time", time), ("--target-loss", target_loss), ("--log-every", log_every)):
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{name} must be > 0, got {v:g}")
    le = int(log_every)
    cfgs = [base.replace(optimizer="gd", lr=h, width=w, log_every=le,
                         steps=le * math.ceil(time / (h * le) - 1e-9)) for w in widths for h in lrs]
    for c in cfgs:
        validate(c)
    start = _time.perf_counter()
    ds = dataset if dataset is not None else training.load_data(base)
    say = progress or (lambda _: None)
    rows = []
    for c in cfgs:
        rid = f"gd_lr{c.lr:g}_w{c.width}"
        say(f"{rid}: {c.steps} steps")
        keep = out_dir is not None and traces
        res = training.train(c, ds, trace_path=Path(out_dir) / "traces" / f"{rid}.json" if keep
                             else None)
        m, s = res.trace["metrics"], res.trace["summary"]
        hit = at_loss(m, target_loss) if res.trace["status"] == "completed" else None
        rows.append({
            "run_id": rid, "lr": c.lr, "width": c.width, "steps": c.steps, "t": c.steps * c.lr,
            "status": res.trace["status"], "num_params": res.trace["num_params"],
            "final": {k: s.get(k) for k in ("train_loss", "test_loss", "train_acc", "test_acc",
                                            "grad_norm_sq", "igr_gd")},
            "at_loss": None if hit is None else hit | {"igr_gd": c.lr / 4 * hit["grad_norm_sq"]},
            "wall_time_s": res.trace["wall_time_s"]})
    results = {
        "kind": "sgdreg.igr.sweep/1", "config": base.to_dict(), "lrs": lrs, "widths": widths,
        "time": time, "target_loss": target_loss, "log_every": le, "dataset": ds.describe(),
        "rows": rows, "trends": sweep_trends(rows), "versions": versions(),
        "device": device_info(), "wall_time_s": _time.perf_counter() - start,
        "note": "final: at t = steps·lr ≈ time; at_loss: where train_loss first reaches "
                "target_loss; trends: Kendall τ against h per width and against width per h "
                "(claim: τ < 0 for grad_norm_sq, > 0 for test_acc)",
    }
    if out_dir is not None:
        results["traces"] = [f"traces/{r['run_id']}.json" for r in rows] if traces else []
        write_results(out_dir, results)
    return results


def sweep_trends(rows: Sequence[dict]) -> list[dict]:
    """Kendall τ of R_IG, igr_gd and test_acc against h (per width) and against width (per h),
    for each view (final, at_loss). The claim: τ < 0 for R_IG and τ > 0 for test_acc."""
    out = []
    for against, fixed in (("lr", "width"), ("width", "lr")):
        for v0 in sorted({r[fixed] for r in rows}):
            sub = [r for r in rows if r[fixed] == v0 and r["status"] == "completed"]
            for view in ("final", "at_loss"):
                vals = [(r[against], r[view]) for r in sub if r[view] is not None]
                xs = [x for x, _ in vals]
                out.append({"against": against, fixed: v0, "view": view, "n": len(vals), **{
                    f"tau_{k}": kendall_tau(xs, [v.get(k) for _, v in vals])
                    for k in ("grad_norm_sq", "igr_gd", "test_acc")}})
    return out


# ---------------------------------------------------------------------------------------------
# Figures (from stored results only).


def _nan(v):
    return np.nan if v is None else v


def render_backward_error(results_dir: Path, out_path: Path) -> list[Path]:
    """Distances GD↔flows against h (log-log, fitted orders), against t, and projected paths."""
    from .plots import _setup, save

    plt, sns = _setup()
    r = read_results(results_dir)
    rows = [row for row in r["rows"] if row["status"] == "completed"]
    hs = np.array([row["lr"] for row in rows])
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.0))
    ax = axes[0]
    pal = sns.color_palette("deep")
    for key, label, c, mk in (("flow", "GD ↔ plain flow", pal[3], "o"),
                              ("modified_flow", "GD ↔ modified flow", pal[0], "s")):
        d = np.array([row[f"dist_{key}"] for row in rows])
        p = r["orders"].get(key)
        ax.plot(hs, d, mk + "-", color=c, label=f"{label} (order {p:.2f})" if p else label)
    if rows and "dist_egr" in rows[0]:
        ax.plot(hs, [_nan(row["dist_egr"]) for row in rows], "^--", color=pal[4],
                label=f"GD(h) ↔ EGR (s={r['egr_lr']:g}, μ=h/4)")
        ax.plot(hs, [_nan(row["dist_small_step"]) for row in rows], "v:", color=pal[7],
                label=f"GD(h) ↔ GD(s={r['egr_lr']:g})")
    if len(rows):
        h0 = hs.max()
        for order, key, ls in ((1, "dist_flow", "--"), (2, "dist_modified_flow", ":")):
            d0 = max(row[key] for row in rows if row["lr"] == h0)
            ax.plot(hs, d0 * (hs / h0) ** order, ls, color="0.5", lw=1,
                    label="reference ∝ h" if order == 1 else "reference ∝ h²")
    ax.set(xscale="log", yscale="log", xlabel="step size h",
           ylabel=f"‖θ_GD − θ‖ at t = {r['time']:g}", title="Backward error: global order in h")
    ax.set_xticks(hs, [f"{h:g}" for h in hs])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax = axes[1]
    colors = sns.color_palette("viridis", len(r["series"]))
    for (h, s), c in zip(r["series"].items(), colors):
        t = np.array(s["t"])
        ax.plot(t[1:], s["dist_flow"][1:], "-", color=c, label=f"h={h} plain flow")
        ax.plot(t[1:], s["dist_modified_flow"][1:], "--", color=c, label=f"h={h} modified flow")
    ax.set(yscale="log", xlabel="time t = k·h", ylabel="‖θ_GD(t) − θ(t)‖",
           title="Distance along the run (solid: plain, dashed: modified)")
    ax.legend(fontsize=7, ncol=1)
    ax = axes[2]
    h = max(r["series"], key=float)
    s = r["series"][h]
    for method, style, label in (("flow", "-", "plain flow"), ("modified-flow", "--", "modified flow"),
                                 ("gd", "o", f"GD h={h}")):
        p = np.array(s["proj"][method])
        ax.plot(p[0], p[1], style, ms=4, label=label)
    ax.set(xlabel="random projection 1 of θ − θ₀", ylabel="random projection 2",
           title=f"Paths (h={h}, seeded projection)")
    ax.legend(fontsize=8)
    cfg = r["config"]
    fig.suptitle(f"GD vs gradient flows from one θ₀: {r['dataset']['name']} (n={r['dataset']['n_train']}"
                 f"), {cfg['model']} width {cfg['width']} {cfg['activation']}, {cfg['loss']}, "
                 f"{cfg['dtype']}, P={r['num_params']}", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)


def render_two_param(results_dir: Path, out_path: Path) -> list[Path]:
    """(a, b) plane with the minima ab = y/x and the trajectories (full and zoomed on where they
    land); final gap ||a| − |b|| against h."""
    from .plots import _setup, save

    plt, sns = _setup()
    r = read_results(results_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.7))
    x, y, f = r["x"], r["y"], r["flattest"]
    pal = sns.color_palette("deep")
    styles = {"flow": (pal[2], "-", "plain flow"),
              "gd_small": (pal[2], "o", f"GD h={r['h_small']:g}"),
              "gd_moderate": (pal[3], "o-", f"GD h={r['h_moderate']:g}"),
              "modified_flow": (pal[0], "--", f"modified flow h={r['h_moderate']:g}"),
              "egr": (pal[4], "-.", f"EGR h={r['h_small']:g}, μ={r['egr']:g}")}
    ends = np.array([[p["final_a"], p["final_b"]] for p in r["paths"].values()])
    lo, hi = ends.min(0), ends.max(0)
    pad = 0.25 * (hi - lo).max()
    lim = 1.15 * max(r["a0"], r["b0"])
    views = (((0, lim), (0, lim), "trajectories"),
             ((lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad), "where they land (zoom)"))
    for ax, (xl, yl, title) in zip(axes[:2], views):
        A, B = np.meshgrid(np.linspace(*xl, 200), np.linspace(*yl, 200))
        ax.contour(A, B, np.log10(0.5 * (y - A * B * x) ** 2 + 1e-4), levels=10, colors="0.85",
                   linewidths=0.6, linestyles="solid")
        a = np.linspace(max(xl[0], 1e-3), xl[1], 300)
        ax.plot(a, y / x / a, "k--", lw=1, label="minima ab = y/x")
        ax.plot([f], [f], "kx", ms=9, mew=2, label="flattest |a| = |b|")
        for k, (c, st, label) in styles.items():
            p = r["paths"][k]
            ax.plot(p["a"], p["b"], st, color=c, ms=2.5, lw=1.3, label=label)
            ax.plot([p["final_a"]], [p["final_b"]], "o", color=c, ms=7, mec="k")
        ax.plot([r["a0"]], [r["b0"]], "k*", ms=10)
        ax.set(xlim=xl, ylim=yl, xlabel="a", ylabel="b", title=title)
    axes[0].set_aspect("equal")
    axes[0].legend(fontsize=7, loc="lower right")
    ax = axes[2]
    g = r["gaps"]
    hs = [row["lr"] for row in g]
    ax.plot(hs, [_nan(row["gd_gap"]) for row in g], "o-", color=pal[3], label="GD")
    ax.plot(hs, [_nan(row["modified_flow_gap"]) for row in g], "s--", color=pal[0],
            label="modified flow (same h)")
    ax.axhline(r["paths"]["flow"]["final_gap"], color=pal[2], ls="-", label="plain flow")
    ax.axhline(r["paths"]["egr"]["final_gap"], color=pal[4], ls="-.",
               label=f"EGR (h={r['h_small']:g}, μ={r['egr']:g})")
    ax.set(xlabel="step size h", ylabel=f"final ||a| − |b|| at t = {r['time']:g}",
           title="Larger h lands nearer |a| = |b|")
    ax.legend(fontsize=8)
    fig.suptitle(f"E(a,b) = ½(y − abx)², x = {x:g}, y = {y:g}, from (a, b) = ({r['a0']:g}, "
                 f"{r['b0']:g})", fontsize=11)
    fig.tight_layout()
    return save(fig, out_path)


def render_sweep(results_dir: Path, out_path: Path) -> list[Path]:
    """R_IG = ‖∇L‖², igr_gd and test accuracy against h, one line per width; top: at t = T,
    bottom: at the matched training loss."""
    from .plots import _setup, save

    plt, sns = _setup()
    r = read_results(results_dir)
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.2), sharex=True)
    colors = dict(zip(r["widths"], sns.color_palette("crest", len(r["widths"]))))
    panels = (("grad_norm_sq", "R_IG = ‖∇L‖²", True), ("igr_gd", "igr_gd = (h/4)‖∇L‖²", True),
              ("test_acc", "test accuracy", False))
    views = (("final", f"at t = {r['time']:g}"), ("at_loss", f"at train loss {r['target_loss']:g}"))
    for i, (view, vlabel) in enumerate(views):
        for j, (key, label, log) in enumerate(panels):
            ax = axes[i, j]
            for w in r["widths"]:
                pts = [(row["lr"], row[view][key]) for row in r["rows"] if row["width"] == w
                       and row["status"] == "completed" and row[view]
                       and row[view].get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), "o-", color=colors[w], label=f"width {w}")
                div = [row["lr"] for row in r["rows"] if row["width"] == w
                       and row["status"] != "completed"]
                for h in div:
                    ax.axvline(h, color=colors[w], ls=":", lw=1)
            ax.set(xscale="log", yscale="log" if log else "linear", ylabel=label,
                   title=f"{label} {vlabel}")
            if i == 1:
                ax.set_xlabel("step size h")
    axes[0, 0].legend(fontsize=8)
    cfg = r["config"]
    ds = r["dataset"]
    fig.suptitle(f"Full-batch GD on {ds['name']} (n={ds['n_train']}; test n={ds['n_test']}: one "
                 f"example = {100 / ds['n_test']:.2g}%), {cfg['model']} {cfg['activation']}, "
                 f"{cfg['loss']}, seed {cfg['seed']} (dotted: diverged)", fontsize=10)
    fig.tight_layout()
    return save(fig, out_path)
