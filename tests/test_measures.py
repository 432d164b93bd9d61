"""Generalization measures and their rank correlation with the gap, against exact oracles."""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats

from sgdreg.correlation import bootstrap_ci, granulated_psi, kendall_tau, rank_measures
from sgdreg.losses import Objective
from sgdreg.measures import (
    compute_measures,
    distance_from_init,
    frobenius_norms,
    log_prod_spectral,
    log_sum_spectral,
    margin_percentile,
    margins,
    pacbayes_bound_term,
    pacbayes_sigma,
    parameter_norm,
    path_norm,
    sharpness_radius,
    spectral_norms,
)
from sgdreg.models import CNN, MLP, LinearModel, partition

F64 = jnp.float64


def brute_tau(m, g):
    pairs = list(itertools.combinations(range(len(m)), 2))
    return sum(np.sign(m[i] - m[j]) * np.sign(g[i] - g[j]) for i, j in pairs) / len(pairs)


# ---------------------------------------------------------------- correlation


def test_kendall_tau_hand_table_with_ties():
    m, g = [1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 2.0]
    # pairs: (01)+1 (02)+1 (03)+1 (12)0 tie in μ (13)−1 (23)0 tie in g → 2/6
    assert kendall_tau(m, g) == pytest.approx(1 / 3, abs=1e-15)
    assert kendall_tau(m, g) == pytest.approx(brute_tau(np.array(m), np.array(g)), abs=1e-15)


def test_kendall_tau_extremes_nan_and_scipy():
    x = np.arange(7.0)
    assert kendall_tau(x, 2 * x + 1) == 1.0
    assert kendall_tau(x, -(x**3)) == -1.0
    # NaN runs are dropped, not counted as ties
    assert kendall_tau([1.0, np.nan, 2.0, 3.0], [1.0, 5.0, 3.0, 2.0]) == pytest.approx(
        kendall_tau([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]))
    assert math.isnan(kendall_tau([1.0, np.nan], [1.0, 2.0]))
    rng = np.random.default_rng(0)
    m, g = rng.normal(size=60), rng.normal(size=60)
    g = g + m
    ref = scipy.stats.kendalltau(m, g).statistic  # τ_b = τ_a without ties
    assert kendall_tau(m, g) == pytest.approx(ref, abs=1e-12)
    assert kendall_tau(m, g, row_chunk=7) == pytest.approx(brute_tau(m, g), abs=1e-12)
    ties = np.round(m), np.round(g)
    assert kendall_tau(*ties) == pytest.approx(brute_tau(*ties), abs=1e-12)


RUNS = [  # depth takes one value: its groups hold one run each → skipped
    {"lr": 1, "bs": 32, "depth": 1, "mu": 1.0, "gap": 0.1},
    {"lr": 2, "bs": 32, "depth": 1, "mu": 2.0, "gap": 0.3},
    {"lr": 1, "bs": 64, "depth": 1, "mu": 3.0, "gap": 0.2},
    {"lr": 2, "bs": 64, "depth": 1, "mu": 3.0, "gap": 0.4},
    {"lr": 3, "bs": 64, "depth": 1, "mu": 0.5, "gap": 0.5},
]


@pytest.mark.parametrize("as_frame", [False, True])
def test_granulated_psi_hand_table(as_frame):
    runs = pd.DataFrame(RUNS) if as_frame else RUNS
    psi, per = granulated_psi(runs, "mu", "gap", ["lr", "bs", "depth"])
    # lr: bs=32 → τ=1; bs=64 → pairs 0 (tie), −1, −1 → −2/3; ψ = 1/6
    # bs: lr=1 → 1, lr=2 → 1, lr=3 has one run; ψ = 1.  depth: no usable group.
    assert per["lr"] == pytest.approx(1 / 6)
    assert per["bs"] == pytest.approx(1.0)
    assert math.isnan(per["depth"])
    assert psi == pytest.approx((1 / 6 + 1) / 2)


def _noisy_runs(n, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=n)
    return pd.DataFrame({"m": m, "g": m + rng.normal(size=n)})


def test_bootstrap_ci_contains_estimate_and_shrinks():
    def stat(df):
        return kendall_tau(df["m"], df["g"])

    widths = []
    for n in (20, 320):
        runs = _noisy_runs(n, 1)
        lo, hi = bootstrap_ci(runs, stat, num_resamples=300, seed=0)
        assert lo <= stat(runs) <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.4 * widths[0]  # ∝ 1/√n: expect ≈ 0.25
    records = _noisy_runs(20, 1).to_dict("records")
    lo, hi = bootstrap_ci(records, lambda r: kendall_tau([a["m"] for a in r], [a["g"] for a in r]),
                          num_resamples=300, seed=0)
    assert (lo, hi) == bootstrap_ci(_noisy_runs(20, 1), stat, num_resamples=300, seed=0)


def test_rank_measures_rows_sorted_with_counts():
    runs = pd.DataFrame(RUNS)
    runs["anti"] = -runs["gap"]
    runs["holey"] = [1.0, np.nan, 2.0, 3.0, np.nan]
    rows = rank_measures(runs, ["mu", "anti", "holey"], gap="gap", hyperparams=["lr", "bs"],
                         num_resamples=50)
    # |τ| = 1, 1 (on its 3 runs with a value; stable sort keeps input order), 0.1
    assert [r["measure"] for r in rows] == ["anti", "holey", "mu"]
    assert rows[2]["tau"] == pytest.approx(-0.1)
    anti = rows[0]
    assert anti["tau"] == -1.0 and anti["n_runs"] == 5 and anti["n_dropped"] == 0
    assert anti["tau_ci"][0] <= -0.99 and anti["psi"] == -1.0
    holey = rows[1]
    assert holey["n_runs"] == 3 and holey["n_dropped"] == 2
    assert holey["tau"] == 1.0
    assert rows[2]["psi_per_hp"]["lr"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------- norms


def _hand_mlp():
    rng = np.random.default_rng(3)
    model = MLP(3, 2, width=4, depth=2, activation="relu", key=jax.random.key(0), dtype=F64)
    new = [jnp.asarray(np.round(rng.normal(size=a.shape), 2)) for a in jax.tree.leaves(model)]
    return jax.tree.unflatten(jax.tree.structure(model), new)


def _brute_path_norm(ws, bs):
    """Σ over paths of Π w²: a path starts at an input unit (into layer 0) or at the bias of
    layer l (a constant-1 unit feeding unit route[0] of layer l), then follows weights out."""
    total = 0.0
    for layer in range(len(ws)):
        for route in itertools.product(*[range(w.shape[0]) for w in ws[layer:]]):
            tail = np.prod([ws[layer + t][route[t], route[t - 1]] ** 2
                            for t in range(1, len(route))])
            total += bs[layer][route[0]] ** 2 * tail
            if layer == 0:
                total += sum(ws[0][route[0], i] ** 2 for i in range(ws[0].shape[1])) * tail
    return total


def test_path_norm_equals_sum_over_paths():
    model = _hand_mlp()
    ws = [np.asarray(layer.weight) for layer in model.layers]
    bs = [np.asarray(layer.bias) for layer in model.layers]
    total = _brute_path_norm(ws, bs)
    assert float(path_norm(model)) == pytest.approx(total, rel=1e-12)
    # Jiang et al.'s recipe: the ReLU net with squared parameters on an all-ones input
    params, frozen = partition(model)
    sq = eqx.combine(jax.tree.map(jnp.square, params), frozen)
    assert float(jnp.sum(sq(jnp.ones(3, F64)))) == pytest.approx(total, rel=1e-12)
    no_bias = [np.zeros_like(b) for b in bs]  # weights only: Σ_i,j,k,o Π w² via matrix products
    sq_w = [w**2 for w in ws]
    assert _brute_path_norm(ws, no_bias) == pytest.approx(
        np.sum(sq_w[2] @ sq_w[1] @ sq_w[0] @ np.ones(3)), rel=1e-12)


def test_path_norm_invariant_to_relu_rescaling_but_not_frobenius():
    model = _hand_mlp()
    c = 3.0
    scaled = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight),
        model,
        (c * model.layers[0].weight, c * model.layers[0].bias, model.layers[1].weight / c),
    )
    x = jnp.linspace(-1.0, 1.0, 3, dtype=F64)
    assert jnp.allclose(model(x), scaled(x))
    assert float(path_norm(scaled)) == pytest.approx(float(path_norm(model)), rel=1e-12)
    assert float(parameter_norm(partition(scaled)[0])) != pytest.approx(
        float(parameter_norm(partition(model)[0])))


def test_spectral_and_frobenius_norms_match_numpy():
    model = _hand_mlp()
    params = partition(model)[0]
    spec, fro = spectral_norms(params), frobenius_norms(params)
    assert list(spec) == ["layers[0]", "layers[1]", "layers[2]"]
    svals = []
    for i, layer in enumerate(model.layers):
        w = np.asarray(layer.weight)
        svals.append(np.linalg.svd(w, compute_uv=False)[0])
        assert float(spec[f"layers[{i}]"]) == pytest.approx(svals[-1], rel=1e-12)
        assert float(fro[f"layers[{i}]"]) == pytest.approx(np.sqrt(np.sum(w**2)), rel=1e-12)
    log_prod = np.sum(np.log(np.square(svals)))
    assert float(log_prod_spectral(params)) == pytest.approx(log_prod, rel=1e-12)
    assert float(log_sum_spectral(params)) == pytest.approx(np.log(3) + log_prod / 3, rel=1e-12)
    cnn = CNN((2, 6, 6), 3, width=4, key=jax.random.key(1), dtype=F64)
    kernel = np.asarray(cnn.conv2.weight).reshape(8, -1)  # (out, in·kh·kw)
    assert float(spectral_norms(partition(cnn)[0])["conv2"]) == pytest.approx(
        np.linalg.svd(kernel, compute_uv=False)[0], rel=1e-12)


def test_distance_from_init():
    model = _hand_mlp()
    params = partition(model)[0]
    at_init = distance_from_init(params, params)
    assert float(at_init["frobenius"]) == 0.0 and float(at_init["spectral"]) == 0.0
    moved = jax.tree.map(lambda a: a + 0.5, params)  # every entry +0.5: rank-one layer shifts
    d = distance_from_init(moved, params)
    sizes = [a.size for a in jax.tree.leaves(params)]
    assert float(d["frobenius"]) == pytest.approx(0.5 * np.sqrt(sum(sizes)), rel=1e-12)
    spec = sum(0.5 * np.sqrt(np.prod(layer.weight.shape)) for layer in model.layers)
    assert float(d["spectral"]) == pytest.approx(spec, rel=1e-12)


# ---------------------------------------------------------------- margins


def test_margin_percentile_hand_set_linear_model():
    model = LinearModel(2, 3, key=jax.random.key(0), dtype=F64)
    model = eqx.tree_at(lambda m: m.linear.weight, model,
                        jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], F64))
    params, frozen = partition(model)
    obj = Objective(frozen, "ce", 3)
    x = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]], F64)
    y = jnp.array([0, 1, 2, 0])
    # logits [2,1,-3]→1, [0,3,-3]→3, [1,1,-2] (y=2)→−3, [-1,0,1]→−2
    assert np.allclose(margins(obj, params, x, y, chunk_size=3), [1.0, 3.0, -3.0, -2.0])
    gamma = margin_percentile(obj, params, x, y, q=10, chunk_size=3)
    assert float(gamma) == pytest.approx(-2.7, abs=1e-12)  # −3 + 0.3·(−2 − (−3))


# ---------------------------------------------------------------- flatness


def _two_class_linear(d=100, n=500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d) / np.sqrt(d)
    y = (x @ w > 0).astype(np.int32)
    model = LinearModel(d, 2, key=jax.random.key(0), dtype=F64)
    model = eqx.tree_at(lambda m: m.linear.weight, model, jnp.asarray(np.stack([-w, w]) / 2))
    params, frozen = partition(model)
    return Objective(frozen, "ce", 2), params, jnp.asarray(x), jnp.asarray(y), w


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_pacbayes_sigma_matches_normal_cdf(magnitude_aware):
    obj, params, x, y, w = _two_class_linear()
    xn, m, eps = np.asarray(x), np.abs(np.asarray(x) @ w), 1e-3

    def expected_acc(log_s):  # margin noise (u_y − u_o)·x is Gaussian with this variance
        s = np.exp(log_s)
        if magnitude_aware:
            var = (xn**2) @ (2 * s**2 * (w / 2) ** 2 + 2 * eps**2)
        else:
            var = 2 * s**2 * np.sum(xn**2, axis=1)
        return np.mean(scipy.stats.norm.cdf(m / np.sqrt(var)))

    exact = np.exp(scipy.optimize.brentq(lambda t: expected_acc(t) - 0.9, -12, 5))
    sigma = pacbayes_sigma(obj, params, x, y, jax.random.key(1), num_samples=32,
                           magnitude_aware=magnitude_aware, num_bisection=16)
    assert float(sigma) == pytest.approx(exact, rel=0.06)


def test_pacbayes_sigma_loss_criterion_regression():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(200, 50)))
    model = LinearModel(50, 1, key=jax.random.key(0), dtype=F64)
    params, frozen = partition(model)
    y = jax.vmap(model)(x)[:, 0]  # interpolated: E[L(θ+u)] − L(θ) = ½σ² mean‖x_i‖²
    obj = Objective(frozen, "mse", 0)
    exact = np.sqrt(0.1 / (0.5 * np.mean(np.sum(np.asarray(x) ** 2, axis=1))))
    sigma = pacbayes_sigma(obj, params, x, y, jax.random.key(2), criterion="loss",
                           num_bisection=16)
    assert float(sigma) == pytest.approx(exact, rel=0.1)
    with pytest.raises(ValueError, match="criterion"):
        pacbayes_sigma(obj, params, x, y, jax.random.key(2))


def _positive_data_model(scale):
    """All labels 0, x > 0: the box corner u_0 = −r, u_1 = +r is the worst case for every example
    at once and every loss gradient points to it, so projected ascent finds the exact worst case."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0.1, 1.0, size=(45, 3))
    wt = np.array([[1.0, 0.5, 2.0], [-0.5, 0.2, 0.3]]) * scale
    model = LinearModel(3, 2, key=jax.random.key(0), dtype=F64)
    model = eqx.tree_at(lambda m: m.linear.weight, model, jnp.asarray(wt))
    params, frozen = partition(model)
    return Objective(frozen, "ce", 2), params, jnp.asarray(x), jnp.zeros(45, jnp.int32), x, wt


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_sharpness_radius_exact_worst_case(magnitude_aware):
    radii = []
    for scale in (1.0, 0.5):  # halving W halves every margin: a sharper model
        obj, params, x, y, xn, wt = _positive_data_model(scale)
        m = xn @ (wt[0] - wt[1])
        eps = 1e-3
        per_alpha = (xn @ (np.abs(wt[0]) + np.abs(wt[1]) + 2 * eps) if magnitude_aware
                     else 2 * np.sum(xn, axis=1))
        # drop(α) = #{m_i ≤ α·per_alpha_i}/45 ≤ 0.1 allows 4 flips: radius = 5th smallest ratio
        exact = np.sort(m / per_alpha)[4]
        alpha = sharpness_radius(obj, params, x, y, jax.random.key(0), num_steps=10,
                                 magnitude_aware=magnitude_aware, eps=eps)
        assert float(alpha) == pytest.approx(exact, rel=1e-4)
        radii.append(float(alpha))
    assert radii[1] < radii[0]
    if not magnitude_aware:
        assert radii[1] == pytest.approx(radii[0] / 2, rel=1e-4)


def test_pacbayes_bound_term_formulas():
    params = {"w": jnp.array([1.0, -2.0, 0.0], F64)}
    init = {"w": jnp.array([0.0, -1.0, 0.0], F64)}
    sigma, n = 0.5, 100
    plain = pacbayes_bound_term(sigma, params, init, n)
    assert float(plain) == pytest.approx(2.0 / (4 * 0.25) + np.log(n / sigma) + 10)
    at_init = pacbayes_bound_term(sigma, init, init, n, magnitude_aware=True)
    assert float(at_init) == pytest.approx(np.log(n / sigma) + 10)  # every log ratio is log 1


# ---------------------------------------------------------------- all together


def test_compute_measures_names_and_trace_passthrough():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 5)))
    y = jnp.asarray(rng.integers(0, 3, size=64))
    init = MLP(5, 3, width=8, depth=1, key=jax.random.key(0), dtype=F64)
    model = jax.tree.map(lambda a: a * 1.5 if eqx.is_array(a) else a, init)
    trace = {"lambda_max": 2.0, "hessian_trace": 5.0, "gen_gap": 0.3, "grad_var": None}
    out = compute_measures(model, init, "ce", (x, y), jax.random.key(0), trace_metrics=trace,
                           num_samples=4, num_steps=3, num_bisection=8, chunk_size=24)
    for k in ("param_norm", "dist_from_init", "dist_spec_from_init", "log_prod_of_spec",
              "log_sum_of_fro", "path_norm", "path_norm_sqrt", "margin", "inverse_margin",
              "log_spec_init_main", "path_norm_over_margin", "pacbayes_sigma",
              "pacbayes_mag_init", "sharpness_radius", "mag_sharpness_flatness",
              "spectral_norm_layers_0", "dist_fro_init_layers_1"):
        assert np.isfinite(out[k]), k
    assert "gen_gap" not in out and "grad_var" not in out
    assert out["lambda_max_scaled"] == pytest.approx(2.0 * out["param_norm"] ** 2)
    assert out["dist_from_init"] == pytest.approx(0.5 * out["param_norm"] / 1.5)
    assert out["pacbayes_flatness"] == pytest.approx(out["pacbayes_sigma"] ** -2)
    reg = compute_measures(init, init, "mse", (x, x[:, :3]), jax.random.key(0), flatness=False)
    assert reg["dist_from_init"] == 0.0 and math.isnan(reg["margin"])
