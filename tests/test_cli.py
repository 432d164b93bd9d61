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
    assert (tmp_path / "h" / "density.png").is_file() and res["density_sigma_std"] > 0
    assert main(["hessian", str(tmp_path / "nope.eqx")]) == 2
