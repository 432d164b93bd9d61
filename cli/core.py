"""Core commands: compare, train, trace (show/validate/export), datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdreg.config import OPTIMIZERS, RunConfig, validate

from .app import UsageProblem, app, console, emit_json, out_dir, parse_list, print_table, progress_bar

Opt = typer.Option

# Shared run options (same names and defaults in compare/train).
DatasetOpt = Annotated[str, Opt("--dataset", help="Dataset name (see `sgdreg datasets`).")]
ModelOpt = Annotated[str, Opt("--model", help="mlp | cnn | linear | random-features.")]
LossOpt = Annotated[str, Opt("--loss", help="ce (cross-entropy) or mse (½‖f−y‖²).")]
StepsOpt = Annotated[int, Opt("--steps", help="Parameter updates per run (flows: t = steps·lr).")]
EpochsOpt = Annotated[float | None, Opt("--epochs", help="Instead of --steps: passes over the "
                                        "data (GD: 1 step each; SGD: n/B steps each).")]
BatchOpt = Annotated[int, Opt("--batch-size", help="Minibatch size B for sgd/momentum/nesterov/adam.")]
SeedOpt = Annotated[int, Opt("--seed", help="Seeds θ0, data order and probes.")]
LogOpt = Annotated[int, Opt("--log-every", help="Log metrics every k steps (one compiled chunk).")]
OutOpt = Annotated[Path | None, Opt("--out", help="Output directory (default sgdreg-runs/<cmd>-<time>).")]
JsonOpt = Annotated[bool, Opt("--json", help="Print a machine-readable summary on stdout.")]
WidthOpt = Annotated[int, Opt("--width", help="Hidden units (CNN: channels).")]
DepthOpt = Annotated[int, Opt("--depth", help="Hidden layers.")]
ActivationOpt = Annotated[str, Opt("--activation", help="relu, tanh, gelu, softplus, ...")]
MomentumOpt = Annotated[float, Opt("--momentum", help="β for momentum/nesterov, b1 for adam.")]
DataDirOpt = Annotated[str | None, Opt("--data-dir", help="Folder with MNIST/CIFAR-10 files.")]
NTrainOpt = Annotated[int | None, Opt("--n-train", help="Use the first n training examples.")]
DtypeOpt = Annotated[str, Opt("--dtype", help="float32 or float64.")]
HessEveryOpt = Annotated[int, Opt("--hessian-every", help="Curvature probes every k steps "
                                  "(0 = off; a multiple of --log-every).")]
ProbesOpt = Annotated[int, Opt("--probes", help="Hutchinson probes K for tr H ± stderr.")]
LanczosOpt = Annotated[int, Opt("--lanczos-steps", help="Lanczos steps M for λ_max, λ_min.")]
TopKOpt = Annotated[int, Opt("--top-k", help="Number of top eigenvalues to record.")]
HessNOpt = Annotated[int | None, Opt("--hessian-n", help="Curvature on the first n training "
                                     "examples (default: all).")]
SlqOpt = Annotated[bool, Opt("--slq", help="Also record the SLQ spectral density (raw nodes and "
                             "weights).")]


def make_configs(optimizers: str, lr: str, **common) -> list[RunConfig]:
    """The grid optimizers × learning rates, validated before anything runs."""
    opts = parse_list(optimizers, str, "--optimizers", OPTIMIZERS)
    lrs = parse_list(lr, float, "--lr")
    for v in lrs:
        if not v > 0:
            raise UsageProblem(f"--lr must be > 0, got {v:g}")
    cfgs = [RunConfig(optimizer=o, lr=h, **common) for o in opts for h in lrs]
    for c in cfgs:
        validate(c)
    return cfgs


def with_epochs(cfg: RunConfig, epochs: float | None, n: int) -> RunConfig:
    if epochs is None:
        return cfg
    if epochs <= 0:
        raise UsageProblem(f"--epochs must be > 0, got {epochs:g}")
    return cfg.replace(steps=max(1, round(epochs * cfg.steps_per_epoch(n))))


def run_grid(cfgs: list[RunConfig], epochs: float | None, out: Path, label: str):
    """Load data once, validate every run against it, then train each run into ``out``."""
    from sgdreg.training import load_data, train

    ds = load_data(cfgs[0])
    cfgs = [with_epochs(c, epochs, ds.n_train) for c in cfgs]
    for c in cfgs:
        validate(c, ds.n_train)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{label}[/] on {ds.name} (n={ds.n_train}, test {ds.n_test}) → {out}")
    prog, callback_for = progress_bar(label, len(cfgs))
    results = []
    with prog:
        for c in cfgs:
            from sgdreg.training import run_id

            rid = run_id(c)
            res = train(c, ds, trace_path=out / f"{rid}.json", progress=callback_for(rid, c.steps))
            if not console.is_terminal:
                console.print(f"  {rid}: {res.trace['status']} "
                              f"({res.trace['wall_time_s']:.1f} s)")
            results.append(res)
    return ds, results


TABLE = (("train_loss", "train L"), ("test_loss", "test L"), ("train_acc", "train acc"),
         ("test_acc", "test acc"), ("gen_gap", "gen gap"), ("weight_norm", "‖θ‖"),
         ("dist_from_init", "‖θ−θ0‖"), ("grad_norm_sq", "‖∇L‖²"), ("igr_gd", "igr_gd"),
         ("igr_sgd_var", "igr_sgd_var"), ("steps_to_fit", "steps→100%"))


def summary_rows(results) -> tuple[list[str], list[list]]:
    """One row per metric, one column per run (fits a terminal for several runs)."""
    cols = ["metric"] + [r.trace["run_id"] for r in results]
    rows = [["status"] + [r.trace["status"] for r in results]]
    for key, label in TABLE:
        vals = [r.trace["summary"].get(key) for r in results]
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
    steps: StepsOpt = 1000,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = 32,
    seed: SeedOpt = 0,
    dataset: DatasetOpt = "digits",
    model: ModelOpt = "mlp",
    loss: LossOpt = "ce",
    width: WidthOpt = 128,
    depth: DepthOpt = 1,
    activation: ActivationOpt = "relu",
    momentum: MomentumOpt = 0.9,
    log_every: LogOpt = 10,
    data_dir: DataDirOpt = None,
    n_train: NTrainOpt = None,
    dtype: DtypeOpt = "float32",
    hessian_every: HessEveryOpt = 0,
    probes: ProbesOpt = 20,
    lanczos_steps: LanczosOpt = 20,
    top_k: TopKOpt = 3,
    hessian_n: HessNOpt = None,
    slq: SlqOpt = False,
    out: OutOpt = None,
    json: JsonOpt = False,
):
    """Train the same model from the identical θ0 under several optimizers (and lrs).

    Writes one JSON trace per run, compare.png and summary.json into the output directory.

    Examples:

      sgdreg compare --optimizers gd,sgd --lr 0.1

      sgdreg compare --optimizers gd,sgd,flow,momentum,adam --lr 0.05,0.1 --steps 500

      sgdreg compare --optimizers gd,sgd --hessian-every 100 --probes 50 --slq
    """
    cfgs = make_configs(optimizers, lr, steps=steps, batch_size=batch_size, seed=seed,
                        dataset=dataset, model=model, loss=loss, width=width, depth=depth,
                        activation=activation, momentum=momentum, log_every=log_every,
                        data_dir=data_dir, n_train=n_train, dtype=dtype,
                        hessian_every=hessian_every, probes=probes, lanczos_steps=lanczos_steps,
                        top_k=top_k, hessian_n=hessian_n, slq=slq)
    dest = out_dir(out, "compare")
    ds, results = run_grid(cfgs, epochs, dest, "compare")
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
    dataset: DatasetOpt = "digits",
    model: ModelOpt = "mlp",
    loss: LossOpt = "ce",
    width: WidthOpt = 128,
    depth: DepthOpt = 1,
    activation: ActivationOpt = "relu",
    log_every: LogOpt = 10,
    data_dir: DataDirOpt = None,
    n_train: NTrainOpt = None,
    dtype: DtypeOpt = "float32",
    save_checkpoint: Annotated[bool, Opt("--save-checkpoint", help="Also save the final model "
                                         "(<run>.eqx) for `sgdreg hessian`.")] = False,
    hessian_every: HessEveryOpt = 0,
    probes: ProbesOpt = 20,
    lanczos_steps: LanczosOpt = 20,
    top_k: TopKOpt = 3,
    hessian_n: HessNOpt = None,
    slq: SlqOpt = False,
    out: OutOpt = None,
    json: JsonOpt = False,
):
    """Train one run and write its trace.

    Examples:

      sgdreg train --optimizer sgd --lr 0.05 --batch-size 64 --epochs 20

      sgdreg train --optimizer gd --randomization random-labels --steps 3000

      sgdreg train --optimizer gd --lr 0.05 --hessian-every 50 --save-checkpoint
    """
    if optimizer not in OPTIMIZERS:
        raise UsageProblem(f"--optimizer: unknown value {optimizer!r}; allowed: "
                           f"{', '.join(OPTIMIZERS)}")
    cfg = RunConfig(optimizer=optimizer, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                    dataset=dataset, model=model, loss=loss, width=width, depth=depth,
                    activation=activation, momentum=momentum, egr=egr,
                    randomization=randomization, corruption=corruption, log_every=log_every,
                    data_dir=data_dir, n_train=n_train, dtype=dtype,
                    hessian_every=hessian_every, probes=probes, lanczos_steps=lanczos_steps,
                    top_k=top_k, hessian_n=hessian_n, slq=slq)
    validate(cfg)
    dest = out_dir(out, "train")
    ds, results = run_grid([cfg], epochs, dest, "train")
    if save_checkpoint:
        from sgdreg.checkpoint import save_model

        res = results[0]
        path = dest / f"{res.trace['run_id']}.eqx"
        save_model(path, res.model, res.setup.cfg, ds)
        console.print(f"checkpoint → {path}")
    print_table(f"{ds.name}: final values", *summary_rows(results))
    if json:
        emit_json(summary_json(dest, results, None))


trace_app = typer.Typer(help="Show, validate or export JSON traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")


@trace_app.command("show")
def trace_show(file: Path, json: JsonOpt = False):
    """Print a trace's run description, status and final values."""
    from sgdreg.trace import load_trace

    doc = load_trace(file)
    cfg = doc["config"]
    console.print(f"[bold]{doc['run_id']}[/]  status={doc['status']}"
                  + (f" ({doc['status_detail']})" if doc.get("status_detail") else ""))
    console.print(f"dataset {doc.get('dataset', {}).get('name')}, model {cfg.get('model')}, "
                  f"optimizer {cfg.get('optimizer')}, lr {cfg.get('lr')}, seed {doc['seed']}, "
                  f"{len(doc['metrics']['step'])} rows, device {doc['device']}")
    s = doc.get("summary", {})
    print_table("final values", ["metric", "value"], [[k, v] for k, v in s.items()])
    if json:
        emit_json({k: doc[k] for k in doc if k != "metrics"})


@trace_app.command("validate")
def trace_validate(files: list[Path]):
    """Check traces against the schema; exit 2 naming the first problem."""
    from sgdreg.trace import load_trace

    for f in files:
        doc = load_trace(f)
        console.print(f"{f}: valid {doc['schema']} ({doc['status']}, "
                      f"{len(doc['metrics']['step'])} rows)")


@trace_app.command("export")
def trace_export(
    files: list[Path],
    out: Annotated[Path, Opt("--out", help="CSV file for the long-form table.")] = Path("trace.csv"),
):
    """Export traces as one long-form CSV (step, t, metric, value, optimizer, lr, ...)."""
    import pandas as pd

    from sgdreg.trace import atomic_write_text, to_dataframe

    df = pd.concat([to_dataframe(f) for f in files], ignore_index=True)
    atomic_write_text(out, df.to_csv(index=False))
    console.print(f"{len(df)} rows → {out}")


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
    missing = [n for n in names if not (data / n).is_dir()]
    if missing:
        raise UsageProblem(f"no stored results for {', '.join(missing)} in {data}; run the "
                           "experiments in experiments/ first")
    for name in names:
        files = render(name, data, out)
        console.print(f"{name}: " + ", ".join(str(f) for f in files))
