"""The reproduced generalization experiments (SCIENCE.md §4–5), run from a config and stored.

Each experiment is a function returning a JSON-ready dict, stored by ``save_results`` as
``<results_dir>/<experiment>.json`` (schema ``sgdreg.results/1``); its renderer
(``sgdreg.experiment_figures``) reads only that file. Training goes through ``training.train``;
the closed-form parts through ``expressivity``, ``kernels`` and ``double_descent``.

* ``randomization_test`` — Zhang et al. 2017, Fig. 1: true labels, label corruption p, shuffled
  pixels, random pixels, Gaussian inputs, hyper-parameters unchanged.
* ``expressivity_test`` — Zhang et al. 2017, Theorem 1 against trained nets of matched size.
* ``min_norm_kernel`` — Zhang et al. 2017, §5: kernel interpolation Kα = y and GD from zero
  converging to the minimum-norm interpolant.
* ``rff_model_wise`` / ``rff_sample_wise`` — Belkin et al. 2019; Nakkiran et al. 2019 (samples).
* ``deep_model_wise`` / ``deep_epoch_wise`` — Nakkiran et al. 2019, width and epoch sweeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, RunConfig, validate
from .data import Dataset, subsample
from .randomization import INPUT_KINDS, randomize
from .trace import atomic_write_text, to_json_value, versions

SCHEMA = "sgdreg.results/1"
Progress = Callable[[str], None]


# ---------------------------------------------------------------- stored results

def save_results(results_dir, experiment: str, config: dict, results: dict,
                 wall_time_s: float) -> Path:
    """Write ``results_dir/<experiment>.json`` atomically (compact strict JSON)."""
    doc = {"schema": SCHEMA, "experiment": experiment, "config": config, "versions": versions(),
           "wall_time_s": wall_time_s, "results": results}
    path = Path(results_dir) / f"{experiment}.json"
    atomic_write_text(path, json.dumps(to_json_value(doc), allow_nan=False,
                                       separators=(",", ":")))
    return path


def load_results(results_dir, experiment: str) -> dict:
    """The ``results`` of ``results_dir/<experiment>.json`` (FileNotFoundError naming it)."""
    path = Path(results_dir) / f"{experiment}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no stored results {path}; run the experiment first")
    doc = json.loads(path.read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an sgdreg results file (schema {doc.get('schema')!r})")
    return doc["results"]


def _curve(trace: dict, keys=("train_loss", "train_acc", "test_acc")) -> dict:
    m = trace["metrics"]
    return {k: [_round(v) for v in m[k]] for k in ("step", *keys) if k in m}


def _round(v, digits: int = 5):
    return v if v is None or isinstance(v, int) else float(f"{v:.{digits}g}")


def _trace_path(trace_dir, name: str):
    return None if trace_dir is None else Path(trace_dir) / f"{name}.json"


def _say(progress: Progress | None, text: str) -> None:
    if progress:
        progress(text)


def _check_noise(noises: Sequence[float], option: str = "--noise") -> None:
    for q in noises:
        if not 0 <= q < 1:
            raise ConfigError(f"{option} must be in [0, 1), got {q:g}")


# ---------------------------------------------------------------- Zhang et al. 2017, Fig. 1

CORRUPTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
INPUT_RANDOMIZATIONS = INPUT_KINDS  # shuffled pixels, random pixels, Gaussian


def randomization_variants(corruptions: Sequence[float] = CORRUPTIONS,
                           inputs: Sequence[str] = INPUT_RANDOMIZATIONS) -> list[dict]:
    """The variants of Zhang et al. 2017, Fig. 1: label corruption p (p = 0 true labels, p = 1
    random labels), then the input randomizations (true labels kept)."""
    out = []
    for p in sorted(set(corruptions)):
        if not 0 <= p <= 1:
            raise ConfigError(f"--corruptions must lie in [0, 1], got {p:g}")
        name = "true labels" if p == 0 else "random labels" if p == 1 else f"corrupt p={p:g}"
        kind = "none" if p == 0 else "random-labels" if p == 1 else "label-corruption"
        out.append({"variant": name, "kind": kind, "p": float(p)})
    for kind in inputs:
        if kind not in INPUT_KINDS:
            raise ConfigError(f"--inputs: unknown {kind!r}; allowed: {', '.join(INPUT_KINDS)}")
        out.append({"variant": kind.replace("-", " "), "kind": kind, "p": None})
    return out


def randomization_test(cfg: RunConfig, corruptions: Sequence[float] = CORRUPTIONS,
                       inputs: Sequence[str] = INPUT_RANDOMIZATIONS, seeds: Sequence[int] = (0,),
                       trace_dir=None, progress: Progress | None = None) -> dict:
    """Randomization tests (Zhang et al. 2017, Fig. 1): train ``cfg`` unchanged on every variant.

    Per run: the training curve, steps to fit (first logged step at 100% train accuracy, None if
    never), its ratio to the true-label run of the same seed, and the test error on the true test
    labels. Each seed redraws θ0, the data order and the randomization.
    """
    from .training import load_data, train

    variants = randomization_variants(corruptions, inputs)
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    validate(cfg)
    clean = load_data(cfg.replace(randomization="none"))
    if not clean.num_classes:
        raise ConfigError(f"randomization tests need a classification dataset; {cfg.dataset} "
                          "is regression")
    n = clean.n_train
    validate(cfg, n)
    runs = []
    for seed in seeds:
        for v in variants:
            c = cfg.replace(randomization=v["kind"], corruption=v["p"] or 0.0, seed=seed)
            ds = load_data(c)
            name = f"{v['kind']}_p{v['p'] if v['p'] is not None else 0:g}_s{seed}"
            res = train(c, ds, trace_path=_trace_path(trace_dir, name))
            s = res.trace["summary"]
            runs.append({**v, "seed": seed, "status": res.trace["status"],
                         "steps_to_fit": s["steps_to_fit"], "final_train_acc": s["train_acc"],
                         "final_train_loss": s["train_loss"], "test_error": 1 - s["test_acc"],
                         "fraction_labels_changed":
                             ds.meta["randomization"]["fraction_labels_changed"]
                             if "randomization" in ds.meta else 0.0,
                         "curve": _curve(res.trace)})
            _say(progress, f"{v['variant']} (seed {seed}): steps to fit {s['steps_to_fit']}, "
                           f"test error {1 - s['test_acc']:.3f}")
    for r in runs:
        ref = next((q["steps_to_fit"] for q in runs if q["seed"] == r["seed"] and q["p"] == 0.0),
                   None)
        r["relative_time"] = r["steps_to_fit"] / ref if ref and r["steps_to_fit"] else None
    return {"n_train": n, "steps_per_epoch": cfg.steps_per_epoch(n), "seeds": list(seeds),
            "variants": variants, "runs": runs, "table": randomization_table(runs)}


def randomization_table(runs: list[dict]) -> list[dict]:
    """One row per variant: mean over seeds of steps to fit, relative time and test error;
    ``all_fit`` says whether every seed reached 100% train accuracy."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        g = [r for r in runs if r["variant"] == name]
        fit = [r["steps_to_fit"] for r in g if r["steps_to_fit"] is not None]
        rel = [r["relative_time"] for r in g if r["relative_time"] is not None]
        rows.append({"variant": name, "kind": g[0]["kind"], "p": g[0]["p"],
                     "all_fit": len(fit) == len(g),
                     "steps_to_fit": float(np.mean(fit)) if fit else None,
                     "relative_time": float(np.mean(rel)) if rel else None,
                     "test_error": float(np.mean([r["test_error"] for r in g]))})
    return rows


# ---------------------------------------------------------------- Zhang et al. 2017, Theorem 1

def matched_width(num_params: int, d: int, k: int) -> int:
    """Hidden width h whose two-layer net d → h → k (with biases), h(d + 1) + (h + 1)k
    parameters, comes closest to ``num_params``."""
    return max(1, round((num_params - k) / (d + 1 + k)))


def expressivity_test(ds: Dataset, n: int, cfg: RunConfig, multiples: Sequence[float] = (1,),
                      seed: int = 0, trace_dir=None, progress: Progress | None = None) -> dict:
    """Theorem 1 (Zhang et al. 2017) on n points with random labels, against trained nets.

    The construction c(x) = Σ_j w_j ReLU(⟨a,x⟩ − b_j) has 2n + d weights and fits exactly
    (``expressivity.expressivity_report``). For each multiple m, a two-layer ReLU net d → h → K
    with ≈ m·(2n + d) parameters (``matched_width``) is trained by ``cfg`` on the same n points
    and labels; its best and final train accuracy are reported.
    """
    from .expressivity import expressivity_report
    from .training import train

    if not 1 <= n <= ds.n_train:
        raise ConfigError(f"--n must be in 1..{ds.n_train} for {ds.name}, got {n}")
    if not ds.num_classes:
        raise ConfigError("expressivity needs a classification dataset (random class labels)")
    if any(not m > 0 for m in multiples):
        raise ConfigError("--multiples must be > 0")
    validate(cfg)
    report = expressivity_report(ds, n=n, labels="random", seed=seed)
    data = randomize(subsample(ds, n_train=n), "random-labels", seed=seed)  # the same labels
    d, k = report["d"], ds.num_classes
    trained = []
    for m in multiples:
        h = matched_width(round(m * report["num_params"]), d, k)
        c = cfg.replace(model="mlp", depth=1, width=h, seed=seed,
                        batch_size=min(cfg.batch_size, n))
        res = train(c, data, trace_path=_trace_path(trace_dir, f"trained_x{m:g}"))
        acc = [a for a in res.trace["metrics"]["train_acc"] if a is not None]
        trained.append({"multiple": float(m), "width": h, "num_params": res.trace["num_params"],
                        "final_train_acc": acc[-1], "best_train_acc": max(acc),
                        "final_train_loss": res.trace["summary"]["train_loss"],
                        "steps_to_fit": res.trace["summary"]["steps_to_fit"],
                        "status": res.trace["status"], "curve": _curve(res.trace)})
        _say(progress, f"trained width {h} ({trained[-1]['num_params']} params): "
                       f"best train acc {max(acc):.3f}")
    return {"construction": report, "trained": trained, "chance": 1 / k}


# ---------------------------------------------------------------- Zhang et al. 2017, §5

class MinNormDistance:
    """Probe: ‖W − W*‖_F / ‖W*‖_F for a ``LinearModel``, W* the minimum-norm interpolant."""

    name = "min_norm"

    def __init__(self, w_star: np.ndarray, every: int):
        self.w_star, self.every = np.asarray(w_star, dtype=np.float64), every

    def __call__(self, params, ctx) -> dict[str, Any]:
        w = np.asarray(params.linear.weight, dtype=np.float64)
        return {"dist_to_min_norm": float(np.linalg.norm(w - self.w_star)
                                          / np.linalg.norm(self.w_star))}

    def describe(self) -> dict[str, Any]:
        return {"definition": "‖W − W*‖_F/‖W*‖_F, W* = (Xᵀ(XXᵀ)⁻¹Y)ᵀ the min-norm interpolant",
                "norm_min_norm": float(np.linalg.norm(self.w_star))}


def gd_min_norm(ds: Dataset, steps: int, lr: float | None = None, log_every: int | None = None,
                trace_path=None) -> dict:
    """GD from W0 = 0 on L = (1/2n)Σ‖Wx_i − y_i‖² (d ≥ n) stays in the row space of X and
    converges to the minimum-norm interpolant W* = (Xᵀ(XXᵀ)⁻¹Y)ᵀ (Zhang et al. 2017, §5).

    ``lr`` defaults to 1/λ_max(XᵀX/n); the error along the smallest eigen-direction then decays as
    (1 − 1/κ)^k, κ = λ_max/λ_min of XXᵀ. Runs in float64 through ``training.train`` with the
    ``MinNormDistance`` probe, so the distance is in the trace.
    """
    import jax

    from .kernels import _error, _flatten, _targets, min_norm_interpolant
    from .models import LinearModel
    from .training import dtype_of, train

    X, Y = _flatten(ds.x_train), _targets(ds.y_train, ds.num_classes)
    n, d = X.shape
    w_star = min_norm_interpolant(X, Y).T  # (K, d); raises if n > d or XXᵀ is singular
    lam = np.linalg.eigvalsh(X @ X.T / n)
    lr = float(1.0 / lam.max()) if lr is None else float(lr)
    log_every = log_every or max(1, steps // 50)
    cfg = RunConfig(dataset=ds.name, model="linear", loss="mse", optimizer="gd", lr=lr,
                    steps=steps, log_every=log_every, dtype="float64")
    model = LinearModel(d, w_star.shape[0], zero_init=True, key=jax.random.key(0),
                        dtype=dtype_of(cfg))  # float64 (enables JAX x64)
    res = train(cfg, ds, model=model, probes=[MinNormDistance(w_star, log_every)],
                trace_path=trace_path)
    m, s = res.trace["metrics"], res.trace["summary"]
    w_gd = np.asarray(res.model.linear.weight, dtype=np.float64)
    test_pred = _flatten(ds.x_test) @ w_star.T
    errors = {"train_error_gd": 1 - s["train_acc"], "test_error_gd": 1 - s["test_acc"]} \
        if ds.num_classes else {"train_mse_gd": 2 * s["train_loss"], "test_mse_gd": 2 * s["test_loss"]}
    return {**errors, "n": n, "d": d, "lr": lr, "steps": steps, "kappa": float(lam.max() / lam.min()),
            "step": m["step"], "dist_to_min_norm": m["dist_to_min_norm"],
            "train_loss": m["train_loss"], "final_dist": m["dist_to_min_norm"][-1],
            "norm_gd": float(np.linalg.norm(w_gd)), "norm_min_norm": float(np.linalg.norm(w_star)),
            "test_error_min_norm": _error(test_pred, ds.y_test, ds.num_classes),
            "status": res.trace["status"]}


def min_norm_kernel(ds: Dataset, kernel: str = "rbf", bandwidth: float | None = None,
                    gd_n: int | None = 30, gd_steps: int = 5000, raw: Dataset | None = None,
                    trace_dir=None, progress: Progress | None = None) -> dict:
    """Minimum-norm interpolation (Zhang et al. 2017, §5): the kernel interpolant Kα = Y on
    ``ds`` (test error, RKHS norm √tr αᵀKα), GD from zero on the first ``gd_n`` points reaching
    the linear min-norm solution (``gd_min_norm``), and, given the unpreprocessed ``raw`` data,
    the preprocessing table showing that the norm does not track test error."""
    from .kernels import KERNELS, kernel_interpolate, preprocessing_norm_table

    if kernel not in KERNELS:
        raise ConfigError(f"--kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if bandwidth is not None and not bandwidth > 0:
        raise ConfigError(f"--bandwidth must be > 0, got {bandwidth:g}")
    d = int(np.prod(ds.input_shape))
    if kernel == "linear" and ds.n_train > d:
        raise ConfigError(f"a linear kernel cannot interpolate n = {ds.n_train} points in d = {d} "
                          "dimensions (n > d); use --kernel rbf or --n-train ≤ d")
    if gd_n is not None and not 1 <= gd_n <= min(d, ds.n_train):
        raise ConfigError(f"--gd-n must be in 1..{min(d, ds.n_train)} (GD reaches the min-norm "
                          f"interpolant only when n ≤ d = {d}), got {gd_n}")
    if gd_steps < 1:
        raise ConfigError(f"--gd-steps must be ≥ 1, got {gd_steps}")
    out: dict[str, Any] = {"interpolation": kernel_interpolate(ds, kernel, bandwidth).as_dict()}
    i = out["interpolation"]
    _say(progress, f"{kernel} interpolation: train error {i['train_error']:.3g}, test error "
                   f"{i['test_error']:.3g}, norm {i['rkhs_norm']:.4g}")
    if gd_n:
        out["gd"] = gd_min_norm(subsample(ds, n_train=gd_n), gd_steps,
                                trace_path=_trace_path(trace_dir, "gd_min_norm"))
        _say(progress, f"GD from zero (n={gd_n}): ‖W − W*‖/‖W*‖ = {out['gd']['final_dist']:.3g}")
    if raw is not None:
        out["preprocessing_table"] = preprocessing_norm_table(raw)
    return out


# ---------------------------------------------------------------- double descent

def rff_bandwidth(ds: Dataset) -> float:
    """σ = ½ · median pairwise distance of the train inputs: σ = 5 on MNIST pixels in [0,1]
    (median ≈ 10, Belkin et al. 2019), σ ≈ 1.5 on 8×8 digits in [0,1]."""
    from .kernels import median_distance

    return 0.5 * median_distance(ds.x_train)


def _sigma(ds: Dataset, sigma: float | None) -> float:
    if sigma is not None and not sigma > 0:
        raise ConfigError(f"--sigma must be > 0, got {sigma:g}")
    return rff_bandwidth(ds) if sigma is None else float(sigma)


def rff_model_wise(ds: Dataset, num_features: Sequence[int] | None = None,
                   seeds: Sequence[int] = (0, 1, 2), sigma: float | None = None) -> dict:
    """Model-wise double descent with random Fourier features (Belkin et al. 2019): min-norm
    a = Φ⁺Y for N swept through n; train error → 0 at N = n where test error and ‖a‖ peak.
    ``num_features`` defaults to ``feature_grid(n)`` (0.1n … 10n, 13 points)."""
    from .double_descent import feature_grid, mean_over_seeds, rff_double_descent

    grid = list(num_features) if num_features else feature_grid(ds.n_train)
    if min(grid) < 1 or not seeds:
        raise ConfigError("--features must be ≥ 1 and --seeds non-empty")
    sigma = _sigma(ds, sigma)
    rows = rff_double_descent(ds, grid, list(seeds), sigma=sigma)
    return {"kind": "rff", "n": ds.n_train, "sigma": sigma, "rows": rows,
            "mean": mean_over_seeds(rows)}


def rff_sample_wise(ds: Dataset, num_features: int, sample_sizes: Sequence[int] | None = None,
                    seeds: Sequence[int] = (0, 1, 2), sigma: float | None = None) -> dict:
    """Sample-wise double descent (Nakkiran et al. 2019) with N fixed random Fourier features:
    min-norm fits on the first n training points; test error peaks at n = N, where more data
    hurts. ``sample_sizes`` defaults to 0.1N … 10N (capped at the training set), with n = N."""
    from .double_descent import feature_grid, rff_double_descent

    sizes = sorted(sample_sizes or [s for s in feature_grid(num_features) if s <= ds.n_train])
    if num_features < 1 or not sizes or sizes[0] < 1 or sizes[-1] > ds.n_train or not seeds:
        raise ConfigError(f"sample sizes must lie in 1..{ds.n_train} and --features ≥ 1")
    sigma = _sigma(ds, sigma)
    rows = []
    for n in sizes:
        for r in rff_double_descent(subsample(ds, n_train=n), [num_features], list(seeds), sigma):
            rows.append(r)
    mean = [{"n": n, **{k: float(np.mean([r[k] for r in rows if r["n"] == n]))
                        for k in ("train_error", "test_error", "train_mse", "test_mse", "norm")}}
            for n in sizes]
    return {"kind": "samples", "N": num_features, "sigma": sigma, "rows": rows, "mean": mean}


def _noisy(cfg: RunConfig, noise: float) -> RunConfig:
    """Label noise as in Nakkiran et al. 2019: a fraction ``noise`` of train labels replaced by a
    uniform *incorrect* class (``randomization.label_corruption_incorrect``)."""
    if noise == 0:
        return cfg.replace(randomization="none", corruption=0.0)
    return cfg.replace(randomization="label-corruption-incorrect", corruption=noise)


def deep_model_wise(cfg: RunConfig, widths: Sequence[int], noises: Sequence[float] = (0.0, 0.1, 0.2),
                    seeds: Sequence[int] = (0,), trace_dir=None,
                    progress: Progress | None = None) -> dict:
    """Model-wise deep double descent (Nakkiran et al. 2019): an MLP of each width trained by
    ``cfg`` for a fixed budget under label noise; final train and test error per width. The peak
    is expected where the net just interpolates the noisy train set (#params ≈ n·K for a
    two-layer net, Belkin et al. 2019)."""
    from .training import load_data, train

    _check_noise(noises)
    if not widths or min(widths) < 1 or not seeds:
        raise ConfigError("--widths must be ≥ 1 and --seeds non-empty")
    validate(cfg)
    rows, k = [], None
    for noise in noises:
        for seed in seeds:
            c0 = _noisy(cfg, noise).replace(seed=seed)
            ds = load_data(c0)
            validate(c0, ds.n_train)
            k = ds.num_classes
            for w in widths:
                c = c0.replace(width=int(w))
                res = train(c, ds, trace_path=_trace_path(trace_dir, f"w{w}_noise{noise:g}_s{seed}"))
                s = res.trace["summary"]
                rows.append({"width": int(w), "noise": float(noise), "seed": seed,
                             "num_params": res.trace["num_params"], "status": res.trace["status"],
                             "train_error": 1 - s["train_acc"], "test_error": 1 - s["test_acc"],
                             "train_loss": s["train_loss"], "test_loss": s["test_loss"]})
                _say(progress, f"width {w}, noise {noise:g}, seed {seed}: test error "
                               f"{rows[-1]['test_error']:.3f}")
    return {"kind": "width", "n_train": ds.n_train, "num_classes": k,
            "interpolation_params": ds.n_train * k, "rows": rows}


def deep_epoch_wise(cfg: RunConfig, noise: float = 0.2, trace_path=None) -> dict:
    """Epoch-wise deep double descent (Nakkiran et al. 2019): train and test error of one large
    model under label noise, logged over training (``cfg.log_every`` steps apart)."""
    from .training import load_data, train

    _check_noise([noise])
    c = _noisy(cfg, noise)
    validate(c)
    ds = load_data(c)
    validate(c, ds.n_train)
    res = train(c, ds, trace_path=trace_path)
    m = res.trace["metrics"]
    epoch = [s / c.steps_per_epoch(ds.n_train) for s in m["step"]]
    return {"kind": "epoch", "noise": float(noise), "width": c.width, "n_train": ds.n_train,
            "num_params": res.trace["num_params"], "status": res.trace["status"], "epoch": epoch,
            **{k: [None if a is None else _round(1 - a) for a in m[src]]
               for k, src in (("train_error", "train_acc"), ("test_error", "test_acc"))},
            "test_loss": [_round(v) for v in m["test_loss"]]}


def timed(fn: Callable[..., dict], *args, **kwargs) -> tuple[dict, float]:
    """(fn(*args, **kwargs), wall seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


__all__ = [
    "CORRUPTIONS", "INPUT_RANDOMIZATIONS", "MinNormDistance", "deep_epoch_wise",
    "deep_model_wise", "expressivity_test", "gd_min_norm", "load_results",
    "matched_width", "min_norm_kernel", "randomization_table", "randomization_test",
    "randomization_variants", "rff_bandwidth", "rff_model_wise", "rff_sample_wise",
    "save_results", "timed",
]
