"""Run configuration: one frozen record that fully determines a run (with the seed).

Validation lives here so the CLI, sweeps and Python users get the same one-line errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .dynamics import NAMED as OPTIMIZERS  # noqa: E402

FULL_BATCH = ("gd", "flow", "modified-flow", "central-flow")  # the presets without minibatches
FLOWS = ("flow", "modified-flow", "central-flow", "sde")  # continuous time, solved with diffrax
DISCRETE = ("gd", "sgd", "momentum", "nesterov", "adam")
DTYPES = ("float32", "float64")


from .errors import ConfigError  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Steps of a discrete method are parameter updates; for
    flows the run integrates to t = steps·lr and logs at t = k·lr (docs/science.md#dynamics, time
    alignment)."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    preprocess: str | None = None  # None: standardize real data, keep synthetic tasks as drawn
    n_train: int | None = None
    n_test: int | None = None
    randomization: str = "none"
    corruption: float = 0.0
    crop: int | None = None  # centre crop of image data to crop×crop (Zhang et al.: 28)
    # model
    model: str = "mlp"
    width: int = 128
    depth: int = 1
    activation: str = "relu"
    loss: str = "ce"
    # dynamics
    optimizer: str = "gd"
    lr: float = 0.1
    steps: int = 1000
    batch_size: int = 32
    momentum: float = 0.9
    egr: float = 0.0
    # staircase step-size schedule of the discrete methods: h_t = lr·lr_decay^⌊t/lr_decay_every⌋
    # (lr_decay_every = 0: constant h; Zhang et al. 2017: ×0.95 per epoch)
    lr_decay: float = 1.0
    lr_decay_every: int = 0
    stop_loss: float | None = None  # stop at the first logged step with train_loss ≤ this
    rtol: float = 1e-5
    atol: float = 1e-7
    # label-noise SGD (discrete methods): σ of Gaussian noise on regression targets, or the
    # probability of replacing a class label by a uniformly drawn other class (0 = off)
    label_noise: float = 0.0
    central_flow_eigs: int = 3  # eigenvalues the central flow tracks (its SDCP's size)
    svag_amplification: int = 8  # SVAG's ℓ: steps of h/ℓ per step of h, noise amplified
    # curvature probes (0 = off): every k steps, on the first ``hessian_n`` training examples
    hessian_every: int = 0
    probes: int = 20
    probe_kind: str = "rademacher"
    lanczos_steps: int = 20
    # λ_min: Lanczos run until its Ritz residual converges, at most this many steps (0 = no λ_min)
    lambda_min_steps: int = 500
    top_k: int = 3
    hessian_n: int | None = None
    slq: bool = False
    # logging
    log_every: int = 10
    eval_chunk: int = 4096
    # placement, not science (as eval_chunk): data above this many bytes stay on the host and
    # stream to the device in chunks (``Dataset.device_budget``; MNIST/CIFAR-10 memory-mapped)
    device_budget: int | None = None
    seed: int = 0
    dtype: str = "float32"

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def full_batch(self) -> bool:
        return self.optimizer in FULL_BATCH

    @property
    def is_flow(self) -> bool:
        return self.optimizer in FLOWS

    @property
    def lr_schedule(self) -> tuple[float, int] | None:
        """(lr_decay, lr_decay_every) when the step size decays, else None."""
        return (self.lr_decay, self.lr_decay_every) if self.lr_decay_every and \
            self.lr_decay != 1 else None

    def steps_per_epoch(self, n: int) -> int:
        """m = ⌊n/B⌋ minibatches per epoch (the last partial batch is dropped); 1 for full batch."""
        return 1 if self.full_batch else n // self.batch_size


MAX_STEPS = 2**31 - 1  # the engine's step counters are int32
MAX_SEED = 2**32 - 1  # jax.random.PRNGKey / numpy seeds
MAX_COUNT = 2**31 - 1  # every other count (width, batch size, probes, ...): int32 too
REGRESSION_DATASETS = ("teacher", "linreg")  # real-valued targets: the mse loss only

_INT_FIELDS = ("steps", "batch_size", "width", "depth", "log_every", "eval_chunk", "probes",
               "lanczos_steps", "lambda_min_steps", "top_k", "hessian_every",
               "central_flow_eigs", "svag_amplification", "lr_decay_every")
_POSITIVE = ("steps", "batch_size", "width", "log_every", "eval_chunk", "central_flow_eigs",
             "svag_amplification")
_OPTIONAL_INT_FIELDS = ("n_train", "n_test", "hessian_n", "crop")
_FLOAT_FIELDS = ("lr", "corruption", "momentum", "egr", "rtol", "atol", "label_noise",
                 "lr_decay")


def _is_int(v) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v, lo: int = 0, hi: int = MAX_COUNT, what: str = "an integer") -> None:
    """One-line ConfigError unless ``v`` is an integer in lo..hi (``name`` is the argument)."""
    if not _is_int(v) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be {what} in {lo}..{hi}, got {v!r}")


def check_real(name: str, v, lo: float = float("-inf"), hi: float = float("inf"), *,
               lo_open: bool = False, hi_open: bool = False) -> None:
    """One-line ConfigError unless ``v`` is a finite number in the interval (``name`` is the
    argument); NaN and ±inf are always rejected."""
    import math

    ok = _is_real(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and (
        v < hi if hi_open else v <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        if lo == float("-inf") and hi == float("inf"):
            rng = ""
        elif hi == float("inf"):
            rng = f" > {lo:g}" if lo_open else f" ≥ {lo:g}"
        else:
            rng = f" in {left}{lo:g}, {hi:g}{right}"
        raise ConfigError(f"{name} must be a finite number{rng}, got {v!r}")


def validate(cfg: RunConfig, n_train: int | None = None, *, dataset_given: bool = False,
             model_given: bool = False, input_shape: tuple[int, ...] | None = None) -> None:
    """Raise ConfigError with one clear line (naming the RunConfig field) for any value a run
    cannot use; the CLI shows the field as its option (``lr`` → ``--lr``).

    Checked here, before any data is loaded or anything compiled: known names (optimizer, model,
    activation, dataset, loss, dtype, randomization, preprocessing), types, finiteness (NaN and
    ±inf are rejected for every number), ranges, integer bounds (steps ≤ ``MAX_STEPS`` = 2³¹ − 1,
    the int32 step counter; seed in 0..``MAX_SEED`` = 2³² − 1; every other count ≤ 2³¹ − 1), and
    consistency (corruption needs a label-corruption randomization, ce needs class labels).
    With ``n_train`` (the loaded training set's size) also the sizes that depend on it; with
    ``input_shape`` (one loaded example, after ``crop``) whether the preset model takes it
    (``models.check_preset_input``: image presets need (channels, height, width)).
    ``dataset_given``/``model_given``: the caller supplies the data/model itself (``build``), so
    ``dataset`` (and the ce/regression check) or ``model`` and ``activation`` are labels, not
    names to look up."""
    from .data import PREPROCESS
    from .datasets import DATASETS
    from .models import ACTIVATIONS, MODELS
    from .randomization import LABEL_KINDS, RANDOMIZATIONS

    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer: unknown {cfg.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if not model_given and cfg.model not in MODELS:
        raise ConfigError(f"model: unknown {cfg.model!r}; allowed: {', '.join(MODELS)}")
    if not model_given and cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {cfg.activation!r}; allowed: "
                          f"{', '.join(ACTIVATIONS)}")
    if not dataset_given and cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset: unknown {cfg.dataset!r}; allowed: {', '.join(DATASETS)}")
    if cfg.loss not in ("ce", "mse"):
        raise ConfigError(f"loss must be ce or mse, got {cfg.loss!r}")
    if not dataset_given and cfg.loss == "ce" and cfg.dataset in REGRESSION_DATASETS:
        raise ConfigError(f"dataset: {cfg.dataset!r} is a regression task; the ce loss needs "
                          "class labels (use the mse loss or a classification dataset)")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.randomization not in RANDOMIZATIONS:
        raise ConfigError(f"randomization: unknown {cfg.randomization!r}; allowed: "
                          f"{', '.join(RANDOMIZATIONS)}")
    if cfg.preprocess is not None and cfg.preprocess not in PREPROCESS:
        raise ConfigError(f"preprocess: unknown {cfg.preprocess!r}; allowed: "
                          f"{', '.join(PREPROCESS)}")
    if cfg.probe_kind not in ("rademacher", "gaussian"):
        raise ConfigError(f"probe_kind must be rademacher or gaussian, got {cfg.probe_kind!r}")
    check_real("lr", cfg.lr, 0, lo_open=True)
    for name in _FLOAT_FIELDS:  # finiteness first: every range test below is then meaningful
        check_real(name, getattr(cfg, name))
    if cfg.stop_loss is not None:
        check_real("stop_loss", cfg.stop_loss, 0, lo_open=True)
    for name in _INT_FIELDS:
        check_int(name, getattr(cfg, name), 1 if name in _POSITIVE else 0,
                  MAX_STEPS if name == "steps" else MAX_COUNT)
    for name in _OPTIONAL_INT_FIELDS:
        if getattr(cfg, name) is not None:
            check_int(name, getattr(cfg, name), 1)
    check_int("seed", cfg.seed, 0, MAX_SEED)
    if cfg.data_dir is not None and not isinstance(cfg.data_dir, str):
        raise ConfigError(f"data_dir must be a folder name, got {cfg.data_dir!r}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be a finite number > 0, got {cfg.lr}")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {cfg.steps}")
    if cfg.log_every < 1:
        raise ConfigError(f"log_every must be ≥ 1, got {cfg.log_every}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {cfg.batch_size}")
    if cfg.eval_chunk < 1:
        raise ConfigError(f"eval_chunk must be ≥ 1, got {cfg.eval_chunk}")
    if cfg.device_budget is not None and not (_is_int(cfg.device_budget)
                                              and cfg.device_budget >= 1):
        raise ConfigError(f"device_budget must be a whole number of bytes ≥ 1 (or None: "
                          f"everything on the device), got {cfg.device_budget!r}")
    if n_train is not None and not cfg.full_batch and cfg.batch_size > n_train:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {n_train} training examples")
    if n_train is not None and cfg.hessian_n is not None and cfg.hessian_n > n_train:
        raise ConfigError(f"hessian_n {cfg.hessian_n} exceeds the {n_train} training examples")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if not (cfg.rtol > 0 and cfg.atol > 0):
        raise ConfigError(f"rtol and atol must be > 0, got {cfg.rtol}, {cfg.atol}")
    if not (0 <= cfg.label_noise < float("inf")):
        raise ConfigError(f"label_noise must be a finite number ≥ 0, got {cfg.label_noise}")
    if cfg.label_noise and cfg.optimizer not in DISCRETE:
        raise ConfigError(f"label_noise: only {', '.join(DISCRETE)} draw noisy labels, not "
                          f"{cfg.optimizer!r}")
    if cfg.label_noise > 1 and cfg.loss == "ce":
        raise ConfigError(f"label_noise is a flip probability for the ce loss: in [0, 1], got "
                          f"{cfg.label_noise}")
    if not 1 <= cfg.central_flow_eigs <= 32:
        raise ConfigError(f"central_flow_eigs must be in 1..32, got {cfg.central_flow_eigs}")
    if not 1 <= cfg.svag_amplification <= 10_000:
        raise ConfigError(f"svag_amplification must be in 1..10000, got {cfg.svag_amplification}")
    if cfg.egr < 0:
        raise ConfigError(f"egr must be ≥ 0, got {cfg.egr}")
    if cfg.width < 1:
        raise ConfigError(f"width must be ≥ 1, got {cfg.width}")
    if cfg.depth < 0:
        raise ConfigError(f"depth must be ≥ 0, got {cfg.depth}")
    if not 0 <= cfg.corruption <= 1:
        raise ConfigError(f"corruption must be in [0, 1], got {cfg.corruption}")
    if cfg.corruption > 0 and cfg.randomization not in LABEL_KINDS:
        raise ConfigError(f"corruption {cfg.corruption:g} has no effect with randomization "
                          f"{cfg.randomization!r}; give randomization one of "
                          f"{', '.join(LABEL_KINDS)}")
    if cfg.hessian_every < 0 or (cfg.hessian_every and cfg.hessian_every % cfg.log_every):
        raise ConfigError(f"hessian_every must be 0 (off) or a multiple of log_every "
                          f"({cfg.log_every}), got {cfg.hessian_every}")
    if cfg.hessian_every and (cfg.probes < 2 or cfg.lanczos_steps < cfg.top_k or cfg.top_k < 1):
        raise ConfigError("probes must be ≥ 2 and lanczos_steps ≥ top_k ≥ 1")
    check_real("lr_decay", cfg.lr_decay, 0, 1, lo_open=True)
    if cfg.lr_decay != 1 and not cfg.lr_decay_every:
        raise ConfigError(f"lr_decay_every must be ≥ 1 (steps between decays) for a decay "
                          f"factor {cfg.lr_decay:g} to have an effect; 0 keeps the step size "
                          "constant")
    if cfg.lr_schedule and cfg.optimizer not in DISCRETE:
        raise ConfigError(f"lr_decay: the step-size schedule is for the discrete methods "
                          f"({', '.join(DISCRETE)}), not {cfg.optimizer!r}")
    if not model_given:
        from .models import ZOO_MODELS, check_preset_input

        if cfg.model in ZOO_MODELS and cfg.activation != "relu":
            raise ConfigError(f"activation: the {cfg.model!r} preset uses relu (as in its "
                              f"paper), got {cfg.activation!r}")
        if input_shape is not None:
            check_preset_input(cfg.model, input_shape)
    if cfg.lambda_min_steps < 0:
        raise ConfigError(f"lambda_min_steps must be ≥ 0 (0: no λ_min), got {cfg.lambda_min_steps}")
