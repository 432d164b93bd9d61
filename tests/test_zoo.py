"""Paper-scale models in sgdreg.zoo: parameter counts and one forward+backward each."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdreg.zoo import (
    ZHANG_PARAM_COUNTS,
    ResNet18,
    ZhangAlexNet,
    ZhangInception,
    ZhangMLP,
    count_params,
)

KEY = jax.random.key(0)


def _build(make, seed=0):
    """``make()``'s structure via eval_shape, filled with NumPy values.

    Eager construction compiles one XLA random op per weight shape (tens of seconds on a
    small CPU); this builds the same pytree in milliseconds. Floating leaves get
    N(0, 1/fan_in) float32 weights (BatchNorm statistics: 1.0), integer leaves 0.
    """
    rng = np.random.default_rng(seed)

    def fill(s):
        if not isinstance(s, jax.ShapeDtypeStruct):
            return s
        if not jnp.issubdtype(s.dtype, jnp.inexact):
            return jnp.asarray(np.zeros(s.shape, s.dtype))
        fan_in = int(np.prod(s.shape[1:])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree_util.tree_map(fill, eqx.filter_eval_shape(make))


@pytest.mark.parametrize(
    "name, make",
    [
        ("inception", lambda: ZhangInception(key=KEY)),
        ("alexnet", lambda: ZhangAlexNet(key=KEY)),
        ("mlp1x512", lambda: ZhangMLP(depth=1, width=512, key=KEY)),
        ("mlp3x512", lambda: ZhangMLP(depth=3, width=512, key=KEY)),
    ],
)
def test_zhang_param_counts_exact(name, make):
    assert count_params(eqx.filter_eval_shape(make)) == ZHANG_PARAM_COUNTS[name]


def test_count_params_on_arrays_and_batchnorm_state():
    # real arrays (the MLP is cheap to build eagerly)
    assert count_params(ZhangMLP(depth=1, width=512, key=KEY)) == 1_209_866
    # running statistics are excluded, with or without make_with_state
    model, state = eqx.filter_eval_shape(lambda: eqx.nn.make_with_state(ZhangInception)(key=KEY))
    assert count_params(model) == count_params(eqx.filter_eval_shape(ZhangInception, key=KEY)) == 1_649_402
    assert count_params(_build(lambda: ZhangInception(key=KEY))) == 1_649_402
    assert sum(x.size for x in jax.tree_util.tree_leaves(state)) > 0


def test_resnet18_param_counts():
    # k=64 == kuangliu/pytorch-cifar: PreActResNet18 11,171,146; ResNet18 11,173,962 (~11.17M).
    preact = eqx.filter_eval_shape(lambda: eqx.nn.make_with_state(ResNet18)(k=64, key=KEY))[0]
    standard = eqx.filter_eval_shape(lambda: eqx.nn.make_with_state(ResNet18)(k=64, preact=False, key=KEY))[0]
    assert count_params(preact) == 11_171_146
    assert count_params(standard) == 11_173_962
    # the width scaling of Nakkiran et al.: k=4 is tiny.
    small = eqx.filter_eval_shape(ResNet18, k=4, key=KEY)
    assert 40_000 < count_params(small) < 50_000


def _fast_jit(fn, *args):
    """``eqx.filter_jit(fn)`` compiled for ``args`` at XLA backend optimisation level 0:
    roughly halves the CPU compile time of these conv nets (compiling dominates here)."""
    lowered = eqx.filter_jit(fn).lower(*args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def _xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _check_grads(grads, model):
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))]
    assert len(leaves) == len(jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(np.sum(g * g)) for g in leaves) > 0


@pytest.mark.parametrize(
    "make, shape, check_inference",
    [
        (lambda: ResNet18(k=4, key=KEY), (3, 32, 32), True),
        (lambda: ResNet18(k=4, preact=False, key=KEY), (3, 32, 32), False),
        (lambda: ZhangInception(key=KEY), (3, 20, 20), False),
    ],
    ids=["resnet18-preact-k4", "resnet18-standard-k4", "inception"],
)
def test_stateful_forward_backward(make, shape, check_inference):
    model, state = _build(lambda: eqx.nn.make_with_state(make)())
    x = jax.random.normal(jax.random.key(1), (3, *shape), jnp.float32)
    y = jnp.array([0, 3, 9])

    def run(model, state):  # one compilation for everything (eager op-by-op is slow on CPU)
        def loss(m):
            batched = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
            logits, new_state = batched(x, state)
            assert logits.shape == (3, 10)
            return _xent(logits, y), new_state

        (val, new_state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        if not check_inference:
            return val, new_state, grads
        # inference mode uses the running statistics: outputs are per-example
        inf = eqx.nn.inference_mode(model)
        batch_out, _ = jax.vmap(inf, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, new_state)
        one_out, _ = inf(x[0], new_state)
        return val, new_state, grads, batch_out[0], one_out

    val, new_state, grads, *outs = _fast_jit(run, model, state)(model, state)
    assert np.isfinite(float(val))
    _check_grads(grads, model)
    # train mode updated the running statistics
    old = jax.tree_util.tree_leaves(state)
    new = jax.tree_util.tree_leaves(new_state)
    assert any(not np.array_equal(a, b) for a, b in zip(old, new))
    if check_inference:
        np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [lambda: ZhangAlexNet(key=KEY), lambda: ZhangMLP(depth=3, width=512, key=KEY)],
    ids=["alexnet", "mlp3x512"],
)
def test_stateless_forward_backward(make):
    model = _build(make)
    x = jax.random.normal(jax.random.key(1), (3, 3, 28, 28), jnp.float32)
    y = jnp.array([1, 2, 7])

    def loss_and_grad(model):
        return eqx.filter_value_and_grad(
            lambda m: _xent(jax.vmap(m, axis_name="batch")(x), y)
        )(model)

    val, grads = _fast_jit(loss_and_grad, model)(model)
    assert np.isfinite(float(val))
    _check_grads(grads, model)
