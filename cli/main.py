"""Entry point: ``sgdreg``. Bad input → one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys

import typer

try:  # typer ≥ 0.20 vendors click as typer._click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

# importing a command module registers its commands on the shared app
from . import (  # noqa: F401
    core,
    correlate_cmd,
    curvature_cmd,
    eos_cmd,
    experiments_cmd,
    igr_cmd,
    sweep_cmd,
)
from .app import UsageProblem, app


def _user_errors() -> tuple[type[BaseException], ...]:
    from sgdreg.config import ConfigError
    from sgdreg.trace import TraceError

    # ValueError: the library's convention for bad input values (unknown names, ranges)
    errs: list[type[BaseException]] = [UsageProblem, ConfigError, TraceError, ValueError,
                                       FileNotFoundError]
    try:
        from sgdreg.datasets import DataError

        errs.append(DataError)
    except ImportError:
        pass
    return tuple(errs)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) 0 ok, 1 runtime failure, 2 bad usage/input."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="sgdreg", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except getattr(click_exc, "NoArgsIsHelpError", ()) as e:
        print(e.ctx.get_help())
        code = 0
    except click_exc.UsageError as e:
        where = f" ({e.ctx.command_path})" if e.ctx else ""
        print(f"sgdreg: error{where}: {e.format_message()}", file=sys.stderr)
        code = 2
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        print("sgdreg: aborted", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("sgdreg: interrupted; traces so far are marked 'interrupted'", file=sys.stderr)
        code = 130
    except _user_errors() as e:
        print(f"sgdreg: error: {e}", file=sys.stderr)
        code = 2
    except Exception as e:  # runtime failure: one line unless SGDREG_DEBUG is set
        if os.environ.get("SGDREG_DEBUG"):
            raise
        print(f"sgdreg: failed: {e.__class__.__name__}: {e} (set SGDREG_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        code = 1
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
