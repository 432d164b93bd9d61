"""Minimum-norm interpolation (Zhang et al. 2017, §5; docs/science.md#generalization-experiments).

* ``min_norm_kernel`` — the kernel interpolant Kα = Y (test error, RKHS norm), GD from zero
  reaching the minimum-norm linear interpolant, and the two views of the norm: across kernels
  (preprocessing × bandwidth, different function spaces) the norm varies far more than the test
  error; at one fixed kernel random labels need a larger norm than the true ones.
* ``gd_min_norm`` — GD from W0 = 0 on a linear least-squares model with d ≥ n, with the
  ``MinNormDistance`` probe ‖W − W*‖/‖W*‖ in its trace (the probe and ``dist_to_min_norm`` live
  in ``sgdreg.min_norm``; re-exported here).

The closed forms are in ``sgdreg.kernels``; the figure in ``sgdreg.plotting.kernel``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ConfigError, RunConfig
from ..data import Dataset, subsample
from ..min_norm import MinNormDistance, dist_to_min_norm  # re-exported (moved to the core)
from ._common import Progress, say, trace_path


def gd_min_norm(ds: Dataset, steps: int, lr: float | None = None, log_every: int | None = None,
                trace_path=None) -> dict:
    """GD from W0 = 0 on L = (1/2n)Σ‖Wx_i − y_i‖² (d ≥ n) stays in the row space of X and
    converges to the minimum-norm interpolant W* = (Xᵀ(XXᵀ)⁻¹Y)ᵀ (Zhang et al. 2017, §5).

    ``lr`` defaults to 1/λ_max(XᵀX/n); the error along the smallest eigen-direction then decays as
    (1 − 1/κ)^k, κ = λ_max/λ_min of XXᵀ. Runs in float64 through ``training.train`` with the
    ``MinNormDistance`` probe, so the distance is in the trace.
    """
    import jax

    from ..kernels import flatten_inputs, min_norm_interpolant, prediction_error, target_matrix
    from ..models import LinearModel
    from ..training import dtype_of, train

    X, Y = flatten_inputs(ds.x_train), target_matrix(ds.y_train, ds.num_classes)
    n, d = X.shape
    w_star = min_norm_interpolant(X, Y).T  # (K, d); raises if n > d or XXᵀ is singular
    lam = np.linalg.eigvalsh(X @ X.T / n)
    lr = float(1.0 / lam.max()) if lr is None else float(lr)
    log_every = log_every or max(1, steps // 50)
    cfg = RunConfig(dataset=ds.name, model="linear", loss="mse", optimizer="gd", lr=lr,
                    steps=steps, log_every=log_every, dtype="float64")
    model = LinearModel(d, w_star.shape[0], zero_init=True, key=jax.random.key(0),
                        dtype=dtype_of(cfg))  # float64 (enables JAX x64)
    res = train(cfg, ds, model=model, probes=[MinNormDistance(w_star, log_every)],
                trace_path=trace_path)
    m, s = res.trace["metrics"], res.trace["summary"]
    w_gd = np.asarray(res.model.linear.weight, dtype=np.float64)
    test_pred = flatten_inputs(ds.x_test) @ w_star.T
    errors = {"train_error_gd": 1 - s["train_acc"], "test_error_gd": 1 - s["test_acc"]} \
        if ds.num_classes else {"train_mse_gd": 2 * s["train_loss"], "test_mse_gd": 2 * s["test_loss"]}
    return {**errors, "n": n, "d": d, "lr": lr, "steps": steps, "kappa": float(lam.max() / lam.min()),
            "step": m["step"], "dist_to_min_norm": m["dist_to_min_norm"],
            "train_loss": m["train_loss"], "final_dist": m["dist_to_min_norm"][-1],
            "norm_gd": float(np.linalg.norm(w_gd)), "norm_min_norm": float(np.linalg.norm(w_star)),
            "test_error_min_norm": prediction_error(test_pred, ds.y_test, ds.num_classes),
            "status": res.trace["status"]}


def min_norm_kernel(ds: Dataset, kernel: str = "rbf", bandwidth: float | None = None,
                    gd_n: int | None = 30, gd_steps: int = 5000, raw: Dataset | None = None,
                    trace_dir=None, progress: Progress | None = None,
                    random_label_seeds=tuple(range(5))) -> dict:
    """Minimum-norm interpolation (Zhang et al. 2017, §5): the kernel interpolant Kα = Y on
    ``ds`` (test error, RKHS norm √tr αᵀKα), GD from zero on the first ``gd_n`` points reaching
    the linear min-norm solution (``gd_min_norm``), and, given the unpreprocessed ``raw`` data,
    both views of the norm: ``preprocessing_table`` across kernels (``preprocessing_norm_table``:
    each row a different function space) and ``fixed_kernel``, true against random labels
    (seeds ``random_label_seeds``) at each fixed kernel (``random_label_norms``)."""
    from ..kernels import KERNELS, kernel_interpolate, preprocessing_norm_table, random_label_norms

    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if bandwidth is not None and not bandwidth > 0:
        raise ConfigError(f"bandwidth must be a finite number > 0, got {bandwidth:g}")
    d = int(np.prod(ds.input_shape))
    if kernel == "linear" and ds.n_train > d:
        raise ConfigError(f"a linear kernel cannot interpolate n = {ds.n_train} points in d = {d} "
                          "dimensions (n > d); use kernel rbf or n_train ≤ d")
    if gd_n is not None and not 1 <= gd_n <= min(d, ds.n_train):
        raise ConfigError(f"gd_n must be in 1..{min(d, ds.n_train)} (GD reaches the min-norm "
                          f"interpolant only when n ≤ d = {d}), got {gd_n}")
    if gd_steps < 1:
        raise ConfigError(f"gd_steps must be ≥ 1, got {gd_steps}")
    out: dict[str, Any] = {"interpolation": kernel_interpolate(ds, kernel, bandwidth).as_dict()}
    i = out["interpolation"]
    say(progress, f"{kernel} interpolation: train error {i['train_error']:.3g}, test error "
                   f"{i['test_error']:.3g}, norm {i['rkhs_norm']:.4g}")
    if gd_n:
        out["gd"] = gd_min_norm(subsample(ds, n_train=gd_n), gd_steps,
                                trace_path=trace_path(trace_dir, "gd_min_norm"))
        say(progress, f"GD from zero (n={gd_n}): ‖W − W*‖/‖W*‖ = {out['gd']['final_dist']:.3g}")
    if raw is not None:
        out["preprocessing_table"] = preprocessing_norm_table(raw)
        if random_label_seeds and raw.num_classes:
            out["fixed_kernel"] = random_label_norms(raw, seeds=random_label_seeds)
            r = out["fixed_kernel"]
            say(progress, f"random / true labels' RKHS norm at a fixed kernel: "
                           f"{min(x['ratio_min'] for x in r):.2f}–{max(x['ratio_max'] for x in r):.2f}× "
                           f"(seeds {', '.join(map(str, random_label_seeds))})")
    return out


__all__ = ["MinNormDistance", "dist_to_min_norm", "gd_min_norm", "min_norm_kernel"]
