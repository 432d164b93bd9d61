"""Discrete methods driven by optax: GD, SGD, heavy ball, Nesterov, Adam, EGR and any user
``optax.GradientTransformation`` (docs/science.md#dynamics)."""

from __future__ import annotations

import inspect
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ..errors import OptimizerError
from .base import AbstractDynamics, Data, Hyper, TrainState, _keep, epoch_permutation, minibatch_indices

NAMED_DISCRETE = ("gd", "sgd", "momentum", "nesterov", "adam")
LABEL_NOISE_STREAM = 0x1AB1  # folded into the model key: label noise has its own key stream


def label_noise_targets(key, y, delta, num_classes: int):
    """Noisy targets of label-noise SGD (Blanc et al. 2020; Damian, Ma & Lee 2021).

    Regression (``num_classes`` = 0): ỹ = y + δ·ε, ε ~ N(0, I) of y's shape. Classification:
    with probability δ a label is replaced by a class drawn uniformly from the K − 1 *other*
    classes, ỹ = (y + r) mod K, r ~ U{1, …, K−1}; otherwise ỹ = y. δ = 0 gives y exactly."""
    delta = jnp.asarray(delta)
    if num_classes:
        k_flip, k_class = jax.random.split(key)
        flip = jax.random.uniform(k_flip, y.shape, delta.dtype) < delta
        shift = jax.random.randint(k_class, y.shape, 1, max(num_classes, 2), y.dtype)
        return jnp.where(flip, (y + shift) % num_classes, y)
    return y + delta.astype(y.dtype) * jax.random.normal(key, y.shape, y.dtype)


def _preset_names() -> tuple[str, ...]:
    from . import NAMED  # the whole family's names (the package imports this module)

    return NAMED


class Optax(AbstractDynamics):
    """Any ``optax.GradientTransformation`` on full-batch (``batch_size=None``) or minibatch
    gradients; with ``label_noise`` the gradients are those of noisy targets drawn afresh each
    step (``label_noise_targets``, δ = ``Hyper.label_noise``: label-noise SGD). ``traced`` maps
    optax hyper-parameter names (of ``inject_hyperparams``) to the ``Hyper`` field that sets
    them every step; ``lr``: h for the IGR terms when the transform does not expose its
    learning rate. ``lr_decay``/``lr_decay_every``: the staircase schedule of a traced step size
    (``lr_at``: h_t = h·lr_decay^⌊t/lr_decay_every⌋; 0 = constant, the default).

    Example: ``sgdreg.Optax(optax.adamw(1e-3), "adamw", batch_size=64)`` (``run`` builds this
    from a bare transform and its ``batch_size``)."""

    transform: optax.GradientTransformation
    name: str = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True, default=None)
    egr: bool = eqx.field(static=True, default=False)
    traced: tuple[tuple[str, str], ...] = eqx.field(static=True, default=())
    lr: float | None = eqx.field(static=True, default=None)
    preset: str | None = eqx.field(static=True, default=None)
    label_noise: bool = eqx.field(static=True, default=False)
    lr_decay: float = eqx.field(static=True, default=1.0)
    lr_decay_every: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not isinstance(self.transform, optax.GradientTransformation):
            raise OptimizerError(f"optimizer: {type(self.transform).__name__} is not an "
                                 "optax.GradientTransformation; give one (e.g. optax.adamw(1e-3)) "
                                 f"or a name: {', '.join(_preset_names())}")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptimizerError(f"batch_size must be ≥ 1 or None (full batch), got "
                                 f"{self.batch_size}")
        if not (0 < self.lr_decay <= 1 and self.lr_decay_every >= 0):
            raise OptimizerError(f"lr_decay must be in (0, 1] and lr_decay_every ≥ 0, got "
                                 f"{self.lr_decay} and {self.lr_decay_every}")

    @property
    def scheduled(self) -> bool:
        """Whether the step size decays (``lr_at``)."""
        return bool(self.lr_decay_every) and self.lr_decay != 1

    def lr_at(self, h, step):
        """The step size of update ``step`` (t = 0, 1, …): h_t = h·lr_decay^⌊t/lr_decay_every⌋,
        the staircase exponential schedule (Zhang et al. 2017: ×0.95 per epoch; optax's
        ``exponential_decay(h, every, lr_decay, staircase=True)``); h when not ``scheduled``.

        Under a schedule every h-dependent number at a logged step t uses the current h_t, the
        step size of the update that leaves θ_t: the IGR terms (h_t/4)‖∇L‖² and the modified
        losses, and the edge-of-stability thresholds 2/h_t, 2(1+β)/h_t, … (the curvature probe
        rescales them, ``CurvatureProbe.lr_decay``), Adam's preconditioned one too. The trace's
        ``t`` column stays step·h (the initial h): t aligns discrete runs with flows, which
        have no schedule."""
        if not self.scheduled:
            return h
        k = jnp.asarray(step) // self.lr_decay_every
        return h * jnp.asarray(self.lr_decay, h.dtype) ** k.astype(h.dtype)

    def init(self, params, hyper: Hyper):
        return self._set_hyper(self.transform.init(params), hyper, 0)

    def _set_hyper(self, opt_state, hyper: Hyper, step=0):
        """The traced hyper-parameters of update ``step`` into the optax state (step size h_t
        of ``lr_at``)."""
        if not self.traced:
            return opt_state
        hp = dict(opt_state.hyperparams)
        for name, field in self.traced:
            v = getattr(hyper, field)
            hp[name] = self.lr_at(v, step) if field == "lr" else v
        return opt_state._replace(hyperparams=hp)

    def step_size(self, state: TrainState) -> jax.Array:
        hp = getattr(state.opt_state, "hyperparams", None)
        if hp is not None and "learning_rate" in hp:
            return jnp.asarray(hp["learning_rate"], state.hyper.lr.dtype)
        if self.lr is not None:
            return jnp.asarray(self.lr, state.hyper.lr.dtype)
        return state.hyper.lr if self.preset else jnp.full((), jnp.nan, state.hyper.lr.dtype)

    def eos_threshold(self, lr: float, momentum: float) -> float | None:
        """Cohen et al. 2021 (docs/science.md#curvature): GD/SGD 2/h, heavy ball 2(1+β)/h, Nesterov
        (2+2β)/((1+2β)h); none for Adam, whose threshold (2+2β1)/((1−β1)h) (38/h at β1 = 0.9)
        bounds the *preconditioned* sharpness (recorded as ``preconditioned_eos_threshold``)."""
        return eos_threshold(self.preset or "", lr, momentum)

    def describe(self) -> dict[str, Any]:
        sched = {"lr_schedule": {"kind": "staircase exponential", "lr_decay": self.lr_decay,
                                 "lr_decay_every": self.lr_decay_every,
                                 "formula": "h_t = h * lr_decay ** floor(t / lr_decay_every)"}
                 } if self.scheduled else {}
        return {"name": self.name, "kind": "optax", "preset": self.preset,
                "batch_size": self.batch_size, "egr": self.egr,
                "label_noise": self.label_noise,
                "traced_hyperparameters": [n for n, _ in self.traced],
                "transform": self.preset or _describe_transform(self.transform), **sched}

    def _batch(self, state: TrainState, data: Data, step):
        """(x, y, perm) of this step: the whole training set, or minibatch k of the epoch."""
        if self.full_batch:
            return data.x_train, data.y_train, state.perm
        n = data.x_train.shape[0]
        m = n // self.batch_size
        epoch, k = step // m, step % m
        perm = jax.lax.cond(k == 0,
                            lambda: epoch_permutation(jax.random.wrap_key_data(state.data_key),
                                                      epoch, n).astype(jnp.int32),
                            lambda: state.perm)
        idx = minibatch_indices(perm, k, self.batch_size, m)
        return data.x_train[idx], data.y_train[idx], perm

    def targets(self, state: TrainState, problem, y, step):
        """The batch targets this step trains on: y, or with ``label_noise`` the noisy ỹ of
        ``label_noise_targets`` with δ = ``state.hyper.label_noise`` and the key
        fold_in(fold_in(model key, LABEL_NOISE_STREAM), step): a function of the seed and the
        step only (not of the minibatch order's data key, nor of the dropout keys)."""
        if not self.label_noise:
            return y
        key = jax.random.fold_in(jax.random.fold_in(
            jax.random.wrap_key_data(state.model_key), LABEL_NOISE_STREAM), step)
        return label_noise_targets(key, y, state.hyper.label_noise,
                                   problem.objective.num_classes)

    def step(self, state: TrainState, problem, data: Data, step):
        """One update at the group's step ``step``; a frozen run is returned unchanged."""
        x, y, perm = self._batch(state, data, step)
        y = self.targets(state, problem, y, step)
        key = (jax.random.fold_in(jax.random.wrap_key_data(state.model_key), step)
               if problem.objective.stochastic else None)  # dropout keys only when used
        loss, g, model_state = problem.training_gradient(state.params, state.model_state, x, y,
                                                         key, state.hyper.egr, self.egr)
        opt_state = self._set_hyper(state.opt_state, state.hyper, step)
        updates, opt_state = self.transform.update(g, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if self.scheduled:  # the state holds the next update's h (``step_size``: h_t at θ_t)
            opt_state = self._set_hyper(opt_state, state.hyper, step + 1)
        ok = jnp.isfinite(loss) & state.running
        return TrainState(
            step=jnp.where(ok, step + 1, state.step).astype(jnp.int32),
            params=_keep(ok, params, state.params),
            opt_state=_keep(ok, opt_state, state.opt_state),
            model_state=_keep(ok, model_state, state.model_state),
            perm=perm,
            data_key=state.data_key, model_key=state.model_key,
            diverged_at=jnp.where(ok | ~state.running, state.diverged_at, step).astype(jnp.int32),
            failed=state.failed, hyper=state.hyper, stopped=state.stopped)

    def advance(self, state: TrainState, problem, data: Data, step0, num_steps):
        """``num_steps`` updates in one ``fori_loop``. The step counter passed to ``step`` is the
        group's (unbatched under vmap), so the epoch reshuffle stays a real ``lax.cond``."""
        state = jax.lax.fori_loop(0, num_steps, lambda i, s: self.step(s, problem, data, step0 + i),
                                  state)  # a Python-int num_steps gives a fixed-length loop
        return state, {}


def _free(fn) -> dict:
    try:
        return inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        return {}


def _describe_transform(tx) -> str:
    """An optax transform as given, read from its closures (no memory addresses), e.g.
    ``inject_hyperparams(adamw)(learning_rate=<schedule>, weight_decay=0.0001, ...)`` or
    ``chain(scale_by_adam(b1=0.9, ...), add_decayed_weights(weight_decay=0.0001), ...)``."""
    init = _free(tx.init)
    if "inner_factory" in init:
        hps = {**init.get("numeric_hps", {}), **dict.fromkeys(init.get("sched_hps", {}),
                                                               "<schedule>")}
        args = ", ".join(f"{k}={v}" for k, v in hps.items())
        return f"inject_hyperparams({init['inner_factory'].__name__})({args})"
    return _describe_update(tx.update)


def _describe_update(fn) -> str:
    free = _free(fn)
    if isinstance(free.get("tx"), optax.GradientTransformation):  # with_extra_args_support
        return _describe_transform(free["tx"])
    if "update_fns" in free:
        return f"chain({', '.join(_describe_update(f) for f in free['update_fns'])})"
    args = ", ".join(f"{k}={v!r}" for k, v in free.items()
                     if v is None or isinstance(v, (bool, int, float, str)))
    return f"{getattr(fn, '__qualname__', type(fn).__name__).split('.<locals>')[0]}({args})"


def from_transform(tx: optax.GradientTransformation, *, batch_size: int | None = None,
                   lr: float | None = None, name: str | None = None) -> Optax:
    """A user's optax transformation as a dynamics. With ``optax.inject_hyperparams`` and a
    numeric ``learning_rate`` and an explicit ``lr`` the step size is traced (set from the
    run's ``lr``, so lr sweeps do not recompile); with a schedule its current value is read back
    for the IGR terms. Without injected hyper-parameters h = ``lr`` (NaN when not given)."""
    if not isinstance(tx, optax.GradientTransformation):
        raise OptimizerError(f"optimizer: {type(tx).__name__} is not an "
                             "optax.GradientTransformation (or a name: "
                             + ", ".join(_preset_names()) + ")")
    traced: tuple = ()
    hp = getattr(jax.eval_shape(tx.init, {"w": jnp.zeros(1)}), "hyperparams", None)
    if lr is not None and hp is not None and "learning_rate" in hp:
        traced = (("learning_rate", "lr"),)  # a schedule, if any, overrides it at each update
    # a traced step size is read back from the optimizer state: no static copy (it would
    # recompile every new lr)
    return Optax(tx, name or "optax", batch_size, False, traced, lr=None if traced else lr)


def eos_threshold(optimizer: str, lr: float, momentum: float) -> float | None:
    """Edge-of-stability reference for λ_max (Cohen et al. 2021; docs/science.md#curvature): GD/SGD 2/h,
    heavy ball 2(1+β)/h, Nesterov (2+2β)/((1+2β)h); none for flows, user transforms and Adam,
    whose raw λ_max has no threshold: its (2+2β1)/((1−β1)h) (38/h at β1 = 0.9, Cohen et al. 2022)
    bounds the preconditioned sharpness λ_max(P⁻¹H), which the curvature probe records with it
    (``preconditioned_sharpness``, ``preconditioned_eos_threshold``)."""
    if optimizer in ("gd", "sgd"):
        return 2.0 / lr
    if optimizer == "momentum":
        return 2.0 * (1 + momentum) / lr
    if optimizer == "nesterov":
        return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr)
    return None
