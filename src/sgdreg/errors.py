"""sgdreg's exception types. Each message is one line that names the argument (or file) at
fault and what is allowed; the CLI prints it and exits with code 2."""

from __future__ import annotations


class SgdregError(Exception):
    """Base class of every error sgdreg raises for bad input."""


class ConfigError(SgdregError, ValueError):
    """A configuration value a run cannot use (range, unknown name, inconsistent options)."""


class ModelError(SgdregError, ValueError):
    """A model that cannot be trained as given (wrong output size, missing state, ...)."""


class LossError(SgdregError, ValueError):
    """A loss that is not a per-example callable ``loss(output, label) -> scalar``."""


class OptimizerError(SgdregError, ValueError):
    """An optimizer that is neither a known name nor an ``optax.GradientTransformation``."""


class PrecisionError(SgdregError, ValueError):
    """float64 requested while JAX runs in 32-bit mode."""


class DataError(SgdregError, ValueError):
    """A data source that is missing, corrupt or of the wrong shape."""


class FileFormatError(SgdregError, ValueError):
    """A file sgdreg reads that is missing, not strict JSON (``NaN``/``Infinity`` literals
    included), or whose fields have the wrong type; the message names the file."""


class TraceError(FileFormatError):
    """A trace file that is missing, not JSON, or not a valid sgdreg trace."""


class CheckpointError(FileFormatError):
    """A checkpoint file that is missing, corrupt or does not fit the given skeleton."""


class MissingDependencyError(SgdregError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that
    installs it (``pip install 'sgdreg[plot]'``, ``[data]``, ``[cli]``, ...)."""


class LockError(SgdregError):
    """An output directory another live sgdreg process is writing (its ``.sgdreg.lock``)."""
