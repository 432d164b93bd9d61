"""Core commands: compare, train, trace (show/validate/export), datasets."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Annotated

import typer

from sgdreg.config import DISCRETE, OPTIMIZERS, RunConfig, validate

from .app import (
    UsageProblem,
    app,
    check_finite,
    check_writable,
    console,
    emit_json,
    make_output,
    output_dir,
    parse_list,
    print_table,
    progress_bar,
)

Opt = typer.Option

# Shared run options (same names and defaults in compare/train).
DatasetOpt = Annotated[str, Opt("--dataset", help="Dataset name (see `sgdreg datasets`).")]
ModelOpt = Annotated[str, Opt("--model", help="mlp | cnn | linear | random-features | resnet18 "
                               "(--width = k) | zhang-inception | zhang-alexnet | zhang-mlp "
                               "(--width, --depth).")]
LossOpt = Annotated[str, Opt("--loss", help="ce (cross-entropy) or mse (½‖f−y‖²).")]
StepsOpt = Annotated[int, Opt("--steps", help="Parameter updates per run (flows: t = steps·lr).")]
EpochsOpt = Annotated[float | None, Opt("--epochs", help="Instead of --steps: passes over the "
                                        "data (GD: 1 step each; SGD: n/B steps each).")]
BatchOpt = Annotated[int, Opt("--batch-size", help="Minibatch size B for sgd/momentum/nesterov/adam.")]
SeedOpt = Annotated[int, Opt("--seed", help="Seeds θ0, data order and probes.")]
LogOpt = Annotated[int | None, Opt("--log-every", help="Log metrics every k steps (one compiled "
                                   "chunk); default: once per epoch for minibatch methods, "
                                   "every max(10, steps/200) for full batch.")]
OutOpt = Annotated[Path | None, Opt("--out", help="Output directory (default sgdreg-runs/<cmd>-<time>).")]
JsonOpt = Annotated[bool, Opt("--json", help="Print a machine-readable summary on stdout.")]
OverwriteOpt = Annotated[bool, Opt("--overwrite", help="Write into a non-empty --out: replace "
                                   "this command's files and remove the traces there (other "
                                   "files stay).")]
WidthOpt = Annotated[int, Opt("--width", help="Hidden units (CNN: channels).")]
DepthOpt = Annotated[int, Opt("--depth", help="Hidden layers.")]
ActivationOpt = Annotated[str, Opt("--activation", help="relu, tanh, gelu, softplus, ...")]
MomentumOpt = Annotated[float, Opt("--momentum", help="β for momentum/nesterov, b1 for adam.")]
DataDirOpt = Annotated[str | None, Opt("--data-dir", help="Folder with MNIST/CIFAR-10 files.")]
CropOpt = Annotated[int | None, Opt("--crop", help="Centre crop of image data to crop×crop "
                                    "pixels (Zhang et al.: 28 of CIFAR-10's 32).")]
LrDecayOpt = Annotated[float, Opt("--lr-decay", help="Staircase step-size decay of the discrete "
                                  "methods, h_t = lr·lr_decay^⌊t/lr_decay_every⌋ (compare: "
                                  "flows keep the constant lr).")]
LrDecayEveryOpt = Annotated[int, Opt("--lr-decay-every", help="Steps between step-size decays "
                                     "(0 = constant lr).")]
DeviceBudgetOpt = Annotated[int | None, Opt(
    "--device-budget", help="Bytes of device memory the data may take; above it they stay on "
    "the host and stream in chunks (same numbers).")]
NTrainOpt = Annotated[int | None, Opt("--n-train", help="Use the first n training examples.")]
DtypeOpt = Annotated[str, Opt("--dtype", help="float32 or float64.")]
HessEveryOpt = Annotated[int, Opt("--hessian-every", help="Curvature probes every k steps "
                                  "(0 = off; a multiple of --log-every).")]
ProbesOpt = Annotated[int, Opt("--probes", help="Hutchinson probes K for tr H ± stderr.")]
LanczosOpt = Annotated[int, Opt("--lanczos-steps", help="Lanczos steps M for λ_max and the "
                               "top-k eigenvalues.")]
LambdaMinOpt = Annotated[int | None, Opt("--lambda-min-steps", help="λ_min by Lanczos until "
                         "its Ritz residual converges, at most this many steps (0: no λ_min; "
                         "default 500, and 0 for compare's automatic probes).")]
LabelNoiseOpt = Annotated[float, Opt("--label-noise", help="Label-noise SGD (discrete methods): "
                                    "σ of Gaussian noise added to regression targets each step, "
                                    "or the probability of flipping a class label (ce).")]
CentralEigsOpt = Annotated[int, Opt("--central-flow-eigs", help="Eigenvalues the central flow "
                                    "tracks (at or above 2/h at once).")]
SvagOpt = Annotated[int, Opt("--svag-amplification", help="SVAG's ℓ: ℓ steps of h/ℓ per step of "
                             "h with the noise amplified; → the SDE of SGD as ℓ grows.")]
TopKOpt = Annotated[int, Opt("--top-k", help="Number of top eigenvalues to record.")]
HessNOpt = Annotated[int | None, Opt("--hessian-n", help="Curvature on the first n training "
                                     "examples (default: all).")]
SlqOpt = Annotated[bool, Opt("--slq", help="Also record the SLQ spectral density (raw nodes and "
                             "weights).")]
LogToOpt = Annotated[str | None, Opt("--log-to", help="Also log every row to tensorboard, wandb "
                                     "(offline) and/or mlflow (file store), comma list; files "
                                     "go under --out (needs pip install 'sgdreg[loggers]').")]


def parse_log_to(text: str | None) -> list[str]:
    """``--log-to`` → logger names, each known and installed (``sgdreg.loggers.check_names``);
    one line naming the extra to install otherwise, before anything runs."""
    if text is None:
        return []
    from sgdreg.errors import ConfigError
    from sgdreg.loggers import check_names

    names = parse_list(text, str, "--log-to")
    try:
        return check_names(names, "--log-to")
    except ConfigError as e:
        raise UsageProblem(str(e)) from None


AUTO_CURVATURE_PROBES = 10  # compare's default: about this many curvature probes per run
# compare's automatic probes skip λ_min: it is not in the figure, and converging it takes
# 100–400 Hessian-vector products per probe on the default MLP (it sits at the edge of the
# dense bulk near 0), which doubled the default run's wall time; --lambda-min-steps 500 measures it
AUTO_LAMBDA_MIN_STEPS = 0
DEFAULT_DIGITS_N = 256  # compare's default subset of digits (README: "the default")


def make_configs(optimizers: str, lr: str, **common) -> list[RunConfig]:
    """The grid optimizers × learning rates, validated before anything runs."""
    opts = parse_list(optimizers, str, "--optimizers", OPTIMIZERS)
    lrs = parse_list(lr, float, "--lr")
    for v in lrs:
        if not v > 0:
            raise UsageProblem(f"--lr must be > 0, got {v:g}")
    # label noise is an option of the discrete methods; the continuous ones run without it
    ln = common.pop("label_noise", 0.0)
    # so is the step-size schedule: the continuous ones integrate at the constant lr
    sched = {k: common.pop(k) for k in ("lr_decay", "lr_decay_every") if k in common}
    cfgs = [RunConfig(optimizer=o, lr=h, label_noise=ln if o in DISCRETE else 0.0,
                      **(sched if o in DISCRETE else {}), **common)
            for o in opts for h in lrs]
    for c in cfgs:
        validate_early(c)
    from sgdreg.training import run_id

    ids = [run_id(c) for c in cfgs]
    dup = next((i for k, i in enumerate(ids) if i in ids[:k]), None)
    if dup is not None:  # cannot happen with distinct values (run ids are exact); kept as a guard
        raise UsageProblem(f"--optimizers/--lr: two runs would both be named {dup!r}")
    return cfgs


def validate_early(cfg: RunConfig) -> None:
    """``validate`` before the data is loaded; ``log_every=None`` (the CLI default) is resolved
    and checked by ``run_grid`` once n is known (``default_log_every``)."""
    validate(cfg if cfg.log_every is not None else cfg.replace(log_every=1))


FULL_BATCH_LOG_EVERY = 10  # at least; and at most about FULL_BATCH_ROWS rows per run
FULL_BATCH_ROWS = 200


def default_log_every(cfg: RunConfig, n_train: int) -> int:
    """The CLI's ``--log-every`` default k: about once per epoch (m = ⌊n/B⌋ steps) for minibatch
    methods (a logged row evaluates the full train and test sets, so SGD logging every 10 steps
    costs more than its training); for full-batch ones every max(10, ⌊steps/200⌋) steps (a row
    costs about one step; 200 rows draw any curve).

    With curvature probes on, k divides ``hessian_every`` (probes run on logged rows,
    ``validate``): the largest divisor not above the base. Then, among k/2 … k, the largest
    value that also divides ``steps`` is preferred: a remainder chunk of another length would
    be one more compiled program (``engine.advance``: num_steps is static)."""
    base = (max(FULL_BATCH_LOG_EVERY, cfg.steps // FULL_BATCH_ROWS) if cfg.full_batch
            else max(1, cfg.steps_per_epoch(n_train)))
    he = cfg.hessian_every
    if he > 0 and he % base:
        base = max(d for d in range(1, min(base, he) + 1) if he % d == 0)
    fits = [d for d in range((base + 1) // 2, base + 1)
            if cfg.steps % d == 0 and (he == 0 or he % d == 0)]
    return fits[-1] if fits else base


def check_epochs(epochs: float | None) -> None:
    """``--epochs``: a finite number > 0 (before any data is loaded)."""
    check_finite("--epochs", epochs, 0)


def with_epochs(cfg: RunConfig, epochs: float | None, n: int) -> RunConfig:
    from sgdreg.config import MAX_STEPS

    if epochs is None:
        return cfg
    check_epochs(epochs)
    steps = max(1, round(epochs * cfg.steps_per_epoch(n)))
    if steps > MAX_STEPS:
        raise UsageProblem(f"--epochs {epochs:g} means {steps} steps; at most {MAX_STEPS}")
    return cfg.replace(steps=steps)


def auto_hessian_every(cfg: RunConfig, probes: int) -> int:
    """Curvature cadence for about ``probes`` probes per run: the multiple of ``log_every``
    nearest ``steps / probes`` (at least ``log_every``; probes run on logged rows)."""
    k = cfg.log_every
    return k * max(1, round(cfg.steps / (probes * k)))


def stream_budget(ds, budget: int, cfg: RunConfig):
    """``ds`` with ``device_budget`` = ``budget`` (UsageProblem, before any output, when it is
    below one chunk of ``cfg.eval_chunk`` rows in ``cfg.dtype``). ``ds=None``: loaded here,
    MNIST/CIFAR-10 memory-mapped (``load_data(cfg, device_budget=budget)``)."""
    from sgdreg.errors import ConfigError
    from sgdreg.training import load_data, streamed

    if budget < 1:
        raise UsageProblem(f"--device-budget must be a positive number of bytes, got {budget}")
    try:
        if ds is None:
            return load_data(cfg, device_budget=budget)
        ds = ds.replace(device_budget=budget)
        streamed(ds, cfg.dtype, cfg.eval_chunk)
    except ConfigError as e:
        if not str(e).startswith("device_budget"):
            raise
        raise UsageProblem(f"--{str(e).replace('_', '-', 1)}") from None
    return ds


def run_grid(cfgs: list[RunConfig], epochs: float | None, out: Path, label: str,
             curvature_probes: int = 0, after_compile: Callable[[], None] | None = None,
             overwrite: bool = False, loggers: list[str] | None = None,
             device_budget: int | None = None):
    """Load data once, resolve what depends on n (``--epochs``; the default ``log_every``, see
    ``default_log_every``; with ``curvature_probes`` > 0, ``hessian_every`` for runs that have
    none, see ``auto_hessian_every``), validate every run against it, then train each run into
    ``out`` (``run_concurrently``), calling ``after_compile()`` once every run has compiled."""
    from sgdreg.training import load_data, run_id, train

    # above the budget the data stream from the host (batching.py; MNIST/CIFAR-10 memmapped)
    ds = load_data(cfgs[0]) if device_budget is None else stream_budget(None, device_budget,
                                                                        cfgs[0])
    cfgs = [with_epochs(c, epochs, ds.n_train) for c in cfgs]
    cfgs = [c if c.log_every is not None else c.replace(log_every=default_log_every(c, ds.n_train))
            for c in cfgs]
    if curvature_probes > 0:
        cfgs = [c if c.hessian_every else c.replace(hessian_every=auto_hessian_every(
            c, curvature_probes)) for c in cfgs]
    for c in cfgs:
        validate(c, ds.n_train, input_shape=ds.input_shape)  # image presets need images
    make_output(out, overwrite)
    console.print(f"[bold]{label}[/] on {ds.name} (n={ds.n_train}, test {ds.n_test}) → {out}")
    prog, callback_for = progress_bar(label, len(cfgs))
    stop = threading.Event()

    def one(c: RunConfig, compiled: threading.Event):
        rid = run_id(c)
        # the first chunk compiles (seconds, with the bar at 0): say so before it starts
        curv = f", curvature every {c.hessian_every}" if c.hessian_every else ""
        console.print(f"  {rid}: compiling {c.optimizer} (h={c.lr:g}, logging every "
                      f"{c.log_every} steps{curv})…", highlight=False, soft_wrap=True)
        timer = FirstChunkTimer(callback_for(rid, c.steps), stop, compiled)
        try:
            res = train(c, ds, trace_path=out / f"{rid}.json", progress=timer, loggers=loggers)
        finally:
            compiled.set()
        console.print(f"  {rid}: {res.trace['status']} in {timer.elapsed():.1f} s"
                      + (f" (first chunk after {timer.first:.1f} s, mostly compilation)"
                         if timer.first is not None else ""), highlight=False, soft_wrap=True)
        return res

    with prog:
        return ds, run_concurrently(one, cfgs, stop, after_compile)


def run_concurrently(fn, cfgs: list[RunConfig], stop: threading.Event,
                     after_compile: Callable[[], None] | None = None) -> list:
    """``[fn(c, compiled) for c in cfgs]``, up to one run per CPU core at a time on the CPU
    backend. XLA runs these small programs on one core each, so two runs on two cores take the
    time of the longer one (results are identical to running them in turn); tracing and
    compiling hold Python's GIL, so run k + 1 starts when run k has compiled (``fn`` sets
    ``compiled``): one run's compilation overlaps the other's training. On an accelerator, or
    with one core or one run, in turn (``after_compile`` after the first of several). Ctrl-C sets
    ``stop``: every run stops at its next logged row with status ``interrupted``, then
    KeyboardInterrupt is raised here."""
    import jax

    workers = min(len(cfgs), os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1
    if workers <= 1:
        results = []
        for i, c in enumerate(cfgs):
            results.append(fn(c, threading.Event()))
            if i == 0 and after_compile and len(cfgs) > 1:  # overlaps the next runs
                after_compile()
        return results
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sgdreg-run")
    futures = []
    try:
        for c in cfgs:
            compiled = threading.Event()
            futures.append(pool.submit(fn, c, compiled))
            while not compiled.wait(0.05):  # Ctrl-C stays deliverable while waiting
                if futures[-1].done():
                    break
        if after_compile:
            after_compile()
        wait(futures)
    except KeyboardInterrupt:
        stop.set()
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=True)
    return [f.result() for f in futures]


class FirstChunkTimer:
    """A ``train`` progress callback that passes rows on, notes when the first chunk after step
    0 arrived (seconds since creation: setup + compilation + one chunk; sets ``compiled``) and
    stops the run (KeyboardInterrupt: status ``interrupted``) once ``stop`` is set."""

    def __init__(self, inner, stop: threading.Event | None = None,
                 compiled: threading.Event | None = None):
        self.inner, self.start, self.first = inner, time.perf_counter(), None
        self.stop, self.compiled = stop, compiled

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, step: int, total: int, row: dict) -> None:
        if step > 0 and self.first is None:
            self.first = self.elapsed()
            if self.compiled is not None:
                self.compiled.set()
        self.inner(step, total, row)
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt  # the engine marks the trace 'interrupted'


TABLE = (("train_loss", "train L"), ("test_loss", "test L"), ("gen_gap", "gen gap (test L − train L)"),
         ("train_acc", "train acc"), ("test_acc", "test acc"), ("weight_norm", "‖θ‖"),
         ("dist_from_init", "‖θ−θ0‖"), ("grad_norm_sq", "‖∇L‖²"), ("igr_gd", "igr_gd (h/4)‖∇L‖²"),
         ("igr_sgd_var", "igr_sgd_var"), ("hessian_trace", "tr H ± stderr"),
         ("lambda_max", "λ_max"), ("eos_ratio", "λ_max / EoS threshold"),
         ("batch_sharpness", "batch sharpness ± stderr"),
         ("dist_to_min_norm", "‖θ−θ*‖/‖θ*‖ (min norm)"), ("min_norm_test_loss", "θ* test L"),
         ("min_norm_test_acc", "θ* test acc"), ("steps_to_fit", "steps→100% train"))


def table_value(s: dict, key: str):
    """One summary cell: plain values, ``x ± se`` for estimates, λ_max with its converged flag."""
    if key in ("hessian_trace", "batch_sharpness") and s.get(key) is not None:
        se = s.get(f"{key}_stderr")
        return f"{s[key]:.4g} ± {se:.2g}" if se is not None else s[key]
    if key == "lambda_max" and s.get(key) is not None:
        return f"{s[key]:.4g}" + ("" if s.get("lambda_max_converged", True) else " (not converged)")
    if key == "eos_ratio":
        lam, thr = s.get("lambda_max"), s.get("eos_threshold")
        return lam / thr if lam is not None and thr else None
    return s.get(key)


def summary_rows(results) -> tuple[list[str], list[list]]:
    """One row per metric, one column per run (fits a terminal for several runs)."""
    cols = ["metric"] + [r.trace["run_id"] for r in results]
    rows = [["status"] + [r.trace["status"] for r in results]]
    for key, label in TABLE:
        vals = [table_value(r.trace["summary"], key) for r in results]
        if any(v is not None for v in vals) or key == "steps_to_fit":
            rows.append([label] + vals)
    return cols, rows


def summary_json(out: Path, results, figure: Path | None) -> dict:
    return {
        "out": str(out),
        "figure": str(figure) if figure else None,
        "runs": [{"run_id": r.trace["run_id"], "status": r.trace["status"],
                  "status_detail": r.trace["status_detail"],
                  "trace": str(out / f"{r.trace['run_id']}.json"),
                  "config": r.trace["config"], **r.trace["summary"],
                  "wall_time_s": r.trace["wall_time_s"]} for r in results],
    }


@app.command()
def compare(
    optimizers: Annotated[str, Opt("--optimizers", help=f"Comma list of {', '.join(OPTIMIZERS)}.")]
    = "gd,sgd",
    lr: Annotated[str, Opt("--lr", help="Learning rate(s) h, comma list for a grid.")] = "0.1",
    steps: StepsOpt = 3000,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    dataset: DatasetOpt = "digits",
    model: ModelOpt = "mlp",
    loss: LossOpt = "mse",
    width: WidthOpt = 128,
    depth: DepthOpt = 2,
    activation: Annotated[str | None, Opt("--activation", help="relu, tanh, gelu, softplus, ... "
                                          "(default: tanh; relu for the paper-scale presets "
                                          "resnet18, zhang-*).")] = None,
    momentum: MomentumOpt = 0.9,
    lr_decay: LrDecayOpt = 1.0,
    lr_decay_every: LrDecayEveryOpt = 0,
    label_noise: LabelNoiseOpt = 0.0,
    central_flow_eigs: CentralEigsOpt = 3,
    svag_amplification: SvagOpt = 8,
    log_every: LogOpt = None,
    data_dir: DataDirOpt = None,
    crop: CropOpt = None,
    device_budget: DeviceBudgetOpt = None,
    n_train: Annotated[int | None, Opt("--n-train", help="Use the first n training examples "
                                       "(default: 256 for digits, all of any other dataset; "
                                       "0: all).")] = None,
    dtype: DtypeOpt = "float32",
    hessian_every: Annotated[int | None, Opt("--hessian-every", help="Curvature probes "
                                             "every k steps (default: about 10 per run).")]
    = None,
    no_curvature: Annotated[bool, Opt("--no-curvature", help="No curvature probes (tr H, "
                                      "λ_max, batch sharpness).")] = False,
    probes: ProbesOpt = 20,
    lanczos_steps: LanczosOpt = 20,
    lambda_min_steps: LambdaMinOpt = None,
    top_k: TopKOpt = 3,
    hessian_n: HessNOpt = None,
    slq: SlqOpt = False,
    log_to: LogToOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
):
    """Train the same model from the identical θ0 under several optimizers (and lrs).

    The default is chosen to show implicit regularization at h = 0.1: a tanh MLP
    64-128-128-10 with the MSE loss on the first 256 digits, 3000 steps, where full-batch GD
    sharpens to the edge of stability (λ_max → 2/h = 20) while SGD (B = 16) stays flatter
    (lower λ_max and tr H). Curvature probes (Hutchinson tr H ± stderr, Lanczos λ_max, batch
    sharpness) run about 10 times per run unless --no-curvature. Runs train concurrently, one
    per CPU core. Writes one JSON trace per run, compare.png and summary.json into the output
    directory; the table (or --json) goes to stdout, progress to stderr.

    Examples:

      sgdreg compare --optimizers gd,sgd --lr 0.1

      sgdreg compare --optimizers gd,sgd,flow,momentum,adam --lr 0.05,0.1 --steps 500

      sgdreg compare --model linear --dataset linreg --optimizers gd,sgd --no-curvature

      sgdreg compare --optimizers gd,sgd --hessian-every 100 --probes 50 --slq

      sgdreg compare --optimizers gd,sgd --log-to tensorboard,mlflow --out runs/c
    """
    check_epochs(epochs)
    loggers = parse_log_to(log_to)
    if activation is None:  # the paper-scale presets are ReLU nets
        from sgdreg.models import ZOO_MODELS

        activation = "relu" if model in ZOO_MODELS else "tanh"
    if n_train is None:  # the embedded default: 256 of digits' 1438 (see the README)
        n_train = DEFAULT_DIGITS_N if dataset == "digits" else 0
    if n_train < 0:
        raise UsageProblem(f"--n-train must be ≥ 0 (0: all examples), got {n_train}")
    if no_curvature and hessian_every:
        raise UsageProblem("--no-curvature and --hessian-every contradict each other; give one")
    auto = AUTO_CURVATURE_PROBES if hessian_every is None and not no_curvature else 0
    if lambda_min_steps is None:  # the automatic probes skip λ_min (see AUTO_LAMBDA_MIN_STEPS)
        lambda_min_steps = AUTO_LAMBDA_MIN_STEPS if auto else RunConfig.lambda_min_steps
    cfgs = make_configs(optimizers, lr, steps=steps, batch_size=batch_size, seed=seed,
                        dataset=dataset, model=model, loss=loss, width=width, depth=depth,
                        activation=activation, momentum=momentum, label_noise=label_noise,
                        lr_decay=lr_decay, lr_decay_every=lr_decay_every,
                        central_flow_eigs=central_flow_eigs,
                        svag_amplification=svag_amplification, log_every=log_every,
                        data_dir=data_dir, crop=crop, n_train=n_train or None, dtype=dtype,
                        hessian_every=hessian_every or 0, probes=probes,
                        lanczos_steps=lanczos_steps, lambda_min_steps=lambda_min_steps,
                        top_k=top_k, hessian_n=hessian_n, slq=slq)
    dest = output_dir(out, "compare", overwrite=overwrite)
    from sgdreg.plotting.common import preload

    # matplotlib imported in the background while the runs train (not while they compile:
    # both need the GIL)
    ds, results = run_grid(cfgs, epochs, dest, "compare", curvature_probes=auto,
                           after_compile=preload, overwrite=overwrite, loggers=loggers,
                           device_budget=device_budget)
    from sgdreg.plotting.compare import compare_figure
    from sgdreg.trace import atomic_write_json

    fig = compare_figure([r.trace for r in results], dest / "compare.png")[0]
    summary = summary_json(dest, results, fig)
    atomic_write_json(dest / "summary.json", summary)
    print_table(f"{ds.name}: final values", *summary_rows(results))
    console.print(f"traces, compare.png and summary.json in {dest}")
    if json:
        emit_json(summary)


@app.command()
def train(
    optimizer: Annotated[str, Opt("--optimizer", help=f"One of {', '.join(OPTIMIZERS)}.")] = "sgd",
    lr: Annotated[float, Opt("--lr", help="Learning rate h.")] = 0.1,
    steps: StepsOpt = 1000,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = 32,
    seed: SeedOpt = 0,
    egr: Annotated[float, Opt("--egr", help="Explicit gradient regularization μ: train on "
                                   "L + μ‖∇L‖² (μ = h/4 mimics GD's implicit term).")] = 0.0,
    randomization: Annotated[str, Opt("--randomization", help="none, label-corruption, "
                                      "random-labels, shuffled-pixels, random-pixels, gaussian, ...")]
    = "none",
    corruption: Annotated[float, Opt("--corruption", help="Label-corruption probability p.")] = 0.0,
    momentum: MomentumOpt = 0.9,
    lr_decay: LrDecayOpt = 1.0,
    lr_decay_every: LrDecayEveryOpt = 0,
    label_noise: LabelNoiseOpt = 0.0,
    central_flow_eigs: CentralEigsOpt = 3,
    svag_amplification: SvagOpt = 8,
    dataset: DatasetOpt = "digits",
    model: ModelOpt = "mlp",
    loss: LossOpt = "ce",
    width: WidthOpt = 128,
    depth: DepthOpt = 1,
    activation: ActivationOpt = "relu",
    log_every: LogOpt = None,
    data_dir: DataDirOpt = None,
    crop: CropOpt = None,
    device_budget: DeviceBudgetOpt = None,
    n_train: NTrainOpt = None,
    dtype: DtypeOpt = "float32",
    save_checkpoint: Annotated[bool, Opt("--save-checkpoint", help="Also save the final model "
                                         "(<run>.eqx) for `sgdreg hessian`.")] = False,
    hessian_every: HessEveryOpt = 0,
    probes: ProbesOpt = 20,
    lanczos_steps: LanczosOpt = 20,
    lambda_min_steps: LambdaMinOpt = None,
    top_k: TopKOpt = 3,
    hessian_n: HessNOpt = None,
    slq: SlqOpt = False,
    log_to: LogToOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
):
    """Train one run and write its trace.

    Examples:

      sgdreg train --optimizer sgd --lr 0.05 --batch-size 64 --epochs 20

      sgdreg train --optimizer gd --randomization random-labels --steps 3000

      sgdreg train --optimizer gd --lr 0.05 --hessian-every 50 --save-checkpoint

      sgdreg train --model resnet18 --width 16 --dataset cifar10 --data-dir DIR --crop 28
      --optimizer momentum --lr 0.1 --lr-decay 0.95 --lr-decay-every 390
    """
    if optimizer not in OPTIMIZERS:
        raise UsageProblem(f"--optimizer: unknown value {optimizer!r}; allowed: "
                           f"{', '.join(OPTIMIZERS)}")
    loggers = parse_log_to(log_to)
    cfg = RunConfig(optimizer=optimizer, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                    dataset=dataset, model=model, loss=loss, width=width, depth=depth,
                    activation=activation, momentum=momentum, egr=egr,
                    label_noise=label_noise, central_flow_eigs=central_flow_eigs,
                    svag_amplification=svag_amplification, randomization=randomization,
                    corruption=corruption, log_every=log_every, lr_decay=lr_decay,
                    lr_decay_every=lr_decay_every, data_dir=data_dir, crop=crop,
                    n_train=n_train, dtype=dtype,
                    hessian_every=hessian_every, probes=probes, lanczos_steps=lanczos_steps,
                    top_k=top_k, hessian_n=hessian_n, slq=slq,
                    **({} if lambda_min_steps is None else {"lambda_min_steps": lambda_min_steps}))
    check_epochs(epochs)
    validate_early(cfg)
    dest = output_dir(out, "train", overwrite=overwrite)
    ds, results = run_grid([cfg], epochs, dest, "train", overwrite=overwrite, loggers=loggers,
                           device_budget=device_budget)
    if save_checkpoint:
        from sgdreg.checkpoint import save_model

        res = results[0]
        path = dest / f"{res.trace['run_id']}.eqx"
        save_model(path, res.model, res.setup.cfg, ds, state=res.state)  # BatchNorm: state
        console.print(f"checkpoint → {path}")
    print_table(f"{ds.name}: final values", *summary_rows(results))
    if json:
        emit_json(summary_json(dest, results, None))


trace_app = typer.Typer(help="Show, validate or export JSON traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")


def _describe(path: Path, doc: dict) -> None:
    from rich.markup import escape

    from sgdreg.trace import is_stale

    from .app import result_console

    out = result_console()
    cfg = doc["config"]
    stale = is_stale(doc)
    out.print(f"[bold]{escape(doc['run_id'])}[/]  status={doc['status']}"
              + (f" ({escape(doc['status_detail'])})" if doc.get("status_detail") else "")
              + (f"  [bold red]stale: {escape(stale)}[/]" if stale else "")
              + f"  [dim]{escape(str(path))}[/]", highlight=False, soft_wrap=True)
    dev = doc["device"]
    dev = f"{dev.get('kind')} ×{dev.get('count')}" if isinstance(dev, dict) and dev else dev
    out.print(f"dataset {(doc.get('dataset') or {}).get('name')}, model {cfg.get('model')}, "
              f"optimizer {cfg.get('optimizer')}, lr {cfg.get('lr')}, seed {doc['seed']}, "
              f"{len(doc['metrics']['step'])} rows, device {dev}", highlight=False, soft_wrap=True)


@trace_app.command("show")
def trace_show(
    paths: Annotated[list[Path], typer.Argument(help="Trace files and/or folders (every trace "
                                                "under a folder; other JSON is skipped).")],
    json: JsonOpt = False,
):
    """Print each trace's run description, status and final values.

    One trace: its summary as a metric/value table; several: one column per run. ``--json``
    prints the trace without its metrics: an object for a single file argument, a list otherwise.

    Examples:

      sgdreg trace show runs/compare-x/gd_lr0.1_s0.json

      sgdreg trace show runs/compare-x          # every trace in the folder
    """
    from sgdreg.trace import find_traces

    found = find_traces(paths)
    for path, doc in found:
        _describe(path, doc)
    if len(found) == 1:
        s = found[0][1].get("summary", {})
        print_table("final values", ["metric", "value"], [[k, v] for k, v in s.items()])
    else:
        keys = list(dict.fromkeys(k for _, d in found for k in d.get("summary", {})))
        print_table("final values", ["metric"] + [d["run_id"] for _, d in found],
                    [[k] + [d.get("summary", {}).get(k) for _, d in found] for k in keys])
    if json:
        docs = [{k: d[k] for k in d if k != "metrics"} for _, d in found]
        single = len(paths) == 1 and not paths[0].is_dir()
        emit_json(docs[0] if single else docs)


@trace_app.command("validate")
def trace_validate(
    paths: Annotated[list[Path], typer.Argument(help="Trace files and/or folders.")],
):
    """Check traces against the schema (strict JSON, field types); exit 2 naming the first
    problem. A folder: every trace under it (JSON without the trace schema, e.g. summary.json,
    is skipped). A valid trace left at 'running' by a writer that died (its pid is gone, or
    its heartbeat is over an hour old on another host) is reported as stale: exit 1, a
    runtime state, not bad input."""
    from sgdreg.trace import find_traces, is_stale

    stale = 0
    for f, doc in find_traces(paths):
        reason = is_stale(doc)
        stale += reason is not None
        console.print(f"{f}: valid {doc['schema']} ({doc['status']}, "
                      f"{len(doc['metrics']['step'])} rows)"
                      + (f"; stale: {reason}" if reason else ""), highlight=False, markup=False,
                      soft_wrap=True)
    if stale:
        raise typer.Exit(1)


@trace_app.command("export")
def trace_export(
    paths: Annotated[list[Path], typer.Argument(help="Trace files and/or folders (every trace "
                                                "under a folder; other JSON is skipped).")],
    out: Annotated[Path, Opt("--out", help="Output file: .parquet/.pq for parquet (needs "
                             "pyarrow), else CSV.")] = Path("trace.csv"),
):
    """Export traces as one long-form table (step, t, metric, value, optimizer, lr, ..., run_id),
    the rows of ``sgdreg.load_traces``.

    Examples:

      sgdreg trace export runs/compare-x --out runs.csv

      sgdreg trace export runs/sweep-y/traces a.json --out runs.parquet
    """
    import pandas as pd

    from sgdreg.trace import PARQUET_SUFFIXES, find_traces, parquet_engine, to_dataframe, write_table

    check_writable(out, "--out", "file")
    if out.suffix.lower() in PARQUET_SUFFIXES and parquet_engine() is None:
        raise UsageProblem(f"--out {out.name}: parquet needs pyarrow or fastparquet "
                           "(pip install 'sgdreg[parquet]'); or give a .csv file")
    found = find_traces(paths)
    df = pd.concat([to_dataframe(doc) for _, doc in found], ignore_index=True)
    write_table(df, out)
    console.print(f"{len(found)} traces, {len(df)} rows → {out}", highlight=False)


@app.command()
def datasets(json: JsonOpt = False):
    """List the built-in datasets (all offline) and the ones read from --data-dir."""
    from sgdreg.datasets import DATASETS

    print_table("datasets", ["name", "description"], [[k, v] for k, v in DATASETS.items()])
    if json:
        emit_json(DATASETS)


@app.command()
def figures(
    data: Annotated[Path, Opt("--data", help="Folder of stored experiment results.")]
    = Path("figures/data"),
    out: Annotated[Path, Opt("--out", help="Where the PNG/SVG figures go.")] = Path("figures"),
    only: Annotated[str | None, Opt("--only", help="Comma list of figure names.")] = None,
):
    """Regenerate the figure gallery from stored results (no re-training).

    Example:

      sgdreg figures                      # every figure in figures/ from figures/data/

      sgdreg figures --only eos,randomize
    """
    from sgdreg.figures import GALLERY, render

    names = parse_list(only, str, "--only", sorted(GALLERY)) if only else sorted(GALLERY)
    if not data.is_dir():
        raise UsageProblem(f"--data {data}: no such directory")
    check_writable(out, "--out", "dir")
    missing = [n for n in names if not (data / n).is_dir()]
    if missing:
        raise UsageProblem(f"no stored results for {', '.join(missing)} in {data}; run the "
                           "experiments in experiments/ first")
    from sgdreg import locking

    if out.is_dir():
        locking.check_unlocked(out)
    locking.hold(out, "sgdreg figures")
    for name in names:
        files = render(name, data, out)
        console.print(f"{name}: " + ", ".join(str(f) for f in files))
