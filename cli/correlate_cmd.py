"""`sgdreg correlate`: rank generalization measures against the gap over a directory of runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .app import UsageProblem, app, as_options, check_int, console, emit_json, print_table

Opt = typer.Option


@app.command()
def correlate(
    run_dir: Annotated[Path, typer.Argument(help="A sweep directory (traces/ and models/) or a "
                                            "folder of <run>.json traces with <run>.eqx models.")],
    gap: Annotated[str, Opt("--gap", help="acc_gap: train − test accuracy (default, as Jiang et "
                            "al.); gen_gap: test − train loss (regression).")] = "acc_gap",
    target_loss: Annotated[float | None, Opt("--target-loss", help="Compare runs at train loss "
                                             "≤ this (default: the runs' common stop_loss); "
                                             "runs that did not reach it are discarded. Runs "
                                             "trained with stop_loss = this are compared at "
                                             "their stop point (equal loss).")]
    = None,
    recompute: Annotated[bool, Opt("--recompute", help="Ignore the measures cached in "
                                   "measures.json.")] = False,
    flatness: Annotated[bool, Opt("--flatness/--no-flatness", help="PAC-Bayes flatness and "
                                  "sharpness searches (the slow measures).")] = True,
    curvature: Annotated[bool, Opt("--curvature", help="Hessian trace, λ_max, Γ and batch "
                                   "sharpness of each final model (else: last logged).")] = False,
    resamples: Annotated[int, Opt("--resamples", help="Bootstrap resamples of the runs.")] = 1000,
    level: Annotated[float, Opt("--level", help="Confidence level of the bootstrap CIs.")] = 0.95,
    seed: Annotated[int, Opt("--seed", help="Seeds the flatness noise and the bootstrap.")] = 0,
    top: Annotated[int | None, Opt("--top", help="Show only the first N measures.")] = None,
    json: Annotated[bool, Opt("--json", help="Print correlation.json on stdout.")] = False,
):
    """Kendall τ and granulated Ψ of each generalization measure with the generalization gap,
    over runs trained to the same training loss (Jiang et al. 2020).

    Writes measures.json (per-run measures, reused by later calls), correlation.json and
    correlation.png/.svg into RUN_DIR.

    Examples:

      sgdreg sweep grid.toml --save-models --out runs/grid    # [base] stop_loss = 0.05

      sgdreg correlate runs/grid        # at L* = the runs' stop_loss (each stopped there)

      sgdreg correlate runs/grid --gap gen_gap --no-flatness --json
    """
    from sgdreg.experiments import generalization as gz
    from sgdreg.plotting.generalization import ranking_table, render_generalization

    if gap not in gz.GAPS:
        raise UsageProblem(f"--gap: unknown value {gap!r}; allowed: {', '.join(gz.GAPS)}")
    with as_options(gap="--gap", target_loss="--target-loss", num_resamples="--resamples",
                    level="--level", seed="--seed"):
        gz.check_options(gap=gap, target_loss=target_loss, num_resamples=resamples, level=level,
                         seed=seed)
    check_int("--top", top, 1)
    if not run_dir.is_dir():
        raise UsageProblem(f"no run directory at {run_dir}")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UsageProblem(f"{run_dir}: not writable (measures.json and correlation.json go "
                           "there)")
    from sgdreg import locking

    locking.check_unlocked(run_dir)  # e.g. a sweep still writing there
    locking.hold(run_dir, "sgdreg correlate")  # measures.json, correlation.json are written
    doc = gz.correlate(run_dir, gap=gap, target_loss=target_loss, recompute=recompute,
                       num_resamples=resamples, level=level, seed=seed, flatness=flatness,
                       curvature=curvature,
                       progress=lambda s: console.print(f"  {s}", highlight=False))
    files = render_generalization(run_dir, run_dir / "correlation.png")
    target = doc["target_loss"]
    lo, hi = doc["train_loss_range"]
    print_table(f"{doc['num_kept']} runs" + (f" at train loss ≤ {target:g}" if target else "")
                + f" (final train loss {lo:.3g}–{hi:.3g}): τ and Ψ with {gap}",
                *ranking_table(doc, top))
    if doc["discarded"]:
        print_table(f"discarded: {len(doc['discarded'])} of {doc['num_runs']} runs",
                    ["run", "reason"], [[d["run_id"], d["reason"]] for d in doc["discarded"]])
    if target is None:
        console.print("note: no stop_loss or --target-loss: runs are compared at their final "
                      "step, not at equal training loss")
    elif doc["stopped_at_target"] < doc["num_kept"]:
        console.print(f"note: {doc['num_kept'] - doc['stopped_at_target']} of {doc['num_kept']} "
                      f"runs were not trained with stop_loss = {target:g}; they are compared at "
                      "their final step (train them with stop_loss for equal loss)")
    console.print(f"measures.json, correlation.json, {files[0].name} in {run_dir}")
    if json:
        emit_json(doc)
