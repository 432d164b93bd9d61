"""The Typer app and the few helpers every command shares (lists, errors, output, tables).

Output conventions (every command): results, i.e. tables (``print_table``), ``trace show``'s
description and ``--json`` (``emit_json``), go to stdout; messages, the compile status and
progress go to stderr (``console``). With ``--json`` stdout holds only the JSON document, so
``sgdreg compare --json | python -m json.tool`` works: the tables then go to stderr (still on
the terminal, out of the pipe) instead of being dropped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="sgdreg",
    help="Implicit regularization in SGD dynamics: GD, SGD and gradient flow side by side, with "
    "IGR terms, curvature and the classic generalization experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)  # messages, status, progress
results = Console()  # tables and other results (stdout); see result_console()


class UsageProblem(ValueError):
    """Bad user input detected by a command; printed as one line, exit code 2."""


def parse_list(text: str, kind: Callable[[str], Any], option: str,
               allowed: Sequence[str] | None = None) -> list:
    """``"a,b"`` → validated list; one-line UsageProblem naming the option otherwise."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageProblem(f"{option}: give at least one value")
    out = []
    for t in items:
        if allowed is not None and t not in allowed:
            raise UsageProblem(f"{option}: unknown value {t!r}; allowed: {', '.join(allowed)}")
        try:
            out.append(kind(t))
        except ValueError:
            raise UsageProblem(f"{option}: {t!r} is not a valid {kind.__name__}") from None
    return out


def out_dir(out: Path | None, prefix: str) -> Path:
    """The output directory: ``--out`` or ``sgdreg-runs/<prefix>-<timestamp>`` (not created)."""
    if out is not None:
        return out
    base = Path("sgdreg-runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def json_requested() -> bool:
    """Whether the running command was given ``--json`` (its ``json`` parameter)."""
    try:  # typer ≥ 0.20 vendors click as typer._click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("json"))


def result_console() -> Console:
    """stdout for results; stderr when ``--json`` claims stdout for the JSON document."""
    return console if json_requested() else results


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*(fmt(v) for v in r))
    result_console().print(table)


def emit_json(obj: Any) -> None:
    from sgdreg.trace import to_json_value

    sys.stdout.write(json.dumps(to_json_value(obj), indent=1) + "\n")


def progress_bar(label: str, total_runs: int):
    """A rich progress bar on stderr and a per-run callback factory for ``train``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total} steps"), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=console, transient=False,
                    disable=not console.is_terminal)

    def callback_for(name: str, total: int):
        task = prog.add_task(f"{label} {name}", total=total, info="compiling…")

        def cb(step: int, total: int, row: dict):
            loss = row.get("train_loss")
            info = f"L={loss:.4g}" if loss is not None else ""
            prog.update(task, completed=step, info=info + (" compiling…" if step == 0 else ""))

        return cb

    return prog, callback_for
