"""The dynamics family (docs/science.md#dynamics): discrete optax-driven methods and continuous flows.

Every member is an Equinox module that owns what used to be a string branch: whether it is
full batch, its state, one chunk of its evolution and its edge-of-stability threshold. One
loop (``engine.advance``) drives them all; a sweep vmaps the same loop over runs.

* ``Optax(transform, batch_size=None)``: θ ← θ + update(g), g = ∇L̂ on the full batch
  (``batch_size=None``) or on minibatches of size B drawn without replacement, reshuffled each
  epoch from ``fold_in(data_key, epoch)`` (last partial batch dropped: m = ⌊n/B⌋). With ``egr``
  the gradient is that of L + μ‖∇L‖²: g + 2μ·Hg (Barrett & Dherin 2021). Named presets:
  gd/sgd = ``optax.sgd``, momentum = heavy ball ``sgd(momentum=β)`` (v ← βv + g, θ ← θ − hv),
  nesterov, adam; any ``optax.GradientTransformation`` (schedules and chains too) is accepted.
* ``GradientFlow``: dθ/dt = −∇L; ``ModifiedFlow``: dθ/dt = −(g + (h/2)Hg) = −∇(L + (h/4)‖∇L‖²)
  (Barrett & Dherin 2021), Tsit5 + PID, one ``diffeqsolve`` per chunk (``SaveAt(t1=True)``),
  t = step·h. Flows integrate the inference-mode objective (frozen BatchNorm, no dropout).

Numeric hyper-parameters live in ``Hyper`` (traced): h, β (momentum, or Adam's b1) and the
EGR strength μ, so a new value never recompiles and runs can be vmapped. A user transform gets
its step size traced when built with ``optax.inject_hyperparams`` and a numeric learning rate.
"""

from __future__ import annotations

import functools

import optax

from ..errors import OptimizerError
from .base import AbstractDynamics, Data, Hyper, TrainState, epoch_permutation, minibatch_indices
from .central import CentralFlow
from .discrete import NAMED_DISCRETE, Optax, eos_threshold, from_transform
from .flows import FLOW_MAX_STEPS, GradientFlow, ModifiedFlow
from .sde import SGDSDE, SVAG

NAMED = (*NAMED_DISCRETE, "flow", "modified-flow", "central-flow", "sde", "svag")

__all__ = ["AbstractDynamics", "Data", "Hyper", "TrainState", "Optax", "GradientFlow",
           "ModifiedFlow", "CentralFlow", "SGDSDE", "SVAG", "named", "resolve", "from_transform",
           "eos_threshold",
           "epoch_permutation", "minibatch_indices", "NAMED", "FLOW_MAX_STEPS"]


@functools.cache
def named(name: str, *, batch_size: int | None = None, egr: bool = False,
          label_noise: bool = False, eigs: int = 3, amplification: int = 8,
          lr_decay: float = 1.0, lr_decay_every: int = 0) -> AbstractDynamics:
    """The preset dynamics ``name`` (one of ``NAMED``), hyper-parameters traced from ``Hyper``.
    gd and the flows are full batch; sgd/momentum/nesterov/adam use ``batch_size`` (None: full
    batch), as do the SDE of SGD and SVAG (the batch size B they model). ``label_noise``: the
    discrete methods draw noisy targets each step (strength ``Hyper.label_noise``); ``eigs``:
    eigenvalues the central flow tracks; ``amplification``: SVAG's ℓ. ``lr_decay``/
    ``lr_decay_every`` (discrete methods): the staircase schedule h_t = h·lr_decay^⌊t/every⌋
    (``Optax.lr_at``; 0 = constant h). Cached: equal arguments give the same object, so runs
    share one compilation.

    Example: ``sgdreg.run(model, data, sgdreg.named("sgd", batch_size=64), lr=0.05)``."""
    ln = {"label_noise": True} if label_noise else {}
    if label_noise and name not in NAMED_DISCRETE:
        raise OptimizerError(f"label_noise: only the discrete methods ({', '.join(NAMED_DISCRETE)}) "
                             f"draw noisy labels, not {name!r}")
    if lr_decay_every and lr_decay != 1:
        if name not in NAMED_DISCRETE:
            raise OptimizerError(f"lr_decay: the step-size schedule is for the discrete methods "
                                 f"({', '.join(NAMED_DISCRETE)}), not {name!r}")
        ln |= {"lr_decay": float(lr_decay), "lr_decay_every": int(lr_decay_every)}
    if name == "gd":
        return Optax(optax.inject_hyperparams(optax.sgd)(learning_rate=1.0), "gd", None, egr,
                     (("learning_rate", "lr"),), preset="gd", **ln)
    if name == "sgd":
        return Optax(optax.inject_hyperparams(optax.sgd)(learning_rate=1.0), "sgd", batch_size,
                     egr, (("learning_rate", "lr"),), preset="sgd", **ln)
    if name in ("momentum", "nesterov"):
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0, momentum=0.9,
                                                 nesterov=name == "nesterov")
        return Optax(tx, name, batch_size, egr, (("learning_rate", "lr"), ("momentum", "momentum")),
                     preset=name, **ln)
    if name == "adam":
        tx = optax.inject_hyperparams(optax.adam)(learning_rate=1.0, b1=0.9)
        return Optax(tx, "adam", batch_size, egr, (("learning_rate", "lr"), ("b1", "momentum")),
                     preset="adam", **ln)
    if name == "flow":
        return GradientFlow()
    if name == "modified-flow":
        return ModifiedFlow()
    if name == "central-flow":
        return CentralFlow(eigs=eigs)
    if name == "sde":
        return SGDSDE(batch_size=batch_size)
    if name == "svag":
        return SVAG(batch_size=batch_size, amplification=amplification)
    raise OptimizerError(f"optimizer: unknown {name!r}; allowed: {', '.join(NAMED)} or an "
                         "optax.GradientTransformation")


def resolve(optimizer: str | AbstractDynamics | optax.GradientTransformation, *,
            batch_size: int | None = None, egr: bool = False, lr: float | None = None,
            rtol: float = 1e-5, atol: float = 1e-7, **options) -> AbstractDynamics:
    """A dynamics from a name, an ``AbstractDynamics`` or an optax transformation; ``options``
    (``label_noise``, ``eigs``, ``amplification``, ``lr_decay``, ``lr_decay_every``) go to
    ``named``."""
    if isinstance(optimizer, AbstractDynamics):
        return optimizer
    if isinstance(optimizer, optax.GradientTransformation):
        return from_transform(optimizer, batch_size=batch_size, lr=lr)
    if isinstance(optimizer, str):
        if optimizer in ("flow", "modified-flow"):
            if options.get("lr_decay_every") and options.get("lr_decay", 1.0) != 1:
                raise OptimizerError(f"lr_decay: the step-size schedule is for the discrete "
                                     f"methods ({', '.join(NAMED_DISCRETE)}), not {optimizer!r}")
            cls = GradientFlow if optimizer == "flow" else ModifiedFlow
            return cls(rtol=rtol, atol=atol)
        return named(optimizer, batch_size=batch_size, egr=egr, **options)
    raise OptimizerError(f"optimizer: {type(optimizer).__name__} is neither a name "
                         f"({', '.join(NAMED)}) nor an optax.GradientTransformation")
