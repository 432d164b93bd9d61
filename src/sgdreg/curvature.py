"""Curvature of the training loss from Hessian-vector products (SCIENCE.md §3).

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
    """v ↦ Hv, H = ∇²L, L = (1/n)Σ_i ℓ_i, on flat vectors; chunked as Σ_j (b_j/n)·H_j v (§3)."""

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
    Pearlmutter 1994; chunked as Σ_j (b_j/n)·H_j v, SCIENCE.md §3).

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
    """H = ∇²L as a dense P×P matrix (jax.hessian on the flat vector): the exact oracle (§3)."""
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
    """Hutchinson result: tr H ± stderr, tr H² ± stderr and diag(H), from the same probes."""

    estimate: jax.Array
    stderr: jax.Array
    num_probes: int
    trace_sq: jax.Array
    trace_sq_stderr: jax.Array
    diag: jax.Array
    target_met: Any = None  # hutchinson_adaptive only: stderr ≤ rel_stderr·|estimate| reached


def _hutchinson_samples(matvec, dim, key, num_probes, kind, batching, dtype):
    """Per-probe vᵀHv and ‖Hv‖², and Σ_k v_k⊙Hv_k (a running sum under ``map``)."""
    keys = jax.random.split(key, num_probes)

    def one(k):
        v = _probe(k, dim, kind, dtype)
        hv = matvec(v)
        return v @ hv, hv @ hv, v * hv

    if batching == "map":

        def body(acc, k):
            quad, sq, prod = one(k)
            return acc + prod, (quad, sq)

        diag_sum, (quad, sq) = jax.lax.scan(body, jnp.zeros((dim,), dtype), keys)
        return quad, sq, diag_sum
    quad, sq, prod = _map(one, keys, batching)
    return quad, sq, jnp.sum(prod, axis=0)


def _trace_estimate(quad, sq, diag_sum, target_met=None) -> TraceEstimate:
    k = quad.shape[0]
    est, se = _mean_stderr(quad)
    tsq, tsq_se = _mean_stderr(sq)
    return TraceEstimate(est, se, k, tsq, tsq_se, diag_sum / k, target_met)


@eqx.filter_jit
def hutchinson(
    matvec: Matvec, dim: int, key: PRNGKeyArray, num_probes: int, kind: str = "rademacher",
    batching: str = "map", dtype=None,
) -> TraceEstimate:
    """tr H ≈ (1/K) Σ v_kᵀHv_k, tr H² ≈ mean ‖Hv_k‖², diag H ≈ mean v_k⊙Hv_k (Hutchinson 1989).

    Args: ``matvec`` (v ↦ Hv on flat vectors), ``dim`` P, ``key``, ``num_probes`` K, ``kind``
    (rademacher/gaussian). Returns: ``TraceEstimate`` (estimate ± stderr, tr H², diag).
    Example: ``sgdreg.hutchinson(hv, hv.dim, jax.random.key(0), 100).estimate``.
    """
    dtype = _dtype(matvec, dtype)
    quad, sq, diag_sum = _hutchinson_samples(matvec, dim, key, num_probes, kind, batching, dtype)
    return _trace_estimate(quad, sq, diag_sum)


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
        q, s, d = _hutchinson_block(matvec, dim, jax.random.fold_in(key, b), size, kind,
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
    """
    flat, unravel = ravel_pytree(params)
    groups = group_leaves(unravel(jnp.asarray(diag, flat.dtype)))
    return {name: sum(jnp.sum(a) for a in leaves) for name, leaves in groups.items()}


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
    """Remove the span of basis rows from w, twice (classical Gram-Schmidt; 'twice is enough')."""
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


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
        basis = basis.at[j].set(v)
        w = matvec(v)
        scale = jnp.linalg.norm(w)
        alpha = v @ w
        w = _orthogonalise(w - alpha * v - beta_prev * v_prev, basis)
        beta = jnp.linalg.norm(w)

        def restart(_):
            r = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), j), (dim,), dtype)
            r = _orthogonalise(r, basis)
            nr = jnp.linalg.norm(r)
            return r / jnp.where(nr > 0, nr, 1), jnp.zeros((), dtype)

        def proceed(_):
            return w / jnp.where(beta > 0, beta, 1), beta  # guard: cond is a select under vmap

        v_next, beta = jax.lax.cond(beta <= tiny * scale, restart, proceed, None)
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
    """Ritz pairs: eigenvalues (k,), eigenvectors (k, P), residuals |β_m s_{m,i}|, converged."""

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residuals: jax.Array
    converged: jax.Array


@eqx.filter_jit
def lanczos_eigs(
    matvec: Matvec, dim: int, k: int, num_steps: int, key: PRNGKeyArray | None = None,
    v0: Float[Array, " P"] | None = None, which: str = "largest", tol: float | None = None,
    dtype=None,
) -> LanczosResult:
    """k largest (or smallest) ALGEBRAIC eigenpairs of H by Lanczos with full re-orthogonalisation.

    Ritz residual ‖Hy − θy‖ = |β_m s_{m,i}|; converged when ≤ tol·max|θ| (tol default √eps).
    Warm start: pass the previous top eigenvector as ``v0`` (else a Gaussian start from ``key``).
    Example: ``sgdreg.lanczos_eigs(hv, hv.dim, 3, 30, key=jax.random.key(0)).eigenvalues``.
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"unknown which {which!r}; choose largest or smallest")
    dtype = _dtype(matvec, dtype) if v0 is None else v0.dtype
    if v0 is None:
        if key is None:
            raise ValueError("lanczos_eigs needs a key or a starting vector v0")
        v0 = jax.random.normal(key, (dim,), dtype)
    alphas, betas, basis = lanczos_tridiag(matvec, v0, num_steps)
    m = alphas.shape[0]
    if not 0 < k <= m:
        raise ValueError(f"k must be in 1..{m} (the number of Lanczos steps), got {k}")
    theta, s = _tridiag_eigh(alphas, betas)
    idx = np.arange(m)[::-1][:k] if which == "largest" else np.arange(k)
    residuals = jnp.abs(betas[-1] * s[-1, idx])
    tol = math.sqrt(float(jnp.finfo(dtype).eps)) if tol is None else tol
    converged = residuals <= tol * jnp.max(jnp.abs(theta))
    return LanczosResult(theta[idx], s[:, idx].T @ basis, residuals, converged)


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
    """tr H ≈ P · mean_v Σ_j τ_vj θ_vj (SCIENCE.md §3 consistency check)."""
    return slq_moment(nodes, weights, dim, 1)


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
    """E_B[g_BᵀH_Bg_B / ‖g_B‖²] over random minibatches drawn without replacement (§3)."""
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
    """Γ = (1/n) Σ_i ‖∇ℓ_i − ∇L‖² (centred, exact) from vmapped per-example gradients (§2)."""
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
    """E_shuffle[(1/m)Σ_k ‖∇L̂_k − ∇L‖²] = ((n−B)/(B(n−1)))·Γ (sampling without replacement, §2)."""
    _check_batch(n, batch_size)
    return gamma * (n - batch_size) / (batch_size * (n - 1))


def gradient_noise_from_minibatches(
    mean_minibatch_grad_norm_sq, full_grad_norm_sq, n: int, batch_size: int
):
    """Γ̂ = ((1/m)Σ_k‖∇L̂_k‖² − ‖∇L‖²)·B(n−1)/(n−B), unbiased over random shuffles (§2)."""
    _check_batch(n, batch_size)
    excess = mean_minibatch_grad_norm_sq - full_grad_norm_sq
    return excess * batch_size * (n - 1) / (n - batch_size)
