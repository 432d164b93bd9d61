"""Signals, locks and resume (issue 16, points 3 and 4).

SIGINT and SIGTERM at any moment of a real ``sgdreg`` process (during its first compilation,
with the persistent cache off, and during training, single and concurrent runs): exit code
128 + the signal, one line saying where the partial results are, every trace valid with status
``interrupted`` (0 rows allowed), no crash. The signal scenarios run as concurrent processes
started once for the module (their wall time is that of the slowest). One writer per output
directory (``.sgdreg.lock``): a second writer refused with one line, a stale lock taken over,
left-over temp files cleaned. Resuming a finished sweep changes no file; a bad state file fails
with one line before anything is rewritten.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sgdreg_cli.main import main

import sgdreg
from sgdreg import engine, locking, sweep
from sgdreg.errors import LockError

LINEAR = ["--model", "linear", "--dataset", "linreg", "--loss", "mse"]
DEADLINE_S = 240  # generous: a loaded 2-core CI box compiles slowly


class Child:
    """A ``sgdreg`` process whose stderr is collected as it arrives."""

    def __init__(self, args: list[str], out: Path):
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sgdreg_cli.main", *args, "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "SGDREG_NO_CACHE": "1", "JAX_PLATFORMS": "cpu",
                 "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def traces(self) -> list[Path]:
        return sorted(p for p in self.out.glob("**/*.json") if _is_trace(p))

    def rows(self) -> list[int]:
        out = []
        for p in self.traces():
            try:
                out.append(len(json.loads(p.read_text())["metrics"]["step"]))
            except (OSError, ValueError, KeyError):
                out.append(0)
        return out

    def finish(self) -> dict:
        try:
            self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        return {"rc": self.proc.returncode, "err": list(self.lines), "out": self.out,
                "traces": self.traces()}


def _is_trace(p: Path) -> bool:
    try:
        return json.loads(p.read_text()).get("schema") == sgdreg.trace.SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _until(cond, child: Child, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened (rc {child.proc.poll()}): "
                                 + " | ".join(child.lines[-5:]))
        time.sleep(0.05)


SCENARIOS = {
    # (signal, when, command)
    "int-compiling": (signal.SIGINT, "compiling", ["train", "--optimizer", "gd", *LINEAR,
                                                   "--steps", "100000", "--log-every", "50"]),
    "term-compiling": (signal.SIGTERM, "compiling", ["train", "--optimizer", "gd", *LINEAR,
                                                     "--steps", "100000", "--log-every", "50"]),
    "int-training": (signal.SIGINT, "training", ["train", "--optimizer", "gd", *LINEAR,
                                                 "--steps", "1000000", "--log-every", "50"]),
    "term-training": (signal.SIGTERM, "training", ["train", "--optimizer", "gd", *LINEAR,
                                                   "--steps", "1000000", "--log-every", "50"]),
    "int-concurrent": (signal.SIGINT, "training", ["compare", "--optimizers", "gd,sgd", *LINEAR,
                                                   "--no-curvature", "--steps", "1000000",
                                                   "--log-every", "50"]),
    # a second Ctrl-C (0.5 s later) ends the process at once
    "int-twice": (signal.SIGINT, "compiling", ["train", "--optimizer", "gd", *LINEAR,
                                               "--steps", "100000", "--log-every", "50"]),
}


@pytest.fixture(scope="module")
def signalled(tmp_path_factory):
    """Every scenario of ``SCENARIOS`` run at once: each process gets its signal when the
    "compiling" line appears (the first compilation, cache off) or once every run's trace has
    two rows (training); then the outcome of each."""
    root = tmp_path_factory.mktemp("signals")
    children = {name: Child(args, root / name) for name, (_, _, args) in SCENARIOS.items()}
    runs = {name: 2 if "compare" in args else 1 for name, (_, _, args) in SCENARIOS.items()}
    pending = dict(children)
    deadline = time.monotonic() + DEADLINE_S
    while pending and time.monotonic() < deadline:
        for name, child in list(pending.items()):
            sig, when, _ = SCENARIOS[name]
            if child.proc.poll() is not None:
                pending.pop(name)  # ended on its own: reported below
                continue
            if when == "compiling":
                ready = any("compiling" in line for line in child.lines)
            else:
                rows = child.rows()
                ready = len(rows) == runs[name] and min(rows) >= 2
            if ready:
                child.proc.send_signal(sig)
                pending.pop(name)
                if name.endswith("twice"):
                    threading.Timer(0.5, lambda p=child.proc, s=sig: p.poll() is None
                                    and p.send_signal(s)).start()
        time.sleep(0.05)
    for child in pending.values():
        child.proc.kill()
    return {name: child.finish() for name, child in children.items()}


def _check_interrupted(res: dict, sig: int, min_rows: int):
    assert res["rc"] is not None and res["rc"] >= 0, f"crashed: {res['rc']} {res['err'][-3:]}"
    assert res["rc"] == 128 + sig, res["err"][-5:]
    said = [line for line in res["err"] if line.startswith("sgdreg: interrupted")]
    assert len(said) == 1 and str(res["out"]) in said[0], res["err"]
    assert not any("Traceback" in line or "Fatal Python" in line for line in res["err"])
    assert res["traces"], f"no trace in {res['out']}: {res['err']}"
    for path in res["traces"]:
        doc = json.loads(path.read_text())
        assert sgdreg.validate_trace(doc) == [], (path, sgdreg.validate_trace(doc))
        assert doc["status"] == "interrupted", (path, doc["status"])
        assert len(doc["metrics"]["step"]) >= min_rows
        assert "SIGTERM" in doc["status_detail"] if sig == signal.SIGTERM else True
    assert not list(res["out"].glob("**/*.tmp")) and not (res["out"] / locking.LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["int", "term"])
def test_signal_during_the_first_compilation_leaves_an_interrupted_trace(signalled, sig):
    """Before the first chunk has compiled: 0 rows are allowed, the trace is still valid."""
    res = signalled[f"{sig}-compiling"]
    _check_interrupted(res, signal.SIGINT if sig == "int" else signal.SIGTERM, 0)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["int", "term"])
def test_signal_during_training_stops_at_the_next_chunk(signalled, sig):
    res = signalled[f"{sig}-training"]
    _check_interrupted(res, signal.SIGINT if sig == "int" else signal.SIGTERM, 2)


@pytest.mark.slow
def test_ctrl_c_during_a_concurrent_compare_marks_every_run(signalled):
    """GD and SGD train concurrently (one thread each): both stop at their next chunk."""
    res = signalled["int-concurrent"]
    _check_interrupted(res, signal.SIGINT, 2)
    assert len(res["traces"]) == 2


@pytest.mark.slow
def test_a_second_signal_ends_the_process_at_once(signalled):
    """Whatever the first signal was waiting for: exit 130 with the one line, no lock left,
    and any trace already written valid and 'interrupted'."""
    res = signalled["int-twice"]
    assert res["rc"] == 130, res["err"][-5:]
    said = [line for line in res["err"] if line.startswith("sgdreg: interrupted")]
    assert len(said) == 1, res["err"]
    for path in res["traces"]:
        doc = json.loads(path.read_text())
        assert sgdreg.validate_trace(doc) == [] and doc["status"] == "interrupted"
    assert not (res["out"] / locking.LOCK_NAME).exists()


def test_stop_flag_before_the_first_chunk_gives_a_valid_empty_trace(tmp_path):
    """The library: ``STOP`` set (as the CLI's handler does) → an 'interrupted' trace with 0
    rows, then KeyboardInterrupt; the flag is the CLI's to clear."""
    cfg = sgdreg.RunConfig(optimizer="gd", model="linear", dataset="linreg", loss="mse",
                           steps=10, log_every=5)
    engine.reset_stop()
    engine.request_stop(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):
            sgdreg.train(cfg, trace_path=tmp_path / "t.json")
    finally:
        engine.reset_stop()
    doc = sgdreg.load_trace(tmp_path / "t.json")
    assert doc["status"] == "interrupted" and doc["metrics"]["step"] == []
    assert doc["status_detail"] == "stopped by SIGTERM"


# ---------------------------------------------------------------- locks


def _errors(capsys) -> list[str]:
    """The error lines on stderr (the CLI's validation pass puts nothing before them)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgdreg:")]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _write_lock(d: Path, pid: int, host: str | None = None):
    d.mkdir(parents=True, exist_ok=True)
    (d / locking.LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": host or locking.host(), "command": "sweep",
         "started": "2026-01-01T00:00:00+0000"}))
    old = time.time() - 60
    os.utime(d / locking.LOCK_NAME, (old, old))


def test_a_second_writer_is_refused_with_one_line(tmp_path, capsys):
    import fcntl

    d = tmp_path / "busy"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(d, holder.pid)
        fd = os.open(d / locking.LOCK_NAME, os.O_RDWR)  # held the way a live writer holds it
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with pytest.raises(LockError, match=f"pid {holder.pid}"):
                with locking.output_lock(d, "compare"):
                    pass
            with pytest.raises(LockError):
                locking.check_unlocked(d)
            grid = tmp_path / "g.toml"
            grid.write_text('[base]\ndataset = "linreg"\nmodel = "linear"\nloss = "mse"\n'
                            'optimizer = "gd"\nsteps = 4\nlog_every = 2\n[grid]\nlr = [0.1]\n')
            capsys.readouterr()
            assert main(["sweep", str(grid), "--out", str(d)]) == 2
            err = _errors(capsys)
            assert len(err) == 1 and str(d) in err[0] and f"pid {holder.pid}" in err[0], err
        finally:
            os.close(fd)
        # a live pid without the flock (pid reuse, or not ours): still refused, conservatively
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            with locking.output_lock(d, "compare"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in d.iterdir()) == [locking.LOCK_NAME]  # nothing else touched


def test_a_stale_lock_is_taken_over_and_temp_files_are_cleaned(tmp_path):
    d = tmp_path / "stale"
    _write_lock(d, _dead_pid())
    (d / "traces").mkdir()
    left = [d / ".sweep.json.a1b2c3d4.tmp", d / "traces" / ".r.json.zz_9x8y7.tmp"]
    for p in left:
        p.write_text("{half")
    (d / "mine.tmp").write_text("not sgdreg's")  # not an atomic writer's temp name: kept
    locking.check_unlocked(d)  # stale: passes
    with locking.output_lock(d, "train"):
        held = locking.read_lock(d)
        assert held["pid"] == os.getpid() and held["command"] == "train"
        assert not any(p.exists() for p in left) and (d / "mine.tmp").exists()
        with locking.output_lock(d, "train"):  # re-entrant in one process
            pass
        assert (d / locking.LOCK_NAME).exists()
    assert not (d / locking.LOCK_NAME).exists()


def test_lock_is_released_on_error_and_an_unused_directory_removed(tmp_path):
    d = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with locking.output_lock(d, "compare"):
            assert (d / locking.LOCK_NAME).exists()
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()  # created for the lock, nothing written: removed
    with locking.output_lock(d, "compare"):
        (d / "x.json").write_text("{}")
    assert sorted(p.name for p in d.iterdir()) == ["x.json"]


# ---------------------------------------------------------------- sweep resume


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    grid = root / "g.toml"
    grid.write_text('name = "tiny"\n[base]\ndataset = "linreg"\nmodel = "linear"\n'
                    'loss = "mse"\noptimizer = "gd"\nsteps = 4\nlog_every = 2\n'
                    "[grid]\nlr = [0.05, 0.1]\n")
    out = root / "out"
    res = sweep.run_sweep(grid, out, devices=1)
    assert res.index["status"] == "completed"
    return grid, out


def test_resuming_a_finished_sweep_changes_no_file(finished_sweep, capsys):
    grid, out = finished_sweep
    before = _snapshot(out)
    wall = json.loads((out / "sweep.json").read_text())["wall_time_s"]
    events = []
    res = sweep.run_sweep(grid, out, resume=True, devices=1, progress=events.append)
    assert events == [] and res.index["wall_time_s"] == wall
    assert [t["status"] for t in res.traces] == ["completed"] * 2
    assert main(["sweep", str(grid), "--out", str(out), "--resume"]) == 0
    assert _snapshot(out) == before


def test_resume_with_a_bad_state_file_fails_before_rewriting_anything(finished_sweep, tmp_path,
                                                                       capsys):
    import shutil

    grid, done = finished_sweep
    cases = {
        "garbage index": ("sweep.json", lambda t: "{not json"),
        "garbage group file": ("checkpoints/group-000.json", lambda t: "[1, 2"),
        "missing state file": ("checkpoints/group-000.json", lambda t: json.dumps(
            {**json.loads(t), "finished": False, "state_file": "group-000.c00001.eqx"})),
        "truncated rows": ("checkpoints/group-000.json", lambda t: json.dumps(
            {**json.loads(t), "rows_bytes": json.loads(t)["rows_bytes"] + 100})),
    }
    for name, (rel, change) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        shutil.copytree(done, out)
        index = json.loads((out / "sweep.json").read_text())
        if rel != "sweep.json":  # an unfinished sweep (as a kill leaves it)
            (out / "sweep.json").write_text(json.dumps({**index, "status": "running"}))
        (out / rel).write_text(change((out / rel).read_text()))
        before = _snapshot(out)
        capsys.readouterr()
        assert main(["sweep", str(grid), "--out", str(out), "--resume"]) == 2, name
        err = _errors(capsys)
        assert len(err) == 1 and str(out) in err[0], (name, err)
        assert _snapshot(out) == before, name


def test_a_second_sweep_with_another_grid_into_the_same_out_is_refused(finished_sweep,
                                                                       tmp_path, capsys):
    grid, out = finished_sweep
    other = tmp_path / "other.toml"
    other.write_text(grid.read_text().replace("[0.05, 0.1]", "[0.2, 0.3, 0.4]"))
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["sweep", str(other), "--out", str(out)]) == 2
    assert main(["sweep", str(other), "--out", str(out), "--resume"]) == 2
    err = _errors(capsys)
    assert len(err) == 2 and all(str(out) in line for line in err), err
    assert _snapshot(out) == before


@pytest.mark.slow
def test_interrupted_sweep_resumes_from_its_last_chunk(tmp_path):
    """SIGINT during a sweep (a real process): exit 130, every started run's trace
    'interrupted', the lock released; --resume continues from the last commit and finishes with
    every row once."""
    grid = tmp_path / "g.toml"
    grid.write_text('name = "sig"\n[base]\ndataset = "linreg"\nmodel = "linear"\n'
                    'loss = "mse"\noptimizer = "gd"\nsteps = 400000\nlog_every = 2000\n'
                    "[grid]\nlr = [0.05, 0.1]\n")
    out = tmp_path / "out"
    child = Child(["sweep", str(grid)], out)
    rows = out / "checkpoints" / "group-000.rows.jsonl"
    _until(lambda: rows.exists() and rows.read_bytes().count(b"\n") >= 3, child, "3 chunks")
    child.proc.send_signal(signal.SIGINT)
    res = child.finish()
    assert res["rc"] == 130, res["err"][-5:]
    assert sum(line.startswith("sgdreg: interrupted") for line in res["err"]) == 1
    assert not (out / locking.LOCK_NAME).exists()
    for path in res["traces"]:
        doc = sgdreg.load_trace(path)
        assert doc["status"] == "interrupted" and len(doc["metrics"]["step"]) >= 3
    committed = json.loads((out / "checkpoints" / "group-000.json").read_text())["step"]
    events = []
    done = sweep.run_sweep(grid, out, resume=True, devices=1, progress=events.append)
    assert events[0]["step"] == committed + 2000  # continued after its last commit
    steps = list(range(0, 400001, 2000))
    assert [t["metrics"]["step"] for t in done.traces] == [steps, steps]
    assert done.index["status"] == "completed"
