"""Paper-scale recipes: ``python experiments/<script>.py --scale paper --data-dir DIR``.

Every experiment script runs at laptop scale by default (scikit-learn digits, CPU minutes). With
``--scale paper`` it runs the paper's own setup instead: the paper's data (CIFAR-10 or MNIST from
``--data-dir``), model (``sgdreg.zoo``), optimizer, schedule and grid, writing one trace per run
under ``figures/data/<name>_paper/`` (a ``recipe.json`` beside them). ``--print-config`` prints
the resolved recipe (JSON: setup, grid, run count, estimated GPU time, deviations from the paper)
and exits without touching data or output. ``--device-budget BYTES`` keeps the data on the host
and streams it (``Dataset.device_budget``; see ``batching.py``).

Kinds of recipe: ``train`` (the paper's training runs, by ``sgdreg.run`` over the grid × seeds,
one trace each; the script's digits-scale analysis and figure are not re-run on them), ``call``
(the script's own analysis function on the paper's data: RFF double descent, kernel
interpolation, the Theorem 1 construction), ``same`` (the script already is the paper's setup),
``recipe-only`` (the setup is stated but sgdreg cannot run it yet; running says why, exit 2).

GPU time (``estimate``): NOT MEASURED — no GPU was lent to the session that wrote this. It is
FLOPs / (H200 float32 peak 67 TFLOP/s × utilisation 0.35), FLOPs = examples processed × FLOPs
per example: a training step of one example costs ``TRAIN_GFLOP`` (XLA's own count of
grad(loss) for the zoo model, batch 8, ``jax.jit(...).lower(...).cost_analysis()``; MLPs 4·P,
which is XLA's count for ZhangMLP 1×512: 4.84 MFLOP, P = 1,209,866),
a Hessian-vector product of one example 2× that (per curvature probe: K Hutchinson probes,
20 Lanczos steps and λ_min's Lanczos at its cap, 500 steps unless the recipe drops λ_min), an
evaluation 1/3 of it. Utilisation 0.35 is an assumption (no TF32, batch 128 convnets), and so
is a floor of 1 ms per optimizer step and per full-batch HVP (launch and latency: it dominates
the small fc-tanh recipes); treat the hours as ±3×.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

PEAK_TFLOPS = 67.0  # H200 SXM, float32 without tensor cores (NVIDIA datasheet)
UTILISATION = 0.35  # assumed, not measured
STEP_FLOOR_S = 1e-3  # assumed latency floor of one compiled step or HVP (small models)
#: GFLOP of one training example (forward + backward), XLA cost analysis on CPU (batch 8);
#: ResNet-18 (pre-activation, Nakkiran et al.'s width k) on 32×32, Zhang's nets on 28×28 crops.
TRAIN_GFLOP = {
    "resnet18_k1": 0.001085, "resnet18_k8": 0.0481, "resnet18_k16": 0.1862, "resnet18_k64": 2.905,
    "inception": 0.9712, "alexnet": 0.1232,
}
CIFAR_TRAIN, MNIST_TRAIN = 50_000, 60_000


@dataclass(frozen=True)
class Recipe:
    """One paper's setup. ``grid``: axis → values (axes: lr, k, width, randomization, noise,
    label_noise); every point runs once per seed."""

    script: str
    paper: str
    kind: str  # train | call | same | recipe-only
    dataset: str = "cifar10"
    n_train: int | None = None
    crop: int | None = None  # centre crop (Zhang et al.: 28×28)
    model: str = ""
    model_kw: dict = field(default_factory=dict)
    loss: str = "ce"
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    batch_size: int | None = 128  # None: full batch
    epochs: float = 0.0
    schedule: str | None = None  # "exp:<rate>/epoch"
    grid: dict = field(default_factory=dict)
    seeds: tuple = (0,)
    curvature_every_epochs: float = 0.0
    probes: int = 20
    lambda_min_steps: int = 500  # λ_min's Lanczos cap in the curvature probe (0: no λ_min)
    log_every_epochs: float = 1.0
    deviations: tuple = ()
    reason: str = ""  # recipe-only: why it cannot run yet
    note: str = ""  # call/same: where the time goes (their work is not training steps)

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

    def points(self) -> list[dict]:
        axes = list(self.grid)
        return [dict(zip(axes, vals, strict=True)) | {"seed": s}
                for vals in itertools.product(*(self.grid[a] for a in axes)) for s in self.seeds]


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
    if r.model in ("inception", "alexnet"):
        return TRAIN_GFLOP[r.model]
    if r.model in ("mlp", "fc-tanh"):
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
        examples = r.steps * (r.batch_size or r.n)
        evals = (r.steps / max(1, round(r.log_every_epochs * r.steps_per_epoch))) * (r.n + 10_000)
        hvps = 0.0
        if r.curvature_every_epochs:
            probes = r.steps / max(1, round(r.curvature_every_epochs * r.steps_per_epoch))
            # Hutchinson + top-k Lanczos (20 steps) + λ_min's Lanczos at its cap (an upper
            # bound: 80–400 steps typical)
            hvps = probes * (r.probes + 20 + r.lambda_min_steps) * r.n
        total += per * (examples + evals / 3 + 2 * hvps)
        floor += STEP_FLOOR_S * (r.steps + hvps / r.n)
    seconds = total * 1e9 / (PEAK_TFLOPS * 1e12 * UTILISATION) + floor
    return {"gpu_hours": round(seconds / 3600, 2), "total_pflop": round(total / 1e6, 2),
            "how": "NOT MEASURED (no GPU lent): FLOPs / (67 TFLOP/s × 0.35) + 1 ms per step "
                   "and per HVP; FLOPs per example from XLA cost analysis (CPU), see "
                   "sgdreg.experiments.paper",
            "runs": len(r.points())}


_ZHANG = dict(dataset="cifar10", crop=28, optimizer="momentum", momentum=0.9, batch_size=128,
              schedule="exp:0.95/epoch")
_COHEN = dict(dataset="cifar10", n_train=5000, model="fc-tanh", model_kw={"width": 200, "depth": 2},
              loss="mse", batch_size=None)
_RESNET = dict(dataset="cifar10", model="resnet18", model_kw={"k": 64})
RECIPES: dict[str, Recipe] = {r.script: r for r in (
    Recipe("zhang_randomization", "Zhang et al. 2017, Fig. 1a (randomization tests)", "train",
           model="inception", lr=0.1, epochs=64, **_ZHANG,
           grid={"randomization": ("none", "random-labels", "shuffled-pixels", "random-pixels",
                                   "gaussian")}, seeds=(0,),
           deviations=("no data augmentation, weight decay or dropout, as in the paper's "
                       "randomization tests; 64 epochs ≈ the figure's 25k steps",)),
    Recipe("zhang_expressivity", "Zhang et al. 2017, Theorem 1 (2n + d weights fit n points)",
           "call", n_train=50_000,
           deviations=("the theorem has no experiment in the paper; here the construction on "
                       "all 50,000 CIFAR-10 training images with random labels",),
           note="host NumPy, O(n·d + n log n): seconds to a minute; no GPU work"),
    Recipe("min_norm_kernel", "Zhang et al. 2017, §5 (minimum-norm kernel interpolation)", "call",
           dataset="mnist", n_train=60_000,
           deviations=("RBF kernel, median bandwidth, exact Cholesky in float64 on the host "
                       "(the paper: MNIST test error 1.2% without preprocessing)",),
           note="host NumPy: K is 60,000² float64 = 28.8 GB of RAM; Cholesky n³/3 = 7.2e13 "
                "flop, ~25 min at an assumed 50 GFLOP/s float64 host (not measured)"),
    Recipe("double_descent_rff", "Belkin et al. 2019, Fig. 2 (RFF on MNIST, n = 10^4)", "call",
           dataset="mnist", n_train=10_000, grid={"N": (1_000, 5_000, 9_000, 10_000, 11_000,
                                                         20_000, 40_000, 60_000)},
           deviations=("pixels standardized (sgdreg's default) rather than in [0, 1]",),
           note="min-norm least squares per N: ≈ 4n²N + 8n³ flop (SVD of Φ, n = 10⁴), Σ over "
                "the 8 N ≈ 2.3e15 flop float64: ~13 h at an assumed 50 GFLOP/s host, minutes "
                "if run on the GPU's float64 (not measured)"),
    Recipe("double_descent_width", "Nakkiran et al. 2019, Fig. 1/4 (ResNet-18 width k, 15% noise)",
           "train", model="resnet18", optimizer="adam", lr=1e-4, batch_size=128, epochs=4000,
           grid={"k": tuple(range(1, 65)), "noise": (0.15,)}, seeds=(0,), log_every_epochs=10,
           deviations=("no data augmentation (the paper: random crops and flips)",
                       "label noise: a fraction of train labels set to a uniform INCORRECT "
                       "class (label-corruption-incorrect)")),
    Recipe("cohen_eos", "Cohen et al. 2021, Fig. 1 (fc-tanh, CIFAR-10 5k, MSE, GD)", "train",
           optimizer="gd", lr=2 / 30, epochs=10_000, **_COHEN, curvature_every_epochs=100,
           log_every_epochs=20, grid={"lr": tuple(2 / a for a in (30, 40, 50, 60, 70, 80, 90))},
           deviations=("a fixed 10,000 steps per lr; the paper trains each lr until the loss "
                       "stops falling (stop_loss can cut it short)",)),
    Recipe("adam_eos", "Cohen et al. 2022, adaptive EoS (fc-tanh, CIFAR-10 5k, full-batch Adam)",
           "train", optimizer="adam", lr=2e-5, epochs=10_000, **_COHEN,
           curvature_every_epochs=100, log_every_epochs=20, grid={"lr": (1e-5, 2e-5, 4e-5)},
           deviations=("lrs chosen by us around the paper's range, β1 = 0.9 (optax default "
                       "β2 = 0.999); the preconditioned sharpness is the curvature probe's",)),
    Recipe("central_flow_eos", "Cohen, Damian et al. 2024, central flows (fc nets, CIFAR-10 5k)",
           "recipe-only", optimizer="gd", lr=2 / 50, epochs=2000, **_COHEN,
           reason="the central-flow comparison (central/gradient/modified flows from GD's θ0) "
                  "is wired to the digits pipeline only; the GD run alone is cohen_eos --scale "
                  "paper"),
    Recipe("igr_two_param", "Barrett & Dherin 2021, Fig. 1 (two-parameter model)", "same",
           dataset="none", note="the default run: seconds on a CPU",
           deviations=("none: the paper's own setup is this 2-parameter model",)),
    Recipe("igr_backward_error", "Barrett & Dherin 2021, §2 (backward error of GD)", "same",
           dataset="none", note="the default run: minutes on a CPU",
           deviations=("the paper's check is analytic and on small models; the default "
                       "(digits MLP, 4 step sizes) is already that check",)),
    Recipe("igr_sweep", "Barrett & Dherin 2021, §5 (R_IG and test accuracy vs lr, ResNet-18)",
           "train", **_RESNET, optimizer="sgd", lr=0.1, batch_size=128, epochs=200,
           grid={"lr": (0.005, 0.01, 0.025, 0.05, 0.1, 0.2)}, seeds=(0, 1, 2),
           deviations=("plain SGD (no momentum, no weight decay), lrs our choice over the "
                       "paper's range",)),
    Recipe("generalization_measures", "Jiang et al. 2020 (measures vs the generalization gap)",
           "train", **_RESNET, optimizer="sgd", lr=0.1, momentum=0.0, batch_size=128, epochs=300,
           grid={"k": (16, 32, 64), "lr": (0.01, 0.1), "noise": (0.0, 0.2)}, seeds=(0,),
           deviations=("ResNet-18 of width k in place of the paper's Network-in-Network grid "
                       "(not in sgdreg.zoo); 12 models rather than 2,187; train for a fixed "
                       "300 epochs, then measure (the paper: to cross-entropy 0.01)",
                       "the label-noise axis is ours (the paper varies depth, width, lr, batch, "
                       "dropout, weight decay and optimizer)")),
    Recipe("label_noise", "Damian, Ma & Lee 2021 (label-noise SGD, ResNet-18 on CIFAR-10)",
           "train", **_RESNET, optimizer="sgd", lr=0.1, batch_size=256, epochs=200,
           grid={"label_noise": (0.0, 0.2)}, seeds=(0,), curvature_every_epochs=20, probes=10,
           lambda_min_steps=0,
           deviations=("label noise as class replacement with probability δ = 0.2; lr, batch "
                       "and δ our choice",)),
    Recipe("sde_svag", "Li, Malladi & Arora 2021 (SVAG, CIFAR-10 ResNets)", "recipe-only",
           **_RESNET, optimizer="svag", lr=0.8, batch_size=128, epochs=200,
           grid={"svag_l": (1, 2, 4, 8)},
           reason="SVAG (sgdreg.SVAG) on a BatchNorm model is not supported by the engine yet"),
    Recipe("compare_default", "sgdreg's own default (GD vs SGD), at the scale of Cohen et al.",
           "train", optimizer="gd", lr=2 / 50, epochs=5000, **_COHEN, curvature_every_epochs=100,
           log_every_epochs=20, grid={"optimizer": ("gd", "sgd")}, seeds=(0, 1, 2),
           deviations=("not a paper: the default command's GD vs SGD (B = 16) on fc-tanh, "
                       "CIFAR-10 5k",)),
)}


#: experiment scripts that reproduce no paper's experiment (so have no paper scale)
NOT_PAPERS = {
    "sharpness_search_strength": "a check of sgdreg's own sharpness search (digits MLP)",
}


def config(name: str) -> dict[str, Any]:
    """The resolved recipe of script ``name`` as plain JSON values."""
    r = RECIPES[name]
    d = {k: v for k, v in dataclasses.asdict(r).items() if v not in (None, "", (), {}, 0.0)}
    d |= {"n_train": r.n, "steps": r.steps if r.kind == "train" else None,
          "steps_per_epoch": r.steps_per_epoch if r.kind == "train" else None,
          "runs": len(r.points()), "estimate": estimate(r)}
    return json.loads(json.dumps(d, default=list))


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
    if "--out" not in have:
        p.add_argument("--out", default=None, help="output folder (paper scale)")


def parse(name: str, argv=None, *, description: str = "",
          parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``--scale {small,paper}``, ``--data-dir``, ``--print-config``, ``--device-budget``,
    ``--out`` for script ``name`` (added to ``parser`` when the script has its own). Bad input
    (paper without --data-dir, a missing folder or files, a budget < 1 byte): one line on
    stderr, exit 2, before anything is read or written."""
    p = parser or argparse.ArgumentParser(description=description.split("\n")[0] or name)
    _add_options(p)
    a = p.parse_args(argv)
    r = RECIPES[name]

    def fail(msg):
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)

    if a.device_budget is not None and a.device_budget < 1:
        fail(f"--device-budget must be a positive number of bytes, got {a.device_budget}")
    if a.scale == "paper" and not a.print_config:
        if r.kind == "recipe-only":
            fail(f"{name} --scale paper is a recipe only (see --print-config): {r.reason}")
        if r.dataset != "none":
            if a.data_dir is None:
                fail(f"--scale paper needs --data-dir DIR holding {_FILES[r.dataset]}")
            check_data_dir(r.dataset, a.data_dir, fail)
        if a.device_budget is not None and r.kind == "train":
            chunk = chunk_bytes(r)
            if a.device_budget < chunk:
                fail(f"--device-budget {a.device_budget} bytes is below one chunk ({chunk} bytes: "
                     f"{min(EVAL_CHUNK, r.n)} rows of x and y in float32)")
    return a


EVAL_CHUNK = 4096  # sgdreg.run's default eval_chunk


def chunk_bytes(r: Recipe) -> int:
    """Device bytes of one streamed chunk of the recipe's data (float32 x, int32 labels)."""
    side = r.crop or (28 if r.dataset == "mnist" else 32)
    channels = 1 if r.dataset == "mnist" else 3
    return min(EVAL_CHUNK, r.n) * (channels * side * side * 4 + 4)


def at_scale(script_file: str, argv=None, doc: str = "",
             parser: argparse.ArgumentParser | None = None) -> argparse.Namespace | None:
    """The door of every experiment script: parse the scale options; print the configuration
    or run the paper-scale recipe and return None (the script stops), else the parsed args (the
    default, digits-scale run goes on)."""
    name = Path(script_file).stem
    args = parse(name, argv, description=doc, parser=parser)
    return None if handle(name, args, Path(script_file).resolve().parents[1]) else args


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


def handle(name: str, args: argparse.Namespace, root: Path) -> bool:
    """Act on ``--print-config`` / ``--scale paper``; True when the script should stop here."""
    if args.print_config:
        print(json.dumps({"script": name, "scale": args.scale,
                          **(config(name) if args.scale == "paper" else {})}, indent=1))
        return True
    if args.scale != "paper" or RECIPES[name].kind == "same":
        return False
    out = Path(args.out) if args.out else root / "figures" / "data" / f"{name}_paper"
    run_paper(name, args.data_dir, out, device_budget=args.device_budget)
    return True


# ---------------------------------------------------------------------------- running


def load(r: Recipe, data_dir, device_budget=None, n_test: int | None = None):
    from ..datasets import open_dataset

    ds = open_dataset(r.dataset, data_dir=data_dir, n_train=r.n_train, n_test=n_test,
                      device_budget=device_budget)
    if r.crop:  # centre crop (C, H, W) → (C, crop, crop)
        def cut(x):
            h, w = x.shape[-2:]
            t, lft = (h - r.crop) // 2, (w - r.crop) // 2
            return np.ascontiguousarray(x[..., t:t + r.crop, lft:lft + r.crop])
        ds = ds.replace(x_train=cut(ds.x_train), x_test=cut(ds.x_test))
    return ds


def build_model(r: Recipe, point: dict, ds, seed: int):
    """(model, BatchNorm state or None) in float32, as the papers trained (also when a script
    turned on float64 for its default run)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def f32(tree):
        return jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a,
                            tree)

    model, state = _build(r, point, ds, seed)
    return f32(model), None if state is None else f32(state)


def _build(r: Recipe, point: dict, ds, seed: int):
    import equinox as eqx
    import jax

    from .. import zoo
    from ..models import make_model

    key = jax.random.key(seed)
    kw = dict(r.model_kw)
    if "k" in point:
        kw["k"] = point["k"]
    if "width" in point:
        kw["width"] = point["width"]
    if r.model == "resnet18":
        return eqx.nn.make_with_state(zoo.ResNet18)(k=kw.get("k", 64), key=key)
    if r.model == "inception":
        return eqx.nn.make_with_state(zoo.ZhangInception)(key=key)
    if r.model == "alexnet":
        return zoo.ZhangAlexNet(image_size=ds.input_shape[-1], key=key), None
    if r.model == "mlp":
        return zoo.ZhangMLP(depth=kw.get("depth", 1), width=kw.get("width", 512),
                            in_features=math.prod(ds.input_shape), key=key), None
    if r.model == "fc-tanh":
        return make_model("mlp", ds.input_shape, ds.out_size, key=key, width=kw["width"],
                          depth=kw["depth"], activation="tanh"), None
    raise ConfigError(f"recipe {r.script}: unknown model {r.model!r}")


def build_optimizer(r: Recipe, point: dict):
    """(optimizer for ``sgdreg.run``, lr or None): a name, or an optax transform with the
    paper's schedule injected as its learning rate."""
    import optax

    lr = point.get("lr", r.lr)
    opt = point.get("optimizer", r.optimizer)
    if r.schedule:
        rate = float(r.schedule.split(":")[1].split("/")[0])
        sched = optax.exponential_decay(lr, r.steps_per_epoch, rate, staircase=True)
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=sched,
                                                 momentum=r.momentum or None)
        return tx, None
    return opt, lr


def run_paper(name: str, data_dir, out: Path, *, device_budget=None, progress=print,
              limit: int | None = None, overrides: dict | None = None) -> list[dict]:
    """Run recipe ``name`` into ``out`` (one trace per grid point × seed; ``recipe.json``).
    ``limit``/``overrides``: the first runs only / replaced recipe fields (tests, dry runs)."""
    r = dataclasses.replace(RECIPES[name], **(overrides or {}))
    base = load(r, data_dir, device_budget)  # data errors before anything is written
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(config(name) | (
        {"overrides": overrides} if overrides else {}), indent=1, default=str))
    if r.kind == "call":
        return [_call(r, base, out)]
    import sgdreg

    from ..randomization import randomize

    rows = []
    for i, point in enumerate(r.points()[:limit]):
        seed = point["seed"]
        ds = base
        if point.get("randomization", "none") != "none":
            ds = randomize(ds, point["randomization"], seed=seed)
        if point.get("noise"):
            ds = randomize(ds, "label-corruption-incorrect", p=point["noise"], seed=seed)
        model, state = build_model(r, point, ds, seed)
        opt, lr = build_optimizer(r, point)
        batch = None if point.get("optimizer", r.optimizer) == "gd" else (r.batch_size or 16)
        rid = f"{name}_" + "_".join(f"{k}{v}" for k, v in point.items())
        per_epoch = r.steps_per_epoch
        probes = [sgdreg.CurvatureProbe(
            max(1, round(r.curvature_every_epochs * per_epoch)), num_probes=r.probes,
            lambda_min_max_steps=r.lambda_min_steps, batch_size=batch,
            threshold=2 / lr if opt == "gd" and lr else None)] if r.curvature_every_epochs else []
        res = sgdreg.run(
            model, ds, opt, loss=r.loss, lr=lr, steps=r.steps, batch_size=batch, seed=seed,
            state=state, log_every=max(1, round(r.log_every_epochs * per_epoch)), probes=probes,
            label_noise=point.get("label_noise", 0.0), name=rid,
            trace_path=out / f"{rid}.json")
        m = res.trace["metrics"]
        rows.append({**point, "train_loss": m["train_loss"][-1], "test_loss": m["test_loss"][-1],
                     "test_acc": (m.get("test_acc") or [None])[-1]})
        progress(f"[{i + 1}/{len(r.points())}] {rid}: train loss {rows[-1]['train_loss']:.4g}")
    (out / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
    return rows


def _call(r: Recipe, ds, out: Path) -> dict:
    if r.script == "double_descent_rff":
        from ..double_descent import rff_double_descent

        res = {"rows": rff_double_descent(ds, list(r.grid["N"]), list(r.seeds))}
    elif r.script == "zhang_expressivity":
        from ..expressivity import expressivity_report

        res = expressivity_report(ds, r.n_train, "random", seed=r.seeds[0])
    elif r.script == "min_norm_kernel":
        from ..kernels import kernel_interpolate

        res = kernel_interpolate(ds, "rbf").as_dict()
    else:
        raise ConfigError(f"recipe {r.script}: no analysis function")
    (out / "result.json").write_text(json.dumps(res, indent=1, default=float))
    return res
