"""The central flow of gradient descent (Cohen, Damian et al., "Understanding Optimization in
Deep Learning with Central Flows", 2024/25; code: locuslab/central_flows, minimal.py and
src/flows.py; docs/science.md#central-flow).

At the edge of stability GD oscillates along the top Hessian eigenvectors; the central flow is
the ODE its time average follows. Over the tracked top-k eigenspace U (k = ``eigs``, warm-started
eigenvectors of H = ∇²L) let Σ = U X Uᵀ be the covariance of the oscillation; then

    dθ/dt = −[∇L + ½ ∇_θ⟨H(θ), Σ⟩] = −[∇L + ½ Σ_ij X_ij ∇_θ(u_iᵀ H(θ) u_j)],

with X the solution of a semidefinite complementarity problem that holds the critical
eigenvalues at 2/h: X ⪰ 0, 2/h·I − Uᵀ H(θ(t + δ)) U ⪰ 0 (to first order in δ), complementary.
With one unstable eigenvalue this is X = σ² = max(0, 2⟨−∇L, ∇S⟩/‖∇S‖²) while S = λ_max ≥ 2/h,
∇S = ∇_θ(uᵀHu). Predicted time-averaged loss: E[L] ≈ L(θ) + ½⟨H, Σ⟩ = L(θ) + tr X/h (the
eigenvalues in Σ's span sit at 2/h; their minimal.py).

Time: ours is t = step·h (GD's step k at t = k·h), so dθ/dt = −[…] above; the authors use
τ = t/h (one unit per step, dθ/dτ = −h[…]). Discretisation (theirs): forward Euler with
``substeps`` substeps per step (δ = h/substeps); at each substep the top-k eigenpairs are
refined from the previous ones, the eigenvalues above ``threshold``·2/h (theirs: 1.95/h) are
critical, and X solves SDCP(A, B) restricted to them with

    A = 2/h·I − diag(λ) + δ·[⟨∇_θ(u_iᵀHu_j), ∇L⟩]_ij,   B[X]_ij = (δ/2)·Σ_lm ⟨G_ij, G_lm⟩ X_lm,

G_ij = ∇_θ(u_iᵀ H u_j): the linearised eigenvalues after the substep, so an eigenvalue that drifts
above 2/h (Euler, eigenvector error) is pulled back to 2/h within one substep. Below the threshold
X = 0 and the step is a gradient-flow Euler step. SDCP: ``sdcp.solve_sdcp`` (JAX, no host
callback). Eigenpairs: ``top_eigenpairs`` (block Rayleigh–Ritz / LOBPCG on full-batch HVPs,
warm-started, adaptive iteration count). G_ij = D³L[u_i, u_j, ·]: the directional derivative of
the full-batch HVP (``batching.full_batch_hvp``) along u_i (``pair_gradients``).

Logged with each trace row (at the row's θ; the flow's state there):
``central_flow_eigenvalues`` (the k tracked eigenvalues of H, descending),
``central_flow_eig_residual`` (max ‖Hu − λu‖/|λ_1| over them), ``central_flow_critical``
(how many are ≥ threshold·2/h), ``central_flow_active`` (rank of X: eigenvalues held at 2/h),
``central_flow_sigma_trace`` (tr Σ = tr X of the flow: the SDCP with the held eigenvalues
exactly at 2/h, i.e. A = δ·[⟨G_ij, ∇L⟩] on them; k = 1: σ²), ``central_flow_predicted_loss``
(L + tr X/h), ``central_flow_step_sigma_trace`` (tr X of the Euler step, which also restores
eigenvalues that drifted off 2/h: noisier),
``central_flow_sdcp_residual`` (KKT violation of X, relative), ``central_flow_eig_iters`` (max
eigen-solver iterations over the chunk's substeps).
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..batching import full_batch_hvp, full_batch_value_and_grad
from ..errors import OptimizerError
from .base import AbstractDynamics, Data, Hyper, TrainState, _keep
from .sdcp import solve_sdcp


class CentralState(eqx.Module):
    """The central flow's own state: warm-start eigenvectors U (P, k) and SDCP solution X (k, k);
    ``ready``: U has been refined once (the first solve may take more iterations)."""

    U: jax.Array
    X: jax.Array
    ready: jax.Array


# ------------------------------------------------------------------------------ eigenpairs


def _cols(hvp, V):
    return jax.vmap(hvp, in_axes=1, out_axes=1)(V)


def _rayleigh_ritz(S, HS, k):
    """Top-k Ritz pairs of H on span(S) (columns need not be independent: directions whose Gram
    eigenvalue is below √eps of the largest are dropped). Returns (θ, coefficients C) with Ritz
    vectors S C."""
    dtype = S.dtype
    norms = jnp.linalg.norm(S, axis=0)
    scale = jnp.where(norms > 0, 1 / jnp.where(norms > 0, norms, 1), 0)
    Sn, HSn = S * scale, HS * scale
    d, E = jnp.linalg.eigh(Sn.T @ Sn)
    keep = d > jnp.sqrt(jnp.finfo(dtype).eps) * jnp.max(d)
    C = E / jnp.sqrt(jnp.where(keep, d, 1.0))
    T = C.T @ (Sn.T @ HSn) @ C
    T = 0.5 * (T + T.T)
    both = keep[:, None] & keep[None, :]
    low = jnp.max(jnp.abs(jnp.where(both, T, 0))) * 4 + 1
    T = jnp.where(both, T, 0) - jnp.diag(jnp.where(keep, 0, low))
    theta, W = jnp.linalg.eigh(T)
    top = jnp.arange(T.shape[0] - 1, T.shape[0] - 1 - k, -1)
    return theta[top], (C @ W[:, top]) * scale[:, None]


def top_eigenpairs(hvp, V0, *, tol, max_iters, floor=None, min_iters: int = 1):
    """Top-k (largest algebraic) eigenpairs of a symmetric H given by ``hvp`` (flat vectors),
    from the warm start V0 (P, k): Rayleigh–Ritz on span(V0), then LOBPCG iterations (Knyazev
    2001; basis [V, R, P], R the residuals, P the last change) until every Ritz pair has
    ‖Hu − θu‖ ≤ tol·|θ_1| or θ_i + ‖Hu − θu‖ < ``floor`` (safely below where it matters), or
    ``max_iters`` (traced) iterations, and at least ``min_iters`` (one iteration keeps exploring
    beyond span(V0), so an eigenvalue rising from below the tracked ones is picked up). ``floor``
    is for warm starts only: from a random V0 a small Ritz value says nothing about λ_max.
    Cost: k HVPs, plus k per iteration (one HVP site in the program: the Rayleigh–Ritz on V0 is
    the loop's first pass, with V = P = 0).
    Returns (θ descending (k,), U (P, k) orthonormal, relative residuals (k,), iterations)."""
    k = V0.shape[1]
    dtype = V0.dtype

    def residuals(theta, V, HV):
        R = HV - V * theta
        r = jnp.linalg.norm(R, axis=0) / (jnp.abs(theta[0]) + jnp.finfo(dtype).tiny)
        return R, r

    def done(theta, r):
        ok = r <= tol
        if floor is not None:
            ok = ok | (theta + r * jnp.abs(theta[0]) < floor)
        return jnp.all(ok)

    def cond(c):
        theta, V, HV, Z, P, HP, r, i = c
        return (i == 0) | (((i <= min_iters) | ~done(theta, r)) & (i <= max_iters)
                           & jnp.all(jnp.isfinite(r)))

    def body(c):
        theta, V, HV, Z, P, HP, r, i = c
        Z = Z - V @ (V.T @ Z)
        HZ = _cols(hvp, Z)
        S = jnp.concatenate([V, Z, P], axis=1)
        HS = jnp.concatenate([HV, HZ, HP], axis=1)
        theta, C = _rayleigh_ritz(S, HS, k)
        Vn, HVn = S @ C, HS @ C
        Pn, HPn = S[:, k:] @ C[k:], HS[:, k:] @ C[k:]
        R, r = residuals(theta, Vn, HVn)
        return theta, Vn, HVn, R, Pn, HPn, r, i + 1

    zeros = jnp.zeros_like(V0)
    init = (jnp.zeros((k,), dtype), zeros, zeros, jnp.linalg.qr(V0)[0], zeros, zeros,
            jnp.full((k,), jnp.inf, dtype), jnp.zeros((), jnp.int32))
    theta, V, _, _, _, _, r, iters = jax.lax.while_loop(cond, body, init)
    V = V / jnp.linalg.norm(V, axis=0)
    return theta, V, r, iters - 1


def pair_gradients(hvp, flat, U):
    """G_ij = ∇_θ(u_iᵀ H(θ) u_j) = D³L(θ)[u_i, u_j, ·] for all pairs of the columns of U (P, k):
    (k, k, P), each the directional derivative of θ ↦ H(θ)u_j along u_i (forward over the
    full-batch HVP; D³L is symmetric). ``hvp(θ_flat, v)`` = H(θ)v. G_ii = ∇λ_i at an eigenvector
    u_i (∇S for the top one)."""
    def one(u_i, u_j):
        return jax.jvp(lambda p: hvp(p, u_j), (flat,), (u_i,))[1]

    k = U.shape[1]
    ii, jj = jnp.triu_indices(k)
    upper = jax.vmap(one)(U.T[ii], U.T[jj])  # (k(k+1)/2, P): D³L is symmetric in i, j
    G = jnp.zeros((k, k, flat.size), flat.dtype).at[ii, jj].set(upper)
    return G.at[jj, ii].set(upper)


# ------------------------------------------------------------------------------ the flow


class CentralFlow(AbstractDynamics):
    """The central flow of GD (module docstring): Euler with ``substeps`` substeps per step of
    size h (t = step·h), ``eigs`` = k tracked eigenvalues, critical above ``threshold``·2/h.

    Example: ``sgdreg.run(model, data, sgdreg.named("central-flow", eigs=2), loss="mse", lr=0.1)``.
    """

    eigs: int = eqx.field(static=True, default=3)
    substeps: int = eqx.field(static=True, default=4)
    threshold: float = eqx.field(static=True, default=0.975)
    eig_tol: float = eqx.field(static=True, default=1e-4)
    eig_iters: int = eqx.field(static=True, default=20)
    eig_iters_first: int = eqx.field(static=True, default=500)
    sdcp_iters: int = eqx.field(static=True, default=2000)
    sdcp_tol: float = eqx.field(static=True, default=1e-10)
    name: str = eqx.field(static=True, default="central-flow")
    batch_size: None = eqx.field(static=True, default=None)
    is_flow: ClassVar[bool] = True

    def __check_init__(self):
        if not (isinstance(self.eigs, int) and self.eigs >= 1):
            raise OptimizerError(f"eigs must be an integer ≥ 1, got {self.eigs!r}")
        if not (isinstance(self.substeps, int) and self.substeps >= 1):
            raise OptimizerError(f"substeps must be an integer ≥ 1, got {self.substeps!r}")
        if not 0 < self.threshold <= 1:
            raise OptimizerError(f"threshold must be in (0, 1], got {self.threshold}")
        if not (self.eig_tol > 0 and self.sdcp_tol > 0):
            raise OptimizerError(f"eig_tol and sdcp_tol must be > 0, got {self.eig_tol}, "
                                 f"{self.sdcp_tol}")

    def init(self, params, hyper: Hyper) -> CentralState:
        flat = ravel_pytree(params)[0]
        if self.eigs * 3 > flat.size:
            raise OptimizerError(f"eigs: {self.eigs} tracked eigenvalues need ≥ {3 * self.eigs} "
                                 f"parameters, the model has {flat.size}")
        V = jax.random.normal(jax.random.key(0), (flat.size, self.eigs), flat.dtype)
        return CentralState(jnp.linalg.qr(V)[0], jnp.zeros((self.eigs, self.eigs), flat.dtype),
                            jnp.zeros((), bool))

    def _evaluate(self, params, cs: CentralState, h, problem, data: Data):
        """At θ: loss, ∇L, refined eigenpairs, G, X and dθ/dt; everything the step and the log
        need."""
        obj, x, y, chunk = problem.objective, data.x_train, data.y_train, problem.eval_chunk
        loss, g = full_batch_value_and_grad(obj.example_loss, params, x, y, chunk)
        flat, unravel = ravel_pytree(params)
        gflat = ravel_pytree(g)[0]
        hvp_at = lambda p, v: ravel_pytree(full_batch_hvp(obj.example_loss, unravel(p), x, y,
                                                          unravel(v), chunk))[0]
        hvp = lambda v: hvp_at(flat, v)
        edge = 2 / h
        iters = jnp.where(cs.ready, self.eig_iters, self.eig_iters_first)
        floor = jnp.where(cs.ready, 0.9 * self.threshold * edge, -jnp.inf)
        lam, U, res, eig_iters = top_eigenpairs(hvp, cs.U, tol=self.eig_tol, max_iters=iters,
                                                floor=floor)
        sign = jnp.where(jnp.sum(U * cs.U, axis=0) < 0, -1.0, 1.0).astype(U.dtype)
        U = U * sign  # align with the previous eigenvectors (warm start of X)
        crit = lam >= self.threshold * edge
        dt = h / self.substeps
        G = pair_gradients(hvp_at, flat, U)  # (k, k, P)
        A = edge * jnp.eye(self.eigs, dtype=U.dtype) - jnp.diag(lam) + dt * (G @ gflat)
        B = 0.5 * dt * jnp.einsum("ijp,lmp->ijlm", G, G)
        sol = solve_sdcp(A, B, crit, cs.X, max_iters=self.sdcp_iters, tol=self.sdcp_tol)
        X = jnp.where(jnp.any(crit), sol.X, 0.0)
        velocity = -(gflat + 0.5 * jnp.einsum("ij,ijp->p", X, G))
        # the flow's own Σ for the log: the held eigenvalues taken exactly at 2/h (A without the
        # Euler step's restoring term 2/h − λ, whose 1/δ gain turns a 0.1 % overshoot of λ into
        # a ~20 % swing of the step's X); k = 1: σ² = 2⟨−∇L, ∇S⟩/‖∇S‖²
        held = crit & (jnp.diagonal(X) > 0)
        cont = solve_sdcp(dt * (G @ gflat), B, held, X, max_iters=self.sdcp_iters,
                          tol=self.sdcp_tol)
        X_flow = jnp.where(jnp.any(held), cont.X, 0.0)
        xeig = jnp.linalg.eigvalsh(X)
        trX = jnp.trace(X_flow)
        info = {
            "central_flow_eigenvalues": lam,
            "central_flow_eig_residual": jnp.max(res),
            "central_flow_eig_iters": eig_iters.astype(jnp.int32),
            "central_flow_critical": jnp.sum(crit).astype(jnp.int32),
            "central_flow_active": jnp.sum(xeig > 1e-9 * (jnp.max(jnp.abs(xeig)) + 1e-30))
            .astype(jnp.int32) * jnp.any(crit),
            "central_flow_sigma_trace": trX,
            "central_flow_step_sigma_trace": jnp.trace(X),
            "central_flow_predicted_loss": loss + trX / h,
            "central_flow_sdcp_residual": jnp.where(jnp.any(crit), sol.residual, 0.0).astype(lam.dtype),
            "central_flow_sdcp_iters": jnp.where(jnp.any(crit), sol.iterations, 0).astype(jnp.int32),
        }
        return flat, unravel, velocity, CentralState(U, X, jnp.ones((), bool)), info

    def _info_zeros(self, dtype) -> dict:
        k, z, i = self.eigs, jnp.zeros((), dtype), jnp.zeros((), jnp.int32)
        return {"central_flow_eigenvalues": jnp.zeros((k,), dtype),
                "central_flow_eig_residual": z, "central_flow_eig_iters": i,
                "central_flow_critical": i, "central_flow_active": i,
                "central_flow_sigma_trace": z, "central_flow_step_sigma_trace": z,
                "central_flow_predicted_loss": z,
                "central_flow_sdcp_residual": z, "central_flow_sdcp_iters": i}

    def advance(self, state: TrainState, problem, data: Data, step0, num_steps):
        """``num_steps``·``substeps`` Euler substeps of δ = h/substeps, then the flow's state at
        the new θ for the log (its eigenpairs and X also warm-start the next chunk): one loop of
        n + 1 evaluations whose last one does not move θ (one copy of the substep in the
        compiled program). A frozen run is returned unchanged; a non-finite θ marks it diverged
        at ``step0``."""
        h = state.hyper.lr
        dt = h / self.substeps
        n = num_steps * self.substeps
        if not isinstance(n, int):
            n = jnp.where(state.running, n, 0)
        flat0 = ravel_pytree(state.params)[0]

        def substep(i, carry):
            flat, cs, it, _ = carry
            _, unravel, v, cs, info = self._evaluate(unravel0(flat), cs, h, problem, data)
            it = jnp.maximum(it, info["central_flow_eig_iters"])
            return flat + jnp.where(i < n, dt, 0.0) * v, cs, it, info

        unravel0 = ravel_pytree(state.params)[1]
        info0 = self._info_zeros(flat0.dtype)
        flat, cs, it, info = jax.lax.fori_loop(0, n + 1, substep, (
            flat0, state.opt_state, jnp.zeros((), jnp.int32), info0))
        info["central_flow_eig_iters"] = it
        params = unravel0(flat)
        finite = jnp.all(jnp.isfinite(flat)) & jnp.all(jnp.isfinite(cs.X))
        ok = finite & state.running
        new = eqx.tree_at(lambda s: (s.step, s.params, s.opt_state, s.diverged_at), state, (
            jnp.where(ok, step0 + num_steps, state.step).astype(jnp.int32),
            _keep(ok, params, state.params),
            _keep(ok, cs, state.opt_state),
            jnp.where(state.running & ~finite, step0, state.diverged_at).astype(jnp.int32)))
        return new, info

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "central-flow", "eigs": self.eigs,
                "substeps": self.substeps, "threshold": self.threshold,
                "integrator": "Euler (Cohen, Damian et al.)", "eig_tol": self.eig_tol,
                "eig_iters": self.eig_iters, "sdcp": "FISTA on the PSD cone",
                "sdcp_tol": self.sdcp_tol, "batch_size": None}
