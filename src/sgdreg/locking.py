"""One writer per output directory: ``<dir>/.sgdreg.lock``.

``output_lock(dir, command)`` is held by every command that writes an output directory (compare,
train, sweep, the experiment commands) for as long as it writes there. The lock file is created
atomically (``O_CREAT | O_EXCL``) and holds ``{"pid", "host", "command", "started"}``; where the
OS has ``flock`` the holder also keeps an exclusive ``flock`` on it (released by the kernel when
the process dies, whatever kills it). A second writer gets ``LockError`` (one line naming the
directory and the holder's pid; the CLI exits with code 2). A stale lock, left by a process that
was killed (same host and the pid no longer alive, ``os.kill(pid, 0)``; never a lock whose
``flock`` is still held), is taken over. The lock is released on exit, exceptions included.

On acquiring, left-over temp files of the atomic writers (``.<name>.XXXXXXXX.tmp``, see
``trace.atomic_write_bytes``) under the directory are removed: a process killed mid-write leaves
one, and no other sgdreg process writes there while we hold the lock.

The lock is re-entrant within a process (the CLI and ``run_sweep`` may both take it).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .errors import LockError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: pid check only)
    fcntl = None

LOCK_NAME = ".sgdreg.lock"
TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=".<name>.")

_held: dict[Path, int] = {}  # directory (resolved) → nesting depth, in this process
_guard = threading.Lock()
LOCKED_DIRS: list[Path] = []  # every directory this process locked (as given), for messages


def holding() -> bool:
    """Whether this process holds an output directory's lock now."""
    with _guard:
        return bool(_held)


def host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (``os.kill(pid, 0)``)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_lock(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The holder recorded in ``directory``'s lock file (None: no lock file or not readable)."""
    try:
        doc = json.loads((Path(directory) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_leftover(path: str | os.PathLike) -> bool:
    """A file sgdreg leaves only when killed: its lock file or an atomic writer's temp file
    (an otherwise empty directory holding only these counts as empty)."""
    name = Path(path).name
    return name == LOCK_NAME or bool(TEMP_PATTERN.match(name))


def _describe(directory: Path, holder: dict | None) -> str:
    if not holder:
        return (f"{directory} is locked by another sgdreg process (lock file "
                f"{directory / LOCK_NAME} being written); wait for it or choose another --out")
    where = "" if holder.get("host") == host() else f" on host {holder.get('host')}"
    return (f"{directory} is in use by another sgdreg process (pid {holder.get('pid')}{where}, "
            f"{holder.get('command')}, since {holder.get('started')}); wait for it to finish, "
            f"choose another --out, or delete {directory / LOCK_NAME} if that process is gone")


def _stale(holder: dict | None) -> bool:
    """A lock whose writer is dead: same host and its pid not alive."""
    return bool(holder) and holder.get("host") == host() and not pid_alive(holder.get("pid"))


def check_unlocked(directory: str | os.PathLike) -> None:
    """``LockError`` if a live process holds ``directory``'s lock (creates nothing; for the
    validation pass before anything is written). A stale lock passes (``output_lock`` takes it
    over)."""
    d = Path(directory)
    path = d / LOCK_NAME
    if not path.exists():
        return
    with _guard:
        if _key(d) in _held:  # ours
            return
    if fcntl is not None and not _flock_free(path):
        raise LockError(_describe(d, read_lock(d)))
    holder = read_lock(d)
    if holder is None:  # being written by its creator, or garbage left by a crash
        try:
            young = time.time() - path.stat().st_mtime < 2.0
        except OSError:
            return
        if young:
            raise LockError(_describe(d, None))
        return
    if not _stale(holder):
        raise LockError(_describe(d, holder))


def _flock_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _key(d: Path) -> Path:
    return Path(os.path.abspath(d))


def clean_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove atomic writers' left-over temp files under ``directory`` (call it only while
    holding the directory's lock); returns what was removed."""
    removed = []
    for p in Path(directory).rglob(".*.tmp"):
        if p.is_file() and TEMP_PATTERN.match(p.name):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _write_info(fd: int, command: str) -> None:
    info = {"pid": os.getpid(), "host": host(), "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _acquire(d: Path, command: str) -> int:
    """The open, flocked (where possible) lock file's descriptor, holding our record."""
    path = d / LOCK_NAME
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            pass
        else:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fresh inode: cannot be held
            _write_info(fd, command)
            return fd
        # a lock file exists: live holder, one being created, or a stale one to take over
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # released meanwhile: try again
            continue
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: the writer is alive
                os.close(fd)
                raise LockError(_describe(d, read_lock(d))) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (unlinked) between our open and flock: try again
                os.close(fd)
                continue
        holder = read_lock(d)
        if holder is None and time.time() - os.fstat(fd).st_mtime < 2.0:
            os.close(fd)  # being written by its creator right now
            time.sleep(0.05)
            continue
        if holder is not None and not _stale(holder) and (
                fcntl is None or holder.get("host") != host()):
            os.close(fd)
            raise LockError(_describe(d, holder))
        if holder is not None and holder.get("host") == host() and pid_alive(holder.get("pid")):
            # pid alive but no flock held: the pid was reused, or the holder is not sgdreg's;
            # be conservative
            os.close(fd)
            raise LockError(_describe(d, holder))
        _write_info(fd, command)  # stale (or empty and old): take it over
        return fd
    raise LockError(_describe(d, read_lock(d)))


@contextmanager
def output_lock(directory: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``directory``'s lock (creating the directory) while the body writes there; removes
    left-over temp files on acquiring. ``LockError`` if another live process holds it.

    Example:
        >>> with output_lock(out, "compare"):                   # doctest: +SKIP
        ...     run_grid(...)
    """
    d = Path(directory)
    key = _key(d)
    with _guard:
        if key in _held:  # re-entrant within this process
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield d
        finally:
            with _guard:
                _held[key] -= 1
        return
    created = []
    p = key
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    d.mkdir(parents=True, exist_ok=True)
    fd = _acquire(d, command)
    with _guard:
        _held[key] = 1
    LOCKED_DIRS.append(d)
    try:
        clean_temp_files(d)
        yield d
    finally:
        with _guard:
            _held.pop(key, None)
        try:
            if os.fstat(fd).st_ino == os.stat(d / LOCK_NAME).st_ino:
                os.unlink(d / LOCK_NAME)
        except OSError:
            pass
        os.close(fd)  # releases the flock
        for c in created:  # directories we made and nothing was written to
            try:
                c.rmdir()
            except OSError:
                break


_process_locks = ExitStack()


def hold(directory: str | os.PathLike, command: str = "sgdreg") -> Path:
    """``output_lock(directory, command)`` taken now and held until ``release_held()`` (the CLI
    calls it when the command ends, whatever the outcome): for code that creates an output
    directory in a plain function (``make_output``)."""
    return _process_locks.enter_context(output_lock(directory, command))


def release_held() -> None:
    """Release every lock taken with ``hold``."""
    global _process_locks
    stack, _process_locks = _process_locks, ExitStack()
    stack.close()


def abandon() -> None:
    """Remove the lock files this process holds, now (it is about to end with ``os._exit``,
    which runs no clean-up): the directories are free at once instead of holding a stale lock."""
    with _guard:
        dirs = list(_held)
    for d in dirs:
        lock = read_lock(d)
        if lock is not None and lock.get("pid") == os.getpid():
            try:
                (d / LOCK_NAME).unlink()
            except OSError:
                pass
