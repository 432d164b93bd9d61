"""The SDE of SGD and SVAG (docs/science.md#sde-of-sgd).

**SDE of SGD** (stochastic modified equation; Li, Tai & E 2017, "Stochastic modified equations
and adaptive stochastic gradient algorithms"; validity: Li, Malladi & Arora 2021, "On the
validity of modeling SGD with stochastic differential equations"):

    dθ = −∇L(θ) dt + √(h·Σ_B(θ)) dW,   t = step·h,
    Σ_1 = (1/n) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ   (g_i = ∇ℓ_i, ḡ = ∇L; the 1/n population covariance),
    Σ_B = κ·Σ_1,  κ = (n − B) / (B (n − 1)),

Σ_B being the covariance of the mean gradient of B examples drawn *without replacement*
(finite-population correction; with the 1/(n−1) sample covariance S² the same Σ_B reads
(n − B)/(n B)·S²). The noise is applied matrix-free: with the centred per-example gradient
matrix G_c (n × P), D = √(hκ/n)·G_cᵀ satisfies D Dᵀ = h·Σ_B, and D w = √(hκ/n)·∇_θ Σ_i
(w_i − w̄) ℓ_i(θ) is one weighted gradient (a VJP over chunks of the data) driven by an
n-dimensional Brownian motion; the P × P covariance is never formed.
It is solved with diffrax's Euler–Maruyama (``diffrax.Euler`` on an Itô SDE: the noise is
multiplicative and general, so higher-order Itô solvers for diagonal/commutative/additive noise
do not apply) at the fixed step dt = h/``substeps``. Drift and noise form one control term (a
``diffrax.ControlTerm`` whose vector field is a matrix-free linear map) taking the control
(dt, dW) to ∇_θ Σ_i a_i ℓ_i: one weighted gradient per EM step. Each step of h runs
``substeps`` calls of ``diffrax.Euler.step`` with an ``UnsafeBrownianPath`` keyed by
``fold_in(data_key, step)``, so a run's noise depends on its seed and step only (not on
``log_every``); the fixed-step loop calls the solver's step directly (``diffeqsolve``'s
adaptive machinery, unused at a fixed step, tripled the compile time).
The drift and noise use the inference-mode objective.

**SVAG** (Li, Malladi & Arora 2021, §4): ℓ steps of size h/ℓ per step of h (t = step·h), each
with g = c₁·g_B1 + c₂·g_B2, c₁,₂ = ½(1 ± √(2ℓ − 1)), g_B1, g_B2 the mean gradients of two
independent minibatches of B examples. E g = ∇L and Cov g = (c₁² + c₂²)·Σ_B = ℓ·Σ_B, so over
one step of h the noise has covariance ℓ·(h/ℓ)²·ℓ·Σ_B = h·(h·Σ_B), that of the SDE; SVAG
converges weakly to the SDE as ℓ → ∞ with order 1 in 1/ℓ (their main theorem). Sampling: each
minibatch is a uniform random B-subset (without replacement within a draw), drawn afresh and
independently for every minibatch (i.i.d. over draws, the setting of the paper). ℓ = 1 is SGD
with such i.i.d. minibatches: c₂ = 0 and g = g_B1 (not the epoch reshuffle of ``sgd``, whose
per-epoch noise sums to zero and so has no SDE limit under amplification). A deterministic,
stateless model uses one weighted gradient over the 2B examples.

**BatchNorm and dropout** (docs/science.md#batchnorm-and-dropout). SVAG trains a stateful or
stochastic model in training mode, as its authors' code does (sadhikamalladi/svag,
``pl_modules/exp_modules.py``, ``SDELimit1_CIFAR10_Module.training_step``: two forwards
``self.forward(b1)``, ``self.forward(b2)`` of the model in training mode, loss
c₁·loss₁ + c₂·loss₂): g_Bk = ∇ of the mean training-mode loss of minibatch k with *its own*
batch statistics, and the running statistics advance by B1's forward, then B2's (two updates
per substep; ℓ = 1 draws B1 only: one update, as SGD). Dropout keys: fold_in(fold_in(fold_in(
model_key, salt), step), substep), split in two. The SDE itself is defined by per-example
gradients ∇ℓ_i, which a BatchNorm model in training mode does not have (its examples are
coupled through the batch statistics) and which do not carry dropout's noise: ``SGDSDE``
refuses such models (``check_model``) and points to SVAG, whose ℓ → ∞ limit it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ..batching import DEFAULT_CHUNK
from ..errors import ConfigError, ModelError, OptimizerError
from .base import AbstractDynamics, Data, Hyper, TrainState, _keep

_SDE_SALT = 0x5DE  # the SDE's Brownian increments and SVAG's draws use data_key folded with these
_SVAG_SALT = 0x5A6


def noise_factor(n: int, batch_size: int) -> float:
    """κ = (n − B)/(B(n − 1)): Σ_B = κ·Σ_1 for B of n examples drawn without replacement."""
    if n < 2:
        raise ConfigError(f"the SDE of SGD needs at least 2 training examples, got {n}")
    if not 1 <= batch_size <= n:
        raise ConfigError(f"batch_size must be in 1..{n} (the training examples), got {batch_size}")
    return (n - batch_size) / (batch_size * (n - 1))


def weighted_grad(example_loss, params, x, y, a, chunk_size: int = DEFAULT_CHUNK):
    """∇_θ Σ_i a_i ℓ_i(θ) for a weight vector a (n,), over in-place chunks of the data (memory
    of one chunk; the last chunk is shifted back and its already counted rows masked)."""
    n = x.shape[0]
    chunk = max(1, min(int(chunk_size), n))
    nc = -(-n // chunk)

    def body(acc, j):
        start = jnp.minimum(j * chunk, n - chunk)
        xb = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        yb = jax.lax.dynamic_slice_in_dim(y, start, chunk)
        ab = jax.lax.dynamic_slice_in_dim(a, start, chunk)
        ab = jnp.where(start + jnp.arange(chunk) >= j * chunk, ab, 0)
        g = jax.grad(lambda p: jnp.dot(ab, jax.vmap(example_loss, (None, 0, 0))(p, xb, yb)))(params)
        return jax.tree.map(jnp.add, acc, g), None

    return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), jnp.arange(nc))[0]


class MatrixFree(eqx.Module):
    """A linear map given by its matrix-vector product ``mv``. (Not a lineax
    ``FunctionLinearOperator``: that closure-converts ``mv`` against an unsharded example
    input and then refuses the sharded controls of a sweep.)"""

    fn: Callable

    def mv(self, v):
        return self.fn(v)


@functools.cache
def _control_term_class():
    """``diffrax.ControlTerm`` whose vector field returns a ``MatrixFree`` map (prod = mv);
    built on first use so importing this module does not import diffrax (~0.6 s)."""
    import diffrax

    class MatrixFreeControlTerm(diffrax.AbstractTerm):
        vector_field: Callable
        control: Callable

        def vf(self, t, y, args):
            return self.vector_field(t, y, args)

        def contr(self, t0, t1, **kwargs):
            return self.control(t0, t1)

        def prod(self, vf, control):
            return vf.mv(control)

    return MatrixFreeControlTerm


def increment_operator(example_loss, params, x, y, h, batch_size: int,
                       chunk_size: int = DEFAULT_CHUNK) -> MatrixFree:
    """The Euler–Maruyama increment as one linear map of the control (dt, w) ∈ ℝ × ℝⁿ:
    (dt, w) ↦ −∇L·dt + D w = ∇_θ Σ_i [−dt/n + √(hκ/n)(w_i − w̄)] ℓ_i(θ), where
    D w = √(hκ/n)·G_cᵀ w satisfies D Dᵀ = h·Σ_B (κ = ``noise_factor``): drift and matrix-free
    noise in a single weighted gradient over the data chunks (one pass per EM step)."""
    n = x.shape[0]
    scale = jnp.sqrt(h * noise_factor(n, batch_size) / n)

    def mv(control):
        dt, w = control
        a = scale * (w - jnp.mean(w)) - dt / n
        return weighted_grad(example_loss, params, x, y, a, chunk_size)

    return MatrixFree(mv)


def diffusion_operator(example_loss, params, x, y, h, batch_size: int,
                       chunk_size: int = DEFAULT_CHUNK) -> MatrixFree:
    """The SDE's diffusion D: ℝⁿ → θ-space, D w = √(hκ/n)·Σ_i (w_i − w̄)∇ℓ_i(θ) = √(hκ/n)·G_cᵀw,
    so D Dᵀ = h·Σ_B; matrix-free (``increment_operator`` at dt = 0)."""
    op = increment_operator(example_loss, params, x, y, h, batch_size, chunk_size)
    return MatrixFree(lambda w: op.mv((jnp.zeros((), w.dtype), w)))


def _finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def _commit(state: TrainState, params, step, model_state=None) -> TrainState:
    """The state after one step of h to ``params`` (and ``model_state``, if given): kept if
    finite and running, else frozen (a non-finite result marks ``diverged_at``)."""
    finite = _finite(params)
    ok = finite & state.running
    new = eqx.tree_at(lambda s: (s.step, s.params, s.diverged_at), state, (
        jnp.where(ok, step + 1, state.step).astype(jnp.int32),
        _keep(ok, params, state.params),
        jnp.where(state.running & ~finite, step, state.diverged_at).astype(jnp.int32)))
    if model_state is not None:
        new = eqx.tree_at(lambda s: s.model_state, new,
                          _keep(ok, model_state, state.model_state))
    return new


def _advance(dynamics, state: TrainState, problem, data: Data, step0, num_steps):
    """``num_steps`` calls of ``dynamics.step`` at the group's steps step0, step0 + 1, ..."""
    state = jax.lax.fori_loop(0, num_steps,
                              lambda i, s: dynamics.step(s, problem, data, step0 + i), state)
    return state, {}


class SGDSDE(AbstractDynamics):
    """dθ = −∇L dt + √(h·Σ_B(θ)) dW (Li, Tai & E 2017), Euler–Maruyama at dt = h/``substeps``
    with matrix-free noise (module docstring); ``batch_size``: the B of the SGD it models.

    Example: ``sgdreg.run(model, data, "sde", batch_size=32, lr=0.05)``, or with more substeps
    ``sgdreg.run(model, data, SGDSDE(batch_size=32, substeps=8), lr=0.05)``
    (``from sgdreg.dynamics.sde import SGDSDE``)."""

    batch_size: int = eqx.field(static=True, default=32)
    substeps: int = eqx.field(static=True, default=4)
    name: str = eqx.field(static=True, default="sde")
    is_flow: ClassVar[bool] = True

    def __check_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise OptimizerError(f"batch_size: the SDE of SGD models minibatches of B ≥ 1 "
                                 f"examples, got {self.batch_size!r}")
        if isinstance(self.substeps, bool) or not isinstance(self.substeps, int) \
                or self.substeps < 1:
            raise OptimizerError(f"substeps must be a positive integer, got {self.substeps!r}")

    def init(self, params, hyper: Hyper):
        return None

    def check_model(self, stateful: bool, stochastic: bool) -> None:
        """ModelError for BatchNorm or dropout: the SDE's drift and noise are built from
        per-example gradients ∇ℓ_i, which such a model in training mode does not have."""
        if stateful or stochastic:
            kind = "BatchNorm (stateful layers)" if stateful else "dropout (a key argument)"
            raise ModelError(f"optimizer 'sde': the SDE of SGD is built from per-example "
                             f"gradients, undefined for a model with {kind} in training mode; "
                             "use 'svag' (its limit as amplification grows is this SDE)")

    def terms(self, problem, data: Data, key):
        """One control term: the ``increment_operator`` (drift and noise in one weighted
        gradient) driven by the control (dt, dW), dW from an n-dim ``UnsafeBrownianPath``."""
        import diffrax

        obj, x, y, chunk = problem.objective, data.x_train, data.y_train, problem.eval_chunk
        bm = diffrax.UnsafeBrownianPath(jax.ShapeDtypeStruct((x.shape[0],), x.dtype), key)
        return _control_term_class()(
            lambda t, params, h: increment_operator(obj.example_loss, params, x, y, h,
                                                    self.batch_size, chunk),
            lambda t0, t1: (t1 - t0, bm.evaluate(t0, t1)))

    def step(self, state: TrainState, problem, data: Data, step):
        """One step of h: ``substeps`` Euler–Maruyama steps (``diffrax.Euler.step`` on the
        SDE's term) over [step·h, (step+1)·h]."""
        import diffrax

        noise_factor(data.x_train.shape[0], self.batch_size)  # static check of B against n
        h = state.hyper.lr
        key = jax.random.fold_in(jax.random.fold_in(
            jax.random.wrap_key_data(state.data_key), _SDE_SALT), step)
        terms, solver = self.terms(problem, data, key), diffrax.Euler()
        t0, dt = h * step.astype(h.dtype), h / self.substeps

        def sub(j, params):
            ta = t0 + j * dt
            return solver.step(terms, ta, ta + dt, params, h, None, made_jump=False)[0]

        params = jax.lax.fori_loop(0, self.substeps, sub, state.params)
        return _commit(state, params, step)

    def advance(self, state: TrainState, problem, data: Data, step0, num_steps):
        """``num_steps`` steps of h; a frozen run stays as it is."""
        return _advance(self, state, problem, data, step0, num_steps)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "sde", "solver": "Euler-Maruyama (diffrax.Euler)",
                "substeps": self.substeps, "batch_size": self.batch_size,
                "noise": "sqrt(h*Sigma_B), Sigma_B = (n-B)/(B(n-1)) * Sigma_1 (without "
                         "replacement), matrix-free via per-example gradients"}


def svag_coefficients(amplification: int) -> tuple[float, float]:
    """(c₁, c₂) = ½(1 ± √(2ℓ − 1)): c₁ + c₂ = 1, c₁² + c₂² = ℓ (Li, Malladi & Arora 2021)."""
    s = math.sqrt(2 * amplification - 1)
    return 0.5 * (1 + s), 0.5 * (1 - s)


def svag_gradient(example_loss, params, x, y, idx1, idx2, amplification: int,
                  chunk_size: int = DEFAULT_CHUNK):
    """g = c₁·g_B1 + c₂·g_B2 with g_Bk the mean gradient over the examples ``idx_k`` (one pass
    over the 2B examples; ℓ = 1: g_B1 alone)."""
    c1, c2 = svag_coefficients(amplification)
    b = idx1.shape[0]
    if amplification == 1:
        idx, a = idx1, jnp.full((b,), 1.0 / b, x.dtype)
    else:
        idx = jnp.concatenate([idx1, idx2])
        a = jnp.concatenate([jnp.full((b,), c1 / b, x.dtype), jnp.full((b,), c2 / b, x.dtype)])
    return weighted_grad(example_loss, params, x[idx], y[idx], a, chunk_size)


class SVAG(AbstractDynamics):
    """Stochastic variance amplified gradient (Li, Malladi & Arora 2021): ℓ = ``amplification``
    steps θ ← θ − (h/ℓ)·(c₁ g_B1 + c₂ g_B2) per step of h; its limit ℓ → ∞ is the SDE of SGD
    with batch size B = ``batch_size`` (module docstring).

    Example: ``sgdreg.run(model, data, "svag", batch_size=32, lr=0.05)`` (ℓ = 8), or
    ``SVAG(batch_size=32, amplification=16)`` (``from sgdreg.dynamics.sde import SVAG``)."""

    batch_size: int = eqx.field(static=True, default=32)
    amplification: int = eqx.field(static=True, default=8)
    name: str = eqx.field(static=True, default="svag")

    def __check_init__(self):
        for field, v in (("batch_size", self.batch_size), ("amplification", self.amplification)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptimizerError(f"{field} must be a positive integer, got {v!r}")

    def init(self, params, hyper: Hyper):
        return None

    def draws(self, data_key, step, sub, n: int):
        """The two minibatches (B indices each, without replacement within a draw) of substep
        ``sub`` of step ``step``: a function of the seed's data key, step and substep only."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
            jax.random.wrap_key_data(data_key), _SVAG_SALT), step), sub)
        k1, k2 = jax.random.split(key)
        # the B largest of n i.i.d. uniforms: a uniform B-subset (cheaper than a permutation)
        pick = lambda k: jax.lax.top_k(jax.random.uniform(k, (n,)), self.batch_size)[1]
        return pick(k1), pick(k2)

    def dropout_keys(self, model_key, step, sub):
        """The dropout keys of B1 and B2 in substep ``sub`` of step ``step``."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
            jax.random.wrap_key_data(model_key), _SVAG_SALT), step), sub)
        return tuple(jax.random.split(key))

    def step(self, state: TrainState, problem, data: Data, step):
        """One step of h: ℓ updates θ ← θ − (h/ℓ)(c₁ g_B1 + c₂ g_B2), fresh draws each."""
        n = data.x_train.shape[0]
        if self.batch_size > n:
            raise ConfigError(f"batch_size {self.batch_size} exceeds the {n} training examples")
        obj, lr = problem.objective, state.hyper.lr / self.amplification
        if getattr(obj, "stateful", False) or getattr(obj, "stochastic", False):
            return self._training_mode_step(state, problem, data, step, lr)

        def sub(j, params):
            i1, i2 = self.draws(state.data_key, step, j, n)
            g = svag_gradient(obj.example_loss, params, data.x_train, data.y_train, i1, i2,
                              self.amplification, problem.eval_chunk)
            return jax.tree.map(lambda p, d: p - lr * d, params, g)

        params = jax.lax.fori_loop(0, self.amplification, sub, state.params)
        return _commit(state, params, step)

    def _training_mode_step(self, state: TrainState, problem, data: Data, step, lr):
        """A BatchNorm/dropout model: g_Bk from the training-mode loss of minibatch k (its own
        batch statistics, ``Problem.training_gradient``), the model state carried through B1's
        forward, then B2's (module docstring)."""
        c1, c2 = svag_coefficients(self.amplification)
        n, stochastic = data.x_train.shape[0], problem.objective.stochastic
        x, y = data.x_train, data.y_train

        def sub(j, carry):
            params, ms = carry
            i1, i2 = self.draws(state.data_key, step, j, n)
            k1, k2 = self.dropout_keys(state.model_key, step, j) if stochastic else (None, None)
            _, g, ms = problem.training_gradient(params, ms, x[i1], y[i1], k1, 0.0, False)
            if self.amplification > 1:
                _, g2, ms = problem.training_gradient(params, ms, x[i2], y[i2], k2, 0.0, False)
                g = jax.tree.map(lambda a, b: c1 * a + c2 * b, g, g2)
            return jax.tree.map(lambda p, d: p - lr * d, params, g), ms

        params, ms = jax.lax.fori_loop(0, self.amplification, sub,
                                       (state.params, state.model_state))
        return _commit(state, params, step, ms)

    def advance(self, state: TrainState, problem, data: Data, step0, num_steps):
        """``num_steps`` steps of h (ℓ substeps each); a frozen run stays as it is."""
        return _advance(self, state, problem, data, step0, num_steps)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "svag", "batch_size": self.batch_size,
                "amplification": self.amplification,
                "sampling": "two independent uniform B-subsets per substep (without "
                            "replacement within a draw, i.i.d. over draws)"}
