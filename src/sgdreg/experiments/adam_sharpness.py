"""Adam at the edge of stability (Cohen et al. 2022, "Adaptive gradient methods at the edge of
stability"; docs/science.md#adaptive-sharpness).

Full-batch Adam with step h on an MSE tanh MLP: the preconditioned sharpness λ_max(P⁻¹H), with
Adam's current preconditioner P = diag(√v̂ + ε) (v̂ bias-corrected), rises until it reaches
(2 + 2β1)/((1 − β1)h) = 38/h (β1 = 0.9) and hovers there, while the raw λ_max(H) need not sit at
any threshold. Both come from ``probes.CurvatureProbe``, which reads P from the optax state.

``run_adam_eos``: for each h and seed, the series of both sharpnesses and the loss; per run the
settled value = median preconditioned sharpness over the last ``settle_fraction`` of the steps and
its ratio to the threshold; per h the ratios' median, min and max over seeds. The figure is
``sgdreg.plotting.adam_sharpness.render_adam_sharpness`` (from the stored results only).
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import training
from ..config import ConfigError, RunConfig, validate
from ..data import Dataset
from ..probes import CurvatureProbe
from ..results import load_document, save_results, sig
from ._common import Progress
from .eos import loss_increases, settle_start, settled

EXPERIMENT = "adam_eos"  # results stored as <out_dir>/adam_eos.json (schema sgdreg.results/1)
MODEL = dict(model="mlp", activation="tanh", loss="mse")


def adam_threshold(lr: float, b1: float) -> float:
    """(2 + 2β1)/((1 − β1)h): the stability edge of Adam's preconditioned sharpness with a frozen
    preconditioner (Cohen et al. 2022); 38/h at β1 = 0.9, 2/h at β1 = 0."""
    return (2 + 2 * b1) / ((1 - b1) * lr)


def _check(lrs, seeds, b1, steps, sharpness_every, log_every, lanczos_steps, settle_fraction):
    lrs = [float(h) for h in lrs]
    if not lrs or any(not (h > 0 and math.isfinite(h)) for h in lrs):
        raise ConfigError(f"lrs: give step sizes > 0, got {lrs}")
    if len(set(lrs)) != len(lrs):
        raise ConfigError("lrs: step sizes must be distinct")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: give at least one, distinct, got {seeds}")
    if not 0 <= b1 < 1:
        raise ConfigError(f"b1 must be in [0, 1), got {b1:g}")
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
    return sorted(lrs), seeds


def summarize_run(trace: dict, threshold: float, fraction: float) -> dict:
    """Preconditioned sharpness and λ_max series; the settled preconditioned sharpness (median
    and mean over the last ``fraction`` of the steps) and its ratio to the threshold."""
    m, cfg = trace["metrics"], trace["config"]
    rows = [i for i, v in enumerate(m.get("preconditioned_sharpness", [])) if v is not None]
    steps = [m["step"][i] for i in rows]
    pre = [m["preconditioned_sharpness"][i] for i in rows]
    lam = [m["lambda_max"][i] for i in rows]
    rel = [m["preconditioned_sharpness_residual"][i] / abs(v) for i, v in zip(rows, pre) if v]
    conv = [bool(m["preconditioned_sharpness_converged"][i]) for i in rows]
    recorded = [m["preconditioned_eos_threshold"][i] for i in rows]
    done = trace["status"] == "completed"
    window = settled(steps, pre, cfg["steps"], fraction) if done else []
    lam_window = settled(steps, lam, cfg["steps"], fraction) if done else []
    med = float(np.median(window)) if window else None
    mean = float(np.mean(window)) if window else None
    edge = next((s for s, v in zip(steps, pre) if v >= 0.95 * threshold), None)
    loss = m["train_loss"]
    return {
        "run_id": trace["run_id"], "lr": cfg["lr"], "seed": cfg["seed"], "b1": cfg["momentum"],
        "threshold": threshold, "recorded_threshold": recorded[-1] if recorded else None,
        "status": trace["status"], "steps": m["step"][-1],
        "settled_preconditioned_sharpness": med, "mean_preconditioned_sharpness": mean,
        "ratio": med / threshold if med is not None else None,
        "mean_ratio": mean / threshold if mean is not None else None,
        "settled_min_max_ratio": [min(window) / threshold, max(window) / threshold]
        if window else None,
        "settled_lambda_max": float(np.median(lam_window)) if lam_window else None,
        "settle_window": [settle_start(cfg["steps"], fraction), cfg["steps"]],
        "step_at_edge": edge,
        "max_relative_residual": max(rel) if rel else None,
        "unconverged": int(sum(not c for c in conv)), "measured": len(conv),
        "loss_increases": loss_increases(loss),
        "loss_comparisons": max(0, sum(v is not None for v in loss) - 1),
        "train_loss_final": loss[-1], "wall_time_s": trace.get("wall_time_s"),
        "series": {"step": steps, "preconditioned_sharpness": [sig(v) for v in pre],
                   "lambda_max": [sig(v) for v in lam], "loss_step": m["step"],
                   "train_loss": [sig(v) for v in loss]},
    }


def per_lr(runs: Sequence[dict]) -> list[dict]:
    """Per h: the settled ratios over seeds (median, min, max, mean ± s.d.)."""
    out = []
    for h in sorted({r["lr"] for r in runs}):
        rs = [r for r in runs if r["lr"] == h]
        ratios = [r["ratio"] for r in rs if r["ratio"] is not None]
        out.append({
            "lr": h, "threshold": rs[0]["threshold"], "seeds": [r["seed"] for r in rs],
            "ratios": ratios,
            "median_ratio": float(np.median(ratios)) if ratios else None,
            "min_ratio": min(ratios) if ratios else None,
            "max_ratio": max(ratios) if ratios else None,
            "mean_ratio": float(np.mean(ratios)) if ratios else None,
            "sd_ratio": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else None,
            "settled_lambda_max": [r["settled_lambda_max"] for r in rs],
        })
    return out


def run_adam_eos(
    lrs: Sequence[float], *, seeds: Sequence[int] = (0, 1), b1: float = 0.9,
    dataset: str = "digits", data_dir: str | None = None, n_train: int | None = 256,
    width: int = 32, depth: int = 2, steps: int = 1500, sharpness_every: int = 25,
    log_every: int = 5, lanczos_steps: int = 30, settle_fraction: float = 1 / 3,
    dtype: str = "float64", data: Dataset | None = None, traces: bool = True,
    out_dir: str | Path | None = None, progress: Progress | None = None,
    device_budget: int | None = None,
) -> dict:
    """Full-batch Adam (the preset: b1 = ``b1``, b2 = 0.999, ε = 1e-8) for each h in ``lrs`` and
    each seed (θ0 from the seed), MSE tanh MLP ``width`` × ``depth`` on the first ``n_train``
    examples; every ``sharpness_every`` steps the curvature probe's preconditioned sharpness
    λ_max(P^{-1/2}HP^{-1/2}) and raw λ_max (``lanczos_steps`` warm-started Lanczos steps each),
    the loss every ``log_every``. Per run the settled value (median over the last
    ``settle_fraction`` of the steps) / (2 + 2β1)/((1 − β1)h); per h over seeds. ``out_dir``:
    ``adam_eos.json`` and, with ``traces``, one trace per run in ``traces/``. Published (Cohen et
    al. 2022): the preconditioned sharpness equilibrates at 38/h.
    ``device_budget`` (bytes): data above it stay on the host and stream to the device in chunks
    (MNIST/CIFAR-10 memory-mapped; ``training.load_data``), with the same numbers."""
    lrs, seeds = _check(lrs, seeds, b1, steps, sharpness_every, log_every, lanczos_steps,
                        settle_fraction)
    base = RunConfig(dataset=dataset, data_dir=data_dir, n_train=n_train, width=width,
                     depth=depth, optimizer="adam", momentum=b1, steps=int(steps),
                     log_every=int(log_every), dtype=dtype, **MODEL)
    validate(base)
    start = _time.perf_counter()
    ds = training.load_data(base, device_budget) if data is None else data if \
        device_budget is None else data.replace(device_budget=device_budget)
    base = base.replace(batch_size=ds.n_train)  # one batch = full batch
    say = progress or (lambda _: None)
    runs, num_params = [], None
    for seed in seeds:
        for h in lrs:
            c = base.replace(lr=h, seed=seed)
            validate(c, ds.n_train)
            thr, rid = adam_threshold(h, b1), f"adam_lr{h:g}_s{seed}"
            probe = CurvatureProbe(int(sharpness_every), num_probes=2, top_k=1,
                                   lanczos_steps=lanczos_steps, lambda_min_max_steps=0)
            path = (Path(out_dir) / "traces" / f"{rid}.json" if out_dir is not None and traces
                    else None)
            res = training.train(c, ds, trace_path=path, probes=[probe])
            runs.append(summarize_run(res.trace, thr, settle_fraction) | {"run_id": rid})
            num_params = res.trace["num_params"]
            r = runs[-1]
            say(f"{rid}: {r['status']}, threshold {thr:.4g}, settled "
                + (f"{r['settled_preconditioned_sharpness']:.4g} (ratio {r['ratio']:.3f})"
                   if r["ratio"] is not None else "—")
                + f", λ_max {r['settled_lambda_max']}, {r['wall_time_s']:.1f} s")
    config = {"lrs": lrs, "seeds": seeds, "b1": b1, "b2": 0.999, "eps": 1e-8,
              "steps": int(steps), "sharpness_every": int(sharpness_every),
              "log_every": int(log_every), "lanczos_steps": lanczos_steps,
              "settle_fraction": settle_fraction, "run": base.to_dict()}
    results = {
        "dataset": ds.describe(), "num_params": num_params, "runs": runs,
        "per_lr": per_lr(runs),
        "note": "preconditioned sharpness = λ_max(P^{-1/2}HP^{-1/2}), P = √v̂ + ε from the optax "
                "state after the last update (CurvatureProbe); threshold (2+2β1)/((1−β1)h); "
                "ratio = median preconditioned sharpness over steps ≥ (1 − settle_fraction)·steps "
                "/ threshold; per_lr: over seeds (θ0 from the seed; data fixed)",
    }
    wall = _time.perf_counter() - start
    if out_dir is not None:
        results["traces"] = [f"traces/{r['run_id']}.json" for r in runs] if traces else []
        save_results(out_dir, EXPERIMENT, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def read_adam_eos(results_dir: str | Path) -> dict:
    """The stored ``adam_eos.json``: its results with ``config`` and ``wall_time_s`` beside them."""
    doc = load_document(results_dir, EXPERIMENT)
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}
