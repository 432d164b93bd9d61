"""Paper-scale image models in Equinox.

Every model acts on ONE example of shape ``(C, H, W)``; batch it with
``jax.vmap(model, axis_name="batch", ...)``. Models containing BatchNorm are stateful:
build them with ``eqx.nn.make_with_state(Model)(...)`` and call them as
``model(x, state) -> (logits, state)``, vmapped with ``in_axes=(0, None), out_axes=(0, None)``.
The stateless models (:class:`ZhangAlexNet`, :class:`ZhangMLP`) are called as
``model(x) -> logits``.

* :class:`ResNet18` -- the width-``k`` CIFAR ResNet-18 of Nakkiran et al. (2020),
  "Deep double descent: where bigger models and more data hurt" (adapted there from
  kuangliu/pytorch-cifar): pre-activation basic blocks by default.
* :class:`ZhangInception`, :class:`ZhangAlexNet`, :class:`ZhangMLP` -- the small
  CIFAR-10 models of Zhang et al. (2017), "Understanding deep learning requires
  rethinking generalization", appendix A, for 28x28x3 centre-cropped inputs.

Every constructor takes ``dtype`` (None: JAX's default floating type), passed to each layer, so
the initial weights are drawn in that precision. ``models.make_preset`` builds them by the
``RunConfig`` names ``resnet18``, ``zhang-inception``, ``zhang-alexnet`` and ``zhang-mlp``.

:func:`count_params` counts trainable parameters (BatchNorm running statistics live in
``eqx.nn.State`` and are not counted).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = [
    "ResNet18",
    "ZhangInception",
    "ZhangAlexNet",
    "ZhangMLP",
    "count_params",
    "ZHANG_PARAM_COUNTS",
]

#: Parameter counts reported in Zhang et al. (2017), Table 1.
ZHANG_PARAM_COUNTS = {
    "inception": 1_649_402,
    "alexnet": 1_387_786,
    "mlp1x512": 1_209_866,
    "mlp3x512": 1_735_178,
}


def count_params(model) -> int:
    """Number of scalars in the inexact (floating) arrays of ``model``.

    ``eqx.nn.StateIndex`` subtrees (BatchNorm running statistics, counters) are skipped,
    so the result is the same whether or not the model was built with
    ``eqx.nn.make_with_state``. Also accepts an ``eqx.filter_eval_shape``'d model.
    """
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)

    def counts(x):
        if isinstance(x, jax.ShapeDtypeStruct):  # from eqx.filter_eval_shape
            return jnp.issubdtype(x.dtype, jnp.inexact)
        return not is_index(x) and eqx.is_inexact_array(x)

    leaves = jax.tree_util.tree_leaves(model, is_leaf=is_index)
    return int(sum(math.prod(x.shape) for x in leaves if counts(x)))


def _bn(channels: int, *, affine: bool = True, dtype=None) -> eqx.nn.BatchNorm:
    # mode="batch": train-mode normalisation uses the batch statistics (standard BN);
    # momentum 0.9 here == PyTorch's momentum=0.1.
    return eqx.nn.BatchNorm(
        channels, axis_name="batch", channelwise_affine=affine, momentum=0.9, mode="batch",
        dtype=dtype,
    )


def _norm(bn: eqx.nn.BatchNorm, x, state):
    """Apply ``bn`` and keep ``x``'s dtype (with jax_enable_x64 on, eqx's bias-corrected
    inference statistics come out float64 even for a float32 model)."""
    out, state = bn(x, state)
    return out.astype(x.dtype), state


def _conv(cin, cout, k, stride=1, padding=0, *, bias=False, key, dtype=None):
    return eqx.nn.Conv2d(cin, cout, k, stride=stride, padding=padding, use_bias=bias, key=key,
                         dtype=dtype)


# --------------------------------------------------------------------------- ResNet-18


class _PreActBlock(eqx.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3; 1x1 conv shortcut (no BN) on the pre-activated
    input when the shape changes (He et al. 2016b, kuangliu's PreActBlock)."""

    bn1: eqx.nn.BatchNorm
    conv1: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None

    def __init__(self, cin, cout, stride, *, key, dtype=None):
        k1, k2, k3 = jax.random.split(key, 3)
        self.bn1 = _bn(cin, dtype=dtype)
        self.conv1 = _conv(cin, cout, 3, stride, 1, key=k1, dtype=dtype)
        self.bn2 = _bn(cout, dtype=dtype)
        self.conv2 = _conv(cout, cout, 3, 1, 1, key=k2, dtype=dtype)
        self.shortcut = (_conv(cin, cout, 1, stride, key=k3, dtype=dtype)
                         if stride != 1 or cin != cout else None)

    def __call__(self, x, state):
        out, state = _norm(self.bn1, x, state)
        out = jax.nn.relu(out)
        sc = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out, state = _norm(self.bn2, out, state)
        out = self.conv2(jax.nn.relu(out))
        return out + sc, state


class _BasicBlock(eqx.Module):
    """Standard (post-activation) basic block: conv-BN-ReLU-conv-BN + shortcut, ReLU;
    the shortcut is 1x1 conv + BN when the shape changes."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    shortcut: eqx.nn.Conv2d | None
    shortcut_bn: eqx.nn.BatchNorm | None

    def __init__(self, cin, cout, stride, *, key, dtype=None):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = _conv(cin, cout, 3, stride, 1, key=k1, dtype=dtype)
        self.bn1 = _bn(cout, dtype=dtype)
        self.conv2 = _conv(cout, cout, 3, 1, 1, key=k2, dtype=dtype)
        self.bn2 = _bn(cout, dtype=dtype)
        if stride != 1 or cin != cout:
            self.shortcut = _conv(cin, cout, 1, stride, key=k3, dtype=dtype)
            self.shortcut_bn = _bn(cout, dtype=dtype)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def __call__(self, x, state):
        out, state = _norm(self.bn1, self.conv1(x), state)
        out, state = _norm(self.bn2, self.conv2(jax.nn.relu(out)), state)
        if self.shortcut is None:
            sc = x
        else:
            sc, state = _norm(self.shortcut_bn, self.shortcut(x), state)
        return jax.nn.relu(out + sc), state


class ResNet18(eqx.Module):
    """CIFAR ResNet-18 of width ``k`` (Nakkiran et al. 2020, "Deep double descent").

    3x3 stem conv (stride 1, ``k`` channels), four stages of two basic blocks with widths
    ``k, 2k, 4k, 8k`` and strides ``1, 2, 2, 2``, global average pool, linear head.
    ``preact=True`` (default, as in Nakkiran et al.) uses pre-activation blocks exactly as
    kuangliu/pytorch-cifar's ``PreActResNet18`` (no BN/ReLU after the last block);
    ``preact=False`` is kuangliu's standard ``ResNet18`` (stem conv-BN-ReLU). Convs have
    no bias. At ``k=64``: 11,171,146 parameters (preact) / 11,173,962 (standard).

    Stateful (BatchNorm over ``axis_name="batch"``): ``model(x, state) -> (logits, state)``.
    """

    stem: eqx.nn.Conv2d
    stem_bn: eqx.nn.BatchNorm | None
    blocks: tuple
    linear: eqx.nn.Linear
    preact: bool = eqx.field(static=True)

    def __init__(self, num_classes: int = 10, k: int = 64, in_channels: int = 3,
                 preact: bool = True, *, key, dtype=None):
        keys = jax.random.split(key, 10)
        self.preact = preact
        self.stem = _conv(in_channels, k, 3, 1, 1, key=keys[0], dtype=dtype)
        self.stem_bn = None if preact else _bn(k, dtype=dtype)
        block = _PreActBlock if preact else _BasicBlock
        blocks = []
        cin, i = k, 1
        for width, stride in zip((k, 2 * k, 4 * k, 8 * k), (1, 2, 2, 2)):
            for s in (stride, 1):
                blocks.append(block(cin, width, s, key=keys[i], dtype=dtype))
                cin, i = width, i + 1
        self.blocks = tuple(blocks)
        self.linear = eqx.nn.Linear(cin, num_classes, key=keys[9], dtype=dtype)

    def __call__(self, x, state, *, key=None):
        out = self.stem(x)
        if self.stem_bn is not None:
            out, state = _norm(self.stem_bn, out, state)
            out = jax.nn.relu(out)
        for blk in self.blocks:
            out, state = blk(out, state)
        return self.linear(jnp.mean(out, axis=(1, 2))), state


# --------------------------------------------------------------- Zhang et al. (2017)


class _ConvModule(eqx.Module):
    """Conv (no bias) -> BatchNorm -> ReLU.

    BN has a learned shift (beta) but no scale (gamma), like TF-slim's default
    ``batch_norm(center=True, scale=False)``: this reproduces the paper's parameter
    count (equivalently: conv bias + non-affine BN).
    """

    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    beta: jax.Array

    def __init__(self, cin, cout, k, stride=1, padding="SAME", *, key, dtype=None):
        self.conv = _conv(cin, cout, k, stride, padding, key=key, dtype=dtype)
        self.bn = _bn(cout, affine=False, dtype=dtype)
        self.beta = jnp.zeros((cout, 1, 1), dtype)

    def __call__(self, x, state):
        out, state = _norm(self.bn, self.conv(x), state)
        return jax.nn.relu(out + self.beta), state


class _InceptionModule(eqx.Module):
    """Concat(ConvModule 1x1 ``c1``, ConvModule 3x3 ``c3``)."""

    b1: _ConvModule
    b3: _ConvModule

    def __init__(self, cin, c1, c3, *, key, dtype=None):
        k1, k3 = jax.random.split(key)
        self.b1 = _ConvModule(cin, c1, 1, key=k1, dtype=dtype)
        self.b3 = _ConvModule(cin, c3, 3, key=k3, dtype=dtype)

    def __call__(self, x, state):
        a, state = self.b1(x, state)
        b, state = self.b3(x, state)
        return jnp.concatenate([a, b], axis=0), state


class _DownsampleModule(eqx.Module):
    """Concat(ConvModule 3x3 stride 2 ``c``, MaxPool 3x3 stride 2), both VALID padding."""

    conv: _ConvModule
    pool: eqx.nn.MaxPool2d

    def __init__(self, cin, c, *, key, dtype=None):
        self.conv = _ConvModule(cin, c, 3, 2, "VALID", key=key, dtype=dtype)
        self.pool = eqx.nn.MaxPool2d(3, 2)

    def __call__(self, x, state):
        a, state = self.conv(x, state)
        return jnp.concatenate([a, self.pool(x)], axis=0), state


_INCEPTION_SPEC = (
    ("inc", 32, 32), ("inc", 32, 48), ("down", 80),
    ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96), ("down", 96),
    ("inc", 176, 160), ("inc", 176, 160),
)


class ZhangInception(eqx.Module):
    """Small Inception of Zhang et al. (2017), appendix A (fig. 3): ConvModule(96, 3x3),
    Inception(32,32), Inception(32,48), Downsample(80), Inception(112,48), (96,64),
    (80,80), (48,96), Downsample(96), Inception(176,160) x2, global mean pool, linear.

    1,649,402 parameters for 3 input channels and 10 classes (BN shift counted, no BN
    scale; see :class:`_ConvModule`). Stateful: ``model(x, state) -> (logits, state)``.
    """

    stem: _ConvModule
    layers: tuple
    linear: eqx.nn.Linear

    def __init__(self, num_classes: int = 10, in_channels: int = 3, *, key, dtype=None):
        keys = jax.random.split(key, len(_INCEPTION_SPEC) + 2)
        self.stem = _ConvModule(in_channels, 96, 3, key=keys[0], dtype=dtype)
        c, layers = 96, []
        for spec, kk in zip(_INCEPTION_SPEC, keys[1:]):
            if spec[0] == "inc":
                layers.append(_InceptionModule(c, spec[1], spec[2], key=kk, dtype=dtype))
                c = spec[1] + spec[2]
            else:
                layers.append(_DownsampleModule(c, spec[1], key=kk, dtype=dtype))
                c = c + spec[1]
        self.layers = tuple(layers)
        self.linear = eqx.nn.Linear(c, num_classes, key=keys[-1], dtype=dtype)

    def __call__(self, x, state, *, key=None):
        out, state = self.stem(x, state)
        for layer in self.layers:
            out, state = layer(out, state)
        return self.linear(jnp.mean(out, axis=(1, 2))), state


def _local_response_norm(x, depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75):
    """TF ``local_response_normalization`` over channels of a (C, H, W) array, with the
    parameters of the TF CIFAR-10 tutorial that Zhang et al.'s AlexNet follows."""
    sq = jnp.pad(x * x, ((depth_radius, depth_radius), (0, 0), (0, 0)))
    window = 2 * depth_radius + 1
    sums = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (window, 1, 1), (1, 1, 1), "VALID")
    return x / (bias + alpha * sums) ** beta


class ZhangAlexNet(eqx.Module):
    """Small AlexNet of Zhang et al. (2017), appendix A: two (conv 5x5 64 + ReLU ->
    max-pool 3x3 stride 2 -> local response norm) modules, FC 384, FC 192 (ReLU),
    linear. SAME padding throughout, so 28x28 -> 14 -> 7. 1,387,786 parameters for
    28x28x3 inputs and 10 classes. Stateless: ``model(x) -> logits``.
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    fc3: eqx.nn.Linear

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 image_size: int | tuple[int, int] = 28, *, key, dtype=None):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        self.conv1 = _conv(in_channels, 64, 5, 1, "SAME", bias=True, key=k1, dtype=dtype)
        self.conv2 = _conv(64, 64, 5, 1, "SAME", bias=True, key=k2, dtype=dtype)
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        side = math.ceil(math.ceil(h / 2) / 2) * math.ceil(math.ceil(w / 2) / 2)
        self.fc1 = eqx.nn.Linear(64 * side, 384, key=k3, dtype=dtype)
        self.fc2 = eqx.nn.Linear(384, 192, key=k4, dtype=dtype)
        self.fc3 = eqx.nn.Linear(192, num_classes, key=k5, dtype=dtype)

    @staticmethod
    def _same_pool(x):
        """3x3 stride-2 max-pool with TF "SAME" padding (extra pad at the end)."""
        pads = []
        for n in x.shape[1:]:
            total = max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0)
            pads.append((total // 2, total - total // 2))
        x = jnp.pad(x, ((0, 0), *pads), constant_values=-jnp.inf)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 2, 2), "VALID")

    def __call__(self, x, *, key=None):
        out = _local_response_norm(self._same_pool(jax.nn.relu(self.conv1(x))))
        out = _local_response_norm(self._same_pool(jax.nn.relu(self.conv2(out))))
        out = jax.nn.relu(self.fc1(out.reshape(-1)))
        out = jax.nn.relu(self.fc2(out))
        return self.fc3(out)


class ZhangMLP(eqx.Module):
    """MLP of Zhang et al. (2017), appendix A: ``depth`` hidden ReLU layers of ``width``
    units on the flattened image. For 28x28x3 inputs and 10 classes: 1,209,866
    parameters (1x512) and 1,735,178 (3x512). Stateless: ``model(x) -> logits``.
    """

    layers: tuple

    def __init__(self, depth: int = 1, width: int = 512, num_classes: int = 10,
                 in_features: int = 28 * 28 * 3, *, key, dtype=None):
        keys = jax.random.split(key, depth + 1)
        sizes = [in_features] + [width] * depth + [num_classes]
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=kk, dtype=dtype)
            for a, b, kk in zip(sizes[:-1], sizes[1:], keys)
        )

    def __call__(self, x, *, key=None):
        out = x.reshape(-1)
        for layer in self.layers[:-1]:
            out = jax.nn.relu(layer(out))
        return self.layers[-1](out)
