"""Min-norm drift in the loop (Zhang et al. 2017 §5): GD/SGD from θ0 = 0 on models linear in
their trained parameters converge to θ* = Φ⁺Y, against NumPy oracles (pinv, lstsq)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import classification_dataset, regression_dataset

import sgdreg
from sgdreg import training
from sgdreg.config import RunConfig
from sgdreg.data import Dataset
from sgdreg.errors import ModelError
from sgdreg.min_norm import MinNormDistance, min_norm_solution, starts_at_zero
from sgdreg.models import LinearModel, make_model, partition


def test_gd_and_sgd_from_zero_drift_to_the_min_norm_interpolant():
    """The acceptance check, through ``train(cfg)`` as `sgdreg compare --dataset linreg --model
    linear --loss mse --optimizers gd,sgd` runs it (n = 50 < d = 200, θ0 = 0): GD ends < 1e-6
    from θ* relative; SGD's distance is reported, and tiny too (minibatch gradients stay in the
    row space and vanish at the interpolant)."""
    cfg = RunConfig(dataset="linreg", model="linear", loss="mse", lr=0.1, steps=300,
                    log_every=100, dtype="float64")
    ds = training.load_data(cfg)
    for opt in ("gd", "sgd"):
        doc = training.train(cfg.replace(optimizer=opt), ds).trace
        probe, dist, s = doc["probes"]["min_norm"], doc["metrics"]["dist_to_min_norm"], doc["summary"]
        assert probe["every"] == 100 and probe["theta0_zero"] and probe["interpolates"]
        assert (probe["n"], probe["p"]) == (50, 200)
        assert len(dist) == 4 and dist[0] == 1.0 and all(np.isfinite(dist))
        assert s["dist_to_min_norm"] == dist[-1] < 1e-6, opt
        # the min-norm solution's test loss is in the summary, and GD/SGD end on it
        assert s["min_norm_test_loss"] == probe["test_loss"]
        assert s["test_loss"] == pytest.approx(probe["test_loss"], rel=1e-6)
        assert s["weight_norm"] == pytest.approx(probe["norm_min_norm"], rel=1e-6)


def rf_dataset(n=80, n_test=20, d=4, seed=0):
    """Inputs of scale 5 (the preset's bandwidth σ = 5), so the Fourier features are far from
    linear in x and Φ is well conditioned."""
    rng = np.random.default_rng(seed)
    x = 5.0 * rng.normal(size=(n + n_test, d))
    y = np.sin(x[:, :2] / 5) + 0.1 * rng.normal(size=(n + n_test, 2))
    return Dataset("toy-rf", x[:n], y[:n], x[n:], y[n:], 0)


def test_random_features_readout_from_zero_converges_to_pinv_least_squares():
    """p = 20 features < n = 80: GD from a = 0 reaches the least-squares a* = Φ⁺Y (not an
    interpolant); the public door ``run(probes=[MinNormDistance.for_model(...)])`` agrees."""
    ds = rf_dataset()
    cfg = RunConfig(model="random-features", width=20, loss="mse", optimizer="gd", steps=1000,
                    log_every=500, dtype="float64")
    Phi = np.asarray(jax.vmap(training.build(cfg, ds).model0.features)(ds.x_train))
    a_star = np.linalg.pinv(Phi) @ ds.y_train  # (p, K)
    lam = np.linalg.eigvalsh(Phi.T @ Phi / len(Phi))
    res = training.train(cfg.replace(lr=1.0 / lam.max()), ds)
    probe, m = res.trace["probes"]["min_norm"], res.trace["metrics"]
    assert not probe["interpolates"] and probe["p"] == 20
    assert probe["theta0_zero"] and np.any(res.model0.proj)  # a = 0, the features random
    assert probe["norm_min_norm"] == pytest.approx(np.linalg.norm(a_star), rel=1e-10)
    assert probe["train_loss"] == pytest.approx(
        0.5 * np.mean(np.sum((Phi @ a_star - ds.y_train) ** 2, 1)), rel=1e-10)
    w = np.asarray(res.model.readout.weight)
    assert np.linalg.norm(w.T - a_star) / np.linalg.norm(a_star) < 1e-6
    assert m["dist_to_min_norm"][0] == 1.0 and m["dist_to_min_norm"][-1] < 1e-6
    assert res.trace["summary"]["min_norm_test_loss"] == probe["test_loss"]

    api = sgdreg.run(res.model0, ds, "gd", loss="mse", lr=1.0 / lam.max(), steps=1000,
                     log_every=500, probes=[MinNormDistance.for_model(res.model0, ds)])
    np.testing.assert_allclose(api.trace["metrics"]["dist_to_min_norm"], m["dist_to_min_norm"],
                               rtol=1e-6, atol=1e-12)


def test_min_norm_solution_is_lstsq_for_p_below_n_and_pinv_above_with_bias():
    ds = regression_dataset(n=50, d=5, k=2)
    model = LinearModel(5, 2, use_bias=True, key=jax.random.key(0), dtype=jnp.float64)
    params, info = min_norm_solution(model, ds)
    A = np.hstack([ds.x_train, np.ones((50, 1))])
    sol, resid = np.linalg.lstsq(A, ds.y_train, rcond=None)[:2]
    np.testing.assert_allclose(params.linear.weight, sol[:5].T, rtol=1e-10)
    np.testing.assert_allclose(params.linear.bias, sol[5], rtol=1e-10)
    assert info["p"] == 6 and not info["interpolates"]
    assert info["train_loss"] == pytest.approx(resid.sum() / 100, rel=1e-10)
    probe = MinNormDistance(params)
    assert probe.distance(params) == 0.0
    assert probe.distance(jax.tree.map(np.zeros_like, params)) == pytest.approx(1.0)
    with pytest.raises(ModelError, match="params"):
        probe.distance(partition(LinearModel(5, 2, key=jax.random.key(0)))[0])

    wide = classification_dataset(n=10, d=30, k=3)  # p = 31 ≥ n: the interpolant Φᵀ(ΦΦᵀ)⁻¹Y
    params, info = min_norm_solution(LinearModel(30, 3, use_bias=True, key=jax.random.key(0)),
                                     wide)
    A, Y = np.hstack([wide.x_train, np.ones((10, 1))]), np.eye(3)[wide.y_train]
    np.testing.assert_allclose(np.vstack([params.linear.weight.T, params.linear.bias]),
                               np.linalg.pinv(A) @ Y, rtol=1e-8, atol=1e-12)
    assert info["interpolates"] and info["train_error"] == 0.0 and 0 <= info["test_error"] <= 1
    with pytest.raises(ModelError, match="linear in its trained parameters"):
        min_norm_solution(eqx.nn.Identity(), wide)


def test_train_attaches_the_probe_for_linear_models_from_zero_with_mse_only():
    """Presets linear/random-features start at θ0 = 0 (``make_model(zero_init=True)``), so
    ``train(cfg)`` attaches the probe with MSE; not for mlp, cross-entropy or a random θ0."""
    ds = classification_dataset(n=20, d=6, k=3)
    base = RunConfig(loss="mse", log_every=7, depth=0, dtype="float64")  # mlp: one Linear (cheap)

    def names(cfg, model=None):
        return {p.name: p.every for p in training.config_probes(training.build(cfg, ds, model))}

    assert starts_at_zero(training.build(base.replace(model="linear"), ds).params0)
    assert names(base.replace(model="linear")) == {"min_norm": 7}
    assert names(base.replace(model="mlp")) == {}
    assert names(base.replace(model="linear", loss="ce")) == {}
    random_init = make_model("linear", (6,), 3, key=jax.random.key(0), zero_init=False,
                             dtype=jnp.float64)
    assert not starts_at_zero(partition(random_init)[0])
    assert names(base.replace(model="linear"), random_init) == {}
    own = MinNormDistance(np.zeros(6), every=1)
    assert training.config_probes(training.build(base.replace(model="linear"), ds),
                                  [own]) == [own]


@pytest.mark.parametrize("n", [8, 3000])  # p ≥ n: SVD of Φ; p < n: Φ = QR over row blocks
def test_min_norm_solution_of_an_ill_conditioned_design_is_pinv(monkeypatch, n):
    """Singular values 1 … 1e-6 (κ = 1e6) and a rank-deficient pair of columns: θ* equals
    numpy.linalg.pinv(Φ) @ Y to 1e-8 relative. Through a Gram matrix with eigenvalues below
    1e-10·λ_max dropped (the former solve) the directions with s < 1e-5·s_max were lost."""
    monkeypatch.setattr(sgdreg.kernels, "_CHUNK_ELEMENTS", 4000)  # p < n: many row blocks
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    x = rng.normal(size=(n + 5, 10)) @ np.diag(np.geomspace(1, 1e-6, 10)) @ q
    x[:, 9] = x[:, 8]  # rank 9
    ds = Dataset("ill", x[:n], rng.normal(size=(n, 2)), x[n:], rng.normal(size=(5, 2)), 0)
    params, info = min_norm_solution(LinearModel(10, 2, use_bias=False, key=jax.random.key(0),
                                                 dtype=jnp.float64), ds)
    pinv = np.linalg.pinv(ds.x_train) @ ds.y_train
    s = np.linalg.svd(ds.x_train, compute_uv=False)
    assert s[s > 1e-12 * s[0]].min() < 1e-5 * s[0]  # below the former cut-off
    rel = np.linalg.norm(params.linear.weight.T - pinv) / np.linalg.norm(pinv)
    assert rel < 1e-8
    assert info["norm_min_norm"] == pytest.approx(np.linalg.norm(pinv), rel=1e-8)
