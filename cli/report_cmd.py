"""report: one self-contained HTML page for a run or sweep directory (``sgdreg.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import UsageProblem, app, check_writable, console

Opt = typer.Option


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A compare/train output directory or a sweep "
                                              "directory (traces found recursively).")],
    out: Annotated[Path | None, Opt("--out", help="The HTML file to write (default "
                                    "DIR/report.html).")] = None,
    no_plot: Annotated[bool, Opt("--no-plot", help="Leave out the metrics plot drawn from the "
                                 "traces (the directory's own figures stay).")] = False,
):
    """Write one self-contained HTML page for a run or sweep directory: the summary table,
    the figures (embedded), a plot of the traces' metrics, the configuration and provenance,
    relative links to the traces. Opens offline: no external CSS, scripts, fonts or images.

    Examples:

      sgdreg report sgdreg-runs/compare-20260101-120000

      sgdreg report runs/digits --out digits-report.html
    """
    if not directory.exists():
        raise UsageProblem(f"{directory}: no such directory")
    if not directory.is_dir():
        raise UsageProblem(f"{directory}: is a file, not a run or sweep directory")
    dest = out if out is not None else directory / "report.html"
    check_writable(dest, "--out" if out is not None else "DIR (report.html)", "file")
    from sgdreg.errors import TraceError
    from sgdreg.report import report_html
    from sgdreg.trace import atomic_write_text

    try:
        text = report_html(directory, dest, plot=not no_plot)  # every check before anything is written
    except TraceError as e:
        raise UsageProblem(str(e)) from None  # no trace under it, or an invalid one
    atomic_write_text(dest, text)
    console.print(f"report → {dest}", highlight=False)
