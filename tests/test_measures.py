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

from sgdreg.correlation import (
    bootstrap_ci,
    granulated_psi,
    kendall_tau,
    percentile_ci,
    rank_measures,
    resample_indices,
    tau_bootstrap,
)
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
    pacbayes_sigma_se,
    parameter_norm,
    path_norm,
    sharpness_bound_term,
    sharpness_radius,
    spectral_norms,
)
from sgdreg.models import CNN, MLP, LinearModel, make_model, partition

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


def test_percentile_ci_takes_the_95_percent_quantiles():
    """Exact quantiles of 0..1000 (np.percentile, linear): 2.5 % → 25, 97.5 % → 975. An 80 %
    interval would give (100, 900)."""
    stats = np.arange(1001.0)
    assert percentile_ci(stats, 0.95) == pytest.approx((25.0, 975.0), abs=1e-9)
    assert percentile_ci(np.append(stats, np.nan), 0.95) == pytest.approx((25.0, 975.0),
                                                                           abs=1e-9)  # NaN out
    assert percentile_ci(stats, 0.8) == pytest.approx((100.0, 900.0), abs=1e-9)


def test_bootstrap_ci_of_a_mean_has_normal_theory_width():
    """n = 400 draws of N(0, 1): the bootstrap distribution of the mean is ≈ N(x̄, s²/n), so the
    95 % interval is x̄ ± 1.96·s/√n. With 2000 resamples each end's Monte Carlo error is ≈ 0.06
    in units of s/√n (√(.025·.975/2000)/φ(1.96)), so [1.75, 2.2] is > 3 such errors wide on
    each side; an 80 % interval (±1.28) fails."""
    x = np.random.default_rng(7).normal(size=400)
    se = x.std() / np.sqrt(x.size)
    runs = [{"x": v} for v in x]
    lo, hi = bootstrap_ci(runs, lambda d: np.mean([r["x"] for r in d]), num_resamples=2000,
                          seed=3)
    assert 1.75 < (x.mean() - lo) / se < 2.2 and 1.75 < (hi - x.mean()) / se < 2.2


def brute_tau_resampled(m, g, counts):
    """τ_a over ordered pairs of distinct resampled runs (copies of one run left out), weights
    c_r·c_s; NaN rows dropped."""
    ok = [i for i in range(len(m)) if counts[i] > 0 and not (np.isnan(m[i]) or np.isnan(g[i]))]
    pairs = [(i, j) for i in ok for j in ok if i != j]
    w = np.array([counts[i] * counts[j] for i, j in pairs], float)
    sg = [np.sign(m[i] - m[j]) * np.sign(g[i] - g[j]) for i, j in pairs]
    return np.dot(w, sg) / w.sum() if len(pairs) else np.nan


def test_tau_bootstrap_leaves_out_copies_against_loops():
    rng = np.random.default_rng(4)
    n = 15
    m, g = np.round(rng.normal(size=n), 1), np.round(rng.normal(size=n), 1)  # with ties
    m[[2, 9]] = np.nan
    idx = np.vstack([np.arange(n), rng.integers(0, n, size=(12, n)), np.full((1, n), 3)])
    got = tau_bootstrap(m, g, idx, row_chunk=4)
    for i, rows in enumerate(idx):
        want = brute_tau_resampled(m, g, np.bincount(rows, minlength=n))
        assert got[i] == pytest.approx(want, abs=1e-12, nan_ok=True)
    assert got[0] == pytest.approx(kendall_tau(m, g), abs=1e-12)
    assert np.isnan(got[-1])  # one run copied n times: no pair of distinct runs


@pytest.mark.parametrize("n", [8, 32])
def test_tau_interval_contains_tau_for_tau_one_data(n):
    """τ = 1 data: every pair of distinct runs is concordant in every resample, so the CI is
    exactly [1, 1] (counting copies as ties gave [0.75, 0.96] at 8 runs)."""
    x = np.arange(float(n))
    row = rank_measures(pd.DataFrame({"m": x, "gap": 2 * x}), ["m"], gap="gap",
                        num_resamples=500)[0]
    assert row["tau"] == 1.0 and row["tau_ci"] == [1.0, 1.0]
    rng = np.random.default_rng(n)  # and a noisy table: τ inside its CI
    m = rng.normal(size=n)
    row = rank_measures(pd.DataFrame({"m": m, "gap": m + rng.normal(size=n)}), ["m"],
                        gap="gap", num_resamples=500)[0]
    assert row["tau_ci"][0] <= row["tau"] <= row["tau_ci"][1]


def test_rank_measures_psi_never_compares_runs_that_differ_only_by_seed():
    """Within each seed the measure orders the gap (ψ_lr = 1); across seeds it is reversed. A
    group for lr must hold one seed: Ψ = 1, not the τ over the mixed group of 4 runs (−1/3)."""
    runs = pd.DataFrame({"lr": [1, 2, 1, 2], "seed": [0, 0, 1, 1],
                         "mu": [1.0, 2.0, 10.0, 11.0], "gap": [10.0, 11.0, 1.0, 2.0]})
    row = rank_measures(runs, ["mu"], gap="gap", hyperparams=["lr"], num_resamples=100)[0]
    assert row["psi"] == 1.0 and row["psi_per_hp"] == {"lr": 1.0}
    assert row["psi_ci"] == [1.0, 1.0]
    mixed = rank_measures(runs, ["mu"], gap="gap", hyperparams=["lr"], group_by=[])[0]
    assert mixed["psi"] == pytest.approx(kendall_tau(runs["mu"], runs["gap"])) == -1 / 3


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
    boot = tau_bootstrap(runs["mu"], runs["gap"], resample_indices(5, 50, 0))
    assert rows[2]["tau_ci"] == pytest.approx(list(np.nanpercentile(boot, [2.5, 97.5])), abs=1e-12)
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


def test_path_norm_of_linear_model_closed_form():
    """f(x) = Wx + b: the paths are the single edges, so path norm = ‖W‖_F² + ‖b‖²."""
    rng = np.random.default_rng(2)
    for bias in (False, True):
        model = LinearModel(5, 3, use_bias=bias, key=jax.random.key(0), dtype=F64)
        w = rng.normal(size=(3, 5))
        model = eqx.tree_at(lambda m: m.linear.weight, model, jnp.asarray(w))
        want = np.sum(w**2)
        if bias:
            b = rng.normal(size=3)
            model = eqx.tree_at(lambda m: m.linear.bias, model, jnp.asarray(b))
            want += np.sum(b**2)
        assert float(path_norm(model)) == pytest.approx(want, rel=1e-12)


def _np_conv(x, w, b, stride):
    """3×3 convolution with zero padding 1, by loops: out[o,i,j] = b_o + Σ w[o]·patch."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h = (x.shape[1] - 1) // stride + 1
    wd = (x.shape[2] - 1) // stride + 1
    out = np.zeros((w.shape[0], h, wd))
    for o in range(w.shape[0]):
        for i in range(h):
            for j in range(wd):
                patch = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3]
                out[o, i, j] = np.sum(w[o] * patch) + b[o].item()
    return out


def _np_cnn(model, x, act):
    c1 = act(_np_conv(x, np.asarray(model.conv1.weight), np.asarray(model.conv1.bias), 1))
    c2 = act(_np_conv(c1, np.asarray(model.conv2.weight), np.asarray(model.conv2.bias), 2))
    pooled = c2.mean(axis=(1, 2))
    return np.asarray(model.head.weight) @ pooled + np.asarray(model.head.bias)


def test_make_model_cnn_forward_pass_by_loops():
    """``make_model("cnn")``: two 3×3 convolutions (padding 1; the second with stride 2), ReLU,
    global average pooling and a linear head, against a loop implementation in NumPy; a flat
    input is reshaped to the image."""
    cnn = make_model("cnn", (2, 5, 5), 3, width=2, key=jax.random.key(4), dtype=F64)
    assert isinstance(cnn, CNN) and cnn.conv2.weight.shape == (4, 2, 3, 3)
    x = np.random.default_rng(1).normal(size=(2, 5, 5))
    want = _np_cnn(cnn, x, lambda v: np.maximum(v, 0.0))
    image, flat = jax.jit(lambda v: (cnn(v), cnn(v.ravel())))(jnp.asarray(x))  # one compile
    np.testing.assert_allclose(np.asarray(image), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(flat), want, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="image"):
        make_model("cnn", (50,), 3, key=jax.random.key(0))


def test_path_norm_of_cnn_by_loops():
    """CNN path norm (Jiang et al. eq. 44 and their code): the network with squared weights and
    biases and identity activations on an all-ones image, the pooling weight 1/(h·w) unsquared,
    summed over outputs; here by the loop convolution."""
    cnn = make_model("cnn", (2, 5, 5), 3, width=2, key=jax.random.key(5), dtype=F64)
    params, frozen = partition(cnn)
    sq = eqx.combine(jax.tree.map(jnp.square, params), frozen)
    want = np.sum(_np_cnn(sq, np.ones((2, 5, 5)), lambda v: v))
    assert float(path_norm(cnn)) == pytest.approx(want, rel=1e-12)
    assert want > 0


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


def test_pacbayes_sigma_standard_error_matches_the_spread_over_keys():
    """se(σ) from one key's 16 draws (delta method) against the standard deviation of σ over
    24 keys. The latter has a relative sampling error ≈ 1/√(2·23) ≈ 15 %, so a ratio in
    [0.55, 1.6] is about 3 of those errors on each side (a se without the 1/√K, ×4, fails)."""
    obj, params, x, y, _ = _two_class_linear()
    sig, se = [], []
    for k in range(24):
        key = jax.random.key(100 + k)
        s_ = pacbayes_sigma(obj, params, x, y, key, num_samples=16, num_bisection=16)
        sig.append(float(s_))
        se.append(float(pacbayes_sigma_se(obj, params, x, y, key, s_, num_samples=16)))
    spread = np.std(sig, ddof=1)
    assert 0.55 < np.mean(se) / spread < 1.6
    assert 0.01 < spread / np.mean(sig) < 0.5  # a real, non-trivial sampling error
    with pytest.raises(ValueError, match="num_samples"):
        pacbayes_sigma_se(obj, params, x, y, jax.random.key(0), 0.1, num_samples=1)


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


def _bound_by_hand(scale, theta, theta0, n, *, reference, magnitude_aware, sharpness,
                   eps=1e-3):
    """Jiang et al. 2020 eqs. 48–51 (plain) and 56–59 (magnitude-aware), written out per
    parameter: w = θ−θ0 ("init") or θ ("orig"), ω = #parameters, c = 1 (PAC-Bayes) or
    4·log(2ω) (sharpness)."""
    theta, theta0 = np.asarray(theta, float), np.asarray(theta0, float)
    w = theta - theta0 if reference == "init" else theta
    omega = theta.size
    const = math.log(n / scale) + 10.0
    if not magnitude_aware:
        factor = math.log(2 * omega) if sharpness else 1.0
        return sum(wi**2 for wi in w) * factor / (4.0 * scale**2) + const
    c = 4.0 * math.log(2 * omega) if sharpness else 1.0
    total = 0.0
    for i in range(omega):
        top = eps**2 + (scale**2 + c) * sum(wj**2 for wj in w) / omega
        total += math.log(top / (eps**2 + scale**2 * (theta[i] - theta0[i]) ** 2))
    return total / 4.0 + const


BOUND_THETA = {"w": jnp.array([1.0, -2.0, 0.0, 0.3], F64), "b": jnp.array([0.7], F64)}
BOUND_THETA0 = {"w": jnp.array([0.0, -1.0, 0.0, 0.5], F64), "b": jnp.array([0.2], F64)}


@pytest.mark.parametrize("reference", ["init", "orig"])
@pytest.mark.parametrize("magnitude_aware", [False, True])
@pytest.mark.parametrize("bound", [pacbayes_bound_term, sharpness_bound_term])
def test_bound_terms_against_the_formulas_written_out(bound, magnitude_aware, reference):
    """θ ≠ θ0 in 4 of 5 coordinates (one equal: its log term is log((ε² + ...)/ε²)), σ = 0.5:
    every term of each bound is non-zero, so a dropped ¼ or σ² in place of σ² + 1 changes it."""
    theta = np.concatenate([np.asarray(v) for v in jax.tree.leaves(BOUND_THETA)])
    theta0 = np.concatenate([np.asarray(v) for v in jax.tree.leaves(BOUND_THETA0)])
    for scale in (0.5, 0.03):
        got = bound(scale, BOUND_THETA, BOUND_THETA0, 100, reference=reference,
                    magnitude_aware=magnitude_aware)
        want = _bound_by_hand(scale, theta, theta0, 100, reference=reference,
                              magnitude_aware=magnitude_aware,
                              sharpness=bound is sharpness_bound_term)
        assert got == pytest.approx(want, rel=1e-12)
    if magnitude_aware and reference == "init":  # at θ = θ0 every log ratio is log 1
        at_init = bound(0.5, BOUND_THETA0, BOUND_THETA0, 100, magnitude_aware=True)
        assert at_init == pytest.approx(np.log(100 / 0.5) + 10, rel=1e-12)


# ---------------------------------------------------------------- all together


def _np_mlp(layers, x):
    """Forward pass of a ReLU MLP in NumPy (rows of x)."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def test_compute_measures_values_against_numpy(monkeypatch):
    """Every norm, margin and bound measure of compute_measures at a point where each term is
    non-zero (θ ≠ θ0 in every coordinate, |γ| ≠ 1, d = 3 layers), recomputed from the weight
    matrices with NumPy: SVDs, a NumPy forward pass for the margins, the bound formulas of
    Jiang et al. written out, and the path norm as the sum over paths. The σ/α searches (tested
    against exact oracles above) are replaced by fixed scales, so each bound is checked at a
    known σ or α and nothing but the measures is compiled."""
    import sgdreg.measures as measures

    fixed = {("sigma", False): 0.05, ("sigma", True): 0.4, ("radius", False): 0.02,
             ("radius", True): 0.15}
    calls = []

    def fake(kind):
        def search(objective, params, x, y, key, *args, magnitude_aware, **kw):
            calls.append((kind, magnitude_aware, kw.get("criterion"), kw.get("num_restarts")))
            return jnp.asarray(fixed[kind, magnitude_aware])
        return search

    monkeypatch.setattr(measures, "pacbayes_sigma", fake("sigma"))
    monkeypatch.setattr(measures, "sharpness_radius", fake("radius"))
    monkeypatch.setattr(measures, "pacbayes_sigma_se",
                        lambda *a, magnitude_aware, **kw: jnp.asarray(0.1 + magnitude_aware))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5))
    y = rng.integers(0, 3, size=64)
    init = MLP(5, 3, width=4, depth=2, key=jax.random.key(0), dtype=F64)
    noise = [jnp.asarray(rng.normal(size=a.shape) * 0.3) for a in jax.tree.leaves(init)]
    model = jax.tree.unflatten(jax.tree.structure(init), [
        1.5 * a + e for a, e in zip(jax.tree.leaves(init), noise)])
    trace = {"lambda_max": 2.0, "hessian_trace": 5.0, "gen_gap": 0.3, "grad_var": None}
    out = compute_measures(model, init, "ce", (jnp.asarray(x), jnp.asarray(y)),
                           jax.random.key(0), trace_metrics=trace, num_samples=4, num_steps=3,
                           num_bisection=8, chunk_size=24, num_restarts=3)
    assert sorted(calls) == sorted([("sigma", False, "accuracy", None),
                                    ("sigma", True, "accuracy", None),
                                    ("radius", False, "accuracy", 3),
                                    ("radius", True, "accuracy", 3)])

    layers = [(np.asarray(m.weight), np.asarray(m.bias)) for m in model.layers]
    layers0 = [(np.asarray(m.weight), np.asarray(m.bias)) for m in init.layers]
    theta = np.concatenate([a.ravel() for lb in layers for a in lb])
    theta0 = np.concatenate([a.ravel() for lb in layers0 for a in lb])
    spec = [np.linalg.svd(w, compute_uv=False)[0] for w, _ in layers]
    fro = [np.sqrt(np.sum(w**2)) for w, _ in layers]
    dfro = [np.sqrt(np.sum((w - w0) ** 2)) for (w, _), (w0, _) in zip(layers, layers0)]
    dspec = [np.linalg.svd(w - w0, compute_uv=False)[0] for (w, _), (w0, _) in zip(layers, layers0)]
    d = 3
    logits = _np_mlp(layers, x)
    other = np.where(np.eye(3, dtype=bool)[y], -np.inf, logits)
    gamma = np.percentile(logits[np.arange(64), y] - other.max(1), 10)
    assert 0.05 < abs(gamma) and abs(abs(gamma) - 1) > 0.05  # γ² ≠ γ, |γ| ≠ 1
    lp_spec = np.sum(np.log(np.square(spec)))
    lp_fro = np.sum(np.log(np.square(fro)))
    path = _brute_path_norm([w for w, _ in layers], [b for _, b in layers])
    want = {
        "num_params": theta.size, "param_norm": np.linalg.norm(theta),
        "dist_from_init": np.linalg.norm(theta - theta0), "dist_spec_from_init": sum(dspec),
        "dist_spec_init": sum(v**2 for v in dspec), "log_prod_of_spec": lp_spec,
        "log_sum_of_spec": np.log(np.sum(np.exp(np.full(d, lp_spec / d)))),
        "log_prod_of_fro": lp_fro, "log_sum_of_fro": np.log(d) + lp_fro / d,
        "fro_over_spec": sum(f**2 / s**2 for f, s in zip(fro, spec)),
        "dist_fro_over_spec": sum(f**2 / s**2 for f, s in zip(dfro, spec)),
        "spectral_norm_layers_1": spec[1], "frobenius_norm_layers_2": fro[2],
        "dist_fro_init_layers_0": dfro[0], "dist_spec_init_layers_2": dspec[2],
        "path_norm": path, "path_norm_sqrt": np.sqrt(path),
        "margin": gamma, "inverse_margin": 1 / gamma**2,
        "log_prod_of_spec_over_margin": np.log(np.prod(np.square(spec)) / gamma**2),
        "log_sum_of_spec_over_margin": np.log(d * (np.prod(np.square(spec)) / gamma**2)
                                              ** (1 / d)),
        "log_spec_init_main": np.log(np.prod(np.square(spec)) / gamma**2
                                     * sum(f**2 / s**2 for f, s in zip(dfro, spec))),
        "log_spec_orig_main": np.log(np.prod(np.square(spec)) / gamma**2
                                     * sum(f**2 / s**2 for f, s in zip(fro, spec))),
        "log_prod_of_fro_over_margin": np.log(np.prod(np.square(fro)) / gamma**2),
        "log_sum_of_fro_over_margin": np.log(d * (np.prod(np.square(fro)) / gamma**2)
                                             ** (1 / d)),
        "path_norm_over_margin": path / gamma**2,
        "lambda_max": 2.0, "hessian_trace": 5.0,
        "lambda_max_scaled": 2.0 * np.sum(theta**2), "hessian_trace_scaled": 5.0 * np.sum(theta**2),
    }
    for k, v in want.items():
        assert out[k] == pytest.approx(v, rel=1e-10), k
    for prefix, scale, sharp, mag in (("pacbayes", "sigma", False, False),
                                      ("pacbayes_mag", "sigma", False, True),
                                      ("sharpness", "radius", True, False),
                                      ("mag_sharpness", "radius", True, True)):
        s_ = out[f"{prefix}_{scale}"]
        assert s_ == pytest.approx(fixed[scale, mag]) and out[f"{prefix}_flatness"] == \
            pytest.approx(s_**-2)
        for ref in ("init", "orig"):
            assert out[f"{prefix}_{ref}"] == pytest.approx(_bound_by_hand(
                s_, theta, theta0, 64, reference=ref, magnitude_aware=mag, sharpness=sharp),
                rel=1e-10), (prefix, ref)
    assert (out["pacbayes_sigma_se"], out["pacbayes_mag_sigma_se"]) == (0.1, 1.1)
    assert "gen_gap" not in out and "grad_var" not in out
    reg = compute_measures(init, init, "mse", (x, x[:, :3]), jax.random.key(0), flatness=False)
    assert reg["dist_from_init"] == 0.0 and math.isnan(reg["margin"])
