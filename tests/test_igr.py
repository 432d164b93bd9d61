"""Implicit gradient regularization (docs/science.md#implicit-regularization): backward error orders, EGR, the
two-parameter model and the `sgdreg igr` command.

All checks share one small smooth problem (gmm, n = 32, tanh MLP width 8, mse, float64) so the
compiled programs are reused across tests and the CLI.
"""

import json

import numpy as np
import pytest
from sgdreg_cli.main import main

from sgdreg import correlation
from sgdreg.config import ConfigError, RunConfig
from sgdreg.experiments import igr
from sgdreg.trace import load_trace

SMALL = dict(dataset="gmm", n_train=32, width=8)
CFG = RunConfig(**(igr.CHECK_DEFAULTS | SMALL))
LRS = (0.1, 0.05, 0.025)
CLI_SMALL = ["--dataset", "gmm", "--n-train", "32", "--width", "8"]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("check")
    return igr.backward_error_check(CFG, LRS, time=1.0, n_log=4, out_dir=out), out


@pytest.mark.slow
def test_modified_flow_is_second_order_plain_flow_first_order(check):
    """GD(h) is O(h²) from the modified flow and O(h) from the plain flow at t = Kh."""
    res, _ = check
    rows = {r["lr"]: r for r in res["rows"]}
    assert all(r["status"] == "completed" for r in rows.values())
    assert rows[0.1]["dist_flow"] > 5 * rows[0.1]["dist_modified_flow"]
    assert res["orders"]["flow"] == pytest.approx(1.0, abs=0.3)
    assert res["orders"]["modified_flow"] == pytest.approx(2.0, abs=0.3)
    # the loss follows the same pattern, and the runs really moved
    for r in rows.values():
        assert r["loss_diff_modified_flow"] < r["loss_diff_flow"]
        assert r["moved"] > 20 * r["dist_flow"]


@pytest.mark.slow
def test_egr_at_small_step_mimics_larger_step(check):
    """GD at s on L + μ‖∇L‖² with μ = (h − s)/4 (GD at s adds its own (s/4)‖∇L‖²) follows GD(h)
    to O(h²), as closely as the modified flow; the confounded μ = h/4 (the modified loss of step
    h + s) keeps an O(s) error that fails these bounds at the smallest h (there 9× farther)."""
    res, _ = check
    rows = res["rows"]
    s = res["egr_lr"]
    assert s == pytest.approx(min(LRS) / 4)
    for r in rows:
        assert r["egr"] == pytest.approx((r["lr"] - s) / 4)
        assert r["egr_naive"] == pytest.approx(r["lr"] / 4)
        assert r["dist_egr"] < 0.5 * r["dist_small_step"]
        assert r["dist_egr"] < 1.5 * r["dist_modified_flow"]  # μ = h/4: 5.6× at h = 0.025
    assert igr.observed_order(LRS, [r["dist_egr"] for r in rows]) == pytest.approx(2.0, abs=0.4)
    smallest = min(rows, key=lambda r: r["lr"])
    assert smallest["dist_egr"] < 0.25 * smallest["dist_egr_naive"]
    assert igr.egr_mu(0.025, 0.00625) == pytest.approx(0.0046875)
    with pytest.raises(ConfigError, match="egr_lr"):
        igr.backward_error_check(CFG, LRS, time=1.0, egr_lr=0.025)


@pytest.mark.slow
def test_check_writes_valid_traces_from_one_theta0(check):
    res, out = check
    docs = [load_trace(out / p) for p in res["traces"]]
    assert len(docs) == 3 * len(LRS) + 2 * len(LRS) + 1  # gd/flows, EGR at 2 μ, GD at s
    assert len({d["metrics"]["train_loss"][0] for d in docs}) == 1  # identical θ0
    assert all(d["metrics"]["proj"][0] == [0.0, 0.0] for d in docs)
    stored = igr.read_results(out, igr.BACKWARD_ERROR)
    assert stored["orders"] == pytest.approx(res["orders"])
    s = stored["series"]["0.1"]
    assert len(s["t"]) == len(s["dist_flow"]) == len(s["proj"]["gd"][0]) == 5


def test_observed_order_and_steps_for():
    hs = [0.4, 0.2, 0.1]
    assert igr.observed_order(hs, [3 * h**2 for h in hs]) == pytest.approx(2.0)
    assert igr.steps_for(2.0, 0.1) == 20
    with pytest.raises(ConfigError, match="^time"):
        igr.steps_for(1.0, 0.3)
    assert igr.log_steps(20, 4) == [0, 5, 10, 15, 20]
    assert igr.log_steps(10, 20) == list(range(11))  # never short of the final time
    assert igr.log_steps(100, 10, "log")[:4] == [0, 1, 2, 3]


def test_two_param_model_is_E():
    """f(x) = a·b·x with one example and mse gives E(a,b) = ½(y − abx)² exactly."""
    import jax.numpy as jnp

    from sgdreg.losses import example_loss

    m = igr.TwoParamModel(2.8, 3.5)
    ds = igr.two_param_dataset(x=1.5, y=0.5)
    out = m(jnp.asarray(ds.x_train[0]))
    e = example_loss("mse", out, jnp.asarray(ds.y_train[0]), 0)
    assert float(e) == pytest.approx(0.5 * (0.5 - 2.8 * 3.5 * 1.5) ** 2, rel=1e-14)


def test_two_param_hessian_is_exact():
    """The closed-form Hessian and λ_max equal jax.hessian and numpy's eigvalsh; at θ0 = (2.8, 3.5)
    with x = y = 1: H = [[12.25, 18.6], [18.6, 7.84]], λ_max = 28.7752…, 2/λ_max = 0.0695."""
    import jax
    import jax.numpy as jnp

    hess = jax.jit(jax.hessian(lambda p, x, y: 0.5 * (y - p[0] * p[1] * x) ** 2))
    for a, b, x, y in ((2.8, 3.5, 1.0, 1.0), (0.5, -1.3, 1.5, 0.5), (1.0, 1.0, 1.0, 1.0)):
        H = np.asarray(hess(jnp.array([a, b], jnp.float64), x, y))
        np.testing.assert_allclose(igr.two_param_hessian(a, b, x, y), H, rtol=1e-13, atol=1e-13)
        assert igr.two_param_lambda_max(a, b, x, y) == pytest.approx(np.linalg.eigvalsh(H)[-1],
                                                                     rel=1e-13)
    np.testing.assert_allclose(igr.two_param_hessian(2.8, 3.5), [[12.25, 18.6], [18.6, 7.84]])
    lam = (20.09 + np.sqrt(4.41**2 + 4 * 18.6**2)) / 2
    assert igr.two_param_lambda_max(2.8, 3.5) == pytest.approx(lam, rel=1e-14)
    assert 2 / lam == pytest.approx(0.069504, abs=1e-6)


def test_cli_two_param_gap_shrinks_with_h(tmp_path, capsys):
    out = tmp_path / "tp"
    code = main(["igr", "--two-param", "--lr", "0.01,0.04,0.08", "--time", "10", "--n-log", "20",
                 "--h-moderate", "0.04", "--h-small", "0.01", "--out", str(out), "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["lambda_max_theta0"] == pytest.approx(igr.two_param_lambda_max(2.8, 3.5))
    assert res["stable_lr_max"] == pytest.approx(2 / res["lambda_max_theta0"])
    assert [g["stable"] for g in res["gaps"]] == [True, True, False]
    assert res["egr"] == pytest.approx((0.04 - 0.01) / 4)
    assert res["h_unstable"] == 0.08
    gaps = [g["gd_gap"] for g in res["gaps"]]
    assert gaps[0] > gaps[1] > gaps[2]  # larger h lands nearer |a| = |b|
    assert all(g["gd_loss"] < 1e-12 for g in res["gaps"])  # on the minima ab = y/x
    assert res["flow_conservation"] < 1e-6  # the flow conserves a² − b²
    paths = igr.read_results(out, igr.TWO_PARAM)["paths"]
    flow_gap = paths["flow"]["final_gap"]
    assert paths["gd_small"]["final_gap"] == pytest.approx(flow_gap, abs=0.05)
    assert paths["egr"]["final_gap"] < paths["gd_small"]["final_gap"] - 0.02
    assert paths["modified_flow"]["final_gap"] < flow_gap
    # EGR (step 0.01, μ = 0.0075) lands between GD(0.01) and GD(0.04), nearer the modified flow
    # of h = 0.04 (the first-order model it implements) than GD(0.04) itself
    egr, mf = paths["egr"]["final_gap"], paths["modified_flow"]["final_gap"]
    assert paths["gd_moderate"]["final_gap"] < egr < paths["gd_small"]["final_gap"]
    assert abs(egr - mf) < 0.5 * abs(egr - paths["gd_moderate"]["final_gap"])
    # h = 0.08 > 2/λ_max(θ0): the first step overshoots the valley ab = 1 (residual flips sign);
    # the stable GD at 0.04 approaches it from one side all the way
    r = {k: 1 - np.array(paths[k]["a"]) * np.array(paths[k]["b"]) for k in ("gd_unstable",
                                                                            "gd_moderate")}
    assert r["gd_unstable"][0] < 0 < r["gd_unstable"][1]
    assert np.all(r["gd_moderate"] < 0)
    assert (out / "two_param.png").stat().st_size > 1000
    assert load_trace(out / "traces" / "gd_lr0.04.json")["status"] == "completed"


def test_cli_check_writes_results_traces_and_figure(check, tmp_path, capsys):
    out = tmp_path / "be"
    code = main(["igr", *CLI_SMALL, "--lr", "0.1,0.05", "--time", "1", "--n-log", "2",
                 "--egr-lr", "0", "--out", str(out), "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    lib = {r["lr"]: r for r in check[0]["rows"]}
    for r in res["rows"]:  # same θ0 and dynamics as the library call
        assert r["dist_modified_flow"] == pytest.approx(lib[r["lr"]]["dist_modified_flow"],
                                                        rel=1e-6)
        assert "dist_egr" not in r
    assert (out / "backward_error.png").stat().st_size > 1000
    assert (out / "backward_error.svg").is_file()
    assert (out / f"{igr.BACKWARD_ERROR}.json").is_file()
    assert len(list((out / "traces").glob("*.json"))) == 6


@pytest.mark.slow  # compiles the training engine's chunk for its own model (~15-30 s)
def test_cli_sweep_writes_results_traces_and_figure(tmp_path, capsys):
    out = tmp_path / "sw"
    code = main(["igr", "--sweep", "--dataset", "gmm", "--n-train", "64", "--width", "8",
                 "--lr", "0.5,1,60", "--time", "10", "--target-loss", "0.5", "--seeds", "0,1",
                 "--out", str(out), "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seeds"] == [0, 1] and len(res["rows"]) == 6
    ok = [r for r in res["rows"] if r["lr"] < 60]
    assert all(r["status"] == "completed" and not r["diverged"] for r in ok)
    assert all(r["diverged"] for r in res["rows"] if r["lr"] == 60)  # h = 60 blows up
    r = ok[0]
    assert r["final"]["igr_gd"] == pytest.approx(r["lr"] / 4 * r["final"]["grad_norm_sq"])
    assert r["at_loss"] is not None and r["at_loss"]["t"] <= r["t"]
    theta0 = {sd: load_trace(out / f"traces/gd_lr0.5_w8_s{sd}.json")["metrics"]["train_loss"][0]
              for sd in (0, 1)}
    assert theta0[0] != theta0[1]  # the seed changes θ0 (and the training subset)
    cell = next(e for e in res["summary"] if e["lr"] == 0.5 and e["view"] == "final")
    vals = [r["final"]["grad_norm_sq"] for r in ok if r["lr"] == 0.5]
    assert cell["n"] == 2 and cell["grad_norm_sq"]["mean"] == pytest.approx(np.mean(vals))
    assert {(t["against"], t["view"]) for t in res["trends"]} >= {("lr", "final"), ("width", "at_loss")}
    assert {e["to"] for e in res["effects"]} == {1.0}  # the diverged h is not an end point
    assert (out / "sweep.png").stat().st_size > 1000
    assert load_trace(out / res["traces"][0])["config"]["optimizer"] == "gd"


def _sweep_row(w, h, sd, g, acc, diverged=False):
    v = {"grad_norm_sq": g, "igr_gd": h / 4 * g, "train_loss": 0.1, "test_loss": 1 - acc,
         "test_acc": acc, "t": 10.0}
    return {"width": w, "lr": h, "seed": sd, "status": "completed", "diverged": diverged,
            "final": v, "at_loss": None if diverged else dict(v)}


def test_sweep_summary_trends_effects_by_hand():
    """Mean/min/max over the non-diverged seeds, Kendall τ of the seed means and per seed, and
    end-to-end comparisons that count only min–max-disjoint ranges, on hand-made rows."""
    rows = [_sweep_row(8, 0.1, 0, 4.0, 0.90), _sweep_row(8, 0.1, 1, 6.0, 0.92),
            _sweep_row(8, 1.0, 0, 1.0, 0.91), _sweep_row(8, 1.0, 1, 2.0, 0.95),
            _sweep_row(16, 0.1, 0, 5.0, 0.93), _sweep_row(16, 0.1, 1, 7.0, 0.94),
            _sweep_row(16, 1.0, 0, 6.0, 0.96), _sweep_row(16, 1.0, 1, 1e9, 0.1, diverged=True)]
    summ = igr.sweep_summary(rows)
    cell = {(e["width"], e["lr"], e["view"]): e for e in summ}
    assert cell[8, 0.1, "final"]["grad_norm_sq"] == {"mean": 5.0, "min": 4.0, "max": 6.0, "n": 2}
    assert cell[16, 1.0, "final"]["diverged"] == 1 and cell[16, 1.0, "final"]["n"] == 1
    assert cell[16, 1.0, "at_loss"]["grad_norm_sq"]["max"] == 6.0  # the diverged run is left out
    eff = {(e["against"], e.get("width", e.get("lr")), e["view"], e["key"]): e
           for e in igr.sweep_effects(summ, 2)}
    g = eff["lr", 8, "final", "grad_norm_sq"]  # [4, 6] → [1, 2]: disjoint, down
    assert (g["from"], g["to"], g["separated"], g["change"]) == (0.1, 1.0, -1, -3.5)
    assert eff["lr", 8, "final", "test_acc"]["separated"] == 0  # [.90, .92] vs [.91, .95]
    assert eff["width", 0.1, "final", "grad_norm_sq"]["separated"] == 0  # [4, 6] vs [5, 7]
    assert eff["width", 0.1, "final", "test_acc"]["separated"] == 1  # [.90, .92] vs [.93, .94]
    assert ("lr", 16, "final", "grad_norm_sq") not in eff  # h = 1 lost a seed: no full end
    assert ("width", 1.0, "final", "grad_norm_sq") not in eff
    tr = {(t["against"], t.get("width", t.get("lr")), t["view"]): t for t in igr.sweep_trends(rows)}
    t = tr["lr", 8, "final"]
    assert t["tau_grad_norm_sq"] == -1.0 and t["tau_grad_norm_sq_per_seed"] == [-1.0, -1.0]
    assert t["tau_test_acc"] == 1.0  # means .91 → .93
    t = tr["width", 1.0, "final"]  # means: width 8 1.5, width 16 6 (seed 0 only)
    assert t["tau_grad_norm_sq"] == 1.0 and t["tau_grad_norm_sq_per_seed"] == [1.0, None]
    with pytest.raises(ConfigError, match="seeds"):
        igr.igr_sweep(RunConfig(**igr.SWEEP_DEFAULTS), seeds=[0, 0])


@pytest.mark.parametrize("args, needle", [
    (["--lr", "-1"], "--lr"),
    (["--lr", "0.3", "--time", "1"], "--time"),
    (["--lr", "0.1,abc"], "--lr"),
    (["--width", "8,16"], "--width"),
    (["--two-param", "--sweep"], "--two-param"),
    (["--two-param", "--lr", "0"], "--lr"),
    (["--sweep", "--width", "0"], "--width"),
    (["--seeds", "0,1"], "--seeds"),
    (["--egr-lr", "0.2"], "--egr-lr"),
    (["--two-param", "--h-small", "0.05", "--h-moderate", "0.01"], "--h-small"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert main(["igr", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not out.exists()


def test_one_kendall_tau_and_at_loss():
    """The IGR trends use ``correlation.kendall_tau`` (one τ in sgdreg): None/NaN points are
    dropped, not counted as ties, and fewer than 2 points give NaN (JSON null in the trends)."""
    assert not hasattr(igr, "kendall_tau")
    assert correlation.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert correlation.kendall_tau([1, 2, 3, 4], [1, None, 3, float("nan")]) == 1.0
    assert correlation.kendall_tau([None, 2, 3, 4], [5, 2, 1, 0]) == -1.0
    assert np.isnan(correlation.kendall_tau([1, 2], [None, 1.0]))
    m = {"train_loss": [1.0, 0.1, 0.01], "grad_norm_sq": [1.0, 1e-2, 1e-4], "t": [0, 1, 2],
         "test_loss": [1, 1, 1], "test_acc": [0.1, 0.5, 0.9]}
    hit = igr.at_loss(m, 0.1 ** 1.5)
    assert hit["t"] == pytest.approx(1.5) and hit["grad_norm_sq"] == pytest.approx(1e-3)
    assert igr.at_loss(m, 1e-3) is None
    assert np.isclose(igr.at_loss(m, 0.1)["test_acc"], 0.5)


@pytest.mark.slow
def test_sgd_epoch_mean_follows_sgd_modified_flow():
    """Smith et al. 2021: over one epoch of a fixed partition, the order-averaged SGD iterate
    is O(h³) from the flow of L + (h/4m)Σ_k‖∇L̂_k‖², O(h²) from the GD modified and plain flows."""
    res = igr.sgd_epoch_check(CFG, (0.02, 0.01, 0.005), batch_size=8)
    assert res["exact_mean"] and res["orders_averaged"] == 24
    rows = res["rows"]
    assert all(r["status"] == "completed" for r in rows)
    assert all(r["dist_sgd_modified_flow"] < 0.2 * r["dist_modified_flow"] for r in rows)
    assert res["orders"]["sgd_modified_flow"] == pytest.approx(3.0, abs=0.3)
    assert res["orders"]["modified_flow"] == pytest.approx(2.0, abs=0.3)
