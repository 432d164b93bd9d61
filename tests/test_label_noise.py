"""Label-noise SGD (Blanc et al. 2020; Damian, Ma & Lee 2021; docs/science.md#label-noise-sgd, issue 13
part 3):
the noisy targets (exactly the documented draw, and their statistics), δ = 0 is plain SGD bit for
bit, determinism per seed, per-run δ in one vmapped sweep group, and the oracle: on the diagonal
network's manifold of minima label-noise SGD lowers the exact tr H while plain SGD stays put."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import classification_dataset

from sgdreg import dynamics as dyn
from sgdreg import sweep, training
from sgdreg.config import RunConfig
from sgdreg.dynamics.discrete import LABEL_NOISE_STREAM, label_noise_targets
from sgdreg.errors import ConfigError, OptimizerError
from sgdreg.experiments.label_noise import (
    ManifoldProbe,
    diagonal_regression,
    sharp_start,
    trace_floor,
    trace_on_manifold,
)

N = 200_000


def noise_key(state, step):
    return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.model_key),
                                                 LABEL_NOISE_STREAM), step)


def test_regression_targets_are_the_documented_gaussian_draw():
    """ỹ − y = δ·ε with ε = normal(fold_in(fold_in(model key, stream), step)) exactly; over
    N = 2·10⁵ draws mean 0 and std δ within 5 standard errors; δ = 0 returns y."""
    ds, _ = diagonal_regression(10, 20)
    dynamics = dyn.named("sgd", batch_size=4, label_noise=True)
    s = training.prepare(sharp_start(ds, 2.0), ds, dynamics, "mse", lr=0.01, seed=3,
                         label_noise=0.3)
    state, y = s.state0(), s.data.y_train
    for step in (0, 7):
        got = dynamics.targets(state, s.problem, y, jnp.asarray(step, jnp.int32))
        want = y + 0.3 * jax.random.normal(noise_key(state, step), y.shape, y.dtype)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # the key is the seed's and the step's, not the data-order key's
    other = eqx.tree_at(lambda t: t.data_key, state, jax.random.key_data(jax.random.key(99)))
    np.testing.assert_array_equal(np.asarray(dynamics.targets(other, s.problem, y, 7)),
                                  np.asarray(dynamics.targets(state, s.problem, y, 7)))
    assert not np.array_equal(np.asarray(dynamics.targets(state, s.problem, y, 8)),
                              np.asarray(dynamics.targets(state, s.problem, y, 7)))
    e = np.asarray(label_noise_targets(jax.random.key(0), jnp.zeros((N, 1)), 0.3, 0))
    assert abs(e.mean()) < 5 * 0.3 / np.sqrt(N)
    assert abs(e.std() - 0.3) < 5 * 0.3 / np.sqrt(2 * N)
    zero = label_noise_targets(jax.random.key(0), y, jnp.zeros((), y.dtype), 0)
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(y))


def test_class_labels_flip_with_probability_delta_to_a_uniform_other_class():
    k, delta = 5, 0.3
    y = jax.random.randint(jax.random.key(1), (N,), 0, k, jnp.int32)
    key = jax.random.key(2)
    got = np.asarray(label_noise_targets(key, y, delta, k))
    flip = np.asarray(jax.random.uniform(jax.random.split(key)[0], (N,)) < delta)
    changed = got != np.asarray(y)
    np.testing.assert_array_equal(changed, flip)  # a flipped label is never its own class
    assert abs(changed.mean() - delta) < 5 * np.sqrt(delta * (1 - delta) / N)
    shift = (got - np.asarray(y))[changed] % k  # uniform over the k − 1 other classes
    freq = np.bincount(shift, minlength=k)[1:] / changed.sum()
    assert np.all(np.abs(freq - 1 / (k - 1)) < 5 * np.sqrt((1 / (k - 1)) * (1 - 1 / (k - 1))
                                                           / changed.sum()))
    assert got.min() >= 0 and got.max() < k and got.dtype == np.int32
    assert np.all(np.asarray(label_noise_targets(key, y, 1.0, k)) != np.asarray(y))
    np.testing.assert_array_equal(np.asarray(label_noise_targets(key, y, 0.0, k)), np.asarray(y))


def test_step_trains_on_the_noisy_minibatch_and_delta_zero_is_plain_sgd_bit_for_bit():
    """One step of label-noise SGD = one plain SGD step on data whose step-0 minibatch targets
    are y + δ·ε (ε the documented draw); with the flag on and δ = 0, 60 steps (6 epochs) from an
    off-manifold start equal plain SGD's bit for bit (for class labels δ = 0 returns the labels
    themselves: test above). Two compiled programs (label noise on/off), steps traced."""
    ds, _ = diagonal_regression(10, 20)
    model0 = sharp_start(ds, 2.0)
    model0 = eqx.tree_at(lambda m: m.v, model0, model0.v + 0.1)  # off the manifold: it moves
    advance = eqx.filter_jit(lambda st, p, data, n: p.dynamics.advance(st, p, data, 0, n)[0])
    n = {k: jnp.asarray(k, jnp.int32) for k in (1, 60)}
    setups = {}
    for name, d in (("noisy", dyn.named("sgd", batch_size=2, label_noise=True)),
                    ("plain", dyn.named("sgd", batch_size=2))):
        for delta in (0.0, 0.7):
            setups[name, delta] = training.prepare(model0, ds, d, "mse", lr=0.02, seed=4,
                                                   label_noise=delta)
    s = setups["noisy", 0.7]
    state = s.state0()
    idx = state.perm[:2]  # the step-0 minibatch
    eps = jax.random.normal(noise_key(state, 0), (2, 1), jnp.float64)
    noisy_data = eqx.tree_at(lambda d: d.y_train, s.data, s.data.y_train.at[idx].add(0.7 * eps))
    one = advance(state, s.problem, s.data, n[1])
    p = setups["plain", 0.7]
    ref = advance(p.state0(), p.problem, noisy_data, n[1])
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14, atol=1e-16)
    assert not np.allclose(np.asarray(one.params.v),
                           np.asarray(advance(p.state0(), p.problem, p.data, n[1]).params.v))

    finals = [jax.tree.leaves(advance(st.state0(), st.problem, st.data, n[60]).params)
              for st in (setups["noisy", 0.0], setups["plain", 0.0])]
    for a, b in zip(*finals):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(np.abs(np.asarray(finals[0][1]) - np.asarray(model0.v)).max()) > 1e-3  # moved
    assert s.problem.dynamics.describe()["label_noise"] is True


def test_label_noise_arguments_are_validated():
    ds, _ = diagonal_regression(10, 20)
    m = sharp_start(ds, 2.0)
    with pytest.raises(ConfigError, match="label_noise must be a finite number"):
        training.run(m, ds, "sgd", loss="mse", label_noise=-0.1)
    with pytest.raises(OptimizerError, match="label_noise"):
        training.run(m, ds, "flow", loss="mse", label_noise=0.1)
    with pytest.raises(ConfigError, match="flip probability"):
        training.run(eqx.nn.Linear(6, 3, key=jax.random.key(0)), classification_dataset(),
                     "sgd", label_noise=1.5)
    with pytest.raises(ConfigError, match="label_noise"):
        training.build(RunConfig(optimizer="flow", label_noise=0.1))


SWEEP_BASE = dict(dataset="linreg", model="linear", loss="mse", optimizer="sgd", batch_size=10,
                  lr=0.002, steps=4, log_every=2, dtype="float64", n_test=20)
SWEEP_GRID = {"label_noise": [0.2, 0.5], "seed": [0, 1]}


def test_label_noise_values_plan_as_one_vmapped_group():
    """δ is a per-run (traced) field: δ ∈ {0.2, 0.5} × 2 seeds plan as one group, δ = 0 (the flag
    off, another program) as its own; under ``vmap`` over runs each run gets its own δ."""
    plan = sweep.plan_sweep({"base": SWEEP_BASE, "grid": SWEEP_GRID})
    assert [len(g.runs) for g in plan.groups] == [4]
    assert len(sweep.plan_sweep({"base": SWEEP_BASE, "grid": {"label_noise": [0.0, 0.2]}}).groups) == 2
    ds, _ = diagonal_regression(10, 20)
    noisy = dyn.named("sgd", batch_size=2, label_noise=True)
    s = training.prepare(sharp_start(ds, 2.0), ds, noisy, "mse", lr=0.01, label_noise=0.0)
    deltas = jnp.array([0.0, 0.2, 0.5])
    states = jax.vmap(lambda d: eqx.tree_at(lambda t: t.hyper.label_noise, s.state0(), d))(deltas)
    y = s.data.y_train
    got = jax.vmap(lambda st: noisy.targets(st, s.problem, y, 5))(states)
    eps = jax.random.normal(noise_key(s.state0(), 5), y.shape, y.dtype)
    np.testing.assert_allclose(np.asarray(got), np.asarray(y + deltas[:, None, None] * eps),
                               rtol=1e-15, atol=1e-15)


@pytest.mark.slow
def test_label_noise_sweep_compiles_once_and_gives_the_trace_of_train_alone(tmp_path):
    before = sweep.TRACE_COUNTS["sweep_chunk"]
    res = sweep.run_sweep({"base": SWEEP_BASE, "grid": SWEEP_GRID}, tmp_path / "ln", devices=1)
    assert [g["size"] for g in res.index["groups"]] == [4]
    assert sweep.TRACE_COUNTS["sweep_chunk"] == before + 1
    assert [t["config"]["label_noise"] for t in res.traces] == [0.2, 0.2, 0.5, 0.5]
    assert all(t["provenance"]["dynamics"]["label_noise"] for t in res.traces)
    assert len({t["metrics"]["train_loss"][-1] for t in res.traces}) == 4
    tr = res.traces[3]
    ref = training.train(RunConfig(**tr["config"])).trace
    np.testing.assert_allclose(tr["metrics"]["train_loss"], ref["metrics"]["train_loss"],
                               rtol=1e-11)


@pytest.fixture(scope="module")
def manifold_runs():
    """Label-noise SGD (δ = 0.5) and plain SGD (the same compiled program with δ = 0, bit-equal
    to plain SGD above), h = 0.025, B = 2, 16,000 steps, seeds 0-2, from a sharp interpolating
    θ0 of the diagonal network f(x) = ⟨u⊙v, x⟩ (n = 10, d = 20, P = 40)."""
    ds, w = diagonal_regression(10, 20)
    model0 = sharp_start(ds, 2.0)
    noisy = dyn.named("sgd", batch_size=2, label_noise=True)
    out = {}
    for delta in (0.5, 0.0):
        for seed in (0, 1, 2):
            res = training.run(model0, ds, noisy, loss="mse", lr=0.025, steps=16_000,
                               log_every=2000, seed=seed, label_noise=delta,
                               probes=[ManifoldProbe(2000, model0, w)])
            out[delta, seed] = res.trace["metrics"]
    return ds, model0, out


def test_label_noise_sgd_drifts_along_the_manifold_toward_lower_trace(manifold_runs):
    ds, model0, runs = manifold_runs
    trace0 = runs[0.5, 0]["hessian_trace"][0]
    assert trace0 == pytest.approx(trace_on_manifold(model0, ds.x_train), rel=1e-10)
    floor = trace_floor(ds.x_train, ds.y_train)
    final = np.array([runs[0.5, s]["hessian_trace"][-1] for s in range(3)])
    spread = final.max() - final.min()
    assert trace0 - final.max() > 10 * spread and final.max() < 0.5 * trace0
    assert final.min() > floor - 0.05 * trace0  # cannot go (much) below the manifold's floor
    loss0 = 0.5 * float(np.mean(ds.y_train ** 2))  # L at θ = 0
    for s in range(3):
        m = runs[0.5, s]
        assert np.all(np.diff(m["hessian_trace"]) < 0.1 * trace0)  # a steady drift
        assert m["distance"][-1] > 2.0
        assert np.median(m["train_loss"][1:]) < 0.1 * loss0  # it stays near the minima
        assert max(m["train_loss"]) < 0.5 * loss0
        assert m["train_loss"] != runs[0.5, (s + 1) % 3]["train_loss"]  # seeds differ
        plain = runs[0.0, s]
        assert np.max(np.abs(np.array(plain["hessian_trace"]) - trace0)) < 1e-9 * trace0
        assert plain["distance"][-1] < 1e-12 and max(plain["train_loss"]) < 1e-20


def test_label_noise_runs_are_deterministic_per_seed(manifold_runs):
    ds, model0, runs = manifold_runs
    again = training.run(model0, ds, dyn.named("sgd", batch_size=2, label_noise=True),
                         loss="mse", lr=0.025, steps=16_000, log_every=2000, seed=1,
                         label_noise=0.5).trace["metrics"]
    assert again["train_loss"] == runs[0.5, 1]["train_loss"]
