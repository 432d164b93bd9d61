"""The ``sgdreg`` console script: checks that the ``[cli]`` extra is installed (one line and
exit code 2 if not, before anything is imported), then runs ``sgdreg_cli.main.main``."""

from __future__ import annotations

import sys

# what the command line imports, and the figures and default dataset its commands need
CLI_MODULES = ("typer", "rich", "matplotlib", "seaborn", "pandas", "sklearn")


def main() -> None:
    from sgdreg._optional import missing

    absent = missing(CLI_MODULES)
    if absent:
        print(f"sgdreg: the command line needs {', '.join(absent)}: pip install 'sgdreg[cli]'",
              file=sys.stderr)
        raise SystemExit(2)
    from .main import main as run

    run()
