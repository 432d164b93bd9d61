"""Checkpoints: Equinox leaf serialisation behind a one-line JSON header, written atomically.

File layout (``schema = "sgdreg.checkpoint/1"``)::

    {"schema": ..., "kind": "model" | "tree", ...header...}\\n
    <eqx.tree_serialise_leaves bytes>

The header says how to rebuild the pytree skeleton (a model from its saved ``RunConfig``, input
shape and output size), so ``load_model`` needs nothing but the file. PRNG keys are stored as raw
key data (``jax.random.key_data``) and rewrapped on load (``jax.random.wrap_key_data``): typed key
arrays have no NumPy form. Every write goes to a temp file in the same folder and is renamed
into place, so a reader (or a resumed sweep) never sees half a checkpoint.
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
from .trace import atomic_write_bytes, to_json_value

SCHEMA = "sgdreg.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the problem."""


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


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        line = f.readline()
    try:
        head = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not an sgdreg checkpoint (no JSON header)") from None
    if not isinstance(head, dict) or head.get("schema") != SCHEMA:
        raise CheckpointError(f"{path} is not an sgdreg checkpoint (schema "
                              f"{head.get('schema') if isinstance(head, dict) else None!r})")
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


def save_model(path: str | os.PathLike, model: eqx.Module, cfg: RunConfig,
               dataset_description: dict[str, Any] | Any) -> None:
    """Save a trained model with the config and data description that rebuild its skeleton.

    ``dataset_description`` is ``Dataset.describe()`` (or the Dataset itself); the input shape is
    taken from it and the output size from the model's own output on one example.
    """
    desc = (dataset_description.describe() if hasattr(dataset_description, "describe")
            else dict(dataset_description))
    in_shape = tuple(desc["input_shape"])
    dtype = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))[0].dtype
    out = jax.eval_shape(model, jax.ShapeDtypeStruct(in_shape, dtype))
    header = {"kind": "model", "config": cfg.to_dict(), "dataset": desc,
              "input_shape": list(in_shape), "out_size": int(np.prod(out.shape))}
    save_tree(path, model, header)


def load_model(path: str | os.PathLike) -> tuple[eqx.Module, RunConfig]:
    """(model, cfg) from ``save_model``: the skeleton is ``models.make_model`` of the saved
    config, input shape and output size; every array (frozen ones too) comes from the file."""
    from .models import make_model

    head = read_header(path)
    if head.get("kind") != "model":
        raise CheckpointError(f"{path} holds a {head.get('kind')!r} checkpoint, not a model")
    try:
        cfg = RunConfig(**head["config"])
    except TypeError as e:
        raise CheckpointError(f"{path}: saved config does not match this sgdreg ({e})") from None
    dtype = jnp.float64 if cfg.dtype == "float64" else jnp.float32
    if dtype == jnp.float64:
        jax.config.update("jax_enable_x64", True)
    skeleton = eqx.filter_eval_shape(
        lambda: make_model(cfg.model, tuple(head["input_shape"]), head["out_size"],
                           key=jax.random.key(0), width=cfg.width, depth=cfg.depth,
                           activation=cfg.activation, dtype=dtype))
    model, _ = load_tree(path, skeleton)
    return model, cfg
