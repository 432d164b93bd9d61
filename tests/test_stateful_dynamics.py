"""BatchNorm and dropout where paper-scale runs need them (issue 14): ghost batches for
full-batch training on streamed data, SVAG in training mode, the SDE's refusal, curvature probes
of a stateful model over streamed data (docs/science.md#batchnorm-and-dropout).

Oracles: hand-written loops over the equinox model itself (``jax.vmap(model, axis_name=
"batch")`` per batch, ``jax.grad`` of its mean loss, the state carried by hand), float64, 1e-12.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdreg
from sgdreg.batching import HostArray, full_batch_hvp, ghost_fold, ghost_value_and_grad
from sgdreg.data import Dataset
from sgdreg.dynamics.sde import SVAG, svag_coefficients
from sgdreg.errors import ConfigError, ModelError
from sgdreg.losses import Objective
from sgdreg.models import trainable_filter

F64 = jnp.float64
N, D, K, CHUNK = 37, 5, 3, 8  # 37 = 4·8 + 5: a ragged last ghost batch


class BNNet(eqx.Module):
    """Linear → BatchNorm → tanh → linear (no dropout)."""

    l1: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    l2: eqx.nn.Linear

    def __init__(self, key, mode="batch"):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(D, 6, key=k1, dtype=F64)
        self.bn = eqx.nn.BatchNorm(6, "batch", mode=mode, momentum=0.9, dtype=F64)
        self.l2 = eqx.nn.Linear(6, K, key=k2, dtype=F64)

    def __call__(self, x, state):
        h, state = self.bn(self.l1(x), state)
        return self.l2(jnp.tanh(h)), state


class BNDropNet(BNNet):
    """The same with dropout (p = 0.3) before the head."""

    def __call__(self, x, state, *, key=None):
        h, state = self.bn(self.l1(x), state)
        h = eqx.nn.Dropout(0.3)(jnp.tanh(h), key=key, inference=key is None)
        return self.l2(h), state


@functools.cache
def _built(cls, mode):
    """(model, state): the skeleton of ``make_with_state`` filled from NumPy (no compile):
    weights N(0, 0.5²), running statistics 1, counters 0, flags True."""
    rng = np.random.default_rng(0)

    def fill(a):
        if not isinstance(a, jax.ShapeDtypeStruct):
            return a
        if a.dtype == bool:
            return jnp.ones(a.shape, bool)
        if jnp.issubdtype(a.dtype, jnp.integer):
            return jnp.zeros(a.shape, a.dtype)
        return jnp.asarray(0.5 * rng.normal(size=a.shape), a.dtype)

    model, state = eqx.filter_eval_shape(eqx.nn.make_with_state(cls), jax.random.key(0), mode)
    state = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype) if a.dtype == F64 else fill(a),
                         state)
    return jax.tree.map(fill, model), state


class Plain(eqx.Module):
    """No BatchNorm, no dropout."""

    w: jax.Array = eqx.field(default_factory=lambda: jnp.ones((K, D), F64))

    def __call__(self, x):
        return self.w @ x


def _make(cls=BNNet, mode="batch"):
    model, state = _built(cls, mode)
    return model, _clone(state)


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 11, D))
    y = rng.integers(0, K, n + 11).astype(np.int32)
    return x[:n], y[:n], x[n:], y[n:]


def _ce(out, y):
    return -jax.nn.log_softmax(out)[y]


def _clone(state):
    """A fresh copy of an ``eqx.nn.State`` (an eager ``state.set`` retires its input)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _oracle_batch(params, frozen, state, xb, yb, key):
    """(mean training-mode loss, new state) of one batch, straight from the equinox model."""
    model = eqx.combine(params, frozen)
    if key is None:
        out, new = jax.vmap(lambda xi: model(xi, state), axis_name="batch",
                            out_axes=(0, None))(xb)
    else:
        out, new = jax.vmap(lambda xi, ki: model(xi, state, key=ki), axis_name="batch",
                            out_axes=(0, None))(xb, jax.random.split(key, xb.shape[0]))
    return jnp.mean(jax.vmap(_ce)(out, yb)), new


_oracle_vg = eqx.filter_jit(jax.value_and_grad(_oracle_batch, has_aux=True))


def _oracle_ghost(params, frozen, state, x, y, key, g):
    """Σ_c (n_c/n) L_c and its gradient, batches [0, g), [g, 2g), ..., the rest last; the state
    carried batch after batch; dropout key fold_in(key, c) (key itself for one batch)."""
    n = len(x)
    starts = list(range(0, n, g))
    loss, grad = 0.0, jax.tree.map(jnp.zeros_like, params)
    for c, s in enumerate(starts):
        xb, yb = jnp.asarray(x[s:s + g]), jnp.asarray(y[s:s + g])
        k = key if key is None or len(starts) == 1 else jax.random.fold_in(key, c)
        (lc, state), gc = _oracle_vg(params, frozen, state, xb, yb, k)
        w = len(xb) / n
        loss, grad = loss + w * lc, jax.tree.map(lambda a, b, w=w: a + w * b, grad, gc)
    return loss, grad, state


def _close(a, b, rtol=1e-12):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=1e-14)


def _objective(model, state):
    params, frozen = eqx.partition(model, trainable_filter(model))
    stochastic = isinstance(model, BNDropNet)
    return params, frozen, Objective(frozen, _ce, K, state, True, stochastic)


# ------------------------------------------------------------------- ghost batches, functions


def _ghost(obj, key, host: bool):
    x, y, _, _ = _data()
    xa, ya = (HostArray(x), HostArray(y)) if host else (jnp.asarray(x), jnp.asarray(y))
    return jax.jit(lambda p, s: ghost_value_and_grad(obj.batch_loss, p, s, xa, ya, key, CHUNK))


@pytest.mark.parametrize("host", [False, True])
def test_ghost_fold_holds_each_batch_own_rows_remainder_last(host):
    """Ghost batches are the rows of an unshuffled ``DataLoader``: [0, 8), [8, 16), ...,
    [32, 37) in order, each with only its own rows (no shifted, masked last window)."""
    x, y, _, _ = _data()

    def step(acc, c, xb, yb, wb):  # record (c, rows, Σx, Σy + Σw) of batch c
        row = [jnp.asarray(c, acc.dtype), xb.shape[0], xb.sum(), yb.sum() + wb.sum()]
        return acc.at[c].set(jnp.stack([jnp.asarray(v, acc.dtype) for v in row]))

    xa, ya = (HostArray(x), HostArray(y)) if host else (jnp.asarray(x), jnp.asarray(y))
    got = jax.jit(lambda: ghost_fold(step, jnp.zeros((5, 4)), xa, ya, CHUNK))()
    want = [[c, len(x[s:s + 8]), x[s:s + 8].sum(), y[s:s + 8].sum() + len(x[s:s + 8])]
            for c, s in enumerate(range(0, N, CHUNK))]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13)


@pytest.mark.slow
def test_ghost_gradient_streamed_equals_the_per_chunk_oracle():
    """L = Σ_c (n_c/n) L_c, each chunk of 8 rows (the last of 5) with its own batch
    statistics, the state after the last chunk: host-streamed ``ghost_value_and_grad`` = the
    hand loop over the equinox model (dropout keys: the GD test below)."""
    model, state = _make(BNNet)
    params, frozen, obj = _objective(model, state)
    want = _oracle_ghost(params, frozen, state, *_data()[:2], None, CHUNK)
    _close(_ghost(obj, None, host=True)(params, state), want)


@pytest.mark.slow
@pytest.mark.parametrize("cls, mode", [(BNNet, "ema")])
def test_ghost_gradient_in_memory_equals_the_per_chunk_oracle(cls, mode):
    """The same in memory and streamed in 'ema' mode, where a chunk's output depends on the
    state the earlier chunks left (carried); the ghost loss is not the one-forward loss (teeth).
    Dropout keys: the GD test below."""
    model, state = _make(cls, mode)
    params, frozen, obj = _objective(model, state)
    x, y, _, _ = _data()
    key = jax.random.key(5) if cls is BNDropNet else None
    want = _oracle_ghost(params, frozen, state, x, y, key, CHUNK)
    _close(_ghost(obj, key, host=False)(params, state), want)
    _close(_ghost(obj, key, host=True)(params, state), want)
    one = _oracle_vg(params, frozen, state, jnp.asarray(x), jnp.asarray(y), key)[0][0]
    assert abs(float(one) - float(want[0])) > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("cls", [BNDropNet])
def test_ghost_with_one_chunk_streamed_is_the_in_memory_full_batch(cls):
    """A ghost batch ≥ n: one forward over all n rows, the dropout key unfolded: the streamed
    value, gradient and state equal the in-memory full-batch training objective."""
    model, state = _make(cls)
    params, frozen, obj = _objective(model, state)
    x, y, _, _ = _data()
    key = jax.random.key(2) if cls is BNDropNet else None
    got = jax.jit(lambda p, s: ghost_value_and_grad(obj.batch_loss, p, s, HostArray(x),
                                                    HostArray(y), key, 64))(params, state)
    (loss, new), g = _oracle_vg(params, frozen, state, jnp.asarray(x), jnp.asarray(y), key)
    _close(got, (loss, g, new))


# ------------------------------------------------------------------- full-batch GD, end to end


def _gd_oracle(model, state, x, y, lr, steps, seed, g):
    """``steps`` full-batch GD steps in ghost batches of g rows, by hand; dropout keys
    fold_in(model key, step) as ``Optax.step`` draws them."""
    params, frozen = eqx.partition(model, trainable_filter(model))
    k_model = jax.random.split(jax.random.key(seed), 3)[2]
    for t in range(steps):
        key = jax.random.fold_in(k_model, t) if isinstance(model, BNDropNet) else None
        _, grad, state = _oracle_ghost(params, frozen, state, x, y, key, g)
        params = jax.tree.map(lambda p, d: p - lr * d, params, grad)
    return params, state


@pytest.mark.slow
@pytest.mark.parametrize("cls", [BNDropNet])
def test_streamed_full_batch_gd_of_a_batchnorm_model_is_the_ghost_oracle(cls):
    """3 steps of full-batch GD with dropout on data over the device budget (formerly refused)
    = the hand ghost loop with chunk = eval_chunk and dropout keys fold_in(fold_in(model key,
    step), c); the in-memory run with ghost_batch = eval_chunk logs the same trace (metrics in
    inference mode with the running statistics), and the provenance records the chunk."""
    model, state = _make(cls)
    x, y, xt, yt = _data()
    kw = dict(lr=0.2, steps=3, log_every=1, eval_chunk=CHUNK, state=state)
    streamed = sgdreg.run(model, Dataset("t", x, y, xt, yt, K, device_budget=2000), "gd", **kw)
    memory = sgdreg.run(model, Dataset("t", x, y, xt, yt, K), "gd", ghost_batch=CHUNK, **kw)
    data = streamed.trace["provenance"]["data"]
    assert data["placement"] == "host (streamed)" and data["chunk"] == data["ghost_batch"] == 8
    assert memory.trace["provenance"]["data"]["ghost_batch"] == 8
    want_params, want_state = _gd_oracle(model, state, x, y, 0.2, 3, 0, CHUNK)
    for res in (streamed, memory):
        _close(res.final.params, want_params)
        _close(res.state, want_state)
    for col in ("train_loss", "test_loss", "grad_norm_sq"):
        got, ref = (np.asarray(r.trace["metrics"][col], float) for r in (streamed, memory))
        assert np.isfinite(got[-1]), col
        np.testing.assert_allclose(got, ref, rtol=1e-12, err_msg=col)


@pytest.mark.slow
def test_in_memory_default_is_one_forward_for_a_batchnorm_only_model():
    """No ghost batches in memory by default: one forward over the batch (a BatchNorm model
    without dropout gets no key)."""
    model, state = _make()
    x, y, xt, yt = _data()
    res = sgdreg.run(model, (x, y, xt, yt), "gd", lr=0.2, steps=1, log_every=1, state=state)
    assert res.trace["provenance"]["data"]["ghost_batch"] is None
    params, frozen = eqx.partition(model, trainable_filter(model))
    (_, new), g = _oracle_vg(params, frozen, state, jnp.asarray(x), jnp.asarray(y), None)
    _close(res.final.params, jax.tree.map(lambda p, d: p - 0.2 * d, params, g))
    _close(res.state, new)


def test_bad_ghost_batches_are_one_line():
    model, state = _make()
    x, y, xt, yt = _data()
    for bad, needle in ((0, "ghost_batch must be a positive integer"),
                        (2.5, "ghost_batch must be a positive integer")):
        with pytest.raises(ConfigError, match=needle):
            sgdreg.run(model, (x, y, xt, yt), "gd", steps=1, state=state, ghost_batch=bad)
    with pytest.raises(ConfigError, match="neither BatchNorm nor dropout"):
        sgdreg.run(Plain(), (x, y, xt, yt), "gd", steps=1, ghost_batch=8)
    with pytest.raises(ConfigError, match="device_budget: EGR of a BatchNorm"):
        sgdreg.run(model, Dataset("t", x, y, xt, yt, K, device_budget=2000), "gd", steps=1,
                   state=state, eval_chunk=CHUNK, egr=0.1)


# ------------------------------------------------------------------- curvature over streamed data


@pytest.mark.slow
def test_curvature_of_a_batchnorm_model_streams_in_inference_mode():
    """Probes use the inference-mode objective (running statistics, no dropout): per-example,
    so its streamed Hessian-vector product equals the in-memory one and the dense ∇² of the
    mean loss of the equinox model in inference mode."""
    model, state = _make(BNDropNet)
    state = _gd_oracle(model, state, *_data()[:2], 0.2, 1, 0, CHUNK)[1]  # non-trivial stats
    params, frozen, obj = _objective(model, state)
    obj = obj.with_state(state)
    x, y, _, _ = _data()
    v = jax.tree.map(lambda a: jnp.ones_like(a) / a.size, params)
    hvp = jax.jit(lambda p, xa, ya: full_batch_hvp(obj.example_loss, p, xa, ya, v, CHUNK))
    dev, host = hvp(params, jnp.asarray(x), jnp.asarray(y)), hvp(params, HostArray(x),
                                                                 HostArray(y))
    _close(host, dev)

    def mean_loss(p):
        m = eqx.nn.inference_mode(eqx.combine(p, frozen))
        out = jax.vmap(lambda xi: m(xi, state)[0])(jnp.asarray(x))
        return jnp.mean(jax.vmap(_ce)(out, jnp.asarray(y)))

    _close(dev, jax.jvp(jax.grad(mean_loss), (params,), (v,))[1])


# ------------------------------------------------------------------- SVAG and the SDE


@pytest.mark.slow
@pytest.mark.parametrize("cls", [BNDropNet])
def test_svag_on_a_batchnorm_model_is_the_two_minibatch_training_mode_oracle(cls):
    """One step of h of SVAG (ℓ = 3): ℓ updates θ ← θ − (h/ℓ)(c₁ g_B1 + c₂ g_B2), g_Bk the
    gradient of minibatch k's training-mode mean loss with its own batch statistics, the state
    through B1's forward then B2's (Li, Malladi & Arora's code), dropout keys
    ``SVAG.dropout_keys``; minibatches ``SVAG.draws``."""
    model, state = _make(cls)
    x, y, xt, yt = _data()
    dyn, lr, ell = SVAG(batch_size=6, amplification=3), 0.3, 3
    res = sgdreg.run(model, (x, y, xt, yt), dyn, lr=lr, steps=2, log_every=2, state=state)
    k_data, _, k_model = jax.random.split(jax.random.key(0), 3)
    dkey, mkey = jax.random.key_data(k_data), jax.random.key_data(k_model)
    params, frozen = eqx.partition(model, trainable_filter(model))
    c1, c2 = svag_coefficients(ell)
    for step in range(2):
        for j in range(ell):
            i1, i2 = (np.asarray(i) for i in dyn.draws(dkey, step, j, N))
            k1, k2 = dyn.dropout_keys(mkey, step, j) if cls is BNDropNet else (None, None)
            (_, state), g1 = _oracle_vg(params, frozen, state, x[i1], y[i1], k1)
            (_, state), g2 = _oracle_vg(params, frozen, state, x[i2], y[i2], k2)
            params = jax.tree.map(lambda p, a, b: p - lr / ell * (c1 * a + c2 * b), params,
                                  g1, g2)
    _close(res.final.params, params)
    _close(res.state, state)


@pytest.mark.parametrize("cls, kind", [(BNNet, "BatchNorm"), (BNDropNet, "BatchNorm")])
def test_sde_refuses_batchnorm_and_dropout_models_before_writing(cls, kind, tmp_path):
    model, state = _make(cls)
    path = tmp_path / "t.json"
    with pytest.raises(ModelError, match=f"'sde'.*{kind}.*use 'svag'"):
        sgdreg.run(model, _data(), "sde", batch_size=8, state=state, trace_path=path)
    assert not path.exists()


def test_sde_refuses_a_dropout_model():
    class DropMLP(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            return self.lin(eqx.nn.Dropout(0.2)(x, key=key, inference=key is None))

    model = DropMLP(eqx.nn.Linear(D, K, key=jax.random.key(0), dtype=F64))
    with pytest.raises(ModelError, match="dropout"):
        sgdreg.run(model, _data(), "sde", batch_size=8)
