"""Edge of stability (Cohen et al. 2021; docs/science.md#curvature): toy scale, but real training.

One shared problem (256 digits, tanh MLP 32×2, MSE, float32; h = 0.4, 0.6 so 2/h = 5, 3.33 is
reached by progressive sharpening within ~150 steps from λ_max(0) ≈ 2.7) so the compiled chunk,
Lanczos and flow programs are reused by every test and the CLI run.
"""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from sgdreg_cli.main import main

from sgdreg.config import ConfigError
from sgdreg.experiments import eos
from sgdreg.plotting.eos import render_eos
from sgdreg.trace import load_trace

SMALL = dict(dataset="digits", n_train=256, width=32, depth=2, sharpness_every=20, log_every=5,
             lanczos_steps=20)
LRS = (0.4, 0.6)
CLI_SMALL = ["--dataset", "digits", "--n-train", "256", "--width", "32", "--depth", "2",
             "--sharpness-every", "20", "--log-every", "5", "--lanczos-steps", "20"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eos")
    return eos.run_edge_of_stability(LRS, steps=600, flow_time=120.0, out_dir=out, **SMALL), out


@pytest.mark.slow
def test_gd_sharpness_settles_at_two_over_h(run):
    """Progressive sharpening up to 2/h, then λ_max hovers: settled median within 10%."""
    res, _ = run
    assert [r["lr"] for r in res["runs"]] == list(LRS)
    for r in res["runs"]:
        assert r["status"] == "completed"
        assert r["threshold"] == pytest.approx(2 / r["lr"])
        assert abs(r["ratio"] - 1) < 0.10, r["ratio"]
        assert abs(r["mean_ratio"] - 1) < 0.10
        assert r["settled_lambda_max"] > 1.2 * r["lambda_max_initial"]  # it sharpened to get there
        assert r["step_at_edge"] is not None and r["step_at_edge"] < r["settle_window"][0]
        assert r["max_relative_residual"] < 0.02  # Lanczos converged enough to trust 10%


@pytest.mark.slow
def test_loss_falls_non_monotonically_at_the_edge(run):
    res, _ = run
    for r in res["runs"]:
        assert r["loss_increases_settled"] > 0
        loss = r["series"]["train_loss"]
        assert loss[-1] < 0.2 * loss[0]


@pytest.mark.slow
def test_flow_sharpens_past_the_largest_threshold(run):
    """Same θ0, same t: the flow's λ_max is far above 2/h where GD(h) sits at 2/h; GD follows
    the flow until it reaches its edge."""
    res, _ = run
    f = res["flow_vs_largest"]
    assert f["lr"] == max(LRS) and f["t"] == pytest.approx(120.0)
    assert f["flow_exceeds_threshold"] and f["flow_ratio"] > 1.5
    assert abs(f["gd_ratio"] - 1) < 0.15
    assert res["flow"]["lambda_max_initial"] == pytest.approx(res["runs"][0]["lambda_max_initial"],
                                                              rel=1e-4)  # the same θ0
    for c in f["crossings"]:
        assert c["t_flow_crosses"] is not None
        assert c["t_gd_at_edge"] == pytest.approx(c["t_flow_crosses"], rel=0.25)
    assert res["flow"]["loss_increases"] == 0


@pytest.mark.slow
def test_results_traces_and_figure(run, tmp_path):
    res, out = run
    stored = eos.read_eos(out)
    assert stored["config"]["lrs"] == list(LRS)
    assert [r["ratio"] for r in stored["runs"]] == pytest.approx([r["ratio"] for r in res["runs"]])
    assert (out / "eos.json").stat().st_size < 60_000
    docs = [load_trace(out / p) for p in stored["traces"]]
    assert [d["config"]["optimizer"] for d in docs] == ["gd", "gd", "flow"]
    assert len({d["metrics"]["train_loss"][0] for d in docs}) == 1  # identical θ0
    m = docs[0]["metrics"]
    assert m["step"][:3] == [0, 5, 10] and m["lambda_max"][:2] == [pytest.approx(
        stored["runs"][0]["series"]["lambda_max"][0], rel=1e-3), None]
    assert docs[0]["probes"]["sharpness"]["eos_threshold"] == pytest.approx(5.0)
    files = render_eos(out, tmp_path / "eos.png")
    assert [f.suffix for f in files] == [".png", ".svg"] and all(f.stat().st_size for f in files)


def _least_squares(w, x, y):
    return 0.5 * (x @ w - y) ** 2


def test_sharpness_probe_is_the_top_eigenvalue():
    """On L = (1/2n)‖Xw − y‖² (H = XᵀX/n exactly, float64) the probe's λ_max is the largest
    eigenvalue; the second call starts from the stored top vector and is exact at once."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12)) * np.linspace(0.2, 2.0, 12)
    exact = np.linalg.eigvalsh(x.T @ x / 40)[-1]
    ctx = SimpleNamespace(problem=SimpleNamespace(objective=SimpleNamespace(
        example_loss=_least_squares), eval_chunk=16), data=SimpleNamespace(
        x_train=jnp.asarray(x), y_train=jnp.asarray(rng.normal(size=40))),
        key=jax.random.key(1), memory={})
    probe = eos.SharpnessProbe(1, lanczos_steps=12)
    cold = probe(jnp.zeros(12, jnp.float64), ctx)
    assert cold["lambda_max"] == pytest.approx(exact, rel=1e-10) and cold["lambda_max_converged"]
    v = ctx.memory["top_vector"]
    assert np.linalg.norm(x.T @ (x @ v) / 40 - exact * v) < 1e-8
    warm = probe(jnp.ones(12, jnp.float64), ctx)  # H does not depend on w
    assert warm["lambda_max"] == pytest.approx(exact, rel=1e-10)
    assert warm["lambda_max_residual"] < 1e-8


def test_settled_window_and_loss_increases():
    assert eos.settled([0, 10, 20, 30], [1.0, None, 3.0, 4.0], 30, 1 / 3) == [3.0, 4.0]
    assert eos.loss_increases([3.0, 2.0, 2.5, None, 1.0, 1.5]) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(lrs=()), "^lrs"), (dict(lrs=(0.1, -1.0)), "^lrs"), (dict(lrs=(0.1, 0.1)), "distinct"),
    (dict(optimizer="adam"), "^optimizer"), (dict(sharpness_every=7), "multiple"),
    (dict(steps=0), "^steps"), (dict(settle_fraction=0.0), "^settle_fraction"),
    (dict(momentum=1.0), "^momentum"), (dict(flow_time=-1.0), "^flow_time"),
    # fields of RunConfig are named as arguments by the library (the CLI shows them as options)
    (dict(width=0), "^width must"), (dict(dtype="float16"), "^dtype must"),
])
def test_bad_values_are_rejected_before_anything_is_written(kwargs, match, tmp_path):
    args = dict(lrs=(0.1,), out_dir=tmp_path / "out") | kwargs
    with pytest.raises(ConfigError, match=match):
        eos.run_edge_of_stability(args.pop("lrs"), **args)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "eos"
    assert main(["eos", "--lr", "0.5", "--steps", "40", "--flow-time", "10", *CLI_SMALL,
                 "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["threshold"] == pytest.approx(4.0) and "series" not in doc["runs"][0]
    assert {p.name for p in out.iterdir()} == {"eos.json", "eos.png", "eos.svg", "traces"}
    assert {p.name for p in (out / "traces").iterdir()} == {"gd_lr0.5.json", "flow_lr0.5.json"}
    for bad in (["--lr", "0.5,-1"], ["--lr", "x"], ["--optimizer", "adam"],
                ["--sharpness-every", "7"], ["--dataset", "nope"], ["--n-train", "99999"]):
        dest = tmp_path / "bad"
        assert main(["eos", *bad, "--out", str(dest)]) == 2, bad
        assert not dest.exists()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, lrs", [("momentum", (0.6, 1.0)), ("nesterov", (0.2, 0.3))])
def test_momentum_sharpness_settles_at_its_threshold(optimizer, lrs):
    """Heavy ball at 2(1+β)/h, Nesterov at (2+2β)/((1+2β)h) (β = 0.9)."""
    res = eos.run_edge_of_stability(lrs, optimizer=optimizer, steps=600, include_flow=False,
                                    **SMALL)
    for r in res["runs"]:
        assert r["status"] == "completed"
        assert abs(r["ratio"] - 1) < 0.10, (r["lr"], r["ratio"])
