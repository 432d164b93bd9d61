"""Checkpoints: Equinox leaf serialisation behind a one-line JSON header, written atomically.

File layout (``schema = "sgdreg.checkpoint/1"``)::

    {"schema": ..., "kind": "model" | "tree", ...header...}\\n
    <eqx.tree_serialise_leaves bytes>

A model header records its provenance (class, parameter count, dtype, structure hash, whether
an ``eqx.nn.State`` is stored after the model) and, for a preset, the ``RunConfig``, input shape
and output size that rebuild its skeleton, so ``load_model(path)`` needs nothing but the file;
any other model loads into a skeleton, ``load_model(path, like=...)``. Loading never changes
JAX's precision mode: a float64 file in 32-bit mode is a ``PrecisionError``. PRNG keys are
stored as raw key data (``jax.random.key_data``) and rewrapped on load
(``jax.random.wrap_key_data``): typed key arrays have no NumPy form. Every write goes to a temp
file in the same folder and is renamed into place, so a reader (or a resumed sweep) never sees
half a checkpoint.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .config import RunConfig
from .errors import CheckpointError, PrecisionError, SgdregError
from .jsonio import field_problems, parse_json
from .trace import atomic_write_bytes, to_json_value

SCHEMA = "sgdreg.checkpoint/1"


def is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    """Replace typed PRNG key arrays by their raw ``uint32`` key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def data_to_keys(tree, like):
    """Inverse of ``keys_to_data``: rewrap the leaves that are keys in ``like``."""
    return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x) if is_key(ref) else x,
                        tree, like)


def save_tree(path: str | os.PathLike, tree, header: dict[str, Any] | None = None) -> None:
    """Serialise the array leaves of ``tree`` (keys as key data) with a JSON ``header``."""
    buf = io.BytesIO()
    head = {"schema": SCHEMA, "kind": "tree", **(header or {})}
    buf.write(json.dumps(to_json_value(head), allow_nan=False).encode() + b"\n")
    eqx.tree_serialise_leaves(buf, jax.device_get(keys_to_data(tree)))
    atomic_write_bytes(path, buf.getvalue())


#: Header field kinds (``jsonio.KINDS``; ``?``: null allowed), checked when present.
HEADER_KINDS = {"schema": "str", "kind": "str", "model": "object?", "config": "object?",
                "dataset": "object?", "input_shape": "int_list?", "out_size": "nonneg_int?"}
MODEL_KINDS = {"class": "str", "structure_hash": "str?", "num_params": "nonneg_int",
               "dtype": "str", "stateful": "bool"}


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of checkpoint ``path``: strict JSON, schema and field types checked;
    ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)  # the header is one short line; never read a blob whole
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    try:
        head = parse_json(line, path, "checkpoint header", error=CheckpointError)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; not an sgdreg checkpoint") from None
    if not isinstance(head, dict) or head.get("schema") != SCHEMA:
        raise CheckpointError(f"{path} is not an sgdreg checkpoint (schema "
                              f"{head.get('schema') if isinstance(head, dict) else None!r})")
    problems = field_problems(head, HEADER_KINDS, required=("schema", "kind"))
    if isinstance(head.get("model"), dict):
        problems += field_problems(head["model"], MODEL_KINDS, prefix="model.")
    if problems:
        raise CheckpointError(f"{path}: not a valid {SCHEMA} header: {'; '.join(problems)}")
    return head


def load_tree(path: str | os.PathLike, like):
    """(tree, header): the leaves of ``path`` loaded into the structure, shapes and dtypes of
    ``like`` (whose key leaves come back as typed keys)."""
    head = read_header(path)
    with open(path, "rb") as f:
        f.readline()
        try:
            raw = eqx.tree_deserialise_leaves(f, keys_to_data(like))
        except Exception as e:
            raise CheckpointError(f"{path} does not match the expected state "
                                  f"({e.__class__.__name__}: {e})") from None
    want = [(tuple(a.shape), np.dtype(a.dtype)) for a in jax.tree.leaves(keys_to_data(like))
            if hasattr(a, "shape")]
    got = [(tuple(a.shape), np.dtype(a.dtype)) for a in jax.tree.leaves(raw) if hasattr(a, "shape")]
    if want != got:
        bad = next((w, g) for w, g in zip(want, got) if w != g) if len(want) == len(got) else None
        raise CheckpointError(f"{path} does not match the expected state (leaf shape/dtype "
                              f"{bad[1] if bad else len(got)} where {bad[0] if bad else len(want)} "
                              "was expected)")
    return data_to_keys(raw, like), head


def _describe(dataset) -> dict[str, Any] | None:
    if dataset is None:
        return None
    return dataset.describe() if hasattr(dataset, "describe") else dict(dataset)


def _out_size(model, in_shape, dtype, state=None) -> int | None:
    """The model's output size on one example of ``in_shape`` (a stateful model: called as
    ``model(x, state)`` over a batch axis named "batch"; None for another signature)."""
    x = jax.ShapeDtypeStruct(in_shape, dtype)
    try:
        if state is None:
            out = jax.eval_shape(model, x)
        else:
            xb = jax.ShapeDtypeStruct((1, *in_shape), dtype)
            out = eqx.filter_eval_shape(lambda m, s, x: jax.vmap(
                m, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(x, s)[0][0],
                model, state, xb)
    except Exception:  # noqa: BLE001 - a custom signature: not needed to reload
        return None
    return int(np.prod(out.shape))


def save_model(path: str | os.PathLike, model: eqx.Module, cfg: RunConfig | None = None,
               dataset: Any = None, *, state: Any = None) -> None:
    """Save any ``eqx.Module`` (and its ``eqx.nn.State``) with its provenance, atomically.

    The header records the model's class, trainable parameter count, dtype and structure hash
    (``training.structure_hash``: tree, static fields, array shapes/dtypes), whether a state is
    saved, and, when given, the ``RunConfig`` and the data description that rebuild a preset
    model without a skeleton. Every array leaf (frozen ones and the state too) is stored.

    Args:
        path: destination file (``.eqx`` by convention).
        model: the model to save.
        cfg: the ``RunConfig`` it was trained with (presets: lets ``load_model(path)`` rebuild it).
        dataset: a ``Dataset`` or its ``describe()`` dict (input shape for a preset rebuild).
        state: the ``eqx.nn.State`` of a stateful model (BatchNorm), saved alongside.

    Example:
        >>> res = sgdreg.run(model, data, "sgd", state=state, steps=100)  # doctest: +SKIP
        >>> sgdreg.save_model("cnn.eqx", res.model, state=res.state)     # doctest: +SKIP
    """
    from .models import num_params, partition
    from .training import structure_hash

    if not isinstance(model, eqx.Module):
        raise CheckpointError(f"save_model: expected an equinox.Module, got {type(model).__name__}")
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    dtype = leaves[0].dtype if leaves else jnp.dtype("float32")
    header: dict[str, Any] = {
        "kind": "model",
        "model": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "structure_hash": structure_hash(model),
                  "num_params": num_params(partition(model)[0]), "dtype": str(jnp.dtype(dtype)),
                  "stateful": state is not None},
        "config": cfg.to_dict() if cfg is not None else None,
        "dataset": _describe(dataset),
    }
    desc = header["dataset"]
    if cfg is not None and desc and "input_shape" in desc:
        header["input_shape"] = list(desc["input_shape"])
        header["out_size"] = _out_size(model, tuple(desc["input_shape"]), dtype, state)
    save_tree(path, model if state is None else (model, state), header)


def _check_precision(path, head: dict) -> None:
    """PrecisionError (naming the file) for a float64 checkpoint while JAX runs in 32 bits."""
    from .training import require_dtype

    dtype = (head.get("model") or {}).get("dtype") or (head.get("config") or {}).get("dtype")
    if dtype is None:
        return
    try:
        require_dtype(dtype)
    except PrecisionError as e:
        raise PrecisionError(f"{path}: {e}") from None


def load_model(path: str | os.PathLike, like: Any = None):
    """Load a model saved by ``save_model``; bit-identical arrays, never a dtype change.

    Without ``like``: ``(model, cfg)``, the skeleton rebuilt from the saved ``RunConfig`` by
    ``models.make_preset`` (preset models only); a BatchNorm preset saved with its state
    (``resnet18``, ``zhang-inception``) gives ``((model, state), cfg)``. With ``like``: the
    saved tree loaded into that structure and returned in it: a model, or ``(model, state)``
    when a state was saved. ``like`` may be a real model (e.g. ``CNN(key=...)``) or an
    ``eqx.filter_eval_shape`` skeleton; its structure hash and every leaf's shape and dtype
    must match the file.

    Raises:
        CheckpointError: missing/corrupt file, a custom model without ``like``, a skeleton that
            does not match (the message names the file and what differs).
        PrecisionError: a float64 checkpoint while JAX's 64-bit mode is off (sgdreg never
            switches it on for you).

    Example:
        >>> model, state = sgdreg.load_model("cnn.eqx", like=eqx.nn.make_with_state(CNN)(
        ...     key=jax.random.key(0)))                                        # doctest: +SKIP
    """
    head = read_header(path)
    if head.get("kind") != "model":
        raise CheckpointError(f"{path} holds a {head.get('kind')!r} checkpoint, not a model")
    _check_precision(path, head)
    saved = head.get("model") or {}
    if like is not None:
        return _load_like(path, head, saved, like)
    if head.get("config") is None or head.get("out_size") is None:
        raise CheckpointError(f"{path} holds a custom {saved.get('class', 'model')}; load it with "
                              "load_model(path, like=skeleton), e.g. like=Model(key=...) or "
                              "like=(model, state) for a stateful one")
    return _load_preset(path, head, saved)


def _load_like(path, head: dict, saved: dict, like):
    from .training import structure_hash

    pair = isinstance(like, tuple) and len(like) == 2 and isinstance(like[0], eqx.Module)
    skel = like[0] if pair else like
    if not isinstance(skel, eqx.Module):
        raise CheckpointError(f"like: expected an equinox.Module or (model, state), got "
                              f"{type(like).__name__}")
    if saved.get("stateful") and not pair:
        raise CheckpointError(f"{path} holds a model and its eqx.nn.State; pass "
                              "like=(model, state), e.g. from eqx.nn.make_with_state")
    if pair and not saved.get("stateful", False):
        raise CheckpointError(f"{path} holds a model without a state; pass like=model")
    want, got = saved.get("structure_hash"), structure_hash(skel)
    if want is not None and want != got:
        raise CheckpointError(
            f"{path} holds a {saved.get('class')} (structure hash {want}); the skeleton "
            f"{type(skel).__module__}.{type(skel).__qualname__} has structure hash {got}: build "
            "like= with the same layers, sizes and dtype as the saved model")
    return load_tree(path, like)[0]


def _load_preset(path, head: dict, saved: dict):
    from .models import make_preset
    from .training import require_dtype, structure_hash

    try:
        cfg = RunConfig(**head["config"])
    except (TypeError, SgdregError) as e:
        raise CheckpointError(f"{path}: saved config does not match this sgdreg ({e})") from None
    dtype = require_dtype(cfg.dtype)
    try:
        skeleton, state = eqx.filter_eval_shape(
            lambda: make_preset(cfg.model, tuple(head["input_shape"]), head["out_size"],
                                key=jax.random.key(0), width=cfg.width, depth=cfg.depth,
                                activation=cfg.activation, dtype=dtype))
    except (ValueError, SgdregError) as e:
        raise CheckpointError(f"{path}: its config does not rebuild a preset ({e}); load it "
                              "with load_model(path, like=skeleton)") from None
    want = saved.get("structure_hash")
    if (want is not None and want != structure_hash(skeleton)) or (
            state is not None) != bool(saved.get("stateful")):
        raise CheckpointError(f"{path} holds a {saved.get('class')} that is not the preset "
                              f"{cfg.model!r} of its config; load it with "
                              "load_model(path, like=skeleton)")
    if state is not None:
        return load_tree(path, (skeleton, state))[0], cfg
    model, _ = load_tree(path, skeleton)
    return model, cfg
