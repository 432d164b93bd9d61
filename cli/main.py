"""Entry point: ``sgdreg`` (and ``python -m sgdreg``). Bad input → one line on stderr and exit
code 2, never a traceback.

Global options: ``--version``; ``--no-cache`` (or ``SGDREG_NO_CACHE=1``) turns off JAX's
persistent compilation cache, which is otherwise on in ``$XDG_CACHE_HOME/sgdreg/jax`` (default
``~/.cache/sgdreg/jax``), so a second run of the same programs loads them instead of compiling.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Annotated

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

CACHE_MAX_BYTES = 2 << 30  # LRU-evicted above this when `filelock` is importable (JAX needs it)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sgdreg/jax``, default ``~/.cache/sgdreg/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sgdreg" / "jax"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``path`` (default ``cache_dir()``) for every
    program, however small or quick to compile (a chunk compiles in well under JAX's default
    1 s threshold on small models, yet a run compiles several). Must run before the first
    compilation of the process; JAX creates the folder on first use."""
    import jax

    d = Path(path) if path is not None else cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(d))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None:
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return d


def _print_version(value: bool) -> None:
    if value:
        from sgdreg import __version__

        print(f"sgdreg {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", envvar="SGDREG_NO_CACHE",
        help="Do not use the persistent compilation cache (~/.cache/sgdreg/jax, or under "
             "$XDG_CACHE_HOME).")] = False,
) -> None:
    if not no_cache:
        enable_compile_cache()


def _user_errors() -> tuple[type[BaseException], ...]:
    from sgdreg.errors import SgdregError

    # ValueError: the library's convention for bad input values (unknown names, ranges)
    return (UsageProblem, SgdregError, ValueError, FileNotFoundError)


def as_option(message: str) -> str:
    """Library errors name arguments (``lr must be > 0``); show them as the CLI's options
    (``--lr must be > 0``) when the leading name is a run option."""
    import dataclasses

    from sgdreg.config import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    m = re.match(r"([a-z][a-z0-9_]*)(?=:| must| exceeds| \d| \()", message)
    if m and m.group(1) in names:
        return "--" + m.group(1).replace("_", "-") + message[m.end():]
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) 0 ok, 1 runtime failure, 2 bad usage/input."""
    import jax

    # The CLI owns its process: 64-bit mode on, so --dtype float64 works; the library passes
    # explicit dtypes everywhere, so float32 runs stay float32 (sgdreg itself never flips it).
    jax.config.update("jax_enable_x64", True)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="sgdreg", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # the framework turned Ctrl-C into exit code 130: say where things are
            print("sgdreg: interrupted; traces so far are marked 'interrupted'", file=sys.stderr)
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
        print(f"sgdreg: error: {as_option(str(e))}", file=sys.stderr)
        code = 2
    except Exception as e:  # runtime failure: one line unless SGDREG_DEBUG is set
        if os.environ.get("SGDREG_DEBUG"):
            raise
        print(f"sgdreg: failed: {e.__class__.__name__}: {e} (set SGDREG_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        code = 1
    if argv is None:  # the process is ours: leave without the interpreter's teardown
        sys.stdout.flush()  # (≈ 1 s of module and XLA clean-up; every file is already
        sys.stderr.flush()  # written and fsynced by the atomic writers)
        os._exit(code)
    return code


if __name__ == "__main__":
    main()
