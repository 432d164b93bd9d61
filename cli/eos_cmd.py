"""``sgdreg eos``: the edge of stability (library: ``sgdreg.experiments.eos``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, as_options, console, emit_json, output_dir, parse_list, print_table

Opt = typer.Option


@app.command()
def eos(
    lr: Annotated[str, Opt("--lr", help="Step sizes h, comma list.")] = "0.1,0.2,0.4",
    optimizer: Annotated[str, Opt("--optimizer", help="gd | momentum | nesterov (full batch).")]
    = "gd",
    momentum: Annotated[float, Opt("--momentum", help="β for momentum/nesterov.")] = 0.9,
    steps: Annotated[int, Opt("--steps", help="Steps of each run.")] = 3000,
    sharpness_every: Annotated[int, Opt("--sharpness-every", help="λ_max every k steps (a "
                                        "multiple of --log-every).")] = 20,
    log_every: Annotated[int, Opt("--log-every", help="Loss logged every k steps.")] = 5,
    lanczos_steps: Annotated[int, Opt("--lanczos-steps", help="Lanczos steps per λ_max "
                                      "(warm-started).")] = 20,
    settle_fraction: Annotated[float | None, Opt("--settle-fraction", help="Settled λ_max: "
                                                 "median over this last fraction of the steps "
                                                 "(default 1/3).")] = None,
    dataset: Annotated[str, Opt("--dataset", help="Dataset (see `sgdreg datasets`).")] = "digits",
    data_dir: Annotated[str | None, Opt("--data-dir", help="Folder with MNIST/CIFAR-10 files.")]
    = None,
    n_train: Annotated[int | None, Opt("--n-train", help="Use the first n training examples "
                                       "(default: all).")] = None,
    width: Annotated[int, Opt("--width", help="Hidden width of the tanh MLP.")] = 200,
    depth: Annotated[int, Opt("--depth", help="Hidden layers.")] = 2,
    flow: Annotated[bool, Opt("--flow/--no-flow", help="Also run the gradient flow.")] = True,
    flow_time: Annotated[float | None, Opt("--flow-time", help="Flow to this t (default "
                                           "steps·min h).")] = None,
    seed: Annotated[int, Opt("--seed", help="θ0 (shared by every run).")] = 0,
    dtype: Annotated[str, Opt("--dtype", help="float32 or float64.")] = "float32",
    traces: Annotated[bool, Opt("--traces/--no-traces", help="Keep one trace per run.")] = True,
    out: Annotated[Path | None, Opt("--out", help="Output directory (default "
                                    "sgdreg-runs/eos-<time>).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Write into a non-empty --out: replace "
                                   "this command's files and remove the traces there.")] = False,
    json: Annotated[bool, Opt("--json", help="Print the results on stdout.")] = False,
    device_budget: Annotated[int | None, Opt(
        "--device-budget", help="Bytes of device memory the data may take; above it they stay "
        "on the host (MNIST/CIFAR-10: memory-mapped files) and stream in chunks (same "
        "numbers).")] = None,
):
    """Edge of stability (Cohen et al. 2021): full-batch GD on an MSE tanh MLP, λ_max against
    2/h for each h, and the gradient flow for contrast. Writes eos.json, traces/ and eos.png.

    Examples:

      sgdreg eos --lr 0.1,0.2,0.4 --steps 3000

      sgdreg eos --optimizer momentum --lr 0.6,1 --n-train 256 --width 32 --steps 600

      sgdreg eos --lr 0.4 --steps 500 --no-flow --json

      sgdreg eos --dataset cifar10 --data-dir ~/data --device-budget 2000000000 --lr 0.01
    """
    from sgdreg.config import RunConfig, validate
    from sgdreg.experiments import eos as lib
    from sgdreg.experiments.eos import run_edge_of_stability
    from sgdreg.plotting.eos import render_eos

    from .app import make_output

    lrs = parse_list(lr, float, "--lr")
    with as_options(lrs="--lr", optimizer="--optimizer", steps="--steps",
                    sharpness_every="--sharpness-every", log_every="--log-every",
                    lanczos_steps="--lanczos-steps", settle_fraction="--settle-fraction",
                    flow_time="--flow-time", momentum="--momentum"):
        lib._check(lrs, optimizer, momentum, steps, sharpness_every, log_every, lanczos_steps,
                   1 / 3 if settle_fraction is None else settle_fraction, flow_time)
    for h in lrs:  # every run's config, as the library builds it (before any data is loaded)
        cfg = RunConfig(dataset=dataset, data_dir=data_dir, n_train=n_train, width=width,
                        depth=depth, optimizer=optimizer, momentum=momentum, steps=steps,
                        log_every=log_every, seed=seed, dtype=dtype, lr=h, **lib.MODEL)
        validate(cfg)
    data = None
    if device_budget is not None:  # loaded (memory-mapped) and checked before any output
        from .core import stream_budget

        data = stream_budget(None, device_budget, cfg)
    dest = output_dir(out, "eos", overwrite=overwrite)
    make_output(dest, overwrite)  # created and locked (an empty one is removed on failure)
    res = run_edge_of_stability(
        lrs, optimizer=optimizer, momentum=momentum, dataset=dataset, data_dir=data_dir,
        n_train=n_train, width=width, depth=depth, steps=steps, sharpness_every=sharpness_every,
        log_every=log_every, lanczos_steps=lanczos_steps, include_flow=flow, flow_time=flow_time,
        seed=seed, dtype=dtype, data=data, traces=traces, out_dir=dest, progress=console.print,
        **({} if settle_fraction is None else {"settle_fraction": settle_fraction}))
    fig = render_eos(dest, dest / "eos.png")[0]
    rows = [[r["run_id"], r["status"], r["threshold"], r["lambda_max_initial"],
             r["settled_lambda_max"], r["ratio"], r["loss_increases"]] for r in res["runs"]]
    f = res["flow_vs_largest"]
    if f:  # the flow: λ_max at its final t, ratio to the largest h's threshold
        rows.append([res["flow"]["run_id"], res["flow"]["status"], None,
                     res["flow"]["lambda_max_initial"], f["flow_lambda_max"], f["flow_ratio"], None])
    print_table("settled λ_max (median, last part) / threshold", ["run", "status", "thresh.",
                "λ_max(0)", "settled", "ratio", "L ↑"], rows)
    console.print(f"eos.json, {'traces/ and ' if traces else ''}{fig.name} in {dest}")
    if json:
        emit_json({"out": str(dest), "figure": str(fig)}
                  | {k: v for k, v in res.items() if k != "flow"}
                  | {"runs": [{k: v for k, v in r.items() if k != "series"} for r in res["runs"]]})
