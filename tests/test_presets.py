"""The paper-scale RunConfig presets (resnet18, zhang-inception, zhang-alexnet, zhang-mlp), the
centre crop and the staircase step-size schedule.

* ``models.make_preset`` is the one builder: its models are the ``sgdreg.zoo`` modules built by
  hand from the same key (leaf for leaf, BatchNorm state too), with the zoo's parameter counts,
  and ``train(RunConfig(model=...))`` gives exactly the trace of ``sgdreg.run`` on that model.
* ``crop`` against NumPy slicing; the schedule against momentum SGD written out by hand in
  float64 (``jax_enable_x64`` is on for the test session, tests/conftest.py) over steps that
  cross two decay boundaries.
* Bad values: one ConfigError line naming the field; on the CLI exit 2, nothing written.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sgdreg
from sgdreg import RunConfig, zoo
from sgdreg.config import ConfigError, validate
from sgdreg.models import MODELS, ZOO_MODELS, make_preset, num_params, partition
from sgdreg.training import load_data

KEY = jax.random.key(5)


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def _same(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert jax.tree.structure(eqx.filter(a, eqx.is_array)) == jax.tree.structure(
        eqx.filter(b, eqx.is_array))
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# ---- one builder: the zoo modules, their parameter counts -------------------------------------

def test_presets_are_model_names():
    assert set(ZOO_MODELS) <= set(MODELS)
    assert ZOO_MODELS == ("resnet18", "zhang-inception", "zhang-alexnet", "zhang-mlp")


@pytest.mark.parametrize("name, shape, kw, count", [
    ("resnet18", (3, 32, 32), {"width": 64}, 11_171_146),
    ("zhang-inception", (3, 28, 28), {}, zoo.ZHANG_PARAM_COUNTS["inception"]),
    ("zhang-alexnet", (3, 28, 28), {}, zoo.ZHANG_PARAM_COUNTS["alexnet"]),
    ("zhang-mlp", (3, 28, 28), {"width": 512, "depth": 1}, zoo.ZHANG_PARAM_COUNTS["mlp1x512"]),
    ("zhang-mlp", (3, 28, 28), {"width": 512, "depth": 3}, zoo.ZHANG_PARAM_COUNTS["mlp3x512"]),
])
def test_preset_parameter_counts_are_the_zoo_modules(name, shape, kw, count):
    """Paper sizes (CIFAR-10, Zhang et al.'s 28×28 crops; ResNet-18 at k = 64), shapes only."""
    model, state = eqx.filter_eval_shape(
        lambda: make_preset(name, shape, 10, key=KEY, dtype=jnp.float32, **kw))
    assert zoo.count_params(model) == count
    assert (state is not None) == (name in ("resnet18", "zhang-inception"))
    by_hand = {"resnet18": lambda: zoo.ResNet18(10, kw.get("width"), 3, key=KEY),
               "zhang-inception": lambda: zoo.ZhangInception(10, 3, key=KEY),
               "zhang-alexnet": lambda: zoo.ZhangAlexNet(10, 3, 28, key=KEY),
               "zhang-mlp": lambda: zoo.ZhangMLP(kw.get("depth"), 512, 10, 28 * 28 * 3,
                                                 key=KEY)}[name]
    assert zoo.count_params(eqx.filter_eval_shape(by_hand)) == count


def _by_hand(name, dtype):
    """The zoo constructor for ``make_preset(name, (1, 8, 8), 10, key=KEY, ...)`` (k = 1;
    zhang-mlp 2×16), with its BatchNorm state."""
    return {
        "resnet18": lambda: eqx.nn.make_with_state(zoo.ResNet18)(10, 1, 1, key=KEY, dtype=dtype),
        "zhang-inception": lambda: eqx.nn.make_with_state(zoo.ZhangInception)(10, 1, key=KEY,
                                                                               dtype=dtype),
        "zhang-alexnet": lambda: (zoo.ZhangAlexNet(10, 1, 8, key=KEY, dtype=dtype), None),
        "zhang-mlp": lambda: (zoo.ZhangMLP(2, 16, 10, 64, key=KEY, dtype=dtype), None),
    }[name]


SMALL = {"resnet18": dict(width=1), "zhang-mlp": dict(width=16, depth=2)}


def _preset(name, dtype):
    return lambda: make_preset(name, (1, 8, 8), 10, key=KEY, dtype=dtype, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_make_preset_has_the_zoo_structure(name):
    """Shapes only (no arrays): the same tree, static fields, shapes and dtypes (structure
    hash) as the zoo constructor, state included; the trainable count is the zoo's."""
    from sgdreg.training import structure_hash

    for dtype in (jnp.float32, jnp.float64):
        (m, s), (r, rs) = (eqx.filter_eval_shape(f) for f in (_preset(name, dtype),
                                                                _by_hand(name, dtype)))
        assert type(m) is type(r) and structure_hash(m) == structure_hash(r)
        assert jax.tree.structure(s) == jax.tree.structure(rs)
        assert {a.dtype for a in jax.tree.leaves((m, s)) if hasattr(a, "dtype")
                and jnp.issubdtype(a.dtype, jnp.inexact)} == {jnp.dtype(dtype)}


def test_make_preset_mlp_is_the_zoo_model_built_by_hand():
    dtype = jnp.float64
    model, state = make_preset("zhang-mlp", (1, 8, 8), 10, key=KEY, dtype=dtype, width=16,
                               depth=2)
    _same(model, _by_hand("zhang-mlp", dtype)()[0])
    assert state is None and num_params(partition(model)[0]) == 64 * 16 + 16 + 16 * 16 + 16 \
        + 16 * 10 + 10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "zhang-inception", "zhang-alexnet"])
def test_make_preset_is_the_zoo_model_built_by_hand(name):
    """Every array and the BatchNorm state equal the zoo constructor's from the same key."""
    (m, s), (r, rs) = _preset(name, jnp.float32)(), _by_hand(name, jnp.float32)()
    _same(m, r)
    if rs is not None:
        _same(s, rs)
    assert num_params(partition(m)[0]) == zoo.count_params(r)


def test_alexnet_preset_takes_non_square_images():
    model, _ = eqx.filter_eval_shape(lambda: make_preset("zhang-alexnet", (3, 12, 20), 10,
                                                         key=KEY, dtype=jnp.float32))
    assert model.fc1.weight.shape == (384, 64 * 3 * 5)  # SAME pools: 12 → 6 → 3, 20 → 10 → 5
    out = eqx.filter_eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((3, 12, 20),
                                                                              jnp.float32))
    assert out.shape == (10,)


def _digits_cfg(**kw) -> RunConfig:
    base = dict(dataset="digits", n_train=32, n_test=16, optimizer="sgd", lr=0.1, batch_size=8,
                steps=2, log_every=2, dtype="float64")
    return RunConfig(**{**base, **kw})


def _same_trace(a, b):
    assert a["status"] == b["status"] == "completed"
    assert a["metrics"].keys() == b["metrics"].keys()
    for k in a["metrics"]:
        assert a["metrics"][k] == b["metrics"][k], k
    assert a["num_params"] == b["num_params"]
    assert a["provenance"]["model"]["structure_hash"] == b["provenance"]["model"]["structure_hash"]


def _init_key(seed: int):
    return jax.random.split(jax.random.key(seed), 3)[0]  # train()'s θ0 key (training.build)


@pytest.mark.slow  # ~12 s: two runs compiled
def test_train_zhang_mlp_is_run_on_the_zoo_model():
    """``train`` with the preset = ``sgdreg.run`` with ``zoo.ZhangMLP`` built by hand from the
    same key: identical traces (with the crop and the schedule on, through both doors)."""
    cfg = _digits_cfg(model="zhang-mlp", width=8, depth=2, crop=6, optimizer="momentum",
                      lr_decay=0.5, lr_decay_every=1)
    res = sgdreg.train(cfg)
    model = zoo.ZhangMLP(2, 8, 10, 36, key=_init_key(cfg.seed), dtype=jnp.float64)
    dynamics = res.setup.problem.dynamics  # the same object: one compiled program for both
    assert dynamics.describe() == sgdreg.named("momentum", batch_size=8, lr_decay=0.5,
                                               lr_decay_every=1).describe()
    ref = sgdreg.run(model, load_data(cfg), dynamics, lr=cfg.lr, steps=cfg.steps,
                     log_every=cfg.log_every, seed=cfg.seed)
    _same_trace(res.trace, ref.trace)
    assert res.trace["provenance"]["model"]["preset"] == "zhang-mlp"
    assert res.trace["config"]["crop"] == 6 and res.trace["config"]["lr_decay"] == 0.5
    assert res.trace["provenance"]["dynamics"]["lr_schedule"]["lr_decay_every"] == 1


@pytest.mark.slow
def test_batchnorm_preset_in_train_run_sweep_and_checkpoint(tmp_path):
    """A BatchNorm preset (ResNet-18, k = 1, with a crop and a schedule): ``train`` builds the
    state itself, and its trace and final state are those of ``sgdreg.run(model, ..., state=)``
    with ``zoo.ResNet18`` built by hand from the same key; the vmapped sweep runs it too (the
    same rows); the checkpoint written with its state reloads as ((model, state), cfg)."""
    from sgdreg.checkpoint import load_model, save_model
    from sgdreg.sweep import run_sweep

    cfg = _digits_cfg(model="resnet18", width=1, dtype="float32", crop=7, lr_decay=0.5,
                      lr_decay_every=1)
    res = sgdreg.train(cfg)
    model, state = eqx.nn.make_with_state(zoo.ResNet18)(10, 1, 1, key=_init_key(cfg.seed),
                                                        dtype=jnp.float32)
    ref = sgdreg.run(model, load_data(cfg), res.setup.problem.dynamics, lr=cfg.lr,
                     steps=cfg.steps, log_every=cfg.log_every, seed=cfg.seed, state=state)
    _same_trace(res.trace, ref.trace)
    _same(res.state, ref.state)
    assert res.trace["provenance"]["model"]["stateful"] is True

    run_sweep([cfg, cfg.replace(lr=0.2)], tmp_path / "sweep", save_models=True)
    import json

    doc = json.loads(next((tmp_path / "sweep" / "traces").glob("r0000_*.json")).read_text())
    assert doc["status"] == "completed"
    for k in ("train_loss", "test_loss", "train_acc", "grad_norm_sq", "igr_gd"):
        np.testing.assert_allclose(doc["metrics"][k], res.trace["metrics"][k], rtol=1e-6)
    (m, s), saved = load_model(next((tmp_path / "sweep" / "models").glob("r0000_*.eqx")))
    assert saved == cfg and type(m) is zoo.ResNet18 and isinstance(s, eqx.nn.State)

    path = tmp_path / "r.eqx"
    save_model(path, res.model, cfg, res.setup.dataset, state=res.state)
    (m, s), saved = load_model(path)
    assert saved == cfg
    _same(m, res.model)
    _same(s, res.state)


# ---- crop ------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop", [5, 6, 8])
def test_crop_is_numpy_centre_slicing(crop):
    """Rows/columns from ⌊(8 − c)/2⌋: digits' 8×8 images against NumPy slicing, both splits."""
    cfg = RunConfig(dataset="digits", n_train=40, n_test=20)
    full, ds = load_data(cfg), load_data(cfg.replace(crop=crop))
    t = (8 - crop) // 2
    np.testing.assert_array_equal(ds.x_train, full.x_train[:, :, t:t + crop, t:t + crop])
    np.testing.assert_array_equal(ds.x_test, full.x_test[:, :, t:t + crop, t:t + crop])
    np.testing.assert_array_equal(ds.y_train, full.y_train)
    assert ds.input_shape == (1, crop, crop)
    assert ds.describe()["crop"] == [crop, crop]
    assert cfg.replace(crop=crop).to_dict()["crop"] == crop  # the trace's config records it


def test_crop_comes_before_the_randomization():
    """Shuffled pixels permute the cropped image's pixels (Zhang et al. randomize the crops)."""
    cfg = RunConfig(dataset="digits", n_train=40, n_test=20, crop=4,
                    randomization="shuffled-pixels")
    ds, clean = load_data(cfg), load_data(cfg.replace(randomization="none"))
    assert ds.input_shape == (1, 4, 4)
    np.testing.assert_array_equal(np.sort(ds.x_train.reshape(40, -1), axis=1),
                                  np.sort(clean.x_train.reshape(40, -1), axis=1))


def test_sweep_plan_keeps_crops_apart():
    """Two crops are two datasets (and two groups): the sweep's data key includes the crop."""
    from sgdreg.sweep.plan import plan_sweep

    grid = {"name": "c", "base": {"dataset": "digits", "n_train": 32, "steps": 2, "log_every": 1,
                                  "model": "zhang-mlp", "width": 4},
            "grid": {"crop": [4, 6], "lr_decay": [1.0, 0.5], "lr_decay_every": [2]}}
    plan = plan_sweep(grid)
    shapes = {r.cfg.crop: plan.datasets[r.data_key].input_shape for r in plan.runs}
    assert shapes == {4: (1, 4, 4), 6: (1, 6, 6)}
    assert len(plan.groups) == 4  # crop × schedule: each its own compiled program


# ---- the step-size schedule: momentum SGD by hand in float64 ---------------------------------

N, D, WIDTH = 12, 3, 4
H, BETA, DECAY, EVERY, STEPS = 0.05, 0.7, 0.5, 2, 6  # boundaries at t = 2 and t = 4


def test_momentum_schedule_matches_the_update_rule():
    """v ← βv + g(θ), θ ← θ − h_t v with h_t = h·0.5^⌊t/2⌋ (optax heavy ball), six full-batch
    steps crossing two decay boundaries, to 1e-12; the IGR term at logged step t uses h_t."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N + 4, D))
    y = np.sin(x @ rng.normal(size=(D, 1))) + 0.1 * rng.normal(size=(N + 4, 1))
    model = eqx.nn.MLP(D, 1, WIDTH, 1, activation=jnp.tanh, key=jax.random.key(3),
                       dtype=jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    xj, yj = jnp.asarray(x[:N]), jnp.asarray(y[:N])

    def loss_at(f):
        out = jax.vmap(eqx.combine(unravel(f), static))(xj)
        return jnp.mean(0.5 * jnp.sum((out - yj) ** 2, axis=-1))

    grad = jax.jit(jax.grad(loss_at))
    theta, v, path = np.asarray(flat), np.zeros_like(flat), [np.asarray(flat)]
    for t in range(STEPS):
        v = BETA * v + np.asarray(grad(jnp.asarray(theta)))
        theta = theta - H * DECAY ** (t // EVERY) * v
        path.append(theta)
    opt = sgdreg.named("momentum", lr_decay=DECAY, lr_decay_every=EVERY)
    res = sgdreg.run(model, (x[:N], y[:N], x[N:], y[N:]), opt, lr=H, momentum=BETA, steps=STEPS,
                     log_every=1, loss="mse")
    got = np.asarray(ravel_pytree(eqx.filter(res.model, eqx.is_inexact_array))[0])
    np.testing.assert_allclose(got, path[-1], rtol=0, atol=1e-12)
    m = res.trace["metrics"]
    np.testing.assert_allclose(m["train_loss"], [float(loss_at(jnp.asarray(p))) for p in path],
                               rtol=1e-12, atol=0)
    h_t = [H * DECAY ** (t // EVERY) for t in m["step"]]
    np.testing.assert_allclose(m["igr_gd"], [h / 4 * g for h, g in zip(h_t, m["grad_norm_sq"])],
                               rtol=1e-12, atol=0)


def test_eos_threshold_follows_the_current_step_size():
    """The curvature probe's 2(1+β)/h_t at step t (the schedule rescales it by 1/decay^k)."""
    from sgdreg.probes import CurvatureProbe

    cfg = RunConfig(optimizer="momentum", lr=0.1, momentum=0.9, lr_decay=0.5, lr_decay_every=10,
                    hessian_every=10)
    p = CurvatureProbe.from_config(cfg)
    assert [p.threshold_at(t) for t in (0, 9, 10, 25)] == pytest.approx(
        [2 * 1.9 / h for h in (0.1, 0.1, 0.05, 0.025)], rel=1e-15)
    assert "eos_threshold_schedule" in p.describe()
    assert CurvatureProbe.from_config(cfg.replace(lr_decay=1.0)).threshold_at(25) == \
        pytest.approx(2 * 1.9 / 0.1)


# ---- memory estimate ---------------------------------------------------------------------------

def test_memory_estimate_of_presets():
    """Exact parameter bytes (the zoo's count), BatchNorm statistics as frozen arrays, and the
    activations of one example from the traced backward pass (at least its input and output)."""
    from sgdreg.sweep.memory import estimate_memory

    cfg = RunConfig(model="resnet18", width=1, optimizer="sgd", batch_size=4, eval_chunk=4)
    e1 = estimate_memory(cfg, (16, 3, 8, 8))
    model, state = eqx.filter_eval_shape(lambda: make_preset("resnet18", (3, 8, 8), 10, key=KEY,
                                                             width=1, dtype=jnp.float32))
    assert e1["params"] == 4 * zoo.count_params(model)
    bn = sum(math.prod(a.shape) for a in jax.tree.leaves(state))
    assert e1["frozen"] == 4 * bn > 0
    assert e1["activations"] > 4 * 4 * (3 * 8 * 8 + 10)
    mlp = estimate_memory(RunConfig(model="zhang-mlp", width=8, depth=1, batch_size=4,
                                    optimizer="sgd", eval_chunk=4), (16, 1, 8, 8))
    assert mlp["params"] == 4 * (64 * 8 + 8 + 8 * 10 + 10)
    # an MLP keeps its input, pre- and post-activations (the mlp formula): 64 + 2·8 (+ 2·10 out)
    assert mlp["activations"] == 4 * 4 * (64 + 2 * 8 + 2 * 10)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, shape, needle", [
    ({"lr_decay": 0.0, "lr_decay_every": 5}, None, "lr_decay must"),
    ({"lr_decay": 1.5, "lr_decay_every": 5}, None, "lr_decay must"),
    ({"lr_decay": float("nan"), "lr_decay_every": 5}, None, "lr_decay must"),
    ({"lr_decay_every": -1}, None, "lr_decay_every must"),
    ({"lr_decay_every": 2.5}, None, "lr_decay_every must"),
    ({"lr_decay": 0.5}, None, "lr_decay_every must"),
    ({"lr_decay": 0.5, "lr_decay_every": 5, "optimizer": "flow"}, None, "lr_decay:"),
    ({"lr_decay": 0.5, "lr_decay_every": 5, "optimizer": "sde"}, None, "lr_decay:"),
    ({"crop": 0}, None, "crop must"),
    ({"crop": True}, None, "crop must"),
    ({"model": "resnet18"}, (40,), "model:"),
    ({"model": "zhang-alexnet"}, (64,), "model:"),
    ({"model": "zhang-inception"}, (3, 6, 6), "model:"),
    ({"model": "resnet18", "activation": "tanh"}, None, "activation:"),
])
def test_bad_config_is_one_line_naming_the_field(changes, shape, needle):
    with pytest.raises(ConfigError) as e:
        validate(RunConfig(**changes), input_shape=shape)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_valid_preset_configs_pass():
    validate(RunConfig(model="zhang-mlp"), input_shape=(40,))  # an MLP takes any input
    validate(RunConfig(model="resnet18", width=1, lr_decay=0.95, lr_decay_every=10,
                       optimizer="adam"), input_shape=(3, 4, 4))
    validate(RunConfig(optimizer="flow", lr_decay_every=10))  # lr_decay 1: no schedule


@pytest.mark.parametrize("crop, needle", [(9, "crop must"), (None, None)])
def test_crop_checked_against_the_images(crop, needle):
    cfg = RunConfig(dataset="digits", n_train=20, n_test=10)
    if crop is None:
        with pytest.raises(ConfigError, match="^crop: gmm is not image data"):
            load_data(cfg.replace(dataset="gmm", crop=4))
        return
    with pytest.raises(ConfigError, match=f"^{needle}.*1..8"):
        load_data(cfg.replace(crop=crop))


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() \
                if p.is_file() else None
    return out


@pytest.mark.parametrize("argv, needle", [
    (["train", "--crop", "40"], "--crop"),
    (["train", "--dataset", "gmm", "--crop", "4"], "--crop"),
    (["train", "--model", "resnet18", "--dataset", "gmm"], "--model"),
    (["train", "--model", "zhang-inception", "--crop", "6"], "--model"),
    (["train", "--model", "resnet18", "--activation", "tanh"], "--activation"),
    (["train", "--lr-decay", "1.5", "--lr-decay-every", "3"], "--lr-decay"),
    (["train", "--lr-decay", "0.5"], "--lr-decay-every"),
    (["train", "--lr-decay-every", "-2"], "--lr-decay-every"),
    (["train", "--optimizer", "flow", "--lr-decay", "0.5", "--lr-decay-every", "3"],
     "--lr-decay"),
    (["compare", "--lr-decay", "nan", "--lr-decay-every", "3"], "--lr-decay"),
    (["compare", "--model", "zhang-alexnet", "--dataset", "gmm"], "--model"),
    (["compare", "--model", "resnet18", "--activation", "gelu"], "--activation"),
    (["compare", "--crop", "0"], "--crop"),
])
def test_cli_bad_preset_input_is_clean(argv, needle, tmp_path, monkeypatch, capsys):
    """Exit 2, one stderr line naming the option, nothing on stdout, nothing written."""
    from sgdreg_cli.main import main

    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code = main([*argv, "--steps", "2", "--out", "o"])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == "" and len(lines) == 1, (argv, err)
    assert needle in lines[0], lines[0]
    assert _snapshot(tmp_path) == before


def test_cli_lists_the_presets(capsys):
    from sgdreg_cli.main import main

    for command in ("train", "compare"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for name in ZOO_MODELS:
            assert name in text, (command, name)
        for opt in ("--crop", "--lr-decay", "--lr-decay-every"):
            assert opt in text, (command, opt)
