"""Exact oracles for the IGR/EGR terms wherever they live (mutation testing, issue 17 item 1).

Each formula is called directly on a tiny float64 tanh net (no training engine, no solver)
and compared with a dense-Hessian computation written here from the papers' definitions
(Barrett & Dherin 2021; Smith et al. 2021):
  EGR gradient        ∇(L + μ‖∇L‖²) = g + 2μHg                 (engine.Problem.training_gradient)
  modified flow       −∇(L + (h/4)‖∇L‖²) = −(g + (h/2)Hg)       (dynamics.flows, ModifiedFlow)
  SGD modified flow   −(ḡ + (h/2)(1/m)Σ_k H_k g_k)               (experiments.igr.SGDModifiedFlow)
  IGR terms           (h/4)‖∇L‖², (h/4)(1/m)Σ‖∇L̂_k − ∇L‖², Γ̂    (probes.cheap_metrics)
and the two-parameter example E(a, b) = ½(y − abx)² against jax.hessian / eigvalsh.
"""

import math
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sgdreg import dynamics as dyn
from sgdreg import probes
from sgdreg.engine import Problem
from sgdreg.experiments import igr
from sgdreg.experiments._paths import Trajectory
from sgdreg.losses import Objective

N, D = 6, 2
TOL = 1e-11


@pytest.fixture(scope="module")
def net():
    """(objective, params, θ flat, unravel, x, y, L(θ, xs, ys), its jitted gradient and Hessian)."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(N, D)))
    y = jnp.asarray(rng.normal(size=(N, 1)))
    model = eqx.nn.MLP(D, 1, 3, 1, activation=jnp.tanh, key=jax.random.key(5), dtype=jnp.float64)
    params, frozen = eqx.partition(model, eqx.is_inexact_array)
    # stateless and deterministic: the chunked path of training_gradient (eqx.nn.MLP takes a
    # key argument, so Objective(... is_stochastic(model)) would take the vmap path instead)
    obj = Objective(frozen, "mse", 0, stochastic=False)
    flat, unravel = ravel_pytree(params)

    def loss_on(t, xs, ys):
        p = unravel(t)
        return jnp.mean(jax.vmap(obj.example_loss, (None, 0, 0))(p, xs, ys))

    grad, hess = jax.jit(jax.grad(loss_on)), jax.jit(jax.hessian(loss_on))
    return obj, params, flat, unravel, x, y, loss_on, grad, hess


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@pytest.mark.parametrize("stochastic", [False, True])
def test_egr_training_gradient_is_g_plus_2mu_hg(net, stochastic):
    obj, params, flat, unravel, x, y, loss_on, grad, hess = net
    obj = Objective(obj.frozen, "mse", 0, stochastic=stochastic)
    problem = Problem(obj, dyn.named("gd"), eval_chunk=4)  # chunks of 4 and 2: ragged
    mu = 0.37
    g, H = grad(flat, x, y), hess(flat, x, y)
    key = jax.random.key(0)
    loss, g_pkg, _ = problem.training_gradient(params, None, x, y, key, mu, True)
    np.testing.assert_allclose(float(loss), float(loss_on(flat, x, y)), rtol=1e-13)
    np.testing.assert_allclose(_flat(g_pkg), np.asarray(g + 2 * mu * H @ g), rtol=0, atol=TOL)
    _, g_plain, _ = problem.training_gradient(params, None, x, y, key, mu, False)
    np.testing.assert_allclose(_flat(g_plain), np.asarray(g), rtol=0, atol=TOL)


@pytest.mark.parametrize("flow", [dyn.GradientFlow(), dyn.ModifiedFlow()])
def test_flow_fields_are_minus_g_and_minus_g_plus_half_h_hg(net, flow):
    obj, params, flat, unravel, x, y, loss_on, grad, hess = net
    problem = SimpleNamespace(objective=obj, eval_chunk=4)
    data = SimpleNamespace(x_train=x, y_train=y)
    h = 0.23
    g, H = grad(flat, x, y), hess(flat, x, y)
    want = -(g + h / 2 * H @ g) if flow.modified else -g
    got = flow.field(problem, data)(0.0, params, jnp.asarray(h))
    np.testing.assert_allclose(_flat(got), np.asarray(want), rtol=0, atol=TOL)


def test_sgd_modified_flow_field_and_epoch_mean(net):
    obj, params, flat, unravel, x, y, loss_on, grad, hess = net
    m, h = 3, 0.19
    xb, yb = x.reshape(m, -1, D), y.reshape(m, -1, 1)
    gs = [grad(flat, xb[k], yb[k]) for k in range(m)]
    Hs = [hess(flat, xb[k], yb[k]) for k in range(m)]
    want = -(sum(gs) / m + h / 2 * sum(H @ g for H, g in zip(Hs, gs)) / m)
    flow = igr.SGDModifiedFlow(num_batches=m)
    got = flow.field(SimpleNamespace(objective=obj), SimpleNamespace(x_train=x, y_train=y))(
        0.0, params, jnp.asarray(h))
    np.testing.assert_allclose(_flat(got), np.asarray(want), rtol=0, atol=TOL)

    # one SGD epoch θ ← θ − h∇L̂_{π(k)}(θ), averaged over two orders
    orders = jnp.asarray([[0, 1, 2], [2, 0, 1]])
    ends = []
    for order in np.asarray(orders):
        t = flat
        for k in order:
            t = t - h * grad(t, xb[k], yb[k])
        ends.append(t)
    got = igr._sgd_epoch_mean(params, obj, xb, yb, h, orders)
    np.testing.assert_allclose(_flat(got), np.asarray(sum(ends) / 2), rtol=0, atol=TOL)


def test_cheap_metrics_igr_terms_by_hand(net):
    obj, params, flat, unravel, x, y, loss_on, grad, hess = net
    b, lr = 2, 0.3
    problem = SimpleNamespace(objective=obj, eval_chunk=8, batch_size=b, full_batch=False)
    xt, yt = x[:4] * 0.5, y[:4] + 1.0
    data = SimpleNamespace(x_train=x, y_train=y, x_test=xt, y_test=yt)
    params0 = unravel(flat * 0.9 + 0.01)
    perm = jnp.asarray([4, 1, 0, 5, 3, 2])
    out = probes.cheap_metrics(problem, data, params, params0, perm, lr)
    L, Lt = float(loss_on(flat, x, y)), float(loss_on(flat, xt, yt))
    g = np.asarray(grad(flat, x, y))
    gn = float(g @ g)
    batches = np.asarray(perm).reshape(-1, b)
    gk = [np.asarray(grad(flat, x[i], y[i])) for i in batches]
    mb_sq = float(np.mean([v @ v for v in gk]))
    mb_var = float(np.mean([(v - g) @ (v - g) for v in gk]))
    want = {"train_loss": L, "test_loss": Lt, "gen_gap": Lt - L, "grad_norm_sq": gn,
            "igr_gd": lr / 4 * gn, "modified_loss_gd": L + lr / 4 * gn,
            "weight_norm": float(np.linalg.norm(flat)),
            "dist_from_init": float(np.linalg.norm(flat - _flat(params0))),
            "minibatch_grad_norm_sq": mb_sq, "igr_sgd_var": lr / 4 * mb_var,
            "modified_loss_sgd": L + lr / 4 * mb_sq,
            "grad_var_est": (mb_sq - gn) * b * (N - 1) / (N - b)}
    for k, v in want.items():
        np.testing.assert_allclose(float(out[k]), v, rtol=1e-12, atol=1e-14, err_msg=k)
    # the decomposition of the docstring: modified_loss_sgd = modified_loss_gd + igr_sgd_var
    np.testing.assert_allclose(float(out["modified_loss_sgd"]),
                               float(out["modified_loss_gd"] + out["igr_sgd_var"]), rtol=1e-12)
    assert probes.sq_norm({"a": jnp.asarray([3.0]), "b": jnp.asarray([[4.0, 12.0]])}) == 169.0


def test_egr_mu_matches_gd_modified_loss():
    for h, s in [(0.1, 0.02), (0.4, 0.1), (0.05, 0.05)]:
        mu = igr.egr_mu(h, s)
        assert math.isclose(mu + s / 4, h / 4, rel_tol=0, abs_tol=1e-15)
    assert igr.egr_mu(0.3, 0.1) == pytest.approx(0.05, abs=1e-15)


def test_two_param_model_hessian_and_lambda_max_against_autodiff():
    rng = np.random.default_rng(2)
    hess = jax.jit(jax.hessian(lambda ab, x, y: 0.5 * (y - ab[0] * ab[1] * x) ** 2))
    for a, b, x, y in rng.normal(size=(4, 4)) + np.array([1.5, -0.7, 1.2, 0.4]):
        H = np.asarray(hess(jnp.asarray([a, b]), x, y))
        np.testing.assert_allclose(igr.two_param_hessian(a, b, x, y), H, rtol=1e-12, atol=1e-12)
        assert igr.two_param_lambda_max(a, b, x, y) == pytest.approx(np.linalg.eigvalsh(H)[-1],
                                                                      rel=1e-12, abs=1e-12)
        model = igr.TwoParamModel(a, b)
        np.testing.assert_allclose(np.asarray(model(jnp.asarray([x, 5.0]))), [a * b * x], rtol=1e-14)


def test_ab_summary_and_at_loss_by_hand():
    p = Trajectory(method="gd", lr=0.1, egr=0.0, step=[0, 1], theta=np.array([[1.0, 1.0], [2.0, -0.5]]),
                   loss=np.array([0.3, 0.2]), grad_norm_sq=np.array([1.0, 0.7]))
    s = igr._ab_summary(p, x=1.5, y=1.0, prefix="gd_")
    assert s == {"gd_a": 2.0, "gd_b": -0.5, "gd_gap": 1.5, "gd_loss": 0.2, "gd_grad_norm_sq": 0.7,
                 "gd_trace_H": 1.5**2 * (4.0 + 0.25)}
    # at_loss: log-linear interpolation between the bracketing rows (L = 0.4 → 0.1, target 0.25)
    metrics = {"train_loss": [0.8, 0.4, 0.1, 0.05], "grad_norm_sq": [9.0, 4.0, 1.0, 0.5],
               "t": [0.0, 1.0, 2.0, 3.0], "test_loss": [1.0, 0.9, 0.7, 0.6],
               "test_acc": [0.1, 0.2, 0.3, 0.4]}
    f = math.log(0.25 / 0.4) / math.log(0.1 / 0.4)  # 0.339
    got = igr.at_loss(metrics, 0.25)
    assert got["t"] == pytest.approx(1.0 + f, abs=1e-14)
    assert got["grad_norm_sq"] == pytest.approx(math.exp(math.log(4.0) + f * math.log(1.0 / 4.0)), rel=1e-14)
    assert (got["test_acc"], got["test_loss"], got["train_loss"]) == (0.3, 0.7, 0.1)
    f1 = math.log(0.5 / 0.8) / math.log(0.4 / 0.8)  # the first bracket (rows 0 and 1)
    got = igr.at_loss(metrics, 0.5)
    assert got["t"] == pytest.approx(f1, abs=1e-14)
    assert got["grad_norm_sq"] == pytest.approx(9.0 * (4.0 / 9.0) ** f1, rel=1e-14)
    assert (got["test_acc"], got["test_loss"], got["train_loss"]) == (0.2, 0.9, 0.4)
    assert igr.at_loss(metrics, 0.9) is None and igr.at_loss(metrics, 0.01) is None


def test_sweep_effects_touching_ranges_are_not_separated():
    """min–max ranges that share an end point overlap (separated 0); disjoint ones give ±1."""
    def cell(lr, r):
        return {"n": 2, "lr": lr, "width": 32, "view": "final", "grad_norm_sq": r, "test_loss": r,
                "test_acc": None}

    rng = lambda lo, hi: {"min": lo, "max": hi, "mean": (lo + hi) / 2}
    for a, b, sep in [(rng(1.0, 2.0), rng(0.0, 1.0), 0), (rng(1.0, 2.0), rng(2.0, 3.0), 0),
                      (rng(1.0, 2.0), rng(2.5, 3.0), 1), (rng(1.0, 2.0), rng(0.0, 0.5), -1)]:
        effects = igr.sweep_effects([cell(0.1, a), cell(1.0, b)], 2)
        assert [(e["key"], e["separated"]) for e in effects] == [("grad_norm_sq", sep), ("test_loss", sep)]
        assert effects[0]["change"] == pytest.approx(b["mean"] - a["mean"])
        assert (effects[0]["from"], effects[0]["to"]) == (0.1, 1.0)
