"""Generalization measures of a trained network (Jiang et al. 2020, "Fantastic generalization
measures and where to find them", App. C), each a pure function of the final parameters θ, the
initial θ0, an ``Objective`` and the training data.

Conventions, fixed here once:

* θ is the trainable part of a model (``models.partition``); ‖θ‖, ‖θ−θ0‖ and every perturbation
  act on all of θ, biases included.
* Layer-wise norms act on the weight matrices W_l: the leaves of θ named ``weight``, one per
  layer (biases excluded, as in Jiang et al.). A conv kernel (out, in, kh, kw) is reshaped to
  (out, in·kh·kw), as in Jiang et al.'s code: its spectral norm is then a proxy for, not the exact
  operator norm of, the convolution. d = number of weight matrices.
* Products of norms are reported as logs (``log_prod_of_spec`` = Σ_l log ‖W_l‖₂², ...).
* γ = 10th percentile of the training margins; the margin-normalised measures divide by γ²
  (so only |γ| matters, as in Jiang et al.'s code).
* Jiang et al.'s dataset-size adjustments (√(μ/n), ½(log μ − log n)) are monotone at fixed n and
  therefore omitted: they do not change any rank correlation within one dataset size.
* Flatness measures use common random numbers: the same noise draws / start points for every
  trial σ or α, so each search is deterministic for a given key.
"""

from __future__ import annotations

import math
import re
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp

from .batching import DEFAULT_CHUNK, chunk_data
from .errors import ModelError
from .flatness import CRITERIA as CRITERIA  # noqa: E402  (re-exported)
from .flatness import _flat  # noqa: E402
from .flatness import pacbayes_bound_term as pacbayes_bound_term  # noqa: E402
from .flatness import pacbayes_sigma as pacbayes_sigma  # noqa: E402
from .flatness import pacbayes_sigma_se as pacbayes_sigma_se  # noqa: E402
from .flatness import sharpness_bound_term as sharpness_bound_term  # noqa: E402
from .flatness import sharpness_radius as sharpness_radius  # noqa: E402
from .losses import Objective
from .models import CNN, MLP, LinearModel, partition

# Values computed by other modules (curvature, IGR probes, trainer) that compute_measures passes
# through unchanged when given in ``trace_metrics``; other keys are ignored.
TRACE_MEASURES = (
    "hessian_trace", "lambda_max", "grad_norm_sq", "igr_gd", "igr_sgd_var", "grad_var",
    "minibatch_grad_norm_sq", "batch_sharpness", "steps_to_loss",
)


# ---------------------------------------------------------------- norms and distances


def weight_matrices(params) -> dict[str, jax.Array]:
    """W_l per layer: leaves named ``weight``, conv kernels reshaped to (out, in·kh·kw)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        last = path[-1]
        if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "weight":
            name = jax.tree_util.keystr(path[:-1]).lstrip(".") or "params"
            out[name] = leaf.reshape(leaf.shape[0], -1)
    return out




def parameter_norm(params) -> jax.Array:
    """‖θ‖₂ over all trainable arrays (the trace's ``weight_norm``)."""
    return jnp.linalg.norm(_flat(params))


def spectral_norms(params) -> dict[str, jax.Array]:
    """‖W_l‖₂ = largest singular value of each weight matrix (conv: of the reshaped kernel)."""
    return {k: jnp.linalg.norm(w, ord=2) for k, w in weight_matrices(params).items()}


def frobenius_norms(params) -> dict[str, jax.Array]:
    """‖W_l‖_F of each weight matrix."""
    return {k: jnp.linalg.norm(w) for k, w in weight_matrices(params).items()}


def distance_from_init(params, init_params) -> dict:
    """‖θ−θ0‖₂ (all of θ) and Σ_l ‖W_l − W_l⁰‖₂ (spectral), with per-layer Frobenius/spectral.

    Returns ``frobenius``, ``spectral`` (scalars) and ``layer_frobenius``, ``layer_spectral``
    (dicts by layer name). Nagarajan & Kolter 2019; Jiang et al. 2020 eqs. 40–41.
    """
    diff = jax.tree.map(jnp.subtract, params, init_params)
    spec = spectral_norms(diff)
    return {
        "frobenius": parameter_norm(diff),
        "spectral": sum(spec.values(), jnp.zeros(())),
        "layer_frobenius": frobenius_norms(diff),
        "layer_spectral": spec,
    }


def _log_prod(norms: dict[str, jax.Array]) -> jax.Array:
    return sum((2.0 * jnp.log(v) for v in norms.values()), jnp.zeros(()))


def _log_sum(log_prod: jax.Array, d: int) -> jax.Array:
    return math.log(d) + log_prod / d


def log_prod_spectral(params) -> jax.Array:
    """log Π_l ‖W_l‖₂² (Jiang et al. 2020 eq. 32, "log.prod.of.spec"; Bartlett et al. 2017)."""
    return _log_prod(spectral_norms(params))


def log_sum_spectral(params) -> jax.Array:
    """log(d·(Π_l ‖W_l‖₂²)^{1/d}) (Jiang eq. 35): log Σ_l ‖W_l‖₂² after balancing the layers."""
    return _log_sum(log_prod_spectral(params), len(weight_matrices(params)))


def log_prod_frobenius(params) -> jax.Array:
    """log Π_l ‖W_l‖_F² (Jiang et al. 2020 eq. 37; Neyshabur et al. 2015)."""
    return _log_prod(frobenius_norms(params))


def log_sum_frobenius(params) -> jax.Array:
    """log(d·(Π_l ‖W_l‖_F²)^{1/d}) (Jiang eq. 39): log Σ_l ‖W_l‖_F² after balancing the layers."""
    return _log_sum(log_prod_frobenius(params), len(weight_matrices(params)))


def _linear_chain(model) -> list | None:
    """The Linear layers of an MLP-like model in order, or None: Linear, ``MLP``, ``LinearModel``,
    ``eqx.nn.MLP``, or ``eqx.nn.Sequential`` of Linear and parameter-free Lambda/Identity."""
    if isinstance(model, (eqx.nn.Linear, LinearModel)):
        return [getattr(model, "linear", model)]
    if isinstance(model, (MLP, eqx.nn.MLP)):
        return list(model.layers)
    free = (eqx.nn.Lambda, eqx.nn.Identity)
    if isinstance(model, eqx.nn.Sequential) and all(
            isinstance(m, eqx.nn.Linear) or (isinstance(m, free) and not any(
                eqx.is_array(a) for a in jax.tree.leaves(m))) for m in model.layers):
        return [m for m in model.layers if isinstance(m, eqx.nn.Linear)]
    return None


def path_norm(model: eqx.Module) -> jax.Array:
    """Σ over input→output paths of Π w² = Σ_k f_{θ²}(1)_k (Neyshabur et al. 2015; Jiang eq. 44).

    θ² squares every trainable weight and bias; the network is evaluated with identity
    activations on an all-ones input, so a bias b is an edge from a constant-1 unit and its
    paths contribute b²·Π(downstream w²); for ReLU nets this is Jiang et al.'s recipe. Defined
    for chains of ``eqx.nn.Linear`` with elementwise activations (sgdreg's ``MLP``/``LinearModel``,
    ``eqx.nn.MLP``, ``eqx.nn.Sequential`` of Linear and Lambda layers) and sgdreg's ``CNN`` (global
    average pooling enters with its unsquared weight 1/(h·w), as in Jiang et al.'s code). The ℓ2
    path norm is the square root.

    Args: ``model``, whose trainable arrays are θ. Returns: a scalar array.
    Raises: ``ModelError`` for a model without that path structure (random features, ...).
    Example: ``path_norm(eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0)))``.
    """
    params, frozen = partition(model)
    sq = eqx.combine(jax.tree.map(jnp.square, params), frozen)
    if isinstance(sq, CNN):
        v = sq.conv2(sq.conv1(jnp.ones(sq.image_shape, sq.conv1.weight.dtype)))
        return jnp.sum(sq.head(jnp.mean(v, axis=(1, 2))))
    layers = _linear_chain(sq)
    if layers is None:
        raise ModelError(f"path_norm: not defined for {type(model).__qualname__}; it needs an "
                         "MLP-like model (eqx.nn.Linear layers with elementwise activations)")
    first = layers[0]
    v = jnp.ones(() if first.in_features == "scalar" else (first.in_features,), first.weight.dtype)
    for layer in layers:
        v = layer(v)
    return jnp.sum(v)


# ---------------------------------------------------------------- margins


def _example_margin(objective: Objective, params, x, y):
    out = objective.predict(params, x)
    other = jnp.where(jnp.arange(out.shape[0]) == y, -jnp.inf, out)
    return out[y] - jnp.max(other)


@eqx.filter_jit
def margins(objective: Objective, params, x, y, chunk_size: int = DEFAULT_CHUNK) -> jax.Array:
    """f(x_i)_{y_i} − max_{j≠y_i} f(x_i)_j for every training example (chunked, in order)."""
    if not objective.num_classes:
        raise ValueError("margins need class labels (num_classes > 0)")
    xc, yc, _ = chunk_data(x, y, chunk_size)
    per = jax.vmap(partial(_example_margin, objective), in_axes=(None, 0, 0))
    out = jax.lax.map(lambda b: per(params, b[0], b[1]), (xc, yc))
    return out.reshape(-1)[: x.shape[0]]


def margin_percentile(objective: Objective, params, x, y, q: float = 10.0,
                      chunk_size: int = DEFAULT_CHUNK) -> jax.Array:
    """γ = q-th percentile (linear interpolation) of the training margins (Jiang 2020 §C.2)."""
    return jnp.percentile(margins(objective, params, x, y, chunk_size), q)


# ---------------------------------------------------------------- all measures


def _tag(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_")


@eqx.filter_jit
def norm_measures(params, init_params) -> dict[str, jax.Array]:
    """Norm and distance measures (no data needed), Jiang et al. 2020 eqs. 32–42.

    ``num_params``; ``param_norm`` ‖θ‖₂; ``dist_from_init`` ‖θ−θ0‖₂; ``dist_spec_from_init``
    Σ_l ‖W_l−W_l⁰‖₂; ``dist_spec_init`` Σ_l ‖W_l−W_l⁰‖₂² (eq. 41); ``log_prod_of_spec``,
    ``log_sum_of_spec``, ``log_prod_of_fro``, ``log_sum_of_fro`` (eqs. 32, 35, 37, 39);
    ``fro_over_spec`` Σ_l ‖W_l‖_F²/‖W_l‖₂² (eq. 33); ``dist_fro_over_spec``
    Σ_l ‖W_l−W_l⁰‖_F²/‖W_l‖₂²; per layer (``layers[0]`` → ``layers_0``): ``spectral_norm_*``,
    ``frobenius_norm_*``, ``dist_fro_init_*`` ‖W_l−W_l⁰‖_F, ``dist_spec_init_*`` ‖W_l−W_l⁰‖₂.
    """
    spec, fro = spectral_norms(params), frobenius_norms(params)
    dist = distance_from_init(params, init_params)
    out = {
        "num_params": jnp.asarray(float(_flat(params).size)),
        "param_norm": parameter_norm(params),
        "dist_from_init": dist["frobenius"],
        "dist_spec_from_init": dist["spectral"],
        "dist_spec_init": sum((v**2 for v in dist["layer_spectral"].values()), jnp.zeros(())),
        "log_prod_of_spec": log_prod_spectral(params),
        "log_sum_of_spec": log_sum_spectral(params),
        "log_prod_of_fro": log_prod_frobenius(params),
        "log_sum_of_fro": log_sum_frobenius(params),
        "fro_over_spec": sum((fro[k] ** 2 / spec[k] ** 2 for k in spec), jnp.zeros(())),
        "dist_fro_over_spec": sum(
            (dist["layer_frobenius"][k] ** 2 / spec[k] ** 2 for k in spec), jnp.zeros(())),
    }
    for k in spec:
        out[f"spectral_norm_{_tag(k)}"] = spec[k]
        out[f"frobenius_norm_{_tag(k)}"] = fro[k]
        out[f"dist_fro_init_{_tag(k)}"] = dist["layer_frobenius"][k]
        out[f"dist_spec_init_{_tag(k)}"] = dist["layer_spectral"][k]
    return out


@eqx.filter_jit
def margin_measures(norms: dict, path: jax.Array, gamma: jax.Array, d: int) -> dict:
    """Margin-normalised measures from γ (Jiang et al. 2020 eqs. 22, 29–31, 34, 36, 38, 43).

    ``margin`` γ; ``inverse_margin`` 1/γ²; ``log_prod_of_{spec,fro}_over_margin`` log(Π‖W_l‖²/γ²);
    ``log_sum_of_{spec,fro}_over_margin`` log d + (1/d)·log(Π‖W_l‖²/γ²);
    ``log_spec_init_main`` log(Π‖W_l‖₂²/γ² · Σ_l ‖W_l−W_l⁰‖_F²/‖W_l‖₂²);
    ``log_spec_orig_main`` log(Π‖W_l‖₂²/γ² · Σ_l ‖W_l‖_F²/‖W_l‖₂²); ``path_norm_over_margin``.
    """
    log_g2 = 2.0 * jnp.log(jnp.abs(gamma))
    spec_m = norms["log_prod_of_spec"] - log_g2
    fro_m = norms["log_prod_of_fro"] - log_g2
    return {
        "margin": gamma,
        "inverse_margin": 1.0 / gamma**2,
        "log_prod_of_spec_over_margin": spec_m,
        "log_sum_of_spec_over_margin": math.log(d) + spec_m / d,
        "log_spec_init_main": spec_m + jnp.log(norms["dist_fro_over_spec"]),
        "log_spec_orig_main": spec_m + jnp.log(norms["fro_over_spec"]),
        "log_prod_of_fro_over_margin": fro_m,
        "log_sum_of_fro_over_margin": math.log(d) + fro_m / d,
        "path_norm_over_margin": path / gamma**2,
    }


def compute_measures(model, init_model, objective_loss, data, key, *,
                     num_classes: int | None = None, trace_metrics: dict | None = None,
                     margin_q: float = 10.0, target_drop: float = 0.1, num_samples: int = 16,
                     num_steps: int = 20, num_bisection: int = 20, eps: float = 1e-3,
                     flatness: bool = True, chunk_size: int = DEFAULT_CHUNK,
                     num_restarts: int = 4) -> dict[str, float]:
    """Every measure of this module for one trained model, as a flat dict of Python floats.

    ``objective_loss`` is an ``Objective`` or a loss name (``"ce"``/``"mse"``; num_classes is
    then inferred: model output size for integer labels, 0 otherwise). ``data`` = (x_train,
    y_train). Regression gives NaN for margin measures and uses the loss criterion for flatness.
    Names: those of ``norm_measures`` and ``margin_measures``, plus ``path_norm`` (Σ_paths Π w²),
    ``path_norm_sqrt``, ``pacbayes_{sigma,flatness,init,orig}``, ``pacbayes_mag_{...}``,
    ``sharpness_{radius,flatness,init,orig}``, ``mag_sharpness_{...}`` (flatness = 1/σ², 1/α²;
    searches: ``num_samples`` noise draws, ``num_steps`` ascent steps from ``num_restarts``
    starts), ``pacbayes_sigma_se``/``pacbayes_mag_sigma_se`` (σ's sampling standard error over
    the noise draws, ``flatness.pacbayes_sigma_se``),
    the ``TRACE_MEASURES`` found in ``trace_metrics`` and, with λ_max / tr H given,
    ``lambda_max_scaled`` = λ_max·‖θ‖² and ``hessian_trace_scaled`` = tr H·‖θ‖² (docs/science.md#curvature).
    """
    x, y = data
    params, frozen = partition(model)
    init_params, _ = partition(init_model)
    if isinstance(objective_loss, Objective):
        objective = objective_loss
    else:
        if num_classes is None:
            integer = jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer)
            num_classes = jax.eval_shape(model, x[0]).shape[0] if integer else 0
        objective = Objective(frozen, objective_loss, num_classes)
    d = len(weight_matrices(params))
    out = norm_measures(params, init_params)
    try:
        pn = path_norm(model)
    except ModelError:  # no path structure (e.g. random features)
        pn = jnp.asarray(jnp.nan)
    out.update(path_norm=pn, path_norm_sqrt=jnp.sqrt(pn))
    if objective.num_classes:
        gamma = margin_percentile(objective, params, x, y, margin_q, chunk_size)
    else:
        gamma = jnp.asarray(jnp.nan)
    out.update(margin_measures(out, pn, gamma, d))
    if flatness:
        out.update(_flatness_measures(objective, params, init_params, x, y, key, target_drop,
                                      num_samples, num_steps, num_bisection, eps, chunk_size,
                                      num_restarts))
    result = {k: float(v) for k, v in out.items()}
    result.update(_trace_measures(trace_metrics or {}, result["param_norm"]))
    return result


def _flatness_measures(objective, params, init_params, x, y, key, target, num_samples,
                       num_steps, num_bisection, eps, chunk_size, num_restarts) -> dict:
    crit = "accuracy" if objective.num_classes else "loss"
    common = dict(target_drop=target, eps=eps, criterion=crit, num_bisection=num_bisection,
                  chunk_size=chunk_size)
    k = jax.random.split(key, 4)
    n = x.shape[0]
    out = {}
    for mag, prefix in ((False, "pacbayes"), (True, "pacbayes_mag")):
        s = pacbayes_sigma(objective, params, x, y, k[int(mag)], num_samples=num_samples,
                           magnitude_aware=mag, **common)
        out.update(_bound_family(prefix, "sigma", s, pacbayes_bound_term, params, init_params,
                                 n, mag, eps))
        out[f"{prefix}_sigma_se"] = pacbayes_sigma_se(
            objective, params, x, y, k[int(mag)], s, num_samples=num_samples,
            magnitude_aware=mag, eps=eps, criterion=crit, chunk_size=chunk_size)
    for mag, prefix in ((False, "sharpness"), (True, "mag_sharpness")):
        a = sharpness_radius(objective, params, x, y, k[2 + int(mag)], num_steps=num_steps,
                             num_restarts=num_restarts, magnitude_aware=mag, **common)
        out.update(_bound_family(prefix, "radius", a, sharpness_bound_term, params, init_params,
                                 n, mag, eps))
    return out


def _bound_family(prefix, scale_name, s, bound, params, init_params, n, mag, eps) -> dict:
    kw = dict(magnitude_aware=mag, eps=eps)
    return {
        f"{prefix}_{scale_name}": s,
        f"{prefix}_flatness": 1.0 / s**2,
        f"{prefix}_init": bound(s, params, init_params, n, reference="init", **kw),
        f"{prefix}_orig": bound(s, params, init_params, n, reference="orig", **kw),
    }


def _trace_measures(trace_metrics: dict, theta_norm: float) -> dict[str, float]:
    out = {k: float(trace_metrics[k]) for k in TRACE_MEASURES
           if trace_metrics.get(k) is not None}
    for k in ("lambda_max", "hessian_trace"):
        if k in out:
            out[f"{k}_scaled"] = out[k] * theta_norm**2
    return out
