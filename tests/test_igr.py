"""Implicit gradient regularization (SCIENCE.md §2): backward error orders, EGR, the
two-parameter model and the `sgdreg igr` command.

All checks share one small smooth problem (gmm, n = 32, tanh MLP width 8, mse, float64) so the
compiled programs are reused across tests and the CLI.
"""

import json

import numpy as np
import pytest
from sgdreg_cli.main import main

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


def test_egr_at_small_step_mimics_larger_step(check):
    """GD at s on L + (h/4)‖∇L‖² lands nearer GD(h) than plain GD at s does."""
    res, _ = check
    for r in res["rows"]:
        assert r["egr"] == pytest.approx(r["lr"] / 4)
        assert r["dist_egr"] < 0.5 * r["dist_small_step"]


def test_check_writes_valid_traces_from_one_theta0(check):
    res, out = check
    docs = [load_trace(out / p) for p in res["traces"]]
    assert len(docs) == 3 * len(LRS) + len(LRS) + 1
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
    with pytest.raises(ConfigError, match="--time"):
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


def test_cli_two_param_gap_shrinks_with_h(tmp_path, capsys):
    out = tmp_path / "tp"
    code = main(["igr", "--two-param", "--lr", "0.01,0.04,0.07", "--time", "10",
                 "--h-moderate", "0.04", "--h-small", "0.01", "--out", str(out), "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    gaps = [g["gd_gap"] for g in res["gaps"]]
    assert gaps[0] > gaps[1] > gaps[2]  # larger h lands nearer |a| = |b|
    assert all(g["gd_loss"] < 1e-12 for g in res["gaps"])  # on the minima ab = y/x
    assert res["flow_conservation"] < 1e-6  # the flow conserves a² − b²
    paths = igr.read_results(out, igr.TWO_PARAM)["paths"]
    flow_gap = paths["flow"]["final_gap"]
    assert paths["gd_small"]["final_gap"] == pytest.approx(flow_gap, abs=0.05)
    assert paths["egr"]["final_gap"] < paths["gd_small"]["final_gap"] - 0.02
    assert paths["modified_flow"]["final_gap"] < flow_gap
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
                 "--lr", "0.5,1", "--time", "10", "--target-loss", "0.5", "--out", str(out),
                 "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["rows"]) == 2 and all(r["status"] == "completed" for r in res["rows"])
    r = res["rows"][0]
    assert r["final"]["igr_gd"] == pytest.approx(r["lr"] / 4 * r["final"]["grad_norm_sq"])
    assert r["at_loss"] is not None and r["at_loss"]["t"] <= r["t"]
    assert {(t["against"], t["view"]) for t in res["trends"]} >= {("lr", "final"), ("width", "at_loss")}
    assert (out / "sweep.png").stat().st_size > 1000
    assert load_trace(out / res["traces"][0])["config"]["optimizer"] == "gd"


@pytest.mark.parametrize("args, needle", [
    (["--lr", "-1"], "--lr"),
    (["--lr", "0.3", "--time", "1"], "--time"),
    (["--lr", "0.1,abc"], "--lr"),
    (["--width", "8,16"], "--width"),
    (["--two-param", "--sweep"], "--two-param"),
    (["--two-param", "--lr", "0"], "--lr"),
    (["--sweep", "--width", "0"], "--width"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert main(["igr", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not out.exists()


def test_kendall_tau_and_at_loss():
    assert igr.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
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
