"""Paper-scale recipes: ``python experiments/<script>.py --scale paper --data-dir DIR``.

Every experiment script runs at laptop scale by default (scikit-learn digits, CPU minutes). With
``--scale paper`` the SAME script runs the same pipeline (its experiment function, results JSON,
figure) on the paper's setup instead: the paper's data (CIFAR-10 or MNIST from ``--data-dir``),
model (the ``RunConfig`` presets of ``sgdreg.zoo``), optimizer, schedule and grid, writing
``figures/data/<script>_paper/`` (with a ``recipe.json``) and ``figures/<script>_paper.png``, so
the digits-scale results are never overwritten. The scale only changes the configuration:
``RECIPES`` is the single statement of each paper's setup; a script derives its arguments from
its recipe (``run_config`` for the ``RunConfig``, the recipe's ``grid``, ``seeds`` and
``extra`` for the rest).

``--print-config`` prints the resolved recipe (JSON: setup, grid, run count, estimated GPU time,
deviations from the paper) and exits without touching data or output. ``--device-budget BYTES``
keeps the data on the host and streams it (``RunConfig.device_budget`` of every run, or the
experiment function's ``device_budget``; ``Dataset.device_budget``, ``batching.py``); refused at
the digits scale and for the host-only analyses (``HOST_ONLY``). ``--override KEY=VALUE``
(repeatable) replaces a recipe field for shorter or different runs (``steps=200``,
``n_train=1000``, ``grid.lr=0.05,0.1``, ``model_kw.k=8``, ``seeds=0``); the overrides are
recorded in ``recipe.json``.

Kinds of recipe (what ``estimate`` can count): ``train`` (the papers' training runs: the
estimate counts them), ``call`` (an analysis whose work is not training steps: its cost is in
``note``), ``same`` (the script already is the paper's setup: ``--scale paper`` runs the
default).

GPU time (``estimate``): NOT MEASURED — no GPU was lent to the sessions that wrote this. It is
FLOPs / (H200 float32 peak 67 TFLOP/s × utilisation 0.35), FLOPs = examples processed × FLOPs
per example: a training step of one example costs ``TRAIN_GFLOP`` (XLA's own count of
grad(loss) for the zoo model, batch 8, ``jax.jit(...).lower(...).cost_analysis()``; MLPs 4·P,
which is XLA's count for ZhangMLP 1×512: 4.84 MFLOP, P = 1,209,866),
a Hessian-vector product of one example 2× that (per curvature measurement: K Hutchinson
probes, the Lanczos steps and λ_min's Lanczos at its cap unless the recipe drops λ_min), an
evaluation 1/3 of it. Utilisation 0.35 is an assumption (no TF32, batch 128 convnets), and so
is a floor of 1 ms per optimizer step and per full-batch HVP (launch and latency: it dominates
the small fc-tanh recipes); treat the hours as ±3×.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError

PEAK_TFLOPS = 67.0  # H200 SXM, float32 without tensor cores (NVIDIA datasheet)
UTILISATION = 0.35  # assumed, not measured
STEP_FLOOR_S = 1e-3  # assumed latency floor of one compiled step or HVP (small models)
#: GFLOP of one training example (forward + backward), XLA cost analysis on CPU (batch 8);
#: ResNet-18 (pre-activation, Nakkiran et al.'s width k) on 32×32, Zhang's nets on 28×28 crops.
TRAIN_GFLOP = {
    "resnet18_k1": 0.001085, "resnet18_k8": 0.0481, "resnet18_k16": 0.1862, "resnet18_k64": 2.905,
    "zhang-inception": 0.9712, "zhang-alexnet": 0.1232,
}
CIFAR_TRAIN, MNIST_TRAIN = 50_000, 60_000


@dataclass(frozen=True)
class Recipe:
    """One paper's setup. ``grid``: axis → values (axes: lr, k, width, variant, noise,
    label_noise, optimizer); every point runs once per seed; ``extra_runs`` are further points
    (e.g. an epoch-wise run beside a model-wise grid). ``extra``: the script's own knobs at this
    scale (e.g. the IGR sweep's time t)."""

    script: str
    paper: str
    kind: str  # train | call | same
    dataset: str = "cifar10"
    n_train: int | None = None
    crop: int | None = None  # centre crop (Zhang et al.: 28×28)
    model: str = ""  # a RunConfig preset (resnet18, zhang-inception, ...) or fc-tanh
    model_kw: dict = field(default_factory=dict)  # k (ResNet-18 width), width, depth
    loss: str = "ce"
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    batch_size: int | None = 128  # None: full batch
    epochs: float = 0.0
    lr_decay: float = 1.0  # staircase h·lr_decay^⌊epoch/lr_decay_epochs⌋
    lr_decay_epochs: float = 0.0
    grid: dict = field(default_factory=dict)
    seeds: tuple = (0,)
    extra_runs: tuple = ()
    curvature_every_epochs: float = 0.0
    probes: int = 20  # Hutchinson probes per curvature measurement (0: λ_max only)
    lanczos_steps: int = 20
    lambda_min_steps: int = 500  # λ_min's Lanczos cap in the curvature probe (0: no λ_min)
    log_every_epochs: float = 1.0
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)
    deviations: tuple = ()
    note: str = ""  # where the time goes when it is not (only) training steps

    @property
    def n(self) -> int:
        full = MNIST_TRAIN if self.dataset == "mnist" else CIFAR_TRAIN
        return self.n_train or full

    @property
    def steps_per_epoch(self) -> int:
        return 1 if self.batch_size is None else self.n // self.batch_size

    @property
    def steps(self) -> int:
        return max(1, round(self.epochs * self.steps_per_epoch))

    def every(self, epochs: float) -> int:
        """Steps in ``epochs`` epochs (at least 1)."""
        return max(1, round(epochs * self.steps_per_epoch))

    def steps_at(self, point: dict) -> int:
        """Steps of one run: ``steps``, or t/h for a recipe run to a time t (``extra['time']``)."""
        if "time" in self.extra:
            return max(1, math.ceil(self.extra["time"] / point.get("lr", self.lr) - 1e-9))
        return self.steps

    def points(self) -> list[dict]:
        axes = list(self.grid)
        return [dict(zip(axes, vals, strict=True)) | {"seed": s}
                for vals in itertools.product(*(self.grid[a] for a in axes))
                for s in self.seeds] + [dict(p) for p in self.extra_runs]


def _mlp_gflop(d: int, widths: list[int], out: int = 10) -> float:
    sizes = [d, *widths, out]
    return 4 * sum(a * b + b for a, b in itertools.pairwise(sizes)) / 1e9  # XLA: 4·P


def train_gflop(r: Recipe, point: dict) -> float:
    """GFLOP of one training example at this grid point (see the module docstring)."""
    if r.model == "resnet18":
        k = point.get("k", r.model_kw.get("k", 64))
        # a·k² + b·k through the measured k = 1 and 64 (k = 8, 16 within 5%)
        g1, g64 = TRAIN_GFLOP["resnet18_k1"], TRAIN_GFLOP["resnet18_k64"]
        a = (g64 - 64 * g1) / (64 * 64 - 64)
        return a * k * k + (g1 - a) * k
    if r.model in ("zhang-inception", "zhang-alexnet"):
        return TRAIN_GFLOP[r.model]
    if r.model in ("zhang-mlp", "fc-tanh"):
        side = r.crop or (28 if r.dataset == "mnist" else 32)
        d = side * side * (1 if r.dataset == "mnist" else 3)
        w = point.get("width", r.model_kw.get("width", 512))
        return _mlp_gflop(d, [w] * r.model_kw.get("depth", 1))
    return 0.0


def estimate(r: Recipe) -> dict[str, Any]:
    """Expected wall time on one H200 (not measured), with its derivation."""
    if r.kind != "train":
        return {"gpu_hours": None, "how": "not a training recipe: see 'note'"}
    total = floor = 0.0
    for p in r.points():
        per = train_gflop(r, p)
        # SVAG ℓ: ℓ steps of h/ℓ per step of h; vmapped paths each do the work of one run
        steps = r.steps_at(p) * p.get("svag_l", 1) * r.extra.get("paths", 1)
        full = (p.get("optimizer", r.optimizer) in ("gd",) or r.batch_size is None)
        examples = steps * (r.n if full else r.batch_size)
        evals = steps / r.every(r.log_every_epochs) * (r.n + 10_000)
        hvps = 0.0
        if r.curvature_every_epochs:
            measures = steps / r.every(r.curvature_every_epochs)
            # Hutchinson + Lanczos + λ_min's Lanczos at its cap (an upper bound: 80–400 steps
            # typical)
            hvps = measures * (r.probes + r.lanczos_steps + r.lambda_min_steps) * r.n
        total += per * (examples + evals / 3 + 2 * hvps)
        floor += STEP_FLOOR_S * (steps + hvps / r.n)
    seconds = total * 1e9 / (PEAK_TFLOPS * 1e12 * UTILISATION) + floor
    return {"gpu_hours": round(seconds / 3600, 2), "total_pflop": round(total / 1e6, 2),
            "how": "NOT MEASURED (no GPU lent): FLOPs / (67 TFLOP/s × 0.35) + 1 ms per step "
                   "and per HVP; FLOPs per example from XLA cost analysis (CPU), see "
                   "sgdreg.experiments.paper",
            "runs": len(r.points())}


_ZHANG = dict(dataset="cifar10", crop=28, optimizer="momentum", momentum=0.9, batch_size=128,
              lr_decay=0.95, lr_decay_epochs=1)
_COHEN = dict(dataset="cifar10", n_train=5000, model="fc-tanh", model_kw={"width": 200, "depth": 2},
              loss="mse", batch_size=None, probes=0, lambda_min_steps=0)
_RESNET = dict(dataset="cifar10", model="resnet18", model_kw={"k": 64})
RECIPES: dict[str, Recipe] = {r.script: r for r in (
    Recipe("zhang_randomization", "Zhang et al. 2017, Fig. 1a/1b (randomization tests)", "train",
           model="zhang-inception", lr=0.1, epochs=64, **_ZHANG,
           grid={"variant": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, "shuffled-pixels", "random-pixels",
                             "gaussian")}, seeds=(0,),
           deviations=("no data augmentation, weight decay or dropout, as in the paper's "
                       "randomization tests; 64 epochs ≈ the figure's 25k steps (a run that "
                       "has not fit by then reports steps_to_fit None)",
                       "variant: label corruption p (0 = true, 1 = random labels), then the "
                       "input randomizations")),
    Recipe("zhang_expressivity", "Zhang et al. 2017, Theorem 1 (2n + d weights fit n points)",
           "call", n_train=50_000, model="mlp", optimizer="adam", lr=0.01, epochs=3000,
           log_every_epochs=30,
           batch_size=None, grid={"multiple": (1, 2, 4)},
           deviations=("the theorem has no experiment in the paper; here the construction on "
                       "all 50,000 CIFAR-10 training images with random labels, and two-layer "
                       "ReLU nets of m·(2n + d) weights trained on them (full-batch Adam)",),
           note="the construction: host NumPy, O(n·d + n log n), a minute; the trained nets: "
                "m·(2n + d) ≈ m·103k weights, full batch over 50,000 images × 3000 steps ≈ "
                "4·P·n·3000 = m·6e16 flop: minutes per m on the GPU (not measured)"),
    Recipe("min_norm_kernel", "Zhang et al. 2017, §5 (minimum-norm kernel interpolation)", "call",
           dataset="mnist", n_train=60_000, seeds=(0, 1, 2),
           deviations=("RBF kernel, median bandwidth, exact Cholesky in float64 on the host "
                       "(the paper: MNIST test error 1.2% without preprocessing)",
                       "the digits-only parts of the default run (GD from zero to the "
                       "min-norm solution, the kernel/preprocessing table) run on the first "
                       "extra['small_n'] MNIST images: they need dense n×n solves",),
           extra={"small_n": 2000},
           note="host NumPy: K is 60,000² float64 = 28.8 GB of RAM; Cholesky n³/3 = 7.2e13 "
                "flop, ~25 min at an assumed 50 GFLOP/s float64 host (not measured), once "
                "for the interpolant on all 60,000; the table and the random-label norms (seeds) on "
                "the first small_n images: seconds each"),
    Recipe("double_descent_rff", "Belkin et al. 2019, Fig. 2 (RFF on MNIST, n = 10^4)", "call",
           dataset="mnist", n_train=10_000, grid={"N": (1_000, 5_000, 9_000, 10_000, 11_000,
                                                         20_000, 40_000, 60_000)},
           seeds=(0,), extra={"sigma": 5.0, "sample_wise_N": 1_000},
           deviations=("pixels in [0, 1] (unit), σ = 5 (Belkin et al.'s MNIST bandwidth)",
                       "the sample-wise curve (N fixed, n varying) is the default run's, "
                       "here with N = extra['sample_wise_N'] on MNIST"),
           note="min-norm least squares per N: ≈ 4n²N + 8n³ flop (SVD of Φ, n = 10⁴), Σ over "
                "the 8 N ≈ 2.3e15 flop float64: ~13 h at an assumed 50 GFLOP/s host, minutes "
                "if run on the GPU's float64 (not measured)"),
    Recipe("double_descent_width", "Nakkiran et al. 2019, Fig. 1/4 (ResNet-18 width k, 15% noise)",
           "train", model="resnet18", optimizer="adam", lr=1e-4, batch_size=128, epochs=4000,
           grid={"k": tuple(range(1, 65)), "noise": (0.15,)}, seeds=(0,), log_every_epochs=10,
           extra_runs=({"k": 64, "noise": 0.15, "seed": 0, "epoch_wise": True},),
           deviations=("no data augmentation (the paper: random crops and flips)",
                       "label noise: a fraction of train labels set to a uniform INCORRECT "
                       "class (label-corruption-incorrect)",
                       "the epoch-wise curve is a separate k = 64 run logged every "
                       "log_every_epochs (the model-wise runs log only their end)")),
    Recipe("cohen_eos", "Cohen et al. 2021, Fig. 1 (fc-tanh, CIFAR-10 5k, MSE, GD)", "train",
           optimizer="gd", lr=2 / 30, epochs=10_000, **_COHEN, curvature_every_epochs=50,
           log_every_epochs=10, grid={"lr": tuple(2 / a for a in (30, 40, 50, 60, 70, 80, 90))},
           deviations=("a fixed 10,000 steps per lr; the paper trains each lr until the loss "
                       "stops falling",
                       "the gradient-flow reference (to t = 10,000·min h) is not in the "
                       "estimate: Tsit5 at λ_max ≈ 500, ~2 PFLOP, minutes")),
    Recipe("adam_eos", "Cohen et al. 2022, adaptive EoS (fc-tanh, CIFAR-10 5k, full-batch Adam)",
           "train", optimizer="adam", momentum=0.9, lr=2e-5, epochs=10_000, **_COHEN,
           lanczos_steps=60, curvature_every_epochs=50, log_every_epochs=10,
           grid={"lr": (1e-5, 2e-5, 4e-5)}, seeds=(0, 1, 2),
           deviations=("lrs chosen by us around the paper's range, β1 = 0.9 (optax default "
                       "β2 = 0.999); the preconditioned sharpness is the curvature probe's",)),
    Recipe("central_flow_eos", "Cohen, Damian et al. 2024, central flows (fc nets, CIFAR-10 5k)",
           "call", optimizer="gd", lr=2 / 50, epochs=2000, **(_COHEN | {"n_train": 1000}),
           seeds=(0, 1, 2), dtype="float64", extra={"log_every": 10, "sharpness_every": 10},
           deviations=("1,000 CIFAR-10 images (θ at every GD step is kept on the host: P = "
                       "656,810 float64 = 5.3 MB per step); the paper's nets and lrs vary",
                       "float64 throughout (the flows' tolerances 1e-8 need it)"),
           note="NOT MEASURED, by hand: one full-batch gradient on 1,000 images ≈ 4·P·n = "
                "2.6 GFLOP; per seed GD 2,000 steps + λ_max every 10 (≈ 0.03 PFLOP), the "
                "central flow 4 substeps × ≈ 240 gradient-equivalents (top-3 eigenpairs, 6 "
                "third-derivative products) × 2,000 steps ≈ 1.3 PFLOP, the two Tsit5 flows to "
                "t = 80 ≈ 0.5 PFLOP; × 3 seeds ≈ 5 PFLOP float64 ≈ 0.1–0.5 h on one H200 (34 "
                "TFLOP/s float64 × 0.35, plus launch latency); host RAM: θ at every GD step, "
                "5.3 MB × 2,000 = 10.5 GB per seed"),
    Recipe("igr_two_param", "Barrett & Dherin 2021, Fig. 1 (two-parameter model)", "same",
           dataset="none", note="the default run: seconds on a CPU",
           deviations=("none: the paper's own setup is this 2-parameter model",)),
    Recipe("igr_backward_error", "Barrett & Dherin 2021, §2 (backward error of GD)", "same",
           dataset="none", note="the default run: minutes on a CPU",
           deviations=("the paper's check is analytic and on small models; the default "
                       "(digits MLP, 4 step sizes) is already that check",)),
    Recipe("igr_sweep", "Barrett & Dherin 2021, §5 (R_IG and test accuracy vs lr, ResNet-18)",
           "train", **(_RESNET | {"n_train": 10_000}), optimizer="gd", batch_size=None,
           lr=0.1, grid={"lr": (0.025, 0.05, 0.1, 0.2, 0.4), "k": (16, 64)}, seeds=(0, 1, 2),
           extra={"time": 50.0, "target_loss": 0.03, "log_every": 10}, log_every_epochs=10,
           deviations=("full-batch GD (the sweep's own method, the theorem's setting) on the "
                       "first 10,000 CIFAR-10 images, each h to t = 50 (the paper: ResNet-18 "
                       "with minibatches); lrs and widths k our choice",
                       "BatchNorm in full-batch mode: the batch statistics of the whole "
                       "training set (see docs/science.md)")),
    Recipe("generalization_measures", "Jiang et al. 2020 (measures vs the generalization gap)",
           "train", **_RESNET, optimizer="sgd", lr=0.1, momentum=0.0, batch_size=128, epochs=300,
           grid={"k": (16, 32, 64), "lr": (0.01, 0.1), "noise": (0.0, 0.2)}, seeds=(0,),
           extra={"stop_loss": 0.01},
           deviations=("ResNet-18 of width k in place of the paper's Network-in-Network grid "
                       "(not in sgdreg.zoo); 12 models rather than 2,187; at most 300 epochs "
                       "each, stopping at train cross-entropy 0.01 as the paper",
                       "the label-noise axis is ours (the paper varies depth, width, lr, batch, "
                       "dropout, weight decay and optimizer)",
                       "the estimate counts the training only; the measures (sharpness "
                       "searches, PAC-Bayes σ, tr H on 50k images) add hours")),
    Recipe("label_noise", "Damian, Ma & Lee 2021 (label-noise SGD, ResNet-18 on CIFAR-10)",
           "train", **_RESNET, optimizer="sgd", lr=0.1, batch_size=256, epochs=200,
           grid={"label_noise": (0.0, 0.2)}, seeds=(0, 1, 2), curvature_every_epochs=200,
           probes=20, lambda_min_steps=0,
           deviations=("label noise as class replacement with probability δ = 0.2; lr, batch "
                       "and δ our choice",
                       "the script's digits-scale experiment is the diagonal net of the theory; "
                       "at paper scale it compares the curvature (Hutchinson tr H, λ_max) at the "
                       "end of SGD with and without label noise over seeds "
                       "(label_noise.label_noise_curvature), not the drift over time")),
    Recipe("sde_svag", "Li, Malladi & Arora 2021 (SVAG, CIFAR-10 ResNets)", "train",
           **_RESNET, optimizer="sgd", lr=0.8, batch_size=128, epochs=200,
           grid={"svag_l": (1, 2, 4, 8)}, extra={"paths": 2}, log_every_epochs=5,
           extra_runs=({"sgd": True, "seed": 0},),
           note="SVAG ℓ runs ℓ steps of h/ℓ per step of h and each run has `paths` vmapped "
                "paths: the estimate counts both, and the plain SGD run (extra_runs)",
           deviations=("the network part only on the ResNet (SGD and SVAG ℓ, `paths` data "
                       "seeds each, vmapped); the SDE and GD references of the digits run are "
                       "left out (per step they cost the full batch); the quadratic part is "
                       "the default run's",
                       "lr 0.8 with no schedule or weight decay (the paper: lr decay, wd)")),
    Recipe("compare_default", "sgdreg's own default (GD vs SGD), at the scale of Cohen et al.",
           "train", optimizer="gd", lr=2 / 50, epochs=5000, **(_COHEN | {"probes": 20}),
           curvature_every_epochs=100,
           log_every_epochs=20, grid={"optimizer": ("gd", "sgd")}, seeds=(0, 1, 2),
           extra={"sgd_batch_size": 16},
           deviations=("not a paper: the default command's GD vs SGD (B = 16) on fc-tanh, "
                       "CIFAR-10 5k; the estimate counts SGD's steps as full batches",)),
)}


#: experiment scripts that reproduce no paper's experiment (so have no paper scale)
NOT_PAPERS = {
    "sharpness_search_strength": "a check of sgdreg's own sharpness search (digits MLP)",
}

#: recipe fields an ``--override`` may replace (dicts also by ``field.key``); ``steps`` sets the
#: epochs to steps / steps_per_epoch
OVERRIDABLE = ("n_train", "crop", "model", "model_kw", "loss", "optimizer", "lr", "momentum",
               "batch_size", "epochs", "steps", "lr_decay", "lr_decay_epochs", "grid", "seeds",
               "extra_runs", "curvature_every_epochs", "probes", "lanczos_steps",
               "lambda_min_steps", "log_every_epochs", "dtype", "extra")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items) -> dict[str, Any]:
    """``["steps=3", "grid.lr=0.05,0.1", "model_kw.k=1"]`` → a dict of recipe fields (dotted
    keys kept); values are Python literals, a comma list a tuple. ConfigError for a bad item."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        if key.split(".")[0] not in OVERRIDABLE:
            raise ConfigError(f"override {key!r}: unknown recipe field; allowed: "
                              f"{', '.join(OVERRIDABLE)}")
        val = _literal(text)
        if isinstance(val, str) and "," in text:
            val = tuple(_literal(t) for t in text.split(",") if t)
        out[key] = val
    return out


def resolve(name: str, overrides: dict | None = None) -> Recipe:
    """Recipe ``name`` with ``overrides`` (``parse_overrides``) applied."""
    if name not in RECIPES:
        raise ConfigError(f"no paper recipe for {name!r}")
    r = RECIPES[name]
    changes: dict[str, Any] = {}
    for key, val in (overrides or {}).items():
        top, _, sub = key.partition(".")
        if top not in OVERRIDABLE:
            raise ConfigError(f"override {key!r}: unknown recipe field; allowed: "
                              f"{', '.join(OVERRIDABLE)}")
        if sub:
            cur = changes.get(top, getattr(r, top))
            if not isinstance(cur, dict):
                raise ConfigError(f"override {key!r}: {top} is not a mapping")
            val = tuple(val) if top == "grid" and isinstance(val, (list, tuple)) else (
                (val,) if top == "grid" else val)
            changes[top] = {**cur, sub: val}
        elif top in ("seeds",) and not isinstance(val, (list, tuple)):
            changes[top] = (val,)
        else:
            changes[top] = val
    steps = changes.pop("steps", None)
    r = dataclasses.replace(r, **changes)
    if steps is not None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"override steps must be a positive integer, got {steps!r}")
        r = dataclasses.replace(r, epochs=steps / r.steps_per_epoch)
    return r


def config(name: str, overrides: dict | None = None) -> dict[str, Any]:
    """The resolved recipe of script ``name`` as plain JSON values."""
    r = resolve(name, overrides)
    d = {k: v for k, v in dataclasses.asdict(r).items() if v not in (None, "", (), {}, 0.0)}
    d |= {"n_train": r.n, "steps": r.steps if r.kind == "train" else None,
          "steps_per_epoch": r.steps_per_epoch if r.kind == "train" else None,
          "runs": len(r.points()), "estimate": estimate(r)}
    if overrides:
        d["overrides"] = overrides
    return json.loads(json.dumps(d, default=list))


def run_config(r: Recipe, data_dir: str | None = None, point: dict | None = None, *,
               device_budget: int | None = None):
    """The ``RunConfig`` of recipe ``r`` (at grid ``point``: its lr, k, width, optimizer, seed)
    with data from ``data_dir``: the paper's data, crop, model, loss, optimizer, lr, schedule,
    batch, steps, logging and curvature cadence; ``device_budget`` (``--device-budget``): the
    data stay on the host (memory-mapped) and stream when larger."""
    from ..config import RunConfig

    point = point or {}
    kw = dict(r.model_kw)
    if "k" in point:
        kw["k"] = point["k"]
    if "width" in point:
        kw["width"] = point["width"]
    opt = point.get("optimizer", r.optimizer)
    lr = point.get("lr", r.lr)
    c: dict[str, Any] = dict(dataset=r.dataset, data_dir=data_dir, n_train=r.n_train, loss=r.loss,
                             optimizer=opt, steps=r.steps_at(point),
                             batch_size=r.batch_size or r.n, log_every=r.every(r.log_every_epochs),
                             seed=int(point.get("seed", r.seeds[0])), dtype=r.dtype,
                             lanczos_steps=r.lanczos_steps, lambda_min_steps=r.lambda_min_steps,
                             probes=r.probes, device_budget=device_budget)
    if lr is not None:
        c["lr"] = float(lr)
    if opt in ("momentum", "nesterov", "adam"):
        c["momentum"] = r.momentum
    if r.model == "fc-tanh":
        c |= dict(model="mlp", activation="tanh", width=kw["width"], depth=kw["depth"])
    elif r.model == "resnet18":
        c |= dict(model="resnet18", width=kw.get("k", 64))
    elif r.model:
        c["model"] = r.model
        c |= {k: kw[k] for k in ("width", "depth") if k in kw}
    if r.curvature_every_epochs:
        c["hessian_every"] = r.every(r.curvature_every_epochs)
    if r.crop:  # only when set: RunConfig.crop
        c["crop"] = r.crop
    if r.lr_decay != 1.0:
        c |= dict(lr_decay=r.lr_decay, lr_decay_every=r.every(r.lr_decay_epochs))
    if point.get("label_noise"):
        c["label_noise"] = float(point["label_noise"])
    return RunConfig(**c)


# ---------------------------------------------------------------------------- command line


def _add_options(p: argparse.ArgumentParser) -> None:
    have = p._option_string_actions
    p.add_argument("--scale", choices=("small", "paper"), default="small",
                   help="small: the digits-scale default; paper: the paper's setup")
    if "--data-dir" not in have:
        p.add_argument("--data-dir", default=None, help="folder with CIFAR-10 / MNIST files")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (JSON) and exit")
    p.add_argument("--device-budget", type=int, default=None,
                   help="bytes of device memory for the data; above it they stream from the host")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="replace a recipe field at --scale paper (steps=200, grid.lr=0.05,0.1, "
                        "model_kw.k=8, n_train=1000, seeds=0,1); repeatable")
    if "--out" not in have:
        p.add_argument("--out", default=None, help="output folder (paper scale)")


def parse(name: str, argv=None, *, description: str = "",
          parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``--scale {small,paper}``, ``--data-dir``, ``--print-config``, ``--device-budget``,
    ``--override``, ``--out`` for script ``name`` (added to ``parser`` when the script has its
    own); ``args.recipe`` is the resolved recipe at ``--scale paper`` (else None). Bad input
    (paper without --data-dir, a missing folder or files, a budget < 1 byte or below one chunk,
    an unknown override, an override at the small scale): one line on stderr, exit 2, before
    anything is read or written."""
    p = parser or argparse.ArgumentParser(description=description.split("\n")[0] or name)
    _add_options(p)
    a = p.parse_args(argv)

    def fail(msg):
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)

    a.recipe = None
    if a.device_budget is not None and a.device_budget < 1:
        fail(f"--device-budget must be a positive number of bytes, got {a.device_budget}")
    if a.override and a.scale != "paper":
        fail("--override changes the paper recipe: use it with --scale paper")
    if a.device_budget is not None and a.scale != "paper":
        fail("--device-budget streams the paper-scale data: use it with --scale paper (the "
             "digits-scale runs fit any device)")
    if a.device_budget is not None and name in HOST_ONLY:
        fail(f"--device-budget: {name} {HOST_ONLY[name]}; drop the option")
    try:
        a.overrides = parse_overrides(a.override)
        r = resolve(name, a.overrides)
    except ConfigError as e:
        fail(f"--{e}")
    if a.scale == "paper":
        a.recipe = r
    if a.scale == "paper" and not a.print_config:
        if r.dataset != "none" and r.kind != "same":
            if a.data_dir is None:
                fail(f"--scale paper needs --data-dir DIR holding {_FILES[r.dataset]}")
            check_data_dir(r.dataset, a.data_dir, fail)
        if a.device_budget is not None and r.kind == "train":
            chunk = chunk_bytes(r)
            if a.device_budget < chunk:
                fail(f"--device-budget {a.device_budget} bytes is below one chunk ({chunk} bytes: "
                     f"{min(EVAL_CHUNK, r.n)} rows of x and y in float32)")
    return a


EVAL_CHUNK = RunConfig.eval_chunk  # the runs' default chunk (RunConfig.eval_chunk)
#: scripts whose paper-scale work puts no data on the device (``--device-budget`` refused)
HOST_ONLY = {
    "min_norm_kernel": "solves the kernel system in host NumPy (no device data)",
    "double_descent_rff": "fits the random features in host NumPy (no device data)",
    "igr_two_param": "has no dataset", "igr_backward_error": "runs its digits default",
}


def chunk_bytes(r: Recipe) -> int:
    """Device bytes of one streamed chunk of the recipe's data (float32 x, int32 labels)."""
    side = r.crop or (28 if r.dataset == "mnist" else 32)
    channels = 1 if r.dataset == "mnist" else 3
    return min(EVAL_CHUNK, r.n) * (channels * side * side * 4 + 4)


def at_scale(script_file: str, argv=None, doc: str = "",
             parser: argparse.ArgumentParser | None = None) -> argparse.Namespace | None:
    """The door of every experiment script: parse the scale options; with ``--print-config``
    print the configuration and return None (the script stops), else the parsed args (with
    ``args.recipe`` at ``--scale paper``): the script runs its own pipeline on the
    configuration of that scale."""
    name = Path(script_file).stem
    args = parse(name, argv, description=doc, parser=parser)
    if args.print_config:
        print(json.dumps({"script": name, "scale": args.scale,
                          **(config(name, args.overrides) if args.scale == "paper" else {})},
                         indent=1))
        return None
    args.script = name
    return args


def outputs(args: argparse.Namespace, root: Path, name: str) -> tuple[Path, Path]:
    """(results folder, figure path) of a script run: ``root/data/<name>`` and
    ``root/<name>.png`` by default; at ``--scale paper`` ``root/data/<script>_paper`` and
    ``root/<script>_paper.png`` (with ``--out DIR``: DIR and ``DIR/<script>_paper.png``), so the
    default results are never touched (``root`` is the repository's ``figures`` folder)."""
    if getattr(args, "recipe", None) is None:
        return root / "data" / name, root / f"{name}.png"
    paper = f"{args.script}_paper"
    out = getattr(args, "out", None)
    if isinstance(out, (str, Path)):
        return Path(out), Path(out) / f"{paper}.png"
    return root / "data" / paper, root / f"{paper}.png"


def knobs(r: Recipe, defaults: dict) -> dict:
    """The recipe's ``extra`` entries that are keys of a script's ``defaults`` (its own
    analysis settings, e.g. ``include_flow``): ``--override extra.include_flow=False``."""
    return {k: v for k, v in r.extra.items() if k in defaults}


def budget(args: argparse.Namespace) -> dict[str, int]:
    """``{"device_budget": bytes}`` when ``--device-budget`` was given (for the experiment
    functions that take it), else nothing."""
    b = getattr(args, "device_budget", None)
    return {} if b is None else {"device_budget": b}


def record(args: argparse.Namespace, out: Path) -> None:
    """At ``--scale paper``: ``out/recipe.json``, the resolved recipe (with the overrides and
    the command's data folder) beside the script's own results."""
    if getattr(args, "recipe", None) is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    doc = config(args.script, args.overrides) | {"data_dir": args.data_dir,
                                                 "device_budget": args.device_budget}
    (out / "recipe.json").write_text(json.dumps(doc, indent=1, default=str))


_FILES = {"cifar10": "CIFAR-10 (binary or python version)",
          "mnist": "MNIST (train/t10k images and labels, idx[.gz])", "none": ""}


def check_data_dir(dataset: str, data_dir: str, fail) -> None:
    """The folder exists and holds a complete set of files (names only; nothing is read)."""
    from .. import datasets as dsets

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        fail(f"--data-dir {data_dir}: not a directory")
    if dataset == "mnist":
        missing = [s for s in dsets.MNIST_FILES if dsets._find_idx(root, s) is None]
        if missing:
            fail(f"--data-dir {data_dir}: missing MNIST files: {', '.join(missing)}[.gz]")
        return
    for sub in dsets.CIFAR_SUBDIRS:
        for names in (dsets.CIFAR_BIN, dsets.CIFAR_PY):
            if all((root / sub / n).is_file() for n in names):
                return
    fail(f"--data-dir {data_dir}: no complete CIFAR-10 set (binary {', '.join(dsets.CIFAR_BIN)} "
         f"or python {', '.join(dsets.CIFAR_PY)}, directly or in a cifar-10-batches-* folder)")
