"""The generalization experiments: randomize, expressivity, kernel, double-descent.

Each command builds a config, calls one ``sgdreg.experiments.<paper>`` function, stores its results as
``<out>/<experiment>.json``, renders the figure from them (``sgdreg.plotting.<paper>``) and
prints a table. Everything is validated before the output directory is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdreg.config import OPTIMIZERS, RunConfig, validate

from .app import (
    UsageProblem,
    app,
    as_options,
    check_finite,
    check_int,
    console,
    emit_json,
    make_output,
    output_dir,
    parse_list,
    print_table,
)

Opt = typer.Option
OutOpt = Annotated[Path | None, Opt("--out", help="Output directory (default "
                                    "sgdreg-runs/<cmd>-<time>).")]
JsonOpt = Annotated[bool, Opt("--json", help="Print the stored results on stdout.")]
DatasetOpt = Annotated[str, Opt("--dataset", help="Dataset name (see `sgdreg datasets`).")]
DataDirOpt = Annotated[str | None, Opt("--data-dir", help="Folder with MNIST/CIFAR-10 files.")]
PreOpt = Annotated[str | None, Opt("--preprocess", help="standardize | unit | none "
                                   "(default: the dataset's).")]
NTrainOpt = Annotated[int | None, Opt("--n-train", help="Use the first n training examples.")]
NTestOpt = Annotated[int | None, Opt("--n-test", help="Use the first n test examples.")]
SeedsOpt = Annotated[str, Opt("--seeds", help="Comma list of seeds (bands in the figure).")]
OverwriteOpt = Annotated[bool, Opt("--overwrite", help="Write into a non-empty --out: replace "
                                   "this command's files and remove the traces there.")]
MAX_STEPS = 2**31 - 1  # the engine's int32 step counter
MAX_SEED = 2**32 - 1


def _seeds(text: str) -> list[int]:
    seeds = parse_list(text, int, "--seeds")
    for v in seeds:
        check_int("--seeds", v, 0, MAX_SEED)
    return seeds


def _data_options(dataset: str, preprocess: str | None, n_train: int | None = None,
                  n_test: int | None = None) -> None:
    """The data options, checked before anything is loaded."""
    from sgdreg.data import PREPROCESS
    from sgdreg.datasets import DATASETS

    if dataset not in DATASETS:
        raise UsageProblem(f"--dataset: unknown value {dataset!r}; allowed: {', '.join(DATASETS)}")
    if preprocess is not None and preprocess not in PREPROCESS:
        raise UsageProblem(f"--preprocess: unknown value {preprocess!r}; allowed: "
                           f"{', '.join(PREPROCESS)}")
    check_int("--n-train", n_train, 1)
    check_int("--n-test", n_test, 1)


def _prepare(dest: Path, overwrite: bool) -> None:
    """After every check: create and lock ``dest``; with ``--overwrite`` remove the traces an
    earlier run left there (``make_output``)."""
    make_output(dest, overwrite)


def _finish(dest: Path, name: str, render, config: dict, results: dict, wall: float,
            json: bool, figure: str | None = None) -> Path:
    from sgdreg.results import save_results

    save_results(dest, name, config, results, wall)
    fig = render(dest, dest / f"{figure or name}.png")[0]
    console.print(f"{name}.json and {fig.name} (+ .svg) in {dest} ({wall:.1f} s)")
    if json:
        emit_json({"out": str(dest), "figure": str(fig), "wall_time_s": wall, **results})
    return fig


def _dataset(dataset, data_dir, preprocess, n_train, n_test, seed=0):
    from sgdreg.datasets import open_dataset

    return open_dataset(dataset, data_dir=data_dir, preprocess=preprocess, n_train=n_train,
                        n_test=n_test, seed=seed)


def _optimizer(optimizer: str) -> str:
    if optimizer not in OPTIMIZERS:
        raise UsageProblem(f"--optimizer: unknown value {optimizer!r}; allowed: "
                           f"{', '.join(OPTIMIZERS)}")
    return optimizer


@app.command()
def randomize(
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    preprocess: PreOpt = None,
    n_train: NTrainOpt = None,
    width: Annotated[int, Opt("--width", help="MLP hidden width.")] = 128,
    depth: Annotated[int, Opt("--depth", help="Hidden layers.")] = 1,
    model: Annotated[str, Opt("--model", help="mlp | cnn.")] = "mlp",
    optimizer: Annotated[str, Opt("--optimizer", help="Zhang et al.: momentum (SGD, β=0.9).")]
    = "momentum",
    lr: Annotated[float, Opt("--lr", help="Learning rate h (no decay).")] = 0.05,
    momentum: Annotated[float, Opt("--momentum")] = 0.9,
    batch_size: Annotated[int, Opt("--batch-size")] = 32,
    epochs: Annotated[int, Opt("--epochs", help="Budget in epochs (same for every variant); "
                               "metrics are logged once per epoch.")] = 100,
    corruptions: Annotated[str, Opt("--corruptions", help="Label-corruption probabilities p "
                                    "(0 = true labels, 1 = random labels).")]
    = "0,0.2,0.4,0.6,0.8,1",
    inputs: Annotated[str, Opt("--inputs", help="Input randomizations: shuffled-pixels, "
                               "random-pixels, gaussian; 'none' for labels only.")]
    = "shuffled-pixels,random-pixels,gaussian",
    seeds: SeedsOpt = "0",
    dtype: Annotated[str, Opt("--dtype")] = "float32",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
):
    """Randomization tests (Zhang et al. 2017, Fig. 1): the same net and hyper-parameters on true
    labels, corrupted labels, shuffled/random pixels and Gaussian inputs.

    Writes randomization.json, randomization.png/.svg and one trace per run (traces/).

    Examples:

      sgdreg randomize

      sgdreg randomize --dataset mnist5k --width 512 --seeds 0,1,2 --epochs 60
    """
    from sgdreg.experiments.zhang import randomization_test, randomization_variants
    from sgdreg.plotting.zhang import render_randomization
    from sgdreg.results import timed
    from sgdreg.training import load_data

    ps = parse_list(corruptions, float, "--corruptions")
    kinds = [] if inputs.strip() == "none" else parse_list(inputs, str, "--inputs")
    seed_list = _seeds(seeds)
    check_int("--epochs", epochs, 1, MAX_STEPS)
    with as_options(corruptions="--corruptions", inputs="--inputs"):
        randomization_variants(ps, kinds)
    cfg = RunConfig(dataset=dataset, data_dir=data_dir, preprocess=preprocess, n_train=n_train,
                    model=model, width=width, depth=depth, optimizer=_optimizer(optimizer), lr=lr,
                    momentum=momentum, batch_size=batch_size, dtype=dtype)
    validate(cfg)
    dest = output_dir(out, "randomize", overwrite=overwrite)
    n = load_data(cfg).n_train
    validate(cfg, n)
    m = cfg.steps_per_epoch(n)
    if epochs * m > MAX_STEPS:
        raise UsageProblem(f"--epochs {epochs} means {epochs * m} steps; at most {MAX_STEPS}")
    cfg = cfg.replace(steps=epochs * m, log_every=m)
    _prepare(dest, overwrite)
    console.print(f"[bold]randomize[/] {dataset} (n={n}), {len(ps) + len(kinds)} variants × "
                  f"{len(seed_list)} seed(s), {epochs} epochs → {dest}")
    res, wall = timed(randomization_test, cfg, ps, kinds, seed_list, trace_dir=dest / "traces",
                      progress=lambda s: console.print("  " + s, highlight=False))
    print_table(f"{dataset}: fitting time and test error (mean over seeds)",
                ["variant", "all fit", "steps to fit", "relative", "test error"],
                [[r["variant"], r["all_fit"], r["steps_to_fit"], r["relative_time"],
                  r["test_error"]] for r in res["table"]])
    _finish(dest, "randomization", render_randomization, {**cfg.to_dict(), "epochs": epochs,
            "corruptions": ps, "inputs": kinds, "seeds": seed_list}, res, wall, json)


@app.command()
def expressivity(
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    preprocess: PreOpt = None,
    n: Annotated[int, Opt("--n", help="Points to fit (random labels).")] = 200,
    multiples: Annotated[str, Opt("--multiples", help="Trained nets with m·(2n+d) parameters, "
                                  "comma list of m.")] = "1,4,16",
    optimizer: Annotated[str, Opt("--optimizer")] = "adam",
    lr: Annotated[float, Opt("--lr")] = 0.01,
    steps: Annotated[int, Opt("--steps", help="Training steps of each trained net.")] = 3000,
    batch_size: Annotated[int | None, Opt("--batch-size", help="Minibatch size (default n: "
                                          "full batch).")] = None,
    seed: Annotated[int, Opt("--seed", help="Seeds the labels, a and θ0.")] = 0,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
):
    """Finite-sample expressivity (Zhang et al. 2017, Theorem 1): the 2n+d-weight construction
    fits n random labels exactly; trained two-layer ReLU nets of matched size for comparison.

    Writes expressivity.json and expressivity.png/.svg.

    Examples:

      sgdreg expressivity --n 200

      sgdreg expressivity --dataset mnist5k --n 1000 --multiples 1,10 --steps 5000
    """
    from sgdreg.experiments.zhang import expressivity_test
    from sgdreg.plotting.zhang import render_expressivity
    from sgdreg.results import timed

    mults = parse_list(multiples, float, "--multiples")
    for v in mults:
        check_finite("--multiples", v, 0)
    check_int("--n", n, 1)
    check_int("--steps", steps, 1, MAX_STEPS)
    check_int("--batch-size", batch_size, 1)
    if batch_size is not None and batch_size > n:
        raise UsageProblem(f"--batch-size {batch_size} exceeds the --n {n} points")
    check_int("--seed", seed, 0, MAX_SEED)
    _data_options(dataset, preprocess)
    cfg = RunConfig(dataset=dataset, optimizer=_optimizer(optimizer), lr=lr, steps=steps,
                    batch_size=batch_size or n, log_every=max(1, steps // 100))
    validate(cfg, dataset_given=True)
    dest = output_dir(out, "expressivity", overwrite=overwrite)
    ds = _dataset(dataset, data_dir, preprocess, None, None)
    if not ds.num_classes:
        raise UsageProblem(f"--dataset {dataset}: expressivity needs a classification dataset "
                           "(random class labels)")
    if n > ds.n_train:
        raise UsageProblem(f"--n must be in 1..{ds.n_train} for {ds.name}, got {n}")
    _prepare(dest, overwrite)
    res, wall = timed(expressivity_test, ds, n, cfg, mults, seed=seed,
                      progress=lambda s: console.print("  " + s, highlight=False))
    c = res["construction"]
    print_table(f"{dataset}: n = {n} random labels, d = {c['d']}",
                ["model", "parameters", "train acc", "residual"],
                [["Theorem 1 construction", c["num_params"], c["train_acc"], c["residual"]]]
                + [[f"trained, width {t['width']}", t["num_params"], t["best_train_acc"], None]
                   for t in res["trained"]])
    _finish(dest, "expressivity", render_expressivity, {**cfg.to_dict(), "n": n,
            "multiples": mults, "seed": seed}, res, wall, json)


@app.command()
def kernel(
    kernel: Annotated[str, Opt("--kernel", help="linear | rbf.")] = "rbf",
    bandwidth: Annotated[float | None, Opt("--bandwidth", help="RBF length scale "
                                           "(default: median pairwise distance).")] = None,
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    preprocess: PreOpt = None,
    n_train: NTrainOpt = None,
    n_test: NTestOpt = None,
    gd_n: Annotated[int, Opt("--gd-n", help="GD-from-zero check on the first n ≤ d points "
                             "(0 = skip).")] = 30,
    gd_steps: Annotated[int, Opt("--gd-steps", help="GD steps (lr = 1/λ_max).")] = 5000,
    table: Annotated[bool, Opt("--table/--no-table", help="RBF norm and test error across "
                               "kernels (preprocessing × bandwidth) and, at each fixed kernel, "
                               "true against random labels (seeds 0-4).")] = True,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
):
    """Minimum-norm interpolation (Zhang et al. 2017, §5): solve Kα = y, report test error and
    norm; GD from zero reaches the min-norm solution. Across kernels (preprocessing ×
    bandwidth: different function spaces) the norm varies far more than the test error; at a
    fixed kernel random labels need a larger norm than the true ones.

    Writes kernel.json, kernel.png/.svg and traces/gd_min_norm.json.

    Examples:

      sgdreg kernel --kernel rbf

      sgdreg kernel --dataset mnist5k --preprocess unit --bandwidth 5

      sgdreg kernel --kernel linear --n-train 50
    """
    from sgdreg.experiments.kernel import min_norm_kernel
    from sgdreg.kernels import KERNELS
    from sgdreg.plotting.kernel import render_kernel
    from sgdreg.results import timed

    if kernel not in KERNELS:
        raise UsageProblem(f"--kernel: unknown value {kernel!r}; allowed: {', '.join(KERNELS)}")
    check_finite("--bandwidth", bandwidth, 0)
    check_int("--gd-n", gd_n, 0)
    check_int("--gd-steps", gd_steps, 1, MAX_STEPS)
    _data_options(dataset, preprocess, n_train, n_test)
    dest = output_dir(out, "kernel", overwrite=overwrite)
    ds = _dataset(dataset, data_dir, preprocess, n_train, n_test)
    raw = _dataset(dataset, data_dir, "none", n_train, n_test) if table else None
    names = dict(kernel="--kernel", bandwidth="--bandwidth", gd_n="--gd-n", gd_steps="--gd-steps",
                 n_train="--n-train")
    with as_options(**names):  # the data-dependent checks (n ≤ d, gd_n) run before computing
        _check_kernel(ds, kernel, bandwidth, gd_n or None, gd_steps)
    _prepare(dest, overwrite)
    res, wall = timed(min_norm_kernel, ds, kernel, bandwidth, gd_n or None, gd_steps, raw,
                      trace_dir=dest / "traces",
                      progress=lambda s: console.print("  " + s, highlight=False))
    i = res["interpolation"]
    rows = [[f"{kernel} interpolant (n={i['n']})", i["train_error"], i["test_error"],
             i["rkhs_norm"]]]
    if "gd" in res:
        g = res["gd"]
        rows.append([f"GD from 0 (n={g['n']}): ‖W−W*‖/‖W*‖ = {g['final_dist']:.2e}",
                     g.get("train_error_gd"), g.get("test_error_gd"), g["norm_gd"]])
    rows += [[f"RBF, {r['preprocessing']}, σ×{r['bandwidth_scale']:g}", r["train_error"],
              r["test_error"], r["rkhs_norm"]] for r in res.get("preprocessing_table", [])]
    print_table(f"{dataset}: minimum-norm interpolation", ["solution", "train error",
                "test error", "norm"], rows)
    if res.get("fixed_kernel"):
        print_table("at a fixed kernel: true against random labels", [
            "kernel", "true-label norm", "random / true norm (min–max)", "random-label test error",
            "seeds"], [[f"RBF, {r['preprocessing']}, σ×{r['bandwidth_scale']:g}",
                        r["rkhs_norm_true"], f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}",
                        f"{min(r['test_error_random']):.3f}–{max(r['test_error_random']):.3f}",
                        ", ".join(map(str, r["seeds"]))] for r in res["fixed_kernel"]])
    _finish(dest, "kernel", render_kernel, {"kernel": kernel, "bandwidth": bandwidth,
            "dataset": dataset, "preprocess": preprocess, "n_train": n_train, "n_test": n_test,
            "gd_n": gd_n, "gd_steps": gd_steps, "table": table}, res, wall, json)


def _check_kernel(ds, kernel, bandwidth, gd_n, gd_steps) -> None:
    import numpy as np

    from sgdreg.errors import ConfigError

    d = int(np.prod(ds.input_shape))
    if kernel == "linear" and ds.n_train > d:
        raise ConfigError(f"kernel linear cannot interpolate n = {ds.n_train} points in d = {d} "
                          "dimensions (n > d); use --kernel rbf or --n-train ≤ d")
    if gd_n is not None and not 1 <= gd_n <= min(d, ds.n_train):
        raise ConfigError(f"gd_n must be in 1..{min(d, ds.n_train)} (GD reaches the min-norm "
                          f"interpolant only when n ≤ d = {d}), got {gd_n}")


DD_KINDS = ("rff", "width", "epoch", "samples")


@app.command("double-descent")
def double_descent(
    kind: Annotated[str, Opt("--kind", help="rff (model-wise, random Fourier features) | "
                             "width (MLP widths) | epoch | samples (RFF, fixed N).")] = "rff",
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    preprocess: Annotated[str | None, Opt("--preprocess", help="Default: unit for rff/samples "
                                          "(pixels in [0,1]), the dataset's for width/epoch.")]
    = None,
    n_train: Annotated[int | None, Opt("--n-train", help="Training examples (default 300 "
                                       "for rff, 500 for width/epoch, all for samples).")] = None,
    n_test: NTestOpt = None,
    features: Annotated[str | None, Opt("--features", help="rff: comma list of N (default "
                                        "0.1n…10n); samples: the fixed N (default 300).")]
    = None,
    sigma: Annotated[float | None, Opt("--sigma", help="RFF bandwidth σ (default ½ median "
                                       "pairwise distance: 5 on MNIST in [0,1]).")] = None,
    seeds: SeedsOpt = "0,1,2",
    widths: Annotated[str, Opt("--widths", help="width: comma list of hidden widths.")]
    = "4,8,16,32,64,128,256,512",
    noise: Annotated[str, Opt("--noise", help="Label noise (uniform incorrect class), comma "
                              "list for width, one value for epoch.")] = "0,0.1,0.2",
    width: Annotated[int, Opt("--width", help="epoch: the model's width.")] = 512,
    optimizer: Annotated[str, Opt("--optimizer")] = "adam",
    lr: Annotated[float, Opt("--lr")] = 0.001,
    batch_size: Annotated[int, Opt("--batch-size")] = 32,
    epochs: Annotated[int, Opt("--epochs", help="width/epoch: training budget in epochs.")]
    = 200,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
):
    """Double descent: random Fourier features (Belkin et al. 2019) and deep double descent
    model-, epoch- and sample-wise (Nakkiran et al. 2019).

    Writes double_descent_<kind>.json and double_descent.png/.svg.

    Examples:

      sgdreg double-descent --kind rff

      sgdreg double-descent --kind samples --features 300

      sgdreg double-descent --kind width --widths 8,32,128,512 --noise 0,0.2 --seeds 0

      sgdreg double-descent --kind epoch --noise 0.2 --epochs 400
    """
    from sgdreg.experiments import double_descent as ex
    from sgdreg.plotting.double_descent import render_double_descent
    from sgdreg.results import timed

    if kind not in DD_KINDS:
        raise UsageProblem(f"--kind: unknown value {kind!r}; allowed: {', '.join(DD_KINDS)}")
    seed_list = _seeds(seeds)
    check_int("--epochs", epochs, 1, MAX_STEPS)
    check_int("--n-train", n_train, 1)
    rff = kind in ("rff", "samples")
    n_train = n_train or {"rff": 300, "samples": None}.get(kind, 500)
    grid = parse_list(features, int, "--features") if features else None
    for v in grid or ():
        check_int("--features", v, 1)
    noises = parse_list(noise, float, "--noise")
    for v in noises:
        if not 0 <= v <= 1:
            raise UsageProblem(f"--noise must be in [0, 1], got {v:g}")
    ws = parse_list(widths, int, "--widths")
    for v in ws:
        check_int("--widths", v, 1)
    check_finite("--sigma", sigma, 0)
    if kind == "samples" and grid and len(grid) != 1:
        raise UsageProblem("--features: samples takes one fixed N, e.g. --features 300")
    if kind == "epoch" and len(noises) != 1:
        raise UsageProblem("--noise: epoch takes one value, e.g. --noise 0.2")
    _data_options(dataset, preprocess, None, n_test)
    if not rff:
        probe = RunConfig(dataset=dataset, data_dir=data_dir, preprocess=preprocess,
                          n_train=n_train, n_test=n_test, optimizer=_optimizer(optimizer), lr=lr,
                          batch_size=batch_size, width=width, steps=1, log_every=1)
        validate(probe)
        m = max(probe.steps_per_epoch(n_train), 1)
        if epochs * m > MAX_STEPS:
            raise UsageProblem(f"--epochs {epochs} means {epochs * m} steps; at most {MAX_STEPS}")
    dest = output_dir(out, "double-descent", overwrite=overwrite)
    _prepare(dest, overwrite)
    say = lambda s: console.print("  " + s, highlight=False)
    if rff:
        ds = _dataset(dataset, data_dir, preprocess or "unit", n_train, n_test)
        config = {"kind": kind, "dataset": dataset, "preprocess": preprocess or "unit",
                  "n_train": ds.n_train, "features": grid, "sigma": sigma, "seeds": seed_list}
        if kind == "rff":
            res, wall = timed(ex.rff_model_wise, ds, grid, seed_list, sigma)
        else:
            res, wall = timed(ex.rff_sample_wise, ds, grid[0] if grid else 300, None,
                                 seed_list, sigma)
    else:
        cfg = RunConfig(dataset=dataset, data_dir=data_dir, preprocess=preprocess,
                        n_train=n_train, n_test=n_test, optimizer=_optimizer(optimizer), lr=lr,
                        batch_size=batch_size, width=width, steps=1, log_every=1)
        m = max(cfg.steps_per_epoch(n_train), 1)
        cfg = cfg.replace(steps=epochs * m, log_every=m if kind == "epoch" else epochs * m)
        config = {**cfg.to_dict(), "kind": kind, "widths": ws, "noise": noises,
                  "seeds": seed_list, "epochs": epochs}
        if kind == "width":
            res, wall = timed(ex.deep_model_wise, cfg, ws, noises, seed_list,
                                 trace_dir=dest / "traces", progress=say)
        else:
            res, wall = timed(ex.deep_epoch_wise, cfg.replace(seed=seed_list[0]), noises[0],
                                 trace_path=dest / "traces" / "epoch_wise.json")
    _dd_table(kind, res)
    _finish(dest, f"double_descent_{kind}", render_double_descent, config, res, wall, json,
            figure="double_descent")


def _dd_table(kind: str, res: dict) -> None:
    if kind in ("rff", "samples"):
        key = "N" if kind == "rff" else "n"
        print_table(f"double descent ({kind}), mean over seeds", [key, "train error",
                    "test error", "‖a‖"], [[r[key], r["train_error"], r["test_error"], r["norm"]]
                                           for r in res["mean"]])
        ratio = res.get("ratio")
        if ratio and ratio["ratio"] is not None:
            b = ratio["bootstrap"]
            interval = (f"; 95% test-image bootstrap [{b['low']:.3g}, "
                        f"{'∞' if b['high'] is None else format(b['high'], '.3g')}]" if b else "")
            console.print(f"  err(N = n)/err(N = {ratio['far']}n) = {ratio['ratio']:.3g} "
                          f"(ratio of seed means; per seed {ratio['ratio_min']:.3g}–"
                          f"{ratio['ratio_max']:.3g}{interval})", highlight=False)
    elif kind == "width":
        print_table("model-wise double descent", ["width", "params", "noise", "seed",
                    "train error", "test error"],
                    [[r["width"], r["num_params"], r["noise"], r["seed"], r["train_error"],
                      r["test_error"]] for r in res["rows"]])
    else:
        e, te = res["epoch"], res["test_error"]
        i = min(range(len(te)), key=lambda j: te[j])
        print_table("epoch-wise double descent", ["", "epoch", "test error"],
                    [["best", e[i], te[i]], ["final", e[-1], te[-1]]])
