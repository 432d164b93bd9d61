"""The SDE of SGD and SVAG against SGD (docs/science.md#sde-of-sgd; Li, Tai & E 2017; Li, Malladi & Arora
2021): exact oracles on a quadratic and path statistics on a small network.

* **Quadratic with additive gradient noise.** ℓ_i(θ) = ½θᵀAθ − ξ_iᵀθ with Σ_i ξ_i = 0, so
  L = ½θᵀAθ, g_i − ḡ = −ξ_i and Σ_1 = (1/n)Σ ξ_iξ_iᵀ does not depend on θ. The SDE
  dθ = −Aθ dt + √(hΣ_B) dW is linear: m(t) = e^{−At}θ0 and, with A = U diag(a) Uᵀ,
  C(t) = U[(UᵀhΣ_BU)_jk (1 − e^{−(a_j+a_k)t})/(a_j + a_k)]Uᵀ → C_∞ solving AC + CA = hΣ_B
  (Lyapunov). SVAG_ℓ's moments follow exactly from m ← Mm, C ← MCMᵀ + (h/ℓ)²·ℓΣ_B,
  M = I − (h/ℓ)A, ℓ per step of h (its gradient noise has covariance ℓΣ_B and is independent
  over substeps). Weak error |E f(θ_T)^SVAG_ℓ − E f(θ_T)^SDE| for f = ‖θ‖² (exact and by
  Monte Carlo with the ``SVAG`` dynamics), order fitted on log-log; the SDE dynamics'
  stationary covariance (Monte Carlo over paths) against the Lyapunov solution.
* **Network.** Same θ0, several data seeds (paths): SGD (epoch reshuffle), SVAG for several ℓ
  (ℓ = 1: SGD with i.i.d. minibatches) and the SDE (Euler–Maruyama); mean and spread over paths
  of the training loss and ‖θ − θ0‖ at t = step·h.
The figure is ``sgdreg.plotting.sde.render_sde_svag`` (from the stored results only).
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import dynamics as dyn
from .. import engine, training
from ..batching import full_batch_value_and_grad
from ..config import ConfigError, RunConfig
from ..dynamics.sde import SGDSDE, SVAG
from ..results import load_document, save_results, sig
from ._common import Progress, say

EXPERIMENT = "sde_svag"


# ---------------------------------------------------------------------------------------------
# The quadratic with additive gradient noise and its closed forms.


class QuadraticObjective(eqx.Module):
    """ℓ_i(θ) = ½θᵀAθ − x_iᵀθ (y unused): ∇ℓ_i = Aθ − x_i, Σ_1 = Cov(x) (state independent)."""

    A: jax.Array

    def example_loss(self, params, x, y):
        return 0.5 * params @ (self.A @ params) - x @ params


def quadratic_problem(eigs: Sequence[float], n: int, seed: int = 0):
    """(A, X): A = Q diag(eigs) Qᵀ with a random rotation Q, X (n × P) Gaussian rows centred
    to Σ_i x_i = 0 (so L = ½θᵀAθ, minimum at 0). float64 numpy."""
    rng = np.random.default_rng(seed)
    p = len(eigs)
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    x = rng.normal(size=(n, p))
    return q @ np.diag(np.asarray(eigs, float)) @ q.T, x - x.mean(0)


def minibatch_covariance(x: np.ndarray, batch_size: int) -> np.ndarray:
    """Σ_B = (n − B)/(B(n − 1))·Σ_1, Σ_1 = (1/n)Σ(g_i − ḡ)(g_i − ḡ)ᵀ with g_i − ḡ = −(x_i − x̄)."""
    n = x.shape[0]
    xc = x - x.mean(0)
    return (n - batch_size) / (batch_size * (n - 1)) * (xc.T @ xc / n)


def linear_sde_moments(a: np.ndarray, s: np.ndarray, theta0: np.ndarray, t: float):
    """Mean and covariance at time t of dθ = −Aθ dt + √S dW (A symmetric positive definite,
    θ(0) = θ0 deterministic): closed form in A's eigenbasis."""
    ev, u = np.linalg.eigh(a)
    m = u @ (np.exp(-ev * t) * (u.T @ theta0))
    tot = ev[:, None] + ev[None, :]
    c = (u.T @ s @ u) * (-np.expm1(-tot * t)) / tot
    return m, u @ c @ u.T


def svag_linear_moments(a: np.ndarray, sigma_b: np.ndarray, h: float, ell: int,
                        theta0: np.ndarray, steps: int):
    """Exact mean and covariance of SVAG_ℓ after ``steps`` steps of h on the quadratic:
    ℓ·steps substeps m ← Mm, C ← MCMᵀ + (h/ℓ)²ℓΣ_B, M = I − (h/ℓ)A. With Gaussian increments
    these are also the moments of Euler–Maruyama at dt = h/ℓ for the SDE (same recursion)."""
    p = a.shape[0]
    mm = np.eye(p) - (h / ell) * a
    q = (h / ell) ** 2 * ell * sigma_b
    m, c = np.asarray(theta0, float).copy(), np.zeros((p, p))
    for _ in range(steps * ell):
        m, c = mm @ m, mm @ c @ mm.T + q
    return m, c


def second_moment(m: np.ndarray, c: np.ndarray) -> float:
    """E‖θ‖² = ‖m‖² + tr C."""
    return float(m @ m + np.trace(c))


def fit_order(ells: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope p of log error = p·log(1/ℓ) + c (weak order in 1/ℓ)."""
    x, y = np.log(1.0 / np.asarray(ells, float)), np.log(np.asarray(errors, float))
    return float(np.polyfit(x, y, 1)[0])


def _hyper(h: float, dtype=jnp.float64) -> dyn.Hyper:
    return dyn.Hyper(lr=jnp.asarray(h, dtype), momentum=jnp.asarray(0.0, dtype),
                     egr=jnp.asarray(0.0, dtype))


def quadratic_paths(dynamics: dyn.AbstractDynamics, a: np.ndarray, x: np.ndarray,
                    theta0: np.ndarray, h: float, steps: int, paths: int, seed: int = 0
                    ) -> np.ndarray:
    """θ after ``steps`` steps of h of ``dynamics`` on the quadratic, for ``paths`` data keys
    (one vmapped program; float64): array (paths, P)."""
    n = x.shape[0]
    xj = jnp.asarray(x, jnp.float64)
    data = dyn.Data(xj, jnp.zeros(n), xj, jnp.zeros(n))
    problem = engine.Problem(QuadraticObjective(jnp.asarray(a, jnp.float64)), dynamics, 4096)
    state = engine.init_state(problem, jnp.asarray(theta0, jnp.float64), _hyper(h),
                              jax.random.key(0), jax.random.key(1), n)
    keys = jax.random.key_data(jax.random.split(jax.random.key(seed), paths))
    states = jax.vmap(lambda kd: eqx.tree_at(lambda s: s.data_key, state, kd))(keys)
    run = eqx.filter_jit(jax.vmap(lambda s: dynamics.advance(
        s, problem, data, jnp.asarray(0, jnp.int32), steps)[0]))
    return np.asarray(run(states).params)


def covariance_z(sample: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Sample covariance (about the true mean 0) of ``sample`` (N, P), its entrywise z-scores
    against c using the Gaussian standard error √((c_jj c_kk + c_jk²)/N), and its relative
    Frobenius error ‖Ĉ − C‖/‖C‖ with that error's Monte Carlo standard error (delta method)."""
    nn = sample.shape[0]
    emp = sample.T @ sample / nn
    se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c ** 2) / nn)
    rel = float(np.linalg.norm(emp - c) / np.linalg.norm(c))
    rel_se = float(np.sqrt(np.sum(se ** 2)) / np.linalg.norm(c))
    return (emp - c) / se, rel, rel_se


# ---------------------------------------------------------------------------------------------
# The experiment.


def quadratic_part(*, eigs=(1.0, 1.5, 2.5), n=8, batch_size=2, h=0.2, stationary_h=0.1,
                   stationary_substeps=10, stationary_time=5.0, stationary_paths=8000,
                   t_end=1.0, ells=(1, 2, 4, 8, 16), exact_ells=(1, 2, 4, 8, 16, 32, 64, 128),
                   mc_paths=20000, sde_substeps=16, seed=0, progress: Progress | None = None
                   ) -> dict:
    """Stationary covariance of the SDE dynamics vs Lyapunov; SVAG weak error vs ℓ (exact and
    Monte Carlo) against the closed-form SDE moments at t = ``t_end``, θ0 = (1, …, 1)."""
    a, x = quadratic_problem(eigs, n, seed)
    p = len(eigs)
    sb = minibatch_covariance(x, batch_size)
    import scipy.linalg as sl

    # stationary covariance
    c_lyap = sl.solve_continuous_lyapunov(a, stationary_h * sb)
    st_steps = int(round(stationary_time / stationary_h))
    t0 = _time.perf_counter()
    th = quadratic_paths(SGDSDE(batch_size=batch_size, substeps=stationary_substeps), a, x,
                         np.zeros(p), stationary_h, st_steps, stationary_paths, seed + 1)
    z, rel, rel_se = covariance_z(th, c_lyap)
    dt = stationary_h / stationary_substeps
    m_em = np.eye(p) - dt * a  # exact stationary covariance of Euler–Maruyama at this dt
    c_em = sl.solve_discrete_lyapunov(m_em, dt * stationary_h * sb)
    stationary = {
        "h": stationary_h, "substeps": stationary_substeps, "dt": dt, "t": st_steps * stationary_h,
        "paths": stationary_paths, "lyapunov": c_lyap.tolist(), "monte_carlo": (th.T @ th / len(th)).tolist(),
        "relative_error": rel, "relative_error_mc_se": rel_se, "max_abs_z": float(np.abs(z).max()),
        "em_bias_relative": float(np.linalg.norm(c_em - c_lyap) / np.linalg.norm(c_lyap)),
        "wall_time_s": _time.perf_counter() - t0}
    say(progress, f"stationary covariance: relative error {rel:.4f} (MC s.e. {rel_se:.4f}), "
                  f"max |z| {np.abs(z).max():.2f}, EM bias {stationary['em_bias_relative']:.4f}")

    # weak error of SVAG_ℓ against the SDE
    theta0 = np.ones(p)
    steps = int(round(t_end / h))
    m_sde, c_sde = linear_sde_moments(a, h * sb, theta0, steps * h)
    f_sde = second_moment(m_sde, c_sde)
    exact = [abs(second_moment(*svag_linear_moments(a, sb, h, ell, theta0, steps)) - f_sde)
             for ell in exact_ells]
    mc, mc_se = [], []
    for ell in ells:
        t0 = _time.perf_counter()
        th = quadratic_paths(SVAG(batch_size=batch_size, amplification=int(ell)), a, x,
                             theta0, h, steps, mc_paths, seed + 10 + int(ell))
        f = np.sum(th ** 2, axis=1)
        mc.append(float(f.mean() - f_sde))
        mc_se.append(float(f.std(ddof=1) / math.sqrt(len(f))))
        say(progress, f"SVAG ℓ={ell}: E‖θ‖² − SDE = {mc[-1]:.5f} ± {mc_se[-1]:.5f} (exact "
                      f"{second_moment(*svag_linear_moments(a, sb, h, ell, theta0, steps)) - f_sde:.5f}), "
                      f"{_time.perf_counter() - t0:.1f} s")
    th = quadratic_paths(SGDSDE(batch_size=batch_size, substeps=sde_substeps), a, x, theta0,
                         h, steps, mc_paths, seed + 99)
    f = np.sum(th ** 2, axis=1)
    sde_mc = {"substeps": sde_substeps, "error": float(f.mean() - f_sde),
              "se": float(f.std(ddof=1) / math.sqrt(len(f)))}
    mc_abs = np.abs(mc)
    weak = {
        "t": steps * h, "h": h, "batch_size": batch_size, "f": "|theta|^2", "theta0": theta0.tolist(),
        "sde_value": f_sde, "exact_ells": list(exact_ells), "exact_error": exact,
        "exact_order": fit_order(exact_ells, exact), "ells": list(ells), "mc_error": mc,
        "mc_se": mc_se, "mc_paths": mc_paths,
        "mc_order": fit_order(ells, mc_abs) if np.all(mc_abs > 0) else None,
        "mc_order_se": _order_se(ells, mc, mc_se, seed),
        # MC order over the ℓ whose error exceeds 2 s.e. (the others are within noise of 0)
        "mc_order_resolved": _resolved_order(ells, mc, mc_se), "sde_em": sde_mc}
    say(progress, f"weak order: exact {weak['exact_order']:.3f}, Monte Carlo "
                  f"{weak['mc_order']} ± {weak['mc_order_se']:.3f} (resolved "
                  f"{weak['mc_order_resolved']})")
    return {"eigs": list(eigs), "n": n, "A": a.tolist(), "sigma_b": sb.tolist(),
            "stationary": stationary, "weak": weak}


def _order_se(ells, mc, se, seed: int, draws: int = 2000) -> float:
    """Standard deviation of the fitted Monte Carlo order when each error is redrawn from
    N(error, s.e.²) (parametric bootstrap; draws with a non-positive error are dropped)."""
    rng = np.random.default_rng(seed)
    sim = rng.normal(np.abs(mc), se, size=(draws, len(mc)))
    orders = [fit_order(ells, row) for row in sim if np.all(row > 0)]
    return float(np.std(orders, ddof=1)) if len(orders) > 1 else float("nan")


def _resolved_order(ells, mc, se) -> float | None:
    keep = [(e, abs(m)) for e, m, s in zip(ells, mc, se) if abs(m) > 2 * s]
    return fit_order(*zip(*keep)) if len(keep) >= 2 else None


def network_paths(setup: training.Setup, dynamics: dyn.AbstractDynamics, *, lr: float,
                  steps: int, log_every: int, paths: int, seed: int) -> dict:
    """``paths`` runs of ``dynamics`` from θ0 of ``setup`` differing only in the data key
    (vmapped): train loss and ‖θ − θ0‖ at every ``log_every`` steps, shape (paths, logs)."""
    problem = engine.Problem(setup.problem.objective, dynamics, setup.problem.eval_chunk,
                             setup.problem.ghost_batch)
    hyper = eqx.tree_at(lambda hp: hp.lr, setup.hyper, jnp.asarray(lr, setup.hyper.lr.dtype))
    state = engine.init_state(problem, setup.params0, hyper, setup.keys["data"],
                              setup.keys["model"], setup.dataset.n_train, setup.model_state0)
    keys = jax.random.key_data(jax.random.split(jax.random.key(seed), paths))
    states = jax.vmap(lambda kd: eqx.tree_at(lambda s: s.data_key, state, kd))(keys)
    data, flat0 = setup.data, ravel_pytree(setup.params0)[0]
    obj = problem.objective

    def metrics(s):
        loss = full_batch_value_and_grad(obj.example_loss, s.params, data.x_train, data.y_train,
                                         problem.eval_chunk)[0]
        return loss, jnp.linalg.norm(ravel_pytree(s.params)[0] - flat0)

    @eqx.filter_jit
    def chunk(states, step0):
        states = jax.vmap(lambda s: dynamics.advance(s, problem, data, step0, log_every)[0])(states)
        return states, jax.vmap(metrics)(states)

    loss, dist = [jax.vmap(metrics)(states)[0]], [jax.vmap(metrics)(states)[1]]
    for k in range(0, steps, log_every):
        states, (lo, di) = chunk(states, jnp.asarray(k, jnp.int32))
        loss.append(lo)
        dist.append(di)
    return {"step": list(range(0, steps + 1, log_every)),
            "train_loss": np.asarray(jnp.stack(loss, 1)), "distance": np.asarray(jnp.stack(dist, 1)),
            "diverged": int(np.sum(np.asarray(states.diverged_at) >= 0))}


def _band(v: np.ndarray) -> dict:
    return {"mean": [sig(x, 5) for x in v.mean(0)], "std": [sig(x, 5) for x in v.std(0, ddof=1)],
            "q10": [sig(x, 5) for x in np.quantile(v, 0.1, 0)],
            "q90": [sig(x, 5) for x in np.quantile(v, 0.9, 0)]}


NETWORK_METHODS = ("sgd", "svag", "sde", "gd")


def network_part(*, dataset="digits", n_train=256, width=32, depth=1, activation="tanh",
                 loss="ce", lr=0.2, batch_size=8, steps=300, log_every=10, paths=12,
                 ells=(1, 4, 16), sde_substeps=8, seed=0, dtype="float64", model="mlp",
                 data_dir=None, methods=NETWORK_METHODS, reference="sde",
                 device_budget: int | None = None, progress: Progress | None = None) -> dict:
    """SGD, SVAG_ℓ and the SDE (and GD) from one θ0 over ``paths`` data seeds on ``model`` (a
    RunConfig preset; width/depth/activation as its fields). ``methods``: a subset of
    ``NETWORK_METHODS``; ``reference``: the run every final loss is compared with (``sde``, or
    e.g. ``svag_l8`` where the SDE costs too much: SVAG_ℓ → the SDE as ℓ grows);
    ``device_budget``: ``RunConfig.device_budget`` (data above it stream from the host)."""
    unknown = set(methods) - set(NETWORK_METHODS)
    if unknown or "sgd" not in methods:
        raise ConfigError(f"methods must include sgd and be among {', '.join(NETWORK_METHODS)}, "
                          f"got {', '.join(methods)}")
    cfg = RunConfig(dataset=dataset, data_dir=data_dir, n_train=n_train, model=model,
                    width=width, depth=depth, activation=activation, loss=loss, optimizer="sgd",
                    lr=lr, batch_size=batch_size, steps=steps, log_every=log_every, seed=seed,
                    dtype=dtype, device_budget=device_budget)
    setup = training.build(cfg)
    chosen = [("sgd", dyn.named("sgd", batch_size=batch_size))]
    if "svag" in methods:
        chosen += [(f"svag_l{ell}", SVAG(batch_size=batch_size, amplification=int(ell)))
                   for ell in ells]
    if "sde" in methods:
        chosen.append(("sde", SGDSDE(batch_size=batch_size, substeps=sde_substeps)))
    if "gd" in methods:
        chosen.append(("gd", dyn.named("gd")))
    if reference not in dict(chosen) or reference == "gd":
        raise ConfigError(f"reference must be one of the stochastic runs "
                          f"{', '.join(n for n, _ in chosen if n != 'gd')}, got {reference}")
    methods = chosen
    out = {}
    for name, d in methods:
        t0 = _time.perf_counter()
        r = network_paths(setup, d, lr=lr, steps=steps, log_every=log_every,
                          paths=1 if name == "gd" else paths, seed=seed + 1)
        out[name] = {"train_loss": _band(r["train_loss"]) if name != "gd" else
                     {"mean": [sig(x, 5) for x in r["train_loss"][0]]},
                     "distance": _band(r["distance"]) if name != "gd" else
                     {"mean": [sig(x, 5) for x in r["distance"][0]]},
                     "final_loss": r["train_loss"][:, -1].tolist(),
                     "final_distance": r["distance"][:, -1].tolist(),
                     "diverged": r["diverged"], "wall_time_s": _time.perf_counter() - t0}
        say(progress, f"{name}: final loss {np.mean(out[name]['final_loss']):.4f} ± "
                      f"{np.std(out[name]['final_loss']):.4f}, ‖θ−θ0‖ "
                      f"{np.mean(out[name]['final_distance']):.3f}, {out[name]['wall_time_s']:.1f} s")
    sde_f = np.asarray(out[reference]["final_loss"])
    for m in out.values():
        f = np.asarray(m["final_loss"])
        se = math.sqrt(f.var(ddof=1) / len(f) + sde_f.var(ddof=1) / len(sde_f)) if len(f) > 1 \
            else math.sqrt(sde_f.var(ddof=1) / len(sde_f))
        # vs the reference run (the SDE by default; the key keeps its historical name)
        m["final_loss_vs_sde"] = {"difference": float(f.mean() - sde_f.mean()), "se": se,
                                  "z": float((f.mean() - sde_f.mean()) / se)}
    return {"step": r["step"], "t": [s * lr for s in r["step"]], "lr": lr, "model": model,
            "reference": reference,
            "batch_size": batch_size, "paths": paths, "ells": list(ells),
            "sde_substeps": sde_substeps, "dataset": setup.dataset.describe(),
            "num_params": int(ravel_pytree(setup.params0)[0].size), "methods": out}


def run_sde_svag(*, quadratic: dict | None = None, network: dict | None = None,
                 out_dir: str | Path | None = None, progress: Progress | None = None) -> dict:
    """Both parts (keyword overrides in ``quadratic``/``network``); saves ``sde_svag.json``."""
    quadratic, network = dict(quadratic or {}), dict(network or {})
    for part in (quadratic, network):
        for k in ("paths", "mc_paths", "stationary_paths", "steps"):
            if k in part and (int(part[k]) != part[k] or part[k] < 1):
                raise ConfigError(f"{k} must be a positive integer, got {part[k]}")
    start = _time.perf_counter()
    q = quadratic_part(**quadratic, progress=progress)
    net = network_part(**network, progress=progress)
    wall = _time.perf_counter() - start
    config = {"quadratic": quadratic, "network": network}
    results = {"quadratic": q, "network": net,
               "note": "quadratic: l_i = ½θᵀAθ − x_iᵀθ, Σ_B = (n−B)/(B(n−1))·(1/n)Σx_ix_iᵀ; "
                       "weak error of f = ‖θ‖² at t against the closed-form SDE; network: "
                       "bands are mean ± 1 std over paths (data seeds) from one θ0"}
    if out_dir is not None:
        save_results(out_dir, EXPERIMENT, config, results, wall)
    return {"config": config, **results, "wall_time_s": wall}


def read_sde_svag(results_dir: str | Path) -> dict:
    doc = load_document(results_dir, EXPERIMENT)
    return {"config": doc["config"], **doc["results"], "wall_time_s": doc["wall_time_s"]}
