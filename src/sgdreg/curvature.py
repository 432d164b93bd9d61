"""Curvature of the training loss from Hessian-vector products (docs/science.md#curvature).

Every estimator acts on a ``matvec``: a function v ↦ Hv on FLAT parameter vectors of length P
(``hessian_matvec`` builds the full-batch one on ``batching.full_batch_hvp``; any symmetric
``v ↦ A @ v`` works too). In the style of matfree, each returns an estimate together with its
Monte-Carlo standard error. Probes over K random vectors run one at a time (``batching="map"``,
a ``lax.scan``, the default: K probes cost K HVPs on CPU in ``benchmarks/bench_curvature.py``)
or all at once (``"vmap"``: 3–4× slower there on CPU; may pay off on an accelerator). All
functions are jit-compatible; the public ones are wrapped in ``eqx.filter_jit``, so a
``HessianMatvec`` (a pytree) is traced and a new θ does not recompile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Shaped

from .batching import DEFAULT_CHUNK, full_batch_hvp, full_batch_mean, full_batch_value_and_grad
from .models import group_leaves

Matvec = Callable[[Float[Array, " P"]], Float[Array, " P"]]
ExampleLoss = Callable[[Any, jax.Array, jax.Array], jax.Array]
PROBES = ("rademacher", "gaussian")
BATCHING = ("map", "vmap")
GRADIENT_NOISE_CHUNK = 256  # per-example gradients hold chunk × P numbers at once
_BREAKDOWN = 1e3  # Lanczos breakdown: β ≤ _BREAKDOWN·eps·‖Av_j‖


# --------------------------------------------------------------------------- the Hessian


class HessianMatvec(eqx.Module):
    """v ↦ Hv, H = ∇²L, L = (1/n)Σ_i ℓ_i, on flat vectors; chunked as Σ_j (b_j/n)·H_j v
    (docs/science.md#curvature)."""

    example_loss: ExampleLoss
    params: Any
    x: jax.Array
    y: jax.Array
    chunk_size: int = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return sum(int(a.size) for a in jax.tree.leaves(self.params))

    @property
    def dtype(self):
        return jnp.result_type(*jax.tree.leaves(self.params))

    def __call__(self, v: Float[Array, " P"]) -> Float[Array, " P"]:
        unravel = ravel_pytree(self.params)[1]
        hv = full_batch_hvp(
            self.example_loss, self.params, self.x, self.y, unravel(v), self.chunk_size
        )
        return ravel_pytree(hv)[0]


def hessian_matvec(
    example_loss: ExampleLoss, params: PyTree, x: Float[Array, "n ..."], y: Shaped[Array, "n ..."],
    chunk_size: int = DEFAULT_CHUNK,
) -> HessianMatvec:
    """Full-batch Hessian of L = (1/n)Σ_i ℓ_i as a flat matvec v ↦ Hv (forward-over-reverse,
    Pearlmutter 1994; chunked as Σ_j (b_j/n)·H_j v, docs/science.md#curvature).

    Args:
        example_loss: ``(params, x_i, y_i) -> ℓ_i``, e.g. ``Objective.example_loss``.
        params: θ, any pytree; x, y: the data (leading axis n).
    Returns:
        ``HessianMatvec`` (a pytree; ``.dim`` = P) acting on flat vectors of length P.

    Example:
        >>> hv = sgdreg.hessian_matvec(obj.example_loss, params, x, y)      # doctest: +SKIP
        >>> sgdreg.lanczos_eigs(hv, hv.dim, k=1, num_steps=20, key=key).eigenvalues
    """
    return HessianMatvec(example_loss, params, x, y, int(chunk_size))


@eqx.filter_jit
def dense_hessian(
    example_loss: ExampleLoss, params: PyTree, x: Float[Array, "n ..."], y: Shaped[Array, "n ..."]
) -> Float[Array, "P P"]:
    """H = ∇²L as a dense P×P matrix (jax.hessian on the flat vector): the exact oracle
    (docs/science.md#curvature)."""
    flat, unravel = ravel_pytree(params)

    def loss(f):
        return jnp.mean(jax.vmap(example_loss, in_axes=(None, 0, 0))(unravel(f), x, y))

    return jax.hessian(loss)(flat)


# --------------------------------------------------------------------------- probes


def _dtype(matvec, dtype):
    if dtype is not None:
        return jnp.dtype(dtype)
    dtype = getattr(matvec, "dtype", None)
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)


def _probe(key, dim: int, kind: str, dtype) -> Float[Array, " P"]:
    """One probe with E[vvᵀ] = I: Rademacher ±1 or standard Gaussian."""
    if kind == "rademacher":
        return jax.random.rademacher(key, (dim,), dtype)
    if kind == "gaussian":
        return jax.random.normal(key, (dim,), dtype)
    raise ValueError(f"unknown probe kind {kind!r}; choose one of {', '.join(PROBES)}")


def _map(fn, xs, batching: str):
    """fn over the leading axis of xs: sequentially (``lax.map``) or all at once (``vmap``)."""
    if batching == "map":
        return jax.lax.map(fn, xs)
    if batching == "vmap":
        return jax.vmap(fn)(xs)
    raise ValueError(f"unknown batching {batching!r}; choose one of {', '.join(BATCHING)}")


def _mean_stderr(samples):
    """Sample mean and √(sample variance / K) (NaN for K = 1)."""
    k = samples.shape[0]
    return jnp.mean(samples), jnp.std(samples, ddof=1) / math.sqrt(k)


# --------------------------------------------------------------------------- Hutchinson


class TraceEstimate(NamedTuple):
    """Hutchinson result: tr H ± stderr, tr H² ± stderr and diag(H), from the same probes; with
    ``segments``, also the block traces tr(H_bb) ± stderr (e.g. per layer, ``layer_segments``)."""

    estimate: jax.Array
    stderr: jax.Array
    num_probes: int
    trace_sq: jax.Array
    trace_sq_stderr: jax.Array
    diag: jax.Array
    target_met: Any = None  # hutchinson_adaptive only: stderr ≤ rel_stderr·|estimate| reached
    block_estimates: Any = None  # (B,): mean_k Σ_{i∈b} v_ki (Hv_k)_i, Σ_b = estimate
    block_stderr: Any = None  # (B,): sample s.d. over the probes / √K


def _hutchinson_samples(matvec, dim, key, num_probes, kind, batching, dtype, segments=None,
                        num_segments=0):
    """Per-probe vᵀHv, ‖Hv‖² and block sums Σ_{i∈b} v_i(Hv)_i (when ``segments`` maps each flat
    index to its block), and Σ_k v_k⊙Hv_k (a running sum under ``map``)."""
    keys = jax.random.split(key, num_probes)

    def one(k):
        v = _probe(k, dim, kind, dtype)
        hv = matvec(v)
        prod = v * hv
        blocks = (jax.ops.segment_sum(prod, segments, num_segments) if segments is not None
                  else jnp.zeros((0,), dtype))
        return v @ hv, hv @ hv, blocks, prod

    if batching == "map":

        def body(acc, k):
            quad, sq, blocks, prod = one(k)
            return acc + prod, (quad, sq, blocks)

        diag_sum, (quad, sq, blocks) = jax.lax.scan(body, jnp.zeros((dim,), dtype), keys)
        return quad, sq, diag_sum, blocks
    quad, sq, blocks, prod = _map(one, keys, batching)
    return quad, sq, jnp.sum(prod, axis=0), blocks


def _trace_estimate(quad, sq, diag_sum, blocks=None, target_met=None) -> TraceEstimate:
    k = quad.shape[0]
    est, se = _mean_stderr(quad)
    tsq, tsq_se = _mean_stderr(sq)
    b_est = b_se = None
    if blocks is not None and blocks.shape[-1]:
        b_est, b_se = jnp.mean(blocks, axis=0), jnp.std(blocks, axis=0, ddof=1) / math.sqrt(k)
    return TraceEstimate(est, se, k, tsq, tsq_se, diag_sum / k, target_met, b_est, b_se)


@eqx.filter_jit
def hutchinson(
    matvec: Matvec, dim: int, key: PRNGKeyArray, num_probes: int, kind: str = "rademacher",
    batching: str = "map", dtype=None, segments=None, num_segments: int = 0,
) -> TraceEstimate:
    """tr H ≈ (1/K) Σ v_kᵀHv_k, tr H² ≈ mean ‖Hv_k‖², diag H ≈ mean v_k⊙Hv_k (Hutchinson 1989).

    Args: ``matvec`` (v ↦ Hv on flat vectors), ``dim`` P, ``key``, ``num_probes`` K, ``kind``
    (rademacher/gaussian); optionally ``segments`` (P,) block index of each flat entry and
    ``num_segments`` B: block traces tr(H_bb) ≈ (1/K) Σ_k Σ_{i∈b} v_ki(Hv_k)_i ± s.d./√K from the
    same probes (unbiased: E[v_iv_j] = δ_ij), which sum to the total probe by probe.
    Returns: ``TraceEstimate`` (estimate ± stderr, tr H², diag, block traces ± stderr).
    Example: ``sgdreg.hutchinson(hv, hv.dim, jax.random.key(0), 100).estimate``; per layer:
    ``names, seg = layer_segments(params)``, ``hutchinson(hv, P, key, K, segments=seg,
    num_segments=len(names)).block_estimates``.
    """
    dtype = _dtype(matvec, dtype)
    if segments is not None:
        segments = jnp.asarray(segments, jnp.int32)
        if segments.shape != (dim,) or num_segments < 1:
            raise ValueError(f"segments must have shape ({dim},) with num_segments ≥ 1, "
                             f"got {segments.shape} and {num_segments}")
    quad, sq, diag_sum, blocks = _hutchinson_samples(matvec, dim, key, num_probes, kind,
                                                     batching, dtype, segments, num_segments)
    return _trace_estimate(quad, sq, diag_sum, blocks)


_hutchinson_block = eqx.filter_jit(_hutchinson_samples)


def hutchinson_adaptive(
    matvec: Matvec, dim: int, key: PRNGKeyArray, rel_stderr: float = 0.05, min_probes: int = 10,
    max_probes: int = 500, block: int = 10, kind: str = "rademacher", batching: str = "map",
    dtype=None,
) -> TraceEstimate:
    """Hutchinson in blocks of probes until stderr ≤ rel_stderr·|estimate| or max_probes.

    A host loop over jitted blocks; ``target_met`` in the result says whether the target was met.
    """
    if max_probes < 2 or block < 1:
        raise ValueError(f"need max_probes ≥ 2 and block ≥ 1, got {max_probes} and {block}")
    dtype = _dtype(matvec, dtype)
    quad, sq, diag_sum, b, met = np.zeros(0), np.zeros(0), 0.0, 0, False
    while quad.size < max_probes:
        size = min(block, max_probes - quad.size)
        q, s, d, _ = _hutchinson_block(matvec, dim, jax.random.fold_in(key, b), size, kind,
                                       batching, dtype)
        quad, sq, diag_sum, b = np.append(quad, q), np.append(sq, s), diag_sum + d, b + 1
        if quad.size >= 2:  # host-side float64 statistics
            met = quad.std(ddof=1) / np.sqrt(quad.size) <= rel_stderr * abs(quad.mean())
        if met and quad.size >= min_probes:
            break
    res = _trace_estimate(jnp.asarray(quad, dtype), jnp.asarray(sq, dtype), diag_sum)
    return res._replace(target_met=bool(met))


def layer_traces(diag: Float[Array, " P"], params) -> dict[str, jax.Array]:
    """tr(H_ll) per layer = Σ of diag(H) over the layer's entries (unbiased from Hutchinson's diag).

    Layers are ``models.layer_names(params)`` in that order (parameters grouped by module path).
    For their standard errors use ``hutchinson(..., segments=layer_segments(params)[1])``.
    """
    flat, unravel = ravel_pytree(params)
    groups = group_leaves(unravel(jnp.asarray(diag, flat.dtype)))
    return {name: sum(jnp.sum(a) for a in leaves) for name, leaves in groups.items()}


def layer_segments(params) -> tuple[list[str], np.ndarray]:
    """(names, segments): ``models.layer_names(params)`` and, for each entry of the flat vector
    ``ravel_pytree(params)[0]``, the position of its layer in ``names`` (for ``hutchinson``).
    Needs only the shapes, so it works on traced ``params`` too."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = [int(np.prod(np.shape(a))) for a in leaves]
    starts = np.cumsum([0, *sizes])
    positions = jax.tree.unflatten(treedef, [np.arange(a, a + n) for a, n in zip(starts, sizes)])
    segments = np.zeros(int(starts[-1]), np.int32)
    groups = group_leaves(positions)
    for b, members in enumerate(groups.values()):
        for idx in members:
            segments[idx] = b
    return list(groups), segments


# --------------------------------------------------------------------------- Hutch++


class HutchPlusPlusEstimate(NamedTuple):
    """Hutch++ result: estimate = low_rank_trace + residual_trace; stderr is the residual's."""

    estimate: jax.Array
    stderr: jax.Array
    num_matvecs: int
    low_rank_trace: jax.Array
    residual_trace: jax.Array


@eqx.filter_jit
def hutch_plus_plus(
    matvec: Matvec, dim: int, key: PRNGKeyArray, num_matvecs: int, kind: str = "rademacher",
    batching: str = "map", dtype=None,
) -> HutchPlusPlusEstimate:
    """tr H ≈ tr(QᵀHQ) + Hutchinson on (I−QQᵀ)H(I−QQᵀ), Q = orth(HS) (Meyer et al. 2021)."""
    if num_matvecs < 4:
        raise ValueError(f"hutch_plus_plus needs num_matvecs ≥ 4, got {num_matvecs}")
    dtype = _dtype(matvec, dtype)
    k = num_matvecs // 3
    k_res = num_matvecs - 2 * k
    ks, kg = jax.random.split(key)
    sample = lambda keys: jax.vmap(lambda kk: _probe(kk, dim, kind, dtype))(keys)
    hs = _map(matvec, sample(jax.random.split(ks, k)), batching)  # (k, P): (HS)ᵀ
    q = jnp.linalg.qr(hs.T)[0]  # (P, k), orthonormal columns
    low_rank = jnp.sum(q.T * _map(matvec, q.T, batching))

    def residual(kk):
        g = _probe(kk, dim, kind, dtype)
        w = g - q @ (q.T @ g)
        return w @ matvec(w)

    t2, se = _mean_stderr(_map(residual, jax.random.split(kg, k_res), batching))
    return HutchPlusPlusEstimate(low_rank + t2, se, num_matvecs, low_rank, t2)


# --------------------------------------------------------------------------- Lanczos


def _orthogonalise(w, basis):
    """Remove the span of basis rows from w, twice (classical Gram-Schmidt; 'twice is enough').
    (Vᵀc is written c @ V: XLA on CPU copies the transpose otherwise, 3× slower.)"""
    w = w - (basis @ w) @ basis
    return w - (basis @ w) @ basis


_BLOCK = 32  # lanczos_adaptive reads its basis in blocks of this many rows


def _orthogonalise_active(w, basis, j):
    """``_orthogonalise`` against rows 0..j of ``basis`` (the others are still zero), reading only
    the blocks of ``_BLOCK`` rows that hold them, and a second pass only when the first removed
    much (‖w'‖ < ‖w‖/√2: Daniel, Gragg, Kaufman & Stewart 1976), as ARPACK does."""
    nb = basis.shape[0] // _BLOCK

    def one_pass(w):
        def body(acc, i):
            def sub():  # a dynamic slice: reshaping the carried basis into blocks copies it
                b = jax.lax.dynamic_slice_in_dim(basis, i * _BLOCK, _BLOCK)
                return acc - (b @ w) @ b

            return jax.lax.cond(i * _BLOCK <= j, sub, lambda: acc), None

        return jax.lax.scan(body, w, jnp.arange(nb))[0]

    w1 = one_pass(w)
    again = jnp.linalg.norm(w1) < jnp.linalg.norm(w) / math.sqrt(2)
    return jax.lax.cond(again, one_pass, lambda x: x, w1)


def _lanczos_step(matvec, basis, v, v_prev, beta_prev, j, tiny, orthogonalise=None):
    """Lanczos step j: store v as basis row j, w = Av − αv − β_{j−1}v_{j−1} re-orthogonalised
    against the basis; on breakdown (β ≤ tiny·‖Av‖) restart from a fixed pseudo-random vector
    orthogonal to the basis with β = 0. Returns (basis, v_{j+1}, α_j, β_j)."""
    orth = orthogonalise or _orthogonalise
    dim, dtype = v.shape[0], v.dtype
    basis = basis.at[j].set(v)
    w = matvec(v)
    scale = jnp.linalg.norm(w)
    alpha = v @ w
    w = orth(w - alpha * v - beta_prev * v_prev, basis)
    beta = jnp.linalg.norm(w)

    def restart(_):
        r = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), j), (dim,), dtype)
        r = orth(r, basis)
        nr = jnp.linalg.norm(r)
        return r / jnp.where(nr > 0, nr, 1), jnp.zeros((), dtype)

    def proceed(_):
        return w / jnp.where(beta > 0, beta, 1), beta  # guard: cond is a select under vmap

    v_next, beta = jax.lax.cond(beta <= tiny * scale, restart, proceed, None)
    return basis, v_next, alpha, beta


@eqx.filter_jit
def lanczos_tridiag(
    matvec: Matvec, v0: Float[Array, " P"], num_steps: int
) -> tuple[Float[Array, " m"], Float[Array, " m"], Float[Array, "m P"]]:
    """m = min(num_steps, P) Lanczos steps, full re-orthogonalisation: AVᵀ = VᵀT + β_m v_{m+1}e_mᵀ.

    Returns (α, β, V): T = tridiag(β[:-1], α, β[:-1]); β[-1] couples to the next (unused) vector;
    V's rows are orthonormal. On breakdown (invariant subspace, β ≈ 0) the recurrence restarts
    from a fixed pseudo-random vector orthogonal to V and records β = 0, so T stays exact.
    """
    dim = v0.shape[0]
    m = min(int(num_steps), dim)
    dtype = v0.dtype
    tiny = _BREAKDOWN * jnp.finfo(dtype).eps

    def step(carry, j):
        basis, v, v_prev, beta_prev = carry
        basis, v_next, alpha, beta = _lanczos_step(matvec, basis, v, v_prev, beta_prev, j, tiny)
        return (basis, v_next, v, beta), (alpha, beta)

    v0 = v0 / jnp.linalg.norm(v0)
    init = (jnp.zeros((m, dim), dtype), v0, jnp.zeros_like(v0), jnp.zeros((), dtype))
    (basis, *_), (alphas, betas) = jax.lax.scan(step, init, jnp.arange(m))
    return alphas, betas, basis


def _tridiag_eigh(alphas, betas):
    """Eigenvalues (ascending) and eigenvectors (columns) of T = tridiag(β[:-1], α, β[:-1])."""
    off = betas[:-1]
    t = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigh(t)


class LanczosResult(NamedTuple):
    """Ritz pairs: eigenvalues (k,), eigenvectors (k, P), residuals ‖Hy − θy‖ = |β_m s_{m,i}| (k,),
    converged (k,) bools (see ``lanczos_eigs``) and the number of Lanczos steps m taken."""

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residuals: jax.Array
    converged: jax.Array
    num_steps: Any = None


def _start(matvec, dim, key, v0, which, dtype):
    if which not in ("largest", "smallest"):
        raise ValueError(f"unknown which {which!r}; choose largest or smallest")
    if v0 is not None:
        return v0
    if key is None:
        raise ValueError("Lanczos needs a key or a starting vector v0")
    return jax.random.normal(key, (dim,), _dtype(matvec, dtype))


def _default_tol(dtype, tol):
    """√eps of the dtype, or ``tol`` (a float, or an array: traced, so no recompilation)."""
    return math.sqrt(float(jnp.finfo(dtype).eps)) if tol is None else tol


@eqx.filter_jit
def lanczos_eigs(
    matvec: Matvec, dim: int, k: int, num_steps: int, key: PRNGKeyArray | None = None,
    v0: Float[Array, " P"] | None = None, which: str = "largest", tol: float | None = None,
    dtype=None,
) -> LanczosResult:
    """k largest (or smallest) ALGEBRAIC eigenpairs of H by Lanczos with full re-orthogonalisation.

    Ritz pair (θ_i, y_i) of T = VHVᵀ after m = ``num_steps`` steps: its residual is
    ‖Hy_i − θ_iy_i‖ = |β_m s_{m,i}| (exact in exact arithmetic), and it is CONVERGED when
    residual ≤ tol·max_j|θ_j| (max|θ| ≈ ‖H‖₂; tol default √eps of the dtype: 1.5e-8 in float64,
    3.5e-4 in float32). A residual r puts an eigenvalue of H within r of θ_i, and within r²/δ
    when the rest of the spectrum is ≥ δ away from θ_i (Kato–Temple; Parlett 1998, "The
    Symmetric Eigenvalue Problem").
    Warm start: pass the previous top eigenvector as ``v0`` (else a Gaussian start from ``key``).
    For a fixed accuracy rather than a fixed m see ``lanczos_adaptive``.
    Example: ``sgdreg.lanczos_eigs(hv, hv.dim, 3, 30, key=jax.random.key(0)).eigenvalues``.
    """
    v0 = _start(matvec, dim, key, v0, which, dtype)
    alphas, betas, basis = lanczos_tridiag(matvec, v0, num_steps)
    m = alphas.shape[0]
    if not 0 < k <= m:
        raise ValueError(f"k must be in 1..{m} (the number of Lanczos steps), got {k}")
    theta, s = _tridiag_eigh(alphas, betas)
    idx = np.arange(m)[::-1][:k] if which == "largest" else np.arange(k)
    residuals = jnp.abs(betas[-1] * s[-1, idx])
    converged = residuals <= _default_tol(v0.dtype, tol) * jnp.max(jnp.abs(theta))
    return LanczosResult(theta[idx], s[:, idx].T @ basis, residuals, converged, m)


@eqx.filter_jit
def lanczos_adaptive(
    matvec: Matvec, dim: int, k: int, max_steps: int, key: PRNGKeyArray | None = None,
    v0: Float[Array, " P"] | None = None, which: str = "smallest", tol: float | None = None,
    check_every: int = 10, dtype=None,
) -> LanczosResult:
    """Lanczos (full re-orthogonalisation) run until the k wanted Ritz pairs have CONVERGED:
    ‖Hy_i − θ_iy_i‖ = |β_j s_{j,i}| ≤ tol·max|θ| (the definition of ``lanczos_eigs``), tested
    every ``check_every`` steps, or until m = min(max_steps, P) steps.

    For λ_min of a neural-net Hessian, which sits at the edge of a dense bulk near 0, a fixed
    step count is either wasteful or unconverged; this pays only the steps needed. ``num_steps``
    in the result is the steps taken. One compiled program (a ``lax.while_loop`` over a fixed
    max_steps × P basis: memory max_steps·P numbers). An invariant Krylov subspace (breakdown:
    β = 0) ends it at zero residual, as for any Krylov method started from one vector.
    Example: ``sgdreg.lanczos_adaptive(hv, hv.dim, 1, 400, key=key, tol=1e-6).eigenvalues[0]``.
    """
    v0 = _start(matvec, dim, key, v0, which, dtype)
    dtype = v0.dtype
    m = min(int(max_steps), dim)
    if not 0 < k <= m:
        raise ValueError(f"k must be in 1..{m} (max_steps, at most P), got {k}")
    if check_every < 1:
        raise ValueError(f"check_every must be ≥ 1, got {check_every}")
    tol = _default_tol(dtype, tol)
    tiny = _BREAKDOWN * jnp.finfo(dtype).eps
    smallest = which == "smallest"

    def ritz(alphas, betas, j, size):
        """Ritz pairs of the leading (j+1)×(j+1) block T_j (j < size), padded to size×size with
        decoupled diagonal entries beyond the wanted end (one static-shape eigh for many j)."""
        rows = jnp.arange(size)
        alphas, betas = alphas[:size], betas[:size]
        active = rows <= j
        off = jnp.where(rows < j, betas, 0)[:-1]
        bound = jnp.max(jnp.where(active, jnp.abs(alphas), 0)) + 2 * jnp.max(jnp.abs(off)) + 1
        diag = jnp.where(active, alphas, (2 if smallest else -2) * bound)
        theta, s = jnp.linalg.eigh(jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1))
        idx = np.arange(k) if smallest else np.arange(size)[::-1][:k]
        ends = (theta[0], theta[j]) if smallest else (theta[size - 1 - j], theta[size - 1])
        scale = jnp.maximum(jnp.abs(ends[0]), jnp.abs(ends[1]))
        residuals = jnp.abs(betas[j] * s[j, idx])
        return theta[idx], s[:, idx], residuals, residuals <= tol * scale

    # convergence checks on the smallest of these sizes that holds T_j (eigh of 500×500 costs
    # ~100× eigh of 64×64 on CPU)
    sizes = sorted({min(2**e, m) for e in range(6, max(m - 1, 1).bit_length() + 1)} | {m})
    checks = [lambda a, b, j, size=size: jnp.all(ritz(a, b, j, size)[3]) for size in sizes]

    def cond(c):
        return (c[0] < m) & ~c[-1]

    def body(c):
        j, basis, alphas, betas, v, v_prev, beta_prev, _ = c
        orth = functools.partial(_orthogonalise_active, j=j)
        basis, v_next, alpha, beta = _lanczos_step(matvec, basis, v, v_prev, beta_prev, j, tiny,
                                                   orth)
        alphas, betas = alphas.at[j].set(alpha), betas.at[j].set(beta)
        check = ((j + 1) % check_every == 0) & (j + 1 >= k)
        which_size = jnp.searchsorted(jnp.asarray(sizes), j + 1)
        done = jax.lax.cond(check, lambda: jax.lax.switch(which_size, checks, alphas, betas, j),
                            lambda: jnp.zeros((), bool))
        return j + 1, basis, alphas, betas, v_next, v, beta, done

    v0 = v0 / jnp.linalg.norm(v0)
    zeros = jnp.zeros((m,), dtype)
    rows_stored = -(-m // _BLOCK) * _BLOCK  # whole blocks; rows ≥ m stay zero
    init = (jnp.zeros((), jnp.int32), jnp.zeros((rows_stored, dim), dtype), zeros, zeros, v0,
            jnp.zeros_like(v0), jnp.zeros((), dtype), jnp.zeros((), bool))
    n, basis, alphas, betas, *_ = jax.lax.while_loop(cond, body, init)
    theta, s, residuals, converged = ritz(alphas, betas, n - 1, m)
    return LanczosResult(theta, s.T @ basis[:m], residuals, converged, n)


# --------------------------------------------------------------------------- SLQ


class SpectralQuadrature(NamedTuple):
    """Raw SLQ output: nodes θ (n_v, M) and weights τ (n_v, M), Σ_j τ_vj = 1 per start."""

    nodes: jax.Array
    weights: jax.Array


@eqx.filter_jit
def slq(
    matvec: Matvec, dim: int, key: PRNGKeyArray, num_starts: int, num_steps: int,
    kind: str = "rademacher", batching: str = "map", dtype=None,
) -> SpectralQuadrature:
    """Stochastic Lanczos quadrature: per unit random start, θ = eig(T), τ = (first components)².

    Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019.
    """
    dtype = _dtype(matvec, dtype)

    def one(k):
        alphas, betas, _ = lanczos_tridiag(matvec, _probe(k, dim, kind, dtype), num_steps)
        theta, s = _tridiag_eigh(alphas, betas)
        return theta, s[0] ** 2

    nodes, weights = _map(one, jax.random.split(key, num_starts), batching)
    return SpectralQuadrature(nodes, weights)


def slq_density(nodes, weights, grid: Float[Array, " G"], sigma: float) -> Float[Array, " G"]:
    """φ(t) = (1/n_v) Σ_v Σ_j τ_vj N(t; θ_vj, σ²); ``sigma`` is the Gaussian STANDARD DEVIATION."""
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return jnp.einsum("gvm,vm->g", kernel, weights) / nodes.shape[0]


def slq_moment(nodes, weights, dim: int, power: int) -> jax.Array:
    """tr(H^p) ≈ P · mean_v Σ_j τ_vj θ_vj^p (exact in expectation for p ≤ 2M−1)."""
    return dim * jnp.mean(jnp.sum(weights * nodes**power, axis=-1))


def slq_trace(nodes, weights, dim: int) -> jax.Array:
    """tr H ≈ P · mean_v Σ_j τ_vj θ_vj (docs/science.md#curvature consistency check)."""
    return slq_moment(nodes, weights, dim, 1)


# --------------------------------------------------------------------------- adaptive methods


class PreconditionedMatvec(eqx.Module):
    """v ↦ P^{-1/2} H P^{-1/2} v for a positive diagonal preconditioner P (flat, length P):
    symmetric and similar to P⁻¹H, so it has the same (real) eigenvalues."""

    matvec: Any
    inv_sqrt: jax.Array  # P^{-1/2}, flat

    @property
    def dim(self) -> int:
        return int(self.inv_sqrt.shape[0])

    @property
    def dtype(self):
        return self.inv_sqrt.dtype

    def __call__(self, v: Float[Array, " P"]) -> Float[Array, " P"]:
        return self.inv_sqrt * self.matvec(self.inv_sqrt * v)


def preconditioned_matvec(matvec: Matvec, preconditioner: PyTree) -> PreconditionedMatvec:
    """P^{-1/2} H P^{-1/2} as a flat matvec, P = diag(``preconditioner``): a pytree shaped like θ
    (e.g. Adam's √v̂ + ε) or a flat vector, all entries > 0 (Cohen et al. 2022, "Adaptive
    gradient methods at the edge of stability"; docs/science.md#adaptive-sharpness)."""
    return PreconditionedMatvec(matvec, jax.lax.rsqrt(ravel_pytree(preconditioner)[0]))


@eqx.filter_jit
def preconditioned_sharpness(
    matvec: Matvec, preconditioner: PyTree, num_steps: int, key: PRNGKeyArray | None = None,
    v0: Float[Array, " P"] | None = None, tol: float | None = None,
) -> LanczosResult:
    """Preconditioned sharpness λ_max(P⁻¹H) = λ_max(P^{-1/2} H P^{-1/2}) (similar matrices;
    Cohen et al. 2022) by ``num_steps`` Lanczos steps on the symmetric form, with its Ritz
    residual and converged flag as in ``lanczos_eigs`` (of the symmetric operator). The returned
    eigenvector w is the symmetric form's; P⁻¹H's is P^{-1/2}w. For Adam, P = diag(√v̂ + ε) with
    v̂ bias-corrected; it rises to (2 + 2β1)/((1 − β1)h) (38/h at β1 = 0.9).
    Example: ``sgdreg.curvature.preconditioned_sharpness(hv, p, 20, key=key).eigenvalues[0]``."""
    op = preconditioned_matvec(matvec, preconditioner)
    return lanczos_eigs(op, op.dim, 1, num_steps, key=key, v0=v0, tol=tol)


# --------------------------------------------------------------------------- SGD quantities


class BatchSharpness(NamedTuple):
    mean: jax.Array
    stderr: jax.Array
    num_batches: int


def _tree_vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@eqx.filter_jit
def batch_sharpness(
    example_loss: ExampleLoss, params: PyTree, x: Float[Array, "n ..."], y: Shaped[Array, "n ..."],
    key: PRNGKeyArray, batch_size: int, num_batches: int, chunk_size: int = DEFAULT_CHUNK,
    batching: str = "map",
) -> BatchSharpness:
    """E_B[g_BᵀH_Bg_B / ‖g_B‖²] over random minibatches drawn without replacement
    (docs/science.md#curvature)."""
    n = x.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n}, got {batch_size}")

    def one(k):
        idx = jax.random.permutation(k, n)[:batch_size]
        xb, yb = x[idx], y[idx]
        _, g = full_batch_value_and_grad(example_loss, params, xb, yb, chunk_size)
        hg = full_batch_hvp(example_loss, params, xb, yb, g, chunk_size)
        return _tree_vdot(g, hg) / _tree_vdot(g, g)

    mean, se = _mean_stderr(_map(one, jax.random.split(key, num_batches), batching))
    return BatchSharpness(mean, se, num_batches)


@eqx.filter_jit
def gradient_noise(
    example_loss: ExampleLoss, params: PyTree, x: Float[Array, "n ..."], y: Shaped[Array, "n ..."],
    chunk_size: int = GRADIENT_NOISE_CHUNK,
) -> Float[Array, ""]:
    """Γ = (1/n) Σ_i ‖∇ℓ_i − ∇L‖² (centred, exact) from vmapped per-example gradients
    (docs/science.md#implicit-regularization)."""
    _, g = full_batch_value_and_grad(example_loss, params, x, y, chunk_size)
    grad_i = jax.grad(example_loss)

    def deviation_sq(p, xi, yi):
        d = jax.tree.map(jnp.subtract, grad_i(p, xi, yi), g)
        return _tree_vdot(d, d)

    return full_batch_mean(deviation_sq, params, x, y, chunk_size)


def _check_batch(n: int, batch_size: int):
    if not 0 < batch_size < n:
        raise ValueError(f"batch_size must be in 1..{n - 1} (B = n has no minibatch noise)")


def minibatch_variance_expectation(gamma, n: int, batch_size: int):
    """E_shuffle[(1/m)Σ_k ‖∇L̂_k − ∇L‖²] = ((n−B)/(B(n−1)))·Γ (sampling without replacement,
    docs/science.md#implicit-regularization)."""
    _check_batch(n, batch_size)
    return gamma * (n - batch_size) / (batch_size * (n - 1))


def gradient_noise_from_minibatches(
    mean_minibatch_grad_norm_sq, full_grad_norm_sq, n: int, batch_size: int
):
    """Γ̂ = ((1/m)Σ_k‖∇L̂_k‖² − ‖∇L‖²)·B(n−1)/(n−B), unbiased over random shuffles
    (docs/science.md#implicit-regularization)."""
    _check_batch(n, batch_size)
    excess = mean_minibatch_grad_norm_sq - full_grad_norm_sq
    return excess * batch_size * (n - 1) / (n - batch_size)
