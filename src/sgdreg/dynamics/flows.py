"""Continuous flows integrated with diffrax: gradient flow and the IGR modified flow."""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ..batching import full_batch_hvp, full_batch_value_and_grad
from ..errors import OptimizerError
from .base import AbstractDynamics, Data, Hyper, TrainState, _keep

FLOW_MAX_STEPS = 100_000


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
