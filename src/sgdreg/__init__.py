"""sgdreg: implicit regularization in SGD dynamics, measured (JAX/Equinox).

Pipeline: data → model → dynamics → probes → trace → analysis/figures. The names below are the
public API (Equinox-style re-exports); every other module attribute is private and may change.

    >>> import sgdreg
    >>> runs = sgdreg.compare(model, (x_train, y_train, x_test, y_test), ["gd", "sgd", "flow"],
    ...                       lr=0.1, steps=500, curvature=50, out_dir="runs")  # doctest: +SKIP
    >>> df = sgdreg.load_traces("runs")                                      # doctest: +SKIP
"""

# runs: any eqx.Module, arrays or a Dataset, a loss, an optimizer → a trace
from .checkpoint import load_model as load_model
from .checkpoint import save_model as save_model
from .config import RunConfig as RunConfig
from .curvature import batch_sharpness as batch_sharpness
from .curvature import dense_hessian as dense_hessian
from .curvature import gradient_noise as gradient_noise
from .curvature import hessian_matvec as hessian_matvec
from .curvature import hutch_plus_plus as hutch_plus_plus
from .curvature import hutchinson as hutchinson
from .curvature import lanczos_eigs as lanczos_eigs
from .curvature import layer_traces as layer_traces
from .curvature import slq as slq
from .curvature import slq_density as slq_density
from .data import Dataset as Dataset
from .datasets import open_dataset as open_dataset
from .dynamics import SGDSDE as SGDSDE
from .dynamics import SVAG as SVAG
from .dynamics import AbstractDynamics as AbstractDynamics
from .dynamics import CentralFlow as CentralFlow
from .dynamics import GradientFlow as GradientFlow
from .dynamics import ModifiedFlow as ModifiedFlow
from .dynamics import Optax as Optax
from .dynamics import named as named
from .errors import CheckpointError as CheckpointError
from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import LossError as LossError
from .errors import MissingDependencyError as MissingDependencyError
from .errors import ModelError as ModelError
from .errors import OptimizerError as OptimizerError
from .errors import PrecisionError as PrecisionError
from .errors import SgdregError as SgdregError
from .errors import TraceError as TraceError
from .losses import MSE as MSE
from .losses import Objective as Objective
from .losses import cross_entropy as cross_entropy
from .min_norm import MinNormDistance as MinNormDistance
from .probes import CurvatureProbe as CurvatureProbe
from .probes import Probe as Probe
from .probes import ProbeContext as ProbeContext
from .probes import measure_curvature as measure_curvature
from .sweep import run_sweep as run_sweep
from .trace import load_trace as load_trace
from .trace import load_traces as load_traces
from .trace import to_dataframe as to_dataframe
from .trace import validate_trace as validate_trace
from .training import RunResult as RunResult
from .training import as_dataset as as_dataset
from .training import compare as compare
from .training import run as run
from .training import train as train

__version__ = "0.1.0"

__all__ = [
    # runs
    "run", "compare", "train", "RunConfig", "RunResult",
    # data
    "Dataset", "open_dataset", "as_dataset",
    # dynamics
    "AbstractDynamics", "Optax", "GradientFlow", "ModifiedFlow", "CentralFlow", "SGDSDE", "SVAG", "named",
    # losses
    "cross_entropy", "MSE", "Objective",
    # probes and curvature estimators
    "Probe", "ProbeContext", "CurvatureProbe", "MinNormDistance", "measure_curvature", "hessian_matvec",
    "dense_hessian", "hutchinson", "hutch_plus_plus", "lanczos_eigs", "slq", "slq_density",
    "batch_sharpness", "gradient_noise", "layer_traces",
    # traces, checkpoints, sweeps
    "load_trace", "load_traces", "validate_trace", "to_dataframe", "save_model", "load_model",
    "run_sweep",
    # errors
    "SgdregError", "ConfigError", "ModelError", "LossError", "OptimizerError", "PrecisionError",
    "DataError", "TraceError", "CheckpointError", "MissingDependencyError",
    "__version__",
]
