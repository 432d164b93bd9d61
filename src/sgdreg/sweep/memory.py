"""Memory a sweep needs, from the config and the data's shape alone (nothing allocated)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np

from ..config import RunConfig
from ..data import Dataset
from ..models import num_params

DEFAULT_BLOCK = 8  # runs per vmapped block by default: min(DEFAULT_BLOCK, runs in the group)


def dataset_shape(ds: Dataset) -> tuple[int, ...]:
    """``(n_train, *input_shape)``: the shape ``estimate_memory`` takes."""
    return (ds.n_train, *ds.input_shape)


def _preset_shapes(cfg: RunConfig, in_shape: Sequence[int], out_size: int):
    """(model, state) of the config's preset as ``jax.ShapeDtypeStruct`` leaves (nothing
    allocated; ``models.make_preset``, the builder ``train`` uses)."""
    from ..models import make_preset

    return eqx.filter_eval_shape(
        lambda: make_preset(cfg.model, tuple(in_shape), out_size, key=jax.random.key(0),
                            width=cfg.width, depth=cfg.depth, activation=cfg.activation,
                            dtype=_dtype(cfg)))


def _dtype(cfg: RunConfig):
    return np.float64 if cfg.dtype == "float64" else np.float32


def _abstract_model(cfg: RunConfig, in_shape: Sequence[int], out_size: int):
    """(θ, frozen) of the config's model with unallocated zero arrays (shapes and names only);
    a BatchNorm preset's running statistics count as frozen."""
    from ..models import partition

    shapes, state = _preset_shapes(cfg, in_shape, out_size)
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype)
                         if isinstance(a, jax.ShapeDtypeStruct) else a, shapes)
    params, frozen = partition(zeros)
    if state is not None:
        frozen = (frozen, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state))
    return params, frozen


def _residual_floats(cfg: RunConfig, in_shape: tuple[int, ...], out_size: int, batch: int) -> int:
    """Floats the backward pass of a ``batch``-example forward keeps: the inexact leaves of
    ``jax.vjp``'s residuals, traced only (``eqx.filter_eval_shape``)."""
    model, state = _preset_shapes(cfg, in_shape, out_size)
    params, static = eqx.partition(model, lambda a: isinstance(a, jax.ShapeDtypeStruct))
    x = jax.ShapeDtypeStruct((batch, *in_shape), _dtype(cfg))

    def fwd(p, s, x):
        m = eqx.combine(p, static)
        if s is None:
            return jax.vmap(m)(x)
        return jax.vmap(m, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(x, s)[0]

    res = eqx.filter_eval_shape(lambda p, s, x: jax.vjp(lambda p: fwd(p, s, x), p)[1],
                                params, state, x)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(res)
               if hasattr(a, "dtype") and np.issubdtype(a.dtype, np.inexact))


@functools.lru_cache(maxsize=64)
def _traced_activations(cfg: RunConfig, in_shape: tuple[int, ...], out_size: int) -> int:
    """Floats one example adds to what the backward pass keeps (``jax.vjp`` residuals of a
    2-example batch minus those of a 1-example batch, so weights kept for the backward pass
    do not count), plus its outputs: the paper-scale presets, whose layers are too varied for
    a formula."""
    per = _residual_floats(cfg, in_shape, out_size, 2) - _residual_floats(cfg, in_shape,
                                                                         out_size, 1)
    return per + 2 * out_size


def _activations_per_example(cfg: RunConfig, in_shape: Sequence[int], out_size: int) -> int:
    """Floats one example keeps for the backward pass (inputs, pre- and post-activations)."""
    from ..models import ZOO_MODELS

    if cfg.model in ZOO_MODELS:
        return _traced_activations(cfg, tuple(in_shape), out_size)
    d = int(np.prod(in_shape))
    if cfg.model == "mlp":
        return d + 2 * cfg.depth * cfg.width + 2 * out_size
    if cfg.model == "cnn":
        _, h, w = in_shape
        h2, w2 = -(-h // 2), -(-w // 2)
        return d + 2 * cfg.width * h * w + 2 * 2 * cfg.width * h2 * w2 + 2 * cfg.width \
            + 2 * out_size
    if cfg.model == "random-features":
        return d + 2 * cfg.width + 2 * out_size
    return d + 2 * out_size


def estimate_memory(cfg: RunConfig, dataset_shape: Sequence[int], *, out_size: int = 10,
                    n_test: int = 0, runs: int = 1, block: int | None = None,
                    shared_data: bool = True) -> dict[str, int]:
    """Bytes a run and a sweep need, from the config and the training inputs' shape
    ``(n, *input_shape)``: exact parameter count (``jax.eval_shape``), activations estimated.

    Kept per run for the whole sweep (``state``): θ, θ0 (for ``dist_from_init``), the gradient,
    optimizer slots (momentum/nesterov 1×θ, adam 2×θ, flows ~8×θ for the Tsit5 stages), frozen
    arrays (random features; a BatchNorm preset's running statistics), the epoch permutation
    (n int32), and the run's own data when runs
    differ in data. Per run while its block computes (``activations``): the larger of one
    full-batch chunk (``min(eval_chunk, n)`` examples; ×3 with EGR or the modified flow, for the
    HVP) and one minibatch, counting inputs, pre- and post-activations and outputs (the
    paper-scale presets: what one more example adds to the traced backward pass's residuals,
    ``_traced_activations``). Shared: the
    data once (train + test; replicated on every device); chunks are read in place (no padded
    copy, whatever ``eval_chunk``). ``per_run`` = state + activations: one run alone.
    ``total`` = shared + runs × state + block × activations, with
    ``block = min(8, runs)`` by default (blocks of a device run one after another).
    """
    n, *in_shape = (int(v) for v in dataset_shape)
    item = 8 if cfg.dtype == "float64" else 4
    params, frozen_part = _abstract_model(cfg, in_shape, out_size)
    p = num_params(params)
    frozen = num_params(eqx.filter(frozen_part, eqx.is_array))
    slots = {"momentum": 1, "nesterov": 1, "adam": 2, "flow": 8, "modified-flow": 8}
    act = _activations_per_example(cfg, in_shape, out_size)
    chunk = max(1, min(cfg.eval_chunk, n))
    eval_act = chunk * act * (3 if cfg.egr > 0 or cfg.optimizer == "modified-flow" else 1)
    batch_act = (0 if cfg.full_batch else cfg.batch_size) * act
    d = int(np.prod(in_shape))
    data = (n + n_test) * (d + 1) * item
    out = {
        "params": p * item,
        "params0": p * item,
        "gradient": p * item,
        "optimizer_state": slots.get(cfg.optimizer, 0) * p * item,
        "frozen": frozen * item,
        "permutation": n * 4,
    }
    state = sum(out.values()) + (0 if shared_data else data)
    activations = max(eval_act, batch_act) * item
    block = min(block or DEFAULT_BLOCK, runs)
    shared = data if shared_data else 0
    return {**out, "state": state, "activations": activations,
            "per_run": state + activations, "data": data, "shared": shared,
            "runs": runs, "block": block, "total": shared + runs * state + block * activations}


def format_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b} B"  # pragma: no cover
