"""The CLI contract: exit codes, one-line errors, nothing half-written, traces valid."""

import json

import pytest
from sgdreg_cli.main import main

from sgdreg.trace import load_trace, to_dataframe

TINY = ["--steps", "20", "--log-every", "10", "--n-train", "200", "--width", "16"]


def test_compare_writes_traces_figure_and_summary(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--optimizers", "gd,sgd", "--lr", "0.1", *TINY, "--out", str(out),
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in summary["runs"]} == {"gd_lr0.1_s0", "sgd_lr0.1_b16_s0"}
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "summary.json").is_file()
    docs = [load_trace(out / f"{r['run_id']}.json") for r in summary["runs"]]
    assert all(d["status"] == "completed" for d in docs)
    # identical initialisation: the step-0 rows agree across optimizers
    assert docs[0]["metrics"]["train_loss"][0] == docs[1]["metrics"]["train_loss"][0]
    for key in ("schema", "config", "versions", "device", "seed", "wall_time_s"):
        assert key in docs[0]
    assert main(["trace", "validate", str(out / "gd_lr0.1_s0.json")]) == 0
    df = to_dataframe(out / "sgd_lr0.1_b16_s0.json")
    # the default instruments: IGR terms and, at the auto cadence, tr H ± stderr, λ_max, batch
    # sharpness (minibatch runs)
    assert {"train_loss", "igr_sgd_var", "layer_norms/layers[0]", "hessian_trace",
            "hessian_trace_stderr", "lambda_max", "lambda_max_converged",
            "batch_sharpness"} <= set(df["metric"])
    assert "hessian_trace" in summary["runs"][0] and "lambda_max" in summary["runs"][1]
    # the automatic probes skip λ_min (100–400 HVPs per probe to converge; not in the figure)
    assert "lambda_min" not in set(df["metric"])
    assert docs[1]["probes"]["curvature"]["lambda_min_max_steps"] == 0
    assert main(["trace", "export", str(out / "gd_lr0.1_s0.json"), "--out",
                 str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().startswith("step,t,metric,value")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["compare", "--optimizers", "gd,foo"], "--optimizers"),
        (["compare", "--lr", "-1"], "--lr"),
        (["compare", "--lr", "0.1,abc"], "--lr"),
        (["compare", "--batch-size", "0"], "--batch-size"),
        (["compare", "--batch-size", "5000", "--optimizers", "sgd"], "--batch-size"),
        (["compare", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "mnist"),
        (["compare", "--dataset", "mnist"], "--data-dir"),
        (["compare", "--dataset", "nope"], "nope"),
        (["compare", "--steps", "0"], "--steps"),
        (["train", "--optimizer", "sgdd"], "--optimizer"),
        (["compare", "--no-such-option"], "no-such-option"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert "Traceback" not in err
    assert not out.exists()


def test_corrupt_or_foreign_trace_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "sgdreg.trace/1", "metrics": ')
    assert main(["trace", "validate", str(bad)]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    assert main(["trace", "show", str(other)]) == 2
    assert main(["trace", "validate", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "missing field" in err and "no trace file" in err


def test_datasets_lists_offline_sources(capsys):
    assert main(["datasets", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    assert {"digits", "mnist1d", "mnist5k", "mnist", "cifar10"} <= set(names)


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("compare", "train", "trace", "datasets"):
        assert cmd in out


@pytest.mark.slow
def test_train_checkpoint_then_hessian(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--optimizer", "gd", *TINY, "--save-checkpoint", "--out", str(out)]) == 0
    ck = out / "gd_lr0.1_s0.eqx"
    assert ck.is_file()
    capsys.readouterr()
    assert main(["hessian", str(ck), "--probes", "10", "--lanczos-steps", "10", "--top-k", "2",
                 "--slq-starts", "2", "--out", str(tmp_path / "h"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["lambda_max"] >= res["top_eigenvalues"][1] and res["hessian_trace_stderr"] > 0
    assert res["lambda_min_converged"] is True and res["lambda_min"] <= res["top_eigenvalues"][-1]
    assert len(res["layers"]) == len(res["layer_hessian_traces"]) == \
        len(res["layer_hessian_traces_stderr"])
    assert (tmp_path / "h" / "density.png").is_file() and res["density_sigma_std"] > 0
    assert main(["hessian", str(tmp_path / "nope.eqx")]) == 2


def test_compare_linear_model_drifts_to_the_min_norm_solution(tmp_path, capsys):
    """Zhang et al. §5 in the main job: GD and SGD from θ0 = 0 on an over-parameterised linear
    model (linreg: n = 50 < d = 200, MSE) both reach the minimum-norm interpolant; the table
    and figure carry dist_to_min_norm and the min-norm solution's test loss."""
    out = tmp_path / "lin"
    assert main(["compare", "--model", "linear", "--dataset", "linreg", "--optimizers", "gd,sgd",
                 "--no-curvature", "--steps", "600", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    gd, sgd = summary["runs"]
    assert gd["dist_to_min_norm"] < 1e-5 and sgd["dist_to_min_norm"] < 1e-4
    assert gd["min_norm_test_loss"] == sgd["min_norm_test_loss"] > 0
    assert abs(gd["test_loss"] - gd["min_norm_test_loss"]) < 1e-4
    from sgdreg.plotting.compare import compare_panels

    docs = [load_trace(out / f"{r['run_id']}.json") for r in summary["runs"]]
    assert "min_norm" in compare_panels(docs) and "trace" not in compare_panels(docs)


def test_compare_panels_follow_the_instruments():
    """The figure draws a panel for each instrument present: loss/gap, IGR terms, tr H, λ_max
    (with batch sharpness), norms and the gap-vs-tr H link when curvature was probed."""
    from sgdreg.plotting.compare import compare_panels

    def doc(**metrics):
        n = 3
        base = {"step": [0, 1, 2], "t": [0, 0.1, 0.2], "train_loss": [1.0] * n,
                "test_loss": [1.1] * n, "gen_gap": [0.1] * n, "igr_gd": [0.1] * n,
                "weight_norm": [1.0] * n}
        return {"metrics": {**base, **metrics}, "config": {"optimizer": "gd", "lr": 0.1}}

    assert compare_panels([doc()]) == ["loss", "gap", "igr", "norms"]
    curv = doc(hessian_trace=[None, None, 5.0], lambda_max=[None, None, 2.0])
    assert compare_panels([doc(), curv]) == ["loss", "gap", "igr", "trace", "sharpness", "norms",
                                             "link"]
