"""CLIP image tower <-> Hugging Face safetensors checkpoints (both directions).

Reads a full CLIPModel checkpoint (e.g. openai/clip-vit-large-patch14; the text tower,
text_projection and logit_scale are ignored) or a CLIPVisionModelWithProjection one. Both store
the tower under 'vision_model.' and the projection as 'visual_projection.weight', so one rule
table serves both; the kind is told by config.json (model_type / architectures). Saving writes a
CLIPVisionModelWithProjection folder, which transformers loads as is.

    config, params = hf_clip.load("clip-vit-large-patch14", mesh=mesh)
    embeds = ClipVision(config).apply({"params": params}, pixels)   # float[B, 768]
    hf_clip.save(params, config, "out/clip_vision")
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax import sharding
from affect_jax.checkpoints import hf_mapping
from affect_jax.checkpoints.hf_mapping import Rule, linear, norm
from affect_jax.checkpoints.safetensors_io import (CheckpointError, SafetensorsReader,
                                                   atomic_output_dir, read_config,
                                                   write_checkpoint)
from affect_jax.models.clip_vision import ClipVisionConfig, abstract_params, param_count

__all__ = ["rules", "load", "save", "param_count", "TOWER_PREFIX"]

# HF names under this prefix belong to the image tower; anything else (text tower) is ignored.
TOWER_PREFIX = "vision_model."


def _conv_to_jax(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight [out, in, kh, kw] -> Flax kernel [kh, kw, in, out]."""
  return np.transpose(w, (2, 3, 1, 0))


def _conv_to_hf(k: np.ndarray) -> np.ndarray:
  return np.transpose(k, (3, 2, 0, 1))


def rules(config: ClipVisionConfig) -> list[Rule]:
  """The rule table: every ClipVision parameter <-> one HF tensor ("{i}" = scanned layer)."""
  del config  # the table does not depend on sizes; shapes are checked against the config
  v = TOWER_PREFIX
  layer = v + "encoder.layers.{i}."
  table = [
      Rule(("patch_embedding", "kernel"), v + "embeddings.patch_embedding.weight",
           _conv_to_jax, _conv_to_hf),
      Rule(("class_embedding",), v + "embeddings.class_embedding"),
      Rule(("position_embedding",), v + "embeddings.position_embedding.weight"),
      *norm(("pre_layrnorm",), v + "pre_layrnorm"),
      *norm(("layers", "layer_norm1"), layer + "layer_norm1"),
      *linear(("layers", "self_attn", "q_proj"), layer + "self_attn.q_proj"),
      *linear(("layers", "self_attn", "k_proj"), layer + "self_attn.k_proj"),
      *linear(("layers", "self_attn", "v_proj"), layer + "self_attn.v_proj"),
      *linear(("layers", "self_attn", "out_proj"), layer + "self_attn.out_proj"),
      *norm(("layers", "layer_norm2"), layer + "layer_norm2"),
      *linear(("layers", "mlp", "fc1"), layer + "mlp.fc1"),
      *linear(("layers", "mlp", "fc2"), layer + "mlp.fc2"),
      *norm(("post_layernorm",), v + "post_layernorm"),
      *linear(("visual_projection",), "visual_projection", bias=False),
  ]
  return table


def _config_with_dtype(config: ClipVisionConfig, dtype: Any) -> ClipVisionConfig:
  if dtype is None:
    return config
  name = jnp.dtype(dtype).name
  return dataclasses.replace(config, dtype=name, param_dtype=name)


def load(hf_dir: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
         sharding_rules: Sequence | None = None,
         dtype: Any = None) -> tuple[ClipVisionConfig, dict]:
  """Reads the image tower of an HF CLIP checkpoint folder.

  Args:
    hf_dir: folder with config.json and *.safetensors (CLIPModel or
      CLIPVisionModelWithProjection).
    mesh: place each parameter on its NamedSharding over this mesh (default: first device).
    sharding_rules: logical-axis rules (default sharding.DEFAULT_RULES when a mesh is given).
    dtype: parameter and compute dtype (e.g. 'bfloat16'); default the config's float32.

  Returns:
    (config, params): params is the `params` collection of ClipVision (plain jax arrays), to use
    as `ClipVision(config).apply({"params": params}, pixels)`.

  Raises:
    CheckpointError: not a CLIP image tower, a tensor missing or mis-shaped, or tower tensors
      the config does not account for (e.g. more layers than num_hidden_layers).
  """
  hf_config = read_config(hf_dir)
  try:
    config = _config_with_dtype(ClipVisionConfig.from_hf(hf_config), dtype)
  except ValueError as e:
    raise CheckpointError(f"{hf_dir}/config.json: {e}") from None
  reader = SafetensorsReader(hf_dir)
  table = rules(config)
  hf_mapping.refuse_unread(reader, table, config.num_hidden_layers, within=TOWER_PREFIX,
                           what="image tower",
                           config_hint=f"num_hidden_layers={config.num_hidden_layers}")
  params = hf_mapping.load_tree(reader, table, abstract_params(config), config.num_hidden_layers,
                                model="CLIP", mesh=mesh, sharding_rules=sharding_rules)
  return config, params


def save(params: Mapping, config: ClipVisionConfig, out_dir: str | os.PathLike, *,
         overwrite: bool = False) -> None:
  """Writes params as a CLIPVisionModelWithProjection folder (config.json + model.safetensors).

  Nothing is left in out_dir if any step fails; an existing non-empty out_dir is refused unless
  `overwrite`.
  """
  params = sharding.unbox(params)
  hf_mapping.check_tree(params, sharding.unbox(abstract_params(config)), "ClipVision")
  with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
    tensors = hf_mapping.export(params, rules(config), config.num_hidden_layers)
    hf_config = config.to_hf()
    hf_config["dtype"] = np.dtype(tensors["visual_projection.weight"].dtype).name
    write_checkpoint(tmp, tensors, hf_config)
