"""The public API on a researcher's own work: a user-written CNN with BatchNorm and dropout, a
custom loss, a user probe, optax transforms, custom checkpoints, honest provenance, and one clear
sgdreg exception for each kind of bad input (issue 10's acceptance tests)."""

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import sgdreg
from sgdreg import engine
from sgdreg.checkpoint import read_header
from sgdreg.models import MLP
from sgdreg.training import structure_hash

F64 = jnp.float64


class CNN(eqx.Module):
    """4×4 average pool (32×32 → 8×8), 3×3 conv, BatchNorm, ReLU, 2×2 pool, dropout, linear:
    770 parameters, small enough for a dense Hessian."""

    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    head: eqx.nn.Linear
    channels: int = eqx.field(static=True)

    def __init__(self, channels=4, *, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(3, channels, 3, padding=1, key=k1, dtype=F64)
        self.bn = eqx.nn.BatchNorm(channels, axis_name="batch", mode="batch", dtype=F64)
        self.drop = eqx.nn.Dropout(0.1)
        self.head = eqx.nn.Linear(channels * 16, 10, key=k2, dtype=F64)
        self.channels = channels

    def __call__(self, x, state, *, key=None):
        x = x.reshape(3, 8, 4, 8, 4).mean(axis=(2, 4))
        x, state = self.bn(self.conv(x), state)
        x = jax.nn.relu(x).reshape(self.channels, 4, 2, 4, 2).mean(axis=(2, 4))
        return self.head(self.drop(x.reshape(-1), key=key)), state


def cifar_like(n_train=128, n_test=64, seed=0):
    """CIFAR-shaped synthetic data: (3, 32, 32) images, 10 classes from a random teacher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, 3, 32, 32))
    y = np.argmax(x.reshape(len(x), -1) @ rng.normal(size=(3 * 32 * 32, 10)), axis=1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def small_data(n_train=48, n_test=16, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, d))
    y = rng.integers(0, k, n_train + n_test)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def small_mlp(out=3, key=0):
    return eqx.nn.MLP(5, out, 8, 1, key=jax.random.key(key), dtype=F64)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(u, v) for u, v in zip(la, lb))


# ---------------------------------------------------------------- own CNN, every dynamics


@pytest.mark.slow  # ~1-2 min: CI's second stage (pytest -m slow)
def test_own_cnn_trains_under_every_dynamics_and_its_probe_hessian_is_the_dense_one(tmp_path):
    model, state = eqx.nn.make_with_state(CNN)(key=jax.random.key(0))
    data = cifar_like()
    cosine = optax.inject_hyperparams(optax.adamw)(
        learning_rate=optax.cosine_decay_schedule(1e-2, 50), weight_decay=1e-4)
    optimizers = {"gd": "gd", "sgd": "sgd", "adamw_cosine": cosine, "flow": "flow"}
    # λ_min off: on this float32 CNN its Lanczos runs all 500 steps at every probe (3 min)
    probe = sgdreg.CurvatureProbe(10, lambda_min_max_steps=0)
    runs = sgdreg.compare(model, data, optimizers, state=state, lr=0.05, steps=10, log_every=5,
                          probes=[probe], out_dir=tmp_path)
    assert list(runs) == list(optimizers)
    hashes = set()
    for name, res in runs.items():
        doc, m = res.trace, res.trace["metrics"]
        assert doc["status"] == "completed", (name, doc["status_detail"])
        assert all(np.isfinite(v) for v in m["train_loss"] + m["test_loss"]), name
        assert m["step"] == [0, 5, 10] and np.isfinite(m["lambda_max"][-1]), name
        assert m["train_loss"][0] == runs["gd"].trace["metrics"]["train_loss"][0]  # same θ0
        changed = not leaves_equal(res.state, state)
        assert changed == (name != "flow"), name  # BatchNorm statistics move only when training
        prov = doc["provenance"]
        assert prov["model"]["class"].endswith(".CNN") and prov["model"]["preset"] is None
        assert prov["model"]["num_params"] == 770 == doc["num_params"]
        assert prov["model"]["stateful"] and prov["model"]["stochastic"]
        assert prov["data"]["input_shape"] == [3, 32, 32] and prov["data"]["n_train"] == 128
        assert prov["loss"] == "ce" and doc["config"]["loss"] == "ce"
        assert doc["config"]["model"] == "CNN" and "width" not in doc["config"]
        assert "dropout off" in doc["probes"]["curvature"]["hessian"]
        hashes.add((prov["model"]["structure_hash"], prov["data"]["hash"]))
    assert hashes == {(structure_hash(model), next(iter(hashes))[1])}
    dyn = {k: r.trace["provenance"]["dynamics"] for k, r in runs.items()}
    assert dyn["gd"]["preset"] == "gd" and dyn["sgd"]["batch_size"] == 32
    assert dyn["adamw_cosine"]["transform"].startswith("inject_hyperparams(adamw)(")
    assert "learning_rate=<schedule>" in dyn["adamw_cosine"]["transform"]
    assert dyn["flow"]["kind"] == "flow"
    (tmp_path / "summary.json").write_text(json.dumps({"runs": list(runs)}))  # not a trace
    df = sgdreg.load_traces(tmp_path)
    assert set(df["run_id"]) == set(optimizers) and "lambda_max" in set(df["metric"])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.json").write_text(json.dumps({"schema": "sgdreg.trace/1"}))
    with pytest.raises(sgdreg.TraceError, match="bad.json"):
        sgdreg.load_traces(tmp_path)

    # the probe's Hessian = dense float64 ∇² of the inference-mode mean loss at the final θ/state
    res = runs["sgd"]
    params = res.final.params
    frozen = res.setup.problem.objective.frozen
    flat, unravel = ravel_pytree(params)
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])

    def loss(f):
        m = eqx.nn.inference_mode(eqx.combine(unravel(f), frozen))
        out = jax.vmap(lambda xi: m(xi, res.state)[0])(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))

    hess = jax.jit(jax.hessian(loss))(flat)
    evals = np.linalg.eigvalsh(np.asarray(hess))
    m = res.trace["metrics"]
    assert m["lambda_max"][-1] == pytest.approx(evals[-1], rel=1e-6, abs=m["lambda_max_residual"][-1])
    assert abs(m["hessian_trace"][-1] - np.trace(hess)) <= 4 * m["hessian_trace_stderr"][-1]
    obj = res.setup.problem.objective.with_state(res.state)
    hv = sgdreg.hessian_matvec(obj.example_loss, params, x, y)
    v = jax.random.normal(jax.random.key(1), (flat.size,), F64)
    np.testing.assert_allclose(hv(v), hess @ v, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- custom loss


def smoothed_ce(out, y, alpha=0.1):
    """Label-smoothed cross-entropy with optax."""
    return optax.softmax_cross_entropy(out, optax.smooth_labels(jax.nn.one_hot(y, 3), alpha))


def smoothed_ce_by_hand(out, y, alpha=0.1):
    """The same loss written out: (1−α)·(lse − out_y) + α·(lse − mean_k out_k)."""
    lse = jax.nn.logsumexp(out)
    return (1 - alpha) * (lse - out[y]) + alpha * (lse - jnp.mean(out))


def test_custom_loss_gives_the_trace_of_the_same_objective_and_its_igr_term():
    data, model, h = small_data(), small_mlp(), 0.2
    res, hand = (sgdreg.run(model, data, loss=f, lr=h, steps=6, log_every=3)
                 for f in (smoothed_ce, smoothed_ce_by_hand))
    ma, mb = res.trace["metrics"], hand.trace["metrics"]
    assert set(ma) == set(mb)
    for k in ma:
        np.testing.assert_allclose(np.asarray(ma[k], float), np.asarray(mb[k], float),
                                   rtol=1e-10, atol=1e-14, err_msg=k)
    assert res.trace["provenance"]["loss"].endswith("test_api.smoothed_ce")
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])

    def full(p, static):  # L = the full-batch mean loss
        return jnp.mean(jax.vmap(lambda xi, yi: smoothed_ce(eqx.combine(p, static)(xi), yi))(x, y))

    for row, m in ((0, model), (-1, res.model)):  # IGR: (h/4)‖∇L‖², independently
        params, static = eqx.partition(m, eqx.is_inexact_array)
        g2 = sum(jnp.sum(g**2) for g in jax.tree.leaves(jax.grad(full)(params, static)))
        assert ma["igr_gd"][row] == pytest.approx(h / 4 * float(g2), rel=1e-10)
        assert ma["modified_loss_gd"][row] == pytest.approx(
            float(full(params, static)) + h / 4 * float(g2), rel=1e-10)


# ---------------------------------------------------------------- user probe


class LogitNorm:
    """A user probe through the ``Probe`` protocol: mean ‖f(x_i)‖ on the training set."""

    name = "logit_norm"

    def __init__(self, every):
        self.every = every

    def __call__(self, params, ctx):
        out = jax.vmap(ctx.problem.objective.predict, (None, 0))(params, ctx.data.x_train)
        ctx.memory["calls"] = ctx.memory.get("calls", 0) + 1
        return {"logit_norm": float(jnp.mean(jnp.linalg.norm(out, axis=-1))),
                "logit_norm_calls": ctx.memory["calls"]}

    def describe(self):
        return {"definition": "mean_i ‖f(x_i)‖₂, training set, inference mode"}


def test_user_probe_shows_up_in_the_trace():
    data, model = small_data(), small_mlp()
    res = sgdreg.run(model, data, optax.adamw(1e-3), lr=1e-3, steps=8, log_every=2, batch_size=16,
                     probes=[LogitNorm(4)])
    doc = res.trace
    assert doc["provenance"]["dynamics"]["batch_size"] == 16
    assert "add_decayed_weights(weight_decay=0.0001), scale(step_size=-0.001)" in doc[
        "provenance"]["dynamics"]["transform"]
    assert doc["probes"]["logit_norm"] == {"every": 4, **LogitNorm(4).describe()}
    m = doc["metrics"]
    assert m["step"] == [0, 2, 4, 6, 8]
    assert m["logit_norm_calls"] == [1, None, 2, None, 3]
    out = jax.vmap(res.model)(jnp.asarray(data[0]))
    assert m["logit_norm"][-1] == pytest.approx(float(jnp.mean(jnp.linalg.norm(out, axis=-1))))


# ---------------------------------------------------------------- checkpoints and provenance


def test_custom_checkpoint_roundtrip_is_bit_identical_with_batchnorm_state(tmp_path):
    model, state = eqx.nn.make_with_state(CNN)(key=jax.random.key(3))
    x = jnp.asarray(cifar_like(16, 1)[0])
    keys = jax.random.split(jax.random.key(0), len(x))  # one training-mode pass: new statistics
    _, state = eqx.filter_jit(jax.vmap(lambda xi, ki, s: model(xi, s, key=ki), axis_name="batch",
                                       in_axes=(0, 0, None), out_axes=(0, None)))(x, keys, state)
    path = tmp_path / "cnn.eqx"
    sgdreg.save_model(path, model, state=state)
    head = read_header(path)["model"]
    assert head["class"].endswith(".CNN") and head["num_params"] == 770
    assert head["structure_hash"] == structure_hash(model) and head["stateful"]
    skeleton = eqx.nn.make_with_state(CNN)(key=jax.random.key(99))
    model2, state2 = sgdreg.load_model(path, like=skeleton)
    assert leaves_equal(eqx.filter(model2, eqx.is_array), eqx.filter(model, eqx.is_array))
    assert leaves_equal(state2, state)
    abstract = eqx.filter_eval_shape(eqx.nn.make_with_state(CNN), key=jax.random.key(0))
    assert leaves_equal(sgdreg.load_model(path, like=abstract)[1], state)
    with pytest.raises(sgdreg.CheckpointError, match="like=skeleton"):
        sgdreg.load_model(path)
    with pytest.raises(sgdreg.CheckpointError, match=r"like=\(model, state\)"):
        sgdreg.load_model(path, like=skeleton[0])
    wrong = eqx.filter_eval_shape(eqx.nn.make_with_state(CNN), channels=5, key=jax.random.key(0))
    with pytest.raises(sgdreg.CheckpointError, match="cnn.eqx.*structure hash"):
        sgdreg.load_model(path, like=wrong)


def test_provenance_of_a_preset_run_and_of_a_custom_model_through_train():
    cfg = sgdreg.RunConfig(model="mlp", width=8, dataset="gmm", n_train=64, n_test=32, steps=4,
                           log_every=2)
    preset = sgdreg.train(cfg)
    prov, conf = preset.trace["provenance"], preset.trace["config"]
    assert prov["model"]["preset"] == "mlp" and prov["model"]["class"] == "sgdreg.models.MLP"
    assert conf["model"] == "mlp" and conf["width"] == 8
    assert prov["model"]["structure_hash"] == structure_hash(preset.model0)
    assert prov["data"]["name"] == "gmm" and prov["dynamics"]["preset"] == "gd"
    ds = preset.setup.dataset  # a model passed in is never recorded as the preset, even when it
    own = MLP(ds.input_shape[0], ds.out_size, width=8, key=jax.random.key(5))  # is built like one
    custom = sgdreg.train(cfg, ds, model=own)
    prov, conf = custom.trace["provenance"], custom.trace["config"]
    assert prov["model"]["preset"] is None and prov["model"]["class"] == "sgdreg.models.MLP"
    assert conf["model"] == "MLP" and conf["width"] is None and conf["depth"] is None
    assert prov["model"]["num_params"] == sum(
        a.size for a in jax.tree.leaves(eqx.filter(own, eqx.is_inexact_array)))
    assert prov["data"]["hash"] == preset.trace["provenance"]["data"]["hash"]


def test_injected_adamw_learning_rate_is_traced_not_recompiled():
    data, model = small_data(), small_mlp()
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    first = sgdreg.run(model, data, tx, lr=1e-3, steps=4, log_every=2)
    compiled = engine.TRACE_COUNTS["advance"]
    second = sgdreg.run(model, data, tx, lr=3e-3, steps=4, log_every=2)
    assert engine.TRACE_COUNTS["advance"] == compiled
    assert float(second.final.opt_state.hyperparams["learning_rate"]) == 3e-3
    assert not leaves_equal(eqx.filter(first.model, eqx.is_array),
                            eqx.filter(second.model, eqx.is_array))
    m = second.trace["metrics"]  # h of the IGR term is the injected step size
    assert m["igr_gd"][0] == pytest.approx(3e-3 / 4 * m["grad_norm_sq"][0])


# ---------------------------------------------------------------- path norm of any MLP


def brute_path_norm(layers) -> float:
    """Σ over every path of Π w²: a path starts at an input unit or at the bias of some layer
    (a constant-1 unit), then follows one weight per later layer to an output unit."""
    ws = [np.asarray(layer.weight) for layer in layers]
    bs = [np.asarray(layer.bias) for layer in layers]
    total = 0.0

    def walk(layer, unit, prod):  # prod: Π w² so far, arrived at `unit` of layer `layer`'s output
        nonlocal total
        if layer == len(ws) - 1:
            total += prod
            return
        for nxt in range(ws[layer + 1].shape[0]):
            walk(layer + 1, nxt, prod * ws[layer + 1][nxt, unit] ** 2)

    for layer in range(len(ws)):
        for unit in range(ws[layer].shape[0]):
            walk(layer, unit, bs[layer][unit] ** 2)
            if layer == 0:
                for i in range(ws[0].shape[1]):
                    walk(0, unit, ws[0][unit, i] ** 2)
    return total


def test_path_norm_of_an_equinox_mlp_is_the_sum_over_paths():
    from sgdreg.measures import path_norm
    from sgdreg.models import RandomFeatures

    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=jnp.tanh, key=jax.random.key(1), dtype=F64)
    assert float(path_norm(mlp)) == pytest.approx(brute_path_norm(mlp.layers), rel=1e-12)
    seq = eqx.nn.Sequential([mlp.layers[0], eqx.nn.Lambda(jax.nn.relu), mlp.layers[1],
                             eqx.nn.Lambda(jax.nn.relu), mlp.layers[2]])
    assert float(path_norm(seq)) == pytest.approx(brute_path_norm(mlp.layers), rel=1e-12)
    with pytest.raises(sgdreg.ModelError, match="RandomFeatures.*MLP-like"):
        path_norm(RandomFeatures(3, 2, 8, key=jax.random.key(0)))
    with pytest.raises(sgdreg.ModelError, match="CNN"):
        path_norm(eqx.nn.make_with_state(CNN)(key=jax.random.key(0))[0])


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_one_sgdreg_error_naming_what_to_change():
    data, model = small_data(), small_mlp()
    with pytest.raises(sgdreg.ModelError, match="3 outputs"):
        sgdreg.run(small_mlp(out=4), data, steps=1)
    with pytest.raises(sgdreg.LossError, match=r"loss\(output, label\)"):
        sgdreg.run(model, data, loss=lambda out: jnp.sum(out), steps=1)
    with pytest.raises(sgdreg.LossError, match="scalar"):
        sgdreg.run(model, data, loss=lambda out, y: out, steps=1)
    with pytest.raises(sgdreg.OptimizerError, match="GradientTransformation"):
        sgdreg.run(model, data, optax.adamw, steps=1)  # the factory, not a transform
    with pytest.raises(sgdreg.OptimizerError, match="allowed: gd"):
        sgdreg.run(model, data, "adamw", steps=1)
    cnn, _ = eqx.nn.make_with_state(CNN)(key=jax.random.key(0))
    with pytest.raises(sgdreg.ModelError, match="state="):
        sgdreg.run(cnn, cifar_like(8, 4), steps=1)
    with pytest.raises(sgdreg.ConfigError, match="lr"):
        sgdreg.run(model, data, lr=-1.0, steps=1)


def test_float64_without_x64_is_a_precision_error_and_import_is_light(tmp_path):
    path = tmp_path / "f64.eqx"
    sgdreg.save_model(path, small_mlp())
    script = textwrap.dedent(f"""
        import json, sys, equinox as eqx, jax, numpy as np, sgdreg
        heavy = [m for m in ("matplotlib", "seaborn", "typer", "pandas") if m in sys.modules]
        x = np.random.default_rng(0).normal(size=(8, 5)); y = np.arange(8) % 3
        f64 = jax.tree.map(lambda a: np.asarray(a, np.float64) if eqx.is_array(a) else a,
                           eqx.nn.MLP(5, 3, 4, 1, key=jax.random.key(0)))
        calls = {{"run": lambda: sgdreg.run(f64, (x, y, x, y), steps=1),
                 "train": lambda: sgdreg.train(sgdreg.RunConfig(dtype="float64", steps=1)),
                 "load": lambda: sgdreg.load_model({str(path)!r}, like=f64)}}
        out = {{"heavy": heavy, "api": [n for n in sgdreg.__all__ if not hasattr(sgdreg, n)]}}
        for name, call in calls.items():
            try:
                call()
                out[name] = "no error"
            except sgdreg.SgdregError as e:
                out[name] = [type(e).__name__, str(e)]
        print(json.dumps(out))
    """)
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("heavy") == [] and out.pop("api") == []  # `import sgdreg` stays light
    for name, (kind, message) in out.items():
        assert kind == "PrecisionError" and "JAX_ENABLE_X64=1" in message, (name, message)
    assert str(path) in out["load"][1]


def test_cli_turns_a_library_error_into_one_line_and_exit_2(tmp_path, capsys):
    from sgdreg_cli.main import main

    path = tmp_path / "own.eqx"
    sgdreg.save_model(path, small_mlp())
    for args, needle in ((["train", "--dtype", "float16", "--out", str(tmp_path / "t")], "--dtype"),
                         (["hessian", str(path), "--out", str(tmp_path / "h")], "like=")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
        assert not (tmp_path / "t").exists() and not (tmp_path / "h").exists()
