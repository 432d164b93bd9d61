"""Central flow vs gradient flow vs modified flow against GD's time average at the edge of
stability (Cohen, Damian et al., "Understanding Optimization in Deep Learning with Central
Flows"; docs/science.md#central-flow).

From one θ0 (per seed): full-batch GD with step h (at EoS: λ_max reaches 2/h and GD oscillates
along the top eigenvectors), the gradient flow dθ/dt = −∇L and the IGR modified flow
dθ/dt = −∇(L + (h/4)‖∇L‖²) (Tsit5, tight tolerances) and the central flow (``CentralFlow``,
Euler with ``substeps`` substeps per step), all logged at every t = k·h.

GD's time average: a centred window over the oscillation, θ̄(k) = Σ_j w_j θ_{k+j} with the
trapezoid weights w = (½, 1, …, 1, ½)/(2m) on j = −m…m (m = ``window``; m = 1 is the authors'
"midpoint of midpoints" (θ_{k−1} + 2θ_k + θ_{k+1})/4; any m cancels a period-2 oscillation
exactly); L̄(k) the same average of GD's losses L(θ_k). Per continuous model and time:
distance ‖θ_model(t) − θ̄_GD(t)‖ and loss error |L_model(t) − L̄_GD(t)|, where L_model is the
model's prediction of the averaged loss: L(θ(t)) for the gradient and modified flows,
L(θ(t)) + tr X(t)/h for the central flow. Summaries: mean (and final) over the EoS window
(from the first step where GD's λ_max ≥ ``edge_fraction``·2/h to the end), per seed, and the
mean/min/max over seeds. The figure is ``sgdreg.plotting.central_flow.render_central_flow``.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import training
from ..config import ConfigError, RunConfig, validate
from ..dynamics.central import CentralFlow
from ..results import load_document, save_results, sig
from ._common import Progress, say
from .eos import SharpnessProbe

EXPERIMENT = "central_flow"  # results stored as <out_dir>/central_flow.json
MODELS = ("flow", "modified-flow", "central-flow")
LABELS = {"gd": "GD", "flow": "gradient flow", "modified-flow": "modified flow",
          "central-flow": "central flow"}


class ParamsRecorder:
    """A probe that keeps θ (flat, float64 numpy) at every call in ``self.params`` and logs
    nothing: the experiment's own record of the trajectory."""

    name = "params_record"

    def __init__(self, every: int = 1):
        self.every, self.params = every, {}

    def describe(self) -> dict[str, Any]:
        return {"definition": "records θ on the host for the central-flow experiment"}

    def __call__(self, params, ctx) -> dict[str, Any]:
        self.params[ctx.step] = np.asarray(ravel_pytree(params)[0], np.float64)
        return {}


def time_average(series: np.ndarray, m: int) -> np.ndarray:
    """Centred trapezoid average over j = −m…m, weights (½, 1, …, 1, ½)/(2m), along axis 0;
    NaN where the window leaves the series (the first and last m entries)."""
    x = np.asarray(series, np.float64)
    w = np.ones(2 * m + 1)
    w[0] = w[-1] = 0.5
    w /= 2 * m
    out = np.full_like(x, np.nan)
    for k in range(m, len(x) - m):
        out[k] = np.tensordot(w, x[k - m:k + m + 1], axes=1)
    return out


def _check(lr, steps, window, seeds, eigs, substeps, edge_fraction):
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be > 0, got {lr}")
    for name, v in (("steps", steps), ("window", window), ("eigs", eigs),
                    ("substeps", substeps)):
        if int(v) != v or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: give distinct seeds, got {list(seeds)}")
    if not 0 < edge_fraction <= 1:
        raise ConfigError(f"edge_fraction must be in (0, 1], got {edge_fraction}")
    if steps <= 2 * window:
        raise ConfigError(f"steps ({steps}) must exceed 2·window ({2 * window})")


def _run(cfg: RunConfig, ds, sharpness_every: int, substeps: int | None = None):
    """One run logged at every step: (trace, steps, θ per step (steps, P))."""
    rec = ParamsRecorder()
    probes = [rec] + ([SharpnessProbe(sharpness_every, threshold=2 / cfg.lr)]
                      if sharpness_every else [])
    setup = None
    if substeps is not None:  # the central flow with its substep count (not a RunConfig field)
        setup = training.build(cfg, ds)
        cf = CentralFlow(eigs=cfg.central_flow_eigs, substeps=substeps)
        setup.problem = eqx.tree_at(lambda p: p.dynamics, setup.problem, cf)
        setup.provenance["dynamics"] = cf.describe()
    res = training.train(cfg, ds, probes=probes, setup=setup)
    steps = sorted(rec.params)
    return res.trace, steps, np.stack([rec.params[s] for s in steps])


def _mean(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def run_central_flow_comparison(
    *, lr: float = 0.8, dataset: str = "digits", data_dir: str | None = None,
    n_train: int | None = 256, width: int = 32, depth: int = 2, steps: int = 200,
    seeds: Sequence[int] = (0, 1, 2), eigs: int = 3, substeps: int = 4, window: int = 1,
    windows: Sequence[int] = (1, 4), log_every: int = 4, sharpness_every: int = 4,
    edge_fraction: float = 0.95, rtol: float = 1e-8, atol: float = 1e-10, dtype: str = "float64",
    out_dir: str | Path | None = None, progress: Progress | None = None,
    device_budget: int | None = None,
) -> dict:
    """GD, gradient flow, modified flow and central flow (``eigs`` tracked eigenvalues,
    ``substeps`` Euler substeps per step) from the θ0 of each seed (MSE, tanh MLP
    ``width`` × ``depth`` on ``n_train`` examples of ``dataset``), ``steps`` steps of size
    ``lr`` (t = step·lr); GD logged at every step, the three flows every ``log_every``; λ_max
    of GD and of the two flows every ``sharpness_every`` steps (Lanczos). Time averages over
    GD's oscillation with half-width ``window`` (the headline) and each of ``windows``
    (robustness). See the module docstring for the metrics.
    ``out_dir``: writes ``central_flow.json``.
    ``device_budget`` (bytes): data above it stay on the host and stream to the device in chunks
    (MNIST/CIFAR-10 memory-mapped; ``training.load_data``), with the same numbers."""
    _check(lr, steps, window, list(seeds), eigs, substeps, edge_fraction)
    if sharpness_every % log_every:
        raise ConfigError(f"sharpness_every ({sharpness_every}) must be a multiple of "
                          f"log_every ({log_every})")
    start = _time.perf_counter()
    base = RunConfig(dataset=dataset, data_dir=data_dir, n_train=n_train, width=width,
                     depth=depth, model="mlp", activation="tanh", loss="mse", optimizer="gd",
                     lr=float(lr), steps=int(steps), log_every=1, dtype=dtype, rtol=rtol,
                     atol=atol, central_flow_eigs=int(eigs))
    validate(base)
    ds = training.load_data(base, device_budget)
    windows = sorted({int(window), *map(int, windows)})
    per_seed = []
    for seed in seeds:
        runs = {}
        for opt in ("gd", *MODELS):
            every = 1 if opt == "gd" else log_every
            cfg = base.replace(optimizer=opt, seed=int(seed), log_every=every)
            t0 = _time.perf_counter()
            sharp = sharpness_every if opt in ("gd", "flow", "modified-flow") else 0
            trace, st, theta = _run(cfg, ds, sharp, substeps if opt == "central-flow" else None)
            runs[opt] = {"trace": trace, "steps": st, "theta": theta,
                         "wall": _time.perf_counter() - t0}
            say(progress, f"seed {seed} {opt}: {trace['status']}, "
                          f"{_time.perf_counter() - t0:.1f} s")
        per_seed.append(_compare(runs, lr, windows, window, edge_fraction, seed))
    summary = _summarize(per_seed, window)
    config = {"lr": lr, "threshold": 2 / lr, "steps": int(steps), "seeds": list(seeds),
              "eigs": eigs, "substeps": substeps, "window": window, "windows": windows,
              "log_every": log_every, "sharpness_every": sharpness_every, "edge_fraction": edge_fraction,
              "rtol": rtol, "atol": atol, "run": base.to_dict()}
    results = {
        "dataset": ds.describe(), "num_params": per_seed[0]["num_params"],
        "seeds": per_seed, "summary": summary,
        "note": "max_eigenvalue_over_edge: max over logged t > 0 of the central flow's tracked "
                "eigenvalues / (2/h) (θ0 itself may start above 2/h: initial_eigenvalue_over_edge); "
                "θ̄_GD, L̄_GD: centred trapezoid average of GD over j = −m…m (weights ½,1,…,1,½ "
                "over 2m; m = window); distance ‖θ_model(t) − θ̄_GD(t)‖; loss error "
                "|L_model − L̄_GD| with L_model = L(θ(t)) (flows) or L(θ(t)) + tr X(t)/h "
                "(central flow: its predicted time-averaged loss); EoS window: steps ≥ the first "
                "with GD λ_max ≥ edge_fraction·2/h; t = step·lr",
    }
    wall = _time.perf_counter() - start
    if out_dir is not None:
        save_results(out_dir, EXPERIMENT, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def _compare(runs: dict, lr: float, windows, window: int, edge_fraction: float, seed) -> dict:
    """Distances and loss errors of each model against GD's time average at the models' logged
    steps (a subset of GD's: GD logs every step)."""
    gd = runs["gd"]
    gm = gd["trace"]["metrics"]
    gd_steps = list(gd["steps"])
    steps = [s for s in runs["central-flow"]["steps"] if s in set(gd_steps)]
    for name in MODELS:
        if runs[name]["steps"][:len(steps)] != steps:
            raise ConfigError(f"{name} was logged at other steps than the central flow")
    idx = np.asarray([gd_steps.index(s) for s in steps])
    steps = np.asarray(steps)
    loss_gd = np.asarray(gm["train_loss"], float)
    lam_rows = [(s, v) for s, v in zip(gm["step"], gm["lambda_max"]) if v is not None]
    edge = next((s for s, v in lam_rows if v >= edge_fraction * 2 / lr), None)
    in_window = steps >= (edge if edge is not None else steps[-1] + 1)
    out: dict[str, Any] = {
        "seed": seed, "num_params": gd["trace"]["num_params"], "step": steps.tolist(),
        "t": (steps * lr).tolist(), "step_at_edge": edge,
        "gd": {"step": gd_steps, "train_loss": sig(loss_gd.tolist(), 6),
               "lambda_max_step": [s for s, _ in lam_rows],
               "lambda_max": sig([v for _, v in lam_rows], 6)},
        "models": {}, "windows": {}, "wall_time_s": {k: r["wall"] for k, r in runs.items()},
    }
    n = len(steps)
    for m in windows:
        th_bar = time_average(gd["theta"], m)
        l_bar_all = time_average(loss_gd, m)
        l_bar = l_bar_all[idx]
        per = {}
        for name in MODELS:
            r = runs[name]
            mm = r["trace"]["metrics"]
            loss = np.asarray(mm["train_loss"][:n], float)
            pred = (np.asarray(mm["central_flow_predicted_loss"][:n], float)
                    if name == "central-flow" else loss)
            dist = np.linalg.norm(r["theta"][:n] - th_bar[idx], axis=1)
            err = np.abs(pred - l_bar)
            ok = in_window & np.isfinite(dist)
            per[name] = {
                "distance": sig(dist.tolist(), 5), "loss_error": sig(err.tolist(), 5),
                "mean_distance_eos": _mean(dist[ok]), "mean_loss_error_eos": _mean(err[ok]),
                "mean_relative_loss_error_eos": _mean((err / l_bar)[ok]),
                "final_distance": _mean(dist[np.isfinite(dist)][-1:]),
                "final_loss_error": _mean(err[np.isfinite(err)][-1:]),
                "mean_distance_all": _mean(dist), "mean_loss_error_all": _mean(err),
            }
        gd_raw = np.linalg.norm(gd["theta"] - th_bar, axis=1)
        out["windows"][str(m)] = {
            "gd_avg_loss": sig(l_bar_all.tolist(), 6),
            "gd_oscillation": sig(gd_raw.tolist(), 5),
            "mean_gd_oscillation_eos": _mean(gd_raw[np.asarray(gd_steps) >= (
                edge if edge is not None else gd_steps[-1] + 1)]),
            "models": per}
    for name in MODELS:
        mm = runs[name]["trace"]["metrics"]
        rec = {"train_loss": sig(np.asarray(mm["train_loss"][:n], float).tolist(), 6),
               "status": runs[name]["trace"]["status"]}
        if name == "central-flow":
            rec |= {"predicted_loss": sig(mm["central_flow_predicted_loss"][:n], 6),
                    "eigenvalues": sig(mm["central_flow_eigenvalues"][:n], 6),
                    "active": mm["central_flow_active"][:n],
                    "max_active": max(mm["central_flow_active"]),
                    "sigma_trace": sig(mm["central_flow_sigma_trace"][:n], 6),
                    "initial_eigenvalue_over_edge": max(mm["central_flow_eigenvalues"][0]) * lr / 2,
                    "max_eigenvalue_over_edge": max(max(v) for v in
                                                    mm["central_flow_eigenvalues"][1:]) * lr / 2,
                    "max_sdcp_residual": max(v for v in mm["central_flow_sdcp_residual"]
                                             if v is not None),
                    "max_eig_residual": max(v for v in mm["central_flow_eig_residual"]
                                            if v is not None)}
        else:
            rows = [(s, v) for s, v in zip(mm["step"], mm["lambda_max"]) if v is not None]
            rec |= {"lambda_max_step": [s for s, _ in rows],
                    "lambda_max": sig([v for _, v in rows], 6)}
        out["models"][name] = rec
    return out


def _summarize(per_seed: list[dict], window: int) -> dict:
    """Per model: the EoS-window mean distance and loss error per seed, their mean/min/max over
    seeds, and the ratio of the best other flow's to the central flow's (per seed)."""
    out: dict[str, Any] = {"window": window, "models": {}}
    for name in MODELS:
        d = [s["windows"][str(window)]["models"][name]["mean_distance_eos"] for s in per_seed]
        e = [s["windows"][str(window)]["models"][name]["mean_loss_error_eos"] for s in per_seed]
        out["models"][name] = {
            "mean_distance_eos": d, "mean_loss_error_eos": e,
            "distance_mean_min_max": _mmm(d), "loss_error_mean_min_max": _mmm(e)}
    ratios_d, ratios_e = [], []
    for s in per_seed:
        m = s["windows"][str(window)]["models"]
        cd, ce = m["central-flow"]["mean_distance_eos"], m["central-flow"]["mean_loss_error_eos"]
        od = min(m[k]["mean_distance_eos"] or math.inf for k in ("flow", "modified-flow"))
        oe = min(m[k]["mean_loss_error_eos"] or math.inf for k in ("flow", "modified-flow"))
        ratios_d.append(od / cd if cd else None)
        ratios_e.append(oe / ce if ce else None)
    out["other_over_central_distance"] = ratios_d
    out["other_over_central_loss_error"] = ratios_e
    out["central_flow_best_in_every_seed"] = bool(
        all(r is not None and r > 1 for r in ratios_d + ratios_e))
    return out


def _mmm(v):
    v = [x for x in v if x is not None]
    return [float(np.mean(v)), float(np.min(v)), float(np.max(v))] if v else None


def read_central_flow(results_dir: str | Path) -> dict:
    """The stored ``central_flow.json``: its results with ``config`` and ``wall_time_s``."""
    doc = load_document(results_dir, EXPERIMENT)
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}
