"""sweep: a grid of runs from a TOML file, vmapped, sharded over devices, resumable."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from .app import UsageProblem, app, check_int, console, emit_json, output_dir, print_table

Opt = typer.Option


@app.command()
def sweep(
    grid: Annotated[Path, typer.Argument(help="Sweep file (TOML): [base] fields and [grid] lists.")],
    out: Annotated[Path | None, Opt("--out", help="Output directory (default "
                                    "sgdreg-runs/sweep-<time>; required with --resume).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the sweep in --out from its last "
                                "checkpoint; finished runs are kept, not re-run.")] = False,
    devices: Annotated[int | None, Opt("--devices", help="Shard the runs over the first N "
                                       "devices (default: all).")] = None,
    block: Annotated[int | None, Opt("--block", help="Runs per vmapped block (default: min(8, "
                                     "runs)); a run's numbers depend on this only (raise it on "
                                     "GPUs).")] = None,
    save_models: Annotated[bool, Opt("--save-models", help="Also write each run's final model "
                                     "to models/<run_id>.eqx (for `sgdreg hessian`).")] = False,
    distributed: Annotated[bool, Opt("--distributed", help="Multi-host: call "
                                     "jax.distributed.initialize() first; process 0 writes.")]
    = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Start afresh in a non-empty --out: "
                                   "remove this command's files there first (sweep.json, "
                                   "summary.csv, checkpoints/, shards.json, shards/, the traces "
                                   "in traces/, models/*.eqx); other files stay.")] = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="Show the groups and memory estimates; "
                                 "run nothing.")] = False,
    shard: Annotated[str | None, Opt("--shard", metavar="i/N", help="Run only shard i of N "
                                     "(0 ≤ i < N) into --out, which any number of shards share "
                                     "(Slurm arrays); rerunning a shard continues it.")] = None,
    status: Annotated[bool, Opt("--status", help="Show what the sweep in --out has committed "
                                "(every shard merged); run nothing, write nothing.")] = False,
    json: Annotated[bool, Opt("--json", help="Print the sweep index on stdout.")] = False,
    device_budget: Annotated[int | None, Opt(
        "--device-budget", help="Bytes of device memory the data may take; above it they stay "
        "on the host (MNIST/CIFAR-10: memory-mapped files) and every run of a group streams the "
        "one shared copy in chunks (same numbers).")] = None,
):
    """Run every configuration of a grid file as vmapped runs in one compiled program per group.

    Writes traces/<run_id>.json (one trace per run), sweep.json (index) and summary.csv into
    --out, checkpointing every chunk. The TOML format is described in
    experiments/sweep_digits.toml and `sgdreg.sweep`.

    Examples:

      sgdreg sweep experiments/sweep_digits.toml --out runs/digits

      sgdreg sweep experiments/sweep_digits.toml --out runs/digits --resume

      sgdreg sweep grid.toml --devices 1 --dry-run

      sgdreg sweep grid.toml --out runs/grid --shard $SLURM_ARRAY_TASK_ID/8

      sgdreg sweep grid.toml --out runs/grid --status

      sgdreg sweep cifar_grid.toml --out runs/cifar --device-budget 4000000000
    """
    if resume and out is None:
        raise UsageProblem("--resume needs --out (the directory of the sweep to continue)")
    if status:
        return _status(grid, out, json, shard=shard,
                       other=resume or overwrite or dry_run or device_budget is not None)
    spec = None
    if shard is not None:
        from sgdreg.config import ConfigError
        from sgdreg.sweep.shard import parse_shard

        try:
            spec = parse_shard(shard)
        except ConfigError as e:
            raise UsageProblem(str(e)) from None
        if out is None:
            raise UsageProblem("--shard needs --out (the directory every shard shares)")
        if overwrite:
            raise UsageProblem("--overwrite cannot be combined with --shard (other shards "
                               "share --out); remove the directory to start afresh")
        resume = True  # a shard continues its own commits
    check_int("--devices", devices, 1, 1 << 20)
    check_int("--block", block, 1, 1 << 20)
    if device_budget is not None and device_budget < 1:
        raise UsageProblem(f"--device-budget must be a positive number of bytes, got "
                           f"{device_budget}")
    if grid.exists() and not grid.is_file():
        raise UsageProblem(f"{grid}: is a directory, not a sweep file")
    dest = None if dry_run else output_dir(out, "sweep", overwrite=overwrite, resume=resume)
    if distributed:
        import jax

        jax.distributed.initialize()
    from sgdreg import sweep as sw

    g = sw.load_grid(grid)
    if dry_run:
        with _budget_option():
            _show_plan(sw, g, devices, block, json, device_budget)
        return
    with _budget_option():  # data loaded (or memory-mapped) and the budget checked
        plan = sw.plan_sweep(g, device_budget)
    if resume:  # every state file checked before anything is printed or rewritten
        sw.check_sweep_dir(plan, dest, resume=True, block=block, shard=spec)
    if overwrite:
        from .app import make_output

        if (dest / "shards").is_dir():  # a sharded sweep: none of its shards may be running
            from sgdreg.locking import check_unlocked

            for d in sorted((dest / "shards").iterdir()):
                if d.is_dir():
                    check_unlocked(d)

        make_output(dest, command="sweep")  # locked while the old sweep's files are removed
        _clear_sweep(dest)
    plan_runs = len(g.runs())
    console.print(f"[bold]sweep[/] {g.name}: {plan_runs} runs → {dest}"
                  + (f" (shard {spec[0]}/{spec[1]})" if spec else
                     " (resuming)" if resume else ""))

    def progress(ev: dict):
        console.print(f"  group {ev['group'] + 1}/{ev['groups']} ({ev['runs']} runs): step "
                      f"{ev['step']}/{ev['steps']}"
                      + (f", {ev['diverged']} diverged" if ev["diverged"] else ""),
                      highlight=False)

    res = sw.run_sweep(plan, dest, resume=resume and spec is None, devices=devices,
                       progress=progress, save_models=save_models, block=block, shard=spec)
    if spec is not None:
        mine = {t["sweep"]["index"] for t in res.traces}
        res.index = {**res.index, "runs": [r for r in res.index["runs"] if r["index"] in mine]}
    cols, rows = _screen_table(res.index)
    print_table(f"{g.name}: final values (all columns in summary.csv)", cols, rows)
    console.print(f"{len(rows)} traces in {dest / 'traces'}; index {dest / 'sweep.json'}, "
                  f"table {dest / 'summary.csv'} ({res.index['wall_time_s']:.1f} s)")
    if spec is not None:
        console.print(_counts_line(res.index, "this shard"), highlight=False)
    if json:
        emit_json(res.index)
    return 1 if any(r["status"] == "failed" for r in res.index["runs"]) else 0


@contextlib.contextmanager
def _budget_option():
    """The library's ``device_budget …`` errors, shown as the option (``--device-budget …``)."""
    from sgdreg.errors import ConfigError

    try:
        yield
    except ConfigError as e:
        if not str(e).startswith("device_budget"):
            raise
        raise UsageProblem(f"--device-budget{str(e)[len('device_budget'):]}") from None


def _counts_line(index: dict, what: str) -> str:
    counts = {}
    for r in index["runs"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return f"{what}: {len(index['runs'])} runs: " + ", ".join(f"{v} {k}"
                                                             for k, v in counts.items())


def _status(grid: Path, out: Path | None, json: bool, *, shard, other: bool) -> int:
    """``--status``: the merged index of --out, printed (nothing run or written)."""
    if out is None:
        raise UsageProblem("--status needs --out (the directory of the sweep)")
    if shard is not None or other:
        raise UsageProblem("--status runs nothing: give it only the grid, --out and --json")
    if grid.exists() and not grid.is_file():
        raise UsageProblem(f"{grid}: is a directory, not a sweep file")
    if not out.is_dir():
        raise UsageProblem(f"--out {out}: no such directory")
    from sgdreg import sweep as sw

    index = sw.sweep_status(sw.load_grid(grid), out)
    runs = index["runs"]
    axes = list(runs[0]["grid_values"]) if runs else []
    sharded = index["sharding"] is not None
    cols = ["#", *axes, *(["shard"] if sharded else []), "status", "step",
            *(label for _, label in SCREEN)]
    rows = [[r["index"], *(r["grid_values"][a] for a in axes),
             *([r["shard"]] if sharded else []),
             r["status"] + (f"@{r['diverged_step']}" if r["diverged_step"] is not None else ""),
             r["step"], *(r["summary"].get(k) for k, _ in SCREEN)] for r in runs]
    print_table(f"{index['name']}: {index['status']}", cols, rows)
    console.print(_counts_line(index, str(out)), highlight=False)
    if sharded:
        console.print("shards: " + ", ".join(f"{s['shard']}/{index['sharding']['num_shards']} "
                                             f"{s['status']} ({s['finished']}/{s['runs']})"
                                             for s in index["shards"]), highlight=False)
    if json:
        emit_json(index)
    return 0


def _clear_sweep(dest: Path) -> None:
    """``--overwrite``: remove what a sweep writes in ``dest`` (after every check passed)."""
    import shutil

    from .app import _is_trace

    for name in ("sweep.json", "summary.csv", "shards.json"):
        if (dest / name).is_file():
            (dest / name).unlink()
    for name in ("checkpoints", "shards"):
        if (dest / name).is_dir():
            shutil.rmtree(dest / name)
    for f in sorted((dest / "traces").glob("*.json")) if (dest / "traces").is_dir() else []:
        if _is_trace(f):
            f.unlink()
    for f in sorted((dest / "models").glob("*.eqx")) if (dest / "models").is_dir() else []:
        f.unlink()


SCREEN = (("train_loss", "train L"), ("test_acc", "test acc"), ("gen_gap", "gen gap"),
          ("steps_to_fit", "steps→100%"))


def _screen_table(index: dict):
    """Run number, grid values, status and a few final values: fits a terminal."""
    runs = index["runs"]
    axes = list(runs[0]["grid_values"]) if runs else []
    cols = ["#", *axes, "status", *(label for _, label in SCREEN)]
    rows = [[r["index"], *(r["grid_values"][a] for a in axes),
             r["status"] + (f"@{r['diverged_step']}" if r["diverged_step"] is not None else ""),
             *(r["summary"].get(k) for k, _ in SCREEN)] for r in runs]
    return cols, rows


def _show_plan(sw, grid, devices, block, json, device_budget=None):
    plan = sw.plan_sweep(grid, device_budget)
    n_dev = len(sw.select_devices(devices))
    rows, out = [], []
    for g in plan.groups:
        r0 = plan.runs[g.runs[0]]
        ds = plan.datasets[r0.data_key]
        b = block or min(sw.DEFAULT_BLOCK, len(g.runs))
        mem = sw.estimate_memory(r0.cfg, sw.dataset_shape(ds), out_size=ds.out_size,
                                 n_test=ds.n_test, runs=len(g.runs), block=b,
                                 shared_data=g.shared_data)
        unit = b * n_dev  # padded to whole blocks on every device
        padded = -(-len(g.runs) // unit) * unit
        rows.append([g.id, len(g.runs), padded, r0.cfg.optimizer, r0.cfg.batch_size,
                     r0.cfg.width, "shared" if g.shared_data else "per run",
                     sw.format_bytes(mem["per_run"]), sw.format_bytes(mem["total"])])
        out.append({"group": g.id, "kind": g.kind, "runs": [plan.runs[i].run_id for i in g.runs],
                    "padded_size": padded, "shared_data": g.shared_data, "memory": mem})
    print_table(f"{grid.name}: {len(plan.runs)} runs in {len(plan.groups)} groups on {n_dev} "
                "device(s)", ["group", "runs", "padded", "optimizer", "batch", "width",
                              "data", "mem/run", "mem total"], rows)
    if json:
        emit_json({"name": grid.name, "groups": out})
