"""``sgdreg igr``: implicit gradient regularization made visible (library: ``sgdreg.experiments.igr``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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

LIB_NAMES = dict(lrs="--lr", time="--time", n_log="--n-log", egr_lr="--egr-lr",
                 batch_size="--batch-size", h_small="--h-small", h_moderate="--h-moderate",
                 widths="--width", target_loss="--target-loss", log_every="--log-every",
                 seeds="--seeds")

Opt = typer.Option


@app.command()
def igr(
    lr: Annotated[str | None, Opt("--lr", help="Step sizes h, comma list. Defaults: check "
                                  "0.2,0.1,0.05; --two-param 0.005,0.01,…,0.1; --sweep "
                                  "0.05,0.1,0.2,0.5,1,2,3,4.")] = None,
    time: Annotated[float | None, Opt("--time", help="Final time T = K·h (check: 2, a whole "
                                      "number of steps of every h; --two-param: 20; --sweep: "
                                      "150).")] = None,
    dataset: Annotated[str, Opt("--dataset", help="Dataset (see `sgdreg datasets`).")] = "digits",
    model: Annotated[str, Opt("--model", help="mlp | cnn | linear | random-features.")] = "mlp",
    width: Annotated[str | None, Opt("--width", help="Width (check: 16); --sweep: comma list "
                                     "(32,128,512).")] = None,
    depth: Annotated[int, Opt("--depth", help="Hidden layers.")] = 1,
    activation: Annotated[str | None, Opt("--activation", help="check: tanh (smooth); --sweep: "
                                          "relu.")] = None,
    n_train: Annotated[int | None, Opt("--n-train", help="Training examples (check: 64; "
                                       "--sweep: 512).")] = None,
    loss: Annotated[str | None, Opt("--loss", help="check: mse; --sweep: ce.")] = None,
    dtype: Annotated[str | None, Opt("--dtype", help="check: float64; --sweep: float32.")] = None,
    seed: Annotated[int, Opt("--seed", help="θ0 and the path projection.")] = 0,
    seeds: Annotated[str | None, Opt("--seeds", help="--sweep: comma list of seeds (θ0 and the "
                                     "training subset; default: --seed); the figure shows the "
                                     "mean and min–max over them.")] = None,
    n_log: Annotated[int | None, Opt("--n-log", help="Logged times per run (check: 10; "
                                     "--two-param: 120, log-spaced).")] = None,
    egr_lr: Annotated[float | None, Opt("--egr-lr", help="Check: small step s < min(h) for EGR "
                                        "with μ = (h − s)/4, and μ = h/4 for comparison "
                                        "(default min(h)/4; 0 skips).")] = None,
    two_param: Annotated[bool, Opt("--two-param", help="Run the two-parameter example "
                                   "E(a,b) = ½(y − abx)² from (2.8, 3.5) instead.")] = False,
    h_small: Annotated[float, Opt("--h-small", help="--two-param: small step.")] = 0.005,
    h_moderate: Annotated[float, Opt("--h-moderate", help="--two-param: moderate step (EGR at "
                                     "--h-small with μ = (h_moderate − h_small)/4 mimics it).")]
    = 0.05,
    sweep: Annotated[bool, Opt("--sweep", help="Sweep h × width with GD: R_IG, igr_gd, test "
                               "accuracy at t = T and at a matched training loss.")] = False,
    target_loss: Annotated[float, Opt("--target-loss", help="--sweep: matched training loss.")]
    = 0.03,
    out: Annotated[Path | None, Opt("--out", help="Output directory (default "
                                    "sgdreg-runs/igr-<time>).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Write into a non-empty --out: replace "
                                   "this command's files and remove the traces there.")] = False,
    json: Annotated[bool, Opt("--json", help="Print the results on stdout.")] = False,
):
    """Implicit gradient regularization: GD vs plain and modified flow, EGR, two-parameter
    example, h × width sweep. Writes igr_<check>.json (the results), traces/ and a figure.

    Examples:

      sgdreg igr --lr 0.2,0.1,0.05 --time 2

      sgdreg igr --two-param

      sgdreg igr --sweep --lr 0.1,0.5,1 --width 32,128 --time 100
    """
    from sgdreg.config import RunConfig
    from sgdreg.experiments import igr as lib
    from sgdreg.plotting import igr as fig_lib

    if two_param and sweep:
        raise UsageProblem("--two-param and --sweep: choose one")
    if seeds is not None and not sweep:
        raise UsageProblem("--seeds is for --sweep (the other checks take one --seed)")
    from sgdreg.config import validate

    lrs = parse_list(lr, float, "--lr") if lr is not None else None
    for h in lrs or ():
        check_finite("--lr", h, 0)
    widths = parse_list(width, int, "--width") if width is not None else None
    for w in widths or ():
        check_int("--width", w, 1)
    seed_list = parse_list(seeds, int, "--seeds") if seeds else None
    for v in seed_list or ():
        check_int("--seeds", v, 0, 2**32 - 1)
    check_finite("--time", time, 0)
    check_int("--n-log", n_log, 1, 10**6)
    check_finite("--egr-lr", egr_lr, 0, strict=False)
    check_finite("--h-small", h_small, 0)
    check_finite("--h-moderate", h_moderate, 0)
    check_finite("--target-loss", target_loss, 0)
    given = {k: v for k, v in dict(dataset=dataset, model=model, depth=depth, activation=activation,
                                   n_train=n_train, loss=loss, dtype=dtype, seed=seed).items()
             if v is not None}
    if not two_param:  # the runs' config, checked before anything is loaded or written
        if not sweep and widths is not None and len(widths) != 1:
            raise UsageProblem("--width: the check takes one width (lists are for --sweep)")
        defaults = lib.SWEEP_DEFAULTS if sweep else lib.CHECK_DEFAULTS
        for w in widths or [None]:
            validate(RunConfig(**(defaults | given | ({} if w is None else {"width": w}))))
    dest = output_dir(out, "igr", overwrite=overwrite)
    make_output(dest, overwrite)  # created and locked (an empty one is removed on failure)
    with as_options(**LIB_NAMES):
        return _run(lib, fig_lib, RunConfig, two_param, sweep, lrs, widths, seed_list, time, n_log,
                    egr_lr, h_small, h_moderate, target_loss, given, dest, json)


def _run(lib, fig_lib, RunConfig, two_param, sweep, lrs, widths, seed_list, time, n_log,
         egr_lr, h_small, h_moderate, target_loss, given, dest, json):
    if two_param:
        kw = {k: v for k, v in (("lrs", lrs), ("time", time), ("n_log", n_log)) if v is not None}
        res = lib.two_param_example(h_small=h_small, h_moderate=h_moderate, out_dir=dest,
                                    progress=console.print, **kw)
        fig = fig_lib.render_two_param(dest, dest / "two_param.png")[0]
        stored = lib.TWO_PARAM
        print_table("two-parameter model: final ||a| − |b|| (flow: "
                    f"{res['paths']['flow']['final_gap']:.4g})", ["h", "GD gap", "mod. flow gap"],
                    [[g["lr"], g["gd_gap"], g["modified_flow_gap"]] for g in res["gaps"]])
    elif sweep:
        base = RunConfig(**(lib.SWEEP_DEFAULTS | given))
        kw = {k: v for k, v in (("lrs", lrs), ("widths", widths), ("time", time),
                                ("seeds", seed_list))
              if v is not None}
        res = lib.igr_sweep(base, target_loss=target_loss, out_dir=dest, progress=console.print,
                            **kw)
        fig = fig_lib.render_sweep(dest, dest / "sweep.png")[0]
        stored = lib.SWEEP
        print_table(f"GD sweep: at t = {res['time']:g} | at train loss {target_loss:g}",
                    ["run", "status", "R_IG", "test acc", "R_IG@L", "test acc@L"],
                    [[r["run_id"], "diverged" if r["diverged"] else r["status"],
                      r["final"]["grad_norm_sq"], r["final"]["test_acc"],
                      (r["at_loss"] or {}).get("grad_norm_sq"), (r["at_loss"] or {}).get("test_acc")]
                     for r in res["rows"]])
    else:
        if widths is not None and len(widths) != 1:
            raise UsageProblem("--width: the check takes one width (lists are for --sweep)")
        if widths:
            given["width"] = widths[0]
        cfg = RunConfig(**(lib.CHECK_DEFAULTS | given))
        kw = {k: v for k, v in (("lrs", lrs), ("time", time), ("n_log", n_log)) if v is not None}
        res = lib.backward_error_check(cfg, egr_lr=egr_lr, out_dir=dest, progress=console.print,
                                       **kw)
        fig = fig_lib.render_backward_error(dest, dest / "backward_error.png")[0]
        stored = lib.BACKWARD_ERROR
        rows = res["rows"]
        print_table(f"GD vs flows at t = {res['time']:g}: orders plain "
                    f"{res['orders']['flow'] or float('nan'):.2f}, modified "
                    f"{res['orders']['modified_flow'] or float('nan'):.2f}",
                    ["h", "GD↔flow", "GD↔mod", "ratio", "ΔL flow", "ΔL mod", "GD↔EGR", "GD↔GD(s)"],
                    [[r["lr"], r["dist_flow"], r["dist_modified_flow"], r["ratio"],
                      r["loss_diff_flow"], r["loss_diff_modified_flow"], r.get("dist_egr"),
                      r.get("dist_small_step")] for r in rows])
    console.print(f"{stored}.json, traces/ and {fig.name} in {dest}")
    if json:
        emit_json({"out": str(dest), "figure": str(fig)}
                  | {k: v for k, v in res.items() if k not in ("series", "paths")})
