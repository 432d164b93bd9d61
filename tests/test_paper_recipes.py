"""``--scale paper`` of every experiment script (issue 14, item 6): the resolved configuration,
the bad input, and the recipe runner end to end on a tiny CIFAR-10-format folder."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

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
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in paper_files():
        rec = rng.integers(0, 256, size=(n_per_batch, 3073), dtype=np.uint8)
        rec[:, 0] = np.arange(n_per_batch) % 10
        rec.tofile(folder / name)
    return folder


def paper_files():
    from sgdreg.datasets import CIFAR_BIN

    return CIFAR_BIN


def test_every_script_has_a_recipe():
    """Every script reproducing a paper has one; the others are listed, with why."""
    assert sorted(paper.RECIPES) == SCRIPTS
    assert not set(paper.NOT_PAPERS) & set(paper.RECIPES)


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
    assert not list(tmp_path.iterdir())  # nothing written


def test_paper_recipes_match_the_papers():
    z = paper.RECIPES["zhang_randomization"]
    assert (z.model, z.crop, z.lr, z.momentum, z.schedule) == ("inception", 28, 0.1, 0.9,
                                                              "exp:0.95/epoch")
    n = paper.RECIPES["double_descent_width"]
    assert (n.model, n.optimizer, n.lr, n.epochs, n.grid["k"]) == (
        "resnet18", "adam", 1e-4, 4000, tuple(range(1, 65)))
    c = paper.RECIPES["cohen_eos"]
    assert (c.n, c.model, c.loss, c.batch_size) == (5000, "fc-tanh", "mse", None)
    assert c.grid["lr"][0] == pytest.approx(2 / 30) and c.grid["lr"][-1] == pytest.approx(2 / 90)


@pytest.mark.parametrize("name", ["zhang_randomization", "cohen_eos", "generalization_measures",
                                  "compare_default"])
def test_paper_without_data_dir_is_one_line_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        _script(name).main(["--scale", "paper"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale paper needs --data-dir" in err[0]
    assert not list(tmp_path.iterdir())


def test_data_dir_missing_files_and_recipe_only_are_one_line(capsys, tmp_path):
    mod = _script("cohen_eos")
    (tmp_path / "data_batch_1.bin").write_bytes(b"")
    for argv, msg in (
        (["--data-dir", str(tmp_path / "nowhere")], "not a directory"),
        (["--data-dir", str(tmp_path)], "no complete CIFAR-10 set"),
        (["--data-dir", str(tmp_path), "--device-budget", "0"], "--device-budget must be"),
    ):
        with pytest.raises(SystemExit) as e:
            mod.main(["--scale", "paper", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and msg in err[0], err
    cifar = _cifar_dir(tmp_path / "cifar")
    for argv, msg in (
        (["--data-dir", str(cifar), "--device-budget", "1000"],
         "--device-budget 1000 bytes is below one chunk (50348032 bytes"),  # 4096 rows × 12,292
    ):
        with pytest.raises(SystemExit) as e:
            mod.main(["--scale", "paper", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and msg in err[0], err
    with pytest.raises(SystemExit) as e:
        _script("sde_svag").main(["--scale", "paper", "--data-dir", str(tmp_path)])
    assert e.value.code == 2 and "recipe only" in capsys.readouterr().err


def test_estimate_is_flops_over_assumed_throughput():
    r = paper.RECIPES["double_descent_width"]
    per = [paper.train_gflop(r, p) for p in r.points()]
    assert per[0] == pytest.approx(paper.TRAIN_GFLOP["resnet18_k1"])  # k = 1 and 64: measured
    assert per[-1] == pytest.approx(paper.TRAIN_GFLOP["resnet18_k64"])
    for k in (8, 16):  # the a·k² + b·k fit against the other measured widths
        assert per[k - 1] == pytest.approx(paper.TRAIN_GFLOP[f"resnet18_k{k}"], rel=0.05)
    # examples processed: 4000 epochs × 390 steps × 128 (+ evaluation every 10 epochs, ≈ 4%)
    # at 67 TFLOP/s × 0.35, plus the 1 ms floor per step
    train_only = sum(per) * 4000 * 390 * 128 * 1e9 / (paper.PEAK_TFLOPS * 1e12
                                                       * paper.UTILISATION) / 3600
    floor = 64 * 4000 * 390 * paper.STEP_FLOOR_S / 3600
    assert paper.estimate(r)["gpu_hours"] == pytest.approx(train_only + floor, rel=0.05)


@pytest.mark.slow
def test_run_paper_recipe_end_to_end_on_a_tiny_cifar_folder(tmp_path):
    """cohen_eos's recipe (fc-tanh, full-batch GD, MSE, curvature probe), shrunk, streamed
    (32 images × 12,292 bytes = 393 kB > the 300 kB budget ≥ one chunk of 24 rows, 295 kB)."""
    data = _cifar_dir(tmp_path / "cifar")
    out = tmp_path / "out"
    rows = paper.run_paper("cohen_eos", str(data), out, device_budget=300_000, overrides=dict(
        n_train=24, epochs=4, grid={"lr": (0.05,)}, curvature_every_epochs=2, probes=2,
        lambda_min_steps=0, log_every_epochs=2, model_kw={"width": 8, "depth": 2}))
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])
    trace = json.loads(next(out.glob("cohen_eos_*.json")).read_text())
    assert trace["provenance"]["data"]["placement"] == "host (streamed)"
    assert trace["provenance"]["data"]["n_train"] == 24
    m = trace["metrics"]  # the curvature probe ran on the streamed data, at 2/h = 40
    assert np.isfinite([v for v in m["lambda_max"] if v is not None]).all()
    assert trace["probes"]["curvature"]["eos_threshold"] == pytest.approx(40)
    assert json.loads((out / "recipe.json").read_text())["overrides"]["n_train"] == 24
