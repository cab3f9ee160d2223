"""A parameter checkpoint: an Orbax tree of arrays plus meta.json describing the model.

  OUT/params/     Orbax StandardCheckpointer tree {component: params}
  OUT/meta.json   {"format": "affect_jax.params", "components": {name: {"hf_config": {...}}}, ...}

`launch.convert` writes these from Hugging Face folders; training restores them (onto any mesh:
Orbax reshards on restore, so a checkpoint saved on a (2, 4) mesh loads on (4, 2) or 1 device).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from affect_jax.checkpoints.safetensors_io import CheckpointError, atomic_output_dir

FORMAT = "affect_jax.params"


def save(out: str | os.PathLike, params: Mapping[str, Any], meta: Mapping[str, Any],
         overwrite: bool = False) -> pathlib.Path:
  """Writes params (any sharding) and meta.json to `out`, atomically (nothing left on failure)."""
  with atomic_output_dir(out, overwrite=overwrite) as tmp:
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp / "params", dict(params))
    ckpt.wait_until_finished()
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=2))
  return pathlib.Path(out)


def read_meta(path: str | os.PathLike) -> dict:
  path = pathlib.Path(path)
  meta_file = path / "meta.json"
  if not meta_file.is_file() or not (path / "params").is_dir():
    raise CheckpointError(f"{path}: not an affect_jax parameter checkpoint (needs meta.json and "
                          "params/); create one with `python -m launch.convert --hf_dir=...`.")
  try:
    meta = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{meta_file}: not valid JSON ({e}).") from e
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}.")
  return meta


def load(path: str | os.PathLike, target: Any = None) -> tuple[dict, dict]:
  """Restores (params, meta).

  Args:
    target: optional pytree of jax.ShapeDtypeStruct with `.sharding` set: arrays are restored
      straight onto those shardings (any mesh). Default: the layout recorded at save time when
      those devices exist, else the first device.
  """
  meta = read_meta(path)
  ckpt = ocp.StandardCheckpointer()
  params_dir = pathlib.Path(path).absolute() / "params"
  if target is None:
    md = ckpt.metadata(params_dir).item_metadata.tree
    first = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=first), md)
  try:
    params = ckpt.restore(params_dir, target)
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{path}: the stored parameters do not match the requested model "
                          f"({e}).") from e
  return params, meta
