"""Exact oracles for the dynamics' index and threshold formulas (mutation testing, issue 17
item 1): minibatch k of an epoch is the k-th block of B consecutive entries of its order, and
each optimizer's EoS threshold is the linear-stability edge of its update on L = ½λx²."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdreg.dynamics.base import epoch_permutation, minibatch_indices
from sgdreg.dynamics.discrete import eos_threshold


def test_minibatch_k_is_the_kth_block_of_the_epoch_order():
    n, b = 10, 3
    m = n // b
    perm = epoch_permutation(jax.random.key(4), 2, n)
    assert sorted(np.asarray(perm).tolist()) == list(range(n))
    indices = jax.jit(minibatch_indices, static_argnums=(2, 3))  # k traced, as in training
    for k in range(2 * m + 1):  # k ≥ m wraps to k mod m
        want = np.asarray(perm)[(k % m) * b:(k % m) * b + b]
        np.testing.assert_array_equal(np.asarray(indices(perm, jnp.asarray(k), b, m)), want)


def _radius(lam, h, beta, nesterov):
    """ρ of the (x, m) iteration: m' = βm + λx; x' = x − h·m' (heavy ball) or x − h(λx + βm')."""
    if nesterov:
        a = np.array([[1 - h * lam * (1 + beta), -h * beta**2], [lam, beta]])
    else:
        a = np.array([[1 - h * lam, -h * beta], [lam, beta]])
    return np.max(np.abs(np.linalg.eigvals(a)))


@pytest.mark.parametrize("optimizer,beta", [("gd", 0.0), ("sgd", 0.0), ("momentum", 0.9),
                                            ("momentum", 0.5), ("nesterov", 0.9), ("nesterov", 0.3)])
def test_eos_threshold_is_the_linear_stability_edge(optimizer, beta):
    h = 0.05
    thr = eos_threshold(optimizer, h, beta)
    nesterov = optimizer == "nesterov"
    assert _radius(thr * (1 - 1e-7), h, beta, nesterov) < 1 < _radius(thr * (1 + 1e-7), h, beta, nesterov)
