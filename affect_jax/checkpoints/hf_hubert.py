"""HuBERT encoder <-> Hugging Face safetensors checkpoints (both directions).

Reads HubertModel checkpoints (tensor names at top level) and task checkpoints such as
HubertForCTC (the encoder under 'hubert.', the head ignored). The positional convolution's
weight norm is read under either name transformers has used: 'conv.weight_g' / 'conv.weight_v'
(older saves, e.g. facebook/hubert-large-ll60k) or 'conv.parametrizations.weight.original0' /
'original1' (what transformers 5.x writes and what `save` writes). Saving writes a HubertModel
folder that transformers loads as is.

    config, params = hf_hubert.load("chinese-hubert-large", mesh=mesh)
    hidden = Hubert(config).apply({"params": params}, windows)   # float[L + 1, B*K, T, 1024]
    feats = audio_features(hidden)                                # float[B*K, 1024]
    hf_hubert.read_do_normalize("chinese-hubert-large")   # preprocessor_config.json's flag
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
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
from affect_jax.models.hubert import HubertConfig, abstract_params, param_count

__all__ = ["rules", "load", "save", "read_do_normalize", "param_count", "TASK_PREFIX"]

# Where task models (HubertForCTC, HubertForSequenceClassification) keep the encoder.
TASK_PREFIX = "hubert."
_POS_CONV = "encoder.pos_conv_embed.conv."
PREPROCESSOR_FILE = "preprocessor_config.json"
# Wav2Vec2FeatureExtractor's do_normalize when preprocessor_config.json does not set it.
DEFAULT_DO_NORMALIZE = True
_WEIGHT_NORM_NAMES = {False: ("parametrizations.weight.original0",
                              "parametrizations.weight.original1"),
                      True: ("weight_g", "weight_v")}


def _conv_to_jax(w: np.ndarray) -> np.ndarray:
  """torch Conv1d weight [out, in / groups, k] <-> Flax kernel [k, in / groups, out]."""
  return np.transpose(w, (2, 1, 0))


def _g_to_jax(g: np.ndarray) -> np.ndarray:
  """Weight-norm magnitude [1, 1, k] (norm over all dims but the taps) -> [k]."""
  return g.reshape(-1) if g.ndim == 3 and g.shape[:2] == (1, 1) else g


def _g_to_hf(g: np.ndarray) -> np.ndarray:
  return g.reshape(1, 1, -1)


def rules(config: HubertConfig, *, legacy_weight_norm: bool = False) -> list[Rule]:
  """The rule table: every Hubert parameter <-> one HF tensor ("{i}" = scanned layer).

  legacy_weight_norm: read/write the positional conv as weight_g / weight_v instead of
  parametrizations.weight.original0 / original1.
  """
  table: list[Rule] = []
  for i in range(len(config.conv_dim)):
    path, hf = ("feature_extractor", f"conv_layers_{i}"), f"feature_extractor.conv_layers.{i}."
    table.append(Rule(path + ("conv", "kernel"), hf + "conv.weight", _conv_to_jax, _conv_to_jax))
    if config.conv_bias:
      table.append(Rule(path + ("conv", "bias"), hf + "conv.bias"))
    if config.feat_extract_norm == "layer" or i == 0:
      table += norm(path + ("layer_norm",), hf + "layer_norm")
  if config.feat_proj_layer_norm:
    table += norm(("feature_projection", "layer_norm"), "feature_projection.layer_norm")
  table += linear(("feature_projection", "projection"), "feature_projection.projection")
  if config.has_masked_spec_embed:
    table.append(Rule(("masked_spec_embed",), "masked_spec_embed"))
  g_name, v_name = _WEIGHT_NORM_NAMES[legacy_weight_norm]
  pos = ("encoder", "pos_conv_embed")
  table += [
      Rule(pos + ("weight_g",), _POS_CONV + g_name, _g_to_jax, _g_to_hf),
      Rule(pos + ("weight_v",), _POS_CONV + v_name, _conv_to_jax, _conv_to_jax),
      Rule(pos + ("bias",), _POS_CONV + "bias"),
  ]
  table += norm(("encoder", "layer_norm"), "encoder.layer_norm")
  layer, hf = ("encoder", "layers"), "encoder.layers.{i}."
  for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
    table += linear(layer + ("attention", proj), hf + "attention." + proj)
  table += norm(layer + ("layer_norm",), hf + "layer_norm")
  table += linear(layer + ("feed_forward", "intermediate_dense"),
                  hf + "feed_forward.intermediate_dense")
  table += linear(layer + ("feed_forward", "output_dense"), hf + "feed_forward.output_dense")
  table += norm(layer + ("final_layer_norm",), hf + "final_layer_norm")
  return table


def load(hf_dir: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
         sharding_rules: Sequence | None = None,
         dtype: Any = None) -> tuple[HubertConfig, dict]:
  """Reads an HF HuBERT checkpoint folder.

  Args:
    hf_dir: folder with config.json and *.safetensors (HubertModel, or a task model whose
      encoder sits under 'hubert.').
    mesh: place each parameter on its NamedSharding over this mesh (default: first device).
    sharding_rules: logical-axis rules (default sharding.DEFAULT_RULES when a mesh is given).
    dtype: parameter and compute dtype (e.g. 'bfloat16'); default the config's float32.

  Returns:
    (config, params): params is the `params` collection of Hubert (plain jax arrays), to use as
    `Hubert(config).apply({"params": params}, waveform)`.

  Raises:
    CheckpointError: not a HuBERT checkpoint, a tensor missing or mis-shaped, or encoder tensors
      the config does not account for.
  """
  hf_config = read_config(hf_dir)
  try:
    config = HubertConfig.from_hf(hf_config)
  except ValueError as e:
    raise CheckpointError(f"{hf_dir}/config.json: {e}") from None
  if dtype is not None:
    name = jnp.dtype(dtype).name
    config = dataclasses.replace(config, dtype=name, param_dtype=name)
  reader = SafetensorsReader(hf_dir)
  prefix = TASK_PREFIX if TASK_PREFIX + "feature_projection.projection.weight" in reader else ""
  legacy = prefix + _POS_CONV + "weight_g" in reader
  table = rules(config, legacy_weight_norm=legacy)
  hf_mapping.refuse_unread(
      reader, table, config.num_hidden_layers, within=prefix, prefix=prefix, what="encoder",
      config_hint=(f"num_hidden_layers={config.num_hidden_layers}, conv_bias={config.conv_bias}, "
                   f"feat_extract_norm={config.feat_extract_norm!r}, mask_time_prob="
                   f"{config.mask_time_prob}, ..."))
  params = hf_mapping.load_tree(reader, table, abstract_params(config), config.num_hidden_layers,
                                model="HuBERT", mesh=mesh, sharding_rules=sharding_rules,
                                prefix=prefix)
  return config, params


def save(params: Mapping, config: HubertConfig, out_dir: str | os.PathLike, *,
         overwrite: bool = False) -> None:
  """Writes params as an HF HubertModel folder (config.json + model.safetensors).

  Nothing is left in out_dir if any step fails; an existing non-empty out_dir is refused unless
  `overwrite`.
  """
  params = sharding.unbox(params)
  hf_mapping.check_tree(params, sharding.unbox(abstract_params(config)), "Hubert")
  with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
    tensors = hf_mapping.export(params, rules(config), config.num_hidden_layers)
    hf_config = config.to_hf()
    hf_config["dtype"] = np.dtype(tensors["feature_projection.projection.weight"].dtype).name
    write_checkpoint(tmp, tensors, hf_config)


def read_do_normalize(hf_dir: str | os.PathLike) -> bool | None:
  """do_normalize of the folder's preprocessor_config.json (Wav2Vec2FeatureExtractor: the
  input is normalised to zero mean and unit variance); its default when the file does not
  set it; None when the folder has no such file."""
  path = pathlib.Path(hf_dir) / PREPROCESSOR_FILE
  if not path.is_file():
    return None
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}).") from e
  if not isinstance(config, dict):
    raise CheckpointError(f"{path}: holds a {type(config).__name__}, expected a JSON object.")
  return bool(config.get("do_normalize", DEFAULT_DO_NORMALIZE))
