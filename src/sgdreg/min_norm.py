"""Distance to the minimum-norm least-squares solution, for models linear in their trained
parameters (Zhang et al. 2017 §5; Belkin et al. 2019; docs/science.md#generalization-experiments).

Supported models write f_θ(x) = θᵀψ(x) with a fixed feature map ψ:

* ``LinearModel``: ψ(x) = x (flattened), plus a constant 1 when a bias is trained;
* ``RandomFeatures``: ψ(x) = φ(x), the fixed random features; θ = the read-out.

With Φ the n×p design (rows ψ(x_i)) and Y the n×K targets (one-hot for classes), the MSE loss
L(θ) = (1/n)Σ_i ½‖θᵀψ(x_i) − y_i‖² = (1/2n)‖Φθ − Y‖²_F has gradient Φᵀ(Φθ − Y)/n, which lies in
the row space of Φ; so do minibatch gradients Φ_Bᵀ(Φ_Bθ − Y_B)/B. GD, SGD, momentum and gradient
flow started at θ0 = 0 therefore never leave the row space, and the only minimiser of L there is

    θ* = Φ⁺Y:  Φᵀ(ΦΦᵀ)⁻¹Y, the minimum-norm interpolant, when p ≥ n and Φ has full row rank;
               (ΦᵀΦ)⁻¹ΦᵀY, the least-squares solution, when p < n.

GD with 0 < h < 2/λ_max(ΦᵀΦ/n) converges to θ*; SGD with a constant step reaches it when θ*
interpolates (the gradient noise vanishes there) and hovers around it otherwise. Adaptive methods
(adam) leave the row space; the distance is still recorded. ``MinNormDistance`` computes θ* once
per run in NumPy float64 (from Φ's own singular values, ``double_descent.min_norm_least_squares``,
never through a Gram matrix; singular values below ``rcond``·s_max dropped, default
eps·max(n, p)) and records
``dist_to_min_norm`` = ‖θ − θ*‖/‖θ*‖ (all trained arrays together) at every logged row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .double_descent import min_norm_least_squares, stacked_r
from .errors import ModelError
from .kernels import flatten_inputs, prediction_error, rows_per_chunk, target_matrix
from .models import LinearModel, RandomFeatures, partition

INTERPOLATION_TOL = 1e-6  # θ* "interpolates" when ‖Φθ* − Y‖_F/‖Y‖_F is below this
DEFINITION = ("‖θ − θ*‖/‖θ*‖ over all trained arrays (Frobenius), θ* = Φ⁺Y the minimum-norm "
              "least-squares solution of the MSE loss (1/2n)‖Φθ − Y‖²; Φ the n×p design of the "
              "trained parameters' features (x, with a ones column for a trained bias; the "
              "fixed random features φ(x) for RandomFeatures), Y the one-hot or float targets. "
              "GD/SGD/momentum/flow from θ0 = 0 stay in the row space of Φ and converge to θ* "
              "(Zhang et al. 2017 §5). θ* in float64 from the SVD of Φ (p ≥ n) or of R in a "
              "blockwise QR Φ = QR (p < n), singular values of Φ below rcond·s_max dropped "
              "(default eps·max(n, p))")


def is_linear_in_params(model) -> bool:
    """Whether ``MinNormDistance`` covers the model (``LinearModel``, ``RandomFeatures``)."""
    return isinstance(model, (LinearModel, RandomFeatures))


def starts_at_zero(params) -> bool:
    """Whether every trained array is exactly zero (θ0 = 0)."""
    return all(not np.any(np.asarray(a)) for a in jax.tree.leaves(params))


def feature_map(model) -> Callable[[np.ndarray], np.ndarray]:
    """ψ: inputs (m, ...) → float64 rows (m, p) with f_θ(x) = θᵀψ(x) for the trained θ."""
    if isinstance(model, LinearModel):
        bias = model.linear.bias is not None

        def psi(x):
            X = flatten_inputs(x)
            return np.hstack([X, np.ones((len(X), 1))]) if bias else X
        return psi
    if isinstance(model, RandomFeatures):
        dtype, phi = model.proj.dtype, jax.vmap(model.features)
        return lambda x: np.asarray(phi(jnp.asarray(x, dtype)), dtype=np.float64)
    raise ModelError(f"model: the min-norm solution needs a model linear in its trained "
                     f"parameters (LinearModel, RandomFeatures), got {type(model).__name__}")


def _blocks(n: int, p: int):
    step = rows_per_chunk(p)
    return ((i, min(i + step, n)) for i in range(0, n, step))


def _predict(psi, x, theta) -> np.ndarray:
    n = len(x)
    if n == 0:
        return np.zeros((0, theta.shape[1]))
    return np.concatenate([psi(x[i:j]) @ theta for i, j in _blocks(n, theta.shape[0])])


def min_norm_solution(model, dataset, rcond: float | None = None) -> tuple[Any, dict[str, Any]]:
    """θ* = Φ⁺Y for ``model`` on ``dataset``'s training set (MSE targets), float64.

    Returns (θ* as the model's trained-parameter tree with float64 NumPy leaves, info): info
    holds n, p, ‖θ*‖, the train residual ‖Φθ* − Y‖_F/‖Y‖_F, whether θ* interpolates, and θ*'s
    train/test loss (½‖f − y‖², mean over examples, as the trace's losses) and, for classes,
    its 0–1 train/test error. p ≥ n: Φ⁺Y from Φ (``min_norm_least_squares``); p < n: R⁺QᵀY
    with Φ = QR accumulated over row blocks (``stacked_r``, memory ~ p²), the same solution.
    Singular values of Φ below ``rcond``·s_max are dropped (None: eps·max(n, p)).
    """
    psi = feature_map(model)
    x, k = dataset.x_train, dataset.num_classes
    Y = target_matrix(dataset.y_train, k)
    n, p = len(x), psi(x[:1]).shape[1]
    if n <= p:
        Phi = psi(x)
        theta = min_norm_least_squares(Phi, Y, rcond)
        pred = Phi @ theta
    else:
        R, QtY = stacked_r((psi(x[i:j]) for i, j in _blocks(n, p)),
                           (Y[i:j] for i, j in _blocks(n, p)))
        cut = np.finfo(np.float64).eps * n if rcond is None else rcond  # eps·max(n, p) on Φ
        theta = min_norm_least_squares(R, QtY, cut)
        pred = _predict(psi, x, theta)
    test_pred = _predict(psi, dataset.x_test, theta)
    Yt = target_matrix(dataset.y_test, k)
    resid = float(np.linalg.norm(pred - Y) / max(np.linalg.norm(Y), np.finfo(float).tiny))
    info: dict[str, Any] = {
        "n": int(n), "p": int(p), "rcond": rcond, "norm_min_norm": float(np.linalg.norm(theta)),
        "train_residual": resid, "interpolates": resid < INTERPOLATION_TOL,
        "train_loss": prediction_error(pred, dataset.y_train, 0, Y) / 2,
        "test_loss": prediction_error(test_pred, dataset.y_test, 0, Yt) / 2,
    }
    if k:
        info |= {"train_error": prediction_error(pred, dataset.y_train, k),
                 "test_error": prediction_error(test_pred, dataset.y_test, k)}
    return _as_params(model, theta), info


def _as_params(model, theta: np.ndarray):
    """θ (p, K) as the model's trained-parameter tree (float64 NumPy leaves)."""
    if isinstance(model, LinearModel):
        d = model.linear.weight.shape[1]
        new = eqx.tree_at(lambda m: m.linear.weight, model, theta[:d].T)
        if model.linear.bias is not None:
            new = eqx.tree_at(lambda m: m.linear.bias, new, theta[d])
    else:
        new = eqx.tree_at(lambda m: m.readout.weight, model, theta.T)
    return partition(new)[0]


def _flat(params) -> np.ndarray:
    leaves = [np.asarray(a, dtype=np.float64).ravel() for a in jax.tree.leaves(params)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


class MinNormDistance:
    """Probe ``dist_to_min_norm`` = ‖θ − θ*‖/‖θ*‖ (all trained arrays, Frobenius), θ* = Φ⁺Y the
    minimum-norm least-squares solution (module docstring; Zhang et al. 2017 §5).

    Build it with ``MinNormDistance.for_model(model, data)`` (θ* from the training set, MSE
    targets; ``LinearModel`` or ``RandomFeatures``), or from a known ``theta_star`` (an array or
    a tree with the trained parameters' leaves in order). ``every``: steps between calls (the
    engine calls probes only at logged rows, so 1 means every logged row). ``train(cfg)``
    attaches it for linear/random-features models with the MSE loss started at θ0 = 0.

    Example:
        >>> probe = sgdreg.MinNormDistance.for_model(model, data)           # doctest: +SKIP
        >>> sgdreg.run(model, data, "gd", loss="mse", probes=[probe])     # doctest: +SKIP
    """

    name = "min_norm"

    def __init__(self, theta_star, every: int = 1, *, info: dict[str, Any] | None = None):
        self.theta_star = _flat(theta_star)
        self.every = every
        self.norm = float(np.linalg.norm(self.theta_star))
        self.info = {"norm_min_norm": self.norm, **(info or {})}

    @classmethod
    def for_model(cls, model, data, *, every: int = 1,
                  rcond: float | None = None) -> MinNormDistance:
        """θ* for ``model`` (its trained parameters) on ``data`` (a ``Dataset`` or arrays as in
        ``as_dataset``), computed once here; ``describe()`` records ‖θ*‖, whether θ* interpolates
        and its train/test loss and error. Meaningful for the MSE loss from θ0 = 0."""
        from .training import as_dataset

        params, info = min_norm_solution(model, as_dataset(data), rcond)
        info["theta0_zero"] = starts_at_zero(partition(model)[0])
        return cls(params, every, info=info)

    def distance(self, params) -> float:
        theta = _flat(params)
        if theta.shape != self.theta_star.shape:
            raise ModelError(f"params: {theta.size} trained values, the min-norm solution has "
                             f"{self.theta_star.size}")
        return float(np.linalg.norm(theta - self.theta_star) / max(self.norm, np.finfo(float).tiny))

    def __call__(self, params, ctx) -> dict[str, Any]:
        return {"dist_to_min_norm": self.distance(params)}

    def describe(self) -> dict[str, Any]:
        return {"definition": DEFINITION, **self.info}


def dist_to_min_norm(model, cfg, dataset) -> float | None:
    """‖W−W*‖_F/‖W*‖_F, W* the min-norm interpolant Xᵀ(XXᵀ)⁻¹Y (Zhang et al. 2017 §5), for a
    preset linear model trained with MSE on d ≥ n examples with XXᵀ invertible; None otherwise
    (the measure of a finished run; ``MinNormDistance`` covers every case along a run)."""
    from .kernels import min_norm_interpolant

    if cfg.model != "linear" or cfg.loss != "mse":
        return None
    x = flatten_inputs(dataset.x_train)
    if x.shape[0] > x.shape[1]:
        return None
    try:
        w_star = min_norm_interpolant(x, target_matrix(dataset.y_train, dataset.num_classes)).T
    except ValueError:  # XXᵀ singular: no exact interpolant
        return None
    return MinNormDistance(w_star).distance(partition(model)[0])


__all__ = ["MinNormDistance", "dist_to_min_norm", "feature_map", "is_linear_in_params",
           "min_norm_solution", "starts_at_zero"]
