"""Output conventions (issue 11, item 5): results on stdout and messages on stderr, files with the
user's umask, --version / python -m sgdreg, trace folders, parquet, the persistent compile cache,
per-epoch logging by default and run names."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from sgdreg_cli.core import auto_hessian_every, default_log_every
from sgdreg_cli.main import main

import sgdreg
from sgdreg.config import RunConfig
from sgdreg.errors import TraceError
from sgdreg.trace import SCHEMA, TraceWriter, atomic_write_json, load_traces
from sgdreg.training import run_id

TINY = ["--steps", "6", "--n-train", "96", "--width", "8"]


def write_trace(path, rid, optimizer="gd", rows=3):
    w = TraceWriter(path, {"run_id": rid, "config": {"optimizer": optimizer, "lr": 0.1},
                           "versions": {}, "device": {}, "seed": 0})
    for k in range(rows):
        w.append({"step": 10 * k, "t": k * 1.0, "train_loss": 1.0 / (k + 1),
                  "layer_norms": [1.0, 2.0]})
    w.finish("completed", summary={"train_loss": 1.0 / rows})


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    try:
        yield 0o664
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_table_on_stdout_messages_on_stderr_files_with_umask(tmp_path, capsys, umask_002):
    """`sgdreg train > out.txt` holds the table; status lines go to stderr; files get 0o666 & ~umask
    (compare prints through the same print_table; test_cli checks its --json stdout)."""
    out = tmp_path / "run"
    assert main(["train", "--optimizer", "sgd", "--model", "linear", *TINY, "--save-checkpoint",
                 "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "final values" in cap.out and "train L" in cap.out
    assert "compiling" not in cap.out and "checkpoint" not in cap.out
    assert "final values" not in cap.err
    assert "sgd_lr0.1_b32_s0: compiling sgd (h=0.1, logging every 3 steps)…" in cap.err
    assert cap.err.index("compiling sgd") < cap.err.index("sgd_lr0.1_b32_s0: completed")
    assert "first chunk after" in cap.err
    files = {p.name: mode(p) for p in out.iterdir()}
    assert files == {"sgd_lr0.1_b32_s0.json": 0o664, "sgd_lr0.1_b32_s0.eqx": 0o664}
    # default logging for SGD: once per epoch (⌊96/32⌋ = 3 steps)
    doc = json.loads((out / "sgd_lr0.1_b32_s0.json").read_text())
    assert doc["config"]["log_every"] == 3 and doc["metrics"]["step"] == [0, 3, 6]


def test_json_mode_keeps_stdout_pure_json(capsys):
    assert main(["datasets", "--json"]) == 0
    cap = capsys.readouterr()
    assert "digits" in json.loads(cap.out)  # the whole of stdout is the JSON document
    assert "datasets" in cap.err  # the table went to stderr
    assert main(["datasets"]) == 0
    cap = capsys.readouterr()
    assert "digits" in cap.out and cap.err == ""


def test_atomic_writes_follow_umask_and_keep_existing_modes(tmp_path, umask_002):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert mode(tmp_path / "a.json") == 0o664
    os.umask(0o077)
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert mode(tmp_path / "b.json") == 0o600
    (tmp_path / "a.json").chmod(0o640)
    atomic_write_json(tmp_path / "a.json", {"x": 2})  # a rewrite keeps the file's mode
    assert mode(tmp_path / "a.json") == 0o640 and json.loads((tmp_path / "a.json").read_text())


def test_version_in_process_and_python_m_sgdreg(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sgdreg {sgdreg.__version__}"
    r = subprocess.run([sys.executable, "-m", "sgdreg", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"sgdreg {sgdreg.__version__}", r.stderr


@pytest.fixture
def trace_dir(tmp_path):
    d = tmp_path / "runs"
    write_trace(d / "gd_lr0.1_s0.json", "gd_lr0.1_s0")
    write_trace(d / "traces" / "sgd_lr0.1_b32_s0.json", "sgd_lr0.1_b32_s0", optimizer="sgd")
    atomic_write_json(d / "summary.json", {"out": str(d), "runs": []})  # not a trace
    return d


def test_trace_export_show_validate_accept_folders_and_skip_other_json(trace_dir, tmp_path,
                                                                       capsys):
    csv = tmp_path / "all.csv"
    assert main(["trace", "export", str(trace_dir), "--out", str(csv)]) == 0
    text = csv.read_text()
    assert text.startswith("step,t,metric,value") and "sgd_lr0.1_b32_s0" in text
    assert "2 traces" in capsys.readouterr().err
    # files and folders mixed
    assert main(["trace", "export", str(trace_dir / "gd_lr0.1_s0.json"), str(trace_dir / "traces"),
                 "--out", str(csv)]) == 0
    assert main(["trace", "validate", str(trace_dir)]) == 0
    capsys.readouterr()
    assert main(["trace", "show", str(trace_dir), "--json"]) == 0
    cap = capsys.readouterr()
    docs = json.loads(cap.out)
    assert [d["run_id"] for d in docs] == ["gd_lr0.1_s0", "sgd_lr0.1_b32_s0"]
    assert "metrics" not in docs[0] and "final values" in cap.err
    assert main(["trace", "show", str(trace_dir / "gd_lr0.1_s0.json")]) == 0
    out = capsys.readouterr().out
    assert "gd_lr0.1_s0" in out and "final values" in out
    # a folder without traces, or a summary.json named explicitly, is still an error
    (tmp_path / "empty").mkdir()
    assert main(["trace", "export", str(tmp_path / "empty"), "--out", str(csv)]) == 2
    assert main(["trace", "show", str(trace_dir / "summary.json")]) == 2
    err = capsys.readouterr().err
    assert "no sgdreg traces" in err and "missing field" in err


def test_load_traces_one_long_frame_skipping_summary_json(trace_dir):
    df = load_traces(trace_dir)
    assert set(df["run_id"]) == {"gd_lr0.1_s0", "sgd_lr0.1_b32_s0"}
    assert list(df.columns[:4]) == ["step", "t", "metric", "value"]
    assert {"train_loss", "layer_norms/0", "layer_norms/1"} == set(df["metric"])
    assert len(df) == 2 * 3 * 3  # runs × rows × (train_loss + 2 layer norms)
    assert df[df.optimizer == "sgd"]["run_id"].unique().tolist() == ["sgd_lr0.1_b32_s0"]
    with pytest.raises(TraceError, match="no folder"):
        load_traces(trace_dir / "nope")
    (trace_dir / "broken.json").write_text(json.dumps({"schema": SCHEMA, "run_id": "x"}))
    with pytest.raises(TraceError, match="missing field"):
        load_traces(trace_dir)


def test_parquet_export(trace_dir, tmp_path):
    from sgdreg.trace import parquet_engine

    pq = tmp_path / "all.parquet"
    code = main(["trace", "export", str(trace_dir), "--out", str(pq)])
    if parquet_engine() is None:
        assert code == 2 and not pq.exists()  # one line naming --out, nothing written
        pytest.skip("no parquet engine (pip install 'sgdreg[parquet]')")
    import pandas as pd

    assert code == 0
    back = pd.read_parquet(pq)
    assert back.equals(load_traces(trace_dir))


def test_default_log_every():
    n = 1437  # digits training split: ⌊1437/32⌋ = 44 steps per epoch
    sgd = RunConfig(optimizer="sgd", batch_size=32, steps=44 * 20)
    assert default_log_every(sgd, n) == 44
    assert default_log_every(RunConfig(optimizer="gd", steps=1000), n) == 10
    assert default_log_every(RunConfig(optimizer="flow", steps=1000), n) == 10
    # long full-batch runs: about 200 rows (compare's default: 3000 steps → every 15)
    assert default_log_every(RunConfig(optimizer="gd", steps=3000), n) == 15
    # 1000 steps: 40 divides them (no extra remainder chunk to compile) and is near one epoch
    assert default_log_every(sgd.replace(steps=1000), n) == 40
    # a prime step count: keep the epoch, accept the remainder chunk
    assert default_log_every(sgd.replace(steps=997), n) == 44
    # curvature every 200 steps needs a divisor of 200: 40
    assert default_log_every(sgd.replace(steps=997, hessian_every=200), n) == 40
    assert default_log_every(RunConfig(optimizer="gd", steps=1000, hessian_every=25), n) == 5
    for c in (sgd.replace(hessian_every=h, steps=s) for h in (0, 7, 50, 132, 300) for s in (9, 1000)):
        k = default_log_every(c, n)
        assert 1 <= k <= 44 and (c.hessian_every % k == 0)
    # compare's automatic curvature cadence: ~10 probes per run, on logged rows
    assert auto_hessian_every(RunConfig(optimizer="gd", steps=1000, log_every=10), 10) == 100
    assert auto_hessian_every(RunConfig(optimizer="sgd", steps=960, log_every=16), 10) == 96
    assert auto_hessian_every(RunConfig(optimizer="sgd", steps=6, log_every=3), 10) == 3


def test_run_ids_name_batch_size_only_for_minibatch_methods():
    assert run_id(RunConfig(optimizer="gd", lr=0.1)) == "gd_lr0.1_s0"
    assert run_id(RunConfig(optimizer="flow", lr=0.05, seed=3)) == "flow_lr0.05_s3"
    assert run_id(RunConfig(optimizer="sgd", lr=0.1, batch_size=64)) == "sgd_lr0.1_b64_s0"


CACHE_PROBE = textwrap.dedent("""
    import collections, json, sys
    import jax.monitoring
    counts = collections.Counter()
    jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event]))
    from sgdreg_cli.main import main
    code = main(sys.argv[2:])
    with open(sys.argv[1], "w") as f:
        json.dump({"code": code, **counts}, f)
""")


@pytest.mark.slow
def test_compile_cache_is_used_on_a_second_run(tmp_path):
    """Two CLI processes with the same small run: the first compiles and writes cache entries,
    the second loads every program from the cache (hits, no new compilation/entries)."""
    env = {k: v for k, v in os.environ.items() if k != "SGDREG_NO_CACHE"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    cache = tmp_path / "xdg" / "sgdreg" / "jax"
    args = ["train", "--optimizer", "gd", "--model", "linear", "--steps", "5", "--n-train", "100"]

    def run(i):
        counts = tmp_path / f"counts{i}.json"
        r = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(counts), *args, "--out",
                            str(tmp_path / f"run{i}")], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        c = json.loads(counts.read_text())
        assert c["code"] == 0
        return c, {p.name for p in cache.iterdir()}

    first, entries1 = run(1)
    key = "/jax/compilation_cache/"
    assert first.get(key + "cache_misses", 0) > 0 and first.get(key + "cache_hits", 0) == 0
    assert len(entries1) >= first[key + "cache_misses"]
    second, entries2 = run(2)
    assert second.get(key + "cache_hits", 0) >= first[key + "cache_misses"]
    assert second.get(key + "cache_misses", 0) == 0  # nothing compiled anew
    assert entries2 == entries1


def test_no_cache_option_and_env_and_cache_dir(monkeypatch, tmp_path):
    import sgdreg_cli.main as cli_main

    calls = []
    monkeypatch.setattr(cli_main, "enable_compile_cache", lambda: calls.append(1))
    monkeypatch.delenv("SGDREG_NO_CACHE", raising=False)
    assert main(["datasets"]) == 0 and calls == [1]
    assert main(["--no-cache", "datasets"]) == 0 and calls == [1]
    monkeypatch.setenv("SGDREG_NO_CACHE", "1")
    assert main(["datasets"]) == 0 and calls == [1]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli_main.cache_dir() == tmp_path / "sgdreg" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(cli_main.cache_dir()).endswith(os.path.join(".cache", "sgdreg", "jax"))


def test_runs_train_concurrently_in_order_and_stop_interrupts_them():
    """compare's runs share the CPU cores (run k+1 starts once run k compiled) and come back in
    the order given; a set ``stop`` turns the next logged row into KeyboardInterrupt (the
    engine then marks the trace 'interrupted')."""
    import threading

    from sgdreg_cli.core import FirstChunkTimer, run_concurrently

    started = []

    def fn(c, compiled):
        started.append(c)
        compiled.set()
        return c * 10

    assert run_concurrently(fn, [1, 2, 3], threading.Event()) == [10, 20, 30]
    assert sorted(started) == [1, 2, 3]
    rows, stop, compiled = [], threading.Event(), threading.Event()
    timer = FirstChunkTimer(lambda *a: rows.append(a), stop, compiled)
    timer(0, 10, {})
    assert not compiled.is_set()
    timer(5, 10, {})
    assert compiled.is_set() and timer.first is not None
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        timer(10, 10, {})
    assert len(rows) == 3  # the row is passed on before stopping
