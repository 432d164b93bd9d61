"""Trace writing: strict JSON, atomic files, validation."""

import json
import math

from sgdreg.trace import SCHEMA, TraceWriter, load_trace, to_json_value, validate_trace


def header():
    return {"run_id": "r", "config": {"optimizer": "gd", "lr": 0.1}, "versions": {},
            "device": {}, "seed": 0}


def test_non_finite_values_become_null_and_file_is_strict_json(tmp_path):
    w = TraceWriter(tmp_path / "t.json", header())
    w.append({"step": 0, "t": 0.0, "train_loss": float("nan")})
    w.append({"step": 10, "t": 1.0, "train_loss": float("inf"), "lambda_max": 3.0})
    doc = w.finish("diverged", "non-finite training loss at step 10", diverged_step=10)
    text = (tmp_path / "t.json").read_text()
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert doc["metrics"]["train_loss"] == [None, None]
    assert doc["metrics"]["lambda_max"] == [None, 3.0]
    assert load_trace(tmp_path / "t.json")["status"] == "diverged"


def test_writes_are_atomic_and_incremental(tmp_path):
    w = TraceWriter(tmp_path / "t.json", header(), min_interval_s=0.0)
    for k in range(3):
        w.append({"step": k, "t": k * 0.1, "train_loss": 1.0 / (k + 1)})
        w.flush()
        assert len(load_trace(tmp_path / "t.json")["metrics"]["step"]) == k + 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temp files left


def test_validation_finds_problems():
    assert validate_trace([]) == ["top level is not a JSON object"]
    doc = {**header(), "schema": SCHEMA, "status": "completed",
           "metrics": {"step": [0, 10], "train_loss": [1.0]}}
    assert any("differ in length" in p for p in validate_trace(doc))
    doc["metrics"] = {"step": [10, 0]}
    assert any("increasing" in p for p in validate_trace(doc))
    doc["status"] = "diverged"
    assert any("diverged_step" in p for p in validate_trace(doc))


def test_to_json_value_handles_numpy():
    import numpy as np

    v = to_json_value({"a": np.float32(1.5), "b": np.arange(3), "c": np.float64(math.inf)})
    assert v == {"a": 1.5, "b": [0, 1, 2], "c": None}


def test_flushes_are_throttled_but_finish_always_writes(tmp_path):
    w = TraceWriter(tmp_path / "t.json", header(), min_interval_s=3600)
    w.append({"step": 0, "t": 0.0})
    w.flush()
    w.append({"step": 1, "t": 0.1})
    w.flush()
    assert len(load_trace(tmp_path / "t.json")["metrics"]["step"]) == 1
    w.finish("completed")
    assert len(load_trace(tmp_path / "t.json")["metrics"]["step"]) == 2
