"""Per-example losses and the training objective L(θ) = (1/n) Σ_i ℓ(f_θ(x_i), y_i).

* ``ce``: softmax cross-entropy on integer labels.
* ``mse``: ℓ = ½‖f(x) − y‖² summed over outputs (one-hot targets for class labels), the
  convention of the edge-of-stability and IGR papers (SCIENCE.md §2–3).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

LOSSES = ("ce", "mse")


def example_loss(kind: str, out: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """ℓ(out, y) for one example; ``num_classes`` = 0 marks a regression target."""
    if kind == "ce":
        if num_classes == 0:
            raise ValueError("cross-entropy needs class labels; use --loss mse for regression")
        return optax.softmax_cross_entropy_with_integer_labels(out, y)
    if kind == "mse":
        target = jax.nn.one_hot(y, num_classes, dtype=out.dtype) if num_classes else y
        return 0.5 * jnp.sum((out - target.reshape(out.shape)) ** 2)
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


class Objective(eqx.Module):
    """A model's frozen part plus the loss: everything needed to evaluate ℓ_i(θ) from θ alone.

    ``params`` are the trainable arrays (see ``models.partition``); ``frozen`` holds the rest of
    the model (architecture, activation names and non-trained arrays such as random features).
    """

    frozen: eqx.Module
    loss: str = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def predict(self, params, x: jax.Array) -> jax.Array:
        return eqx.combine(params, self.frozen)(x)

    def example_loss(self, params, x: jax.Array, y: jax.Array) -> jax.Array:
        return example_loss(self.loss, self.predict(params, x), y, self.num_classes)

    def example_metrics(self, params, x: jax.Array, y: jax.Array):
        """(ℓ_i, 1[argmax f(x_i) = y_i]); accuracy is NaN for regression."""
        out = self.predict(params, x)
        loss = example_loss(self.loss, out, y, self.num_classes)
        if self.num_classes:
            correct = (jnp.argmax(out) == y).astype(out.dtype)
        else:
            correct = jnp.full((), jnp.nan, out.dtype)
        return loss, correct
