"""The parts every dynamics shares: traced hyper-parameters, device data, the run state and the
``AbstractDynamics`` interface that the engine drives."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp


class Hyper(eqx.Module):
    """Traced numeric hyper-parameters: step size h, momentum β (Adam: b1), EGR strength μ and
    the label-noise strength δ (regression: σ of the noise added to the targets; classification:
    flip probability; used by dynamics built with ``label_noise=True``; default 0)."""

    lr: jax.Array
    momentum: jax.Array
    egr: jax.Array
    label_noise: jax.Array = eqx.field(default=0.0, converter=jnp.asarray)


class Data(eqx.Module):
    """Device arrays of one dataset (traced under jit)."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class TrainState(eqx.Module):
    """State of one run. PRNG keys are stored as raw key data (serialisable, vmappable).
    ``diverged_at`` is −1 until the loss turns non-finite; ``failed`` marks a flow solver that
    stopped early; ``stopped`` marks a run that reached its ``stop_loss`` (set by the sweep at
    a logged step). From any of them on the run is frozen, so it never disturbs a vmapped batch."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    perm: jax.Array
    data_key: jax.Array
    model_key: jax.Array
    diverged_at: jax.Array
    failed: jax.Array
    hyper: Hyper
    stopped: jax.Array = eqx.field(default_factory=lambda: jnp.zeros((), bool))

    @property
    def running(self) -> jax.Array:
        return (self.diverged_at < 0) & ~self.failed & ~self.stopped


def epoch_permutation(data_key, epoch, n: int):
    """The data order of one epoch: a function of the seed's data key and the epoch only."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), n)


def minibatch_indices(perm, k, batch_size: int, m: int):
    """Indices of minibatch k mod m of the epoch ordered by ``perm``."""
    return jax.lax.dynamic_slice(perm, ((k % m) * batch_size,), (batch_size,))


def _keep(ok, new, old):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


class AbstractDynamics(eqx.Module):
    """A training dynamics: ``init`` its state, ``advance`` a run by n steps from the group's
    step ``step0`` (traced), report its step size h and its EoS threshold for λ_max."""

    # subclasses define ``name: str`` and ``batch_size: int | None`` (None: full batch)
    is_flow: ClassVar[bool] = False

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None

    @abc.abstractmethod
    def init(self, params, hyper: Hyper) -> Any:
        """The method's own state (optimizer slots; None for flows)."""

    @abc.abstractmethod
    def advance(self, state: TrainState, problem, data: Data, step0, num_steps):
        """(state after ``num_steps`` more steps, info dict); a frozen run stays as it is."""

    def step_size(self, state: TrainState) -> jax.Array:
        """h in the IGR terms and in t = step·h."""
        return state.hyper.lr

    def eos_threshold(self, lr: float, momentum: float) -> float | None:
        return None

    def check_model(self, stateful: bool, stochastic: bool) -> None:
        """Raise (``ModelError``) if this dynamics is undefined for a model with BatchNorm
        (``stateful``) or dropout (``stochastic``); called by ``prepare`` before compiling."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "batch_size": self.batch_size}
