"""The generalization-measures study: protocol, measure cache, ranking files and the CLI.

τ and Ψ themselves are checked against hand tables in test_measures.py; here the study around
them, on a tiny grid trained once per module (GD on 64 digits, width 8, ≤ 40 steps).
"""

import json
import math
import shutil

import equinox as eqx
import jax
import numpy as np
import pandas as pd
import pytest
from helpers import classification_dataset
from sgdreg_cli.main import main

from sgdreg.config import RunConfig
from sgdreg.correlation import granulated_psi, psi_bootstrap, resample_indices, tau_bootstrap
from sgdreg.experiments import generalization as gz
from sgdreg.experiments.kernel import dist_to_min_norm
from sgdreg.models import LinearModel

# lr 0.01 cannot reach L* = 0.5 in 40 steps: those two runs must be discarded and reported
TINY_GRID = {
    "name": "tiny",
    "base": {"dataset": "digits", "n_train": 64, "n_test": 64, "width": 8, "optimizer": "gd",
             "steps": 40, "log_every": 5, "stop_loss": 0.5, "dtype": "float64"},
    "grid": {"lr": [0.01, 0.3, 0.6], "seed": [0, 1]},
}
NORMS = ("param_norm", "dist_from_init", "log_prod_of_spec", "log_sum_of_fro", "path_norm")


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "grid"
    index = gz.train_grid(TINY_GRID, out)
    assert index["num_runs"] == 6 and (out / "sweep.json").is_file()
    return out


@pytest.fixture
def runs(grid_dir, tmp_path):
    """A private copy of the trained grid (the study writes into it)."""
    return shutil.copytree(grid_dir, tmp_path / "grid")


def test_study_protocol_measures_and_cache(runs, monkeypatch):
    doc = gz.correlate(runs, flatness=False, num_resamples=50)
    assert doc["target_loss"] == 0.5 and doc["num_runs"] == 6 and doc["num_kept"] == 4
    assert doc["hyperparams"] == ["lr"] and doc["gap"] == "acc_gap"
    assert sorted(d["run_id"] for d in doc["discarded"]) == ["r0000_lr0.01_s0", "r0001_lr0.01_s1"]
    assert all("did not reach train_loss ≤ 0.5" in d["reason"] for d in doc["discarded"])
    assert doc["train_loss_range"][1] <= 0.5
    by_name = {r["measure"]: r for r in doc["ranking"]}
    for k in NORMS:
        assert math.isfinite(by_name[k]["tau"]), k
        assert by_name[k]["n_runs"] == 4 and math.isfinite(by_name[k]["psi"])
    assert "steps_to_loss" in by_name and "igr_gd" in by_name
    assert not any(k in by_name for k in ("margin", "pacbayes_sigma", "num_params"))
    taus = [abs(r["tau"]) for r in doc["ranking"] if not math.isnan(r["tau"])]
    assert taus == sorted(taus, reverse=True)
    check_values_by_hand(runs, doc)

    stored = json.loads((runs / gz.MEASURES_FILE).read_text())
    kept = [r for r in stored["runs"] if r["discarded"] is None]
    assert len(stored["runs"]) == 6 and len(kept) == 4
    for r in kept:  # a stop_loss run stops at the first logged step below L*
        assert r["measures"]["steps_to_loss"] == r["final_step"] and r["train_loss"] <= 0.5
    assert json.loads((runs / gz.CORRELATION_FILE).read_text())["num_kept"] == 4

    def boom(*args, **kwargs):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(gz, "run_measures", boom)
    again = gz.correlate(runs, flatness=False, num_resamples=50)  # every run from the cache
    assert [r["tau"] for r in again["ranking"]] == [r["tau"] for r in doc["ranking"]]
    with pytest.raises(RuntimeError, match="recomputed"):
        gz.correlate(runs, flatness=False, num_resamples=50, recompute=True)
    with pytest.raises(RuntimeError, match="recomputed"):  # other options: not the cached ones
        gz.correlate(runs, flatness=False, num_resamples=50, num_samples=3)


@pytest.mark.slow  # ~10 s: a sweep compile (CI's second stage)
def test_sweep_stops_at_stop_loss_like_single_runs(grid_dir, tmp_path):
    """``sgdreg sweep`` (vmapped) honours stop_loss as ``train`` does: same rows, status, detail
    and final model; the correlate study then compares every run at the stop point."""
    from sgdreg.checkpoint import load_model
    from sgdreg.sweep import run_sweep

    res = run_sweep(TINY_GRID, tmp_path / "sweep", save_models=True, block=2)
    single = {p.stem: json.loads(p.read_text()) for p in (grid_dir / "traces").glob("*.json")}
    stopped = 0
    for tr in res.traces:
        ref = single[tr["run_id"]]
        assert (tr["status"], tr["status_detail"]) == (ref["status"], ref["status_detail"])
        assert tr["metrics"]["step"] == ref["metrics"]["step"]
        for k in ("train_loss", "test_loss", "train_acc", "weight_norm"):
            np.testing.assert_allclose(tr["metrics"][k], ref["metrics"][k], rtol=1e-10, err_msg=k)
        a = jax.tree.leaves(load_model(tmp_path / "sweep" / "models" / f"{tr['run_id']}.eqx")[0])
        b = jax.tree.leaves(load_model(grid_dir / "models" / f"{tr['run_id']}.eqx")[0])
        for x, y in zip(a, b):  # the model saved is the one at the stop step, not at step 40
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12)
        if tr["status_detail"] and tr["status_detail"].startswith("reached train_loss ≤ 0.5"):
            stopped += 1
            assert tr["metrics"]["step"][-1] < 40 and tr["metrics"]["train_loss"][-1] <= 0.5
            assert tr["metrics"]["train_loss"][-2] > 0.5  # the first logged step below L*
    assert stopped == 4  # lr 0.3 and 0.6 stop early; lr 0.01 runs to step 40 above L*
    doc = gz.correlate(tmp_path / "sweep", flatness=False, num_resamples=20)
    assert doc["num_kept"] == 4 and doc["stopped_at_target"] == 4
    assert doc["train_loss_range"][1] <= 0.5


def _brute_tau(m, g):
    pairs = [(i, j) for i in range(len(m)) for j in range(i + 1, len(m))]
    return sum(np.sign(m[i] - m[j]) * np.sign(g[i] - g[j]) for i, j in pairs) / len(pairs)


def check_values_by_hand(runs, doc):
    """τ and Ψ of every ranked measure recomputed by loops from measures.json against the
    trace's train − test accuracy (the default gap), Ψ's groups holding one seed each; two
    measures recomputed from the model files and θ0 rebuilt from the seed."""
    from sgdreg.checkpoint import load_model
    from sgdreg.training import build, load_data

    stored = json.loads((runs / gz.MEASURES_FILE).read_text())
    kept = [r for r in stored["runs"] if r["discarded"] is None]
    traces = {r["run_id"]: json.loads((runs / r["trace"]).read_text()) for r in kept}
    acc = [traces[r["run_id"]]["metrics"]["train_acc"][-1]
           - traces[r["run_id"]]["metrics"]["test_acc"][-1] for r in kept]
    loss_gap = [r["gen_gap"] for r in kept]
    assert [r["acc_gap"] for r in kept] == pytest.approx(acc, abs=1e-12)
    discriminating = 0
    for row in doc["ranking"]:
        m = [r["measures"][row["measure"]] for r in kept]
        assert row["tau"] == pytest.approx(_brute_tau(m, acc), abs=1e-12), row["measure"]
        discriminating += _brute_tau(m, acc) != _brute_tau(m, loss_gap)
        per_seed = [_brute_tau([m[i] for i in idx], [acc[i] for i in idx])
                    for idx in ([i for i, r in enumerate(kept) if r["config"]["seed"] == s]
                                for s in (0, 1))]
        assert row["psi"] == pytest.approx(np.mean(per_seed), abs=1e-12), row["measure"]
        assert row["psi_per_hp"] == {"lr": pytest.approx(np.mean(per_seed), abs=1e-12)}
        boot = tau_bootstrap(m, acc, resample_indices(len(kept), doc["num_resamples"], 0))
        assert row["tau_ci"] == pytest.approx(list(np.nanpercentile(boot, [2.5, 97.5])),
                                              abs=1e-12)  # the default: a 95 % interval
    assert discriminating >= 3  # τ against the loss gap differs: the gap column matters
    r = kept[0]
    cfg = RunConfig(**r["config"])
    model = load_model(runs / r["model"])[0]
    model0 = build(cfg, load_data(cfg)).model0
    theta = np.concatenate([np.ravel(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_array))])
    theta0 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(eqx.filter(model0,
                                                                             eqx.is_array))])
    assert r["measures"]["param_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-12)
    assert r["measures"]["dist_from_init"] == pytest.approx(np.linalg.norm(theta - theta0),
                                                            rel=1e-12)
    assert r["measures"]["steps_to_loss"] == traces[r["run_id"]]["metrics"]["step"][-1]


def test_unreachable_target_raises_before_writing(runs):
    with pytest.raises(gz.StudyError, match="0 of 6 runs usable"):
        gz.correlate(runs, target_loss=1e-6, flatness=False)
    assert not (runs / gz.MEASURES_FILE).exists() and not (runs / gz.CORRELATION_FILE).exists()


def test_cli_correlate_on_a_flat_directory(runs, tmp_path, capsys):
    flat = tmp_path / "flat"  # `sgdreg train --save-checkpoint` layout, plus a non-trace JSON
    flat.mkdir()
    for f in [*(runs / "traces").glob("*.json"), *(runs / "models").glob("*.eqx")]:
        shutil.copy(f, flat / f.name)
    shutil.copy(runs / "sweep.json", flat / "sweep.json")
    (flat / "models").mkdir()  # not the sweep layout: that needs traces/
    code = main(["correlate", str(flat), "--no-flatness", "--resamples", "20", "--gap",
                 "gen_gap", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gap"] == "gen_gap" and out["num_runs"] == 6 and out["num_kept"] == 4
    for name in ("measures.json", "correlation.json", "correlation.png", "correlation.svg"):
        assert (flat / name).stat().st_size > 100, name
    assert math.isfinite({r["measure"]: r for r in out["ranking"]}["dist_from_init"]["tau"])


@pytest.mark.parametrize("case", ["missing", "no-traces", "bad-gap"])
def test_cli_bad_directory_exits_2_and_writes_nothing(tmp_path, capsys, case):
    target = tmp_path / "d"
    args = ["correlate", str(target)]
    if case != "missing":
        target.mkdir()
        (target / "notes.json").write_text('{"not": "a trace"}')
    if case == "bad-gap":
        args += ["--gap", "test_loss"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert {"missing": "no run directory", "no-traces": "holds no traces",
            "bad-gap": "--gap"}[case] in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def brute_psi(df, counts, hps, group_by):
    """Ψ of a resample by loops: per group, τ over pairs of distinct runs weighted c_r·c_s."""
    per = []
    for hp in hps:
        taus = []
        for _, grp in df.groupby([k for k in (*hps, *group_by) if k != hp]):
            rows = [i for i in grp.index if counts[i] > 0]
            ok = [i for i in rows if not np.isnan(df.mu[i])]
            pairs = [(i, j) for i in ok for j in ok if i != j]
            if len({df[hp][i] for i in rows}) < 2 or not pairs:
                continue
            w = [counts[i] * counts[j] for i, j in pairs]
            sg = [np.sign(df.mu[i] - df.mu[j]) * np.sign(df.gap[i] - df.gap[j]) for i, j in pairs]
            taus.append(np.dot(w, sg) / np.sum(w))
        per.append(np.mean(taus) if taus else np.nan)
    return np.nanmean(per) if not np.all(np.isnan(per)) else np.nan


def test_psi_bootstrap_against_loops_and_granulated_psi():
    rng = np.random.default_rng(1)
    n = 24
    df = pd.DataFrame({"lr": rng.choice([0.1, 0.2], n), "width": rng.choice([8, 16, 32], n),
                       "seed": rng.integers(0, 2, n), "mu": rng.normal(size=n),
                       "gap": rng.normal(size=n)})
    df.loc[[3, 7], "mu"] = np.nan
    df.loc[5, "mu"] = df.loc[6, "mu"]  # a tie
    idx = np.vstack([np.arange(n), rng.integers(0, n, size=(10, n))])
    got = psi_bootstrap(df, "mu", "gap", ["lr", "width"], ["seed"], idx)
    for i, rows in enumerate(idx):
        want = brute_psi(df, np.bincount(rows, minlength=n), ["lr", "width"], ["seed"])
        assert got[i] == pytest.approx(want, abs=1e-12, nan_ok=True)
    per = granulated_psi(df, "mu", "gap", ["lr", "width", "seed"])[1]  # no resampling
    assert got[0] == pytest.approx(np.mean([per["lr"], per["width"]]), abs=1e-12)


def test_dist_to_min_norm_only_for_linear_mse_with_d_at_least_n():
    ds = classification_dataset(n=5, d=8, k=3, n_test=4)
    x = ds.x_train.reshape(5, -1)
    w_star = x.T @ np.linalg.solve(x @ x.T, np.eye(3)[ds.y_train])  # (d, K)
    model = LinearModel(8, 3, key=jax.random.key(0), dtype=np.float64)
    exact = eqx.tree_at(lambda m: m.linear.weight, model, np.asarray(w_star.T))
    cfg = RunConfig(model="linear", loss="mse")
    assert dist_to_min_norm(exact, cfg, ds) == pytest.approx(0.0, abs=1e-10)
    assert dist_to_min_norm(model, cfg, ds) > 0.1
    assert dist_to_min_norm(exact, cfg.replace(loss="ce"), ds) is None
    wide = classification_dataset(n=12, d=8, k=3)
    assert dist_to_min_norm(exact, cfg, wide) is None


@pytest.mark.slow
def test_flatness_and_curvature_measures_on_the_grid(runs):
    doc = gz.correlate(runs, num_resamples=20, curvature=True, num_samples=4, num_steps=3,
                       num_bisection=8)
    by_name = {r["measure"]: r for r in doc["ranking"]}
    for k in ("pacbayes_mag_flatness", "sharpness_flatness", "hessian_trace", "lambda_max",
              "grad_var"):
        assert math.isfinite(by_name[k]["tau"]), k
    assert set(doc["sigma_rel_se"]) == {"pacbayes", "pacbayes_mag"}
