"""Runs: a model, data, a loss and a dynamics → ``engine.execute`` → a trace.

Two doors into the one engine:

* ``run(model, data, optimizer, ...)`` (the public API): any ``eqx.Module`` acting on one
  example (dropout via a ``key`` argument; BatchNorm via ``state=`` from
  ``eqx.nn.make_with_state``), arrays or a ``Dataset``, a loss name or per-example callable,
  an optimizer name, ``optax.GradientTransformation`` or dynamics module. ``compare`` runs
  several optimizers from the identical θ0.
* ``train(cfg)``: a ``RunConfig`` (the CLI's presets and sweep grids) built into the same call.

Every run records honest provenance: the model's class, parameter count and structure hash,
the data's name, shapes and content hash, the loss and the optimizer as given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import dynamics as dyn
from .batching import HostArray, check_budget
from .config import FULL_BATCH, RunConfig, validate
from .data import CenterCrop, Dataset
from .engine import Problem, Run, execute, init_state
from .errors import ConfigError, ModelError, OptimizerError, PrecisionError
from .losses import LossFn, Objective, check_objective, is_stateful, is_stochastic, loss_name
from .models import ZOO_MODELS, layer_names, make_preset, num_params, trainable_filter
from .probes import CurvatureProbe, Probe
from .trace import device_info, last_value, versions

Optimizer = str | dyn.AbstractDynamics | optax.GradientTransformation
MINIBATCH_DEFAULT = 32


def load_data(cfg: RunConfig, device_budget: int | None = None) -> Dataset:
    """The run's dataset: source, preprocessing, subset, centre crop and randomization from
    ``cfg``; inputs (and regression targets) in the run's ``cfg.dtype``, so a float64 run never
    reads float32-rounded data (preprocessing is float64 throughout, see ``data.preprocess``).
    The crop comes before the randomization (Zhang et al. 2017 randomize the cropped images)
    and after the per-feature standardization, which it commutes with.

    ``device_budget`` (bytes; default ``cfg.device_budget``): ``Dataset.device_budget``;
    MNIST/CIFAR-10 then stay in their files (``open_dataset``: memory-mapped, streamed), checked
    against one chunk of ``cfg.eval_chunk`` rows (ConfigError). An input randomization reads
    such data into RAM."""
    from .datasets import open_dataset
    from .randomization import INPUT_KINDS, randomize

    if device_budget is None:
        device_budget = cfg.device_budget

    ds = open_dataset(cfg.dataset, data_dir=cfg.data_dir, preprocess=cfg.preprocess,
                      n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed,
                      dtype=np.dtype(cfg.dtype), device_budget=device_budget)
    if cfg.crop is not None:
        ds = center_crop(ds, cfg.crop)
    if cfg.randomization in INPUT_KINDS and isinstance(ds.x_train, HostArray):
        ds = ds.replace(x_train=ds.x_train[:], x_test=ds.x_test[:])
    if cfg.randomization != "none":
        ds = randomize(ds, cfg.randomization, p=cfg.corruption, seed=cfg.seed)
    if device_budget is not None:  # one chunk of the rows the run sees (cropped)
        streamed(ds, cfg.dtype, cfg.eval_chunk)  # a budget below one chunk: ConfigError
    return ds


def center_crop(ds: Dataset, size: int) -> Dataset:
    """The central ``size``×``size`` pixels of every image (train and test): rows and columns
    from ⌊(H − size)/2⌋ and ⌊(W − size)/2⌋ (TensorFlow's ``central_crop`` offsets; Zhang et al.
    2017 crop CIFAR-10's 32×32 to 28×28). NumPy views, no copy; host-streamed data
    (``batching.HostArray``) are cropped chunk by chunk as they are read (``data.CenterCrop``).
    ConfigError (naming ``crop``) for non-image data or a crop larger than the image."""
    shape = ds.input_shape
    if len(shape) != 3:
        raise ConfigError(f"crop: {ds.name} is not image data (channels, height, width); its "
                          f"examples have shape {shape}")
    _, h, w = shape
    if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool)
            and 1 <= size <= min(h, w)):
        raise ConfigError(f"crop must be an integer in 1..{min(h, w)} for the {h}×{w} images of "
                          f"{ds.name}, got {size!r}")
    cut = CenterCrop(size, h, w)

    def crop(x):  # host data (memory-mapped files): cropped chunk by chunk as they are read
        return x.map(cut) if isinstance(x, HostArray) else cut(x)

    return ds.replace(x_train=crop(ds.x_train), x_test=crop(ds.x_test),
                      meta={**ds.meta, "crop": [int(size), int(size)]})


def require_dtype(dtype) -> Any:
    """``jnp.float32``/``float64`` for a name or dtype; float64 needs JAX's 64-bit mode, which
    sgdreg never switches on by itself (it is process-wide)."""
    dt = jnp.dtype(dtype)
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise PrecisionError("dtype: float64 needs JAX's 64-bit mode; set JAX_ENABLE_X64=1 or "
                             "call jax.config.update('jax_enable_x64', True) before creating "
                             "arrays (the sgdreg command does this for you)")
    if dt not in (jnp.float32, jnp.float64):
        raise PrecisionError(f"dtype: {dt} is not supported; use float32 or float64")
    return dt.type


def dtype_of(cfg: RunConfig):
    return require_dtype(cfg.dtype)


def as_dataset(data: Dataset | Sequence | dict, name: str | None = None) -> Dataset:
    """A ``Dataset`` from a Dataset, a tuple ``(x_train, y_train, x_test, y_test)`` or a dict
    with those keys; integer labels mean classification (classes = max label + 1), float
    labels regression (targets of shape (n, k)).

    Example: ``ds = sgdreg.as_dataset((x_train, y_train, x_test, y_test), name="mine")``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, dict):
        data = tuple(data.get(k) for k in ("x_train", "y_train", "x_test", "y_test"))
    if not isinstance(data, (tuple, list)) or len(data) != 4 or any(a is None for a in data):
        raise ConfigError("data: give a Dataset, (x_train, y_train, x_test, y_test) or a dict "
                          "with those keys")
    xtr, ytr, xte, yte = (np.asarray(a) for a in data)
    if len(xtr) != len(ytr) or len(xte) != len(yte) or len(xtr) == 0:
        raise ConfigError(f"data: x_train/y_train have {len(xtr)}/{len(ytr)} rows and "
                          f"x_test/y_test {len(xte)}/{len(yte)}; each pair must match (non-empty)")
    if ytr.dtype.kind in "iub":
        k = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
        ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    else:
        k = 0
        ytr, yte = ytr.reshape(len(ytr), -1), yte.reshape(len(yte), -1)
    return Dataset(name or "arrays", xtr, ytr, xte, yte, k)


def device_data(ds: Dataset, dtype, chunk: int = 4096) -> dyn.Data:
    """The dataset on the device, or, when it exceeds ``ds.device_budget`` bytes, left on the
    host as ``batching.HostArray`` (streamed in chunks of ``chunk`` rows; see batching.py)."""
    ytype = jnp.int32 if ds.num_classes else dtype
    arrays = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    if streamed(ds, dtype, chunk):
        return dyn.Data(*(HostArray(a if isinstance(a, HostArray) else np.asarray(a), t)
                          for a, t in zip(arrays, (dtype, ytype, dtype, ytype), strict=True)))
    return dyn.Data(*(jnp.asarray(a[:] if isinstance(a, HostArray) else a, t)
                      for a, t in zip(arrays, (dtype, ytype, dtype, ytype), strict=True)))


def streamed(ds: Dataset, dtype, chunk: int) -> bool:
    """Whether ``ds`` exceeds its ``device_budget`` (ConfigError if the budget is below one
    chunk of ``chunk`` training rows)."""
    if ds.device_budget is None:
        return False
    itemsize = jnp.dtype(dtype).itemsize
    lab = 4 if ds.num_classes else itemsize
    row = int(np.prod(ds.input_shape, dtype=np.int64)) * itemsize + lab * int(
        np.prod(ds.y_train.shape[1:], dtype=np.int64))
    check_budget(int(ds.device_budget), min(chunk, max(ds.n_train, 1)) * row)
    return ds.device_bytes(itemsize) > ds.device_budget


def structure_hash(model) -> str:
    """sha256 (16 hex) of the model's tree structure, static fields and array shapes/dtypes.
    Equal for a model and its ``eqx.filter_eval_shape`` skeleton, and across processes (memory
    addresses in the repr of static callables are dropped)."""
    arrays, static = eqx.partition(
        model, lambda a: eqx.is_array(a) or isinstance(a, jax.ShapeDtypeStruct))
    shapes = [(tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(arrays)]
    text = repr((type(model).__qualname__, jax.tree.structure(arrays), shapes))
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_hash(ds: Dataset) -> str:
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        if isinstance(a, HostArray):  # host data: its raw bytes and transform (cached)
            h.update(a.digest().encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class Setup:
    """Everything a run needs, built once: data, model, θ0, the problem and the keys."""

    dataset: Dataset
    data: dyn.Data
    model0: eqx.Module
    params0: Any
    problem: Problem
    hyper: dyn.Hyper
    model_state0: Any
    keys: dict[str, jax.Array]
    provenance: dict[str, Any]
    cfg: RunConfig | None = None

    def state0(self) -> dyn.TrainState:
        return init_state(self.problem, self.params0, self.hyper, self.keys["data"],
                          self.keys["model"], self.dataset.n_train, self.model_state0)


def prepare(model: eqx.Module, dataset: Dataset, dynamics: dyn.AbstractDynamics,
            loss: str | LossFn, *, lr: float, momentum: float = 0.9, egr: float = 0.0,
            seed: int = 0, state=None, trainable=None, eval_chunk: int = 4096,
            preset: str | None = None, label_noise: float = 0.0,
            ghost_batch: int | None = None) -> Setup:
    """Partition the model, build the objective and check it on one example (no compute).
    ``label_noise``: δ of label-noise SGD (``Hyper.label_noise``; used by dynamics built with
    ``label_noise=True``). ``ghost_batch``: G, a BatchNorm/dropout model's training-mode
    batches of more than G rows are evaluated in ghost batches of G rows (default: none in
    memory; ``eval_chunk`` rows when full-batch training streams from the host;
    docs/science.md#batchnorm-and-dropout)."""
    if not isinstance(model, eqx.Module):
        raise ModelError(f"model: expected an equinox.Module, got {type(model).__name__}")
    stateful = is_stateful(model)
    if stateful and state is None:
        raise ModelError("model holds stateful layers (e.g. eqx.nn.BatchNorm); pass state= "
                         "from `model, state = eqx.nn.make_with_state(Model)(...)`")
    spec = trainable if trainable is not None else trainable_filter(model)
    params0, frozen = eqx.partition(model, spec)
    leaves = jax.tree.leaves(params0)
    if not leaves:
        raise ModelError("model has no trainable floating-point arrays")
    dtype = require_dtype(leaves[0].dtype)
    obj = Objective(frozen, loss, dataset.num_classes, state, stateful, is_stochastic(model))
    data = device_data(dataset, dtype, eval_chunk)
    on_host = isinstance(data.x_train, HostArray)
    dynamics.check_model(obj.stateful, obj.stochastic)
    ghost_batch = _ghost_batch(ghost_batch, obj, dynamics, on_host, eval_chunk)
    check_objective(obj, params0, data.x_train[0], data.y_train[0], dataset.out_size)
    if dynamics.batch_size is not None and dynamics.batch_size > dataset.n_train:
        raise ConfigError(f"batch_size {dynamics.batch_size} exceeds the {dataset.n_train} "
                          "training examples")
    k_data, k_probe, k_model = jax.random.split(jax.random.key(seed), 3)
    hyper = dyn.Hyper(*(jnp.asarray(v, dtype) for v in (lr, momentum, egr, label_noise)))
    prov = {
        "model": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "preset": preset, "num_params": num_params(params0),
                  "structure_hash": structure_hash(model), "stateful": stateful,
                  "stochastic": obj.stochastic, "dtype": str(jnp.dtype(dtype))},
        "data": {**dataset.describe(), "hash": data_hash(dataset),
                 "placement": "host (streamed)" if on_host else "device",
                 "chunk": min(eval_chunk, dataset.n_train), "ghost_batch": ghost_batch},
        "loss": loss_name(loss),
        "dynamics": dynamics.describe(),
    }
    return Setup(dataset, data, model, params0, Problem(obj, dynamics, eval_chunk, ghost_batch),
                 hyper,
                 state, {"data": k_data, "probe": k_probe, "model": k_model}, prov)


def _ghost_batch(ghost_batch, obj: Objective, dynamics, on_host: bool, chunk: int):
    """The ghost batch size of a run (``prepare``): the one given (checked), else ``chunk``
    when a BatchNorm/dropout model trains full-batch on streamed data, else None."""
    trains = obj.stateful or obj.stochastic
    given = ghost_batch is not None
    if not given:
        ghost_batch = chunk if on_host and trains and dynamics.batch_size is None and not \
            dynamics.is_flow else None
    elif isinstance(ghost_batch, bool) or not isinstance(ghost_batch, (int, np.integer)) \
            or ghost_batch < 1:
        raise ConfigError(f"ghost_batch must be a positive integer (rows), got {ghost_batch!r}")
    elif not trains:
        raise ConfigError("ghost_batch: the model has neither BatchNorm nor dropout, so its "
                          "training loss does not depend on ghost batches; leave it unset")
    if ghost_batch is not None and getattr(dynamics, "egr", False):
        what = "ghost_batch" if given else "device_budget"
        raise ConfigError(f"{what}: EGR of a BatchNorm/dropout model in ghost batches (streamed "
                          "full-batch training) is not implemented; use egr=0, minibatches or "
                          "a larger budget")
    return None if ghost_batch is None else int(ghost_batch)


def build(cfg: RunConfig, dataset: Dataset | None = None, model: eqx.Module | None = None,
          state=None) -> Setup:
    """A ``RunConfig``'s setup: validated, data loaded, θ0 from ``cfg.seed`` (or ``model`` and
    its ``state``): the preset ``cfg.model`` from ``models.make_preset`` with the key
    ``split(key(cfg.seed), 3)[0]``, a BatchNorm preset with its ``eqx.nn.State``; the discrete
    methods with ``cfg.lr_decay``/``cfg.lr_decay_every`` get the staircase step-size schedule."""
    given = dict(dataset_given=dataset is not None, model_given=model is not None)
    validate(cfg, **given)
    dtype = dtype_of(cfg)
    ds = dataset if dataset is not None else load_data(cfg)
    validate(cfg, ds.n_train, input_shape=ds.input_shape, **given)
    k_init = jax.random.split(jax.random.key(cfg.seed), 3)[0]
    preset = None
    if model is None:
        # the small presets: one compiled program instead of one per eager initializer op
        # (warm runs: ~0.5 s); the paper-scale ones eagerly, as built by hand (compiling their
        # initializers takes longer than running them); a BatchNorm preset comes with its state
        init = make_preset if cfg.model in ZOO_MODELS else eqx.filter_jit(make_preset)
        model, state = init(
            cfg.model, ds.input_shape, ds.out_size, key=k_init, width=cfg.width,
            depth=cfg.depth, activation=cfg.activation, dtype=dtype)
        preset = cfg.model
    schedule = {"lr_decay": cfg.lr_decay, "lr_decay_every": cfg.lr_decay_every} \
        if cfg.lr_schedule else {}
    dynamics = dyn.resolve(cfg.optimizer, batch_size=None if cfg.full_batch else cfg.batch_size,
                           egr=cfg.egr > 0, rtol=cfg.rtol, atol=cfg.atol,
                           label_noise=cfg.label_noise > 0, eigs=cfg.central_flow_eigs,
                           amplification=cfg.svag_amplification, **schedule)
    s = prepare(model, ds, dynamics, cfg.loss, lr=cfg.lr, momentum=cfg.momentum, egr=cfg.egr,
                seed=cfg.seed, state=state, eval_chunk=cfg.eval_chunk, preset=preset,
                label_noise=cfg.label_noise)
    s.cfg = cfg
    return s


@dataclass
class RunResult:
    """A finished run: its trace, final and initial model, final BatchNorm state, setup."""

    trace: dict[str, Any]
    model: eqx.Module
    model0: eqx.Module
    setup: Setup
    state: Any = None
    final: Any = field(default=None, repr=False)


def _config_record(s: Setup, cfg: RunConfig | None, run_cfg: dict) -> dict:
    """The trace's ``config``: the RunConfig (model fields only when its preset was used; the
    dataset's real name), or the arguments of ``run``."""
    if cfg is None:
        return run_cfg
    d = cfg.to_dict()
    d["dataset"] = s.dataset.name if s.dataset.name != cfg.dataset else cfg.dataset
    if s.provenance["model"]["preset"] is None:
        d.update(model=s.provenance["model"]["class"].rsplit(".", 1)[-1], width=None, depth=None,
                 activation=None)
    return d


def _execute(s: Setup, *, steps: int, log_every: int, lr: float, seed: int,
             probes: Sequence[Probe], stop_loss, trace_path, progress, run_cfg: dict,
             run_id: str, loggers=None) -> RunResult:
    header = {"run_id": run_id, "config": _config_record(s, s.cfg, run_cfg),
              "provenance": s.provenance, "dataset": s.dataset.describe(),
              "versions": versions(), "device": device_info(), "seed": seed,
              "num_params": num_params(s.params0), "layers": layer_names(s.params0)}
    r = Run(s.problem, s.data, s.state0(), s.params0, steps, log_every, lr, s.keys["probe"],
            header, stop_loss, list(probes))
    from pathlib import Path

    from .loggers import resolve

    logs = resolve(loggers, None if trace_path is None else Path(trace_path).parent)
    out = execute(r, trace_path=trace_path, progress=progress, summarize=summarize, loggers=logs)
    model = eqx.combine(out.state.params, s.problem.objective.frozen)
    return RunResult(out.trace, model, s.model0, s, out.state.model_state, out.state)


def train(cfg: RunConfig, dataset: Dataset | None = None, *, trace_path=None,
          probes: Sequence[Probe] = (), progress: Callable[[int, int, dict], None] | None = None,
          model: eqx.Module | None = None, setup: Setup | None = None, state=None,
          loggers=None) -> RunResult:
    """Run one ``RunConfig`` to ``cfg.steps`` (or divergence), writing the trace as it goes.

    The configuration door of ``run`` (the CLI and sweep grids use it): data from
    ``cfg.dataset`` (or ``dataset``), the preset ``cfg.model`` from ``cfg.seed`` (or your
    ``model``/``state``: the trace then records its class, not the preset), ``cfg.optimizer``,
    ``cfg.loss``; the curvature probe every ``cfg.hessian_every`` steps when set; for a
    ``LinearModel``/``RandomFeatures`` with the MSE loss started at θ0 = 0 (the presets
    ``linear``/``random-features`` are), ``MinNormDistance`` (``dist_to_min_norm`` at every
    logged row, the min-norm solution's train/test loss and accuracy in the summary).

    Args:
        cfg: the run's ``RunConfig``; dataset: a ``Dataset`` overriding ``cfg.dataset``.
        trace_path: where to stream the JSON trace; probes: extra ``Probe`` objects.
        loggers: mirror the rows to "tensorboard", "wandb", "mlflow" (names: files beside the
            trace, needs ``trace_path``) and/or ``sgdreg.loggers.Logger`` objects.
    Returns:
        ``RunResult`` (``.trace``, ``.model``, ``.state``, ``.setup``).

    Example:
        >>> res = sgdreg.train(sgdreg.RunConfig(optimizer="sgd", lr=0.1, steps=500))  # doctest: +SKIP
    """
    from .engine import stop_scope
    from .loggers import check_specs

    check_specs(loggers)  # an unknown name or a missing package: before any work
    with stop_scope():  # a signal while building: execute sees STOP → 'interrupted' (0 rows)
        s = setup or build(cfg, dataset, model, state)
        cfg = s.cfg
        return _execute(s, steps=cfg.steps, log_every=cfg.log_every, lr=cfg.lr, seed=cfg.seed,
                        probes=config_probes(s, probes), stop_loss=cfg.stop_loss,
                        trace_path=trace_path, progress=progress, run_cfg={}, run_id=run_id(cfg),
                        loggers=loggers)


def config_probes(s: Setup, probes: Sequence[Probe] = ()) -> list[Probe]:
    """``probes`` plus those ``train(cfg)`` adds unless given: ``CurvatureProbe`` every
    ``cfg.hessian_every`` steps; ``MinNormDistance`` at every logged row when the model is
    linear in its trained parameters (``LinearModel``, ``RandomFeatures``), the loss is MSE and
    θ0 = 0 (θ* = Φ⁺Y computed here, once per run)."""
    from .min_norm import MinNormDistance, is_linear_in_params, starts_at_zero  # scipy: lazy

    cfg, probes, names = s.cfg, list(probes), {p.name for p in probes}
    if cfg.hessian_every and "curvature" not in names:
        probes.append(CurvatureProbe.from_config(cfg))
    if (cfg.loss == "mse" and MinNormDistance.name not in names
            and is_linear_in_params(s.model0) and starts_at_zero(s.params0)):
        probes.append(MinNormDistance.for_model(s.model0, s.dataset, every=cfg.log_every))
    return probes


def _check_counts(**values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 2**31 - 1:
            raise ConfigError(f"{name} must be an integer in 1..{2**31 - 1}, got {v!r}")


def run(model: eqx.Module, data: Dataset | Sequence | dict, optimizer: Optimizer = "gd", *,
        loss: str | LossFn = "ce", lr: float | None = None, steps: int = 1000,
        log_every: int = 10,
        batch_size: int | None = None, momentum: float = 0.9, egr: float = 0.0, seed: int = 0,
        state=None, probes: Sequence[Probe] = (), curvature: int = 0,
        stop_loss: float | None = None, trace_path=None, trainable=None, eval_chunk: int = 4096,
        progress: Callable[[int, int, dict], None] | None = None,
        name: str | None = None, label_noise: float = 0.0, loggers=None,
        ghost_batch: int | None = None) -> RunResult:
    """Train ``model`` on ``data`` with ``optimizer`` from the model's own arrays (θ0).

    Args:
        model: an ``eqx.Module`` acting on one example; ``__call__(x, *, key=None)`` for
            dropout, ``__call__(x, state, *, key=None) -> (out, state)`` for BatchNorm (pass
            ``state``).
        data: a ``Dataset`` or ``(x_train, y_train, x_test, y_test)``. A ``Dataset`` with
            ``device_budget`` (bytes) smaller than its data stays on the host and streams in
            chunks of ``eval_chunk`` rows (batching.py): same numbers, device memory of a chunk.
        optimizer: "gd", "sgd", "momentum", "nesterov", "adam", "flow", "modified-flow", an
            ``optax.GradientTransformation`` or a dynamics module (``sgdreg.GradientFlow()``).
        loss: "ce", "mse" or a callable ``loss(output, label) -> scalar`` for one example.
        lr: the step size h (t = step·h; h of the IGR terms; default 0.1). Traced: a new value
            does not recompile. For a user transform it sets an injected ``learning_rate``
            (``optax.inject_hyperparams``); without ``lr`` a transform's h is read from its
            injected ``learning_rate`` (schedules too) or is unknown (IGR terms and t null).
        batch_size: minibatch size (default 32 for sgd/momentum/nesterov/adam; None: full batch).
        seed: data order, dropout keys and probe keys (θ0 is the model you pass).
        probes: extra ``Probe`` objects; ``curvature=k``: the curvature probe every k steps.
        label_noise: δ > 0 turns on label-noise SGD (Blanc et al. 2020; Damian et al. 2021)
            for a discrete method: each step trains on y + δ·ε (regression, ε ~ N(0, I)) or
            on labels replaced with probability δ by another class drawn uniformly.
        loggers: mirror every logged row to "tensorboard", "wandb" (offline) and/or "mlflow"
            (file store), written beside the trace (names need ``trace_path``), or
            ``sgdreg.loggers.Logger`` objects; see ``sgdreg.loggers``. The trace stays the
            source of truth; a logger that fails mid-run is disabled and recorded there.
        ghost_batch: G rows: a BatchNorm/dropout model's training-mode batches of more than G
            rows are evaluated in ghost batches of G (each its own batch statistics and dropout
            key; docs/science.md#batchnorm-and-dropout). Streamed full-batch training uses
            G = ``eval_chunk`` unless given; in memory the default is one forward per batch.

    Returns:
        ``RunResult`` with ``.trace`` (the JSON trace), ``.model`` (final) and ``.state``.

    Example:
        >>> res = sgdreg.run(model, (x, y, xt, yt), "sgd", lr=0.05, steps=200)  # doctest: +SKIP
    """
    from .loggers import check_specs

    _check_counts(steps=steps, log_every=log_every)
    check_specs(loggers)
    lr = _step_size(optimizer, lr)
    ds = as_dataset(data)
    batch_size = _batch(optimizer, {"batch_size": batch_size})
    _check_label_noise(label_noise, ds)
    noisy = {"label_noise": True} if label_noise > 0 and isinstance(optimizer, str) else {}
    dynamics = dyn.resolve(optimizer, batch_size=batch_size, egr=egr > 0,
                           lr=None if np.isnan(lr) else lr, **noisy)
    if label_noise > 0 and not getattr(dynamics, "label_noise", False):
        if not isinstance(dynamics, dyn.Optax):
            raise OptimizerError(f"label_noise: only the discrete methods draw noisy labels, not "
                                 f"{dynamics.name!r}")
        dynamics = dataclasses.replace(dynamics, label_noise=True)  # a user transform
    s = prepare(model, ds, dynamics, loss, lr=lr, momentum=momentum, egr=egr, seed=seed,
                state=state, trainable=trainable, eval_chunk=eval_chunk, label_noise=label_noise,
                ghost_batch=ghost_batch)
    if curvature:
        _check_counts(curvature=curvature)
        probes = [*probes, CurvatureProbe(
            curvature, threshold=dynamics.eos_threshold(lr, momentum),
            batch_size=dynamics.batch_size, lr_decay=getattr(dynamics, "lr_decay", 1.0),
            lr_decay_every=getattr(dynamics, "lr_decay_every", 0))]
    rid = name or _default_name(dynamics, {"lr": lr, "seed": seed, "label_noise": label_noise})
    lr_record = None if np.isnan(lr) else lr
    run_cfg = {"optimizer": dynamics.name, "lr": lr_record, "steps": steps, "log_every": log_every,
               "batch_size": dynamics.batch_size, "momentum": momentum, "egr": egr,
               "seed": seed, "loss": loss_name(loss), "model": type(model).__name__,
               "dataset": ds.name, "dtype": s.provenance["model"]["dtype"],
               "stop_loss": stop_loss, "curvature_every": curvature, "label_noise": label_noise}
    return _execute(s, steps=steps, log_every=log_every, lr=lr, seed=seed, probes=probes,
                    stop_loss=stop_loss, trace_path=trace_path, progress=progress,
                    run_cfg=run_cfg, run_id=rid, loggers=loggers)


def compare(model: eqx.Module, data, optimizers: Sequence[Optimizer] | dict[str, Optimizer],
            *, out_dir=None, **kwargs) -> dict[str, RunResult]:
    """``run`` each optimizer from the identical θ0 (the model passed).

    Args:
        optimizers: names, optax transformations or dynamics; or a dict run name → optimizer.
        out_dir: if given, each trace is streamed to ``out_dir/<run name>.json`` (the folder is
            made by the first trace write, after that run's model, loss and data are checked).
        kwargs: passed to ``run`` (lr, steps, loss, state, curvature, ...).

    Returns:
        dict run name → ``RunResult``, in the order given.

    Example:
        >>> runs = sgdreg.compare(model, data, {"gd": "gd", "adamw": optax.adamw(1e-3)},
        ...                       steps=500, curvature=50, out_dir="runs")     # doctest: +SKIP
    """
    from pathlib import Path

    items = list(optimizers.items()) if isinstance(optimizers, dict) else [
        (None, o) for o in optimizers]
    n_tx = sum(isinstance(o, optax.GradientTransformation) for _, o in items)
    if n_tx > 1:  # unnamed transforms: optax0, optax1, ... in the order given
        j = iter(range(n_tx))
        items = [(label, dyn.from_transform(o, batch_size=kwargs.get("batch_size"),
                                            lr=kwargs.get("lr"), name=f"optax{next(j)}"))
                 if isinstance(o, optax.GradientTransformation) else (label, o)
                 for label, o in items]
    names = [label or _default_name(dyn.resolve(o, batch_size=_batch(o, kwargs)), {
        "lr": _step_size(o, kwargs.get("lr")), "seed": kwargs.get("seed", 0),
        "label_noise": kwargs.get("label_noise", 0.0)}) for label, o in items]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"optimizers: two runs would both be named {dup!r}; name them with a "
                          "dict {name: optimizer}")
    results: dict[str, RunResult] = {}
    for name, (_, opt) in zip(names, items):
        path = None if out_dir is None else Path(out_dir) / f"{name}.json"
        results[name] = run(model, data, opt, name=name, trace_path=path, **kwargs)
    return results


def _step_size(optimizer, lr) -> float:
    """h: ``lr`` if given (finite, > 0); else 0.1, or NaN (unknown) for a user transform, which
    carries its own step size."""
    if lr is None:
        if isinstance(optimizer, dyn.Optax) and optimizer.preset is None:
            return float("nan") if optimizer.lr is None else optimizer.lr
        return float("nan") if isinstance(optimizer, optax.GradientTransformation) else 0.1
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def _check_label_noise(label_noise, ds: Dataset) -> None:
    if isinstance(label_noise, bool) or not isinstance(
            label_noise, (int, float, np.integer, np.floating)) or not 0 <= label_noise < np.inf:
        raise ConfigError(f"label_noise must be a finite number ≥ 0, got {label_noise!r}")
    if ds.num_classes and label_noise > 1:
        raise ConfigError(f"label_noise is a flip probability for class labels: in [0, 1], got "
                          f"{label_noise}")


def _batch(optimizer, kwargs) -> int | None:
    b = kwargs.get("batch_size")
    if b is None and isinstance(optimizer, str) and optimizer not in FULL_BATCH:
        return MINIBATCH_DEFAULT
    return b


RUN_ID_MAX = 96  # characters: far below any file system's name limit with ".json" added


def _num(v) -> str:
    """``v`` as the shortest text that reads back as exactly ``v``: ``:g`` when that is exact
    (0.1, 1e-05), else the float's repr (0.1000001), so two different values never share a name."""
    t = f"{v:g}"
    return t if float(t) == float(v) else repr(float(v))


def bounded_id(readable: str, full: dict | None = None, limit: int = RUN_ID_MAX) -> str:
    """``readable`` if at most ``limit`` characters; else its first ``limit − 9`` characters, "-"
    and 8 hex digits of the sha256 of ``full`` (the whole configuration, keys sorted; default
    the readable text itself), so truncated names stay distinct."""
    if len(readable) <= limit:
        return readable
    import hashlib
    import json

    text = json.dumps(full if full is not None else readable, sort_keys=True, default=repr)
    return f"{readable[: limit - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _default_name(dynamics: dyn.AbstractDynamics, kwargs) -> str:
    """``<method>[_lr<h>][_b<B>][_l<ℓ>][_ln<δ>]_s<seed>``: h when known, B only for minibatch
    methods, SVAG's ℓ, the label-noise strength δ when on. Numbers are exact (``_num``: 0.1 and
    0.1000001 give two names); a name longer than ``RUN_ID_MAX`` is cut and gets a hash of the
    values (``bounded_id``)."""
    b = f"_b{dynamics.batch_size}" if dynamics.batch_size else ""
    b += f"_l{dynamics.amplification}" if hasattr(dynamics, "amplification") else ""
    b += f"_ln{_num(kwargs['label_noise'])}" if kwargs.get("label_noise") else ""
    lr = f"_lr{_num(kwargs['lr'])}" if np.isfinite(kwargs["lr"]) else ""
    return bounded_id(f"{dynamics.name}{lr}{b}_s{kwargs['seed']}",
                      {"name": dynamics.name, **{k: repr(v) for k, v in kwargs.items()}})


def run_id(cfg: RunConfig) -> str:
    """``<optimizer>_lr<h>[_b<B>][_l<ℓ>][_ln<δ>]_s<seed>``: B only for minibatch methods (as
    ``_default_name``), SVAG's ℓ, the label-noise strength δ when on.

    Unique and bounded: numbers are written exactly (``_num``: ``lr0.1`` and ``lr0.1000001``),
    so runs that differ in these fields get different ids; the hash is appended only when the
    readable id would exceed ``RUN_ID_MAX`` characters (then it is cut and 8 hex digits of the
    sha256 of the full sorted config disambiguate, ``bounded_id``)."""
    b = "" if cfg.full_batch else f"_b{cfg.batch_size}"
    b += f"_l{cfg.svag_amplification}" if cfg.optimizer == "svag" else ""
    b += f"_ln{_num(cfg.label_noise)}" if cfg.label_noise else ""
    return bounded_id(f"{cfg.optimizer}_lr{_num(cfg.lr)}{b}_s{cfg.seed}", cfg.to_dict())


SUMMARY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "gen_gap", "acc_gap",
                "weight_norm", "dist_from_init", "grad_norm_sq", "igr_gd", "igr_sgd_var",
                "modified_loss_gd", "modified_loss_sgd")
PROBE_SUMMARY_KEYS = ("hessian_trace", "hessian_trace_stderr", "lambda_max",
                      "lambda_max_converged", "eos_threshold", "batch_sharpness",
                      "batch_sharpness_stderr", "dist_to_min_norm", "preconditioned_sharpness",
                      "preconditioned_eos_threshold")


def summarize(doc: dict) -> dict:
    """Final values of the standard metrics and the first logged step at 100% train accuracy."""
    m = doc["metrics"]
    out: dict[str, Any] = {"final_step": m["step"][-1] if m.get("step") else None}
    for k in SUMMARY_KEYS:
        if k in m:
            out[k] = m[k][-1]
    for k in PROBE_SUMMARY_KEYS:  # probes log at their own cadence: their last recorded value
        last = last_value(m.get(k))
        if last is not None:
            out[k] = last
    mn = doc.get("probes", {}).get("min_norm", {})  # the min-norm solution θ* = Φ⁺Y itself
    for part in ("train", "test"):
        if f"{part}_loss" in mn:
            out[f"min_norm_{part}_loss"] = mn[f"{part}_loss"]
        if f"{part}_error" in mn:
            out[f"min_norm_{part}_acc"] = 1 - mn[f"{part}_error"]
    acc = m.get("train_acc")
    out["steps_to_fit"] = next(
        (st for st, a in zip(m["step"], acc) if a is not None and a >= 1.0), None
    ) if acc else None
    return out
