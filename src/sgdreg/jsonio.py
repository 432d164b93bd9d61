"""Strict JSON reading for every file sgdreg reads back (traces, results, checkpoint headers,
sweep indexes and group files): one error line that names the file and what it is.

sgdreg writes strict JSON only (``allow_nan=False``; non-finite numbers become ``null``), so
the ``NaN``/``Infinity``/``-Infinity`` literals Python's ``json`` accepts by default are
rejected here, as is text that is not UTF-8. Errors are ``FileFormatError`` (or the subclass a
caller passes, e.g. ``TraceError``), so the CLI reports them as bad input (exit 2)::

    runs/a.json: trace is not valid JSON (line 1, column 18: Expecting ',' delimiter)
    runs/a.json: trace contains a NaN literal (line 3, column 9); sgdreg files are strict JSON

``field_problems`` checks the types of a loaded object's fields against a small spec, for the
state files whose readers index into them (a wrong type is then an error naming the file and
the field instead of an ``AttributeError`` later).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import FileFormatError

_CONSTANTS = ("-Infinity", "Infinity", "NaN")


class _NonFinite(Exception):
    def __init__(self, literal: str):
        self.literal = literal


def _reject(literal: str):
    raise _NonFinite(literal)


def _literal_position(text: str, literal: str) -> tuple[int, int] | None:
    """(line, column), 1-based, of the first ``literal`` outside JSON strings."""
    in_str = esc = False
    line, col0 = 1, 0
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "\n":
            line, col0 = line + 1, i + 1
        elif text.startswith(literal, i):
            return line, i - col0 + 1
    return None


def parse_json(text: str | bytes, source: Any, what: str, *,
               error: type[Exception] = FileFormatError, first_line: int = 1) -> Any:
    """``text`` parsed as strict JSON; ``error`` naming ``source`` and ``what`` otherwise.

    ``first_line`` is the file line ``text`` starts on (for one line of a JSON-lines file), so
    the reported line is the file's."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{source}: {what} is not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject)
    except _NonFinite as e:
        pos = _literal_position(text, e.literal)
        where = f" (line {pos[0] + first_line - 1}, column {pos[1]})" if pos else ""
        raise error(f"{source}: {what} contains a {e.literal} literal{where}; sgdreg files "
                    "are strict JSON (non-finite numbers are stored as null)") from None
    except json.JSONDecodeError as e:
        raise error(f"{source}: {what} is not valid JSON (line {e.lineno + first_line - 1}, "
                    f"column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise error(f"{source}: {what} is not valid JSON (nested too deeply)") from None


def load_json(path: str | os.PathLike, what: str, *,
              error: type[Exception] = FileFormatError) -> Any:
    """The strict JSON content of ``path``; ``error`` (a ``FileFormatError`` by default) with
    one line naming the file and ``what`` it is when it is missing, unreadable, not UTF-8,
    not JSON, or holds a ``NaN``/``Infinity`` literal."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a {what} file") from None
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    return parse_json(data, path, what, error=error)


# ---------------------------------------------------------------- field types

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: Named field kinds for ``field_problems``: (test, description).
KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "nonneg_int": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "number": (_is_num, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "int_list": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers"),
    "str_list": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                 "a list of strings"),
}


def _type_name(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def field_problems(doc: Any, spec: Mapping[str, str], required=(), prefix: str = "") -> list[str]:
    """Problems with the fields of ``doc`` against ``spec`` (field → kind of ``KINDS``; a kind
    ending in ``?`` also allows null). Fields in ``required`` must be present; others are
    checked only when present. Example: ``{"runs": "int_list", "block": "int", "detail": "str?"}``.
    """
    if not isinstance(doc, dict):
        return [f"{prefix or 'top level'} is {_type_name(doc)}, expected an object"]
    problems = [f"missing field {prefix + k!r}" for k in required if k not in doc]
    for key, kind in spec.items():
        if key not in doc:
            continue
        optional = kind.endswith("?")
        test, desc = KINDS[kind.rstrip("?")]
        v = doc[key]
        if (v is None and optional) or test(v):
            continue
        problems.append(f"{prefix}{key} is {_type_name(v)}, expected {desc}"
                        + (" or null" if optional else ""))
    return problems


def require_fields(doc: Any, spec: Mapping[str, str], source: Any, what: str, *, required=(),
                   error: type[Exception] = FileFormatError) -> dict:
    """``doc`` if ``field_problems`` finds nothing; else ``error`` naming ``source``."""
    problems = field_problems(doc, spec, required)
    if problems:
        raise error(f"{source}: not a valid {what}: {'; '.join(problems)}")
    return doc


def load_checked(path: str | os.PathLike, what: str, spec: Mapping[str, str], *,
                 schema: str | None = None, required=None,
                 error: type[Exception] = FileFormatError) -> dict:
    """``load_json`` + the ``schema`` field (when given) + ``require_fields`` (every field of
    ``spec`` required unless ``required`` says otherwise): the one call for a state file.

    Example: ``load_checked(p, "sweep group file", {"runs": "int_list", "block": "int"},
    schema="sgdreg.sweep-group/1", error=CheckpointError)``."""
    doc = load_json(path, what, error=error)
    if schema is not None and (not isinstance(doc, dict) or doc.get("schema") != schema):
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise error(f"{path}: not a {what} (schema {found!r}, expected {schema!r})")
    return require_fields(doc, spec, path, what,
                          required=tuple(spec) if required is None else required, error=error)


def read_json_lines(path: str | os.PathLike, what: str, *, nbytes: int | None = None,
                    error: type[Exception] = FileFormatError) -> list:
    """The values of a JSON-lines file, one per non-empty line, each strict JSON (errors name
    the file and its line). ``nbytes``: read only that committed prefix, which must exist in
    full (a shorter file is reported as truncated)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read() if nbytes is None else f.read(nbytes)
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if nbytes is not None and len(data) < nbytes:
        raise error(f"{path}: {what} is truncated ({len(data)} bytes where {nbytes} were "
                    "committed)")
    return [parse_json(line, path, what, error=error, first_line=n)
            for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]


__all__ = ["KINDS", "field_problems", "load_checked", "load_json", "parse_json",
           "read_json_lines", "require_fields"]
