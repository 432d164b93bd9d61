"""Dynamics and the training loop against exact oracles (docs/science.md#dynamics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import classification_dataset, regression_dataset
from jax.flatten_util import ravel_pytree

from sgdreg import engine, training
from sgdreg.config import RunConfig
from sgdreg.models import LinearModel, partition


def flat(model):
    return np.asarray(ravel_pytree(partition(model)[0])[0])


def test_flow_matches_closed_form_on_quadratic():
    """L = (1/2n)‖Xw − y‖² is quadratic: θ(t) = θ* + exp(−tA)(θ0 − θ*), A = XᵀX/n."""
    ds = regression_dataset(n=40, d=5)
    cfg = RunConfig(model="linear", loss="mse", optimizer="flow", lr=0.1, steps=30,
                    log_every=10, dtype="float64", rtol=1e-10, atol=1e-12)
    res = training.train(cfg, ds)
    X, y = ds.x_train, ds.y_train[:, 0]
    A = X.T @ X / len(X)
    w_star = np.linalg.solve(A, X.T @ y / len(X))
    w0 = flat(res.model0)
    w_t = w_star + scipy.linalg.expm(-3.0 * A) @ (w0 - w_star)
    assert np.allclose(flat(res.model), w_t, rtol=1e-7, atol=1e-9)
    assert res.trace["metrics"]["t"][-1] == pytest.approx(3.0)
    assert all(s > 0 for s in res.trace["metrics"]["solver_steps"][1:])


def test_gd_with_tiny_lr_tracks_gradient_flow():
    """GD is O(h) from the flow globally: the gap at matched t shrinks ~2× when h halves."""
    ds = classification_dataset(n=48, d=5, k=3)
    base = RunConfig(model="mlp", width=8, activation="tanh", loss="mse", dtype="float64",
                     rtol=1e-10, atol=1e-12)
    flow = training.train(base.replace(optimizer="flow", lr=0.01, steps=100, log_every=100), ds)
    gaps = []
    for h, k in ((0.02, 50), (0.01, 100)):
        gd = training.train(base.replace(optimizer="gd", lr=h, steps=k, log_every=k), ds)
        gaps.append(np.linalg.norm(flat(gd.model) - flat(flow.model)))
    moved = np.linalg.norm(flat(flow.model) - flat(flow.model0))
    assert gaps[1] < 1e-2 * moved
    assert 1.6 < gaps[0] / gaps[1] < 2.4


def test_gd_from_zero_reaches_min_norm_solution():
    """d > n least squares from θ0 = 0: GD stays in the row space → w = Xᵀ(XXᵀ)⁻¹y."""
    ds = regression_dataset(n=20, d=60, noise=0.0)
    X, y = ds.x_train, ds.y_train[:, 0]
    lam = np.linalg.eigvalsh(X @ X.T / len(X))
    model = LinearModel(60, 1, zero_init=True, key=jax.random.key(0), dtype=jnp.float64)
    cfg = RunConfig(model="linear", loss="mse", optimizer="gd", lr=1.0 / lam.max(),
                    steps=int(40 * lam.max() / lam.min()), log_every=500, dtype="float64")
    res = training.train(cfg, ds, model=model)
    w_mn = X.T @ np.linalg.solve(X @ X.T, y)
    w = flat(res.model)
    assert np.linalg.norm(w - w_mn) / np.linalg.norm(w_mn) < 1e-6


def test_sgd_decomposition_identity_on_logged_values():
    """L̃_SGD = L̃_GD + igr_sgd_var exactly when B divides n (docs/science.md#implicit-regularization)."""
    ds = classification_dataset(n=64, d=6, k=3)
    cfg = RunConfig(optimizer="sgd", lr=0.2, batch_size=16, steps=40, log_every=8,
                    width=16, dtype="float64")
    m = training.train(cfg, ds).trace["metrics"]
    lhs = np.array(m["modified_loss_sgd"])
    rhs = np.array(m["modified_loss_gd"]) + np.array(m["igr_sgd_var"])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    # and the variance term is non-trivial
    assert min(m["igr_sgd_var"]) > 0


def test_new_lr_does_not_recompile():
    ds = classification_dataset()
    cfg = RunConfig(optimizer="sgd", batch_size=16, steps=20, log_every=10, width=8)
    training.train(cfg.replace(lr=0.1), ds)
    before = engine.TRACE_COUNTS["advance"]
    training.train(cfg.replace(lr=0.03, momentum=0.5), ds)
    training.train(cfg.replace(lr=0.3, seed=3), ds)
    assert engine.TRACE_COUNTS["advance"] == before


def test_same_seed_gives_identical_trace_and_optimizers_share_theta0():
    ds = classification_dataset()
    cfg = RunConfig(optimizer="sgd", batch_size=16, steps=30, log_every=10, width=8)
    a, b = training.train(cfg, ds), training.train(cfg, ds)
    assert a.trace["metrics"] == b.trace["metrics"]
    c = training.train(cfg.replace(seed=1), ds)
    assert a.trace["metrics"]["train_loss"] != c.trace["metrics"]["train_loss"]
    gd = training.train(cfg.replace(optimizer="gd"), ds)
    adam = training.train(cfg.replace(optimizer="adam", lr=0.01), ds)
    assert np.array_equal(flat(gd.model0), flat(a.model0))
    assert np.array_equal(flat(adam.model0), flat(a.model0))
    assert gd.trace["metrics"]["train_loss"][0] == a.trace["metrics"]["train_loss"][0]


def test_sgd_epoch_is_a_permutation_of_the_data():
    from sgdreg.dynamics import epoch_permutation

    key = jax.random.key(0)
    p0, p1 = epoch_permutation(key, 0, 50), epoch_permutation(key, 1, 50)
    assert sorted(np.asarray(p0).tolist()) == list(range(50))
    assert not np.array_equal(p0, p1)


def test_divergence_is_caught_not_raised():
    ds = classification_dataset()
    res = training.train(RunConfig(optimizer="gd", lr=500.0, steps=200, log_every=10, width=8),
                         ds)
    tr = res.trace
    assert tr["status"] == "diverged"
    assert 0 <= tr["diverged_step"] < 200
    assert all(np.isfinite(flat(res.model)))
    assert "non-finite" in tr["status_detail"]


@pytest.mark.parametrize("opt", ["momentum", "nesterov", "adam", "modified-flow"])
def test_every_optimizer_decreases_the_loss(opt):
    ds = classification_dataset()
    lr = 0.01 if opt == "adam" else 0.1
    m = training.train(RunConfig(optimizer=opt, lr=lr, batch_size=16, steps=40, log_every=20,
                                 width=8), ds).trace["metrics"]
    assert m["train_loss"][-1] < 0.7 * m["train_loss"][0]


def test_heavy_ball_matches_hand_rolled_update():
    """momentum: v ← βv + g, θ ← θ − hv (PyTorch/optax semantics), full batch when B = n."""
    ds = regression_dataset(n=16, d=3)
    model = LinearModel(3, 1, key=jax.random.key(1), dtype=jnp.float64)
    cfg = RunConfig(model="linear", loss="mse", optimizer="momentum", lr=0.1, momentum=0.8,
                    batch_size=16, steps=5, log_every=5, dtype="float64")
    res = training.train(cfg, ds, model=model)
    X, y = ds.x_train, ds.y_train[:, 0]
    w, v = flat(model), np.zeros(3)
    for _ in range(5):
        g = X.T @ (X @ w - y) / len(X)
        v = 0.8 * v + g
        w = w - 0.1 * v
    np.testing.assert_allclose(flat(res.model), w, rtol=1e-10)


def test_egr_adds_the_gradient_norm_penalty():
    """EGR step: g + 2μHg, equal to the gradient of L + μ‖∇L‖² (checked by autodiff)."""
    ds = classification_dataset(n=32)
    cfg = RunConfig(optimizer="gd", lr=0.1, steps=1, log_every=1, egr=0.3, width=6,
                    dtype="float64", loss="mse")
    s = training.build(cfg, ds)
    obj, d = s.problem.objective, s.data

    def L(p):
        return jnp.mean(jax.vmap(obj.example_loss, (None, 0, 0))(p, d.x_train, d.y_train))

    def reg(p):
        g = jax.grad(L)(p)
        return L(p) + 0.3 * sum(jnp.sum(a**2) for a in jax.tree.leaves(g))

    expected = jax.tree.map(lambda a, g: a - 0.1 * g, s.params0, jax.grad(reg)(s.params0))
    res = training.train(cfg, setup=s)
    np.testing.assert_allclose(flat(res.model), np.asarray(ravel_pytree(expected)[0]), rtol=1e-10)


def test_curvature_probe_in_training_matches_dense_hessian():
    """The in-loop probe's λ_max/λ_min equal the dense Hessian's; tr H within 4 stderr."""
    from sgdreg import curvature as cv

    ds = classification_dataset(n=48, d=5, k=3)
    cfg = RunConfig(optimizer="sgd", lr=0.2, batch_size=16, steps=20, log_every=10,
                    width=8, dtype="float64", hessian_every=20, probes=40,
                    lanczos_steps=40, top_k=2, slq=True)
    res = training.train(cfg, ds)
    m = res.trace["metrics"]
    assert m["lambda_max"][1] is None and m["lambda_max"][2] is not None  # cadence: 0 and 20
    obj, d = res.setup.problem.objective, res.setup.data
    from sgdreg.models import partition

    params = partition(res.model)[0]
    ev = np.linalg.eigvalsh(np.asarray(cv.dense_hessian(obj.example_loss, params,
                                                        d.x_train, d.y_train)))
    np.testing.assert_allclose(m["top_eigenvalues"][-1], ev[::-1][:2], rtol=1e-6)
    np.testing.assert_allclose(m["lambda_min"][-1], ev[0], rtol=1e-6)
    theta_sq = sum(float(np.sum(np.asarray(a) ** 2)) for a in jax.tree.leaves(params))
    assert m["lambda_max_scaled"][-1] == pytest.approx(ev[-1] * theta_sq, rel=1e-6)  # λ_max·‖θ‖²
    assert abs(m["hessian_trace"][-1] - ev.sum()) < 4 * m["hessian_trace_stderr"][-1]
    assert m["eos_threshold"][-1] == pytest.approx(2 / 0.2)
    assert res.trace["probes"]["curvature"]["num_probes"] == 40
    assert len(m["slq_nodes"][-1]) == 4 and m["batch_sharpness"][-1] > 0
    assert m["grad_var"][-1] > 0 and m["grad_var_est"][-1] is not None


def test_stop_loss_ends_the_run_at_the_target():
    ds = classification_dataset()
    res = training.train(RunConfig(optimizer="gd", lr=0.5, steps=500, log_every=10, width=8,
                                   stop_loss=0.2), ds)
    s = res.trace["summary"]
    assert res.trace["status"] == "completed" and s["train_loss"] <= 0.2 and s["final_step"] < 500


def test_eos_thresholds():
    from sgdreg.probes import eos_threshold

    assert eos_threshold("gd", 0.1, 0.9) == pytest.approx(20)
    assert eos_threshold("momentum", 0.1, 0.9) == pytest.approx(38)
    assert eos_threshold("nesterov", 0.1, 0.9) == pytest.approx(3.8 / 0.28)
    assert eos_threshold("flow", 0.1, 0.9) is None
    assert eos_threshold("adam", 0.1, 0.9) is None  # its 38/h bounds λ_max(P⁻¹H), not λ_max
