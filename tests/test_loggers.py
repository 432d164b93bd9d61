"""Logger adapters (issue 15): TensorBoard event files, W&B offline runs and the MLflow file
store each read back with the library's own format and checked against the trace (the source
of truth); a logger failing mid-run leaves the run and its trace intact; bad names and missing
extras are one clear error before anything runs."""

import errno
import json
import math
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import classification_dataset

import sgdreg
from sgdreg import loggers as L
from sgdreg.errors import ConfigError
from sgdreg.models import make_model
from sgdreg.trace import load_trace, validate_trace

STEPS, EVERY = 20, 5


def tiny_model(ds, kind="mlp"):
    """A tiny MLP (the read-back tests: a vector metric per layer) or linear model (the fast
    tests: the cheapest compilation)."""
    return make_model(kind, ds.input_shape, ds.out_size, key=jax.random.key(0), width=8,
                      depth=1, activation="tanh", dtype=jnp.float64)


def expected_rows(trace) -> dict[int, dict[str, float]]:
    """step → the loggable values of that trace row (``loggers.scalars``: the oracle is the
    trace itself; every finite scalar, vector metrics by layer)."""
    m = trace["metrics"]
    rows = [{k: m[k][i] for k in m} for i in range(len(m["step"]))]
    return {r["step"]: L.scalars(r, trace.get("layers") or []) for r in rows}


@pytest.fixture(scope="module")
def run_all(tmp_path_factory):
    """One tiny run mirrored to the three adapters at once (one compilation for every test).
    Slow: importing the three libraries (tensorboardX imports torch when it is installed) and
    starting W&B's service take 10 s and more."""
    for name in L.ADAPTERS:
        pytest.importorskip(L.ADAPTERS[name].module)
    out = tmp_path_factory.mktemp("loggers")
    ds = classification_dataset()
    res = sgdreg.run(tiny_model(ds), ds, "gd", lr=0.1, steps=STEPS, log_every=EVERY,
                     trace_path=out / "gd.json", loggers=["tensorboard", "wandb", "mlflow"])
    return out, load_trace(out / "gd.json"), res


def read_tfrecords(path):
    """The records of a TFRecord file: uint64 length, uint32 CRC, data, uint32 CRC."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
    return out


@pytest.mark.slow
def test_tensorboard_event_file_holds_the_trace_values(run_all):
    from tensorboardX.proto.event_pb2 import Event

    out, trace, _ = run_all
    files = list((out / "tensorboard" / trace["run_id"]).glob("events.out.tfevents.*"))
    assert len(files) == 1
    got: dict[int, dict[str, float]] = {}
    for rec in read_tfrecords(files[0]):
        ev = Event.FromString(rec)
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                got.setdefault(ev.step, {})[v.tag] = v.simple_value
    want = expected_rows(trace)
    assert sorted(got) == sorted(want) == list(range(0, STEPS + 1, EVERY))
    for step, row in want.items():
        assert set(got[step]) == set(row)
        for k, v in row.items():  # TensorBoard stores float32 scalars
            assert got[step][k] == np.float32(v), (step, k)
    assert trace["layers"][0] == "layers[0]" and "layer_norms/layers.0" in want[0]  # by layer


def read_wandb_records(path):
    """The protobuf records of a W&B ``.wandb`` file (LevelDB log format: a 7-byte file
    header, then 32 KiB blocks of records with a 7-byte header: CRC32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's trailer: zero padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind == 1:
            out.append(pb.Record.FromString(chunk))
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(pb.Record.FromString(buf + chunk))
    return out


@pytest.mark.slow
def test_wandb_offline_run_holds_the_trace_values(run_all):
    out, trace, _ = run_all
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    recs = read_wandb_records(runs[0])
    got: dict[int, dict[str, float]] = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                     for i in r.history.item}
            got[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
    assert got == expected_rows(trace)  # JSON doubles: exact
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run.display_name == trace["run_id"]
    cfg = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert cfg["lr"] == {"value": 0.1} or cfg["lr"] == 0.1
    exits = [r.exit.exit_code for r in recs if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]


@pytest.mark.slow
def test_mlflow_file_store_holds_the_trace_values(run_all):
    from mlflow.tracking import MlflowClient

    out, trace, _ = run_all
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    exp = client.get_experiment_by_name("sgdreg")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == trace["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.1" and run.data.params["optimizer"] == "gd"
    want = expected_rows(trace)
    keys = set().union(*want.values())
    assert set(run.data.metrics) == keys
    for k in keys:
        hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
        assert hist == {s: row[k] for s, row in want.items() if k in row}, k


@pytest.mark.slow
def test_trace_records_each_library_logger(run_all):
    out, trace, res = run_all
    assert trace["status"] == "completed" and validate_trace(trace) == []
    rows = len(trace["metrics"]["step"])
    for name in ("tensorboard", "wandb", "mlflow"):
        assert trace["loggers"][name]["status"] == "ok"
        assert trace["loggers"][name]["rows"] == rows
    assert res.trace["loggers"] == trace["loggers"]


class Recorder:
    """A user logger: keeps what it is given; raises from ``log`` at ``fail_at``."""

    name = "recorder"

    def __init__(self, fail_at=None, fail_start=False):
        self.fail_at, self.fail_start, self.rows, self.events = fail_at, fail_start, {}, []

    def start(self, run_id, config):
        if self.fail_start:
            raise RuntimeError("cannot reach the tracking server")
        self.events.append(("start", run_id, config["lr"]))

    def log(self, step, metrics):
        if step == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.rows[step] = dict(metrics)

    def finish(self, status):
        self.events.append(("finish", status))


def test_a_logger_failing_mid_run_is_disabled_and_recorded(tmp_path):
    ds = classification_dataset()
    ok, bad, dead = Recorder(), Recorder(fail_at=10), Recorder(fail_start=True)
    res = sgdreg.run(tiny_model(ds, "linear"), ds, "gd", lr=0.1, steps=STEPS, log_every=EVERY,
                     trace_path=tmp_path / "gd.json", loggers=[ok, bad, dead])
    trace = load_trace(tmp_path / "gd.json")  # valid, complete
    # the trace holds the same numbers as a run without loggers
    plain = sgdreg.run(tiny_model(ds, "linear"), ds, "gd", lr=0.1, steps=STEPS,
                       log_every=EVERY)
    assert plain.trace["metrics"] == trace["metrics"] and "loggers" not in plain.trace
    # old traces (no field) stay valid; a malformed record is named
    assert validate_trace(trace) == [] and validate_trace(plain.trace) == []
    problems = validate_trace({**trace, "loggers": {"wandb": {"rows": -1}}})
    assert len(problems) == 2 and all("loggers.wandb" in p for p in problems)
    assert trace["status"] == "completed" and trace["metrics"]["step"] == [0, 5, 10, 15, 20]
    rec = trace["loggers"]
    assert rec["recorder"] == {"status": "ok", "rows": 5}
    assert rec["recorder-2"]["status"] == "failed" and rec["recorder-2"]["step"] == 10
    assert rec["recorder-2"]["rows"] == 2
    assert "No space left on device" in rec["recorder-2"]["detail"]
    assert rec["recorder-2"]["detail"].startswith("log: OSError")
    assert sorted(bad.rows) == [0, 5] and bad.events[-1] == ("finish", "failed")
    assert rec["recorder-3"] == {"status": "failed", "rows": 0, "step": None, "detail":
                                 "start: RuntimeError: cannot reach the tracking server"}
    assert dead.rows == {} and dead.events == [("finish", "failed")]
    assert ok.rows == expected_rows(trace) and ok.events == [
        ("start", trace["run_id"], 0.1), ("finish", "completed")]
    assert res.trace["loggers"] == rec


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_tensorboard_disk_full_leaves_the_run_and_its_trace_intact(tmp_path, monkeypatch):
    """The event file on a full disk: tensorboardX's record writer opens /dev/full, where every
    write that reaches the device fails with ENOSPC."""
    tbx = pytest.importorskip("tensorboardX")
    import tensorboardX.record_writer as rw

    monkeypatch.setattr(rw, "open_file", lambda path: open("/dev/full", "wb"))
    ds = classification_dataset()
    sgdreg.run(tiny_model(ds), ds, "gd", lr=0.1, steps=STEPS, log_every=EVERY,
               trace_path=tmp_path / "gd.json", loggers="tensorboard")
    trace = load_trace(tmp_path / "gd.json")
    assert trace["status"] == "completed" and len(trace["metrics"]["step"]) == 5
    tb = trace["loggers"]["tensorboard"]
    assert tb["status"] == "failed" and "No space left on device" in tb["detail"], tb
    assert tb["detail"].startswith("log: OSError") and tb["step"] in trace["metrics"]["step"]
    assert tbx is not None


def test_unknown_or_missing_logger_is_a_config_error_before_anything_runs(tmp_path,
                                                                          monkeypatch):
    ds = classification_dataset()
    model = tiny_model(ds, "linear")
    path = tmp_path / "runs" / "gd.json"
    with pytest.raises(ConfigError, match=r"^loggers: unknown logger 'neptune'; known: "
                                          r"tensorboard, wandb, mlflow$"):
        sgdreg.run(model, ds, "gd", steps=5, trace_path=path, loggers=["neptune"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # the extra is not installed
    with pytest.raises(ConfigError, match=r"loggers: the wandb logger needs wandb.*"
                                          r"pip install 'sgdreg\[loggers\]'"):
        sgdreg.run(model, ds, "gd", steps=5, trace_path=path, loggers="wandb")
    with pytest.raises(ConfigError, match="neither a logger name"):
        sgdreg.run(model, ds, "gd", steps=5, trace_path=path, loggers=[object()])
    with pytest.raises(ConfigError, match="loggers: .*trace_path"):
        sgdreg.run(model, ds, "gd", steps=5, loggers=["tensorboard"])
    with pytest.raises(ConfigError, match="loggers: 'mlflow' is given twice"):
        sgdreg.train(sgdreg.RunConfig(steps=5), ds, trace_path=path, loggers=["mlflow", "mlflow"])
    assert not (tmp_path / "runs").exists()


def test_cli_log_to_bad_name_or_missing_extra_exits_2_with_one_line(tmp_path, capsys,
                                                                    monkeypatch):
    from sgdreg_cli.main import main

    out = tmp_path / "never"
    assert main(["train", "--log-to", "tensorbored", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sgdreg: error: --log-to: unknown logger 'tensorbored'; known: tensorboard, "
                   "wandb, mlflow")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main(["compare", "--log-to", "mlflow", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--log-to: the mlflow logger needs mlflow-skinny" in err
    assert "pip install 'sgdreg[loggers]'" in err
    assert not out.exists()


def test_scalars_keep_finite_numbers_and_name_vector_components():
    row = {"step": 3, "t": 0.3, "train_loss": 1.5, "test_acc": None, "gap": math.inf,
           "lambda_max_converged": True, "layer_norms": [1.0, None, 2.0], "topk": [3.0, 4.0]}
    assert L.scalars(row, ["a[0]", "b", "c:d"]) == {
        "t": 0.3, "train_loss": 1.5, "lambda_max_converged": 1.0, "layer_norms/a.0": 1.0,
        "layer_norms/c_d": 2.0, "topk/0": 3.0, "topk/1": 4.0}


@pytest.mark.slow
def test_cli_train_log_to_tensorboard_and_mlflow(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from sgdreg_cli.main import main

    out = tmp_path / "t"
    assert main(["train", "--optimizer", "gd", "--steps", "20", "--log-every", "10",
                 "--n-train", "100", "--width", "16", "--log-to", "tensorboard,mlflow",
                 "--out", str(out)]) == 0
    trace = load_trace(out / "gd_lr0.1_s0.json")
    assert {k: v["status"] for k, v in trace["loggers"].items()} == {
        "tensorboard": "ok", "mlflow": "ok"}
    assert list((out / "tensorboard" / "gd_lr0.1_s0").glob("events.out.tfevents.*"))
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("sgdreg").experiment_id])
    hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == \
        trace["metrics"]["train_loss"]
    # the run report of that directory names the loggers (the adapters' files are not traces)
    assert main(["report", str(out), "--no-plot"]) == 0
    assert "tensorboard: ok, mlflow: ok" in (out / "report.html").read_text()
