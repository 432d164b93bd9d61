"""Per-example losses and the objective L(θ) = (1/n) Σ_i ℓ(f_θ(x_i), y_i).

A loss is any callable ``loss(output, label) -> scalar`` for ONE example. Built in:

* ``cross_entropy``: softmax cross-entropy on integer labels.
* ``MSE``: ℓ = ½‖f(x) − y‖² summed over outputs (one-hot targets for class labels), the
  convention of the edge-of-stability and IGR papers (docs/science.md#curvature).

``Objective`` joins a model (trainable θ and the frozen rest, plus ``eqx.nn.State`` for
BatchNorm) with a loss. Two modes:

* training mode (``batch_value_and_grad``): the whole batch in one ``vmap`` with
  ``axis_name="batch"`` (BatchNorm uses batch statistics and updates its running state),
  dropout on with one key per example;
* inference mode (``example_loss``/``example_metrics``): ``eqx.nn.inference_mode``, frozen
  BatchNorm statistics, no dropout. Every probe, metric, curvature estimate and flow uses it.

For a model that is neither stateful nor stochastic the two coincide.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .errors import LossError, ModelError

LOSSES = ("ce", "mse")
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(out: jax.Array, y: jax.Array) -> jax.Array:
    """ℓ = −log softmax(out)_y for an integer label y."""
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


class MSE(eqx.Module):
    """ℓ = ½‖out − target‖²; target = one-hot(y) when ``num_classes`` > 0, else y itself."""

    num_classes: int = eqx.field(static=True, default=0)

    def __call__(self, out: jax.Array, y: jax.Array) -> jax.Array:
        target = jax.nn.one_hot(y, self.num_classes, dtype=out.dtype) if self.num_classes else y
        return 0.5 * jnp.sum((out - target.reshape(out.shape)) ** 2)


def resolve_loss(loss: str | LossFn, num_classes: int) -> LossFn:
    """The per-example loss for ``loss`` ("ce", "mse" or a callable)."""
    if callable(loss):
        return loss
    if loss == "ce":
        if num_classes == 0:
            raise LossError("loss: cross-entropy needs class labels; use 'mse' for regression")
        return cross_entropy
    if loss == "mse":
        return MSE(num_classes)
    raise LossError(f"loss: unknown {loss!r}; give 'ce', 'mse' or a callable "
                    "loss(output, label) -> scalar")


def example_loss(loss: str | LossFn, out: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """ℓ(out, y) for one example with a built-in or custom loss."""
    return resolve_loss(loss, num_classes)(out, y)


def loss_name(loss: str | LossFn) -> str:
    """How the trace records a loss: its built-in name or ``module.qualname``."""
    if isinstance(loss, str):
        return loss
    if loss is cross_entropy:
        return "ce"
    if isinstance(loss, MSE):
        return "mse"
    fn = loss if inspect.isfunction(loss) or inspect.ismethod(loss) else type(loss)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def is_stochastic(model: eqx.Module) -> bool:
    """Whether ``model.__call__`` takes a ``key`` (dropout and other random layers)."""
    try:
        return "key" in inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False


def is_stateful(model: eqx.Module) -> bool:
    """Whether the model holds ``eqx.nn.StateIndex`` (BatchNorm and other stateful layers)."""
    leaves = jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, eqx.nn.StateIndex))
    return any(isinstance(x, eqx.nn.StateIndex) for x in leaves)


class Objective(eqx.Module):
    """A model's frozen part, its state and the loss: everything needed to evaluate ℓ_i(θ).

    ``params`` (θ, the trainable arrays) are passed to every method; ``frozen`` holds the rest
    of the model. ``model_state`` is the ``eqx.nn.State`` of a stateful model (None otherwise).
    """

    frozen: Any
    loss: LossFn
    num_classes: int = eqx.field(static=True)
    model_state: Any = None
    stateful: bool = eqx.field(static=True, default=False)
    stochastic: bool = eqx.field(static=True, default=False)

    def __init__(self, frozen, loss: str | LossFn, num_classes: int, model_state=None,
                 stateful: bool = False, stochastic: bool = False):
        self.frozen, self.loss = frozen, resolve_loss(loss, num_classes)
        self.num_classes, self.model_state = num_classes, model_state
        self.stateful, self.stochastic = stateful, stochastic

    def with_state(self, model_state) -> Objective:
        return self if not self.stateful else eqx.tree_at(
            lambda o: o.model_state, self, model_state, is_leaf=lambda x: x is None)

    def _call(self, model, x, state, key):
        kw = {"key": key} if self.stochastic else {}
        if self.stateful:
            return model(x, state, **kw)
        return model(x, **kw), state

    def predict(self, params, x: jax.Array) -> jax.Array:
        """f_θ(x) in inference mode (frozen statistics, no dropout)."""
        model = eqx.nn.inference_mode(eqx.combine(params, self.frozen))
        return self._call(model, x, self.model_state, None)[0]

    def example_loss(self, params, x: jax.Array, y: jax.Array) -> jax.Array:
        """ℓ(f_θ(x), y) in inference mode."""
        return self.loss(self.predict(params, x), y)

    def example_metrics(self, params, x: jax.Array, y: jax.Array):
        """(ℓ_i, 1[argmax f(x_i) = y_i]) in inference mode; accuracy is NaN for regression."""
        out = self.predict(params, x)
        loss = self.loss(out, y)
        if self.num_classes:
            correct = (jnp.argmax(out) == y).astype(out.dtype)
        else:
            correct = jnp.full((), jnp.nan, out.dtype)
        return loss, correct

    def batch_loss(self, params, model_state, x: jax.Array, y: jax.Array, key):
        """(mean training-mode loss over the batch, new model state): one ``vmap`` over the
        batch with ``axis_name="batch"``, dropout keys ``split(key, b)`` (``key`` None: a
        model without dropout, e.g. BatchNorm only)."""
        model = eqx.combine(params, self.frozen)
        keys = None if key is None else jax.random.split(key, x.shape[0])  # None: no dropout
        out, state = jax.vmap(lambda xi, ki, s: self._call(model, xi, s, ki), axis_name="batch",
                              in_axes=(0, None if key is None else 0, None),
                              out_axes=(0, None))(x, keys, model_state)
        return jnp.mean(jax.vmap(self.loss)(out, y)), state


def check_objective(obj: Objective, params, x0: jax.Array, y0: jax.Array, out_size: int) -> None:
    """Trace one example through model and loss (no compute); one clear error if they do not
    fit the data: output size, loss signature, scalar loss."""
    try:
        out = jax.eval_shape(obj.predict, params, x0)
    except Exception as e:  # noqa: BLE001 - the user's model failed on one example
        raise ModelError(f"model: calling it on one example of shape {tuple(x0.shape)} failed "
                         f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "a model acts on ONE example (sgdreg vmaps over the batch)") from None
    if not hasattr(out, "shape") or int(jnp.size(jnp.zeros(out.shape))) != out_size:
        shape = getattr(out, "shape", type(out).__name__)
        raise ModelError(f"model: output of shape {shape} for one example; the data need "
                         f"{out_size} outputs")
    try:
        val = jax.eval_shape(obj.loss, out, y0)
    except Exception as e:  # noqa: BLE001
        raise LossError(f"loss: calling loss(output, label) on one example failed "
                        f"({e.__class__.__name__}); a loss maps (output of shape {out.shape}, "
                        f"label of shape {tuple(y0.shape)}) to a scalar") from None
    if not hasattr(val, "shape") or val.shape != ():
        raise LossError(f"loss: returned shape {getattr(val, 'shape', type(val).__name__)} "
                        "for one example; it must return a scalar")
