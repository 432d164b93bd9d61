"""Equinox models acting on one example (batch with ``vmap``), initialised from an explicit key.

``partition(model)`` splits a model into trainable parameters θ and the frozen rest; everything
downstream (dynamics, probes, curvature) works on θ only.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}
#: the paper-scale presets (``sgdreg.zoo``): ``RunConfig.width`` is ResNet-18's k and
#: zhang-mlp's hidden width, ``depth`` zhang-mlp's hidden layers
ZOO_MODELS = ("resnet18", "zhang-inception", "zhang-alexnet", "zhang-mlp")
MODELS = ("mlp", "cnn", "linear", "random-features", *ZOO_MODELS)
#: presets that need image inputs (channels, height, width)
IMAGE_MODELS = ("cnn", "resnet18", "zhang-inception", "zhang-alexnet")
#: presets with BatchNorm: built with ``eqx.nn.make_with_state`` (``make_preset``)
STATEFUL_MODELS = ("resnet18", "zhang-inception")
#: the smallest image side each image preset accepts (Inception's two VALID 3×3 stride-2
#: downsamplings need 7 pixels)
MIN_IMAGE_SIDE = {"zhang-inception": 7}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(eqx.Module):
    """Fully connected net: ``depth`` hidden layers of ``width`` units, then a linear read-out."""

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(self, in_size, out_size, width=128, depth=1, activation="relu", *, key,
                 dtype=None):
        _activation(activation)
        sizes = [in_size] + [width] * depth + [out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=k, dtype=dtype) for a, b, k in zip(sizes, sizes[1:], keys)
        )
        self.activation = activation

    def __call__(self, x):
        act = _activation(self.activation)
        x = x.reshape(-1)
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


class CNN(eqx.Module):
    """Small CNN: two 3×3 convolutions (second with stride 2), global average pool, linear."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, image_shape, out_size, width=16, activation="relu", *, key, dtype=None):
        _activation(activation)
        k1, k2, k3 = jax.random.split(key, 3)
        c = image_shape[0]
        self.conv1 = eqx.nn.Conv2d(c, width, 3, padding=1, key=k1, dtype=dtype)
        self.conv2 = eqx.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, key=k2, dtype=dtype)
        self.head = eqx.nn.Linear(2 * width, out_size, key=k3, dtype=dtype)
        self.image_shape = tuple(image_shape)
        self.activation = activation

    def __call__(self, x):
        act = _activation(self.activation)
        x = x.reshape(self.image_shape)
        x = act(self.conv2(act(self.conv1(x))))
        return self.head(jnp.mean(x, axis=(1, 2)))


class LinearModel(eqx.Module):
    """f(x) = Wx (+ b). ``zero_init`` starts at θ0 = 0, the min-norm interpolation setting."""

    linear: eqx.nn.Linear

    def __init__(self, in_size, out_size, use_bias=False, zero_init=False, *, key, dtype=None):
        lin = eqx.nn.Linear(in_size, out_size, use_bias=use_bias, key=key, dtype=dtype)
        if zero_init:
            lin = jax.tree.map(jnp.zeros_like, lin)
        self.linear = lin

    def __call__(self, x):
        return self.linear(x.reshape(-1))


class RandomFeatures(eqx.Module):
    """f(x) = aᵀφ(x) with fixed random features, only the read-out ``a`` trained.

    ``kind="fourier"``: φ(x) = √(2/N)·cos(⟨v,x⟩ + b), v ~ N(0, σ⁻²I), b ~ U[0, 2π)
    (Rahimi & Recht 2007; Belkin et al. 2019). ``kind="relu"``: φ(x) = ReLU(⟨v,x⟩)/√N, v ~ N(0, I/d).
    ``zero_init`` starts the read-out at a = 0 (the features are drawn from ``key`` either way).
    """

    proj: jax.Array
    phase: jax.Array
    readout: eqx.nn.Linear
    kind: str = eqx.field(static=True)

    def __init__(self, in_size, out_size, width=512, kind="fourier", bandwidth=5.0,
                 zero_init=False, *, key, dtype=None):
        kv, kb, kr = jax.random.split(key, 3)
        dtype = dtype or jnp.zeros(()).dtype
        if kind == "fourier":
            self.proj = jax.random.normal(kv, (width, in_size), dtype) / bandwidth
            self.phase = jax.random.uniform(kb, (width,), dtype, 0.0, 2 * math.pi)
        elif kind == "relu":
            self.proj = jax.random.normal(kv, (width, in_size), dtype) / math.sqrt(in_size)
            self.phase = jnp.zeros((width,), dtype)
        else:
            raise ValueError(f"unknown random-feature kind {kind!r}; choose fourier or relu")
        readout = eqx.nn.Linear(width, out_size, use_bias=False, key=kr, dtype=dtype)
        self.readout = jax.tree.map(jnp.zeros_like, readout) if zero_init else readout
        self.kind = kind

    def features(self, x):
        z = self.proj @ x.reshape(-1) + self.phase
        n = self.proj.shape[0]
        if self.kind == "fourier":
            return jnp.sqrt(2.0 / n) * jnp.cos(z)
        return jax.nn.relu(z) / jnp.sqrt(n)

    def __call__(self, x):
        return self.readout(self.features(x))


def check_preset_input(name: str, in_shape: tuple[int, ...]) -> None:
    """ConfigError (naming ``model``) unless the preset ``name`` can take one example of
    ``in_shape``: the image presets need (channels, height, width), zhang-inception at least
    7×7 (``MIN_IMAGE_SIDE``)."""
    from .errors import ConfigError

    in_shape = tuple(in_shape)
    if name in IMAGE_MODELS and len(in_shape) != 3:
        raise ConfigError(f"model: {name!r} needs image data (channels, height, width); the "
                          f"data's examples have shape {in_shape}")
    side = MIN_IMAGE_SIDE.get(name)
    if side and min(in_shape[1:]) < side:
        raise ConfigError(f"model: {name!r} needs images of at least {side}×{side} pixels, got "
                          f"{in_shape[1]}×{in_shape[2]}")


def make_preset(name: str, in_shape: tuple[int, ...], out_size: int, *, key, width: int = 128,
                depth: int = 1, activation: str = "relu", dtype=None, zero_init: bool = True):
    """``(model, state)``: the preset ``name`` (one of ``MODELS``) for inputs of shape
    ``in_shape`` (one example) and ``out_size`` outputs, from ``key``, its arrays in ``dtype``;
    ``state`` is the ``eqx.nn.State`` of a BatchNorm preset (``STATEFUL_MODELS``, built with
    ``eqx.nn.make_with_state``), None otherwise. The one builder behind ``train``, checkpoints
    and the memory estimate.

    Paper-scale presets (``sgdreg.zoo``, ReLU only; ``activation`` must be ``relu``):
    ``resnet18`` = ``zoo.ResNet18(k=width)`` (Nakkiran et al. 2020, pre-activation, BatchNorm),
    ``zhang-inception`` = ``zoo.ZhangInception`` (BatchNorm), ``zhang-alexnet`` =
    ``zoo.ZhangAlexNet`` (the image's height×width), ``zhang-mlp`` =
    ``zoo.ZhangMLP(depth, width)`` on the flattened input (Zhang et al. 2017: 1×512, 3×512);
    each called with ``key`` and ``dtype`` exactly as written here, so a model built by hand
    from the same key is the same model. Other names: ``make_model`` (state None)."""
    from . import zoo

    if name not in ZOO_MODELS:
        return make_model(name, in_shape, out_size, key=key, width=width, depth=depth,
                          activation=activation, dtype=dtype, zero_init=zero_init), None
    from .errors import ConfigError

    if activation != "relu":
        raise ConfigError(f"activation: the {name!r} preset uses relu (as in its paper), got "
                          f"{activation!r}")
    check_preset_input(name, in_shape)
    if name == "zhang-mlp":
        return zoo.ZhangMLP(depth, width, out_size, math.prod(in_shape), key=key,
                            dtype=dtype), None
    c, h, w = in_shape
    if name == "zhang-alexnet":
        return zoo.ZhangAlexNet(out_size, c, (h, w), key=key, dtype=dtype), None
    if name == "resnet18":
        return eqx.nn.make_with_state(zoo.ResNet18)(out_size, width, c, key=key, dtype=dtype)
    return eqx.nn.make_with_state(zoo.ZhangInception)(out_size, c, key=key, dtype=dtype)


def make_model(name: str, in_shape: tuple[int, ...], out_size: int, *, key, width: int = 128,
               depth: int = 1, activation: str = "relu", dtype=None,
               zero_init: bool = True) -> eqx.Module:
    """Build a model by its CLI name for inputs of shape ``in_shape`` (one example).

    ``linear`` and ``random-features`` start their trained parameters at θ0 = 0 (``zero_init``,
    the default; False: Equinox's random init): both are linear in θ, so MSE and cross-entropy
    are convex in θ and there is no symmetry to break; from zero, GD/SGD on MSE stay in the row
    space of the features and converge to the minimum-norm solution Φ⁺Y (Zhang et al. 2017 §5;
    ``sgdreg.min_norm``). The seed then draws only the random features (and the data order).
    ``mlp``/``cnn`` ignore ``zero_init`` (their hidden units need a random start).
    The paper-scale presets (``ZOO_MODELS``) are built by ``make_preset``, which also returns
    the BatchNorm state; here only the stateless ones (zhang-alexnet, zhang-mlp)."""
    if name in ZOO_MODELS:
        model, state = make_preset(name, in_shape, out_size, key=key, width=width, depth=depth,
                                   activation=activation, dtype=dtype)
        if state is not None:
            raise ValueError(f"the {name} model holds BatchNorm state; build it with "
                             "make_preset (which returns (model, state))")
        return model
    d = math.prod(in_shape)
    if name == "mlp":
        return MLP(d, out_size, width, depth, activation, key=key, dtype=dtype)
    if name == "cnn":
        if len(in_shape) != 3:
            raise ValueError("the cnn model needs image data (channels, height, width)")
        return CNN(in_shape, out_size, width, activation, key=key, dtype=dtype)
    if name == "linear":
        return LinearModel(d, out_size, zero_init=zero_init, key=key, dtype=dtype)
    if name == "random-features":
        return RandomFeatures(d, out_size, width, zero_init=zero_init, key=key, dtype=dtype)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def trainable_filter(model: eqx.Module):
    """Pytree of bools marking the trained arrays (random features stay fixed)."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    if isinstance(model, RandomFeatures):
        spec = eqx.tree_at(lambda m: (m.proj, m.phase), spec, replace=(False, False))
    return spec


def partition(model: eqx.Module):
    """(θ, frozen): trainable parameters and the rest; ``eqx.combine(θ, frozen)`` rebuilds it."""
    return eqx.partition(model, trainable_filter(model))


def layer_names(params) -> list[str]:
    """Names of the parameter groups (one per layer/module holding arrays), e.g. ``layers[0]``."""
    return list(group_leaves(params))


def layer_norms(params) -> jax.Array:
    """Frobenius norm of each layer's parameters (weights and bias together), in layer order."""
    groups = group_leaves(params)
    return jnp.stack([jnp.sqrt(sum(jnp.sum(a**2) for a in g)) for g in groups.values()])


def group_leaves(params) -> dict[str, list]:
    """Parameter arrays grouped by the module holding them (path without the last key)."""
    groups: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if leaf is None:
            continue
        name = jax.tree_util.keystr(path[:-1]).lstrip(".") or "params"
        groups.setdefault(name, []).append(leaf)
    return groups


def num_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
