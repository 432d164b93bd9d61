"""Sweeps (issue 6): vmapped runs equal single runs, 1 vs 4 devices, divergence isolation,
kill-and-resume, the CLI, checkpoints and the memory estimate; flows vmapped like the rest.

Every discrete sweep here shares one static structure (``BASE``, per-run data) and blocks of 16
runs, so on 4 devices every sweep pads to 64 runs and the in-process tests compile the sweep
program twice (4 devices, 1 device). The flow tests use ``FLOW_BASE`` (shared data) on 1 device.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sgdreg_cli.main import main

from sgdreg import dynamics, sweep, training
from sgdreg.checkpoint import CheckpointError, load_model, save_model
from sgdreg.config import ConfigError, RunConfig
from sgdreg.models import make_model
from sgdreg.trace import load_trace

BASE = dict(dataset="digits", n_train=128, n_test=64, width=8, optimizer="momentum",
            batch_size=16, log_every=3, dtype="float64", randomization="label-corruption")
BLOCK = 16
GRID64 = {"seed": [0, 1, 2, 3], "lr": [0.01, 0.05, 0.1, 0.2], "momentum": [0.0, 0.9],
          "corruption": [0.0, 0.5]}


def toml_text(name, base, grid):
    def val(v):
        return json.dumps(v)

    lines = [f"name = {val(name)}", "[base]", *(f"{k} = {val(v)}" for k, v in base.items()),
             "[grid]", *(f"{k} = {val(v)}" for k, v in grid.items())]
    return "\n".join(lines) + "\n"


def metrics(res):
    return [t["metrics"] for t in res.traces]


@pytest.fixture(scope="module")
def sweeps64(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep64")
    doc = {"name": "toy64", "base": dict(BASE, steps=6), "grid": GRID64}
    return {d: sweep.run_sweep(doc, root / f"dev{d}", devices=d, block=BLOCK) for d in (4, 1)}


def test_64_run_sweep_is_identical_on_1_and_4_devices(sweeps64):
    four, one = sweeps64[4], sweeps64[1]
    assert len(four.traces) == 64 and [g["size"] for g in four.index["groups"]] == [64]
    assert four.index["groups"][0]["shared_data"] is False  # corruption/seed → per-run labels
    assert four.index["devices"]["used"] == 4 and one.index["devices"]["used"] == 1
    assert all(r["status"] == "completed" for r in four.index["runs"])
    assert metrics(four) == metrics(one)  # bit for bit
    # outputs: valid traces, index and summary table
    for r in four.index["runs"]:
        doc = load_trace(four.out_dir / r["trace"])
        assert doc["metrics"]["step"] == [0, 3, 6] and doc["sweep"]["index"] == r["index"]
    index = json.loads((four.out_dir / "sweep.json").read_text())
    assert index["status"] == "completed" and index["num_runs"] == 64
    assert len((four.out_dir / "summary.csv").read_text().splitlines()) == 65
    assert not list((four.out_dir / "checkpoints").glob("*.eqx"))  # finished: state dropped


def test_sweep_run_gives_the_trace_of_train_alone(sweeps64):
    """Same values as ``training.train`` of that config, up to float reassociation."""
    for i in (0, 45):
        tr = sweeps64[4].traces[i]
        ref = training.train(RunConfig(**tr["config"])).trace
        assert tr["metrics"].keys() == ref["metrics"].keys()
        assert tr["metrics"]["step"] == ref["metrics"]["step"]
        for k, v in ref["metrics"].items():
            np.testing.assert_allclose(np.array(tr["metrics"][k], float), np.array(v, float),
                                       rtol=1e-11, atol=1e-13, err_msg=k)
        assert tr["num_params"] == ref["num_params"] and tr["layers"] == ref["layers"]
        assert tr["dataset"] == ref["dataset"]  # same corrupted labels (seeded)


def test_divergent_run_is_frozen_and_isolated(tmp_path):
    cfg = RunConfig(**BASE, steps=9)
    sane = [cfg.replace(seed=s, lr=h, corruption=p)
            for s, h, p in ((0, 0.1, 0.0), (1, 0.05, 0.5), (2, 0.2, 0.0))]
    bad = cfg.replace(seed=3, lr=1e300)
    mixed = sweep.run_sweep([sane[0], bad, sane[1], sane[2]], tmp_path / "mixed", devices=4,
                            block=BLOCK)
    compiled = sweep.TRACE_COUNTS["sweep_chunk"]
    clean = sweep.run_sweep(sane, tmp_path / "clean", devices=4, block=BLOCK)
    assert sweep.TRACE_COUNTS["sweep_chunk"] == compiled  # other lr/seeds/data: no recompile
    div = mixed.traces[1]
    assert div["status"] == "diverged" and 1 <= div["diverged_step"] < 9
    assert div["metrics"]["step"][-1] == div["diverged_step"]  # stopped at its step
    assert "non-finite" in div["status_detail"] and mixed.index["runs"][1]["status"] == "diverged"
    others = [mixed.traces[i]["metrics"] for i in (0, 2, 3)]
    assert others == metrics(clean)  # bit-identical with and without the diverging run
    assert all(t["status"] == "completed" for t in clean.traces)


FLOW_BASE = dict(dataset="digits", n_train=128, n_test=64, width=8, log_every=3, steps=6,
                 dtype="float64")


@pytest.mark.slow  # ~1-2 min: CI's second stage (pytest -m slow)
def test_flow_runs_in_a_sweep_give_the_trace_of_train_alone(tmp_path):
    """Two flows with different h share one vmapped block (per optimizer) and each gives the
    trace of ``training.train`` alone (measured: ≤ 2e-14 relative, same solver step counts)."""
    cfgs = [RunConfig(**FLOW_BASE, optimizer=o, lr=h, seed=s)
            for o in ("flow", "modified-flow") for h, s in ((0.25, 0), (0.5, 1))]
    res = sweep.run_sweep(cfgs, tmp_path / "flows", devices=1, block=2)
    assert [(g["kind"], g["size"], g["block"], g["shared_data"]) for g in res.index["groups"]] == [
        ("vmap", 2, 2, True)] * 2
    for tr in res.traces:
        ref = training.train(RunConfig(**tr["config"])).trace
        assert tr["status"] == ref["status"] == "completed"
        assert tr["metrics"].keys() == ref["metrics"].keys()
        assert tr["metrics"]["step"] == ref["metrics"]["step"] == [0, 3, 6]
        assert tr["metrics"]["solver_steps"] == ref["metrics"]["solver_steps"]
        assert tr["metrics"]["solver_steps"][0] == 0 and min(tr["metrics"]["solver_steps"][1:]) > 0
        assert tr["metrics"]["t"] == ref["metrics"]["t"]
        for k, v in ref["metrics"].items():
            np.testing.assert_allclose(np.array(tr["metrics"][k], float), np.array(v, float),
                                       rtol=1e-10, atol=1e-13, err_msg=k)


def _flow_max_steps(monkeypatch, max_steps: int):
    """Every flow that ``training.build`` resolves gets ``max_steps`` solver steps per chunk."""
    resolve = dynamics.resolve

    def patched(*args, **kwargs):
        d = resolve(*args, **kwargs)
        return dataclasses.replace(d, max_steps=max_steps) if d.is_flow else d

    monkeypatch.setattr(dynamics, "resolve", patched)


@pytest.mark.slow  # ~45 s: CI's second stage (pytest -m slow)
def test_failed_flow_is_frozen_and_isolated(tmp_path, monkeypatch):
    """A flow whose solver runs out of steps (h = 1e4: t = 3e4 per chunk) is marked failed as
    ``training.train`` marks it; the other flows of its vmapped block are bit-identical."""
    _flow_max_steps(monkeypatch, 256)
    cfg = RunConfig(**FLOW_BASE, optimizer="flow")
    sane = [cfg.replace(seed=0, lr=0.25), cfg.replace(seed=1, lr=0.5)]
    bad = cfg.replace(seed=2, lr=1e4)
    mixed = sweep.run_sweep([sane[0], bad, sane[1]], tmp_path / "mixed", devices=1, block=4)
    compiled = sweep.TRACE_COUNTS["sweep_chunk"]
    clean = sweep.run_sweep(sane, tmp_path / "clean", devices=1, block=4)
    assert sweep.TRACE_COUNTS["sweep_chunk"] == compiled
    failed = mixed.traces[1]
    ref = training.train(bad).trace
    assert failed["status"] == ref["status"] == "failed"
    assert failed["status_detail"] == ref["status_detail"] and "max steps" in ref["status_detail"]
    assert mixed.index["runs"][1]["status"] == "failed"
    assert failed["metrics"]["step"] == ref["metrics"]["step"] == [0]  # no row after the failure
    for k, v in ref["metrics"].items():
        np.testing.assert_allclose(np.array(failed["metrics"][k], float), np.array(v, float),
                                   rtol=1e-10, atol=1e-13, err_msg=k)
    assert [mixed.traces[i]["metrics"] for i in (0, 2)] == metrics(clean)  # bit for bit
    assert all(t["status"] == "completed" for t in clean.traces)


KILL_BASE = {k: v for k, v in BASE.items() if k != "log_every"} | {"log_every": 2}
KILL_GRID = {"steps": [40, 60], "seed": [0, 1], "lr": [0.05, 0.1]}  # 2 groups × 4 runs

KILLED_CHILD = """
import sys, jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
from sgdreg.sweep import run_sweep
run_sweep(sys.argv[1], sys.argv[2], devices=4, block=16)
"""


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    grid = tmp_path / "kill.toml"
    grid.write_text(toml_text("kill", KILL_BASE, KILL_GRID))
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(grid), str(out)],
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    second = out / "checkpoints" / "group-001.json"
    deadline = time.time() + 240

    def second_group_step():
        try:
            return json.loads(second.read_text())["step"]
        except (OSError, ValueError):
            return -1

    # kill mid-epoch of the second group (8 steps per epoch): no cleanup at all
    while second_group_step() < 10 and child.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert json.loads((out / "sweep.json").read_text())["status"] == "running", \
        "the sweep finished before it could be killed"
    committed = [json.loads((out / "checkpoints" / f"group-00{g}.json").read_text())
                 for g in (0, 1)]
    assert committed[0]["finished"] and not committed[1]["finished"]

    events = []
    resumed = sweep.run_sweep(grid, out, resume=True, devices=4, progress=events.append,
                              block=BLOCK)
    assert events and {e["group"] for e in events} == {1}  # finished group 0 not re-run
    assert events[0]["step"] == committed[1]["step"] + 2  # continued after its last checkpoint
    reference = sweep.run_sweep(grid, tmp_path / "reference", devices=4, block=BLOCK)
    assert metrics(resumed) == metrics(reference)
    assert [t["status"] for t in resumed.traces] == ["completed"] * 8
    assert resumed.index["status"] == "completed"
    for r in resumed.index["runs"]:
        load_trace(out / r["trace"])

    again = []
    sweep.run_sweep(grid, out, resume=True, devices=4, progress=again.append, block=BLOCK)
    assert again == []  # nothing left to run
    with pytest.raises(ConfigError, match="--resume"):
        sweep.run_sweep(grid, out, devices=4, block=BLOCK)


def test_cli_sweep_json_models_and_errors(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(toml_text("cli", dict(BASE, steps=6), {"seed": [0, 1], "lr": [0.05, 0.1]}))
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out), "--devices", "4", "--block", "16",
                 "--json", "--save-models"]) == 0
    index = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in index["runs"]] == ["completed"] * 4
    traces = [str(out / r["trace"]) for r in index["runs"]]
    assert main(["trace", "validate", *traces]) == 0
    model, cfg = load_model(out / "models" / f"{index['runs'][3]['run_id']}.eqx")
    assert cfg.lr == 0.1 and cfg.seed == 1
    norm = float(jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(eqx.filter(model,
                                                                                 eqx.is_array)))))
    assert norm == pytest.approx(index["runs"][3]["summary"]["weight_norm"], rel=1e-12)

    assert main(["sweep", str(grid), "--out", str(out)]) == 2  # exists: needs --resume
    assert main(["sweep", str(grid), "--devices", "99", "--dry-run"]) == 2
    bad = tmp_path / "bad.toml"
    for text in ("[grid]\nlr = 'fast'\n", "[base]\nwidht = 3\n", "[grid]\nlr = [\n",
                 "[base]\ncorruption = 0.2\n"):
        bad.write_text(text)
        assert main(["sweep", str(bad), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "widht" in err and "expected float" in err and "label-corruption" in err
    assert not (tmp_path / "never").exists()


def test_grid_expansion_order_names_and_groups():
    g = sweep.parse_grid({"base": {"optimizer": "sgd", "steps": 5},
                          "grid": {"batch_size": [16, 32], "lr": [0.1, 0.2], "seed": 3}})
    runs = g.runs()
    assert [(o["batch_size"], o["lr"]) for o, _ in runs] == [(16, 0.1), (16, 0.2), (32, 0.1),
                                                             (32, 0.2)]
    assert all(c.seed == 3 and c.steps == 5 for _, c in runs)
    plan = sweep.plan_sweep([RunConfig(optimizer="sgd", batch_size=16, n_train=64, seed=s,
                                       lr=h) for s in (0, 1) for h in (0.1, 0.2)]
                            + [RunConfig(optimizer="sgd", batch_size=32, n_train=64),
                               RunConfig(optimizer="flow", n_train=64)])
    assert [(g.kind, len(g.runs), g.shared_data) for g in plan.groups] == [
        ("vmap", 4, True), ("vmap", 1, True), ("vmap", 1, True)]
    assert plan.runs[1].run_id == "r0001_sgd_lr0.2_b16_s0"  # the fields that vary
    with pytest.raises(ConfigError, match="both"):
        sweep.parse_grid({"base": {"lr": 0.1}, "grid": {"lr": [0.2]}})
    with pytest.raises(ConfigError, match="grid run 1"):
        sweep.parse_grid({"grid": {"lr": [0.1, -1.0]}})


def test_checkpoint_roundtrip_rebuilds_the_model(tmp_path):
    """Every array comes back, the frozen random features too, from the file alone."""
    desc = {"name": "toy", "input_shape": [6], "num_classes": 3}
    for cfg in (RunConfig(model="random-features", width=12, dtype="float64"),
                RunConfig(model="mlp", width=5, activation="tanh")):
        dtype = jnp.float64 if cfg.dtype == "float64" else jnp.float32
        model0 = make_model(cfg.model, (6,), 3, key=jax.random.key(7), width=cfg.width,
                            depth=cfg.depth, activation=cfg.activation, dtype=dtype)
        save_model(tmp_path / "m.eqx", model0, cfg, desc)
        model, cfg2 = load_model(tmp_path / "m.eqx")
        assert cfg2 == cfg and type(model) is type(model0)
        for a, b in zip(jax.tree.leaves(model0), jax.tree.leaves(model)):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    (tmp_path / "junk.eqx").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not an sgdreg checkpoint"):
        load_model(tmp_path / "junk.eqx")


def test_memory_estimate_and_cifar_sized_evaluation_runs_in_chunks():
    """A 50,000 × 3,072 training set is evaluated chunk by chunk: compiled (on abstract shapes,
    nothing allocated) the full-batch metrics need temp memory of the order of one chunk."""
    from sgdreg.data import Dataset
    from sgdreg.probes import cheap_metrics

    cfg = RunConfig(model="mlp", width=32, optimizer="gd", eval_chunk=1000)
    shape = (50_000, 3, 32, 32)
    est = sweep.estimate_memory(cfg, shape, out_size=10, n_test=10_000, runs=64)
    assert est["total"] >= est["data"] + 64 * est["state"] and est["block"] == 8

    def nbytes(tree):
        return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree) if hasattr(a, "dtype"))

    rng = np.random.default_rng(0)  # the state a built run really holds, counted array by array
    small = Dataset("small", rng.normal(size=(64, 3, 32, 32)).astype(np.float32),
                    rng.integers(0, 10, 64).astype(np.int32),
                    rng.normal(size=(16, 3, 32, 32)).astype(np.float32),
                    rng.integers(0, 10, 16).astype(np.int32), 10)
    for opt in ("gd", "momentum", "adam"):
        c = cfg.replace(optimizer=opt)
        s = training.build(c, small)
        e = sweep.estimate_memory(c, (64, 3, 32, 32), out_size=10, n_test=16)
        st = s.state0()
        loss = s.problem.objective.example_loss
        grad = jax.eval_shape(jax.grad(lambda p, f=loss: f(p, small.x_train[0],
                                                         small.y_train[0])), s.params0)
        assert e["params"] == e["params0"] == nbytes(s.params0) and e["gradient"] == nbytes(grad)
        slots = [a for a in jax.tree.leaves(st.opt_state) if getattr(a, "ndim", 0) > 0]
        assert e["optimizer_state"] == nbytes(slots), opt  # (scalars: counters, hyper-params)
        assert e["permutation"] == nbytes(st.perm) and e["data"] == nbytes(s.data)
        held = nbytes(st) + nbytes(s.params0) + nbytes(grad)  # TrainState + θ0 + ∇ per run
        assert 0 <= held - e["state"] <= 128, opt  # only the scalars (step, keys, flags) differ

    tiny = Dataset("tiny", np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, np.int32),
                   np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, np.int32), 10)
    s = training.build(cfg, tiny)
    abstract = dynamics.Data(jax.ShapeDtypeStruct(shape, jnp.float32),
                             jax.ShapeDtypeStruct(shape[:1], jnp.int32),
                             jax.ShapeDtypeStruct((1000, 3, 32, 32), jnp.float32),
                             jax.ShapeDtypeStruct((1000,), jnp.int32))
    perm = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
    f = jax.jit(lambda d, p, perm: cheap_metrics(s.problem, d, p, s.params0, perm, 0.1))
    mem = f.lower(abstract, s.params0, perm).compile().memory_analysis()
    data_bytes = 50_000 * 3072 * 4
    assert mem.temp_size_in_bytes < 0.05 * data_bytes
    assert mem.temp_size_in_bytes < 4 * est["per_run"]
