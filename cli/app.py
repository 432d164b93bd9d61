"""The Typer app and the few helpers every command shares (lists, errors, output, tables).

Output conventions (every command): results, i.e. tables (``print_table``), ``trace show``'s
description and ``--json`` (``emit_json``), go to stdout; messages, the compile status and
progress go to stderr (``console``). With ``--json`` stdout holds only the JSON document, so
``sgdreg compare --json | python -m json.tool`` works: the tables then go to stderr (still on
the terminal, out of the pipe) instead of being dropped.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
               allowed: Sequence[str] | None = None, unique: bool = True) -> list:
    """``"a,b"`` → validated list; one-line UsageProblem naming the option otherwise. Floats must
    be finite; ints are bounded by ``MAX_INT``; with ``unique`` (the default) a repeated value is
    rejected (two runs of one configuration would share one output file)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageProblem(f"{option}: give at least one value")
    out = []
    for t in items:
        if allowed is not None and t not in allowed:
            raise UsageProblem(f"{option}: unknown value {t!r}; allowed: {', '.join(allowed)}")
        try:
            v = kind(t)
        except ValueError:
            raise UsageProblem(f"{option}: {t!r} is not a valid {kind.__name__}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageProblem(f"{option}: {t!r} is not a finite number")
        if isinstance(v, int) and not -MAX_INT <= v <= MAX_INT:
            raise UsageProblem(f"{option}: {t!r} is out of range (|value| ≤ {MAX_INT})")
        out.append(v)
    if unique:
        dup = next((v for i, v in enumerate(out) if v in out[:i]), None)
        if dup is not None:
            raise UsageProblem(f"{option}: {dup!r} is given twice; give each value once")
    return out


MAX_INT = 2**32 - 1  # the largest integer any option takes (seeds); counts are bounded lower


def check_finite(option: str, value: float | None, lo: float | None = None, *,
                 strict: bool = True) -> None:
    """A float option: finite, and > lo (``strict``) or ≥ lo; one line naming the option."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageProblem(f"{option} must be a finite number, got {value:g}")
    if lo is not None and not (value > lo if strict else value >= lo):
        raise UsageProblem(f"{option} must be {'>' if strict else '≥'} {lo:g}, got {value:g}")


def check_int(option: str, value: int | None, lo: int = 0, hi: int = 2**31 - 1) -> None:
    """An integer option in lo..hi (default: an int32 count); one line naming the option."""
    if value is not None and not lo <= value <= hi:
        raise UsageProblem(f"{option} must be in {lo}..{hi}, got {value}")


def _first_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, option: str = "--out", kind: str = "dir") -> None:
    """``path`` can be made (or written) as a ``kind`` ("dir" or "file") by this process: not an
    existing entry of the other kind, no file among its ancestors, and the first existing
    ancestor a writable folder. Checked before anything is computed or created."""
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UsageProblem(f"{option} {path}: exists and is not a directory")
    if kind == "file" and path.is_dir():
        raise UsageProblem(f"{option} {path}: is a directory; give a file name")
    if kind == "file" and path.exists() and not os.access(path, os.W_OK):
        raise UsageProblem(f"{option} {path}: the file is not writable")
    anc = _first_existing(path if not path.exists() else (path if kind == "dir" else path.parent))
    if not anc.is_dir():
        raise UsageProblem(f"{option} {path}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageProblem(f"{option} {path}: {anc} is not writable")


def _non_empty(path: Path) -> bool:
    """Holds anything but sgdreg's leftovers (a lock file, a killed writer's temp files)."""
    from sgdreg.locking import is_leftover

    return path.is_dir() and any(not is_leftover(p) for p in path.iterdir())


def output_dir(out: Path | None, prefix: str, *, overwrite: bool = False,
               resume: bool | None = None, option: str = "--out") -> Path:
    """The output directory (``out_dir``), checked but not created: writable (``check_writable``)
    and, when ``--out`` names a non-empty directory, only with ``--overwrite`` (or ``--resume``
    where the command has one; ``resume=None``: it has none). The default
    (sgdreg-runs/<prefix>-<time>) is always fresh.

    Policy (``--overwrite``): the command replaces the files it writes and, in ``make_output``,
    removes the sgdreg traces it would write (``*.json`` traces directly in the directory and in
    its traces/ folder) so none from an earlier run is left beside the new ones; any other file
    stays untouched."""
    if overwrite and resume:
        raise UsageProblem("--overwrite and --resume contradict each other; give one")
    from sgdreg.locking import check_unlocked

    dest = out_dir(out, prefix)
    check_writable(dest, option, "dir")
    if dest.is_dir():
        check_unlocked(dest)  # another live writer: one line (LockError), exit 2
    if out is not None and _non_empty(dest) and not (overwrite or resume):
        alt = "--overwrite or --resume" if resume is not None else "--overwrite"
        raise UsageProblem(f"{option} {dest}: the directory is not empty; pass {alt} (or choose "
                           "another directory)")
    return dest


def make_output(dest: Path, overwrite: bool = False, command: str | None = None) -> Path:
    """Create ``dest`` and take its lock for the rest of the command (``locking.hold``; after
    every check passed); with ``overwrite``, remove the sgdreg traces in it and in
    ``dest/traces`` (see ``output_dir``)."""
    from sgdreg import locking

    locking.hold(dest, command or _command_name())
    if overwrite:
        for folder in (dest, dest / "traces"):
            for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                if _is_trace(f):
                    f.unlink()
    return dest


def _command_name() -> str:
    try:  # typer ≥ 0.20 vendors click as typer._click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return ctx.command_path if ctx is not None else "sgdreg"


def _is_trace(path: Path) -> bool:
    from sgdreg.trace import SCHEMA

    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return f'"schema": "{SCHEMA}"' in head or f'"schema":"{SCHEMA}"' in head


def flag_names(message: str, names: dict[str, str]) -> str:
    """A library message (it names arguments) with ``names`` (argument → ``--option``) shown as
    the command's options: the leading name, and names with an underscore anywhere."""
    m = re.match(r"([a-z][a-z0-9_]*)(?=:| must| exceeds| is| \d| \()", message)
    if m and m.group(1) in names:
        message = names[m.group(1)] + message[m.end():]
    for arg, flag in names.items():
        if "_" in arg:
            message = re.sub(rf"(?<![\w-]){arg}(?![\w-])", flag, message)
    return message


@contextmanager
def as_options(**names: str) -> Iterator[None]:
    """Re-raise sgdreg's errors from the block as one-line UsageProblems whose argument names are
    this command's options (``as_options(lrs="--lr")``); RunConfig fields are mapped by
    ``main.as_option`` already."""
    from sgdreg.errors import SgdregError

    try:
        yield
    except SgdregError as e:
        raise UsageProblem(flag_names(str(e), names)) from None


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
