"""The generalization experiments at toy scale against their published qualitative results
(Zhang et al. 2017; Belkin et al. 2019; Nakkiran et al. 2019) and the CLI contract of
randomize / expressivity / kernel / double-descent: exit 0 with results JSON + figure, exit 2
with nothing written on a bad value."""

import json

import numpy as np
import pytest
import scipy.stats
from sgdreg_cli.main import main

from sgdreg import results
from sgdreg.config import ConfigError, RunConfig
from sgdreg.experiments import double_descent as dd
from sgdreg.experiments import zhang
from sgdreg.plotting.double_descent import render_double_descent
from sgdreg.plotting.zhang import render_randomization
from sgdreg.trace import load_trace

# Randomization tests at toy scale: 300 digits, the default MLP (width 128), SGD with momentum.
RANDOMIZE = ["randomize", "--n-train", "300", "--epochs", "60", "--corruptions", "0,1",
             "--inputs", "shuffled-pixels,random-pixels,gaussian"]


def _results(path, name):
    doc = json.loads((path / f"{name}.json").read_text())
    assert doc["schema"] == results.SCHEMA and doc["experiment"] == name
    return doc["results"]


def _figure_written(path, stem):
    assert (path / f"{stem}.png").stat().st_size > 0 and (path / f"{stem}.svg").is_file()


# --- Zhang et al. 2017, Fig. 1 -------------------------------------------------------------------

@pytest.fixture(scope="module")
def randomized(tmp_path_factory):
    out = tmp_path_factory.mktemp("randomize") / "run"
    assert main([*RANDOMIZE, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_randomization_every_variant_fits_random_labels_last_at_chance(randomized):
    res = _results(randomized, "randomization")
    runs = {r["variant"]: r for r in res["runs"]}
    assert list(runs) == ["true labels", "random labels", "shuffled pixels", "random pixels",
                          "gaussian"]
    assert all(r["steps_to_fit"] is not None and r["status"] == "completed"
               for r in runs.values())  # every variant reaches 100% train accuracy
    true, rand = runs["true labels"], runs["random labels"]
    assert rand["steps_to_fit"] > 1.5 * true["steps_to_fit"]  # measured 81 vs 207 steps (2.6×)
    assert rand["steps_to_fit"] == max(r["steps_to_fit"] for r in runs.values())
    assert true["test_error"] < 0.1 and runs["shuffled pixels"]["test_error"] < 0.1
    assert 0.84 <= rand["test_error"] <= 0.96  # chance: 90% error; measured 92.5%
    assert rand["fraction_labels_changed"] > 0.8
    assert {r["variant"] for r in res["table"] if r["all_fit"]} == set(runs)


@pytest.mark.slow
def test_randomization_fitting_time_grows_with_p_on_all_digits():
    """Full digits, the experiment's config, two seeds. What the data support is a trend, not a
    strict order of noisy means: p = 0.8 and 1.0 differ by ~22 steps against a per-seed spread
    of ±130–270. So, per seed: steps to fit rise with p (Kendall τ ≥ 0.6 over the 6 levels),
    random labels take > 3× the true-label time, and each corrupted level (p ≥ 0.4) is slower
    than the clean one; test error at p = 1 is near chance (90%)."""
    from scipy.stats import kendalltau

    cfg = RunConfig(width=128, optimizer="momentum", lr=0.05, batch_size=32, steps=100 * 44,
                    log_every=44)
    res = zhang.randomization_test(cfg, inputs=(), seeds=(0, 1))
    assert all(r["all_fit"] for r in res["table"])
    for seed in (0, 1):
        runs = sorted((r for r in res["runs"] if r["seed"] == seed), key=lambda r: r["p"])
        ps, steps = [r["p"] for r in runs], [r["steps_to_fit"] for r in runs]
        assert kendalltau(ps, steps).statistic >= 0.6, (seed, steps)
        assert steps[-1] > 3 * steps[0] and all(s > steps[0] for p, s in zip(ps, steps) if p >= 0.4)
    errors = [r["test_error"] for r in res["table"]]
    assert errors[0] < 0.1 and 0.85 <= errors[-1] <= 0.95


@pytest.mark.slow
def test_randomization_traces_and_figure_from_stored_results(randomized, tmp_path):
    _figure_written(randomized, "randomization")
    traces = sorted((randomized / "traces").glob("*.json"))
    assert len(traces) == 5 and load_trace(traces[0])["status"] == "completed"
    assert render_randomization(randomized, tmp_path / "again.png")[0].stat().st_size > 0


def test_randomization_variants_and_table():
    v = zhang.randomization_variants([0.4, 0, 1], ["gaussian"])
    assert [(x["variant"], x["kind"], x["p"]) for x in v] == [
        ("true labels", "none", 0.0), ("corrupt p=0.4", "label-corruption", 0.4),
        ("random labels", "random-labels", 1.0), ("gaussian", "gaussian", None)]
    with pytest.raises(ConfigError, match="^corruptions"):
        zhang.randomization_variants([1.5])
    with pytest.raises(ConfigError, match="^inputs"):
        zhang.randomization_variants([0], ["noise"])
    runs = [{"variant": "a", "kind": "none", "p": 0.0, "steps_to_fit": s, "relative_time": r,
             "test_error": e} for s, r, e in ((10, 1.0, 0.1), (None, None, 0.3))]
    (row,) = zhang.randomization_table(runs)
    assert row["all_fit"] is False and row["steps_to_fit"] == 10 and row["test_error"] == 0.2


# --- Zhang et al. 2017, Theorem 1 ------------------------------------------------------------------

@pytest.mark.slow
def test_expressivity_cli_exact_fit_with_2n_plus_d_weights(tmp_path):
    out = tmp_path / "expr"
    assert main(["expressivity", "--n", "60", "--multiples", "1", "--steps", "100",
                 "--out", str(out)]) == 0
    res = _results(out, "expressivity")
    c = res["construction"]
    assert (c["n"], c["d"]) == (60, 64) and c["num_params"] == 2 * 60 + 64
    assert c["residual"] < 1e-6 and c["train_acc"] == 1.0
    (trained,) = res["trained"]
    assert trained["width"] == 2 and trained["num_params"] == 2 * 65 + 3 * 10  # nearest to 184
    # a net that learned nothing about the 60 random labels (10 classes) gets Binomial(60, 0.1)
    # of them right: P(≥ 17 right) < 1e-4 at each logged step (measured best: 33 right)
    assert res["chance"] == 0.1
    assert scipy.stats.binom.isf(1e-4, 60, 0.1) / 60 < trained["best_train_acc"] <= 1.0
    _figure_written(out, "expressivity")


def test_matched_width():
    assert zhang.matched_width(2 * 200 + 64, 64, 10) == 6  # 6·65 + 7·10 = 460 parameters
    assert zhang.matched_width(10, 64, 10) == 1


# --- Zhang et al. 2017, §5: minimum-norm interpolation --------------------------------------------

GD = ["--gd-n", "30", "--gd-steps", "4000"]  # one GD shape for both kernel tests (one compile)


def test_kernel_cli_gd_reaches_min_norm_and_rbf_interpolates(tmp_path):
    out = tmp_path / "kernel"
    assert main(["kernel", "--kernel", "rbf", "--n-train", "400", *GD, "--out", str(out)]) == 0
    res = _results(out, "kernel")
    i, g = res["interpolation"], res["gd"]
    assert i["train_error"] == 0.0 and i["test_error"] < 0.1 and i["rkhs_norm"] > 0
    assert g["final_dist"] < 1e-3 and g["dist_to_min_norm"][0] == pytest.approx(1.0)
    assert g["norm_gd"] == pytest.approx(g["norm_min_norm"], rel=1e-3)
    trace = load_trace(out / "traces" / "gd_min_norm.json")
    assert trace["metrics"]["dist_to_min_norm"][-1] == pytest.approx(g["final_dist"])
    table = res["preprocessing_table"]
    assert len(table) == 9 and all(r["train_error"] == 0.0 for r in table)
    _figure_written(out, "kernel")


def test_kernel_linear_interpolates_when_d_above_n(tmp_path):
    out = tmp_path / "linear"
    assert main(["kernel", "--kernel", "linear", "--n-train", "50", *GD, "--no-table",
                 "--out", str(out)]) == 0
    res = _results(out, "kernel")
    assert res["interpolation"]["train_error"] == 0.0 and res["interpolation"]["d"] == 64
    assert res["gd"]["final_dist"] < 1e-3 and "preprocessing_table" not in res


# --- double descent -------------------------------------------------------------------------------

def test_double_descent_rff_cli_peak_at_interpolation_threshold(tmp_path):
    out = tmp_path / "dd"
    n = 200
    assert main(["double-descent", "--kind", "rff", "--n-train", str(n),
                 "--features", "20,60,120,200,400,800,2000", "--seeds", "0,1,2",
                 "--out", str(out)]) == 0
    res = _results(out, "double_descent_rff")
    assert res["sigma"] == pytest.approx(dd.rff_bandwidth(_unit_digits(n)))
    by_N = {r["N"]: r for r in res["mean"]}
    assert by_N[n]["test_error"] >= 3 * by_N[10 * n]["test_error"]
    assert max(res["mean"], key=lambda r: r["norm"])["N"] == n
    assert by_N[n]["train_error"] == 0.0 and by_N[20]["train_error"] > 0
    q = res["ratio"]  # err(N = n)/err(N = 10n) per seed, with the test-image bootstrap
    assert [p["seed"] for p in q["per_seed"]] == [0, 1, 2] and q["n_test"] == 359
    assert q["ratio"] == pytest.approx(by_N[n]["test_error"] / by_N[10 * n]["test_error"])
    assert q["bootstrap"]["low"] <= q["ratio"] and q["ratio_min"] <= q["ratio"]
    _figure_written(out, "double_descent")


def test_double_descent_sample_wise_peak_at_n_equals_N(tmp_path):
    out = tmp_path / "dd"
    assert main(["double-descent", "--kind", "samples", "--features", "100", "--n-train", "500",
                 "--seeds", "0,1", "--out", str(out)]) == 0
    res = _results(out, "double_descent_samples")
    assert max(res["mean"], key=lambda r: r["test_error"])["n"] == 100
    by_n = {r["n"]: r["test_error"] for r in res["mean"]}
    below = max(k for k in by_n if k < 100)
    assert by_n[100] > 2 * by_n[below]  # more data hurts near the threshold


@pytest.mark.slow
def test_double_descent_width_and_epoch_cli(tmp_path):
    out = tmp_path / "dd"
    # one shape and chunk length (epochs 1: log every epoch = the whole budget): one compile
    common = ["--n-train", "96", "--n-test", "100", "--epochs", "1", "--seeds", "0"]
    assert main(["double-descent", "--kind", "width", "--widths", "16", "--noise", "0,0.2",
                 *common, "--out", str(out)]) == 0
    # a second kind into the same folder: --overwrite replaces only what this command writes
    assert main(["double-descent", "--kind", "epoch", "--width", "16", "--noise", "0.2",
                 *common, "--out", str(out), "--overwrite"]) == 0
    w = _results(out, "double_descent_width")
    assert [(r["width"], r["noise"]) for r in w["rows"]] == [(16, 0.0), (16, 0.2)]
    assert w["interpolation_params"] == 960
    e = _results(out, "double_descent_epoch")
    assert e["epoch"] == [0, 1] and len(e["test_error"]) == 2 and e["width"] == 16
    _figure_written(out, "double_descent")
    # the renderer reads stored results only: a fresh render of the same directory
    assert render_double_descent(out, tmp_path / "again.png")[0].is_file()


def _unit_digits(n):
    from sgdreg.datasets import open_dataset

    return open_dataset("digits", preprocess="unit", n_train=n)


# --- CLI contract: bad values exit 2 and write nothing ------------------------------------------

@pytest.mark.parametrize("args", [
    ["randomize", "--corruptions", "0,1.5"],
    ["randomize", "--inputs", "blurred"],
    ["randomize", "--dataset", "linreg"],
    ["randomize", "--optimizer", "lbfgs"],
    ["expressivity", "--n", "0"],
    ["expressivity", "--multiples", "0"],
    ["kernel", "--kernel", "linear"],
    ["kernel", "--kernel", "poly"],
    ["kernel", "--bandwidth", "-1"],
    ["kernel", "--gd-n", "100"],
    ["double-descent", "--kind", "layer"],
    ["double-descent", "--kind", "width", "--noise", "1.2"],
    ["double-descent", "--kind", "rff", "--sigma", "0"],
    ["double-descent", "--kind", "samples", "--features", "100000"],
    ["double-descent", "--kind", "epoch", "--noise", "0.1,0.2"],
])
def test_bad_values_exit_2_and_write_nothing(tmp_path, args):
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    assert not out.exists()


def test_load_results_rejects_other_files(tmp_path):
    (tmp_path / "kernel.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not an sgdreg results file"):
        results.load_results(tmp_path, "kernel")
    with pytest.raises(FileNotFoundError, match="run the experiment first"):
        results.load_results(tmp_path, "randomization")
    path = results.save_results(tmp_path, "x", {"a": 1}, {"v": [np.float32(0.5), float("nan")]}, 1.0)
    assert results.load_results(tmp_path, "x") == {"v": [0.5, None]} and path.name == "x.json"
