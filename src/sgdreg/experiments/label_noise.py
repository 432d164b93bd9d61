"""Label-noise SGD drifts along a manifold of minima toward lower tr H (Blanc, Gupta, Valiant &
Valiant 2020, "Implicit regularization for deep neural networks driven by an Ornstein-Uhlenbeck
like process"; Damian, Ma & Lee 2021, "Label noise SGD provably prefers flat global minimizers";
docs/science.md#label-noise-sgd).

Setting: the 2-layer diagonal linear network f(x) = ⟨u⊙v, x⟩ (θ = (u, v) ∈ R^{2d}) on n < d
noiseless examples y = X w* of a sparse teacher w*, loss L = (1/n) Σ ½(f(x_i) − y_i)². Its
global minima {θ : X(u⊙v) = y} form a manifold of dimension 2d − n. On it the Hessian is the
Gauss-Newton matrix, so

    tr H(θ) = Σ_j (u_j² + v_j²) c_j,   c_j = (1/n) Σ_i x_ij²,

which is minimised at |u_j| = |v_j| and, over the manifold, equals 2 · min_{Xw = y} Σ_j c_j |w_j|
(a weighted ℓ1 problem; HaoChen et al. 2021). The run starts *on* the manifold at a sharp point:
w0 = X⁺y (the minimum-ℓ2 interpolant) factored unevenly, u = a·1, v = w0/a. There every
per-example gradient vanishes, so plain SGD and GD stay exactly put; label-noise SGD (targets
y + δ·ε each step) is kicked off the manifold and drifts along it toward lower tr H, with the
regulariser's strength ∝ h·δ² (Damian et al.): its tr H falls toward the floor and u⊙v toward
the sparse teacher.

Recorded per run every ``every`` steps (``ManifoldProbe``): tr H from the exact dense float64
Hessian, λ_max, the distance from θ0 ‖θ_t − θ_0‖, ‖u⊙v − w*‖ and the train/test loss (clean
targets). The figure is ``sgdreg.plotting.label_noise.render_label_noise``.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import curvature as cv
from .. import training
from ..data import Dataset
from ..errors import ConfigError
from ..results import load_document, save_results, sig
from ._common import Progress, say

EXPERIMENT = "label_noise"  # results stored as <out_dir>/label_noise.json
METHODS = ("label-noise-sgd", "sgd", "gd")
LABELS = {"label-noise-sgd": "label-noise SGD", "sgd": "SGD", "gd": "GD"}


class DiagonalNet(eqx.Module):
    """The 2-layer diagonal linear network f(x) = ⟨u⊙v, x⟩ (one output)."""

    u: jax.Array
    v: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(self.u * self.v, x)[None]


def diagonal_regression(n_train: int = 10, dim: int = 20, teacher: Sequence[float] = (1.0, -1.0, 0.5),
                        n_test: int = 200, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """(noiseless data y = X w*, w*): x ~ N(0, I_d) (float64), w* = ``teacher`` on the first
    coordinates and 0 elsewhere."""
    if not 1 <= len(teacher) <= dim or n_train < 1:
        raise ConfigError(f"teacher: 1..dim={dim} coefficients and n_train ≥ 1, got "
                          f"{len(teacher)} and {n_train}")
    rng = np.random.default_rng(seed)
    w = np.zeros(dim)
    w[: len(teacher)] = teacher
    x_train, x_test = rng.standard_normal((n_train, dim)), rng.standard_normal((n_test, dim))
    ds = Dataset("diagonal-regression", x_train, (x_train @ w)[:, None], x_test,
                 (x_test @ w)[:, None], 0, {"teacher": list(map(float, teacher)), "seed": seed})
    return ds, w


def sharp_start(ds: Dataset, imbalance: float) -> DiagonalNet:
    """θ0 on the manifold of minima: w0 = X⁺y factored as u = a·1, v = w0/a (a = ``imbalance``;
    a = 1 is not balanced either unless |w0_j| = 1). Float64."""
    if not imbalance > 0:
        raise ConfigError(f"imbalance must be > 0, got {imbalance}")
    w0 = np.linalg.lstsq(ds.x_train, ds.y_train[:, 0], rcond=None)[0]
    return DiagonalNet(jnp.full(w0.shape, imbalance, jnp.float64), jnp.asarray(w0 / imbalance))


def trace_on_manifold(model: DiagonalNet, x: np.ndarray) -> float:
    """tr H = Σ_j (u_j² + v_j²) c_j, c_j = mean_i x_ij²: the Hessian trace at a global minimum
    (the closed form, an independent check of the dense Hessian)."""
    c = np.mean(np.asarray(x) ** 2, axis=0)
    return float(np.sum((np.asarray(model.u) ** 2 + np.asarray(model.v) ** 2) * c))


def trace_floor(x: np.ndarray, y: np.ndarray) -> float:
    """min tr H over the manifold = 2 · min_{Xw = y} Σ_j c_j |w_j| (linear program, w = p − q,
    p, q ≥ 0), attained at the balanced factorisation |u_j| = |v_j| = √|w_j|."""
    from scipy.optimize import linprog

    x = np.asarray(x, float)
    c = np.mean(x ** 2, axis=0)
    res = linprog(np.concatenate([c, c]), A_eq=np.hstack([x, -x]), b_eq=np.asarray(y, float).ravel(),
                  bounds=(0, None), method="highs")
    return float(2 * res.fun) if res.status == 0 else float("nan")


class ManifoldProbe:
    """tr H and λ_max of the exact dense Hessian ∇²L (float64, full training set), the distance
    from θ0 ‖θ − θ0‖, ‖u⊙v − w*‖ and the balance ‖|u| − |v|‖ every ``every`` steps."""

    name = "manifold"

    def __init__(self, every: int, params0: DiagonalNet, teacher: np.ndarray):
        self.every = every
        self.theta0 = np.asarray(ravel_pytree(params0)[0])
        self.teacher = np.asarray(teacher)

    def describe(self) -> dict[str, Any]:
        return {"hessian": "dense ∇²L of L = (1/n)Σ½(f(x_i) − y_i)², all of θ = (u, v), clean "
                           "train targets, float64 (jax.hessian)",
                "distance": "‖θ_t − θ_0‖₂", "teacher_distance": "‖u⊙v − w*‖₂",
                "balance": "‖|u| − |v|‖₂"}

    def __call__(self, params, ctx) -> dict[str, Any]:
        h = cv.dense_hessian(ctx.problem.objective.example_loss, params, ctx.data.x_train,
                             ctx.data.y_train)
        eig = np.linalg.eigvalsh(np.asarray(h))
        theta = np.asarray(ravel_pytree(params)[0])
        u, v = np.asarray(params.u), np.asarray(params.v)
        return {"hessian_trace": float(np.trace(np.asarray(h))), "lambda_max": float(eig[-1]),
                "distance": float(np.linalg.norm(theta - self.theta0)),
                "teacher_distance": float(np.linalg.norm(u * v - self.teacher)),
                "balance": float(np.linalg.norm(np.abs(u) - np.abs(v)))}


SERIES = ("train_loss", "test_loss", "hessian_trace", "lambda_max", "distance",
          "teacher_distance", "balance")


def run_method(method: str, model0: DiagonalNet, ds: Dataset, w: np.ndarray, *, lr: float,
               label_noise: float, batch_size: int, steps: int, every: int, seed: int) -> dict:
    """One run from θ0 through ``sgdreg.run``: label-noise SGD (δ = ``label_noise``), plain SGD
    (both minibatches of ``batch_size``) or GD; its series at every ``every``-th step."""
    if method not in METHODS:
        raise ConfigError(f"methods: unknown {method!r}; allowed: {', '.join(METHODS)}")
    opt = "gd" if method == "gd" else "sgd"
    res = training.run(model0, ds, opt, loss="mse", lr=lr, steps=steps, log_every=every,
                       batch_size=None if method == "gd" else batch_size, seed=seed,
                       label_noise=label_noise if method == "label-noise-sgd" else 0.0,
                       probes=[ManifoldProbe(every, model0, w)])
    m = res.trace["metrics"]
    return {"method": method, "seed": seed, "status": res.trace["status"], "step": m["step"],
            "model": res.model, **{k: np.asarray(m[k], float) for k in SERIES}}


def project(model: DiagonalNet, ds: Dataset, *, lr: float, steps: int, every: int) -> dict:
    """The point of the manifold below ``model``: plain GD (no label noise) from it for ``steps``
    steps; its train loss and tr H there (closed form Σ(u² + v²)c_j, exact at a minimum)."""
    res = training.run(model, ds, "gd", loss="mse", lr=lr, steps=steps, log_every=every)
    return {"train_loss": res.trace["metrics"]["train_loss"][-1],
            "hessian_trace": trace_on_manifold(res.model, ds.x_train)}


def _band(runs: list[dict], key: str) -> dict:
    a = np.stack([r[key] for r in runs])
    return {"median": sig(np.median(a, 0), 5), "min": sig(a.min(0), 5), "max": sig(a.max(0), 5)}


def summarize(runs: list[dict], trace0: float, projected: list[dict] | None = None) -> dict:
    """Per method over seeds: final tr H (each seed, min, max, spread), its drop from θ0, the
    largest |tr H − tr H(θ0)| along the run, the distance from θ0, the train loss along the
    run (max and median after step 0) and the final ‖u⊙v − w*‖."""
    final = np.array([r["hessian_trace"][-1] for r in runs])
    loss = np.concatenate([r["train_loss"][1:] for r in runs])
    return {"final_trace": sig(final, 6), "final_trace_min": sig(final.min(), 6),
            "final_trace_max": sig(final.max(), 6),
            "final_trace_spread": sig(final.max() - final.min(), 4),
            "trace_drop": sig(trace0 - final.max(), 6),
            "max_abs_trace_change": sig(max(np.max(np.abs(r["hessian_trace"] - trace0))
                                            for r in runs), 4),
            "final_distance": sig([r["distance"][-1] for r in runs], 5),
            "final_teacher_distance": sig([r["teacher_distance"][-1] for r in runs], 5),
            "final_test_loss": sig([r["test_loss"][-1] for r in runs], 5),
            "max_train_loss": sig(float(loss.max()), 4),
            "median_train_loss": sig(float(np.median(loss)), 4),
            "status": [r["status"] for r in runs],
            **({"projected_trace": sig([p["hessian_trace"] for p in projected], 6),
                "projected_train_loss": sig([p["train_loss"] for p in projected], 3)}
               if projected else {})}


def run_label_noise(*, n_train: int = 10, dim: int = 20, teacher: Sequence[float] = (1.0, -1.0, 0.5),
                    imbalance: float = 2.0, lr: float = 0.025, label_noise: float = 1.0,
                    batch_size: int = 2, steps: int = 40_000, every: int = 400,
                    seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] = METHODS,
                    data_seed: int = 0, project_steps: int = 20_000, out_dir: str | Path | None = None,
                    progress: Progress | None = None) -> dict:
    """Label-noise SGD vs plain SGD vs GD from one sharp θ0 on the manifold of minima of the
    diagonal network, each over ``seeds`` (minibatch order and label noise; data and θ0 fixed by
    ``data_seed``). Float64 (needs JAX's 64-bit mode). Returns (and stores in
    ``out_dir/label_noise.json``) the config, the per-method min/median/max series over seeds and
    ``summarize`` per method, with tr H(θ0) (dense and closed form) and the manifold's floor.
    Label-noise SGD's final iterates sit O(√h·δ) off the manifold, where u⊙v is also shrunk by
    the implicit penalty (so tr H there may dip below the floor); each is projected back onto the
    manifold by ``project_steps`` GD steps (0: none) and tr H measured there too."""
    start = _time.perf_counter()
    training.require_dtype("float64")
    if not (label_noise > 0 and lr > 0 and steps >= every >= 1 and len(seeds) >= 1):
        raise ConfigError("label_noise and lr must be > 0, steps ≥ every ≥ 1, at least one seed")
    ds, w = diagonal_regression(n_train, dim, teacher, seed=data_seed)
    model0 = sharp_start(ds, imbalance)
    h0 = np.asarray(cv.dense_hessian(
        lambda p, x, y: 0.5 * jnp.sum((p(x) - y) ** 2), model0, jnp.asarray(ds.x_train),
        jnp.asarray(ds.y_train)))
    trace0, floor = float(np.trace(h0)), trace_floor(ds.x_train, ds.y_train)
    by_method: dict[str, list[dict]] = {}
    projected: list[dict] = []
    for method in methods:
        for s in seeds:
            t = _time.perf_counter()
            r = run_method(method, model0, ds, w, lr=lr, label_noise=label_noise,
                           batch_size=batch_size, steps=steps, every=every, seed=s)
            by_method.setdefault(method, []).append(r)
            if method == "label-noise-sgd" and project_steps:
                projected.append(project(r["model"], ds, lr=lr, steps=project_steps, every=every))
                say(progress, f"  projected by {project_steps} GD steps: train loss "
                              f"{projected[-1]['train_loss']:.2g}, tr H "
                              f"{projected[-1]['hessian_trace']:.4g}")
            say(progress, f"{LABELS[method]} seed {s}: tr H {r['hessian_trace'][0]:.4g} → "
                          f"{r['hessian_trace'][-1]:.4g}, ‖θ−θ0‖ {r['distance'][-1]:.3g}, "
                          f"train loss ≤ {np.max(r['train_loss']):.3g} "
                          f"({_time.perf_counter() - t:.1f} s)")
    steps_logged = by_method[methods[0]][0]["step"]
    results = {
        "dataset": {"name": ds.name, "n_train": ds.n_train, "n_test": ds.n_test, "dim": dim,
                    "teacher": list(map(float, teacher)), "data_seed": data_seed},
        "num_params": 2 * dim, "trace_initial": sig(trace0, 8),
        "trace_initial_closed_form": sig(trace_on_manifold(model0, ds.x_train), 8),
        "trace_floor": sig(floor, 6),
        "trace_balanced_teacher": sig(float(2 * np.sum(np.mean(ds.x_train ** 2, 0) * np.abs(w))), 6),
        "loss_at_zero": sig(float(0.5 * np.mean(ds.y_train ** 2)), 6),
        "lambda_max_initial": sig(float(np.linalg.eigvalsh(h0)[-1]), 6),
        "step": steps_logged,
        "series": {m: {k: _band(rs, k) for k in SERIES} for m, rs in by_method.items()},
        "summary": {m: summarize(rs, trace0, projected if m == "label-noise-sgd" else None)
                    for m, rs in by_method.items()},
    }
    config = {"n_train": n_train, "dim": dim, "teacher": list(teacher), "imbalance": imbalance,
              "lr": lr, "label_noise": label_noise, "batch_size": batch_size, "steps": steps,
              "every": every, "seeds": list(seeds), "methods": list(methods),
              "data_seed": data_seed, "project_steps": project_steps, "loss": "mse (½(f − y)²)",
              "dtype": "float64", "model": "diagonal linear network f(x) = ⟨u⊙v, x⟩"}
    wall = _time.perf_counter() - start
    if out_dir is not None:
        save_results(out_dir, EXPERIMENT, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def read_label_noise(results_dir) -> dict:
    """The stored ``label_noise.json``: config and results in one dict."""
    doc = load_document(results_dir, EXPERIMENT)
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}


# ---------------------------------------------------------------------------------------------
# At network scale (the paper's ResNet-18 on CIFAR-10): the curvature SGD ends at, with and
# without label noise.

CURVATURE_EXPERIMENT = "label_noise_curvature"  # <out_dir>/label_noise_curvature.json
CURVATURE_KEYS = ("hessian_trace", "lambda_max")


def _first_last(column) -> tuple[Any, Any]:
    vals = [v for v in column or [] if v is not None and not isinstance(v, list)]
    return (vals[0], vals[-1]) if vals else (None, None)


def _mean_sd(values) -> dict:
    v = np.asarray([x for x in values if x is not None], float)
    return {"mean": sig(v.mean(), 6) if v.size else None,
            "sd": sig(v.std(ddof=1), 4) if v.size > 1 else None, "n": int(v.size)}


def label_noise_curvature(cfg, noises: Sequence[float] = (0.0, 0.2),
                          seeds: Sequence[int] = (0, 1, 2), *, dataset: Dataset | None = None,
                          out_dir: str | Path | None = None, traces: bool = True,
                          progress: Progress | None = None) -> dict:
    """Curvature at the end of SGD with and without label noise (Damian, Ma & Lee 2021 at
    network scale): for each seed (θ0, data order, noise draws) and each δ in ``noises`` the run
    ``cfg`` with ``label_noise`` = δ (a class label replaced by a uniform other class with
    probability δ each step); its curvature probe (every ``cfg.hessian_every`` steps, which
    must divide ``cfg.steps``) gives Hutchinson tr H (± its standard error) and Lanczos λ_max
    at θ0 and at the end. Per δ: mean and s.d. over seeds; per δ > 0 the paired difference
    against δ = 0 (same seed, same θ0) and the seeds where it is negative. Expected (Damian et
    al.; Blanc et al. 2020): label noise ends at lower tr H and λ_max. ``out_dir``:
    ``label_noise_curvature.json`` (and, with ``traces``, one trace per run in ``traces/``)."""
    from ..config import validate
    from ._common import check_noise

    noises = [float(d) for d in noises]
    seeds = [int(s) for s in seeds]
    check_noise(noises, "noises")
    if 0.0 not in noises or len(set(noises)) != len(noises):
        raise ConfigError(f"noises must be distinct and include 0 (plain SGD), got {noises}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: give distinct seeds, got {seeds}")
    if cfg.optimizer in ("gd", "flow", "modified-flow", "central-flow", "sde"):
        raise ConfigError(f"optimizer must be a minibatch method (label noise is per step), "
                          f"got {cfg.optimizer}")
    if not cfg.hessian_every or cfg.steps % cfg.hessian_every:
        raise ConfigError(f"hessian_every must be > 0 and divide steps ({cfg.steps}) so the "
                          f"curvature is measured at the end, got {cfg.hessian_every}")
    validate(cfg)
    start = _time.perf_counter()
    ds = dataset if dataset is not None else training.load_data(cfg)
    if not ds.num_classes:
        raise ConfigError("label_noise_curvature needs a classification dataset")
    cfgs = [cfg.replace(seed=s, label_noise=d) for s in seeds for d in noises]
    for c in cfgs:
        validate(c, ds.n_train)
    runs = []
    for c in cfgs:
        rid = f"noise{c.label_noise:g}_s{c.seed}"
        path = Path(out_dir) / "traces" / f"{rid}.json" if out_dir is not None and traces else None
        res = training.train(c, ds, trace_path=path)
        m = res.trace["metrics"]
        row = {"run_id": rid, "label_noise": c.label_noise, "seed": c.seed,
               "status": res.trace["status"], "steps": m["step"][-1],
               "train_loss": sig(_first_last(m["train_loss"])[1], 6),
               "test_acc": sig(_first_last(m.get("test_acc"))[1], 6),
               "hessian_trace_stderr": sig(_first_last(m.get("hessian_trace_stderr"))[1], 4)}
        for k in CURVATURE_KEYS:
            first, last = _first_last(m.get(k))
            row |= {f"{k}_initial": sig(first, 6), k: sig(last, 6)}
        runs.append(row)
        say(progress, f"{rid}: {row['status']}, tr H {row['hessian_trace_initial']} → "
                      f"{row['hessian_trace']}, λ_max {row['lambda_max_initial']} → "
                      f"{row['lambda_max']}, train loss {row['train_loss']}")
    by = {(r["label_noise"], r["seed"]): r for r in runs}
    summary = {}
    for d in noises:
        rows = [by[d, s] for s in seeds]
        entry = {k: _mean_sd(r[k] for r in rows) for k in (*CURVATURE_KEYS, "train_loss",
                                                           "test_acc")}
        if d:
            for k in CURVATURE_KEYS:
                diff = [None if by[d, s][k] is None or by[0.0, s][k] is None
                        else sig(by[d, s][k] - by[0.0, s][k], 6) for s in seeds]
                entry[f"{k}_minus_plain"] = _mean_sd(diff) | {
                    "per_seed": diff, "lower_in_seeds": [s for s, x in zip(seeds, diff)
                                                         if x is not None and x < 0]}
        summary[f"{d:g}"] = entry
    results = {"dataset": ds.describe(), "num_params": res.trace["num_params"], "runs": runs,
               "summary": summary,
               "note": "hessian_trace: Hutchinson estimate (cfg.probes probes) on the training "
                       "set, lambda_max: Lanczos; *_initial at θ0, the others at the last step; "
                       "*_minus_plain: paired over seeds against label_noise 0"}
    config = {"noises": noises, "seeds": seeds, "run": cfg.to_dict()}
    wall = _time.perf_counter() - start
    if out_dir is not None:
        results["traces"] = [f"traces/{r['run_id']}.json" for r in runs] if traces else []
        save_results(out_dir, CURVATURE_EXPERIMENT, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def read_label_noise_curvature(results_dir) -> dict:
    """The stored ``label_noise_curvature.json``: config and results in one dict."""
    doc = load_document(results_dir, CURVATURE_EXPERIMENT)
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}


__all__ = ["DiagonalNet", "diagonal_regression", "sharp_start", "trace_on_manifold",
           "trace_floor", "ManifoldProbe", "run_method", "run_label_noise", "read_label_noise",
           "label_noise_curvature", "read_label_noise_curvature"]
