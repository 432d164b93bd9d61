"""``--scale paper`` of every experiment script (issue 14, item 6): the resolved configuration,
the overrides, the bad input, each script's arguments derived from its recipe, and each family
of scripts end to end (its own experiment function, results JSON and figure) on a tiny
CIFAR-10 / MNIST folder with the recipe shrunk by ``--override``."""

import importlib.util
import json
import struct
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from sgdreg.errors import ConfigError
from sgdreg.experiments import paper

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py")
                 if p.stem not in paper.NOT_PAPERS)


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cifar_dir(folder: Path, n_per_batch: int = 8) -> Path:
    """The binary CIFAR-10 layout (5 train batches + test batch) with a few random images."""
    from sgdreg.datasets import CIFAR_BIN

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_BIN:
        rec = rng.integers(0, 256, size=(n_per_batch, 3073), dtype=np.uint8)
        rec[:, 0] = np.arange(n_per_batch) % 10
        rec.tofile(folder / name)
    return folder


def _mnist_dir(folder: Path, n: int = 40, n_test: int = 20) -> Path:
    """The four MNIST IDX files with a few random digits."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                      ("train-labels-idx1-ubyte", np.arange(n) % 10),
                      ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28))),
                      ("t10k-labels-idx1-ubyte", np.arange(n_test) % 10)):
        head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (folder / name).write_bytes(head + arr.astype(np.uint8).tobytes())
    return folder


def _one_error_line(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    return err[0]


def test_every_script_has_a_recipe():
    """Every script reproducing a paper has one; the others are listed, with why."""
    assert sorted(paper.RECIPES) == SCRIPTS
    assert not set(paper.NOT_PAPERS) & set(paper.RECIPES)
    assert {r.kind for r in paper.RECIPES.values()} <= {"train", "call", "same"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_print_config_resolves_the_paper_setup(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _script(name).main(["--scale", "paper", "--print-config"])
    cfg = json.loads(capsys.readouterr().out)
    r = paper.RECIPES[name]
    assert cfg["script"] == name and cfg["scale"] == "paper" and cfg["paper"] == r.paper
    assert cfg["runs"] == len(r.points()) >= 1
    if r.kind == "train":
        assert cfg["steps"] == r.steps and cfg["dataset"] in ("cifar10", "mnist")
        est = cfg["estimate"]
        assert "NOT MEASURED" in est["how"] and est["gpu_hours"] > 0
    else:
        assert cfg["estimate"]["gpu_hours"] is None and cfg["note"]
    assert not list(tmp_path.iterdir())  # nothing written


def test_paper_recipes_match_the_papers():
    z = paper.RECIPES["zhang_randomization"]
    assert (z.model, z.crop, z.lr, z.momentum, z.lr_decay, z.lr_decay_epochs) == (
        "zhang-inception", 28, 0.1, 0.9, 0.95, 1)
    n = paper.RECIPES["double_descent_width"]
    assert (n.model, n.optimizer, n.lr, n.epochs, n.grid["k"]) == (
        "resnet18", "adam", 1e-4, 4000, tuple(range(1, 65)))
    c = paper.RECIPES["cohen_eos"]
    assert (c.n, c.model, c.loss, c.batch_size) == (5000, "fc-tanh", "mse", None)
    assert c.grid["lr"][0] == pytest.approx(2 / 30) and c.grid["lr"][-1] == pytest.approx(2 / 90)


def test_run_config_is_the_recipe():
    """The RunConfig a script trains: the paper's data, crop, preset, optimizer and staircase
    schedule (×0.95 every epoch of 390 steps), and the grid point's width k / lr / seed."""
    z = paper.run_config(paper.RECIPES["zhang_randomization"], "/data")
    assert (z.dataset, z.data_dir, z.n_train, z.crop, z.model) == (
        "cifar10", "/data", None, 28, "zhang-inception")
    assert (z.optimizer, z.lr, z.momentum, z.batch_size) == ("momentum", 0.1, 0.9, 128)
    assert (z.lr_decay, z.lr_decay_every, z.steps, z.log_every) == (0.95, 390, 64 * 390, 390)
    d = paper.run_config(paper.RECIPES["double_descent_width"], None, {"k": 7, "seed": 3})
    assert (d.model, d.width, d.seed, d.optimizer, d.lr, d.lr_decay) == (
        "resnet18", 7, 3, "adam", 1e-4, 1.0)
    c = paper.run_config(paper.RECIPES["cohen_eos"], None, {"lr": 0.05})
    assert (c.model, c.activation, c.width, c.depth, c.loss, c.lr, c.n_train, c.steps) == (
        "mlp", "tanh", 200, 2, "mse", 0.05, 5000, 10_000)
    assert (c.hessian_every, c.log_every, c.batch_size) == (50, 10, 5000)


def test_overrides_replace_recipe_fields():
    ov = paper.parse_overrides(["steps=3", "grid.lr=0.05,0.1", "model_kw.k=1", "seeds=0",
                                "n_train=16", "extra.include_flow=False", "grid.variant=gaussian"])
    assert ov["grid.lr"] == (0.05, 0.1) and ov["extra.include_flow"] is False
    r = paper.resolve("cohen_eos", {k: v for k, v in ov.items() if k != "grid.variant"})
    assert (r.steps, r.grid["lr"], r.n, r.seeds, r.model_kw) == (
        3, (0.05, 0.1), 16, (0,), {"width": 200, "depth": 2, "k": 1})
    assert r.extra["include_flow"] is False
    assert paper.resolve("zhang_randomization", {"grid.variant": "gaussian",
                                                 "batch_size": 8, "n_train": 16,
                                                 "steps": 2}).grid == {"variant": ("gaussian",)}
    for bad, msg in ((["bogus=1"], "unknown recipe field"), (["steps"], "expected KEY=VALUE")):
        with pytest.raises(ConfigError, match=msg):
            paper.parse_overrides(bad)
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        paper.resolve("cohen_eos", {"steps": 0})
    with pytest.raises(ConfigError, match="not a mapping"):
        paper.resolve("cohen_eos", {"lr.x": 1})


@pytest.mark.parametrize("name", ["zhang_randomization", "cohen_eos", "generalization_measures",
                                  "compare_default"])
def test_paper_without_data_dir_is_one_line_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(capsys, _script(name).main, ["--scale", "paper"])
    assert "--scale paper needs --data-dir" in line
    assert not list(tmp_path.iterdir())


def test_bad_data_dir_budget_and_override_are_one_line(capsys, tmp_path):
    main = _script("cohen_eos").main
    (tmp_path / "data_batch_1.bin").write_bytes(b"")
    cifar = _cifar_dir(tmp_path / "cifar")
    out = tmp_path / "out"
    for argv, msg in (
        (["--data-dir", str(tmp_path / "nowhere")], "not a directory"),
        (["--data-dir", str(tmp_path)], "no complete CIFAR-10 set"),
        (["--data-dir", str(tmp_path), "--device-budget", "0"], "--device-budget must be"),
        (["--data-dir", str(cifar), "--device-budget", "1000"],
         "--device-budget 1000 bytes is below one chunk (50348032 bytes"),  # 4096 rows × 12,292
        (["--data-dir", str(cifar), "--override", "bogus=1"],
         "--override 'bogus': unknown recipe field"),
        (["--data-dir", str(cifar), "--override", "steps"], "expected KEY=VALUE"),
    ):
        line = _one_error_line(capsys, main, ["--scale", "paper", *argv, "--out", str(out)])
        assert msg in line, line
    line = _one_error_line(capsys, main, ["--override", "steps=3"])
    assert "use it with --scale paper" in line
    assert not out.exists()


def test_device_budget_reaches_the_run_config_or_is_refused(capsys, tmp_path):
    """--device-budget is RunConfig.device_budget of the recipe's runs (load_data keeps the
    files memory-mapped on the host); refused at the digits scale and for host-only analyses."""
    from sgdreg.batching import HostArray
    from sgdreg.training import load_data

    cifar = _cifar_dir(tmp_path / "cifar")
    cfg = paper.run_config(paper.RECIPES["zhang_randomization"], str(cifar),
                           device_budget=200_000).replace(n_train=16)
    assert cfg.device_budget == 200_000 and cfg.to_dict()["device_budget"] == 200_000
    ds = load_data(cfg)
    assert isinstance(ds.x_train, HostArray) and ds.device_budget == 200_000
    assert ds.input_shape == (3, 28, 28)
    from sgdreg.config import validate

    with pytest.raises(paper.ConfigError, match="device_budget must be a whole number"):
        validate(cfg.replace(device_budget=0))
    out = tmp_path / "out"
    line = _one_error_line(capsys, _script("zhang_randomization").main,
                           ["--device-budget", "100000000", "--out", str(out)])
    assert "use it with --scale paper" in line
    line = _one_error_line(capsys, _script("min_norm_kernel").main,
                           ["--scale", "paper", "--data-dir", str(cifar), "--device-budget",
                            "100000000", "--out", str(out)])
    assert line.startswith("error: --device-budget: min_norm_kernel solves the kernel system")
    assert not out.exists()


def _args(name, data_dir, *overrides):
    argv = ["--scale", "paper", "--data-dir", str(data_dir)]
    for o in overrides:
        argv += ["--override", o]
    a = paper.parse(name, argv)
    a.script = name
    return a


def test_each_script_derives_its_arguments_from_the_recipe(tmp_path):
    """At --scale paper a script's own experiment function receives the recipe's setup (no
    numbers restated in the scripts): checked on the configuration, nothing trained."""
    cifar = _cifar_dir(tmp_path / "cifar")
    eos = _script("cohen_eos").configure(_args("cohen_eos", cifar))
    r = paper.RECIPES["cohen_eos"]
    assert (eos["lrs"], eos["dataset"], eos["data_dir"], eos["n_train"], eos["width"],
            eos["depth"], eos["steps"], eos["sharpness_every"], eos["dtype"]) == (
        r.grid["lr"], "cifar10", str(cifar), 5000, 200, 2, 10_000, 50, "float32")
    adam = _script("adam_eos").configure(_args("adam_eos", cifar))
    assert (adam["lrs"], adam["seeds"], adam["b1"], adam["lanczos_steps"], adam["dtype"]) == (
        (1e-5, 2e-5, 4e-5), (0, 1, 2), 0.9, 60, "float32")
    cf = _script("central_flow_eos").configure(_args("central_flow_eos", cifar))
    assert (cf["dataset"], cf["n_train"], cf["width"], cf["lr"], cf["steps"], cf["dtype"],
            cf["log_every"]) == ("cifar10", 1000, 200, 0.04, 2000, "float64", 10)
    cmd, seeds = _script("compare_default").configure(
        Namespace(**vars(_args("compare_default", cifar)), seeds=3))
    assert seeds == [0, 1, 2] and cmd[:3] == ["compare", "--optimizers", "gd,sgd"]
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert (opts["--dataset"], opts["--n-train"], opts["--activation"], opts["--batch-size"],
            opts["--steps"], opts["--hessian-every"]) == ("cifar10", "5000", "tanh", "16",
                                                          "5000", "100")
    cfg, corr, inputs, seeds, epochs = _script("zhang_randomization").configure(
        _args("zhang_randomization", cifar))
    assert (cfg.model, cfg.crop, cfg.lr_decay, corr, inputs, epochs) == (
        "zhang-inception", 28, 0.95, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        ("shuffled-pixels", "random-pixels", "gaussian"), 64)
    (mw, widths, noises, _, _), (ew, ew_noise, _) = _script("double_descent_width").configure(
        _args("double_descent_width", cifar))
    assert (mw.model, mw.log_every, widths[-1], noises, ew.width, ew_noise) == (
        "resnet18", mw.steps, 64, (0.15,), 64, 0.15)
    base, lrs, widths, seeds, sweep = _script("igr_sweep").configure(_args("igr_sweep", cifar))
    assert (base.model, base.n_train, widths, sweep["time"]) == ("resnet18", 10_000, (16, 64), 50)
    grid = _script("generalization_measures").configure(
        Namespace(**vars(_args("generalization_measures", cifar)), large=False))
    assert grid["name"] == "generalization_measures_paper"
    assert (grid["base"]["model"], grid["base"]["stop_loss"], grid["grid"]["width"]) == (
        "resnet18", 0.01, [16, 32, 64])
    quad, net = _script("sde_svag").configure(_args("sde_svag", cifar))
    assert (net["model"], net["width"], net["ells"], net["methods"], net["reference"]) == (
        "resnet18", 64, (1, 2, 4, 8), ("sgd", "svag"), "svag_l8")


@pytest.mark.slow
def test_cohen_eos_paper_scale_end_to_end_streamed(tmp_path):
    """The eos family: the script's own run_edge_of_stability, eos.json, render_eos, on the
    recipe shrunk (no flow), the data streamed (16 train + 8 test images × 12,292 bytes = 295 kB
    > the 250 kB budget ≥ one chunk of 16 rows, 197 kB)."""
    cifar = _cifar_dir(tmp_path / "cifar")
    out = tmp_path / "out"
    _script("cohen_eos").main([
        "--scale", "paper", "--data-dir", str(cifar), "--out", str(out),
        "--device-budget", "250000", "--override", "n_train=16", "--override", "steps=4",
        "--override", "grid.lr=0.05", "--override", "curvature_every_epochs=2",
        "--override", "log_every_epochs=2", "--override", "model_kw.width=8",
        "--override", "lanczos_steps=4", "--override", "extra.include_flow=False"])
    doc = json.loads((out / "eos.json").read_text())
    run = doc["config"]["run"]
    assert (run["dataset"], run["data_dir"], run["activation"], run["loss"], run["n_train"]) == (
        "cifar10", str(cifar), "tanh", "mse", 16)
    (r,) = doc["results"]["runs"]
    assert r["threshold"] == pytest.approx(40) and np.isfinite(r["lambda_max_initial"])
    assert (out / "cohen_eos_paper.png").is_file()
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["overrides"]["n_train"] == 16 and rec["device_budget"] == 250000


@pytest.mark.slow
def test_zhang_randomization_paper_scale_end_to_end(tmp_path):
    """The RunConfig family: the script's randomization_test on 28×28 crops with the ×0.95 per
    epoch schedule (the model overridden by the zoo's MLP 1×8 to keep it short)."""
    cifar = _cifar_dir(tmp_path / "cifar")
    out = tmp_path / "out"
    _script("zhang_randomization").main([
        "--scale", "paper", "--data-dir", str(cifar), "--out", str(out),
        "--override", "n_train=16", "--override", "batch_size=8", "--override", "steps=4",
        "--override", "model=zhang-mlp", "--override", "model_kw.width=8",
        "--override", "grid.variant=0.0,gaussian", "--device-budget", "200000"])
    doc = json.loads((out / "randomization.json").read_text())
    c = doc["config"]
    assert c["device_budget"] == 200_000  # 24 images × 9,412 bytes > 200 kB ≥ 16-row chunk
    assert (c["dataset"], c["crop"], c["optimizer"], c["momentum"], c["lr"], c["lr_decay"],
            c["lr_decay_every"], c["model"]) == ("cifar10", 28, "momentum", 0.9, 0.1, 0.95, 2,
                                                 "zhang-mlp")
    assert [r["variant"] for r in doc["results"]["table"]] == ["true labels", "gaussian"]
    assert (out / "zhang_randomization_paper.png").is_file()


@pytest.mark.slow
def test_double_descent_width_paper_scale_resnet18_end_to_end(tmp_path):
    """A ResNet-18 (k = 1, BatchNorm) through the script's deep_model_wise/deep_epoch_wise."""
    cifar = _cifar_dir(tmp_path / "cifar")
    out = tmp_path / "out"
    _script("double_descent_width").main([
        "--scale", "paper", "--data-dir", str(cifar), "--out", str(out),
        "--override", "n_train=16", "--override", "batch_size=8", "--override", "steps=2",
        "--override", "log_every_epochs=1", "--override", "grid.k=1",
        "--override", 'extra_runs=({"k": 1, "noise": 0.15, "seed": 0, "epoch_wise": True},)'])
    mw = json.loads((out / "double_descent_width.json").read_text())
    ew = json.loads((out / "double_descent_epoch.json").read_text())
    for c in (mw["config"], ew["config"]):
        assert (c["model"], c["optimizer"], c["lr"], c["batch_size"], c["dataset"]) == (
            "resnet18", "adam", 1e-4, 8, "cifar10")
    assert (mw["config"]["widths"], mw["config"]["noises"]) == ([1], [0.15])
    assert (ew["config"]["width"], ew["config"]["noise"]) == (1, 0.15)
    assert ew["results"]["width"] == 1 and ew["results"]["num_params"] > 0
    assert (out / "double_descent_width_paper.png").is_file()


@pytest.mark.slow
def test_label_noise_paper_scale_curvature_end_to_end(tmp_path):
    """The paper-scale analysis of label_noise: tr H and λ_max at θ0 and at the end of SGD with
    and without label noise, paired per seed (the model overridden by the zoo's MLP, one
    seed)."""
    cifar = _cifar_dir(tmp_path / "cifar")
    out = tmp_path / "out"
    _script("label_noise").main([
        "--scale", "paper", "--data-dir", str(cifar), "--out", str(out),
        "--override", "n_train=16", "--override", "batch_size=8", "--override", "steps=2",
        "--override", "curvature_every_epochs=1", "--override", "probes=2",
        "--override", "lanczos_steps=4", "--override", "model=zhang-mlp",
        "--override", "model_kw.width=8", "--override", "seeds=0"])
    doc = json.loads((out / "label_noise_curvature.json").read_text())
    assert doc["config"]["noises"] == [0.0, 0.2] and doc["config"]["seeds"] == [0]
    assert doc["config"]["run"]["optimizer"] == "sgd" and doc["config"]["run"]["lr"] == 0.1
    runs = {(r["label_noise"], r["seed"]): r for r in doc["results"]["runs"]}
    assert len(runs) == 2
    for r in runs.values():
        assert np.isfinite([r["hessian_trace"], r["lambda_max"], r["hessian_trace_initial"]]).all()
    # same θ0: equal curvature at θ0 with and without label noise (same probe key)
    assert runs[0.0, 0]["hessian_trace_initial"] == runs[0.2, 0]["hessian_trace_initial"]
    d = doc["results"]["summary"]["0.2"]["hessian_trace_minus_plain"]
    assert d["per_seed"] == pytest.approx(
        [runs[0.2, 0]["hessian_trace"] - runs[0.0, 0]["hessian_trace"]], rel=1e-4)
    assert (out / "label_noise_paper.png").is_file()


@pytest.mark.slow
def test_double_descent_rff_paper_scale_end_to_end(tmp_path):
    """A call-kind recipe: Belkin et al.'s MNIST setup through the script's rff_model_wise /
    rff_sample_wise and its figure."""
    mnist = _mnist_dir(tmp_path / "mnist")
    out = tmp_path / "out"
    _script("double_descent_rff").main([
        "--scale", "paper", "--data-dir", str(mnist), "--out", str(out),
        "--override", "n_train=20", "--override", "grid.N=10,20,200",
        "--override", "extra.sample_wise_N=10", "--override", "seeds=0"])
    doc = json.loads((out / "double_descent_rff.json").read_text())
    assert (doc["config"]["dataset"], doc["config"]["sigma"], doc["config"]["features"]) == (
        "mnist", 5.0, [10, 20, 200])
    assert [r["N"] for r in doc["results"]["mean"]] == [10, 20, 200]
    assert (out / "double_descent_samples.json").is_file()
    assert (out / "double_descent_rff_paper.png").is_file()
