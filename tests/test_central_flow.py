"""The central flow of GD (Cohen, Damian et al.; docs/science.md#central-flow): its SDCP solver against an
independent solver and the KKT conditions, k = 1 against the closed form, ∇S and
G_ij = ∇(u_iᵀHu_j) against finite differences, the warm-started eigenpairs against dense eigh,
the flow below 2/h against Euler gradient flow, at the edge of stability against GD, and in a
vmapped sweep against single runs.

One small problem (gmm, n = 64, tanh MLP 16×2, MSE, float64) serves every run, so the central
flow compiles once for single runs (chunk lengths 0 and ``log_every``) and once for the sweep.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from sgdreg import curvature as cv
from sgdreg import engine, sweep, training
from sgdreg.batching import full_batch_hvp
from sgdreg.config import RunConfig
from sgdreg.dynamics import named
from sgdreg.dynamics.central import CentralFlow, pair_gradients, top_eigenpairs
from sgdreg.dynamics.sdcp import kkt_residual, sdcp_scalar, solve_sdcp
from sgdreg.errors import OptimizerError

BASE = dict(dataset="gmm", n_train=64, n_test=16, width=16, depth=2, activation="tanh",
            loss="mse", model="mlp", dtype="float64", seed=0, central_flow_eigs=3)
LR_STABLE, LR_EOS = 0.1, 0.7  # 2/h = 20 (λ_max stays ≈ 3) and 2.86 (λ_max(θ0) = 2.71)
# at h = 0.7 three eigenvalues reach 2/h by step 116 (a 4th stays ≈ 2.72): k = 3 tracks them all;
# with k = 2 the untracked third one breaks through and the tracked pair jitters ~0.1 % above 2/h
STEPS, LOG = 240, 20


# ------------------------------------------------------------------------------ SDCP

SOLVE = jax.jit(jax.vmap(lambda A, B, mask: solve_sdcp(A, B, mask)))  # one compile per k


def _instance(rng, k, p=12):
    G = rng.normal(size=(k, k, p))
    G = 0.5 * (G + G.transpose(1, 0, 2))
    B = 0.5 * np.einsum("ijp,lmp->ijlm", G, G)
    A = rng.normal(size=(k, k))
    return 0.5 * (A + A.T), B


def _reference_qp(A, B):
    """min_{X ⪰ 0} ½⟨X, B[X]⟩ + ⟨A, X⟩ with X = LLᵀ (L lower triangular, BFGS from several
    starts): convex in X, so the best factor is a global minimiser."""
    k = A.shape[0]
    idx = np.tril_indices(k)

    def f(z):
        L = np.zeros((k, k))
        L[idx] = z
        X = L @ L.T
        return 0.5 * np.einsum("ij,ijlm,lm->", X, B, X) + np.sum(A * X)

    rng = np.random.default_rng(1)
    best = min((scipy.optimize.minimize(f, rng.normal(size=len(idx[0])), method="BFGS",
                                        options={"gtol": 1e-12}) for _ in range(4)),
               key=lambda r: r.fun)
    L = np.zeros((k, k))
    L[idx] = best.x
    return L @ L.T, best.fun


def test_sdcp_solves_random_instances_like_an_independent_solver():
    """Vmapped over random instances (k = 2, 3): KKT residual ≤ 1e-8 (X ⪰ 0, A + B[X] ⪰ 0,
    ⟨X, A + B[X]⟩ = 0), objective equal to BFGS on X = LLᵀ (scipy) to 1e-9, X to 1e-5."""
    rng = np.random.default_rng(0)
    for k in (2, 3):
        As, Bs = map(np.stack, zip(*[_instance(rng, k) for _ in range(6)]))
        sol = SOLVE(jnp.asarray(As), jnp.asarray(Bs), jnp.ones((6, k), bool))
        assert np.all(np.asarray(sol.residual) < 1e-8), sol.residual
        for A, B, X in zip(As, Bs, np.asarray(sol.X)):
            ref, fun = _reference_qp(A, B)
            ours = 0.5 * np.einsum("ij,ijlm,lm->", X, B, X) + np.sum(A * X)
            assert ours == pytest.approx(fun, abs=1e-9 * (1 + abs(fun)))
            np.testing.assert_allclose(X, ref, atol=1e-5 * (1 + np.abs(ref).max()))
            assert float(kkt_residual(jnp.asarray(A), jnp.asarray(B), jnp.asarray(ref))) < 1e-4
    assert sum(np.linalg.matrix_rank(x, 1e-8) > 0 for x in np.asarray(sol.X)) >= 3  # nontrivial


def test_sdcp_k1_is_the_closed_form_and_mask_restricts_to_the_block():
    """k = 1: X = max(0, −a/b) = σ²; a masked 3×3 problem equals its 2×2 block's solution."""
    a = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.7])
    b = jnp.array([0.5, 2.0, 1.0, 0.7, 3.0])
    X = SOLVE(a.reshape(5, 1, 1), b.reshape(5, 1, 1, 1, 1), jnp.ones((5, 1), bool)).X[:, 0, 0]
    np.testing.assert_allclose(X, sdcp_scalar(a, b), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(sdcp_scalar(a, b), [4.0, 0.25, 0, 0, 0])
    rng = np.random.default_rng(3)
    A, B = _instance(rng, 3)
    A[:2, :2] -= 3 * np.eye(2)  # make the block active
    full = SOLVE(jnp.asarray(A)[None], jnp.asarray(B)[None], jnp.array([[True, True, False]])).X[0]
    block = SOLVE(jnp.asarray(A[:2, :2])[None], jnp.asarray(B[:2, :2, :2, :2])[None],
                  jnp.ones((1, 2), bool)).X[0]
    np.testing.assert_allclose(full[:2, :2], block, atol=1e-8)
    assert np.all(np.asarray(full)[2] == 0) and np.all(np.asarray(full)[:, 2] == 0)
    assert np.linalg.matrix_rank(np.asarray(block), 1e-8) >= 1


# ------------------------------------------------------------------------------ derivatives


@pytest.fixture(scope="module")
def tiny():
    """A tiny tanh MLP (P = 26) in float64: its loss, θ and dense Hessian."""
    cfg = RunConfig(**{**BASE, "n_train": 16, "width": 4, "optimizer": "gd", "lr": 0.1})
    s = training.build(cfg)
    obj, x, y = s.problem.objective, s.data.x_train, s.data.y_train
    flat, unravel = ravel_pytree(s.params0)
    hess = lambda f: cv.dense_hessian(obj.example_loss, unravel(f), x, y)
    hvp_at = lambda f, v: ravel_pytree(full_batch_hvp(obj.example_loss, unravel(f), x, y,
                                                      unravel(v)))[0]
    return flat, hess, hvp_at


def test_pair_gradients_and_grad_sharpness_match_finite_differences(tiny):
    """G_ij = ∇(u_iᵀH(θ)u_j) (fixed u) and ∇S = G_11 at the top eigenvector against central
    differences of the dense Hessian / of λ_max(θ) (eigvalsh), float64, step 1e-5: 1e-7 rel."""
    flat, hess, hvp_at = tiny
    rng = np.random.default_rng(0)
    U = jnp.linalg.qr(jnp.asarray(rng.normal(size=(flat.size, 2))))[0]
    pg = jax.jit(lambda f, U: pair_gradients(hvp_at, f, U))
    G = pg(flat, U)
    d = jnp.asarray(rng.normal(size=flat.size))
    eps = 1e-5
    dH = (hess(flat + eps * d) - hess(flat - eps * d)) / (2 * eps)
    fd = U.T @ dH @ U
    np.testing.assert_allclose(jnp.einsum("ijp,p->ij", G, d), fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(G, jnp.swapaxes(G, 0, 1), rtol=1e-12, atol=1e-14)
    lam, V = jnp.linalg.eigh(hess(flat))
    u = V[:, -1:]
    grad_s = pg(flat, jnp.concatenate([u, V[:, -2:-1]], axis=1))[0, 0]
    top = lambda f: jnp.linalg.eigvalsh(hess(f))[-1]  # S(θ) = λ_max, dense
    fd_s = (top(flat + eps * d) - top(flat - eps * d)) / (2 * eps)
    assert float(grad_s @ d) == pytest.approx(float(fd_s), rel=1e-7)
    assert lam[-1] - lam[-2] > 1e-2  # λ_max simple, so S is differentiable here


def test_top_eigenpairs_match_dense_eigh_from_a_cold_start(tiny):
    """Top-3 eigenvalues (largest algebraic) to 1e-10 relative from a random start; the
    eigenvectors span the same space."""
    flat, hess, hvp_at = tiny
    V0 = jax.random.normal(jax.random.key(1), (flat.size, 3), flat.dtype)
    lam, U, res, iters = jax.jit(lambda V: top_eigenpairs(
        lambda v: hvp_at(flat, v), V, tol=1e-9, max_iters=200))(V0)
    ref, W = jnp.linalg.eigh(hess(flat))
    np.testing.assert_allclose(lam, ref[::-1][:3], rtol=1e-10)
    assert np.all(np.asarray(res) <= 1e-9) and 0 < int(iters) < 200
    np.testing.assert_allclose(jnp.abs(jnp.sum(U * W[:, ::-1][:, :3], axis=0)), 1, atol=1e-8)


# ------------------------------------------------------------------------------ the flow


def _drive(cfg):
    """One run through the engine's compiled chunk with traced chunk lengths (as a sweep runs
    it, unvmapped): one compilation for every h. Returns (rows of info+metrics, final state)."""
    s = training.build(cfg)
    state, rows = s.state0(), []
    for k in range(0, cfg.steps + 1, cfg.log_every):
        n = cfg.log_every if k else 0
        state, metrics = engine.advance(state, s.problem, s.data, s.params0,
                                        jnp.asarray(k - n, jnp.int32), jnp.asarray(n, jnp.int32))
        rows.append(engine.host_metrics(metrics) | {"step": int(state.step)})
    return {key: [r[key] for r in rows] for key in rows[0]}, state


@pytest.fixture(scope="module")
def runs():
    """The central flow at h = 0.1 (stable) and 0.7 (edge of stability), GD at 0.7 (λ_max every
    step by power iteration), from one θ0."""
    out = {}
    for h in (LR_STABLE, LR_EOS):
        cfg = RunConfig(**BASE, optimizer="central-flow", lr=h, steps=STEPS, log_every=LOG)
        out[h] = _drive(cfg)
    gd = training.build(RunConfig(**BASE, optimizer="gd", lr=LR_EOS, steps=STEPS))
    obj, x, y = gd.problem.objective, gd.data.x_train, gd.data.y_train
    flat, unravel = ravel_pytree(gd.params0)
    loss = lambda f: jnp.mean(jax.vmap(obj.example_loss, (None, 0, 0))(unravel(f), x, y))

    @jax.jit
    def gd_path(f):  # λ_max by 8 power iterations per step, warm-started (H ⪰ 0 at the top here)
        def step(c, _):
            f, v = c
            hvp = lambda v: jax.jvp(jax.grad(loss), (f,), (v,))[1]
            v = jax.lax.fori_loop(0, 8, lambda _, v: hvp(v) / jnp.linalg.norm(hvp(v)), v)
            return (f - LR_EOS * jax.grad(loss)(f), v), (loss(f), v @ hvp(v))
        return jax.lax.scan(step, (f, jnp.ones_like(f) / f.size ** 0.5), None, STEPS + 1)[1]

    out["gd"] = [np.asarray(a) for a in gd_path(flat)]
    out["euler"] = (loss, flat, unravel)
    return out


def test_below_the_edge_the_central_flow_is_euler_gradient_flow(runs):
    """At h = 0.1 (λ_max ≈ 3 ≪ 2/h = 20) no eigenvalue is critical: X = 0, the predicted loss
    is the loss, θ(t) equals Euler gradient flow with δ = h/4 to 1e-12, and the tracked
    eigenvalues equal the dense Hessian's top three (1e-6 for λ_1; 1e-4 for the rest: far below 2/h a
    tracked pair gets one LOBPCG iteration per substep, not full convergence)."""
    m, final = runs[LR_STABLE]
    assert m["step"][-1] == STEPS and int(final.diverged_at) < 0 and not bool(final.failed)
    assert max(m["central_flow_critical"]) == 0 and max(m["central_flow_sigma_trace"]) == 0
    np.testing.assert_array_equal(m["central_flow_predicted_loss"], m["train_loss"])
    loss, flat, unravel = runs["euler"]
    euler = jax.jit(lambda f: jax.lax.fori_loop(
        0, 4 * STEPS, lambda _, f: f - LR_STABLE / 4 * jax.grad(loss)(f), f))(flat)
    np.testing.assert_allclose(ravel_pytree(final.params)[0], euler, rtol=0, atol=1e-12)
    lam = jnp.linalg.eigvalsh(jax.hessian(loss)(euler))[::-1][:3]
    np.testing.assert_allclose(m["central_flow_eigenvalues"][-1], lam, rtol=1e-4)
    assert m["central_flow_eigenvalues"][-1][0] == pytest.approx(float(lam[0]), rel=1e-6)
    assert 2 < lam[0] < 0.3 * 2 / LR_STABLE


def test_at_the_edge_the_central_flow_holds_sharpness_while_gd_oscillates(runs):
    """h = 0.7: GD's λ_max overshoots 2/h = 2.86 and its loss goes up and down; the central flow's
    tracked eigenvalues never exceed 2/h by more than 1e-4 relative (k = 3 tracks every
    eigenvalue that reaches it; Euler and the SDCP's first-order look-ahead leave a tiny drift),
    reach it (held there with
    X ≠ 0), and its loss decreases monotonically; predicted loss = L + tr X/h ≥ L."""
    m, final = runs[LR_EOS]
    assert int(final.diverged_at) < 0 and m["step"][-1] == STEPS
    edge = 2 / LR_EOS
    lam = np.array(m["central_flow_eigenvalues"])
    assert lam.max() <= edge * (1 + 1e-4)
    assert lam[-1, 0] == pytest.approx(edge, rel=1e-3) and max(m["central_flow_active"]) >= 1
    assert max(m["central_flow_sdcp_residual"]) < 1e-6
    pred, loss = np.array(m["central_flow_predicted_loss"]), np.array(m["train_loss"])
    assert np.all(pred >= loss) and pred[-1] > loss[-1] * 1.05
    np.testing.assert_allclose(pred - loss, np.array(m["central_flow_sigma_trace"]) / LR_EOS,
                               rtol=1e-12)
    assert np.all(np.diff(loss) < 0)
    gd_loss, gd_lam = runs["gd"]
    assert gd_lam.max() > edge * 1.05  # GD overshoots the edge
    assert np.sum(np.diff(gd_loss) > 0) >= 3  # and its loss is non-monotone


@pytest.mark.slow
def test_central_flow_runs_vmapped_in_a_sweep_like_single_runs(runs, tmp_path):
    """A grid with optimizer "central-flow" and two step sizes runs as one vmapped group and
    gives each single run's numbers: 1e-8 relative below the edge (reassociation under vmap);
    at the edge 1e-3 (measured 4e-4: reassociation flips the adaptive eigen-solver's stopping
    decision, which moves the eigenvectors within its tolerance, and EoS dynamics carry that on).
    The 2/h run's trace equals that of ``training.train`` alone to the same tolerance."""
    grid = {"base": {**BASE, "optimizer": "central-flow", "steps": STEPS, "log_every": LOG},
            "grid": {"lr": [LR_STABLE, LR_EOS]}}
    res = sweep.run_sweep(grid, tmp_path / "cf", devices=1, block=2)
    assert [(g["kind"], g["size"]) for g in res.index["groups"]] == [("vmap", 2)]
    keys = ("train_loss", "central_flow_eigenvalues", "central_flow_predicted_loss",
            "central_flow_sigma_trace", "central_flow_active")
    for tr in res.traces:
        ref, _ = runs[tr["config"]["lr"]]
        rtol = 1e-8 if tr["config"]["lr"] == LR_STABLE else 1e-3
        assert tr["status"] == "completed" and tr["metrics"]["step"] == ref["step"]
        for k in keys:
            np.testing.assert_allclose(np.array(tr["metrics"][k], float), np.array(ref[k], float),
                                       rtol=rtol, atol=1e-12, err_msg=k)
        if tr["config"]["lr"] == LR_EOS:
            alone = training.train(RunConfig(**tr["config"])).trace
            assert alone["status"] == "completed"
            for k in keys:
                np.testing.assert_allclose(np.array(tr["metrics"][k], float),
                                           np.array(alone["metrics"][k], float), rtol=rtol,
                                           atol=1e-12, err_msg=k)


def test_named_and_errors():
    cf = named("central-flow", eigs=2)
    assert isinstance(cf, CentralFlow) and cf.eigs == 2 and cf.is_flow and cf.full_batch
    assert cf.name == "central-flow" and cf.describe()["eigs"] == 2
    with pytest.raises(OptimizerError, match="eigs"):
        CentralFlow(eigs=0)
    with pytest.raises(OptimizerError, match="threshold"):
        CentralFlow(threshold=1.5)
