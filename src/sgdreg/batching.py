"""Full-batch quantities over large data in fixed-size chunks, weighted by chunk size.

Every full-batch loss, gradient and Hessian-vector product in sgdreg goes through this module:
a ``lax.scan`` over chunks of ``chunk_size`` examples accumulates masked sums, so memory is
bounded by one chunk and a ragged last chunk is weighted exactly (SCIENCE.md §3:
Σ_j (b_j/n)·H_j v, never a plain average). Chunks are read in place with ``dynamic_slice``; the
last one is shifted back to end at row n and its rows already counted get weight 0, so no padded
copy of the dataset is ever made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

DEFAULT_CHUNK = 4096

ExampleFn = Callable[[Any, jax.Array, jax.Array], Any]  # (params, x_i, y_i) -> pytree


def chunk_data(x: jax.Array, y: jax.Array, chunk_size: int):
    """Pad ``(x, y)`` to ``nc·chunk`` rows and reshape to ``(nc, chunk, ...)`` with 0/1 weights
    (a padded copy: for statistics that need all chunks at once, e.g. percentiles)."""
    n = x.shape[0]
    chunk = max(1, min(int(chunk_size), n))
    nc = -(-n // chunk)
    pad = nc * chunk - n
    w = jnp.concatenate([jnp.ones((n,), x.dtype), jnp.zeros((pad,), x.dtype)])
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
        y = jnp.concatenate([y, jnp.repeat(y[:1], pad, axis=0)])
    return (
        x.reshape((nc, chunk) + x.shape[1:]),
        y.reshape((nc, chunk) + y.shape[1:]),
        w.reshape(nc, chunk),
    )


def _scan_sum(chunk_fn, init, x, y, chunk_size: int):
    """Σ_j chunk_fn(x_j, y_j, w_j) over in-place chunks (w_j masks rows of earlier chunks)."""
    n = x.shape[0]
    chunk = max(1, min(int(chunk_size), n))
    nc = -(-n // chunk)

    def body(acc, j):
        start = jnp.minimum(j * chunk, n - chunk)
        xb = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        yb = jax.lax.dynamic_slice_in_dim(y, start, chunk)
        wb = (start + jnp.arange(chunk) >= j * chunk).astype(x.dtype)
        return jax.tree.map(jnp.add, acc, chunk_fn(xb, yb, wb)), None

    return jax.lax.scan(body, init, jnp.arange(nc))[0]


def full_batch_mean(fn: ExampleFn, params, x, y, chunk_size: int = DEFAULT_CHUNK):
    """(1/n) Σ_i fn(params, x_i, y_i), evaluated chunk by chunk."""
    n = x.shape[0]

    def chunk_fn(xb, yb, wb):
        out = jax.vmap(fn, in_axes=(None, 0, 0))(params, xb, yb)
        return jax.tree.map(lambda a: jnp.tensordot(wb, a, axes=1), out)

    # a lambda: JAX caches eval_shape on the callable, and hashing a bound method of a Module
    # holding traced eqx.nn.State would compare tracers
    shape = jax.eval_shape(lambda p, a, b: fn(p, a, b), params, x[0], y[0])
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
    return jax.tree.map(lambda s: s / n, _scan_sum(chunk_fn, init, x, y, chunk_size))


def _masked_sum(example_loss: ExampleFn):
    def f(params, xb, yb, wb):
        return jnp.dot(wb, jax.vmap(example_loss, in_axes=(None, 0, 0))(params, xb, yb))

    return f


def full_batch_value_and_grad(
    example_loss: ExampleFn, params, x, y, chunk_size: int = DEFAULT_CHUNK, has_aux: bool = False
):
    """L(θ) = (1/n) Σ_i ℓ_i(θ) and ∇L(θ), accumulated over chunks (memory of one chunk).

    With ``has_aux`` the example function returns ``(ℓ_i, aux_i)`` and the result is
    ``((L, mean aux), ∇L)``, e.g. the accuracy from the same forward pass.
    """
    n = x.shape[0]

    def chunk_value(p, xb, yb, wb):
        out = jax.vmap(example_loss, in_axes=(None, 0, 0))(p, xb, yb)
        if not has_aux:
            return jnp.dot(wb, out), ()
        return jnp.dot(wb, out[0]), jax.tree.map(lambda a: jnp.tensordot(wb, a, axes=1), out[1])

    vg = jax.value_and_grad(chunk_value, has_aux=True)
    chunk = max(1, min(int(chunk_size), n))
    aux_shape = jax.eval_shape(
        lambda: chunk_value(params, x[:chunk], y[:chunk], jnp.ones(chunk, x.dtype))[1])
    init = (
        (jnp.zeros((), x.dtype), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)),
        jax.tree.map(jnp.zeros_like, params),
    )
    (loss, aux), grad = _scan_sum(lambda xb, yb, wb: vg(params, xb, yb, wb), init, x, y,
                                  chunk_size)
    grad = jax.tree.map(lambda g: g / n, grad)
    if has_aux:
        return (loss / n, jax.tree.map(lambda a: a / n, aux)), grad
    return loss / n, grad


def full_batch_hvp(example_loss: ExampleFn, params, x, y, v, chunk_size: int = DEFAULT_CHUNK):
    """Hv = d/dε ∇L(θ+εv)|₀ by forward-over-reverse, as Σ_j (b_j/n)·H_j v over chunks."""
    n = x.shape[0]
    grad = jax.grad(_masked_sum(example_loss))

    def chunk_fn(xb, yb, wb):
        return jax.jvp(lambda p: grad(p, xb, yb, wb), (params,), (v,))[1]

    hv = _scan_sum(chunk_fn, jax.tree.map(jnp.zeros_like, params), x, y, chunk_size)
    return jax.tree.map(lambda a: a / n, hv)
