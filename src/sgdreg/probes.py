"""Probes: pure functions of (θ, data) that measure a run without changing its trajectory.

``cheap_metrics`` runs at every logged step inside the compiled training chunk. Expensive
probes (curvature) implement ``Probe``: a name, a cadence ``every`` (in steps) and a call that
returns a dict of metrics; the training loop calls them between chunks.

IGR terms (Barrett & Dherin 2021; Smith et al. 2021; docs/science.md#implicit-regularization), with h the
step size:
  igr_gd = (h/4)‖∇L‖²,  modified_loss_gd = L + igr_gd,
  minibatch_grad_norm_sq = (1/m) Σ_k ‖∇L̂_k‖² over the m minibatches of the current epoch,
  igr_sgd_var = (h/4)(1/m) Σ_k ‖∇L̂_k − ∇L‖²,  modified_loss_sgd = L + (h/4)·minibatch_grad_norm_sq,
so that modified_loss_sgd = modified_loss_gd + igr_sgd_var exactly when B divides n, and
  grad_var_est = ((1/m)Σ_k‖∇L̂_k‖² − ‖∇L‖²)·B(n−1)/(n−B) estimates Γ = (1/n)Σ_i‖∇ℓ_i − ∇L‖²
(``CurvatureProbe`` logs Γ exactly as ``grad_var``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .batching import full_batch_mean, full_batch_value_and_grad
from .dynamics import eos_threshold
from .errors import ConfigError
from .models import layer_names, layer_norms


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
    n, b = x.shape[0], problem.batch_size
    if not problem.full_batch and b < n:
        mb_sq, mb_var = minibatch_gradient_terms(problem, params, x, y, perm, g)
        out |= {
            "minibatch_grad_norm_sq": mb_sq,
            "igr_sgd_var": lr / 4 * mb_var,
            "modified_loss_sgd": train_loss + lr / 4 * mb_sq,
            # Γ̂ = ((1/m)Σ‖∇L̂_k‖² − ‖∇L‖²)·B(n−1)/(n−B), unbiased over shuffles
            # (docs/science.md#implicit-regularization)
            "grad_var_est": (mb_sq - gn) * b * (n - 1) / (n - b),
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


@dataclass
class ProbeContext:
    """What an expensive probe may read: objective, data, step size, step, a PRNG key, a
    per-probe ``memory`` kept across calls of one run (e.g. a Lanczos warm start) and the
    dynamics' own state at this step (``TrainState.opt_state``: optax slots, e.g. Adam's v;
    None when unknown, e.g. on a loaded checkpoint). The dynamics is ``problem.dynamics``."""

    problem: Any
    data: Any
    lr: float
    step: int
    key: jax.Array
    memory: dict
    opt_state: Any = None


class Probe(Protocol):
    """An expensive measurement run every ``every`` steps between training chunks.

    Any object with ``name``, ``every``, ``__call__(params, ctx) -> {metric: value}`` and
    ``describe() -> dict`` is a probe; its metrics join the trace row of that step (null at
    other rows) and ``describe()`` is recorded under ``probes.<name>``. Evaluate the model with
    ``ctx.problem.objective`` (inference mode), never change the run.

    Example:
        >>> class LogitNorm:
        ...     name, every = "logit_norm", 10
        ...     def __call__(self, params, ctx):
        ...         f = jax.vmap(ctx.problem.objective.predict, (None, 0))(params, ctx.data.x_train)
        ...         return {"logit_norm": float(jnp.linalg.norm(f, axis=-1).mean())}
        ...     def describe(self):
        ...         return {"definition": "mean_i ‖f(x_i)‖₂ on the training set"}
        >>> sgdreg.run(model, data, probes=[LogitNorm()])                  # doctest: +SKIP
    """

    name: str
    every: int

    def __call__(self, params, ctx: ProbeContext) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]:
        """Its definition, recorded in the trace (e.g. which Hessian, how many probes)."""
        ...


# --------------------------------------------------------------------------- adaptive methods


class AdaptivePreconditioner(NamedTuple):
    """Adam's or RMSProp's diagonal preconditioner P at the current step, read from the optax
    state (``adaptive_preconditioner``), and the EoS threshold of λ_max(P⁻¹H)."""

    method: str  # "adam" | "rmsprop"
    diag: Any  # P, a pytree shaped like θ, every entry > 0
    threshold: float | None  # None when unknown (e.g. weight decay, Nadam, clipping)
    detail: dict  # b1, b2/decay, eps, eps_root, eps_in_sqrt, bias correction, count, h, β


ADAPTIVE_DEFINITION = (
    "preconditioned_sharpness = λ_max(P⁻¹H) = λ_max(P^{-1/2} H P^{-1/2}) (Cohen et al. 2022, "
    "'Adaptive gradient methods at the edge of stability'), H as above, P = the optimizer's "
    "current diagonal preconditioner read from its optax state after the last update: Adam "
    "(optax scale_by_adam, also inside inject_hyperparams/chain) P = √(v̂ + eps_root) + eps, "
    "v̂ = ν/(1 − b2^count); RMSProp (scale_by_rms) P = √(ν̂ + eps) (eps_in_sqrt) or √ν̂ + eps, "
    "ν̂ bias-corrected only when bias_correction. Lanczos (lanczos_steps, warm-started) on the "
    "symmetric form, residual and converged flag as for λ_max. preconditioned_eos_threshold: "
    "Adam (2 + 2β1)/((1 − β1)h) (38/h at β1 = 0.9); RMSProp 2/h, with momentum β 2(1+β)/h "
    "(Nesterov (2+2β)/((1+2β)h)); null when unknown (Nadam, weight decay, Adam with extra "
    "momentum). Not recorded for other optimizers, before the first update, or when the "
    "transform holds anything else that rescales the update (clipping, trust ratios, "
    "AMSGrad/Yogi/Adamax/centered RMSProp, several adaptive states)")

_ADAPTIVE_LEAVES = ("scale_by_adam", "scale_by_rms")
# leaves that leave P alone: step size, momentum, weight decay (the last two move the threshold)
_NEUTRAL_LEAVES = ("scale", "scale_by_learning_rate", "scale_by_schedule", "identity", "trace",
                   "add_decayed_weights")


def _adaptive_state_types() -> tuple[type, ...]:
    from optax._src import transform as _tr

    return tuple(t for t in (optax.ScaleByAdamState, optax.ScaleByRmsState,
                             getattr(_tr, "ScaleByRmsWithCountState", None)) if t is not None)


def _nonlocals(fn) -> dict:
    try:
        return inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        return {}


def _scalar(v) -> float:
    return float(np.asarray(jax.device_get(v)).item())


def _transform_leaves(update, state, out: list) -> None:
    """Pair each leaf transformation of ``update`` with its state, through
    ``inject_hyperparams`` (its inner transform rebuilt from the state's current
    hyper-parameters), ``chain`` and ``with_extra_args_support``: appends (name, closure, state);
    an unrecognised wrapper is one leaf under its own name (so it is not neutral)."""
    free = _nonlocals(update)
    if "inner_factory" in free and hasattr(state, "inner_state"):
        hps = {k: _scalar(v) for k, v in state.hyperparams.items()}
        inner = free["inner_factory"](**free.get("other_hps", {}), **hps)
        _transform_leaves(inner.update, state.inner_state, out)
    elif "update_fns" in free and isinstance(state, tuple) and len(state) == len(
            free["update_fns"]):
        for f, s in zip(free["update_fns"], state):
            _transform_leaves(f, s, out)
    elif isinstance(free.get("tx"), optax.GradientTransformation):
        _transform_leaves(free["tx"].update, state, out)
    else:
        out.append((getattr(update, "__qualname__", "").split(".<locals>")[0], free, state))


def adaptive_preconditioner(transform, opt_state, lr: float | None = None
                            ) -> AdaptivePreconditioner | None:
    """Adam's or RMSProp's current preconditioner P (``ADAPTIVE_DEFINITION``) from an optax
    ``transform`` and its state ``opt_state``, or None when it is not one of those or anything
    needed is unknown (never a guess). b1, b2, eps, eps_root, eps_in_sqrt, bias correction and
    the step size h come from the transform's closures, inside ``inject_hyperparams`` from the
    state's hyper-parameters (so a traced b1 or a schedule's current value is used); h falls back
    to ``lr``. Supported: ``optax.adam``, ``optax.rmsprop`` (not centered), ``scale_by_adam`` /
    ``scale_by_rms`` chained with step sizes, momentum (``trace``) or weight decay.

    Example: ``adaptive_preconditioner(optax.adam(1e-3), state).diag`` (√v̂ + ε per parameter)."""
    if transform is None or opt_state is None:
        return None
    types = _adaptive_state_types()
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, types))
             if isinstance(s, types)]
    if len(found) != 1:
        return None
    leaves: list = []
    try:
        _transform_leaves(transform.update, opt_state, leaves)
    except Exception:  # an unfamiliar transform: record nothing rather than a wrong value
        return None
    adaptive = [leaf for leaf in leaves if leaf[0] in _ADAPTIVE_LEAVES]
    others = [leaf for leaf in leaves if leaf[0] not in _ADAPTIVE_LEAVES]
    if (len(adaptive) != 1 or adaptive[0][2] is not found[0]
            or any(name not in _NEUTRAL_LEAVES for name, _, _ in others)):
        return None
    name, free, state = adaptive[0]
    try:
        return _preconditioner(name, free, state, others, lr)
    except (KeyError, TypeError, ValueError):
        return None


def _preconditioner(name, free, state, others, lr) -> AdaptivePreconditioner | None:
    scale, momentum, nesterov, weight_decay = 1.0, None, False, 0.0
    for leaf, f, s in others:
        if leaf == "scale":
            scale *= _scalar(f["step_size"])
        elif leaf == "scale_by_schedule":  # optax applies fn(count) then increments count
            scale *= _scalar(f["step_size_fn"](jnp.maximum(s.count - 1, 0)))
        elif leaf == "trace":
            if momentum is not None:
                return None
            momentum, nesterov = _scalar(f["decay"]), bool(f["nesterov"])
        elif leaf == "add_decayed_weights":
            weight_decay += _scalar(f["weight_decay"]) if not callable(f["weight_decay"]) \
                else math.nan
    has_scale = any(leaf in ("scale", "scale_by_schedule") for leaf, _, _ in others)
    h = -scale if has_scale else (float(lr) if lr is not None else math.nan)
    nu = state.nu
    if name == "scale_by_adam":
        count = int(state.count)
        if count < 1:
            return None  # no update yet: v̂ = ν/(1 − b2⁰) is undefined
        b1, b2, eps, eps_root = (_scalar(free[k]) for k in ("b1", "b2", "eps", "eps_root"))
        nu_hat = jax.tree.map(lambda v: v / (1 - b2**count), nu)
        diag = jax.tree.map(lambda v: jnp.sqrt(v + eps_root) + eps, nu_hat)
        ok = not free.get("nesterov", False) and momentum is None and weight_decay == 0
        thr = (2 + 2 * b1) / ((1 - b1) * h) if ok else None
        detail = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root, "count": count,
                  "bias_correction": True, "nesterov": bool(free.get("nesterov", False))}
    else:
        decay, eps = _scalar(free["decay"]), _scalar(free["eps"])
        bias, in_sqrt = bool(free.get("bias_correction", False)), bool(free["eps_in_sqrt"])
        count = int(state.count) if bias else None
        if (bias and count < 1) or all(not np.any(np.asarray(v)) for v in jax.tree.leaves(nu)):
            return None  # no second-moment information yet
        nu_hat = jax.tree.map(lambda v: v / (1 - decay**count), nu) if bias else nu
        diag = jax.tree.map((lambda v: jnp.sqrt(v + eps)) if in_sqrt
                            else (lambda v: jnp.sqrt(v) + eps), nu_hat)
        thr = None
        if weight_decay == 0:
            thr = (2 / h if momentum is None else (2 + 2 * momentum) / ((1 + 2 * momentum) * h)
                   if nesterov else 2 * (1 + momentum) / h)
        detail = {"b1": 0.0, "decay": decay, "eps": eps, "eps_in_sqrt": in_sqrt,
                  "bias_correction": bias, "count": count}
    if not all(bool(jnp.all(jnp.isfinite(p) & (p > 0))) for p in jax.tree.leaves(diag)):
        return None
    if thr is not None and not (math.isfinite(thr) and thr > 0):
        thr = None
    detail |= {"h": h, "momentum": momentum, "weight_decay": weight_decay}
    return AdaptivePreconditioner("adam" if name == "scale_by_adam" else "rmsprop", diag, thr,
                                  detail)


HESSIAN_DEFINITION = (
    "∇²L of the full-batch training loss L = (1/n)Σℓ_i (loss term only; no weight decay or "
    "optimizer terms), all trainable parameters, train data, inference mode: dropout off and "
    "BatchNorm with its running statistics frozen at the probe's step")


LAMBDA_MIN_MAX_STEPS = 500  # λ_min: Lanczos steps at most (the default MLP: 80–400, see A.md)
LAMBDA_MIN_TOL = 1e-6  # λ_min converged: ‖Hy − θy‖ ≤ 1e-6·max|θ| (reached in float32 too)


def convergence_definition(lambda_min_tol: float) -> str:
    """What ``lambda_max_converged``/``lambda_min_converged`` mean, as recorded in the trace."""
    return ("Ritz pair (θ, y) converged when its residual ‖Hy − θy‖ ≤ tol·max|θ| (max|θ| ≈ ‖H‖₂, "
            "from the same Lanczos run); tol = √eps of the dtype (1.5e-8 float64, 3.5e-4 "
            f"float32) for λ_max and top-k after lanczos_steps steps, {lambda_min_tol:.3g} for "
            "λ_min, whose Lanczos run stops there (or at lambda_min_max_steps, then unconverged); "
            "an eigenvalue of H lies within the residual of θ")


class CurvatureProbe:
    """Hessian of the full-batch training loss every ``every`` steps (docs/science.md#curvature):
    Hutchinson trace ± stderr with tr(H²) and per-layer traces ± stderr from the same probes
    (``layer_hessian_traces`` in the order of the trace's ``layers``), the top-k eigenvalues by
    ``lanczos_steps`` Lanczos steps (warm-started from the last top eigenvector), the smallest
    eigenvalue by ``lanczos_adaptive`` (run until its Ritz residual ≤ ``lambda_min_tol``·max|θ|,
    at most ``lambda_min_max_steps`` steps, 0: no λ_min; it sits at the edge of the dense bulk
    near 0, so 20–30 fixed steps leave it 10–100% off, even of the wrong sign, and converging it
    takes 80–400 steps on the default MLP), each with its residual and converged flag,
    λ_max·‖θ‖², the EoS reference, batch sharpness (minibatch methods), Γ exactly from
    per-example gradients, optionally the raw SLQ nodes/weights of the spectral density, and for
    Adam/RMSProp (state in ``ctx.opt_state``) the preconditioned sharpness λ_max(P⁻¹H) with its
    residual, converged flag and threshold (2 + 2β1)/((1 − β1)h) (``ADAPTIVE_DEFINITION``).
    The Hessian is ``HESSIAN_DEFINITION`` (inference mode for dropout/BatchNorm models),
    recorded in the trace.

    Example: ``sgdreg.run(model, data, probes=[sgdreg.CurvatureProbe(50, num_probes=100)])``
    (``curvature=50`` is the shorthand with the defaults)."""

    name = "curvature"

    def __init__(self, every: int, *, num_probes=20, kind="rademacher", lanczos_steps=20,
                 top_k=3, subset: int | None = None, slq: bool = False, slq_starts: int = 4,
                 sharpness_batches: int = 10, threshold: float | None = None,
                 batch_size: int | None = None, lambda_min_max_steps: int = LAMBDA_MIN_MAX_STEPS,
                 lambda_min_tol: float = LAMBDA_MIN_TOL, lr_decay: float = 1.0,
                 lr_decay_every: int = 0):
        self.every = every
        # a step-size schedule h_t = h·lr_decay^⌊t/lr_decay_every⌋: ``threshold`` is that of h
        # (step 0); at step t the recorded one is that of h_t (``threshold_at``)
        self.lr_decay, self.lr_decay_every = lr_decay, lr_decay_every
        self.num_probes, self.kind = num_probes, kind
        self.lanczos_steps, self.top_k = lanczos_steps, top_k
        self.lambda_min_max_steps, self.lambda_min_tol = lambda_min_max_steps, lambda_min_tol
        self.subset, self.slq, self.slq_starts = subset, slq, slq_starts
        self.sharpness_batches, self.batch_size = sharpness_batches, batch_size
        self.threshold = threshold

    @classmethod
    def from_config(cls, cfg) -> CurvatureProbe:
        return cls(cfg.hessian_every, num_probes=cfg.probes, kind=cfg.probe_kind,
                   lanczos_steps=cfg.lanczos_steps, top_k=cfg.top_k, subset=cfg.hessian_n,
                   slq=cfg.slq, threshold=eos_threshold(cfg.optimizer, cfg.lr, cfg.momentum),
                   lambda_min_max_steps=cfg.lambda_min_steps,
                   batch_size=None if cfg.full_batch else cfg.batch_size,
                   lr_decay=cfg.lr_decay, lr_decay_every=cfg.lr_decay_every)

    def threshold_at(self, step: int) -> float | None:
        """The EoS threshold at ``step``: ∝ 1/h for every method, so under the step-size
        schedule it is ``threshold``/lr_decay^⌊step/lr_decay_every⌋ (2/h_t for GD)."""
        if self.threshold is None or not self.lr_decay_every:
            return self.threshold
        return self.threshold / self.lr_decay ** (step // self.lr_decay_every)

    def describe(self) -> dict[str, Any]:
        return {
            "hessian": HESSIAN_DEFINITION,
            "data": "train", "subset": self.subset or "all", "probe_kind": self.kind,
            "num_probes": self.num_probes, "lanczos_steps": self.lanczos_steps,
            "lanczos": "full re-orthogonalisation, largest/smallest algebraic; top-k warm-started "
                       "from the last top eigenvector",
            "lambda_min_max_steps": self.lambda_min_max_steps,
            "lambda_min_tol": self.lambda_min_tol,
            "converged": convergence_definition(self.lambda_min_tol),
            "layer_hessian_traces": "tr(H_ll) per layer (order of the trace's layers) ± "
                                    "stderr from the Hutchinson probes; they sum to hessian_trace",
            "top_k": self.top_k, "slq": {"starts": self.slq_starts, "steps": self.lanczos_steps}
            if self.slq else None, "eos_threshold": self.threshold,
            **({"eos_threshold_schedule": f"eos_threshold / {self.lr_decay:g}^floor(step / "
                                          f"{self.lr_decay_every}) (the current h_t)"}
               if self.lr_decay_every and self.lr_decay != 1 else {}),
            "batch_sharpness": {"batch_size": self.batch_size, "batches": self.sharpness_batches}
            if self.batch_size else None,
            "preconditioned_sharpness": ADAPTIVE_DEFINITION,
        }

    def __call__(self, params, ctx) -> dict[str, Any]:
        from . import curvature as cv

        if not (int(self.lambda_min_max_steps) >= 0 and self.lambda_min_tol > 0):
            raise ConfigError(f"lambda_min_max_steps must be ≥ 0 (0: no λ_min) and "
                              f"lambda_min_tol > 0, got {self.lambda_min_max_steps} and "
                              f"{self.lambda_min_tol}")
        obj, chunk = ctx.problem.objective, ctx.problem.eval_chunk
        x, y = ctx.data.x_train, ctx.data.y_train
        if self.subset is not None and self.subset < x.shape[0]:
            x, y = x[: self.subset], y[: self.subset]
        v0 = ctx.memory.get("top_vector")
        pre = adaptive_preconditioner(getattr(ctx.problem.dynamics, "transform", None),
                                      getattr(ctx, "opt_state", None), ctx.lr)
        if pre is not None and jax.tree.structure(pre.diag) != jax.tree.structure(params):
            pre = None  # slots not shaped like the probed θ: nothing rather than a wrong value
        # one program for every run of a model (GD and SGD alike: concurrent runs wait for
        # its first compilation instead of tracing it twice), one for the batch sharpness
        signature = (self.num_probes, self.kind, self.lanczos_steps, self.top_k, self.slq,
                     self.lambda_min_max_steps, self.lambda_min_tol, x.shape, x.dtype,
                     jax.tree.structure(params), self.batch_size, pre is not None)
        with _PROBE_LOCK if signature not in _COMPILED else contextlib.nullcontext():
            out, top_vector, k_bs = _curvature(
                obj.example_loss, params, x, y, ctx.key,
                jnp.zeros(_dim(params), x.dtype) if v0 is None else v0,
                num_probes=self.num_probes, kind=self.kind, lanczos_steps=self.lanczos_steps,
                top_k=self.top_k, chunk=chunk, slq_starts=self.slq_starts if self.slq else 0,
                lambda_min_max_steps=self.lambda_min_max_steps,
                lambda_min_tol=self.lambda_min_tol)
            out, top_vector = jax.device_get((out, top_vector))
            if self.batch_size and self.batch_size < x.shape[0]:
                bs = jax.device_get(cv.batch_sharpness(obj.example_loss, params, x, y, k_bs,
                                                       self.batch_size, self.sharpness_batches,
                                                       chunk))
                out |= {"batch_sharpness": bs.mean, "batch_sharpness_stderr": bs.stderr}
            if pre is not None:
                w0 = ctx.memory.get("preconditioned_vector")
                ps, w = jax.device_get(_preconditioned(
                    obj.example_loss, params, x, y, pre.diag, jax.random.fold_in(ctx.key, 1),
                    jnp.zeros(_dim(params), x.dtype) if w0 is None else w0,
                    lanczos_steps=self.lanczos_steps, chunk=chunk))
                out |= ps
                ctx.memory["preconditioned_vector"] = w
            _COMPILED.add(signature)
        ctx.memory["top_vector"] = top_vector
        out = {k: (v.tolist() if getattr(v, "ndim", 0) else v.item()) for k, v in out.items()}
        out["eos_threshold"] = self.threshold_at(ctx.step)
        if pre is not None:
            out["preconditioned_eos_threshold"] = pre.threshold
        return out


_PROBE_LOCK = threading.Lock()
_COMPILED: set = set()  # probe signatures already compiled in this process


def _dim(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))


@eqx.filter_jit
def _curvature(loss, params, x, y, key, v0, *, num_probes, kind, lanczos_steps, top_k, chunk,
               slq_starts, lambda_min_max_steps, lambda_min_tol):
    """Every quantity of ``CurvatureProbe`` but the batch sharpness in one compiled program (one
    host transfer), and the batch sharpness's key. The top-k Lanczos start is ``v0`` (the last
    top eigenvector) or, when zero, a Gaussian draw; λ_min's is always a fresh Gaussian draw."""
    from . import curvature as cv

    hv = cv.hessian_matvec(loss, params, x, y, chunk)
    dim = hv.dim
    k_tr, k_lz, k_min, k_slq, k_bs = jax.random.split(key, 5)
    # first call of a run (v0 = 0): lanczos_eigs' own Gaussian start; one program either way
    v0 = jnp.where(jnp.any(v0 != 0), v0, jax.random.normal(k_lz, (dim,), hv.dtype))
    layers, segments = cv.layer_segments(params)
    tr = cv.hutchinson(hv, dim, k_tr, num_probes, kind, segments=segments,
                       num_segments=len(layers))
    top = cv.lanczos_eigs(hv, dim, top_k, lanczos_steps, key=k_lz, v0=v0)
    lam = top.eigenvalues[0]
    out = {
        "hessian_trace": tr.estimate,
        "hessian_trace_stderr": tr.stderr,
        "hessian_trace_sq": tr.trace_sq,
        "layer_hessian_traces": tr.block_estimates,
        "layer_hessian_traces_stderr": tr.block_stderr,
        "lambda_max": lam,
        "lambda_max_residual": top.residuals[0],
        "lambda_max_converged": top.converged[0],
        "top_eigenvalues": top.eigenvalues,
        "lambda_max_scaled": lam * sq_norm(params),
        "grad_var": cv.gradient_noise(loss, params, x, y),
    }
    if lambda_min_max_steps:
        low = cv.lanczos_adaptive(hv, dim, 1, lambda_min_max_steps, key=k_min,
                                  which="smallest", tol=lambda_min_tol)
        out |= {"lambda_min": low.eigenvalues[0], "lambda_min_residual": low.residuals[0],
                "lambda_min_converged": low.converged[0], "lambda_min_steps": low.num_steps}
    if slq_starts:
        q = cv.slq(hv, dim, k_slq, slq_starts, lanczos_steps, kind)
        out |= {"slq_nodes": q.nodes, "slq_weights": q.weights}
    return out, top.eigenvectors[0], k_bs


@eqx.filter_jit
def _preconditioned(loss, params, x, y, diag, key, w0, *, lanczos_steps, chunk):
    """λ_max(P^{-1/2}HP^{-1/2}) with its residual and converged flag, and the Ritz vector (the
    next warm start; ``w0`` = 0: a Gaussian start from ``key``)."""
    from . import curvature as cv

    hv = cv.hessian_matvec(loss, params, x, y, chunk)
    w0 = jnp.where(jnp.any(w0 != 0), w0, jax.random.normal(key, (hv.dim,), hv.dtype))
    diag = jax.tree.map(lambda p, a: p.astype(a.dtype), diag, params)
    top = cv.preconditioned_sharpness(hv, diag, lanczos_steps, v0=w0)
    return {"preconditioned_sharpness": top.eigenvalues[0],
            "preconditioned_sharpness_residual": top.residuals[0],
            "preconditioned_sharpness_converged": top.converged[0]}, top.eigenvectors[0]


def measure_curvature(model, cfg, dataset, *, seed: int = 0, state=None,
                      **probe_options) -> dict[str, Any]:
    """All curvature probes once, on a trained ``model`` (e.g. a loaded checkpoint; ``state``:
    its BatchNorm state), with the Hessian definition and the ``layers`` that name
    ``layer_hessian_traces``; ``probe_options`` override ``CurvatureProbe.from_config(cfg)``
    (e.g. ``lambda_min_max_steps``)."""
    from .training import build

    s = build(cfg, dataset, model, state)
    probe = CurvatureProbe.from_config(cfg.replace(hessian_every=1))
    for k, v in probe_options.items():
        setattr(probe, k, v)
    ctx = ProbeContext(s.problem, s.data, cfg.lr, 0, jax.random.key(seed), {})
    return {"definition": probe.describe(), "layers": layer_names(s.params0),
            **probe(s.params0, ctx)}
