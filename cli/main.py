"""Entry point: ``sgdreg`` (and ``python -m sgdreg``). Bad input → one line on stderr and exit
code 2, never a traceback.

Global options: ``--version``; ``--no-cache`` (or ``SGDREG_NO_CACHE=1``) turns off JAX's
persistent compilation cache, which is otherwise on in ``$XDG_CACHE_HOME/sgdreg/jax`` (default
``~/.cache/sgdreg/jax``), so a second run of the same programs loads them instead of compiling.
"""

from __future__ import annotations

import _thread
import importlib.util
import os
import re
import signal
import sys
import threading
import time
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
    report_cmd,
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


GRACE_S = 1.5  # after a first signal, how long to wait for a run to take it (see _grace)
DEBOUNCE_S = 0.25  # a signal this soon after the first is the same one delivered twice
GRACE_LOCKED_S = 5.0  # the same while an output directory is locked (a command writing runs)


class SignalHandling:
    """SIGINT and SIGTERM while a command runs (``with SignalHandling():``).

    The first signal only asks the runs to stop (``engine.request_stop``): every run finishes
    its current compiled chunk (or compilation), writes its trace as ``interrupted`` and the
    command exits with 128 + the signal (130 for SIGINT, 143 for SIGTERM) after one line saying
    where the partial results are. Nothing is raised inside tracing or XLA. Outside a run (data
    loading, experiment bookkeeping, commands that never train) the first signal raises
    KeyboardInterrupt in the main thread unless a run starts within a short grace period. A
    second signal (``DEBOUNCE_S`` or more after the first) marks every running trace
    ``interrupted``, removes this process's output locks and exits at once.

    The signals are read by a watcher thread from ``signal.set_wakeup_fd``, so they are seen at
    once even while the main thread is inside a long compilation (Python-level handlers only run
    between bytecodes of the main thread)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.old: dict[int, object] = {}
        self.old_fd = -1
        self.pipe: tuple[int, int] | None = None
        self.count = 0
        self.first_at = 0.0
        self.raising = True  # KeyboardInterrupt may be raised in the main thread (see _grace)
        self.force = False
        self.injected = 0
        self.closed = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled in the main thread
        r, w = os.pipe()
        os.set_blocking(w, False)
        self.pipe = (r, w)
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.old[sig] = signal.signal(sig, self._python_handler)
        self.old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(r,), name="sgdreg-signals",
                         daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.closed = True
        if self.pipe is None:
            return False
        signal.set_wakeup_fd(self.old_fd)
        for sig, h in self.old.items():
            signal.signal(sig, h)
        os.close(self.pipe[1])  # the watcher reads EOF and ends
        return False

    def _python_handler(self, signum, frame):
        # runs in the main thread between bytecodes; the watcher thread decides (see _grace)
        if self.force and self.raising:
            self.force = False
            raise KeyboardInterrupt

    def _grace(self, signum: int):
        """After the first signal: a run that honours STOP stops at its next chunk boundary
        (its trace marked 'interrupted'). If none is running, wait briefly for one to start (a
        command between building a run and its first chunk), then stop the main thread with
        KeyboardInterrupt (commands that never run one: hessian, correlate, ...)."""
        from sgdreg import engine, locking

        deadline = time.monotonic() + (GRACE_LOCKED_S if locking.holding() else GRACE_S)
        while not self.closed:
            if engine.stoppable_running() or engine.INTERRUPTED:
                return  # a run has it
            if time.monotonic() > deadline:
                self.force = True
                self.injected += 1  # this one reaches the wakeup fd too: not the user's
                try:  # a real signal interrupts a blocking call of the main thread
                    signal.pthread_kill(threading.main_thread().ident, signum)
                except (AttributeError, OSError):
                    _thread.interrupt_main(signum)
                return
            time.sleep(0.05)

    def _watch(self, r: int):
        from sgdreg import engine, locking

        try:
            while True:
                data = os.read(r, 64)
                if not data:
                    break
                for signum in data:
                    if signum not in self.old:
                        continue
                    if self.injected:
                        self.injected -= 1
                        continue
                    now = time.monotonic()
                    if self.count and now - self.first_at < DEBOUNCE_S:
                        continue  # the same Ctrl-C delivered twice (process group + direct)
                    self.count += 1
                    first = self.count == 1
                    if first:
                        self.first_at = now
                        engine.request_stop(signum)
                        if engine.stoppable_running():
                            print(f"sgdreg: {_signal_name(signum)}: stopping after the current "
                                  "chunk (again to stop at once)", file=sys.stderr, flush=True)
                        threading.Thread(target=self._grace, args=(signum,), daemon=True,
                                         name="sgdreg-signal-grace").start()
                    else:  # second signal: mark the traces, leave now
                        engine.abort_all()
                        locking.abandon()
                        print(interrupted_message(signum), file=sys.stderr, flush=True)
                        sys.stdout.flush()
                        os._exit(128 + signum)
        finally:
            os.close(r)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def interrupted_message(signum: int | None) -> str:
    """One line: interrupted, and where the partial results are."""
    from sgdreg import engine, locking

    how = "interrupted" if signum in (None, signal.SIGINT) else \
        f"interrupted by {_signal_name(signum)}"
    def has_results(d: Path) -> bool:
        try:
            return any(not locking.is_leftover(p) for p in d.iterdir())
        except OSError:
            return False

    found = [*locking.LOCKED_DIRS, *(Path(p).parent for p in engine.INTERRUPTED)]
    dirs = list(dict.fromkeys(str(d) for d in found if has_results(Path(d))))
    if not dirs:
        return f"sgdreg: {how}; no results were written"
    return (f"sgdreg: {how}; partial results in {', '.join(dirs)} (unfinished traces marked "
            "'interrupted')")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) 0 ok, 1 runtime failure, 2 bad usage/input,
    128 + the signal when stopped by SIGINT (130) or SIGTERM (143)."""
    import jax

    from sgdreg import engine, locking

    # The CLI owns its process: 64-bit mode on, so --dtype float64 works; the library passes
    # explicit dtypes everywhere, so float32 runs stay float32 (sgdreg itself never flips it).
    jax.config.update("jax_enable_x64", True)
    command = typer.main.get_command(app)
    engine.reset_stop()
    locking.LOCKED_DIRS.clear()
    with SignalHandling() as handling:
        try:
            code = _run(command, argv)
        finally:
            handling.raising = False
            locking.release_held()  # the output directories' locks (``locking.hold``)
        if code == 130 or engine.stop_signal() is not None and code not in (0, 2):
            # the framework turns KeyboardInterrupt into 130: say where things are
            sig = engine.stop_signal()
            print(interrupted_message(sig), file=sys.stderr)
            code = 128 + sig if sig is not None else 130
    if argv is None:  # the process is ours: leave without the interpreter's teardown
        sys.stdout.flush()  # (≈ 1 s of module and XLA clean-up; every file is already
        sys.stderr.flush()  # written and fsynced by the atomic writers)
        os._exit(code)
    return code


def _run(command, argv: list[str] | None) -> int:
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
    return code


if __name__ == "__main__":
    main()
