"""Stored experiment results: one file per experiment, ``<results_dir>/<experiment>.json``.

Schema ``sgdreg.results/1``: ``{"schema", "experiment", "config", "versions", "wall_time_s",
"results"}``, compact strict JSON written atomically. Experiments (``sgdreg.experiments``) write
it with ``save_results``; figures (``sgdreg.plotting``) read it with ``load_results`` only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FileFormatError
from .jsonio import load_json, require_fields
from .trace import atomic_write_text, to_json_value, versions

SCHEMA = "sgdreg.results/1"


def save_results(results_dir, experiment: str, config: dict, results: dict,
                 wall_time_s: float) -> Path:
    """Write ``results_dir/<experiment>.json`` atomically (compact strict JSON)."""
    doc = {"schema": SCHEMA, "experiment": experiment, "config": config, "versions": versions(),
           "wall_time_s": wall_time_s, "results": results}
    path = Path(results_dir) / f"{experiment}.json"
    atomic_write_text(path, json.dumps(to_json_value(doc), allow_nan=False,
                                       separators=(",", ":")))
    return path


#: Field kinds of a results document (``jsonio.KINDS``), all required.
FIELD_KINDS = {"schema": "str", "experiment": "str", "config": "object", "versions": "object",
               "wall_time_s": "number", "results": "object"}


def load_document(results_dir, experiment: str) -> dict:
    """The whole stored document of ``results_dir/<experiment>.json``: strict JSON, schema and
    field types checked (``FileFormatError`` naming the file: not JSON, a ``NaN`` literal, not
    an sgdreg results file, a field of the wrong type); FileNotFoundError naming the file when
    it is missing."""
    path = Path(results_dir) / f"{experiment}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no stored results {path}; run the experiment first")
    return check_document(load_json(path, "results file"), path)


def check_document(doc: Any, path: Any) -> dict:
    """``doc`` if it is an ``sgdreg.results/1`` document; ``FileFormatError`` naming ``path``."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise FileFormatError(f"{path} is not an sgdreg results file (schema {found!r}, "
                              f"expected {SCHEMA!r})")
    return require_fields(doc, FIELD_KINDS, path, f"{SCHEMA} file", required=tuple(FIELD_KINDS))


def load_results(results_dir, experiment: str) -> dict:
    """The ``results`` of ``results_dir/<experiment>.json`` (see ``load_document``)."""
    return load_document(results_dir, experiment)["results"]


def sig(v: Any, digits: int = 4) -> Any:
    """``v`` rounded to ``digits`` significant digits for storage, elementwise over lists and
    arrays; None stays None, ints and bools stay as they are, non-finite floats pass through."""
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, (np.integer, np.bool_)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [sig(x, digits) for x in v]
    if getattr(v, "ndim", 0):  # numpy or JAX array
        return [sig(x, digits) for x in np.asarray(v)]
    return float(f"{float(v):.{digits}g}")


def timed(fn: Callable[..., dict], *args, **kwargs) -> tuple[dict, float]:
    """(fn(*args, **kwargs), wall seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


__all__ = ["SCHEMA", "check_document", "load_document", "load_results", "save_results", "sig", "timed"]
