"""Training dynamics (SCIENCE.md §1): GD, SGD, heavy ball, Nesterov, Adam (optax) and the
gradient flow / modified IGR flow (diffrax), all from one ``Problem`` and one θ0.

Every numeric hyper-parameter (lr, momentum, EGR strength μ) is a traced value in
``Hyper``, so a new value never recompiles and runs can be vmapped.

* GD: θ ← θ − h∇L(θ) (full batch, chunked).
* SGD: θ ← θ − h∇L̂_k(θ), minibatches of size B drawn without replacement, reshuffled each
  epoch from ``fold_in(data_key, epoch)`` (last partial batch dropped: m = ⌊n/B⌋).
* momentum: optax ``sgd(momentum=β)``: v ← βv + g, θ ← θ − hv; nesterov: ``sgd(nesterov=True)``;
  adam: ``optax.adam`` — all on minibatches (B = n makes them full batch).
* EGR (Barrett & Dherin 2021): train on L + μ‖∇L‖², gradient g + 2μ·Hg (one HVP); μ = h/4
  mimics GD's implicit term. On minibatches the penalty uses the minibatch gradient.
* flow: dθ/dt = −∇L; modified-flow: dθ/dt = −(g + (h/2)Hg) = −∇(L + (h/4)‖∇L‖²);
  Tsit5 with a PID step-size controller.
"""

from __future__ import annotations

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .batching import full_batch_hvp, full_batch_value_and_grad
from .losses import Objective


class Data(eqx.Module):
    """Device arrays of one dataset (traced under jit)."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class Hyper(eqx.Module):
    """Traced numeric hyper-parameters: step size h, momentum β, EGR strength μ."""

    lr: jax.Array
    momentum: jax.Array
    egr: jax.Array


class Problem(eqx.Module):
    """What to optimise and how: the objective plus the method's static choices."""

    objective: Objective
    optimizer: str = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    eval_chunk: int = eqx.field(static=True)
    use_egr: bool = eqx.field(static=True)

    @property
    def full_batch(self) -> bool:
        return self.optimizer in ("gd", "flow", "modified-flow")


class TrainState(eqx.Module):
    """State of a discrete run. ``diverged_at`` is −1 until the loss turns non-finite; from then
    on the run is frozen (so a diverging run never disturbs others in a vmapped batch)."""

    step: jax.Array
    params: eqx.Module
    opt_state: optax.OptState
    perm: jax.Array
    data_key: jax.Array
    diverged_at: jax.Array
    hyper: Hyper


@functools.cache
def make_optimizer(name: str) -> optax.GradientTransformation:
    """The optax transformation for ``name``, hyper-parameters injected (set from ``Hyper``)."""
    if name in ("gd", "sgd"):
        return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    if name == "momentum":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0, momentum=0.9)
    if name == "nesterov":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0, momentum=0.9, nesterov=True)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=1.0, b1=0.9)
    raise ValueError(f"{name!r} is not a discrete optimizer")


def _set_hyper(opt_state, name: str, hyper: Hyper):
    hp = dict(opt_state.hyperparams)
    hp["learning_rate"] = hyper.lr
    if name in ("momentum", "nesterov"):
        hp["momentum"] = hyper.momentum
    if name == "adam":
        hp["b1"] = hyper.momentum
    return opt_state._replace(hyperparams=hp)


def epoch_permutation(data_key, epoch, n: int):
    """The data order of one epoch: a function of the seed's data key and the epoch only."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), n)


def init_state(problem: Problem, params, hyper: Hyper, data_key, n: int) -> TrainState:
    opt_state = None
    if problem.optimizer not in ("flow", "modified-flow"):
        opt = make_optimizer(problem.optimizer)
        opt_state = _set_hyper(opt.init(params), problem.optimizer, hyper)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        perm=epoch_permutation(data_key, 0, n).astype(jnp.int32),
        data_key=data_key,
        diverged_at=jnp.full((), -1, jnp.int32),
        hyper=hyper,
    )


def minibatch_indices(perm, k, batch_size: int, m: int):
    """Indices of minibatch k mod m of the epoch ordered by ``perm``."""
    return jax.lax.dynamic_slice(perm, ((k % m) * batch_size,), (batch_size,))


def training_gradient(problem: Problem, params, x, y, egr):
    """(L, ∇) of the training objective on (x, y): L, plus μ‖∇L‖² when EGR is on."""
    obj = problem.objective
    loss, g = full_batch_value_and_grad(obj.example_loss, params, x, y, problem.eval_chunk)
    if problem.use_egr:
        hg = full_batch_hvp(obj.example_loss, params, x, y, g, problem.eval_chunk)
        g = jax.tree.map(lambda a, b: a + 2 * egr * b, g, hg)
    return loss, g


def train_step(state: TrainState, problem: Problem, data: Data):
    """One parameter update; returns the new state and the loss at the old iterate."""
    n = data.x_train.shape[0]
    if problem.full_batch:
        x, y = data.x_train, data.y_train
    else:
        m = n // problem.batch_size
        epoch, k = state.step // m, state.step % m
        perm = jax.lax.cond(
            k == 0,
            lambda: epoch_permutation(state.data_key, epoch, n).astype(jnp.int32),
            lambda: state.perm,
        )
        state = eqx.tree_at(lambda s: s.perm, state, perm)
        idx = minibatch_indices(perm, k, problem.batch_size, m)
        x, y = data.x_train[idx], data.y_train[idx]
    loss, g = training_gradient(problem, state.params, x, y, state.hyper.egr)
    opt = make_optimizer(problem.optimizer)
    opt_state = _set_hyper(state.opt_state, problem.optimizer, state.hyper)
    updates, opt_state = opt.update(g, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & (state.diverged_at < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new = TrainState(
        step=state.step + ok.astype(jnp.int32),
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        perm=state.perm,
        data_key=state.data_key,
        diverged_at=jnp.where(ok | (state.diverged_at >= 0), state.diverged_at, state.step),
        hyper=state.hyper,
    )
    return new, loss


def flow_field(problem: Problem, data: Data):
    """Vector field of the plain (−∇L) or modified (−(g + (h/2)Hg)) gradient flow."""
    obj, x, y = problem.objective, data.x_train, data.y_train

    def field(t, params, h):
        _, g = full_batch_value_and_grad(obj.example_loss, params, x, y, problem.eval_chunk)
        if problem.optimizer == "modified-flow":
            hg = full_batch_hvp(obj.example_loss, params, x, y, g, problem.eval_chunk)
            g = jax.tree.map(lambda a, b: a + 0.5 * h * b, g, hg)
        return jax.tree.map(jnp.negative, g)

    return field


def flow_segment(params, t0, t1, h, problem: Problem, data: Data, rtol, atol, max_steps: int):
    """Integrate the flow from t0 to t1 (adaptive Tsit5 + PID); returns (θ(t1), steps, ok)."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flow_field(problem, data)),
        diffrax.Tsit5(),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=params,
        args=h,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    out = jax.tree.map(lambda a: a[-1], sol.ys)
    ok = sol.result == diffrax.RESULTS.successful
    return out, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"], ok
