"""Exact oracles for probe formulas (mutation testing, issue 17 item 1): the EoS threshold of
RMSProp with Nesterov or heavy-ball momentum against the linear-stability edge of the update
on a quadratic (spectral radius of its 2×2 iteration matrix) and P against ν written by hand.
(The curvature probe's λ_max·‖θ‖² is checked against a dense Hessian in
tests/test_training.py::test_curvature_probe_in_training_matches_dense_hessian.)"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdreg import probes


def _radius(lam, h, beta, nesterov):
    """ρ of (x, m) ↦ (x − h·u, m') for L = ½λx², m' = βm + λx, u = m' (heavy ball) or
    λx + βm' (Nesterov, optax ``trace(nesterov=True)``)."""
    if nesterov:
        a = np.array([[1 - h * lam * (1 + beta), -h * beta**2], [lam, beta]])
    else:
        a = np.array([[1 - h * lam, -h * beta], [lam, beta]])
    return np.max(np.abs(np.linalg.eigvals(a)))


@pytest.mark.parametrize("beta,nesterov", [(None, False), (0.6, False), (0.6, True), (0.9, True)])
def test_rmsprop_threshold_is_the_linear_stability_edge(beta, nesterov):
    h, decay, eps = 0.02, 0.9, 1e-6
    kw = {} if beta is None else {"momentum": beta, "nesterov": nesterov}
    tx = optax.rmsprop(h, decay=decay, eps=eps, **kw)
    params = {"w": jnp.asarray([0.5, -2.0, 3.0])}
    state = tx.init(params)
    g = {"w": jnp.asarray([1.0, -0.5, 2.0])}
    _, state = tx.update(g, state, params)
    pre = probes.adaptive_preconditioner(tx, state)
    nu = (1 - decay) * np.asarray(g["w"]) ** 2
    np.testing.assert_allclose(np.asarray(pre.diag["w"]), np.sqrt(nu + eps), rtol=1e-12)
    thr = pre.threshold
    b = 0.0 if beta is None else beta
    assert _radius(thr * (1 - 1e-7), h, b, nesterov) < 1 < _radius(thr * (1 + 1e-7), h, b, nesterov)
