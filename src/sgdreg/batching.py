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
model, and SGD minibatches (``x[idx]`` with traced ``idx`` gathers on the host). Full-batch
training of a BatchNorm or dropout model streams in ghost batches (``ghost_value_and_grad``:
each chunk its own batch statistics and dropout key, the running statistics updated chunk after
chunk; docs/science.md#batchnorm-and-dropout). Not streamed: ``chunk_data`` (a padded
on-device copy, for percentiles).
Prefetching from disk is left to the OS page cache (a memmap read is sequential by chunk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError

DEFAULT_CHUNK = 4096
TRANSFORM_BLOCK = 64  # rows a HostArray transforms at once (see HostArray.read)

ExampleFn = Callable[[Any, jax.Array, jax.Array], Any]  # (params, x_i, y_i) -> pytree


class HostArray:
    """A host-resident array (NumPy or ``np.memmap``, not copied) that full-batch functions
    stream to the device chunk by chunk, read as ``dtype`` (converted one chunk at a time).

    ``array`` may also be a list of arrays with equal row shape and dtype, read as their
    concatenation along rows without copying (CIFAR-10's five batch files). ``transform`` maps a
    block of raw rows ``(k, ...)`` to the example rows ``(k, ...)``, each row on its own; it is
    applied to every chunk and every gathered minibatch before the cast to ``dtype``
    (``sgdreg.data.Affine``: uint8 pixels → standardized floats; ``map`` composes a further one,
    e.g. a centre crop); the example shape is that of ``transform(array[:1])``. A transform
    with a ``key`` attribute (bytes) lets ``digest`` hash the raw bytes, not the values.

    A pytree node with no leaves, hashed by identity: it passes through ``jax.jit``,
    ``eqx.filter_jit`` and ``vmap`` unchanged. Indexing with concrete ints/slices reads the host
    (``x[0]``, ``x[:10]``: NumPy arrays); indexing with a JAX array (also traced) gathers those
    rows onto the device through ``jax.pure_callback`` (``take``), e.g. SGD minibatches
    ``x[idx]``. ``head(n)``: the first n rows, still on the host.

    Example: ``sgdreg.batching.full_batch_value_and_grad(loss, θ, HostArray(x_memmap),
    HostArray(y), chunk_size=1024)`` — equal to the in-memory result.
    """

    def __init__(self, array, dtype=None, transform=None):
        if isinstance(array, HostArray):
            h = array
            self.parts, self._ends, self.start, self.stop = h.parts, h._ends, h.start, h.stop
            if transform is None and (dtype is None or np.dtype(dtype) == h.dtype):
                self.transform, self._digest, dtype = h.transform, h._digest, h.dtype
            elif transform is None and h.transform is None and h.dtype == h.parts[0].dtype:
                self.transform, self._digest = None, {}  # a plain cast of the raw values
            else:  # read as h (its values and dtype), then transformed
                self.transform, self._digest = _compose(_Cast(h.transform, h.dtype), transform), {}
        else:
            parts = tuple(array) if isinstance(array, (list, tuple)) else (array,)
            if not parts or not all(isinstance(p, np.ndarray) and p.ndim >= 1 for p in parts):
                kinds = ", ".join(sorted({type(p).__name__ for p in parts})) or "nothing"
                raise ConfigError(f"HostArray needs a NumPy array or np.memmap (or a list of "
                                  f"them), got {kinds}")
            if len({(p.shape[1:], p.dtype) for p in parts}) > 1:
                raise ConfigError("HostArray: the arrays of a list need equal row shapes and "
                                  "dtypes, got " + ", ".join(f"{p.shape}/{p.dtype}" for p in parts))
            self.parts = parts
            self._ends = np.cumsum([len(p) for p in parts])
            self.start, self.stop = 0, int(self._ends[-1])
            self.transform, self._digest = transform, {}
        if self.transform is None:
            self._row = tuple(self.parts[0].shape[1:])
            out = self.parts[0].dtype
        else:
            probe = self.transform(self._raw(np.arange(min(1, len(self)))))
            self._row, out = tuple(np.shape(probe)[1:]), np.asarray(probe).dtype
        self.dtype = np.dtype(dtype if dtype is not None else out)

    @property
    def array(self):
        """The host array (a tuple of them for a list)."""
        return self.parts[0] if len(self.parts) == 1 else self.parts

    shape = property(lambda self: (len(self),) + self._row)
    ndim = property(lambda self: 1 + len(self._row))
    size = property(lambda self: len(self) * int(np.prod(self._row, dtype=np.int64)))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        kind = "memmap" if isinstance(self.parts[0], np.memmap) else "ndarray"
        kind += f" ×{len(self.parts)}" if len(self.parts) > 1 else ""
        return (f"HostArray({kind}, shape={self.shape}, dtype={self.dtype}"
                + (", transformed)" if self.transform is not None else ")"))

    def head(self, n: int) -> HostArray:
        """The first ``n`` rows (``x[:n]``), still on the host: no data read."""
        out = HostArray(self)
        out.stop = self.start + max(0, min(int(n), len(self)))
        out._digest = {}
        return out

    def map(self, fn) -> HostArray:
        """This array with ``fn`` applied to every block of rows after the present transform
        and cast (e.g. a centre crop); dtype: that of ``fn``'s output."""
        return HostArray(self, None, fn)

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        """Raw rows ``rows`` (indices into this window, 1-D) from the parts: a slice when they
        are consecutive (sequential reads of a memmap), else a gather per part."""
        rows = np.asarray(rows, np.int64) + self.start
        if len(self.parts) == 1:
            p = self.parts[0]
            if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
                return np.asarray(p[rows[0]:rows[-1] + 1])
            return np.asarray(p[rows])
        which = np.searchsorted(self._ends, rows, side="right")
        out = np.empty((rows.size,) + self.parts[0].shape[1:], self.parts[0].dtype)
        for k in np.unique(which):
            m = which == k
            out[m] = self.parts[k][rows[m] - (self._ends[k - 1] if k else 0)]
        return out

    def read(self, rows) -> np.ndarray:
        """Rows ``rows`` (1-D ints of this array) as NumPy ``dtype``, transformed in blocks of
        ``TRANSFORM_BLOCK`` rows (a transform acts row by row; its float64 temporaries then stay
        in cache: 2× faster for CIFAR-10 chunks than one pass)."""
        raw = self._raw(rows)
        if self.transform is None:
            return np.asarray(raw, self.dtype)
        out = np.empty((len(raw),) + self._row, self.dtype)
        for s in range(0, len(raw), TRANSFORM_BLOCK):
            out[s:s + TRANSFORM_BLOCK] = self.transform(raw[s:s + TRANSFORM_BLOCK])
        return out

    def __getitem__(self, idx):
        if isinstance(idx, jax.Array):  # also a tracer under jit/vmap
            return self.take(idx)
        first, rest = (idx[0], idx[1:]) if isinstance(idx, tuple) and idx else (idx, ())
        rows = np.arange(len(self))[first]
        out = self.read(np.atleast_1d(rows).reshape(-1)).reshape(np.shape(rows) + self._row)
        return out[(slice(None),) * np.ndim(rows) + tuple(rest)] if rest else out

    def _gather(self, rows):
        rows = np.asarray(rows)
        out = self.read(np.clip(rows.reshape(-1), 0, len(self) - 1))
        return out.reshape(rows.shape + self.shape[1:])

    def take(self, rows: jax.Array) -> jax.Array:
        """Rows ``rows`` (an int array of any shape) on the device: ``x[rows]``, gathered on
        the host (indices clipped to 0..n−1, like jnp's gather)."""
        rows = jnp.asarray(rows, jnp.int32)
        out = jax.ShapeDtypeStruct(rows.shape + self.shape[1:], self.dtype)
        return jax.pure_callback(self._gather, out, rows, vmap_method="expand_dims")

    def chunks(self, chunk: int = DEFAULT_CHUNK):
        """``(start, rows)`` for consecutive blocks of ``chunk`` rows, read and transformed."""
        for s in range(0, len(self), max(1, int(chunk))):
            yield s, self.read(np.arange(s, min(s + chunk, len(self))))

    def digest(self) -> str:
        """sha256 (hex) of the values: the raw bytes of this window and the transform's
        ``key`` when it has one (cached), else the values read chunk by chunk."""
        if "hex" not in self._digest:
            h = hashlib.sha256(str((self.shape, str(self.dtype))).encode())
            key = getattr(self.transform, "key", None) if self.transform is not None else b""
            if key is None:
                for _, block in self.chunks():
                    h.update(np.ascontiguousarray(block).tobytes())
            else:
                h.update(key)
                for s in range(0, len(self), DEFAULT_CHUNK):
                    raw = self._raw(np.arange(s, min(s + DEFAULT_CHUNK, len(self))))
                    h.update(np.ascontiguousarray(raw).tobytes())
            self._digest["hex"] = h.hexdigest()
        return self._digest["hex"]


class _Cast:
    """``inner`` (or nothing), then a cast to ``dtype``: a transform."""

    def __init__(self, inner, dtype):
        self.inner, self.dtype = inner, np.dtype(dtype)
        k = b"" if inner is None else getattr(inner, "key", None)
        self.key = None if k is None else k + f"|cast {self.dtype}".encode()

    def __call__(self, raw):
        return np.asarray(raw if self.inner is None else self.inner(raw), self.dtype)


class _Composed:
    def __init__(self, first, then):
        self.first, self.then = first, then
        a, b = getattr(first, "key", None), getattr(then, "key", None)
        self.key = None if a is None or b is None else a + b"|" + b

    def __call__(self, raw):
        return self.then(self.first(raw))


def _compose(first, then):
    return first if then is None else then if first is None else _Composed(first, then)


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


def _add(chunk_fn):
    """The fold step of a sum: acc + chunk_fn(x_j, y_j, w_j)."""
    return lambda acc, j, xb, yb, wb: jax.tree.map(jnp.add, acc, chunk_fn(xb, yb, wb))


def _scan_sum(chunk_fn, init, x, y, chunk_size: int):
    """Σ_j chunk_fn(x_j, y_j, w_j) over in-place chunks (w_j masks rows of earlier chunks)."""
    return _scan_fold(_add(chunk_fn), init, x, y, chunk_size)


def _scan_fold(step, carry, x, y, chunk_size: int, rows: int | None = None):
    """carry ← step(carry, j, x_j, y_j, w_j) for the in-place chunks j = 0, 1, ... of the first
    ``rows`` rows (default all n) in order; host data stream (``_stream_fold``)."""
    if is_host(x) or is_host(y):
        return _stream_fold(step, carry, x, y, chunk_size, rows)
    n = x.shape[0] if rows is None else rows
    chunk, nc = _chunks(n, chunk_size)

    def body(acc, j):
        start, wb = _window(j, chunk, n, x.dtype)
        xb = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        yb = jax.lax.dynamic_slice_in_dim(y, start, chunk)
        return step(acc, j, xb, yb, wb), None

    return jax.lax.scan(body, carry, jnp.arange(nc))[0]


def _rows(a, rows):
    return a.take(rows) if is_host(a) else jnp.take(a, rows, axis=0)


def _stream_fold(step, carry, x, y, chunk_size: int, rows: int | None = None):
    """``_scan_fold`` over host data: the same chunks, rows and weights, each chunk gathered on
    the host; chunk j+1's fetch is issued in step j before (and independent of) chunk j's
    compute, so a transfer overlaps a compute where the runtime allows."""
    n = x.shape[0] if rows is None else rows
    chunk, nc = _chunks(n, chunk_size)

    def fetch(j):
        start, wb = _window(j, chunk, n, x.dtype)
        rows = start + jnp.arange(chunk)
        return _rows(x, rows), _rows(y, rows), wb

    def body(c, j):
        acc, cur = c
        nxt = jax.lax.cond(j + 1 < nc, lambda: fetch(j + 1), lambda: cur)  # prefetch
        return (step(acc, j, *cur), nxt), None

    return jax.lax.scan(body, (carry, fetch(jnp.int32(0))), jnp.arange(nc))[0][0]


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


def ghost_fold(step, carry, x, y, ghost_batch: int):
    """carry ← step(carry, c, x_c, y_c, w_c) over the ghost batches c = 0, 1, ... of
    (x, y) in data order: ⌊n/G⌋ batches of G = ``ghost_batch`` rows, then the r = n mod G
    remaining rows as one batch of r rows (a separate, statically shaped call), so each batch
    holds only its own rows, as a ``DataLoader(shuffle=False)`` would give them. Host data
    stream (``_stream_fold``); w_c is all ones."""
    n = x.shape[0]
    g, _ = _chunks(n, ghost_batch)
    full = n // g
    carry = _scan_fold(step, carry, x, y, g, rows=full * g)
    r = n - full * g
    if r:
        rows = full * g + jnp.arange(r)
        carry = step(carry, jnp.int32(full), _rows(x, rows), _rows(y, rows),
                     jnp.ones((r,), x.dtype))
    return carry


def ghost_value_and_grad(batch_loss, params, model_state, x, y, key, ghost_batch: int):
    """The training-mode full-batch loss of a BatchNorm/dropout model in ghost batches
    (docs/science.md#batchnorm-and-dropout):

        L(θ) = Σ_c (n_c/n) · L_c(θ; s_c),   ∇L = Σ_c (n_c/n) · ∇_θ L_c(θ; s_c),
        s_{c+1} = the model state after batch c's training-mode forward (s_0 = ``model_state``),

    L_c the mean loss of ghost batch c (``ghost_fold``: batches of ``ghost_batch`` rows, the
    remainder last) with its own batch statistics, and with dropout keys from
    ``fold_in(key, c)`` (``key`` itself when there is a single batch; None: no dropout).
    ``batch_loss(params, state, x_c, y_c, key) -> (mean loss, new state)`` is
    ``Objective.batch_loss``. Returns (L, ∇L, s_C): the running statistics take one update per
    ghost batch, chunk after chunk, as a training-mode pass over the data in chunks does
    (Cohen et al. 2021's code, locuslab/edge-of-stability ``src/gd.py``). Memory: one batch;
    host data stream."""
    n = x.shape[0]
    g, nc = _chunks(n, ghost_batch)
    vg = jax.value_and_grad(batch_loss, has_aux=True)

    def step(carry, c, xb, yb, wb):
        loss, grad, state = carry
        k = key if key is None or nc == 1 else jax.random.fold_in(key, c)
        (lc, state), gc = vg(params, state, xb, yb, k)
        w = xb.shape[0] / n
        return loss + w * lc, jax.tree.map(lambda a, b: a + w * b, grad, gc), state

    dtype = jax.tree.leaves(params)[0].dtype
    init = (jnp.zeros((), dtype), jax.tree.map(jnp.zeros_like, params), model_state)
    return ghost_fold(step, init, x, y, g)
