"""Edge of stability (Cohen et al. 2021, "Gradient descent on neural networks typically occurs
at the edge of stability"; docs/science.md#curvature).

Full-batch GD with step h on an MSE tanh MLP: the sharpness λ_max = top eigenvalue of ∇²L rises
(progressive sharpening) until it reaches 2/h, then hovers there while L keeps falling,
non-monotonically. Heavy ball caps at 2(1+β)/h, Nesterov at (2+2β)/((1+2β)h)
(``probes.eos_threshold``). The gradient flow dθ/dt = −∇L has no cap: its λ_max keeps rising.

* ``SharpnessProbe``: λ_max alone, by Lanczos warm-started from the last top eigenvector.
* ``run_edge_of_stability``: GD (or momentum/Nesterov) for several h from one θ0, plus the flow;
  per h the threshold, the λ_max series, its settled value over the last part of training and
  the ratio to the threshold, the number of loss increases.
The figure is ``sgdreg.plotting.eos.render_eos`` (from the stored results only).
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import curvature as cv
from .. import training
from ..config import ConfigError, RunConfig, validate
from ..data import Dataset
from ..probes import eos_threshold
from ..results import load_document, save_results, sig
from ._common import Progress

EXPERIMENT = "eos"  # results stored as <out_dir>/eos.json (schema sgdreg.results/1)
EOS_OPTIMIZERS = ("gd", "momentum", "nesterov")
MODEL = dict(model="mlp", activation="tanh", loss="mse")


class SharpnessProbe:
    """λ_max of H = ∇²L (full-batch training loss) every ``every`` steps: ``lanczos_steps``
    Lanczos steps with full re-orthogonalisation (docs/science.md#curvature), started from the previous top
    Ritz vector (``ctx.memory``; the first call from a Gaussian vector). Ritz residual
    ‖Hy − λy‖ = |β_m s_m| and its converged flag are logged with it."""

    name = "sharpness"

    def __init__(self, every: int, *, lanczos_steps: int = 20, threshold: float | None = None):
        self.every, self.lanczos_steps, self.threshold = every, lanczos_steps, threshold

    def describe(self) -> dict[str, Any]:
        return {"hessian": "∇²L of the full-batch training loss L = (1/n)Σℓ_i, all trainable "
                           "parameters, train data, no weight decay",
                "lanczos_steps": self.lanczos_steps, "lanczos": "full re-orthogonalisation, "
                "largest algebraic, warm start from the last top eigenvector",
                "eos_threshold": self.threshold}

    def __call__(self, params, ctx) -> dict[str, Any]:
        hv = cv.hessian_matvec(ctx.problem.objective.example_loss, params, ctx.data.x_train,
                               ctx.data.y_train, ctx.problem.eval_chunk)
        v0 = ctx.memory.get("top_vector")
        if v0 is None:  # always pass v0: one compiled Lanczos for cold and warm starts
            v0 = jax.random.normal(ctx.key, (hv.dim,), hv.dtype)
        top = cv.lanczos_eigs(hv, hv.dim, 1, self.lanczos_steps, v0=v0)
        ctx.memory["top_vector"] = top.eigenvectors[0]
        return {"lambda_max": float(top.eigenvalues[0]),
                "lambda_max_residual": float(top.residuals[0]),
                "lambda_max_converged": bool(top.converged[0])}


# ---------------------------------------------------------------------------------------------
# Validation and the run configurations.


def _check(lrs, optimizer, momentum, steps, sharpness_every, log_every, lanczos_steps,
           settle_fraction, flow_time) -> list[float]:
    lrs = [float(h) for h in lrs]
    if not lrs:
        raise ConfigError("lrs: give at least one step size")
    for h in lrs:
        if not (h > 0 and math.isfinite(h)):
            raise ConfigError(f"lrs must be finite numbers > 0, got {h:g}")
    if len(set(lrs)) != len(lrs):
        raise ConfigError("lrs: step sizes must be distinct")
    if optimizer not in EOS_OPTIMIZERS:
        raise ConfigError(f"optimizer: unknown value {optimizer!r}; allowed: "
                          f"{', '.join(EOS_OPTIMIZERS)} (full batch)")
    for name, v in (("steps", steps), ("sharpness_every", sharpness_every),
                    ("log_every", log_every)):
        if int(v) != v or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")
    if sharpness_every % log_every:
        raise ConfigError(f"sharpness_every ({sharpness_every}) must be a multiple of "
                          f"log_every ({log_every})")
    if lanczos_steps < 2:
        raise ConfigError(f"lanczos_steps must be ≥ 2, got {lanczos_steps}")
    if not 0 < settle_fraction <= 1:
        raise ConfigError(f"settle_fraction must be in (0, 1], got {settle_fraction:g}")
    if flow_time is not None and not (flow_time > 0 and math.isfinite(flow_time)):
        raise ConfigError(f"flow_time must be > 0, got {flow_time:g}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum:g}")
    return sorted(lrs)


def eos_configs(lrs: Sequence[float], base: RunConfig, *, include_flow: bool = True,
                flow_time: float | None = None, sharpness_every: int = 20) -> list[RunConfig]:
    """One config per h (``base.optimizer``), then the flow (lr = max h, so it logs at the
    largest h's times t = k·h) to t = ``flow_time`` (default ``base.steps``·min h)."""
    cfgs = [base.replace(lr=h) for h in lrs]
    if include_flow:
        h = max(lrs)
        t = base.steps * min(lrs) if flow_time is None else flow_time
        cfgs.append(base.replace(optimizer="flow", lr=h, log_every=sharpness_every,
                                 steps=max(1, math.ceil(t / h - 1e-9))))
    for c in cfgs:
        validate(c)
    return cfgs


def run_id(cfg: RunConfig) -> str:
    """``<optimizer>_lr<h>``: within one EoS experiment the runs share seed and (full) batch and
    differ only in optimizer and h, so the shorter name than ``training.run_id`` is unique."""
    return f"{cfg.optimizer}_lr{cfg.lr:g}"


# ---------------------------------------------------------------------------------------------
# Summaries of one run.


def settle_start(total_steps: int, fraction: float) -> int:
    """First step of the settling window: ⌈(1 − fraction)·total⌉ (rounded against float noise)."""
    return math.ceil(round((1 - fraction) * total_steps, 6))


def settled(steps: Sequence[int], values: Sequence[float | None], total_steps: int,
            fraction: float) -> list[float]:
    """The values logged in the last ``fraction`` of training (steps ≥ ``settle_start``)."""
    start = settle_start(total_steps, fraction)
    return [v for s, v in zip(steps, values) if s >= start and v is not None]


def loss_increases(values: Sequence[float | None]) -> int:
    """Number of logged rows whose training loss exceeds the previous row's."""
    vals = [v for v in values if v is not None]
    return int(sum(b > a for a, b in zip(vals, vals[1:])))


def summarize_run(trace: dict, threshold: float | None, fraction: float) -> dict:
    """λ_max series and its settled value (median and mean over the last ``fraction`` of the
    steps) against the threshold; loss increases over the run and in that window."""
    m, cfg = trace["metrics"], trace["config"]
    rows = [i for i, v in enumerate(m.get("lambda_max", [])) if v is not None]
    steps = [m["step"][i] for i in rows]
    lam = [m["lambda_max"][i] for i in rows]
    rel_res = [m["lambda_max_residual"][i] / abs(v) for i, v in zip(rows, lam)
               if v and m["lambda_max_residual"][i] is not None]
    total = m["step"][-1] if trace["status"] != "completed" else cfg["steps"]
    done = trace["status"] == "completed" and threshold is not None  # no edge for flows
    window = settled(steps, lam, cfg["steps"], fraction) if done else []
    med = float(np.median(window)) if window else None
    mean = float(np.mean(window)) if window else None
    loss = m["train_loss"]
    edge = next((s for s, v in zip(steps, lam) if threshold and v >= 0.95 * threshold), None)
    lw = settled(m["step"], loss, cfg["steps"], fraction)
    return {
        "run_id": trace["run_id"], "optimizer": cfg["optimizer"], "lr": cfg["lr"],
        "momentum": cfg["momentum"] if cfg["optimizer"] in ("momentum", "nesterov") else None,
        "threshold": threshold, "status": trace["status"], "steps": total, "t_end": total * cfg["lr"],
        "settled_lambda_max": med, "mean_lambda_max": mean,
        "ratio": med / threshold if med is not None and threshold else None,
        "mean_ratio": mean / threshold if mean is not None and threshold else None,
        "settle_window": [settle_start(cfg["steps"], fraction), cfg["steps"]],
        "settled_min_max": [min(window), max(window)] if window else None,
        "lambda_max_initial": lam[0] if lam else None, "lambda_max_final": lam[-1] if lam else None,
        "lambda_max_peak": max(lam) if lam else None, "step_at_edge": edge,
        "t_at_edge": edge * cfg["lr"] if edge is not None else None,
        "max_relative_residual": max(rel_res) if rel_res else None,
        "loss_increases": loss_increases(loss), "loss_increases_settled": loss_increases(lw),
        "loss_comparisons": max(0, sum(v is not None for v in loss) - 1),
        "train_loss_final": loss[-1], "wall_time_s": trace.get("wall_time_s"),
        "series": {"step": steps, "lambda_max": [sig(v) for v in lam],
                   "loss_step": m["step"], "train_loss": [sig(v) for v in loss]},
    }


def flow_comparison(flow: dict, gd: Sequence[dict]) -> dict:
    """Where the flow's λ_max(t) first reaches each threshold; and at the last time t both were
    measured (the flow logs at the largest h's steps), the flow's λ_max against that GD run's."""
    fs, fl = flow["series"]["step"], flow["series"]["lambda_max"]
    h = flow["lr"]
    crossings = [{"lr": r["lr"], "threshold": r["threshold"],
                  "t_flow_crosses": next((s * h for s, v in zip(fs, fl) if v >= r["threshold"]),
                                         None), "t_gd_at_edge": r["t_at_edge"]} for r in gd]
    largest = max(gd, key=lambda r: r["lr"])
    at = dict(zip(largest["series"]["step"], largest["series"]["lambda_max"]))
    common = [(s, v) for s, v in zip(fs, fl) if at.get(s) is not None and v is not None]
    step, lam = common[-1] if common else (None, None)
    gd_at, thr = at.get(step), largest["threshold"]
    return {"lr": largest["lr"], "threshold": thr, "t": step * h if common else None,
            "flow_lambda_max": lam, "gd_lambda_max": gd_at,
            "flow_ratio": lam / thr if common and thr else None,
            "gd_ratio": gd_at / thr if common and thr else None,
            "flow_exceeds_threshold": bool(common and thr and lam > thr),
            "flow_t_end": fs[-1] * h if fs else None,
            "flow_lambda_max_end": fl[-1] if fl else None, "crossings": crossings}


# ---------------------------------------------------------------------------------------------
# The experiment.


def run_edge_of_stability(
    lrs: Sequence[float], *, optimizer: str = "gd", momentum: float = 0.9,
    dataset: str = "digits", data_dir: str | None = None, n_train: int | None = None,
    width: int = 200, depth: int = 2, steps: int = 3000, sharpness_every: int = 20,
    log_every: int = 5, lanczos_steps: int = 20, settle_fraction: float = 1 / 3,
    include_flow: bool = True, flow_time: float | None = None, seed: int = 0,
    dtype: str = "float32", data: Dataset | None = None, traces: bool = True,
    out_dir: str | Path | None = None, progress: Progress | None = None,
    device_budget: int | None = None,
) -> dict:
    """Full-batch ``optimizer`` (gd | momentum | nesterov) for each h in ``lrs`` from one θ0
    (MSE, tanh MLP ``width`` × ``depth``), λ_max every ``sharpness_every`` steps, the loss
    every ``log_every``; with ``include_flow`` the gradient flow to t = ``flow_time`` (default
    ``steps``·min h), logged at the largest h's times.

    Per h: threshold (2/h; heavy ball 2(1+β)/h; Nesterov (2+2β)/((1+2β)h)), λ_max series,
    settled value = median (and mean) λ_max over the last ``settle_fraction`` of the steps and
    its ratio to the threshold, loss increases between logged rows. Everything is validated
    (and the data loaded) before anything is written. ``out_dir``: ``eos.json`` and, with
    ``traces``, one trace per run in ``traces/``. Published (Cohen et al. 2021): ratio ≈ 1,
    the loss non-monotone while λ_max hovers, the flow's λ_max rising past every 2/h.
    ``device_budget`` (bytes): data above it stay on the host and stream to the device in chunks
    (MNIST/CIFAR-10 memory-mapped; ``training.load_data``), with the same numbers.
    """
    lrs = _check(lrs, optimizer, momentum, steps, sharpness_every, log_every, lanczos_steps,
                 settle_fraction, flow_time)
    base = RunConfig(dataset=dataset, data_dir=data_dir, n_train=n_train, width=width,
                     depth=depth, optimizer=optimizer, momentum=momentum, steps=int(steps),
                     log_every=int(log_every), seed=seed, dtype=dtype, **MODEL)
    validate(base)
    start = _time.perf_counter()
    ds = training.load_data(base, device_budget) if data is None else data if \
        device_budget is None else data.replace(device_budget=device_budget)
    base = base.replace(batch_size=ds.n_train)  # momentum/nesterov: one batch = full batch
    cfgs = eos_configs(lrs, base, include_flow=include_flow, flow_time=flow_time,
                       sharpness_every=int(sharpness_every))
    for c in cfgs:
        validate(c, ds.n_train)
    say = progress or (lambda _: None)
    runs, num_params = [], None
    for c in cfgs:
        thr = eos_threshold(c.optimizer, c.lr, c.momentum)
        rid = run_id(c)
        say(f"{rid}: {c.steps} steps" + (f", threshold {thr:.4g}" if thr else
                                          f" (to t = {c.steps * c.lr:g})"))
        probe = SharpnessProbe(int(sharpness_every), lanczos_steps=lanczos_steps, threshold=thr)
        path = Path(out_dir) / "traces" / f"{rid}.json" if out_dir is not None and traces else None
        res = training.train(c, ds, trace_path=path, probes=[probe])
        runs.append(summarize_run(res.trace, thr, settle_fraction) | {"run_id": rid})
        num_params = res.trace["num_params"]
        r = runs[-1]
        say(f"  {r['status']}, λ_max {r['lambda_max_initial']:.4g} → "
            + (f"settled {r['settled_lambda_max']:.4g} (ratio {r['ratio']:.3f})" if r["ratio"]
               else f"{r['lambda_max_final'] or math.nan:.4g} at step {r['steps']}")
            + f", {r['wall_time_s']:.1f} s")
    gd = [r for r in runs if r["optimizer"] != "flow"]
    flow = next((r for r in runs if r["optimizer"] == "flow"), None)
    config = {"lrs": lrs, "optimizer": optimizer, "momentum": momentum, "steps": int(steps),
              "sharpness_every": int(sharpness_every), "log_every": int(log_every),
              "lanczos_steps": lanczos_steps, "settle_fraction": settle_fraction,
              "include_flow": include_flow, "flow_time": cfgs[-1].steps * cfgs[-1].lr
              if include_flow else None, "run": base.to_dict()}
    results = {
        "dataset": ds.describe(), "num_params": num_params, "runs": gd, "flow": flow,
        "flow_vs_largest": flow_comparison(flow, gd) if flow else None,
        "note": "settled_lambda_max: median λ_max over steps ≥ (1 − settle_fraction)·steps; "
                "ratio = settled / threshold; step_at_edge: first logged step with λ_max ≥ "
                "0.95·threshold; loss increases counted between rows logged every log_every "
                "steps; t = step·lr; flow: logged at the largest h's steps",
    }
    wall = _time.perf_counter() - start
    if out_dir is not None:
        results["traces"] = [f"traces/{r['run_id']}.json" for r in runs] if traces else []
        save_results(out_dir, EXPERIMENT, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def read_eos(results_dir: str | Path) -> dict:
    """The stored ``eos.json``: its results with ``config`` and ``wall_time_s`` beside them."""
    doc = load_document(results_dir, EXPERIMENT)  # checks the file and its schema
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}
