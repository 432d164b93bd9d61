"""Strict reading of every file sgdreg reads back (issue 16, point 5) and stale-writer detection
(point 4): NaN/Infinity literals and corrupt JSON give one error line naming the file, field
types are checked (not only presence), and a ``running`` trace whose writer died is reported."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sgdreg_cli.main import main

from sgdreg import trace as trace_mod
from sgdreg.checkpoint import SCHEMA as CKPT_SCHEMA
from sgdreg.checkpoint import read_header
from sgdreg.errors import CheckpointError, FileFormatError, SgdregError, TraceError
from sgdreg.jsonio import field_problems, load_checked, load_json, read_json_lines
from sgdreg.results import SCHEMA as RESULTS_SCHEMA
from sgdreg.results import load_document
from sgdreg.trace import SCHEMA, TraceWriter, is_stale, load_trace, utc_now, validate_trace, writer_info

ROOT = Path(__file__).resolve().parents[1]


def trace_doc(**over):
    doc = {"schema": SCHEMA, "run_id": "r", "status": "completed", "status_detail": None,
           "diverged_step": None, "config": {"optimizer": "gd", "lr": 0.1},
           "dataset": {"name": "toy"}, "versions": {}, "device": {"kind": "cpu", "count": 1},
           "seed": 0, "probes": {}, "summary": {"train_loss": 0.5},
           "metrics": {"step": [0, 10], "t": [0.0, 1.0], "train_loss": [1.0, 0.5]}}
    doc.update(over)
    return doc


def one_line(msg: str, path) -> None:
    assert "\n" not in msg and str(path) in msg, msg


# ---------------------------------------------------------------- strict JSON, every file kind

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literal_is_rejected_naming_file_line_and_column(tmp_path, literal):
    path = tmp_path / "t.json"
    text = json.dumps(trace_doc(), indent=1).replace('"train_loss": 0.5', f'"train_loss": {literal}')
    path.write_text(text)
    with pytest.raises(TraceError) as e:
        load_trace(path)
    msg = str(e.value)
    one_line(msg, path)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if literal in ln)
    assert f"contains a {literal} literal (line {line}, column" in msg and "strict JSON" in msg


def test_literal_inside_a_string_is_fine_and_position_skips_strings(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"note": "NaN Infinity", "x": NaN}')
    with pytest.raises(FileFormatError, match=r"NaN literal \(line 1, column 31\)"):
        load_json(path, "thing")
    path.write_text('{"note": "NaN Infinity"}')
    assert load_json(path, "thing") == {"note": "NaN Infinity"}


BAD_TEXTS = {"truncated": b'{"schema": "x", "metrics": ', "garbage": b"\x00\xff\xfe garbage",
             "empty": b"", "nan": b'{"schema": NaN}', "not json": b"hello"}


def _trace(path):
    return load_trace(path)


def _results(path):
    return load_document(path.parent, path.stem)


def _checkpoint(path):
    return read_header(path)


def _sweep_index(path):
    return load_checked(path, "sweep index", {"grid": "object"}, schema="sgdreg.sweep/1")


def _rows(path):
    return read_json_lines(path, "rows file", error=CheckpointError)


LOADERS = {"trace": (_trace, "t.json"), "results": (_results, "eos.json"),
           "checkpoint": (_checkpoint, "m.eqx"), "sweep.json": (_sweep_index, "sweep.json"),
           "rows": (_rows, "group-000.rows.jsonl")}


@pytest.mark.parametrize("kind", sorted(LOADERS))
@pytest.mark.parametrize("bad", sorted(BAD_TEXTS))
def test_corrupt_file_of_each_kind_is_one_error_naming_it(tmp_path, kind, bad):
    loader, name = LOADERS[kind]
    path = tmp_path / name
    data = BAD_TEXTS[bad]
    if kind == "checkpoint":
        data = data.replace(b"\n", b" ") + b"\n\x00\x01binary leaves"
    if kind == "rows" and bad == "empty":
        data = b'[[0, {"step": 0}]]\n[[0, {"step": 1'  # a torn last line
    path.write_bytes(data)
    with pytest.raises(SgdregError) as e:
        loader(path)
    assert isinstance(e.value, FileFormatError)
    one_line(str(e.value), path)


def test_rows_file_names_the_line_and_detects_truncation(tmp_path):
    path = tmp_path / "g.rows.jsonl"
    good = b'[[0, {"step": 0}]]\n'
    path.write_bytes(good + b'[[0, {"step": NaN}]]\n')
    with pytest.raises(FileFormatError, match=r"NaN literal \(line 2, column"):
        read_json_lines(path, "rows file")
    assert read_json_lines(path, "rows file", nbytes=len(good)) == [[[0, {"step": 0}]]]
    with pytest.raises(FileFormatError, match="truncated"):
        read_json_lines(path, "rows file", nbytes=10_000)
    with pytest.raises(FileFormatError, match="no such rows file"):
        read_json_lines(tmp_path / "missing.jsonl", "rows file")


def test_missing_unreadable_or_directory_file_names_it(tmp_path):
    for path, needle in [(tmp_path / "nope.json", "no such"), (tmp_path, "is a directory")]:
        with pytest.raises(FileFormatError, match=needle) as e:
            load_json(path, "sweep index")
        one_line(str(e.value), path)


def test_results_document_types_are_checked(tmp_path):
    doc = {"schema": RESULTS_SCHEMA, "experiment": "eos", "config": {}, "versions": {},
           "wall_time_s": 1.0, "results": {"a": 1}}
    (tmp_path / "eos.json").write_text(json.dumps(doc))
    assert load_document(tmp_path, "eos")["results"] == {"a": 1}
    for field, value in [("results", [1]), ("config", "x"), ("wall_time_s", "1")]:
        (tmp_path / "eos.json").write_text(json.dumps({**doc, field: value}))
        with pytest.raises(FileFormatError, match=f"{field} is") as e:
            load_document(tmp_path, "eos")
        one_line(str(e.value), tmp_path / "eos.json")
    (tmp_path / "eos.json").write_text(json.dumps({**doc, "schema": "other"}))
    with pytest.raises(ValueError, match="not an sgdreg results file"):
        load_document(tmp_path, "eos")
    with pytest.raises(FileNotFoundError):
        load_document(tmp_path, "missing")


def test_checkpoint_header_types_are_checked(tmp_path):
    path = tmp_path / "m.eqx"
    for head, needle in [({"kind": "model", "model": ["x"]}, "model is a list"),
                         ({"kind": "model", "model": {"class": "M", "num_params": "3",
                                                      "dtype": "float32", "stateful": False}},
                          "model.num_params is a string"),
                         ({"kind": 3}, "kind is an integer"),
                         ({"kind": "model", "input_shape": [6, "x"]}, "input_shape")]:
        path.write_bytes(json.dumps({"schema": CKPT_SCHEMA, **head}).encode() + b"\n\x00")
        with pytest.raises(CheckpointError, match=needle) as e:
            read_header(path)
        one_line(str(e.value), path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not an sgdreg checkpoint"):
        read_header(path)


def test_state_file_validator_checks_schema_and_types(tmp_path):
    path = tmp_path / "group-000.json"
    spec = {"runs": "int_list", "block": "int", "finished": "bool", "state_file": "str?"}
    good = {"schema": "sgdreg.sweep-group/1", "runs": [0, 1], "block": 2, "finished": False,
            "state_file": None}
    path.write_text(json.dumps(good))
    assert load_checked(path, "sweep group file", spec, schema=good["schema"]) == good
    for bad, needle in [({**good, "schema": "x"}, "schema 'x'"), ({**good, "runs": [0, "1"]},
                        "runs is a list, expected a list of integers"),
                        ({**good, "block": True}, "block is a boolean"),
                        ({k: v for k, v in good.items() if k != "block"}, "missing field 'block'"),
                        ([1, 2], "schema None")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=needle) as e:
            load_checked(path, "sweep group file", spec, schema=good["schema"],
                         error=CheckpointError)
        one_line(str(e.value), path)
    assert field_problems({"x": None}, {"x": "int?"}) == []


# ---------------------------------------------------------------- trace schema: types

MALFORMED = [
    ({"config": "gd"}, "config is a string, expected an object"),
    ({"config": None}, "config is null, expected an object"),
    ({"summary": [1, 2]}, "summary is a list, expected an object"),
    ({"dataset": "toy"}, "dataset is a string"),
    ({"device": "cpu"}, "device is a string"),
    ({"versions": []}, "versions is a list"),
    ({"run_id": 3}, "run_id is an integer, expected a string"),
    ({"schema": 1}, "schema is an integer"),
    ({"schema": "sgdreg.trace/0"}, "expected 'sgdreg.trace/1'"),
    ({"status": "done"}, "status 'done' not one of"),
    ({"status": ["running"]}, "status is a list"),
    ({"seed": "0"}, "seed is a string, expected an integer"),
    ({"seed": 1.5}, "seed is a number, expected an integer"),
    ({"status_detail": 5}, "status_detail is an integer"),
    ({"diverged_step": "10"}, "diverged_step is a string"),
    ({"status": "diverged"}, "without diverged_step"),
    ({"wall_time_s": "1s"}, "wall_time_s is a string"),
    ({"layers": ["a", 1]}, "layers is a list, expected a list of strings"),
    ({"probes": []}, "probes is a list"),
    ({"metrics": []}, "metrics must be an object with a 'step' column"),
    ({"metrics": {"t": [0.0]}}, "metrics must be an object with a 'step' column"),
    ({"metrics": {"step": [0], "t": 0.0}}, "every metrics column must be a list"),
    ({"metrics": {"step": [0, 1], "t": [0.0]}}, "differ in length"),
    ({"metrics": {"step": [10, 0]}}, "increasing"),
    ({"metrics": {"step": [0, 1.5]}}, "increasing integers"),
    ({"metrics": {"step": [True]}}, "increasing integers"),
    ({"metrics": {"step": [-1, 0]}}, "increasing integers >= 0"),
    ({"metrics": {"step": [0, 1], "loss": [1.0, "x"]}}, "metrics.loss[1] is 'x'"),
    ({"metrics": {"step": [0], "v": [{"a": 1}]}}, "metrics.v[0]"),
    ({"metrics": {"step": [0], "v": [[1.0, "a"]]}}, "metrics.v[0]"),
    ({"writer": 5}, "writer is an integer, expected an object"),
    ({"writer": {"pid": "1", "host": "h", "started": utc_now(), "heartbeat": utc_now()}},
     "writer.pid is a string"),
    ({"writer": {"pid": 1, "host": "h", "started": utc_now()}}, "missing field 'writer.heartbeat'"),
    ({"writer": {"pid": 1, "host": "h", "started": "yesterday", "heartbeat": utc_now()}},
     "writer.started is 'yesterday'"),
    ({"writer": {"pid": 0, "host": "h", "started": utc_now(), "heartbeat": utc_now()}},
     "writer.pid is 0"),
]


@pytest.mark.parametrize("over,needle", MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_validate_trace_checks_types(over, needle):
    problems = validate_trace(trace_doc(**over))
    assert any(needle in p for p in problems), problems


def test_valid_traces_stay_valid():
    assert validate_trace(trace_doc()) == []
    # vector metrics (nested lists), booleans (lambda_max_converged), nulls; no writer (old)
    ok = trace_doc(metrics={"step": [0, 0, 5], "layer_norms": [[1.0, None], [2, 3], None],
                            "lambda_max_converged": [True, False, None]},
                   layers=["a", "b"], wall_time_s=None, num_params=3, provenance=None)
    assert validate_trace(ok) == []
    zero_rows = trace_doc(status="interrupted", metrics={"step": []})
    assert validate_trace(zero_rows) == []


def test_every_stored_trace_in_the_repository_still_validates():
    found = [p for p in (ROOT / "figures" / "data").rglob("*.json")
             if '"sgdreg.trace/1"' in p.read_text()[:200]]
    for p in found:
        assert load_trace(p)["schema"] == SCHEMA


@pytest.mark.parametrize("field,value", [("config", "gd"), ("summary", [1]),
                                         ("config", None), ("metrics", {"step": "0"})])
@pytest.mark.parametrize("command", ["show", "validate"])
def test_trace_show_and_validate_on_wrong_types_exit_2_naming_the_file(tmp_path, capsys,
                                                                      command, field, value):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace_doc(**{field: value})))
    assert main(["trace", command, str(path)]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and len(err.splitlines()) == 1 and str(path) in err.replace("\n", "")
    assert field in err and "Traceback" not in err


def test_trace_validate_on_nan_literal_exits_2_naming_the_file(tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace_doc()).replace('"train_loss": 0.5', '"train_loss": NaN'))
    assert main(["trace", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN literal" in err and "t.json" in err


# ---------------------------------------------------------------- writer record, stale traces

def test_running_and_finished_traces_carry_the_writer_and_heartbeat_moves(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    w = TraceWriter(path, {"run_id": "r", "config": {}, "versions": {}, "device": {}, "seed": 0},
                    min_interval_s=0.0)
    w.append({"step": 0, "t": 0.0, "train_loss": 1.0})
    w.flush()
    doc = load_trace(path)
    writer = doc["writer"]
    assert doc["status"] == "running" and writer["pid"] == os.getpid()
    assert writer["host"] == socket.gethostname() and writer["started"] == writer["heartbeat"]
    assert is_stale(doc) is None  # this process is alive
    monkeypatch.setattr(trace_mod, "utc_now", lambda: "2099-01-01T00:00:00+00:00")
    w.append({"step": 1, "t": 0.1, "train_loss": 0.5})
    w.flush()
    assert load_trace(path)["writer"]["heartbeat"] == "2099-01-01T00:00:00+00:00"
    assert load_trace(path)["writer"]["started"] == writer["started"]
    w.finish("completed")
    done = load_trace(path)
    assert done["status"] == "completed" and done["writer"]["pid"] == os.getpid()
    assert is_stale(done) is None
    assert validate_trace(done) == []


def _running(**writer):
    return trace_doc(status="running", writer={**writer_info(), **writer})


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()  # reaped: its pid is free
    return p.pid


def test_stale_when_the_writer_pid_is_dead_on_this_host():
    pid = _dead_pid()
    reason = is_stale(_running(pid=pid))
    assert reason is not None and f"writer pid {pid} is not running" in reason
    assert validate_trace(_running(pid=pid)) == []  # still a valid file: runtime state only


def test_not_stale_when_alive_finished_or_without_writer():
    assert is_stale(_running()) is None
    assert is_stale(trace_doc(status="completed", writer=writer_info() | {"pid": _dead_pid()})) \
        is None
    assert is_stale(trace_doc(status="running")) is None  # an old trace: unknown, not stale
    assert is_stale(_running(pid="x")) is None and is_stale([]) is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stale_when_the_pid_was_reused_by_a_later_process():
    reason = is_stale(_running(started="2000-01-01T00:00:00+00:00"))
    assert reason is not None and "later process" in reason


def test_stale_on_another_host_only_after_a_generous_heartbeat_age():
    other = {"host": socket.gethostname() + "-elsewhere", "pid": 1}
    old = _running(**other, heartbeat="2000-01-01T00:00:00+00:00")
    reason = is_stale(old)
    assert reason is not None and "last wrote" in reason and "elsewhere" in reason
    assert is_stale(_running(**other)) is None  # heartbeat just now
    recent = _running(**other, heartbeat=utc_now())
    assert is_stale(recent, now=trace_mod.parse_time(utc_now()) + 1800) is None
    assert is_stale(recent, now=trace_mod.parse_time(utc_now()) + 7200) is not None
