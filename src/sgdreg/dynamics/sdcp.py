"""Semidefinite complementarity problems (SDCPs) of the central flow, solved in pure JAX.

SDCP(A, B): find X ∈ Sym(ℝᵏ) with

    X ⪰ 0,   Y = A + B[X] ⪰ 0,   ⟨X, Y⟩ = 0,

A symmetric k×k, B[X]_ij = Σ_lm B_ijlm X_lm a PSD operator on Sym(ℝᵏ). With B PSD it is the
optimality condition of the convex problem min_{X⪰0} ½⟨X, B[X]⟩ + ⟨A, X⟩ (Cohen, Damian et
al., "Understanding Optimization in Deep Learning with Central Flows", their src/sdcp.py solves
that problem with CVXPY through the host). Here: accelerated projected gradient (FISTA with
adaptive restart, O'Donoghue & Candès 2015) on the PSD cone, step 1/‖B‖, in a ``while_loop``
that stops when the natural residual ‖X − Π(X − Y/‖B‖)‖·‖B‖ ≤ tol·(‖A‖ + ‖B‖·‖X‖); no host
callback, so it jits and vmaps. ``mask`` restricts X to the rows/columns where it is True (the
central flow's critical eigenvalues): the projection onto {X ⪰ 0, X = MXM} is Π_PSD(MXM).
k = 1 has the closed form X = max(0, −A/B) (``sdcp_scalar``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

SDCP_MAX_ITERS = 2000
SDCP_TOL = 1e-10


class SDCPSolution(NamedTuple):
    """X, its KKT residuals (``kkt_residual``) and the number of FISTA iterations taken."""

    X: jax.Array
    iterations: jax.Array
    residual: jax.Array


def _sym(m):
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def apply_operator(B, X):
    """B[X]_ij = Σ_lm B_ijlm X_lm."""
    return jnp.einsum("ijlm,lm->ij", B, X)


def psd_projection(Z, mask=None):
    """Π onto {X ⪰ 0 (and X = MXM with M = diag(mask))}: clip the eigenvalues of sym(MZM)."""
    if mask is not None:
        m = mask.astype(Z.dtype)
        Z = Z * m[:, None] * m[None, :]
    d, E = jnp.linalg.eigh(_sym(Z))
    return _sym((E * jnp.maximum(d, 0)) @ E.T)


def operator_norm(B):
    """‖B‖ as an operator on k×k matrices (largest eigenvalue of the k²×k² symmetrised B)."""
    k = B.shape[0]
    Bm = B.reshape(k * k, k * k)
    return jnp.max(jnp.linalg.eigvalsh(_sym(Bm)))


def kkt_residual(A, B, X, mask=None):
    """The largest relative KKT violation of X for SDCP(A, B), Y = A + B[X] (with ``mask``: Y on
    the masked block): max(λ_min(X)⁻/‖X‖, λ_min(Y)⁻/s, |⟨X, Y⟩|/(‖X‖·s)), s = ‖A‖ + ‖B[X]‖."""
    BX = apply_operator(B, X)
    Y = _sym(A + BX)
    s = jnp.linalg.norm(A) + jnp.linalg.norm(BX)
    s = jnp.where(s > 0, s, 1.0)
    if mask is not None:
        m = mask.astype(A.dtype)
        Y = Y * m[:, None] * m[None, :] + jnp.diag(1 - m) * s
    nx = jnp.linalg.norm(X)
    nx = jnp.where(nx > 0, nx, 1.0)  # X = 0: no X violations (and no 0/0 once XLA fuses)
    neg_x = jnp.maximum(-jnp.min(jnp.linalg.eigvalsh(_sym(X))), 0) / nx
    neg_y = jnp.maximum(-jnp.min(jnp.linalg.eigvalsh(Y)), 0) / s
    comp = jnp.abs(jnp.sum(X * Y)) / (nx * s)
    return jnp.maximum(jnp.maximum(neg_x, neg_y), comp)


def sdcp_scalar(a, b):
    """k = 1: X = max(0, −a/b) (b > 0): the central flow's σ² = 2⟨−∇L, ∇S⟩/‖∇S‖² at S = 2/h."""
    return jnp.maximum(0.0, -a / b)


def solve_sdcp(A, B, mask=None, X0=None, *, max_iters: int = SDCP_MAX_ITERS,
               tol: float = SDCP_TOL) -> SDCPSolution:
    """X solving SDCP(A, B) (module docstring) by FISTA on min_{X⪰0} ½⟨X,B[X]⟩ + ⟨A,X⟩.

    Args:
        A: (k, k) symmetric. B: (k, k, k, k), PSD on symmetric matrices.
        mask: (k,) bools; X is zero outside the rows/columns where True (None: all).
        X0: warm start (default 0). max_iters, tol: see the module docstring.
    Returns ``SDCPSolution(X, iterations, residual)``; ``residual`` = ``kkt_residual``.
    If A ⪰ 0 on the mask, X = 0 is the solution (found at iteration 0).
    """
    k = A.shape[0]
    A = _sym(A)
    dtype = A.dtype
    L = jnp.maximum(operator_norm(B), jnp.finfo(dtype).eps * (jnp.linalg.norm(A) + 1.0))
    proj = lambda Z: psd_projection(Z, mask)
    X0 = proj(jnp.zeros((k, k), dtype) if X0 is None else X0.astype(dtype))

    def grad(X):
        return A + apply_operator(B, X)

    def natural(X):
        r = X - proj(X - grad(X) / L)
        scale = jnp.linalg.norm(A) + L * jnp.linalg.norm(X)
        return L * jnp.linalg.norm(r) / jnp.where(scale > 0, scale, 1.0)

    def cond(c):
        X, _, _, i, r = c
        return (r > tol) & (i < max_iters)

    def body(c):
        X, Yk, t, i, _ = c
        Xn = proj(Yk - grad(Yk) / L)
        tn = 0.5 * (1 + jnp.sqrt(1 + 4 * t * t))
        restart = jnp.sum((Yk - Xn) * (Xn - X)) > 0  # gradient-based adaptive restart
        tn = jnp.where(restart, 1.0, tn)
        Yn = jnp.where(restart, Xn, Xn + ((t - 1) / tn) * (Xn - X))
        return Xn, Yn, tn, i + 1, natural(Xn)

    init = (X0, X0, jnp.ones((), dtype), jnp.zeros((), jnp.int32), natural(X0))
    X, _, _, iters, _ = jax.lax.while_loop(cond, body, init)
    return SDCPSolution(X, iters, kkt_residual(A, B, X, mask))
