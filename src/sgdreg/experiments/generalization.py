"""Which measures predict generalization? The study of Jiang et al. (2020, "Fantastic
generalization measures") over a directory of finished runs (docs/science.md#generalization-measures).

A run directory holds traces and final models, in the sweep layout (``traces/<run>.json`` with
``models/<run>.eqx``: ``sgdreg sweep --save-models`` or ``train_grid``) or flat (``<run>.json``
with ``<run>.eqx`` beside it: ``sgdreg train --save-checkpoint``). ``correlate(run_dir)``:

1. Protocol (Jiang et al. 2020 §3: every model is compared at the same training loss): runs
   are compared at L*, the runs' common ``stop_loss`` (or ``target_loss``). Train the runs with
   ``stop_loss = L*`` (``sgdreg sweep``/``sweep.run_sweep`` and ``train_grid`` both stop each
   run at its first logged step with train_loss ≤ L* and save the model there), so every kept
   run lies between L* and the loss one logging interval earlier. A run that ended with
   train_loss > L*, did not complete, or has no model file is discarded and listed with its
   reason in ``discarded``. ``stopped_at_target`` counts the kept runs trained with
   ``stop_loss`` = L*; a run trained past L* (no or another stop_loss, ``--target-loss``
   chosen afterwards) is kept at its final step, below L*, and ``train_loss_range`` shows the
   spread that leaves. The steps to reach L* (first logged step with train_loss ≤ L*) are a
   measure.
2. Measures of each kept run: every ``measures.compute_measures`` measure of the final model
   against θ0 (rebuilt from the seed, ``training.build``) on the run's own training data
   (``training.load_data``: corrupted labels included), the trace's final ``grad_norm_sq``,
   ``igr_gd``, ``igr_sgd_var``, ``minibatch_grad_norm_sq``, ``grad_var_est`` and the last logged
   curvature (``hessian_trace``, ``lambda_max``, ``grad_var``, ``batch_sharpness``), or curvature
   of the final model (``curvature=True``), σ's sampling standard error from its noise draws
   (``pacbayes_sigma_se``; median se/σ over runs in correlation.json's ``sigma_rel_se``), and
   ``dist_to_min_norm`` = ‖W−W*‖_F/‖W*‖_F for a
   linear model with MSE loss and d ≥ n. Flatness searches use one key (``seed``) for every run:
   common random numbers. Cached in ``measures.json``: a run is recomputed only when its trace or
   model file, the options or L* change (``recompute=True`` forces it).
3. Ranking: Kendall τ of each measure against the gap over the kept runs (``rank_measures``),
   percentile-bootstrap CIs over runs, and the granulated Ψ (``granulated_psi``) over the
   hyper-parameters = the config fields that vary across kept runs. The seed is not a
   hyper-parameter: runs compared for ψ_i differ in field i only and share their seed.
   τ's and Ψ's CIs use the same resamples of runs and both leave out pairs of copies of one
   run (``tau_bootstrap``, ``psi_bootstrap``).

Gap: ``acc_gap`` = train accuracy − test accuracy by default (Jiang et al. rank against the
error gap; with the loss at L* for every run, the loss gap mostly measures test over-confidence);
``gen_gap`` = test loss − train loss for regression or on request. Ranked measures leave out
monotone duplicates (σ next to 1/σ², margin next to 1/γ², √path norm), per-layer norms and
measures constant over the runs; all are kept in ``measures.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._optional import require
from ..correlation import rank_measures
from ..errors import FileFormatError, SgdregError
from ..jsonio import load_json
from ..trace import SCHEMA as TRACE_SCHEMA
from ..trace import atomic_write_json, last_value, to_json_value, validate_trace
from ._common import Progress, say
from .kernel import dist_to_min_norm

pd = require("pandas", "plot", "sgdreg.experiments.generalization")

MEASURES_FILE = "measures.json"
CORRELATION_FILE = "correlation.json"
MEASURES_SCHEMA = "sgdreg.measures/1"
CORRELATION_SCHEMA = "sgdreg.correlation/1"
GAPS = ("acc_gap", "gen_gap")
DEFAULT_GAP = "acc_gap"
DEFAULT_OPTIONS: dict[str, Any] = {
    "flatness": True, "curvature": False, "seed": 0, "num_samples": 16, "num_steps": 20,
    "num_restarts": 4, "num_bisection": 20, "target_drop": 0.1, "margin_q": 10.0}
FINAL_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "gen_gap", "acc_gap")
TRACE_FINAL = ("grad_norm_sq", "igr_gd", "igr_sgd_var", "minibatch_grad_norm_sq", "grad_var_est")
TRACE_CURVATURE = ("hessian_trace", "lambda_max", "grad_var", "batch_sharpness")
# config fields that describe the measurement or the bookkeeping, not the trained model
NOT_HYPERPARAMS = ("seed", "data_dir", "log_every", "eval_chunk", "stop_loss", "rtol", "atol",
                   "hessian_every", "probes", "probe_kind", "lanczos_steps", "top_k",
                   "hessian_n", "slq")
LAYER_PREFIXES = ("spectral_norm_", "frobenius_norm_", "dist_fro_init_", "dist_spec_init_")
NOT_RANKED = ("margin", "path_norm_sqrt", "pacbayes_sigma", "pacbayes_mag_sigma",
              "sharpness_radius", "mag_sharpness_radius", "pacbayes_sigma_se",
              "pacbayes_mag_sigma_se")
FAMILIES = ("norm", "margin", "flatness", "curvature", "implicit reg.", "optimization")


class StudyError(SgdregError, ValueError):
    """A run directory that cannot be studied; the message is one line saying why."""


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """One run of a directory: its name (file stem), trace and (maybe missing) model file."""

    run_id: str
    trace: Path
    model: Path


# ---------------------------------------------------------------- reading a run directory


def find_runs(run_dir: str | Path) -> list[tuple[RunFiles, dict | str]]:
    """(files, trace or the problem with it) for every trace of ``run_dir``, by file name.

    Sweep layout when ``run_dir/traces`` exists, flat otherwise; JSON files that are not traces
    (``sweep.json``, ``summary.json``, ``measures.json``, ...) are skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StudyError(f"no run directory at {run_dir}")
    sweep = (run_dir / "traces").is_dir()
    folder, models = (run_dir / "traces", run_dir / "models") if sweep else (run_dir, run_dir)
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = load_json(path, "JSON file")
        except FileFormatError as e:  # a corrupt file in a run folder is reported, not skipped
            out.append((RunFiles(path.stem, path, models / f"{path.stem}.eqx"), str(e)))
            continue
        if not isinstance(doc, dict) or doc.get("schema") != TRACE_SCHEMA:
            continue
        problems = validate_trace(doc)
        files = RunFiles(path.stem, path, models / f"{path.stem}.eqx")
        out.append((files, f"invalid trace: {problems[0]}" if problems else doc))
    if not out:
        raise StudyError(f"{run_dir} holds no traces: expected traces/<run>.json with "
                         "models/<run>.eqx (sgdreg sweep --save-models) or <run>.json with "
                         "<run>.eqx beside it (sgdreg train --save-checkpoint)")
    return out


def steps_to_loss(doc: dict, target: float | None) -> int | None:
    """First logged step with train_loss ≤ target (None: never, or no target)."""
    if target is None:
        return None
    m = doc["metrics"]
    return next((s for s, v in zip(m["step"], m.get("train_loss", []))
                 if v is not None and v <= target), None)


def resolve_target(docs: Sequence[dict], target_loss: float | None = None) -> float | None:
    """L*: ``target_loss`` if given, else the runs' common ``stop_loss`` (None if none has one)."""
    if target_loss is not None:
        if not (target_loss > 0 and math.isfinite(target_loss)):
            raise StudyError(f"target_loss must be a finite number > 0, got {target_loss:g}")
        return float(target_loss)
    stops = sorted({d["config"].get("stop_loss") for d in docs} - {None})
    if len(stops) > 1:
        raise StudyError("runs were trained to different stop_loss values ("
                         + ", ".join(f"{s:g}" for s in stops) + "); choose one with --target-loss")
    return float(stops[0]) if stops else None


def screen(files: RunFiles, doc: dict | str, target: float | None, run_dir: Path) -> dict:
    """The run's row before measures: config, final metrics, steps to L*, and ``discarded``
    (None, or why the protocol drops it)."""
    row: dict[str, Any] = {"run_id": files.run_id,
                           "trace": str(files.trace.relative_to(run_dir)),
                           "model": str(files.model.relative_to(run_dir))}
    if isinstance(doc, str):
        return {**row, "status": None, "discarded": doc}
    m = doc["metrics"]
    final_step = m["step"][-1] if m["step"] else None
    row |= {"status": doc["status"], "config": doc["config"], "final_step": final_step,
            **{k: (m[k][-1] if m.get(k) else None) for k in FINAL_METRICS},
            "steps_to_loss": steps_to_loss(doc, target)}
    loss = row["train_loss"]
    if doc["status"] != "completed":
        reason = f"status {doc['status']}" + (f" ({doc['status_detail']})"
                                               if doc.get("status_detail") else "")
    elif target is not None and (loss is None or loss > target):
        reason = (f"did not reach train_loss ≤ {target:g} in {final_step} steps (final "
                  + ("null" if loss is None else f"{loss:.4g}") + ")")
    elif not files.model.is_file():
        reason = f"no model file {row['model']}"
    else:
        reason = None
    return {**row, "discarded": reason}


def trace_measures(doc: dict, target: float | None) -> dict[str, float]:
    """Measures read from the trace: final-row IGR/noise terms, last logged curvature, steps."""
    m = doc["metrics"]
    out = {k: m[k][-1] for k in TRACE_FINAL if m.get(k) and m[k][-1] is not None}
    out |= {k: v for k in TRACE_CURVATURE if (v := last_value(m.get(k))) is not None}
    steps = steps_to_loss(doc, target)
    if steps is not None:
        out["steps_to_loss"] = float(steps)
    return out


# ---------------------------------------------------------------- measures of one run


class _Data:
    """Datasets by ``sweep.data_key``: loaded once per distinct source/randomization/seed."""

    def __init__(self):
        self.cache: dict[tuple, Any] = {}

    def __call__(self, cfg):
        from ..sweep import data_key
        from ..training import load_data

        key = data_key(cfg)
        if key not in self.cache:
            self.cache[key] = load_data(cfg)
        return self.cache[key]


def run_measures(files: RunFiles, doc: dict, target: float | None, options: dict,
                 data: Callable | None = None) -> dict[str, float]:
    """Every measure of one run (see the module docstring); StudyError if its model file does
    not belong to its trace."""
    import jax

    from ..checkpoint import load_model
    from ..config import RunConfig
    from ..measures import compute_measures
    from ..training import build

    try:
        cfg = RunConfig(**doc["config"])
    except TypeError as e:
        raise StudyError(f"trace config does not match this sgdreg ({e})") from None
    model, saved = load_model(files.model)
    if saved != cfg:
        diff = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        raise StudyError(f"model file {files.model.name} has another config ({', '.join(diff)})")
    ds = (data or _Data())(cfg)
    s = build(cfg, ds)
    tm = trace_measures(doc, target)
    if options["curvature"]:
        from ..probes import measure_curvature

        c = measure_curvature(model, cfg, ds, seed=options["seed"])
        tm |= {k: c[k] for k in TRACE_CURVATURE if c.get(k) is not None}
    kw = {k: options[k] for k in ("num_samples", "num_steps", "num_restarts", "num_bisection",
                                  "target_drop", "margin_q", "flatness")}
    out = compute_measures(model, s.model0, s.problem.objective, (s.data.x_train, s.data.y_train),
                           jax.random.key(options["seed"]), trace_metrics=tm, **kw)
    if "grad_var_est" in tm:
        out["grad_var_est"] = float(tm["grad_var_est"])
    d = dist_to_min_norm(model, cfg, ds)
    if d is not None:
        out["dist_to_min_norm"] = d
    return out


def _fingerprint(files: RunFiles) -> str:
    h = hashlib.sha256(files.trace.read_bytes())
    h.update(files.model.read_bytes())
    return h.hexdigest()[:20]


def _options(options: dict) -> dict:
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown measure option(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(DEFAULT_OPTIONS)}")
    return {**DEFAULT_OPTIONS, **options}


def _cached(run_dir: Path, options: dict, target: float | None) -> dict[str, dict]:
    """Rows of a previous measures.json computed with the same options and L*, by run."""
    path = run_dir / MEASURES_FILE
    try:
        old = load_json(path, "measures file")
    except FileFormatError:  # missing or corrupt: a cache, recomputed
        return {}
    if not isinstance(old, dict) or not isinstance(old.get("runs"), list) \
            or not all(isinstance(r, dict) and isinstance(r.get("run_id"), str)
                       for r in old["runs"]):
        return {}
    if (old.get("schema") != MEASURES_SCHEMA or old.get("options") != to_json_value(options)
            or old.get("target_loss") != target):
        return {}
    return {r["run_id"]: r for r in old.get("runs", []) if r.get("measures")}


# ---------------------------------------------------------------- the measure table


def measure_table(run_dir: str | Path, *, target_loss: float | None = None,
                  recompute: bool = False, gap: str | None = None,
                  progress: Progress | None = None, **options) -> dict:
    """Screen every run, compute (or reuse) the measures of the kept ones, write measures.json.

    Returns the document: ``target_loss`` L*, ``options``, ``runs`` (one row per trace:
    ``run_id``, ``config``, final metrics, ``steps_to_loss``, ``discarded`` and ``measures``).
    Everything that can be checked from the traces (fewer than two usable runs, a ``gap`` the
    runs lack) raises StudyError before anything is computed or written.
    """
    run_dir = Path(run_dir)
    opts = _options(options)
    found = find_runs(run_dir)
    target = resolve_target([d for _, d in found if isinstance(d, dict)], target_loss)
    rows = [screen(f, d, target, run_dir) for f, d in found]
    _check_usable(rows, target, gap)
    cache = {} if recompute else _cached(run_dir, opts, target)
    doc = {"schema": MEASURES_SCHEMA, "target_loss": target, "options": opts, "runs": rows}
    data = _Data()
    kept = [(f, d, r) for (f, d), r in zip(found, rows) if r["discarded"] is None]
    for i, (files, trace, row) in enumerate(kept):
        fp = _fingerprint(files)
        hit = cache.get(row["run_id"])
        if hit is not None and hit.get("fingerprint") == fp:
            row |= {"fingerprint": fp, "measures": hit["measures"], "cached": True,
                    "measure_time_s": hit.get("measure_time_s")}
            say(progress, f"measures {i + 1}/{len(kept)} {row['run_id']}: cached")
            continue
        start = time.perf_counter()
        try:
            row["measures"] = run_measures(files, trace, target, opts, data)
        except StudyError as e:
            row["discarded"] = str(e)
        except ValueError as e:  # CheckpointError: unreadable model file
            row["discarded"] = f"unreadable model file: {e}"
        row |= {"fingerprint": fp, "cached": False,
                "measure_time_s": time.perf_counter() - start}
        say(progress, f"measures {i + 1}/{len(kept)} {row['run_id']}: "
                       f"{row['measure_time_s']:.1f} s" + (f" — discarded: {row['discarded']}"
                                                           if row["discarded"] else ""))
        atomic_write_json(run_dir / MEASURES_FILE, doc, indent=None)
    atomic_write_json(run_dir / MEASURES_FILE, doc, indent=None)
    return doc


def _check_usable(rows: list[dict], target: float | None, gap: str | None) -> None:
    kept = [r for r in rows if r["discarded"] is None]
    if len(kept) < 2:
        why = "; ".join(f"{r['run_id']}: {r['discarded']}" for r in rows[:3])
        raise StudyError(f"{len(kept)} of {len(rows)} runs usable (need ≥ 2"
                         + (f" that reached train_loss ≤ {target:g}" if target else "")
                         + f"): {why}" + (" ..." if len(rows) > 3 else ""))
    if gap is not None and all(r.get(gap) is None for r in kept):
        other = [g for g in GAPS if g != gap][0]
        raise StudyError(f"gap {gap}: the runs have no {gap} (regression has no accuracy); "
                         f"use {other}")


# ---------------------------------------------------------------- ranking


def family(name: str) -> str:
    """The measure's kind, one of ``FAMILIES`` (colours of the figure)."""
    if name.startswith(("pacbayes", "sharpness", "mag_sharpness")):
        return "flatness"
    if "margin" in name or name.startswith("log_spec_"):
        return "margin"
    if name.startswith(("hessian_trace", "lambda_max", "batch_sharpness")):
        return "curvature"
    if name in ("grad_norm_sq", "igr_gd", "igr_sgd_var", "grad_var", "grad_var_est",
                "minibatch_grad_norm_sq"):
        return "implicit reg."
    if name == "steps_to_loss":
        return "optimization"
    return "norm"


def rankable(df: pd.DataFrame, measure_names: Sequence[str]) -> list[str]:
    """Measures to rank: those with ≥ 2 distinct values over the runs (``num_params`` needs
    widths to vary), minus per-layer norms and monotone duplicates (``NOT_RANKED``)."""
    out = []
    for k in measure_names:
        if k in NOT_RANKED or k.startswith(LAYER_PREFIXES) or k not in df:
            continue
        v = pd.to_numeric(df[k], errors="coerce").dropna()
        if len(v) >= 2 and v.nunique() > 1:
            out.append(k)
    return out


def hyperparams(rows: Sequence[dict], target: float | None) -> list[str]:
    """Config fields that vary across ``rows`` (not the seed or probe settings; not ``steps``
    when every run stopped at L*, where the budget is not a property of the trained model)."""
    skip = set(NOT_HYPERPARAMS) | ({"steps"} if target is not None else set())
    keys = [k for k in rows[0]["config"] if k not in skip]
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in rows}) > 1]


def frame(rows: Sequence[dict], hps: Sequence[str]) -> pd.DataFrame:
    """One row per run: ``run_id``, hyper-parameters, ``seed``, final metrics and measures."""
    recs = []
    for r in rows:
        rec = {"run_id": r["run_id"], **{h: r["config"].get(h) for h in (*hps, "seed")},
               **{k: r.get(k) for k in FINAL_METRICS}}
        clash = set(rec) & set(r["measures"])
        if clash:
            raise StudyError(f"measure name(s) {', '.join(sorted(clash))} clash with run fields")
        recs.append({**rec, **r["measures"]})
    return pd.DataFrame.from_records(recs)


def rank(df: pd.DataFrame, measures: Sequence[str], gap: str, hps: Sequence[str], *,
         num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
    """``rank_measures`` rows (τ, CI, Ψ, ``psi_ci``, ψ_i over ``hps``, the seed defining the
    groups; counts; sorted by |τ|) plus the measure's ``family``."""
    check_options(num_resamples=num_resamples, level=level)
    group_by = ["seed"] if df["seed"].nunique(dropna=False) > 1 else []
    rows = rank_measures(df, measures, gap, list(hps), num_resamples, level, seed,
                         group_by=group_by)
    for row in rows:
        row["family"] = family(row["measure"])
    return rows


def sigma_rel_se(df: pd.DataFrame) -> dict[str, float]:
    """Median over runs of se(σ)/σ for the plain and magnitude-aware PAC-Bayes σ (the sampling
    error of the flatness search from its noise draws; empty without flatness measures)."""
    out = {}
    for p in ("pacbayes", "pacbayes_mag"):
        if f"{p}_sigma_se" in df and f"{p}_sigma" in df:
            rel = (pd.to_numeric(df[f"{p}_sigma_se"], errors="coerce")
                   / pd.to_numeric(df[f"{p}_sigma"], errors="coerce")).abs()
            out[p] = float(rel.median()) if rel.notna().any() else math.nan
    return out


MAX_RESAMPLES = 10**7


def check_options(*, gap: str = DEFAULT_GAP, target_loss: float | None = None,
                  num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> None:
    """The study's options, checked before any measure is computed: one-line StudyError naming
    the argument."""
    if gap not in GAPS:
        raise StudyError(f"gap must be one of {', '.join(GAPS)}, got {gap!r}")
    if target_loss is not None and not (target_loss > 0 and math.isfinite(target_loss)):
        raise StudyError(f"target_loss must be a finite number > 0, got {target_loss:g}")
    if not (math.isfinite(level) and 0.0 < level < 1.0):
        raise StudyError(f"level must lie in (0, 1), got {level:g}")
    if not 0 <= num_resamples <= MAX_RESAMPLES:
        raise StudyError(f"num_resamples must be in 0..{MAX_RESAMPLES}, got {num_resamples}")
    if not 0 <= seed <= 2**32 - 1:
        raise StudyError(f"seed must be in 0..{2**32 - 1}, got {seed}")


def correlate(run_dir: str | Path, *, gap: str = DEFAULT_GAP, target_loss: float | None = None,
              recompute: bool = False, measures: Sequence[str] | None = None,
              num_resamples: int = 1000, level: float = 0.95, seed: int = 0,
              progress: Progress | None = None, **options) -> dict:
    """The whole study on ``run_dir`` (module docstring); writes measures.json and
    correlation.json there and returns the latter: ``gap``, ``target_loss``, ``hyperparams``,
    ``num_runs``, ``num_kept``, ``stopped_at_target`` (kept runs trained with stop_loss = L*),
    ``sigma_rel_se`` (median se(σ)/σ, ``sigma_rel_se``),
    ``discarded`` (run, reason), ``train_loss_range`` of the kept
    runs, ``ranking`` (``rank`` rows) and the bootstrap settings."""
    check_options(gap=gap, target_loss=target_loss, num_resamples=num_resamples, level=level,
                  seed=seed)
    run_dir = Path(run_dir)
    start = time.perf_counter()
    table = measure_table(run_dir, target_loss=target_loss, recompute=recompute, gap=gap,
                          progress=progress, **options)
    kept = [r for r in table["runs"] if r["discarded"] is None]
    discarded = [{"run_id": r["run_id"], "reason": r["discarded"]}
                 for r in table["runs"] if r["discarded"] is not None]
    _check_usable(table["runs"], table["target_loss"], gap)
    hps = hyperparams(kept, table["target_loss"])
    df = frame(kept, hps)
    names = list(measures) if measures else rankable(df, list(dict.fromkeys(
        k for r in kept for k in r["measures"])))
    unknown = [k for k in names if k not in df]
    if unknown:
        raise StudyError(f"unknown measure(s) {', '.join(unknown)}")
    say(progress, f"ranking {len(names)} measures over {len(kept)} runs "
                   f"({num_resamples} resamples)")
    ranking = rank(df, names, gap, hps, num_resamples=num_resamples, level=level, seed=seed)
    losses = pd.to_numeric(df["train_loss"], errors="coerce")
    target = table["target_loss"]
    stopped = sum(target is not None and r["config"].get("stop_loss") == target for r in kept)
    if target is not None and stopped < len(kept):
        say(progress, f"{len(kept) - stopped} of {len(kept)} runs were not trained with "
                       f"stop_loss = {target:g}: compared at their final step, not at L*")
    doc = {"schema": CORRELATION_SCHEMA, "gap": gap, "target_loss": table["target_loss"],
           "hyperparams": hps, "hyperparam_values": {h: sorted(map(str, df[h].unique()))
                                                     for h in hps},
           "seeds": sorted(df["seed"].unique().tolist()), "num_runs": len(table["runs"]),
           "num_kept": len(kept), "stopped_at_target": stopped, "discarded": discarded,
           "train_loss_range": [float(losses.min()), float(losses.max())],
           "gap_range": [float(pd.to_numeric(df[gap]).min()), float(pd.to_numeric(df[gap]).max())],
           "sigma_rel_se": sigma_rel_se(df),
           "num_resamples": num_resamples, "level": level, "seed": seed,
           "options": table["options"], "wall_time_s": time.perf_counter() - start,
           "ranking": ranking}
    atomic_write_json(run_dir / CORRELATION_FILE, doc)
    return doc


# ---------------------------------------------------------------- training a grid to L*


def train_grid(grid, out_dir: str | Path, *, progress: Progress | None = None) -> dict:
    """Train every run of a sweep grid (``sweep.as_grid``: TOML path, mapping, ``Grid`` or list
    of configs) one by one with ``training.train``, so each stops at its own ``stop_loss``, into
    the sweep layout: ``traces/<run>.json``, ``models/<run>.eqx`` and a ``sweep.json`` index
    with the fields ``sweep.summary_table`` reads. Run names and validation are the sweep's
    (``sweep.plan_sweep``). A run whose trace (same config, finished) and model exist is kept,
    so an interrupted grid resumes. Returns the index."""
    from ..checkpoint import save_model
    from ..sweep import INDEX_SCHEMA, plan_sweep
    from ..trace import TraceError, load_trace
    from ..training import train

    plan = plan_sweep(grid)
    out = Path(out_dir)
    start = time.perf_counter()
    entries: list[dict] = []
    index: dict[str, Any] = {}
    for r in plan.runs:
        trace_path = out / "traces" / f"{r.run_id}.json"
        model_path = out / "models" / f"{r.run_id}.eqx"
        try:
            doc = load_trace(trace_path) if model_path.is_file() else None
        except TraceError:
            doc = None
        if doc is None or doc["config"] != to_json_value(r.cfg.to_dict()) or \
                doc["status"] not in ("completed", "diverged", "failed"):
            res = train(r.cfg, plan.datasets[r.data_key], trace_path=trace_path)
            save_model(model_path, res.model, r.cfg, res.setup.dataset)
            doc, note = res.trace, f"{res.trace['wall_time_s']:.1f} s"
        else:
            note = "kept"
        entries.append({"index": r.index, "run_id": r.run_id, "grid_values": r.overrides,
                        "trace": f"traces/{r.run_id}.json", "model": f"models/{r.run_id}.eqx",
                        "config": r.cfg.to_dict(), "status": doc["status"],
                        "status_detail": doc.get("status_detail"),
                        "diverged_step": doc.get("diverged_step"), "reused": note == "kept",
                        "summary": doc["summary"]})
        loss = doc["summary"].get("train_loss")
        say(progress, f"run {r.index + 1}/{len(plan.runs)} {r.run_id}: {doc['status']} at step "
                       f"{doc['summary'].get('final_step')}, train_loss "
                       f"{math.nan if loss is None else loss:.4g} ({note})")
        index = {"schema": INDEX_SCHEMA, "name": plan.grid.name, "status": "running",
                 "trained_by": "sgdreg.experiments.generalization.train_grid (one run at a time, stop_loss)",
                 "grid": plan.grid.to_dict(), "num_runs": len(plan.runs),
                 "wall_time_s": time.perf_counter() - start, "runs": entries}
        atomic_write_json(out / "sweep.json", index)
    index["status"] = "completed"
    atomic_write_json(out / "sweep.json", index)
    return index
