"""Implicit gradient regularization made visible (Barrett & Dherin 2021; Smith et al. 2021;
docs/science.md#implicit-regularization). Config → results only; the figures are ``sgdreg.plotting.igr``.

* ``backward_error_check``: from one θ0, GD with step h, the plain flow dθ/dt = −∇L and the
  modified flow dθ/dt = −∇(L + (h/4)‖∇L‖²) at matched times t = k·h. Globally GD is O(h) from
  the plain flow and O(h²) from the modified flow; the observed orders are the slopes of
  log‖θ_GD − θ_flow‖ against log h. Also EGR: GD at a small step s on L + μ‖∇L‖² mimics GD at
  step h with μ = (h − s)/4: GD at s itself adds (s/4)‖∇L‖², so μ = h/4 would match step h + s.
* ``sgd_epoch_check``: one epoch of SGD over a fixed partition into m minibatches, averaged over
  the minibatch orders, against the SGD modified flow of L + (h/4m)Σ_k‖∇L̂_k‖² (Smith et al.
  2021: the flow the mean iterate follows over one epoch, to O(m³h³)).
* ``two_param_example``: E(a, b) = ½(y − a·b·x)² from (a, b) = (2.8, 3.5) (model f(x) = a·b·x,
  one example, loss mse). The plain flow conserves a² − b²; GD multiplies it by (1 − h²r²x²)
  per step (r = y − abx), so larger h lands nearer |a| = |b|. Stable (the IGR range) while
  h < 2/λ_max(θ0), λ_max of the exact 2×2 Hessian (``two_param_hessian``).
* ``igr_sweep``: GD over a grid of seed × h × width; ‖∇L‖² (R_IG), losses and test accuracy at a
  matched time and at a matched training loss, aggregated over seeds (mean, min–max) with the
  comparisons that exceed the seed spread (Barrett & Dherin 2021, §5, claim: larger h and larger
  models give smaller R_IG and higher test accuracy).

Every path starts from the θ0 of ``cfg.seed`` and runs through ``engine.advance``. GD runs with
the EGR branch on (μ = 0 is plain GD: g + 2·0·Hg = g exactly), so GD and EGR share one compiled
program per model. The float64 checks need JAX's 64-bit mode, switched on by the caller (the
``sgdreg`` command and the experiments/ scripts do; sgdreg never flips it itself).
"""

from __future__ import annotations

import itertools
import math
import time as _time
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import correlation, training
from .. import dynamics as dyn
from ..config import RunConfig, validate
from ..data import Dataset
from ..errors import ConfigError
from ..results import sig
from ..trace import device_info
from ._paths import (
    Trajectory,
    build,
    dynamics_for,
    finish,
    flat,
    log_steps,
    observed_order,
    random_projection,
    run_path,
    steps_for,
    validate_lrs,
)
from ._paths import read_results as read_results

BACKWARD_ERROR, TWO_PARAM, SWEEP = "igr_backward_error", "igr_two_param", "igr_sweep"
CHECK_DEFAULTS = dict(dataset="digits", n_train=64, model="mlp", width=16, activation="tanh",
                      loss="mse", dtype="float64", rtol=1e-10, atol=1e-12)
DIGITS = 6  # significant digits of the stored series


def _dist(a: Trajectory, b: Trajectory) -> float:
    return float(np.linalg.norm(a.theta[-1] - b.theta[-1]))


def egr_mu(h: float, s: float) -> float:
    """μ = (h − s)/4: GD at step s on L + μ‖∇L‖² follows the modified loss
    L + (μ + s/4)‖∇L‖² + O(s·μ, s²) (Barrett & Dherin 2021, §3), which is GD(h)'s
    L + (h/4)‖∇L‖² when μ + s/4 = h/4."""
    return (h - s) / 4


# ---------------------------------------------------------------------------------------------
# 1. Backward-error check: GD vs plain flow vs modified flow at matched times.


def backward_error_check(cfg: RunConfig, lrs: Sequence[float] = (0.2, 0.1, 0.05),
                         time: float = 2.0, *, dataset: Dataset | None = None,
                         model: eqx.Module | None = None, n_log: int = 10,
                         egr_lr: float | None = None, out_dir: Path | None = None,
                         progress: Callable[[str], None] | None = None) -> dict:
    """GD(h) vs plain flow vs modified flow from one θ0 at t = k·h, for each h in ``lrs``.

    Reports ‖θ_GD − θ_flow‖ (O(h)) and ‖θ_GD − θ_mod‖ (O(h²)) at t = ``time`` with the observed
    orders, |ΔL|, and, with EGR at the small step s = ``egr_lr`` (default min(h)/4; 0: skip; else
    s < min(h)), ‖θ_GD(h) − θ_EGR(s, μ)‖ for μ = (h − s)/4 (GD at s carries its own implicit
    (s/4)‖∇L‖², so L + μ‖∇L‖² then has the modified loss of step h; Barrett & Dherin 2021, §3)
    and for the confounded μ = h/4 (``dist_egr_naive``), against ‖θ_GD(h) − θ_GD(s)‖.
    ``out_dir``: traces/ and igr_backward_error.json (``sgdreg.results``).
    """
    lrs = sorted(validate_lrs(lrs), reverse=True)
    if not (time > 0 and math.isfinite(time)):
        raise ConfigError(f"time must be a finite number > 0, got {time:g}")
    if n_log < 1:
        raise ConfigError(f"n_log must be ≥ 1, got {n_log}")
    egr_lr = min(lrs) / 4 if egr_lr is None else float(egr_lr)
    if egr_lr < 0:
        raise ConfigError(f"egr_lr must be ≥ 0, got {egr_lr:g}")
    if egr_lr >= min(lrs):
        raise ConfigError(f"egr_lr must be below every step size h (μ = (h − s)/4 > 0), got "
                          f"{egr_lr:g} ≥ {min(lrs):g}")
    ks = {h: steps_for(time, h) for h in lrs}
    k_small = steps_for(time, egr_lr, "time (with egr_lr)") if egr_lr else 0
    start = _time.perf_counter()
    s = build(cfg, dataset, model)
    theta0 = flat(s.params0)
    proj = random_projection(theta0.size, 2, cfg.seed)
    say = progress or (lambda _: None)
    rows, series, paths = [], {}, []
    small = None
    if egr_lr:
        say(f"gd h={egr_lr:g} (small step)")
        small = run_path(s, "gd", egr_lr, log_steps(k_small, n_log))
        paths.append(small)
    for h in lrs:
        steps = log_steps(ks[h], n_log)
        say(f"h={h:g}: gd, flow, modified flow ({ks[h]} steps)")
        gd, fl, mf = (run_path(s, m, h, steps) for m in ("gd", "flow", "modified-flow"))
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
            mu, mu_naive = egr_mu(h, egr_lr), h / 4
            say(f"h={h:g}: egr at s={egr_lr:g}, μ=(h − s)/4={mu:g} and μ=h/4={mu_naive:g}")
            eg, naive = (run_path(s, "egr", egr_lr, [0, k_small], egr=m) for m in (mu, mu_naive))
            paths += [eg, naive]
            fine = ok and eg.status == naive.status == small.status == "completed"
            row |= {"egr_lr": egr_lr, "egr": mu, "egr_naive": mu_naive,
                    "dist_egr": _dist(gd, eg) if fine else None,
                    "dist_egr_naive": _dist(gd, naive) if fine else None,
                    "dist_small_step": _dist(gd, small) if fine else None}
        rows.append(row)
        series[f"{h:g}"] = {
            "t": sig(gd.t[:n], DIGITS), "dist_flow": sig(d_fl, DIGITS),
            "dist_modified_flow": sig(d_mf, DIGITS),
            "loss": {p.method: sig(p.loss[:n], DIGITS) for p in (gd, fl, mf)},
            "proj": {p.method: sig(proj @ (p.theta - theta0).T, DIGITS) for p in (gd, fl, mf)}}
    done = [r for r in rows if r["status"] == "completed"]
    orders = {k: observed_order([r["lr"] for r in done], [r.get(f"dist_{k}") for r in done])
              for k in ("flow", "modified_flow") + (("egr", "egr_naive") if egr_lr else ())}
    results = {
        "kind": "sgdreg.igr.backward_error/1", "time": time, "lrs": lrs, "n_log": n_log,
        "egr_lr": egr_lr or None, "num_params": int(theta0.size),
        "dataset": s.dataset.describe(), "rows": rows, "orders": orders, "series": series,
        "device": device_info(),
        "note": "dist_*: ‖θ_GD(T) − θ_method(T)‖ at T = steps·lr; orders: slopes of log dist vs "
                "log h (expected 1 for the plain flow, 2 for the modified flow and EGR); dist_egr: EGR at "
                "step egr_lr with μ = egr = (h − egr_lr)/4, dist_egr_naive: with μ = h/4",
    }
    return finish(out_dir, BACKWARD_ERROR, cfg.to_dict(), results, start, paths, s, proj)


# ---------------------------------------------------------------------------------------------
# 1b. SGD over one epoch of a fixed partition (Smith et al. 2021).


def minibatch_loss(objective, x, y) -> Callable:
    """θ ↦ L̂(θ) = (1/B)Σ_i ℓ(f_θ(x_i), y_i) on the minibatch (x, y) (inference mode)."""
    return lambda p: jnp.mean(jax.vmap(objective.example_loss, (None, 0, 0))(p, x, y))


class SGDModifiedFlow(dyn.GradientFlow):
    """dθ/dt = −∇(L + (h/4m)Σ_k‖∇L̂_k‖²) = −(ḡ + (h/2)(1/m)Σ_k H_k g_k) over the fixed
    partition of the training data into ``num_batches`` = m consecutive minibatches (Smith et
    al. 2021; ḡ = ∇L when they cover it). The solver settings and chunking are GradientFlow's."""

    num_batches: int = eqx.field(static=True, default=1)
    name: str = eqx.field(static=True, default="sgd-modified-flow")

    def field(self, problem, data: dyn.Data):
        m = self.num_batches
        xb = data.x_train.reshape((m, -1) + data.x_train.shape[1:])
        yb = data.y_train.reshape((m, -1) + data.y_train.shape[1:])

        def minibatch(params, x, y):
            f = minibatch_loss(problem.objective, x, y)
            g = jax.grad(f)(params)
            return g, jax.jvp(jax.grad(f), (params,), (g,))[1]

        def f(t, params, h):
            g, hg = jax.lax.map(lambda b: minibatch(params, *b), (xb, yb))
            return jax.tree.map(lambda a, b: -(jnp.mean(a, 0) + 0.5 * h * jnp.mean(b, 0)), g, hg)

        return f

    def describe(self) -> dict:
        return {**super().describe(), "kind": "sgd-modified-flow", "num_batches": self.num_batches}


@eqx.filter_jit
def _sgd_epoch_mean(params, objective, xb, yb, h, orders):
    """Mean over the given orders of the iterate after one epoch θ ← θ − h∇L̂_{π(k)}(θ)."""

    def one(order):
        def step(p, k):
            g = jax.grad(minibatch_loss(objective, xb[k], yb[k]))(p)
            return jax.tree.map(lambda a, b: a - h * b, p, g), None

        return jax.lax.scan(step, params, order)[0]

    return jax.tree.map(lambda a: jnp.mean(a, 0), jax.lax.map(one, orders))


def sgd_epoch_check(cfg: RunConfig, lrs: Sequence[float] = (0.02, 0.01, 0.005), *,
                    batch_size: int = 8, dataset: Dataset | None = None,
                    max_orders: int = 120) -> dict:
    """One epoch of SGD over a fixed partition into m = n/B minibatches (seeded), averaged over
    the orders of the minibatches (all m! when m! ≤ ``max_orders``, else a seeded sample), against
    the SGD modified flow (``SGDModifiedFlow``), the GD modified flow and the plain flow at
    t = m·h. Smith et al. 2021: the mean iterate follows the SGD modified flow to O(m³h³), while
    the others miss an O(h²) term (the minibatch-variance penalty)."""
    lrs = sorted(validate_lrs(lrs), reverse=True)
    s = build(cfg, dataset)
    n, m = s.dataset.n_train, s.dataset.n_train // max(batch_size, 1)
    if batch_size < 1 or m < 2:
        raise ConfigError(f"batch_size must give at least 2 minibatches, got {batch_size}")
    part = np.random.default_rng(cfg.seed).permutation(n)[: m * batch_size]
    # the flows see exactly the partitioned data (drops n − m·B examples when B ∤ n)
    data = dyn.Data(s.data.x_train[part], s.data.y_train[part], s.data.x_test, s.data.y_test)
    xb = data.x_train.reshape((m, batch_size) + data.x_train.shape[1:])
    yb = data.y_train.reshape((m, batch_size) + data.y_train.shape[1:])
    exact = math.factorial(m) <= max_orders
    orders = (np.array(list(itertools.permutations(range(m)))) if exact else
              np.array([np.random.default_rng([cfg.seed, i]).permutation(m)
                        for i in range(max_orders)]))
    flows = {"sgd_modified_flow": SGDModifiedFlow(rtol=cfg.rtol, atol=cfg.atol, num_batches=m),
             "modified_flow": dynamics_for("modified-flow", cfg),
             "flow": dynamics_for("flow", cfg)}
    dt = jax.tree.leaves(s.params0)[0].dtype
    rows = []
    for h in lrs:
        mean = flat(_sgd_epoch_mean(s.params0, s.problem.objective, xb, yb, jnp.asarray(h, dt),
                                    jnp.asarray(orders, jnp.int32)))
        ends = {k: run_path(s, f.name, h, [0, m], dynamics=f, data=data) for k, f in flows.items()}
        ok = all(p.status == "completed" for p in ends.values())
        rows.append({"lr": h, "m": m, "status": "completed" if ok else "failed",
                     **{f"dist_{k}": float(np.linalg.norm(mean - p.theta[-1]))
                        for k, p in ends.items()}})
    orders_fit = {k: observed_order([r["lr"] for r in rows], [r[f"dist_{k}"] for r in rows])
                  for k in flows}
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


TWO_PARAM_LRS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.065, 0.075, 0.08, 0.09, 0.1)


def two_param_hessian(a: float, b: float, x: float = 1.0, y: float = 1.0) -> np.ndarray:
    """∇²E of E(a, b) = ½(y − abx)², exactly: [[b²x², 2abx² − xy], [2abx² − xy, a²x²]]
    (∂²E/∂a∂b = abx² − rx with r = y − abx)."""
    off = 2 * a * b * x**2 - x * y
    return np.array([[b**2 * x**2, off], [off, a**2 * x**2]])


def two_param_lambda_max(a: float, b: float, x: float = 1.0, y: float = 1.0) -> float:
    """λ_max of the 2×2 Hessian in closed form: (tr + √((H_aa − H_bb)² + 4H_ab²))/2."""
    (haa, hab), (_, hbb) = two_param_hessian(a, b, x, y)
    return float((haa + hbb + math.sqrt((haa - hbb) ** 2 + 4 * hab**2)) / 2)


def two_param_example(lrs: Sequence[float] = TWO_PARAM_LRS, *, h_small: float = 0.005,
                      h_moderate: float = 0.05, time: float = 20.0, x: float = 1.0,
                      y: float = 1.0, a0: float = 2.8, b0: float = 3.5, n_log: int = 120,
                      out_dir: Path | None = None,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Trajectories of E(a, b) = ½(y − abx)² from (a0, b0): GD at h_small and h_moderate, the plain
    flow, the modified flow of h_moderate, EGR at step h_small with μ = (h_moderate − h_small)/4
    (``egr_mu``: it then has GD(h_moderate)'s modified loss) and, when max(lrs) ≥ 2/λ_max(θ0),
    GD at max(lrs); then the final gap ||a| − |b|| of GD and of the modified flow for each h in
    ``lrs`` (float64), each marked stable when h < 2/λ_max(θ0).

    Minima lie on ab = y/x with tr H = x²(a² + b²), smallest at |a| = |b| = √(y/x). The flow
    conserves a² − b²; GD multiplies it by (1 − h²r²x²) each step, so the gap shrinks as h grows:
    the implicit regularization (h/4)‖∇E‖² while GD is stable (h < 2/λ_max(θ0), λ_max exact from
    ``two_param_lambda_max``); above that GD starts by oscillating across the valley (an
    instability the modified flow does not have).
    """
    lrs = sorted(validate_lrs(lrs))
    for name, v in (("h_small", h_small), ("h_moderate", h_moderate)):
        validate_lrs([v], name)
    if not h_small < h_moderate:
        raise ConfigError(f"h_small must be below h_moderate (EGR μ = (h_moderate − h_small)/4"
                          f" > 0), got {h_small:g} ≥ {h_moderate:g}")
    if not (time > 0 and math.isfinite(time)):
        raise ConfigError(f"time must be a finite number > 0, got {time:g}")
    if not (x != 0 and y / x > 0):
        raise ConfigError("the two-parameter example needs y/x > 0 (minima on ab = y/x)")
    lam0 = two_param_lambda_max(a0, b0, x, y)
    h_stable = 2 / lam0
    h_unstable = max(lrs) if max(lrs) >= h_stable else None
    ks = {h: math.ceil(time / h - 1e-9) for h in {*lrs, h_small, h_moderate}}  # t ≥ time
    if max(ks.values()) > 2**31 - 1:  # the engine's int32 step counter
        raise ConfigError(f"time {time:g} means {max(ks.values())} steps; at most {2**31 - 1}")
    start = _time.perf_counter()
    cfg = RunConfig(dataset="two-param", model="two-param", loss="mse", dtype="float64",
                    rtol=1e-10, atol=1e-12, lr=h_moderate, steps=ks[h_moderate])
    model = TwoParamModel(a0, b0, dtype=training.require_dtype(cfg.dtype))
    s = build(cfg, two_param_dataset(x, y), model)
    say = progress or (lambda _: None)
    say("trajectories: gd (small, moderate h), flow, modified flow, egr")
    small, moderate = (log_steps(ks[h], n_log, "log") for h in (h_small, h_moderate))
    mu = egr_mu(h_moderate, h_small)
    runs = {
        "gd_small": run_path(s, "gd", h_small, small),
        "gd_moderate": run_path(s, "gd", h_moderate, moderate),
        "flow": run_path(s, "flow", h_small, small),
        "modified_flow": run_path(s, "modified-flow", h_moderate, moderate),
        "egr": run_path(s, "egr", h_small, small, egr=mu),
    }
    if h_unstable is not None:
        say(f"trajectory: gd at h={h_unstable:g} ≥ 2/λ_max(θ0) = {h_stable:.4g}")
        runs["gd_unstable"] = run_path(s, "gd", h_unstable, log_steps(ks[h_unstable], n_log, "log"))
    gaps = []
    for h in lrs:
        say(f"final gap at h={h:g}")
        g = run_path(s, "gd", h, [0, ks[h]])
        m = run_path(s, "modified-flow", h, [0, ks[h]])
        gaps.append({"lr": h, "steps": ks[h], "status": g.status, "stable": h < h_stable,
                     **_ab_summary(g, x, y, "gd_"), **_ab_summary(m, x, y, "modified_flow_")})
    flow = runs["flow"]
    flow_end = flow.theta[-1]
    results = {
        "kind": "sgdreg.igr.two_param/2", "x": x, "y": y, "a0": a0, "b0": b0, "time": time,
        "h_small": h_small, "h_moderate": h_moderate, "egr": mu, "flattest": math.sqrt(y / x),
        "hessian_theta0": two_param_hessian(a0, b0, x, y).tolist(), "lambda_max_theta0": lam0,
        "stable_lr_max": h_stable, "h_unstable": h_unstable,
        "lambda_max_flow_max": max(two_param_lambda_max(a, b, x, y) for a, b in flow.theta),
        "paths": {k: {"method": p.method, "lr": p.lr, "egr": p.egr, "status": p.status,
                      "t": sig(p.t, DIGITS), "a": sig(p.theta[:, 0], DIGITS),
                      "b": sig(p.theta[:, 1], DIGITS), "loss": sig(p.loss, DIGITS),
                      **_ab_summary(p, x, y, "final_")}
                  for k, p in runs.items()},
        "gaps": gaps,
        "flow_conservation": float(abs((flow_end[0] ** 2 - flow_end[1] ** 2) - (a0**2 - b0**2))),
        "device": device_info(),
        "note": "gap = ||a| − |b|| at t = time; stable: h < stable_lr_max = 2/lambda_max_theta0 "
                "(exact 2×2 Hessian at (a0, b0); lambda_max_flow_max: its largest value along the "
                "logged plain flow); egr = μ of the EGR path at step h_small = (h_moderate − "
                "h_small)/4; flow_conservation = |Δ(a² − b²)| along the plain flow (0 in exact "
                "arithmetic)",
    }
    return finish(out_dir, TWO_PARAM, cfg.to_dict(), results, start, list(runs.values()), s,
                  np.eye(2))


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
SWEEP_LRS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0)
SWEEP_WIDTHS = (32, 128, 512)
SWEEP_SEEDS = (0, 1, 2)
SWEEP_KEYS = ("grad_norm_sq", "igr_gd", "train_loss", "test_loss", "test_acc", "t")


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


def _or_none(v: float) -> float | None:
    """NaN (e.g. τ of fewer than 2 points) → None: JSON null."""
    return None if math.isnan(v) else float(v)


def igr_sweep(base: RunConfig, lrs: Sequence[float] = SWEEP_LRS,
              widths: Sequence[int] = SWEEP_WIDTHS, *, seeds: Sequence[int] | None = None,
              time: float = 150.0, target_loss: float = 0.03, log_every: int = 5,
              dataset: Dataset | None = None, out_dir: Path | None = None, traces: bool = True,
              progress: Callable[[str], None] | None = None) -> dict:
    """GD for each (seed, width, h) to t ≈ ``time``: ⌈time/h⌉ steps rounded up to a multiple of
    ``log_every`` (one compiled chunk per width for every h and seed).

    Per run: R_IG = ‖∇L‖², igr_gd = (h/4)‖∇L‖², losses and test accuracy at t = ``time`` and
    where the training loss first reaches ``target_loss`` (matched loss). A run counts as
    diverged when its loss became non-finite or its final training loss is above the initial one.
    ``seeds`` (default: ``base.seed``) pick θ0 and, unless ``dataset`` is given, the training
    subset. Aggregates over seeds (``sweep_summary``), Kendall τ trends (``sweep_trends``) and
    end-to-end comparisons against the seed spread (``sweep_effects``). Published claim (Barrett
    & Dherin 2021, §5): larger h and larger width → smaller R_IG, higher test accuracy.
    ``out_dir``: igr_sweep.json and, with ``traces``, one trace per run in traces/.
    """
    lrs = sorted(validate_lrs(lrs))
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ConfigError("widths: give positive integers")
    seeds = [base.seed] if seeds is None else [int(v) for v in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: give distinct non-negative integers, got {seeds}")
    for name, v in (("time", time), ("target_loss", target_loss), ("log_every", log_every)):
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{name} must be > 0, got {v:g}")
    le = int(log_every)
    cfgs = [base.replace(optimizer="gd", lr=h, width=w, seed=sd, log_every=le,
                         steps=le * math.ceil(time / (h * le) - 1e-9))
            for sd in seeds for w in widths for h in lrs]
    for c in cfgs:
        validate(c)
    start = _time.perf_counter()
    data = {sd: dataset if dataset is not None else training.load_data(base.replace(seed=sd))
            for sd in seeds}
    say = progress or (lambda _: None)
    keep = out_dir is not None and traces
    rows = []
    for c in cfgs:
        rid = f"gd_lr{c.lr:g}_w{c.width}_s{c.seed}"
        say(f"{rid}: {c.steps} steps")
        res = training.train(c, data[c.seed], trace_path=Path(out_dir) / "traces" / f"{rid}.json"
                             if keep else None)
        m, summ = res.trace["metrics"], res.trace["summary"]
        L0, L1 = m["train_loss"][0], summ.get("train_loss")
        diverged = (res.trace["status"] != "completed" or L1 is None or not math.isfinite(L1)
                    or L1 > L0)
        hit = None if diverged else at_loss(m, target_loss)
        rows.append({
            "run_id": rid, "seed": c.seed, "lr": c.lr, "width": c.width, "steps": c.steps,
            "t": c.steps * c.lr, "status": res.trace["status"], "diverged": diverged,
            "num_params": res.trace["num_params"], "initial_train_loss": L0,
            "final": {k: summ.get(k) for k in ("train_loss", "test_loss", "train_acc", "test_acc",
                                               "grad_norm_sq", "igr_gd")} | {"t": c.steps * c.lr},
            "at_loss": None if hit is None else hit | {"igr_gd": c.lr / 4 * hit["grad_norm_sq"]},
            "wall_time_s": res.trace["wall_time_s"]})
    summary = sweep_summary(rows)
    results = {
        "kind": "sgdreg.igr.sweep/2", "lrs": lrs, "widths": widths, "seeds": seeds,
        "time": time, "target_loss": target_loss, "log_every": le,
        "dataset": data[seeds[0]].describe(), "rows": rows, "summary": summary,
        "trends": sweep_trends(rows), "effects": sweep_effects(summary, len(seeds)),
        "device": device_info(),
        "note": "final: at t = steps·lr ≈ time; at_loss: where train_loss first reaches "
                "target_loss; diverged: non-finite loss or final train_loss > initial; summary: "
                "mean/min/max over the seeds that did not diverge; trends: Kendall τ of the seed "
                "means (and per seed) against h per width and against width per h (claim: τ < 0 "
                "for grad_norm_sq, > 0 for test_acc); effects: smallest vs largest h (width) "
                "reached by every seed, separated = ±1 when the min–max ranges over seeds do not "
                "overlap (sign of the change), 0 when they do",
    }
    if out_dir is not None:
        results["traces"] = [f"traces/{r['run_id']}.json" for r in rows] if keep else []
    return finish(out_dir, SWEEP, base.to_dict(), results, start)


def sweep_summary(rows: Sequence[dict]) -> list[dict]:
    """Per (width, h, view): the seeds run, how many diverged, and mean/min/max over the seeds
    that did not diverge (and have the view) of each of ``SWEEP_KEYS``."""
    out = []
    for w, h in sorted({(r["width"], r["lr"]) for r in rows}):
        cell = [r for r in rows if r["width"] == w and r["lr"] == h]
        for view in ("final", "at_loss"):
            ok = [r[view] for r in cell if not r["diverged"] and r[view] is not None]
            entry = {"width": w, "lr": h, "view": view, "seeds": len(cell),
                     "diverged": sum(r["diverged"] for r in cell), "n": len(ok)}
            for k in SWEEP_KEYS:
                v = [float(o[k]) for o in ok if o.get(k) is not None and math.isfinite(o[k])]
                entry[k] = ({"mean": float(np.mean(v)), "min": min(v), "max": max(v), "n": len(v)}
                            if v else None)
            out.append(entry)
    return out


def sweep_trends(rows: Sequence[dict]) -> list[dict]:
    """Kendall τ of R_IG, test loss and test accuracy against h (per width) and against width
    (per h), for each view (final, at_loss): of the seed means over the non-diverged runs
    (``tau_*``) and per seed (``tau_*_per_seed``). The claim: τ < 0 for R_IG, > 0 for test_acc."""
    keys = ("grad_norm_sq", "test_loss", "test_acc")
    seeds = sorted({r.get("seed", 0) for r in rows})
    out = []
    for against, fixed in (("lr", "width"), ("width", "lr")):
        for v0 in sorted({r[fixed] for r in rows}):
            sub = [r for r in rows if r[fixed] == v0 and not r.get("diverged", r["status"] !=
                                                                   "completed")]
            for view in ("final", "at_loss"):
                xs = sorted({r[against] for r in sub if r[view] is not None})
                per = {sd: {r[against]: r[view] for r in sub if r.get("seed", 0) == sd
                            and r[view] is not None} for sd in seeds}
                entry = {"against": against, fixed: v0, "view": view, "n": len(xs)}
                for k in keys:
                    means = [_mean([per[sd][x].get(k) for sd in seeds if x in per[sd]]) for x in xs]
                    entry[f"tau_{k}"] = _or_none(correlation.kendall_tau(xs, means))
                    entry[f"tau_{k}_per_seed"] = [_or_none(correlation.kendall_tau(
                        list(per[sd]), [v.get(k) for v in per[sd].values()])) for sd in seeds]
                out.append(entry)
    return out


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def sweep_effects(summary: Sequence[dict], n_seeds: int) -> list[dict]:
    """For each key (R_IG, test loss, test accuracy) and view: the smallest against the largest
    h per width, and the smallest against the largest width per h, among the cells where all
    ``n_seeds`` seeds ran without diverging. ``separated``: +1 (−1) when every seed's value at the
    large end is above (below) every seed's value at the small end (min–max ranges disjoint),
    0 when the ranges overlap: an effect smaller than its spread over seeds."""
    out = []
    full = [e for e in summary if e["n"] == n_seeds]
    for against, fixed in (("lr", "width"), ("width", "lr")):
        for v0 in sorted({e[fixed] for e in full}):
            for view in ("final", "at_loss"):
                cells = sorted((e for e in full if e[fixed] == v0 and e["view"] == view),
                               key=lambda e: e[against])
                if len(cells) < 2:
                    continue
                lo, hi = cells[0], cells[-1]
                for k in ("grad_norm_sq", "test_loss", "test_acc"):
                    a, b = lo[k], hi[k]
                    if a is None or b is None:
                        continue
                    sep = 1 if b["min"] > a["max"] else -1 if b["max"] < a["min"] else 0
                    out.append({"against": against, fixed: v0, "view": view, "key": k,
                                "from": lo[against], "to": hi[against], "low_end": a,
                                "high_end": b, "change": b["mean"] - a["mean"], "separated": sep})
    return out
