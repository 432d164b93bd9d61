"""The dynamics family (SCIENCE.md §1): discrete optax-driven methods and continuous flows.

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

import abc
import functools
import inspect
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .batching import full_batch_hvp, full_batch_value_and_grad
from .errors import OptimizerError

NAMED = ("gd", "sgd", "momentum", "nesterov", "adam", "flow", "modified-flow")
FLOW_MAX_STEPS = 100_000


class Hyper(eqx.Module):
    """Traced numeric hyper-parameters: step size h, momentum β (Adam: b1), EGR strength μ."""

    lr: jax.Array
    momentum: jax.Array
    egr: jax.Array


class Data(eqx.Module):
    """Device arrays of one dataset (traced under jit)."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class TrainState(eqx.Module):
    """State of one run. PRNG keys are stored as raw key data (serialisable, vmappable).
    ``diverged_at`` is −1 until the loss turns non-finite; ``failed`` marks a flow solver that
    stopped early. From either on the run is frozen, so it never disturbs a vmapped batch."""

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

    @property
    def running(self) -> jax.Array:
        return (self.diverged_at < 0) & ~self.failed


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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "batch_size": self.batch_size}


# ---------------------------------------------------------------- discrete (optax)


class Optax(AbstractDynamics):
    """Any ``optax.GradientTransformation`` on full-batch (``batch_size=None``) or minibatch
    gradients. ``traced`` maps optax hyper-parameter names (of ``inject_hyperparams``) to the
    ``Hyper`` field that sets them every step; ``lr``: h for the IGR terms when the transform
    does not expose its learning rate.

    Example: ``sgdreg.Optax(optax.adamw(1e-3), "adamw", batch_size=64)`` (``run`` builds this
    from a bare transform and its ``batch_size``)."""

    transform: optax.GradientTransformation
    name: str = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True, default=None)
    egr: bool = eqx.field(static=True, default=False)
    traced: tuple[tuple[str, str], ...] = eqx.field(static=True, default=())
    lr: float | None = eqx.field(static=True, default=None)
    preset: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.transform, optax.GradientTransformation):
            raise OptimizerError(f"optimizer: {type(self.transform).__name__} is not an "
                                 "optax.GradientTransformation; give one (e.g. optax.adamw(1e-3)) "
                                 f"or a name: {', '.join(NAMED)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptimizerError(f"batch_size must be ≥ 1 or None (full batch), got "
                                 f"{self.batch_size}")

    def init(self, params, hyper: Hyper):
        return self._set_hyper(self.transform.init(params), hyper)

    def _set_hyper(self, opt_state, hyper: Hyper):
        if not self.traced:
            return opt_state
        hp = dict(opt_state.hyperparams)
        for name, field in self.traced:
            hp[name] = getattr(hyper, field)
        return opt_state._replace(hyperparams=hp)

    def step_size(self, state: TrainState) -> jax.Array:
        hp = getattr(state.opt_state, "hyperparams", None)
        if hp is not None and "learning_rate" in hp:
            return jnp.asarray(hp["learning_rate"], state.hyper.lr.dtype)
        if self.lr is not None:
            return jnp.asarray(self.lr, state.hyper.lr.dtype)
        return state.hyper.lr if self.preset else jnp.full((), jnp.nan, state.hyper.lr.dtype)

    def eos_threshold(self, lr: float, momentum: float) -> float | None:
        """Cohen et al. 2021 (SCIENCE.md §3): GD/SGD 2/h, heavy ball 2(1+β)/h, Nesterov
        (2+2β)/((1+2β)h), Adam 38/h (β1 = 0.9; for the preconditioned sharpness)."""
        return eos_threshold(self.preset or "", lr, momentum)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "optax", "preset": self.preset,
                "batch_size": self.batch_size, "egr": self.egr,
                "traced_hyperparameters": [n for n, _ in self.traced],
                "transform": self.preset or _describe_transform(self.transform)}

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

    def step(self, state: TrainState, problem, data: Data, step):
        """One update at the group's step ``step``; a frozen run is returned unchanged."""
        x, y, perm = self._batch(state, data, step)
        key = (jax.random.fold_in(jax.random.wrap_key_data(state.model_key), step)
               if problem.objective.stochastic else None)  # dropout keys only when used
        loss, g, model_state = problem.training_gradient(state.params, state.model_state, x, y,
                                                         key, state.hyper.egr, self.egr)
        opt_state = self._set_hyper(state.opt_state, state.hyper)
        updates, opt_state = self.transform.update(g, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & state.running
        return TrainState(
            step=jnp.where(ok, step + 1, state.step).astype(jnp.int32),
            params=_keep(ok, params, state.params),
            opt_state=_keep(ok, opt_state, state.opt_state),
            model_state=_keep(ok, model_state, state.model_state),
            perm=perm,
            data_key=state.data_key, model_key=state.model_key,
            diverged_at=jnp.where(ok | ~state.running, state.diverged_at, step).astype(jnp.int32),
            failed=state.failed, hyper=state.hyper)

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


@functools.cache
def named(name: str, *, batch_size: int | None = None, egr: bool = False) -> AbstractDynamics:
    """The preset dynamics ``name`` (one of ``NAMED``), hyper-parameters traced from ``Hyper``.
    gd and the flows are full batch; sgd/momentum/nesterov/adam use ``batch_size`` (None: full
    batch). Cached: equal arguments give the same object, so runs share one compilation.

    Example: ``sgdreg.run(model, data, sgdreg.named("sgd", batch_size=64), lr=0.05)``."""
    if name == "gd":
        return Optax(optax.inject_hyperparams(optax.sgd)(learning_rate=1.0), "gd", None, egr,
                     (("learning_rate", "lr"),), preset="gd")
    if name == "sgd":
        return Optax(optax.inject_hyperparams(optax.sgd)(learning_rate=1.0), "sgd", batch_size,
                     egr, (("learning_rate", "lr"),), preset="sgd")
    if name in ("momentum", "nesterov"):
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0, momentum=0.9,
                                                 nesterov=name == "nesterov")
        return Optax(tx, name, batch_size, egr, (("learning_rate", "lr"), ("momentum", "momentum")),
                     preset=name)
    if name == "adam":
        tx = optax.inject_hyperparams(optax.adam)(learning_rate=1.0, b1=0.9)
        return Optax(tx, "adam", batch_size, egr, (("learning_rate", "lr"), ("b1", "momentum")),
                     preset="adam")
    if name == "flow":
        return GradientFlow()
    if name == "modified-flow":
        return ModifiedFlow()
    raise OptimizerError(f"optimizer: unknown {name!r}; allowed: {', '.join(NAMED)} or an "
                         "optax.GradientTransformation")


def from_transform(tx: optax.GradientTransformation, *, batch_size: int | None = None,
                   lr: float | None = None, name: str | None = None) -> Optax:
    """A user's optax transformation as a dynamics. With ``optax.inject_hyperparams`` and a
    numeric ``learning_rate`` and an explicit ``lr`` the step size is traced (set from the
    run's ``lr``, so lr sweeps do not recompile); with a schedule its current value is read back
    for the IGR terms. Without injected hyper-parameters h = ``lr`` (NaN when not given)."""
    if not isinstance(tx, optax.GradientTransformation):
        raise OptimizerError(f"optimizer: {type(tx).__name__} is not an "
                             "optax.GradientTransformation (or a name: " + ", ".join(NAMED) + ")")
    traced: tuple = ()
    hp = getattr(jax.eval_shape(tx.init, {"w": jnp.zeros(1)}), "hyperparams", None)
    if lr is not None and hp is not None and "learning_rate" in hp:
        traced = (("learning_rate", "lr"),)  # a schedule, if any, overrides it at each update
    # a traced step size is read back from the optimizer state: no static copy (it would
    # recompile every new lr)
    return Optax(tx, name or "optax", batch_size, False, traced, lr=None if traced else lr)


def eos_threshold(optimizer: str, lr: float, momentum: float) -> float | None:
    """Edge-of-stability reference for λ_max (Cohen et al. 2021; SCIENCE.md §3): GD/SGD 2/h,
    heavy ball 2(1+β)/h, Nesterov (2+2β)/((1+2β)h), Adam 38/h (β1 = 0.9, for the
    *preconditioned* sharpness, recorded for reference); none for flows and user transforms."""
    if optimizer in ("gd", "sgd"):
        return 2.0 / lr
    if optimizer == "momentum":
        return 2.0 * (1 + momentum) / lr
    if optimizer == "nesterov":
        return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr)
    if optimizer == "adam":
        return 38.0 / lr
    return None


# ---------------------------------------------------------------- flows (diffrax)


class GradientFlow(AbstractDynamics):
    """dθ/dt = −∇L (full batch, inference-mode objective), adaptive Tsit5 with a PID
    controller; t = step·h so flows log at the times of a step-h method.

    Example: ``sgdreg.run(model, data, sgdreg.GradientFlow(rtol=1e-7, atol=1e-9), lr=0.1)``."""

    rtol: float = eqx.field(static=True, default=1e-5)
    atol: float = eqx.field(static=True, default=1e-7)
    max_steps: int = eqx.field(static=True, default=FLOW_MAX_STEPS)
    name: str = eqx.field(static=True, default="flow")
    batch_size: None = eqx.field(static=True, default=None)
    is_flow: ClassVar[bool] = True
    modified: ClassVar[bool] = False

    def __check_init__(self):
        if not (self.rtol > 0 and self.atol > 0):
            raise OptimizerError(f"rtol and atol must be > 0, got {self.rtol}, {self.atol}")

    def init(self, params, hyper: Hyper):
        return None

    def field(self, problem, data: Data):
        """−∇L (plain) or −(g + (h/2)Hg) (modified, h = args)."""
        obj, x, y, chunk = problem.objective, data.x_train, data.y_train, problem.eval_chunk

        def f(t, params, h):
            _, g = full_batch_value_and_grad(obj.example_loss, params, x, y, chunk)
            if self.modified:
                hg = full_batch_hvp(obj.example_loss, params, x, y, g, chunk)
                g = jax.tree.map(lambda a, b: a + 0.5 * h * b, g, hg)
            return jax.tree.map(jnp.negative, g)

        return f

    def advance(self, state: TrainState, problem, data: Data, step0, num_steps):
        """One ``diffeqsolve`` over [step0·h, (step0 + n)·h]; a failed or non-finite solve
        freezes the run at its last good state. A frozen run integrates over an empty span (so
        under vmap it costs no solver steps)."""
        import diffrax  # imported on first use: ~0.6 s that runs without a flow never pay

        h = state.hyper.lr
        t0 = h * step0.astype(h.dtype)
        t1 = jnp.where(state.running, h * (step0 + num_steps).astype(h.dtype), t0)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(self.field(problem, data)), diffrax.Tsit5(), t0=t0, t1=t1, dt0=None,
            y0=state.params, args=h, saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            max_steps=self.max_steps, throw=False)
        params = jax.tree.map(lambda a: a[-1], sol.ys)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(params)]))
        solved = sol.result == diffrax.RESULTS.successful
        ok = solved & finite & state.running
        new = eqx.tree_at(lambda s: (s.step, s.params, s.diverged_at, s.failed), state, (
            jnp.where(ok, step0 + num_steps, state.step).astype(jnp.int32),
            _keep(ok, params, state.params),
            jnp.where(state.running & ~finite, step0, state.diverged_at).astype(jnp.int32),
            state.failed | (state.running & finite & ~solved)))
        info = {"solver_steps": sol.stats["num_accepted_steps"],
                "solver_rejected": sol.stats["num_rejected_steps"]}
        return new, info

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "modified-flow" if self.modified else "flow",
                "solver": "Tsit5", "rtol": self.rtol, "atol": self.atol,
                "max_steps": self.max_steps, "batch_size": None}


class ModifiedFlow(GradientFlow):
    """dθ/dt = −∇(L + (h/4)‖∇L‖²) = −(g + (h/2)Hg): the IGR modified flow that GD follows to
    O(h²) (Barrett & Dherin 2021, Theorem 3.1)."""

    name: str = eqx.field(static=True, default="modified-flow")
    modified: ClassVar[bool] = True


def resolve(optimizer: str | AbstractDynamics | optax.GradientTransformation, *,
            batch_size: int | None = None, egr: bool = False, lr: float | None = None,
            rtol: float = 1e-5, atol: float = 1e-7) -> AbstractDynamics:
    """A dynamics from a name, an ``AbstractDynamics`` or an optax transformation."""
    if isinstance(optimizer, AbstractDynamics):
        return optimizer
    if isinstance(optimizer, optax.GradientTransformation):
        return from_transform(optimizer, batch_size=batch_size, lr=lr)
    if isinstance(optimizer, str):
        if optimizer in ("flow", "modified-flow"):
            cls = GradientFlow if optimizer == "flow" else ModifiedFlow
            return cls(rtol=rtol, atol=atol)
        return named(optimizer, batch_size=batch_size, egr=egr)
    raise OptimizerError(f"optimizer: {type(optimizer).__name__} is neither a name "
                         f"({', '.join(NAMED)}) nor an optax.GradientTransformation")

