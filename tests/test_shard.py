"""Sweeps across processes (issue 14, item 3): ``--shard i/N`` slices, a shared output directory,
the merged index and ``--status``, the checks on bad input, and two concurrent shard processes
killed (SIGKILL) and rerun giving the unsharded sweep's results.

The rule under test (``sgdreg.sweep.shard``): runs sorted by (sha256 of the config as canonical
JSON, grid index), dealt round-robin, position p → shard p mod N.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sgdreg_cli.main import main

from sgdreg import sweep
from sgdreg.config import ConfigError
from sgdreg.sweep import shard as sh

BASE = {"dataset": "linreg", "model": "linear", "loss": "mse", "optimizer": "sgd",
        "batch_size": 8, "log_every": 2, "dtype": "float64"}
GRID = {"steps": [4, 6], "seed": [0, 1, 2], "lr": [0.05, 0.1]}  # 2 groups × 6 runs


def toml_text(name, base, grid):
    lines = [f"name = {json.dumps(name)}", "[base]",
             *(f"{k} = {json.dumps(v)}" for k, v in base.items()),
             "[grid]", *(f"{k} = {json.dumps(v)}" for k, v in grid.items())]
    return "\n".join(lines) + "\n"


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _metrics(out: Path, index: dict) -> dict:
    return {r["run_id"]: json.loads((out / r["trace"]).read_text())["metrics"]
            for r in index["runs"]}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The grid run unsharded and as 3 shards one after another into one directory."""
    root = tmp_path_factory.mktemp("shards")
    grid = root / "g.toml"
    grid.write_text(toml_text("shards", BASE, GRID))
    ref = sweep.run_sweep(grid, root / "full", devices=1)
    results = [sweep.run_sweep(grid, root / "sharded", devices=1, shard=(i, 3))
               for i in range(3)]
    return grid, root / "full", ref, root / "sharded", results


def test_the_rule_is_deterministic_balanced_and_covers_every_run():
    plan = sweep.plan_sweep({"base": BASE, "grid": GRID})
    keys = [hashlib.sha256(json.dumps(r.config, sort_keys=True, separators=(",", ":"))
                           .encode()).hexdigest() for r in plan.runs]
    assert [sweep.config_hash(r.config) for r in plan.runs] == keys
    assert sweep.config_hash(plan.runs[3].cfg) == keys[3]  # a RunConfig: the same key
    order = sorted(range(len(keys)), key=lambda k: (keys[k], k))
    for n in (1, 2, 3, 5, 12, 20):
        shard_of = sweep.assignment(plan, n)
        assert shard_of == [order.index(k) % n for k in range(len(keys))]
        sizes = [shard_of.count(i) for i in range(n)]
        assert sum(sizes) == 12 and max(sizes) - min(sizes) <= 1
        parts = [sweep.shard_plan(plan, i, n) for i in range(n)]
        runs = sorted(k for p in parts for g in p.groups for k in g.runs)
        assert runs == list(range(12))  # each run in exactly one shard
        for p in parts:
            for g in p.groups:  # the whole group's size and data sharing kept
                assert g.runs and g.full_size == 6 and g.shared_data == plan.groups[g.id].shared_data
    assert sweep.parse_shard(" 2/8 ") == (2, 8)
    for bad in ("8/8", "1/0", "-1/4", "a/b", "1", "1/2/3", "", "0.5/2"):
        with pytest.raises(ConfigError, match="--shard"):
            sweep.parse_shard(bad)
    with pytest.raises(ConfigError, match="0 ≤ i < N"):
        sh.check_shard((3, 3))


@pytest.mark.slow  # the first compilation of the sweep program: ~5 s idle, ~20 s loaded
def test_shards_into_one_directory_equal_the_unsharded_sweep(sharded):
    grid, full, ref, out, results = sharded
    assert [len(r.traces) for r in results] == [4, 4, 4]
    assert sorted(t["run_id"] for r in results for t in r.traces) == sorted(
        t["run_id"] for t in ref.traces)
    index = json.loads((out / "sweep.json").read_text())
    assert index == results[-1].index and index["status"] == "completed"
    assert [r["run_id"] for r in index["runs"]] == [t["run_id"] for t in ref.traces]
    assert _metrics(out, index) == {t["run_id"]: t["metrics"] for t in ref.traces}  # bit for bit
    for r, f in zip(index["runs"], ref.index["runs"]):
        assert r["summary"] == f["summary"] and r["status"] == f["status"] == "completed"
    manifest = json.loads((out / "shards.json").read_text())
    assert manifest["num_shards"] == 3 and manifest["block"] is None
    assert [r["shard"] for r in manifest["runs"]] == [r["shard"] for r in index["runs"]]
    for r in index["runs"]:
        tr = json.loads((out / r["trace"]).read_text())
        assert tr["sweep"]["shard"] == [r["shard"], 3] and tr["sweep"]["block"] == 6
    assert len((out / "summary.csv").read_text().splitlines()) == 13
    assert sorted(p.name for p in (out / "shards").iterdir()) == [".index.lock", "0-of-3",
                                                                  "1-of-3", "2-of-3"]
    assert not list(out.rglob("*.eqx")) and not list(out.rglob("*.tmp"))
    assert not list(out.rglob(".sgdreg.lock"))
    # --status of the unsharded sweep: the same runs and numbers, read from its commits
    status = sweep.sweep_status(grid, full)
    assert status["sharding"] is None and status["counts"] == {"completed": 12}
    assert [r["summary"] for r in status["runs"]] == [r["summary"] for r in index["runs"]]


@pytest.mark.slow
def test_rerunning_a_finished_shard_runs_and_writes_nothing(sharded, capsys):
    grid, _, _, out, _ = sharded
    before = _snapshot(out)
    events = []
    res = sweep.run_sweep(grid, out, devices=1, shard=(1, 3), progress=events.append)
    assert events == [] and len(res.traces) == 4
    assert main(["sweep", str(grid), "--out", str(out), "--shard", "2/3"]) == 0
    assert _snapshot(out) == before
    # a kill between a group's last commit and its traces: the rerun rewrites them (only them)
    mine = [t["run_id"] for t in res.traces]
    gone, stale = out / "traces" / f"{mine[0]}.json", out / "traces" / f"{mine[1]}.json"
    gone.unlink()
    doc = json.loads(stale.read_text())
    stale.write_text(json.dumps({**doc, "status": "running"}))
    sweep.run_sweep(grid, out, devices=1, shard=(1, 3))
    after = _snapshot(out)
    assert {k for k in after if after[k] != before.get(k)} == {
        f"traces/{mine[0]}.json", f"traces/{mine[1]}.json"}
    assert [json.loads((out / "traces" / f"{m}.json").read_text())["status"]
            for m in mine[:2]] == ["completed"] * 2


def _commit(root: Path, group: int, runs: list[int], rows: dict, *, finished: bool):
    """A group commit as ``run._Sweep._commit`` leaves it: the rows file, then the group file."""
    ck = root / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    steps = sorted({row["step"] for rs in rows.values() for row in rs})
    lines = b"".join((json.dumps([[i, row] for i in runs for row in rows[i]
                                  if row["step"] == st]) + "\n").encode() for st in steps)
    (ck / f"group-{group:03d}.rows.jsonl").write_bytes(lines + b"[[0, {\"step\": 99}]]")
    status = "completed" if finished else "running"
    (ck / f"group-{group:03d}.json").write_text(json.dumps({
        "schema": sweep.GROUP_SCHEMA, "group": group, "runs": runs, "block": 6,
        "step": steps[-1], "chunk": len(steps) - 1, "finished": finished,
        "state_file": None if finished else f"group-{group:03d}.c00001.eqx",
        "rows_bytes": len(lines), "wall_time_s": 1.5,
        "run_status": [{"status": status, "detail": None, "diverged_step": None}] * len(runs)}))


def test_status_merges_what_the_shards_committed(tmp_path, capsys):
    """Shard 0 finished, shard 1 killed mid-group (its state file gone too), shard 2 never
    started: every run once, with the status and summary its shard committed (rows past the
    committed length ignored); --status writes nothing."""
    grid = tmp_path / "g.toml"
    grid.write_text(toml_text("shards", BASE, GRID))
    plan = sweep.plan_sweep(grid)
    out = tmp_path / "out"
    sh.ensure_manifest(out, plan, 3, None)
    parts = [sweep.shard_plan(plan, i, 3) for i in range(3)]

    def rows(i, last):
        return [{"step": st, "t": st * 0.1, "train_loss": 1.0 / (1 + st + i),
                 "train_acc": 1.0 if st >= 4 else 0.5} for st in range(0, last + 1, 2)]

    expect = {}
    for k, finished in ((0, True), (1, False)):
        for g in parts[k].groups:
            last = plan.runs[g.runs[0]].cfg.steps if finished else 2
            _commit(sh.shard_dir(out, k, 3), g.id, g.runs, {i: rows(i, last) for i in g.runs},
                    finished=finished)
            for i in g.runs:
                expect[i] = ("completed" if finished else "interrupted", last)
    for g in parts[2].groups:
        expect.update({i: ("pending", None) for i in g.runs})
    before = _snapshot(out)
    st = sweep.sweep_status(grid, out)
    assert {r["index"]: (r["status"], r["step"]) for r in st["runs"]} == expect
    assert [r["index"] for r in st["runs"]] == list(range(12))
    for r in st["runs"]:
        if r["step"] is not None:
            assert r["summary"]["train_loss"] == 1.0 / (1 + r["step"] + r["index"])
            assert r["summary"]["steps_to_fit"] == (4 if r["step"] >= 4 else None)
        assert r["shard"] == sweep.assignment(plan, 3)[r["index"]]
    assert st["status"] == "incomplete" and st["sharding"]["num_shards"] == 3
    assert [s["status"] for s in st["shards"]] == ["completed", "interrupted", "pending"]
    statuses = [v[0] for v in expect.values()]
    assert st["counts"] == {s: statuses.count(s) for s in ("completed", "interrupted", "pending")}
    assert st["wall_time_s"] == 1.5 * (len(parts[0].groups) + len(parts[1].groups))
    assert "rerun it" in next(r for r in st["runs"] if r["status"] == "interrupted")[
        "status_detail"]
    capsys.readouterr()
    assert main(["sweep", str(grid), "--out", str(out), "--status", "--json"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == json.loads(json.dumps(st))
    assert _snapshot(out) == before  # --status writes nothing


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sgdreg: error")]


def test_bad_shard_input_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys):
    """Every check runs before anything is written: a directory some shards started (its
    manifest) and one holding an unsharded sweep are left as they were."""
    grid = tmp_path / "g.toml"
    grid.write_text(toml_text("shards", BASE, GRID))
    out, full = tmp_path / "sharded", tmp_path / "full"
    sh.ensure_manifest(out, sweep.plan_sweep(grid), 3, None)
    full.mkdir()
    (full / "sweep.json").write_text("{}")
    other = tmp_path / "other.toml"
    other.write_text(toml_text("shards", BASE, {**GRID, "lr": [0.05, 0.2]}))
    before, before_full = _snapshot(out), _snapshot(full)
    cases = {
        "i = N": ["--shard", "3/3"], "i < 0": ["--shard", "-1/3"], "N = 0": ["--shard", "0/0"],
        "malformed": ["--shard", "one/3"], "other N": ["--shard", "0/4"],
        "other block": ["--shard", "0/3", "--block", "2"],
        "overwrite": ["--shard", "0/3", "--overwrite"],
        "unsharded resume": ["--resume"], "unsharded": [],
        "status with shard": ["--status", "--shard", "0/3"],
    }
    for name, args in cases.items():
        capsys.readouterr()
        assert main(["sweep", str(grid), "--out", str(out), *args]) == 2, name
        err = _errors(capsys)
        assert len(err) == 1, (name, err)
    assert main(["sweep", str(other), "--out", str(out), "--shard", "1/3"]) == 2
    assert "grid differs" in _errors(capsys)[0]
    assert main(["sweep", str(other), "--out", str(out), "--status"]) == 2
    assert "grid differs" in _errors(capsys)[0]
    assert main(["sweep", str(grid), "--out", str(full), "--shard", "0/2"]) == 2
    assert "without --shard" in _errors(capsys)[0]
    assert main(["sweep", str(grid), "--out", str(tmp_path / "none"), "--status"]) == 2
    assert main(["sweep", str(grid), "--shard", "0/2"]) == 2  # no --out
    assert len(_errors(capsys)) == 2
    with pytest.raises(ConfigError, match="0 ≤ i < N"):
        sweep.run_sweep(grid, out, devices=1, shard=(5, 3))
    with pytest.raises(ConfigError, match="N = 3"):
        sweep.run_sweep(grid, out, devices=1, shard=(0, 2))
    with pytest.raises(ConfigError, match="sharded sweep"):
        sweep.run_sweep(grid, out, devices=1, resume=True)
    assert _snapshot(out) == before and _snapshot(full) == before_full
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------- two processes, SIGKILL

KILL_BASE = {**BASE, "optimizer": "momentum", "momentum": 0.9, "log_every": 2}
KILL_GRID = {"steps": [40, 60], "seed": [0, 1], "lr": [0.01, 0.02]}  # 2 groups × 4 runs


def _shard_process(grid: Path, out: Path, spec: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sgdreg_cli.main", "sweep", str(grid), "--out", str(out),
         "--shard", spec, "--devices", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SGDREG_NO_CACHE": "1", "JAX_PLATFORMS": "cpu",
             "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})


def _committed_step(path: Path) -> int:
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow  # ~20-60 s: two CLI processes, then the reference sweep
def test_two_concurrent_shards_killed_anywhere_and_rerun_equal_the_unsharded_sweep(tmp_path):
    """Shards 0/2 and 1/2 run at once into one directory; shard 0 is SIGKILLed in the middle of
    a group while shard 1 goes on. Meanwhile every read of the merged index is complete JSON
    with each run once. Rerunning shard 0 continues from its last commit; then the directory
    holds the unsharded sweep's traces bit for bit, each row once, and the index merges both."""
    grid = tmp_path / "kill.toml"
    grid.write_text(toml_text("kill", KILL_BASE, KILL_GRID))
    out = tmp_path / "out"
    procs = [_shard_process(grid, out, f"{i}/2") for i in (0, 1)]
    manifest_runs = None
    target, steps = None, 0
    seen_index = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline and procs[0].poll() is None:
            if manifest_runs is None and (out / "shards.json").exists():
                manifest_runs = json.loads((out / "shards.json").read_text())["runs"]
                groups = sorted({r["index"] // 4 for r in manifest_runs if r["shard"] == 0})
                target = out / "shards" / "0-of-2" / "checkpoints" / f"group-00{groups[-1]}.json"
                steps = KILL_GRID["steps"][groups[-1]]
            if (out / "sweep.json").exists():  # a concurrent reader: never half a file
                idx = json.loads((out / "sweep.json").read_text())
                assert sorted(r["index"] for r in idx["runs"]) == list(range(8))
                seen_index += 1
            if target is not None and _committed_step(target) >= 10:
                break  # mid-group (the last group shard 0 runs: 40 or 60 steps)
            time.sleep(0.005)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        assert 10 <= _committed_step(target) < steps, "shard 0 was not killed mid-group"
        err1 = procs[1].communicate(timeout=240)[1]
        assert procs[1].returncode == 0, err1[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert seen_index > 0
    killed_at = _committed_step(target)
    st = sweep.sweep_status(grid, out)
    assert [s["status"] for s in st["shards"]] == ["interrupted", "completed"]
    assert st["status"] == "incomplete" and st["counts"]["completed"] >= 4
    assert any(r["status"] == "interrupted" and r["step"] == killed_at for r in st["runs"])

    events = []
    rerun = sweep.run_sweep(grid, out, devices=1, shard=(0, 2), progress=events.append)
    assert events and events[0]["step"] == killed_at + 2  # continued after its last commit
    ref = sweep.run_sweep(grid, tmp_path / "ref", devices=1)
    index = json.loads((out / "sweep.json").read_text())
    assert index == rerun.index and index["status"] == "completed"
    assert [s["status"] for s in index["shards"]] == ["completed", "completed"]
    assert _metrics(out, index) == {t["run_id"]: t["metrics"] for t in ref.traces}
    for r in index["runs"]:  # every row once
        steps = json.loads((out / r["trace"]).read_text())["metrics"]["step"]
        assert steps == list(range(0, r["config"]["steps"] + 1, 2))
    assert [r["summary"] for r in index["runs"]] == [r["summary"] for r in ref.index["runs"]]
    assert len((out / "summary.csv").read_text().splitlines()) == 9
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".sgdreg.lock"))
    assert not list(out.rglob("*.eqx"))
