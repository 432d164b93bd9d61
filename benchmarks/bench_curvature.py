"""Curvature cost ratios, measured in one process (not a test; prints a table).

(a) one full-batch HVP ÷ one full-batch gradient (goal ≤ 2×);
(b) Hutchinson with K probes ÷ (K × one HVP), for ``lax.map`` vs ``vmap`` probe batching
    (goal ≤ 1.2×), which decides ``curvature.hutchinson``'s default;
(c) training with the curvature probe every 50 steps ÷ training alone.

Setting: the default MLP (64 → 128 → 10, ReLU, float32, cross-entropy) on sklearn digits,
standardised, 1,437 training examples. Compiled functions, warm-up excluded, median of repeats.
Run: ``PYTHONPATH=src python benchmarks/bench_curvature.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from sgdreg import curvature, losses, models
from sgdreg.batching import full_batch_value_and_grad
from sgdreg.data import preprocess

F32 = jnp.float32
N_TRAIN = 1437


def digits_problem(seed: int = 0):
    """Default MLP + objective on standardised digits (first 1,437 of a seeded permutation)."""
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    x_tr, _ = preprocess(x[perm[:N_TRAIN]], x[perm[N_TRAIN:]], "standardize")
    model = models.make_model("mlp", (64,), 10, width=128, key=jax.random.key(seed), dtype=F32)
    params, frozen = models.partition(model)
    obj = losses.Objective(frozen, "ce", 10)
    return obj, params, jnp.asarray(x_tr, F32), jnp.asarray(y[perm[:N_TRAIN]], jnp.int32)


def median_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each zero-argument ``fn`` (blocked until ready), warm-up excluded.

    The functions are timed in turn inside each repeat, so a load change on the machine
    affects numerator and denominator of a ratio alike.
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def repeat_call(fn, k: int, *args):
    """K dispatches of ``fn(*args)``: the baseline 'K × one HVP' for Hutchinson with K probes."""
    return [fn(*args) for _ in range(k)]


def main(repeats: int = 15, probes: tuple[int, ...] = (10, 50)) -> dict:
    obj, params, x, y = digits_problem()
    loss = obj.example_loss
    dim = models.num_params(params)
    v = jax.random.normal(jax.random.key(1), (dim,), F32)
    key = jax.random.key(2)

    grad = jax.jit(lambda p: full_batch_value_and_grad(loss, p, x, y))
    hvp = jax.jit(lambda p, u: curvature.hessian_matvec(loss, p, x, y)(u))

    def hutch(k, batching):
        return jax.jit(lambda p, kk: curvature.hutchinson(
            curvature.hessian_matvec(loss, p, x, y), dim, kk, k, batching=batching).estimate)

    t = median_times({"grad": lambda: grad(params), "hvp": lambda: hvp(params, v)}, repeats)
    t_grad, t_hvp = t["grad"], t["hvp"]
    print(f"digits MLP 64-128-10 ReLU float32, n = {x.shape[0]}, P = {dim}, "
          f"backend = {jax.default_backend()}, devices = {jax.device_count()}")
    print(f"gradient {1e3 * t_grad:.2f} ms   HVP {1e3 * t_hvp:.2f} ms   "
          f"(a) HVP / gradient = {t_hvp / t_grad:.2f}  (goal <= 2)")
    print("(b) Hutchinson(K) / (K x HVP), goal <= 1.2")
    print(f"{'K':>4} {'map':>8} {'vmap':>8}   (K HVP calls re-timed alongside each K)")
    ratios = {}
    for k in probes:
        fns = {b: functools.partial(hutch(k, b), params, key) for b in curvature.BATCHING}
        fns["k_hvp"] = functools.partial(repeat_call, hvp, k, params, v)
        t = median_times(fns, max(5, repeats // 2))
        row = {b: t[b] / t["k_hvp"] for b in curvature.BATCHING}
        ratios[k] = row
        print(f"{k:>4} {row['map']:>8.2f} {row['vmap']:>8.2f}")
    wins = {b: sum(ratios[k][b] <= min(ratios[k].values()) for k in probes)
            for b in curvature.BATCHING}
    best = max(wins, key=wins.get)
    default = inspect.signature(curvature.hutchinson).parameters["batching"].default
    print(f"faster probe batching here: {best} (library default: {default})")
    return {"hvp_over_grad": t_hvp / t_grad, "hutchinson_over_k_hvp": ratios, "best": best}


def training_with_curvature_ratio(steps: int = 500, repeats: int = 2) -> float:
    """(c) SGD training (B = 32, metrics every 10 steps) with the full curvature probe every 50
    steps (20 Hutchinson probes, 20 Lanczos steps for λ_max and λ_min, Γ, batch sharpness)
    ÷ the same training without it; compilation excluded."""
    from sgdreg.config import RunConfig
    from sgdreg.training import load_data, train

    ds = load_data(RunConfig())
    base = RunConfig(optimizer="sgd", steps=steps, log_every=10)
    times = {}
    for label, cfg in (("alone", base), ("curvature", base.replace(hessian_every=50))):
        train(cfg, ds)  # compile
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            train(cfg, ds)
            runs.append(time.perf_counter() - t0)
        times[label] = statistics.median(runs)
    ratio = times["curvature"] / times["alone"]
    print(f"(c) training with curvature every 50 steps ÷ training alone: {ratio:.2f}× "
          f"({times['curvature']:.2f} s vs {times['alone']:.2f} s for {steps} SGD steps)")
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    main(parser.parse_args().repeats)
    training_with_curvature_ratio()
