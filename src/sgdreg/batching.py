"""Full-batch quantities over large data in fixed-size chunks, weighted by chunk size.

Every full-batch loss, gradient and Hessian-vector product in sgdreg goes through this module:
a ``lax.scan`` over chunks of ``chunk_size`` examples accumulates masked sums, so memory is
bounded by one chunk and a ragged last chunk is weighted exactly (docs/science.md#curvature:
Σ_j (b_j/n)·H_j v, never a plain average). Chunks are read in place with ``dynamic_slice``; the
last one is shifted back to end at row n and its rows already counted get weight 0, so no padded
copy of the dataset is ever made.

Data larger than device memory stay on the host: wrap them in ``HostArray`` (a NumPy array or
``np.memmap``, never copied) and the same functions stream fixed-size chunks to the device
inside the same compiled program. Chunk j's rows are gathered on the host by a
``jax.pure_callback`` and the scan is software-pipelined: chunk j+1's transfer is issued before,
and independently of, chunk j's compute (one chunk in flight, two on the device), with the same
rows and 0/1 weights as the in-memory path, so the numbers are the in-memory ones. Everything
built on these functions streams with it: Hessian-vector products, so Hutchinson, Lanczos and
SLQ (``curvature.py``), the cheap metrics of the training loop, full-batch GD of a stateless
model, and SGD minibatches (``x[idx]`` with traced ``idx`` gathers on the host). Not streamed:
full-batch training of a BatchNorm or dropout model (one training-mode forward over the whole
batch; ``prepare`` refuses it) and ``chunk_data`` (a padded on-device copy, for percentiles).
Prefetching from disk is left to the OS page cache (a memmap read is sequential by chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError

DEFAULT_CHUNK = 4096

ExampleFn = Callable[[Any, jax.Array, jax.Array], Any]  # (params, x_i, y_i) -> pytree


class HostArray:
    """A host-resident array (NumPy or ``np.memmap``, not copied) that full-batch functions
    stream to the device chunk by chunk, read as ``dtype`` (converted one chunk at a time).

    A pytree node with no leaves, hashed by identity: it passes through ``jax.jit``,
    ``eqx.filter_jit`` and ``vmap`` unchanged. Indexing with concrete ints/slices reads the host
    (``x[0]``); indexing with a JAX array (also traced) gathers those rows onto the device
    through ``jax.pure_callback`` (``take``), e.g. SGD minibatches ``x[idx]``.

    Example: ``sgdreg.batching.full_batch_value_and_grad(loss, θ, HostArray(x_memmap),
    HostArray(y), chunk_size=1024)`` — equal to the in-memory result.
    """

    def __init__(self, array, dtype=None):
        if isinstance(array, HostArray):
            array, dtype = array.array, dtype or array.dtype
        if not isinstance(array, np.ndarray):
            raise ConfigError(f"HostArray needs a NumPy array or np.memmap, got "
                              f"{type(array).__name__}")
        self.array = array
        self.dtype = np.dtype(dtype if dtype is not None else array.dtype)

    shape = property(lambda self: tuple(self.array.shape))
    ndim = property(lambda self: self.array.ndim)
    size = property(lambda self: int(self.array.size))
    nbytes = property(lambda self: int(self.array.size) * self.dtype.itemsize)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __repr__(self) -> str:
        kind = "memmap" if isinstance(self.array, np.memmap) else "ndarray"
        return f"HostArray({kind}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, idx):
        if isinstance(idx, jax.Array):  # also a tracer under jit/vmap
            return self.take(idx)
        return np.asarray(self.array[idx], self.dtype)

    def _gather(self, rows):
        rows = np.asarray(rows)
        out = self.array[np.clip(rows.reshape(-1), 0, len(self) - 1)]
        return np.asarray(out, self.dtype).reshape(rows.shape + self.shape[1:])

    def take(self, rows: jax.Array) -> jax.Array:
        """Rows ``rows`` (an int array of any shape) on the device: ``x[rows]``, gathered on
        the host (indices clipped to 0..n−1, like jnp's gather)."""
        rows = jnp.asarray(rows, jnp.int32)
        out = jax.ShapeDtypeStruct(rows.shape + self.shape[1:], self.dtype)
        return jax.pure_callback(self._gather, out, rows, vmap_method="expand_dims")


jax.tree_util.register_pytree_node(HostArray, lambda h: ((), h), lambda h, _: h)


def is_host(a) -> bool:
    return isinstance(a, HostArray)


def check_budget(budget: int, chunk: int, what: str = "device_budget") -> None:
    """ConfigError unless a streaming budget holds one chunk (``chunk`` bytes)."""
    if budget < chunk:
        raise ConfigError(f"{what} {budget} bytes is below one chunk ({chunk} bytes: eval_chunk "
                          "rows of x and y); raise it or lower eval_chunk")


def _spec(a, rows: int):
    return jax.ShapeDtypeStruct((rows,) + tuple(a.shape[1:]), a.dtype)


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


def _chunks(n: int, chunk_size: int) -> tuple[int, int]:
    """(rows per chunk, number of chunks) for n examples."""
    chunk = max(1, min(int(chunk_size), n))
    return chunk, -(-n // chunk)


def _window(j, chunk: int, n: int, dtype):
    """Chunk j's first row (the last chunk shifted back to end at row n) and its 0/1 weights
    (rows already counted by chunk j − 1 get 0)."""
    start = jnp.minimum(j * chunk, n - chunk)
    return start, (start + jnp.arange(chunk) >= j * chunk).astype(dtype)


def _scan_sum(chunk_fn, init, x, y, chunk_size: int):
    """Σ_j chunk_fn(x_j, y_j, w_j) over in-place chunks (w_j masks rows of earlier chunks)."""
    if is_host(x) or is_host(y):
        return _stream_sum(chunk_fn, init, x, y, chunk_size)
    n = x.shape[0]
    chunk, nc = _chunks(n, chunk_size)

    def body(acc, j):
        start, wb = _window(j, chunk, n, x.dtype)
        xb = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        yb = jax.lax.dynamic_slice_in_dim(y, start, chunk)
        return jax.tree.map(jnp.add, acc, chunk_fn(xb, yb, wb)), None

    return jax.lax.scan(body, init, jnp.arange(nc))[0]


def _rows(a, rows):
    return a.take(rows) if is_host(a) else jnp.take(a, rows, axis=0)


def _stream_sum(chunk_fn, init, x, y, chunk_size: int):
    """``_scan_sum`` over host data: the same chunks, rows and weights, each chunk gathered on
    the host; chunk j+1's fetch is issued in step j before (and independent of) chunk j's
    compute, so a transfer overlaps a compute where the runtime allows."""
    n = x.shape[0]
    chunk, nc = _chunks(n, chunk_size)

    def fetch(j):
        start, wb = _window(j, chunk, n, x.dtype)
        rows = start + jnp.arange(chunk)
        return _rows(x, rows), _rows(y, rows), wb

    def body(carry, j):
        acc, cur = carry
        nxt = jax.lax.cond(j + 1 < nc, lambda: fetch(j + 1), lambda: cur)  # prefetch
        return (jax.tree.map(jnp.add, acc, chunk_fn(*cur)), nxt), None

    return jax.lax.scan(body, (init, fetch(jnp.int32(0))), jnp.arange(nc))[0][0]


def full_batch_mean(fn: ExampleFn, params, x, y, chunk_size: int = DEFAULT_CHUNK):
    """(1/n) Σ_i fn(params, x_i, y_i), evaluated chunk by chunk."""
    n = x.shape[0]

    def chunk_fn(xb, yb, wb):
        out = jax.vmap(fn, in_axes=(None, 0, 0))(params, xb, yb)
        return jax.tree.map(lambda a: jnp.tensordot(wb, a, axes=1), out)

    # a lambda: JAX caches eval_shape on the callable, and hashing a bound method of a Module
    # holding traced eqx.nn.State would compare tracers
    shape = jax.eval_shape(lambda p, a, b: fn(p, a[0], b[0]), params, _spec(x, 1),
                           _spec(y, 1))
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
        lambda a, b: chunk_value(params, a, b, jnp.ones(chunk, x.dtype))[1], _spec(x, chunk),
        _spec(y, chunk))
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
