"""Probes: pure functions of (θ, data) that measure a run without changing its trajectory.

``cheap_metrics`` runs at every logged step inside the compiled training chunk. Expensive
probes (curvature) implement ``Probe``: a name, a cadence ``every`` (in steps) and a call that
returns a dict of metrics; the training loop calls them between chunks.

IGR terms (Barrett & Dherin 2021; Smith et al. 2021; SCIENCE.md §2), with h the step size:
  igr_gd = (h/4)‖∇L‖²,  modified_loss_gd = L + igr_gd,
  minibatch_grad_norm_sq = (1/m) Σ_k ‖∇L̂_k‖² over the m minibatches of the current epoch,
  igr_sgd_var = (h/4)(1/m) Σ_k ‖∇L̂_k − ∇L‖²,  modified_loss_sgd = L + (h/4)·minibatch_grad_norm_sq,
so that modified_loss_sgd = modified_loss_gd + igr_sgd_var exactly when B divides n.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from .batching import full_batch_mean, full_batch_value_and_grad
from .models import layer_norms


def sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(a**2) for a in jax.tree.leaves(tree))


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def cheap_metrics(problem, data, params, params0, perm, lr) -> dict[str, jax.Array]:
    """Losses, accuracies, gaps, norms and IGR terms at θ (full batch, chunked)."""
    obj, chunk = problem.objective, problem.eval_chunk
    x, y = data.x_train, data.y_train
    (train_loss, train_acc), g = full_batch_value_and_grad(
        obj.example_metrics, params, x, y, chunk, has_aux=True
    )
    test_loss, test_acc = full_batch_mean(obj.example_metrics, params, data.x_test, data.y_test,
                                          chunk)
    gn = sq_norm(g)
    out = {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "gen_gap": test_loss - train_loss,
        "grad_norm_sq": gn,
        "igr_gd": lr / 4 * gn,
        "modified_loss_gd": train_loss + lr / 4 * gn,
        "weight_norm": jnp.sqrt(sq_norm(params)),
        "dist_from_init": jnp.sqrt(sq_norm(tree_sub(params, params0))),
        "layer_norms": layer_norms(params),
    }
    if obj.num_classes:
        out |= {"train_acc": train_acc, "test_acc": test_acc, "acc_gap": train_acc - test_acc}
    if not problem.full_batch:
        mb_sq, mb_var = minibatch_gradient_terms(problem, params, x, y, perm, g)
        out |= {
            "minibatch_grad_norm_sq": mb_sq,
            "igr_sgd_var": lr / 4 * mb_var,
            "modified_loss_sgd": train_loss + lr / 4 * mb_sq,
        }
    return out


def minibatch_gradient_terms(problem, params, x, y, perm, full_grad):
    """(1/m)Σ_k‖∇L̂_k‖² and (1/m)Σ_k‖∇L̂_k − ∇L‖² at one θ over the epoch's m minibatches."""
    b = problem.batch_size
    m = x.shape[0] // b
    idx = perm[: m * b].reshape(m, b)
    loss = problem.objective.example_loss

    def one(batch_idx):
        xb, yb = x[batch_idx], y[batch_idx]
        g = jax.grad(lambda p: jnp.mean(jax.vmap(loss, (None, 0, 0))(p, xb, yb)))(params)
        return sq_norm(g), sq_norm(tree_sub(g, full_grad))

    norms, devs = jax.lax.map(one, idx)
    return jnp.mean(norms), jnp.mean(devs)


class ProbeContext(Protocol):
    """What an expensive probe may read: objective, data, step size, step and a PRNG key."""

    problem: Any
    data: Any
    lr: float
    step: int
    key: jax.Array
    memory: dict


class Probe(Protocol):
    """An expensive measurement run every ``every`` steps between training chunks."""

    name: str
    every: int

    def __call__(self, params, ctx: ProbeContext) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]:
        """Its definition, recorded in the trace (e.g. which Hessian, how many probes)."""
        ...
