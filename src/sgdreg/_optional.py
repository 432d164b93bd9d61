"""Optional dependencies, imported only by the features that need them, with one clear error
naming the extra to install when they are missing (the core needs only jax, equinox, optax,
diffrax, numpy and jaxtyping; pyproject.toml lists the extras)."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``, or MissingDependencyError: "<feature> needs <package>: pip install
    'sgdreg[<extra>]'". An ImportError raised *inside* an installed package (a broken install)
    is not masked."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise
        raise MissingDependencyError(
            f"{feature} needs the optional package {top!r}: pip install 'sgdreg[{extra}]'") from None


def missing(modules: tuple[str, ...]) -> list[str]:
    """The top-level modules among ``modules`` that cannot be imported (no import is done)."""
    import importlib.util

    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except (ImportError, ValueError):
            out.append(m)
    return out
