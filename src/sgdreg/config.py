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
    flows the run integrates to t = steps·lr and logs at t = k·lr (DESIGN.md time alignment)."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    preprocess: str | None = None  # None: standardize real data, keep synthetic tasks as drawn
    n_train: int | None = None
    n_test: int | None = None
    randomization: str = "none"
    corruption: float = 0.0
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

    def steps_per_epoch(self, n: int) -> int:
        """m = ⌊n/B⌋ minibatches per epoch (the last partial batch is dropped); 1 for full batch."""
        return 1 if self.full_batch else n // self.batch_size


def validate(cfg: RunConfig, n_train: int | None = None) -> None:
    """Raise ConfigError with one clear line (naming the RunConfig field) for any value a run
    cannot use; the CLI shows the field as its option (``lr`` → ``--lr``)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer: unknown {cfg.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {cfg.steps}")
    if cfg.log_every < 1:
        raise ConfigError(f"log_every must be ≥ 1, got {cfg.log_every}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {cfg.batch_size}")
    if n_train is not None and not cfg.full_batch and cfg.batch_size > n_train:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {n_train} training examples")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.stop_loss is not None and not cfg.stop_loss > 0:
        raise ConfigError(f"stop_loss must be > 0, got {cfg.stop_loss}")
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
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.width < 1 or cfg.depth < 0:
        raise ConfigError("width must be ≥ 1 and depth ≥ 0")
    if not 0 <= cfg.corruption <= 1:
        raise ConfigError(f"corruption must be in [0, 1], got {cfg.corruption}")
    if cfg.hessian_every < 0 or (cfg.hessian_every and cfg.hessian_every % cfg.log_every):
        raise ConfigError(f"hessian_every must be 0 (off) or a multiple of log_every "
                          f"({cfg.log_every}), got {cfg.hessian_every}")
    if cfg.hessian_every and (cfg.probes < 2 or cfg.lanczos_steps < cfg.top_k or cfg.top_k < 1):
        raise ConfigError("probes must be ≥ 2 and lanczos_steps ≥ top_k ≥ 1")
    if cfg.lambda_min_steps < 0:
        raise ConfigError(f"lambda_min_steps must be ≥ 0 (0: no λ_min), got {cfg.lambda_min_steps}")
    if cfg.probe_kind not in ("rademacher", "gaussian"):
        raise ConfigError(f"probe_kind must be rademacher or gaussian, got {cfg.probe_kind!r}")
    if cfg.loss not in ("ce", "mse"):
        raise ConfigError(f"loss must be ce or mse, got {cfg.loss!r}")
