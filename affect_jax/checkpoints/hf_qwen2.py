"""Hugging Face Qwen2ForCausalLM checkpoints <-> this project's Qwen2 parameters.

Public API:
  rules(config) -> list[Rule]       one rule per parameter (lm_head only when untied)
  load(hf_dir, *, mesh=None, sharding_rules=None, dtype=None, lora=None, rng=None)
      -> (Qwen2Config, params)      every tensor placed straight onto its NamedSharding;
                                    LoRA parameters (not in HF) freshly initialised, lora_b = 0
  save(params, config, out_dir, *, merge=True, max_shard_bytes=5 GiB, overwrite=False)
                                    safetensors + config.json that
                                    transformers.Qwen2ForCausalLM.from_pretrained loads
  param_count lives in affect_jax.models.qwen2 (computed from the model, abstractly).

Everything is checked before any weight is read: config.json (architecture, rope scaling, ...),
every tensor's presence and shape, and tensors the config would leave unused (a config that
does not match the weights). Errors name the tensor or field.
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
from affect_jax.checkpoints.hf_mapping import Rule
from affect_jax.checkpoints.safetensors_io import (CheckpointError, SafetensorsReader,
                                                   atomic_output_dir, read_config,
                                                   write_checkpoint)
from affect_jax.models import lora as lora_lib
from affect_jax.models import qwen2

_LAYER = "model.layers.{i}."
# Tensors some exports carry that the model recomputes or shares.
_IGNORABLE_SUFFIXES = (".rotary_emb.inv_freq",)


def rules(config: qwen2.Qwen2Config) -> list[Rule]:
  """The HF <-> project table for `config` (tied embeddings: no lm_head rule)."""
  out = [Rule(("embed_tokens", "embedding"), "model.embed_tokens.weight")]
  out += hf_mapping.norm(("layers", "input_layernorm"), _LAYER + "input_layernorm", bias=False)
  for name in ("q_proj", "k_proj", "v_proj"):
    out += hf_mapping.linear(("layers", "self_attn", name), _LAYER + f"self_attn.{name}")
  out += hf_mapping.linear(("layers", "self_attn", "o_proj"), _LAYER + "self_attn.o_proj",
                           bias=False)
  out += hf_mapping.norm(("layers", "post_attention_layernorm"),
                         _LAYER + "post_attention_layernorm", bias=False)
  for name in ("gate_proj", "up_proj", "down_proj"):
    out += hf_mapping.linear(("layers", "mlp", name), _LAYER + f"mlp.{name}", bias=False)
  out += hf_mapping.norm(("norm",), "model.norm", bias=False)
  if not config.tie_word_embeddings:
    out += hf_mapping.linear(("lm_head",), "lm_head", bias=False)
  return out


def _hf_names(rule: Rule, num_layers: int) -> list[str]:
  return [rule.hf.format(i=i) for i in range(num_layers)] if rule.per_layer else [rule.hf]


def _check_tensors(reader: SafetensorsReader, table: Sequence[Rule], target: Mapping,
                   config: qwen2.Qwen2Config) -> None:
  """Presence and shape of every tensor, and no tensor left over, before anything is read."""
  num_layers = config.num_hidden_layers
  for rule in table:
    leaf = hf_mapping.get_path(target, rule.path)
    shape = tuple(leaf.shape[1:] if rule.per_layer else leaf.shape)
    # A zero-cost view with the parameter's shape, pushed through the HF transform.
    expected = tuple(rule.to_hf(np.broadcast_to(np.zeros((), np.float32), shape)).shape)
    for name in _hf_names(rule, num_layers):
      if name not in reader:
        raise CheckpointError(f"{reader.dir}: tensor '{name}' is missing (needed for parameter "
                              f"{'/'.join(rule.path)}); does config.json match the weights?")
      if reader.shape(name) != expected:
        raise CheckpointError(
            f"{reader.dir}: tensor '{name}' has shape {reader.shape(name)} but config.json "
            f"implies {expected}; the config does not match the weights (check hidden_size, "
            "intermediate_size, num_attention_heads, num_key_value_heads, head_dim, vocab_size).")
  ignorable = set()
  if config.tie_word_embeddings:
    ignorable.add("lm_head.weight")  # Some tied exports also store the shared matrix.
  unused = [n for n in hf_mapping.unused_tensors(reader, table, num_layers)
            if n not in ignorable and not n.endswith(_IGNORABLE_SUFFIXES)]
  if unused:
    shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
    raise CheckpointError(
        f"{reader.dir}: {len(unused)} tensors are not used by config.json ({shown}); the config "
        "does not match the weights (check num_hidden_layers and tie_word_embeddings).")


def _lora_only(tree: Any) -> Any:
  """The sub-tree of LoRA leaves (dicts holding none are dropped); None if there is none."""
  if not isinstance(tree, Mapping):
    return None
  out = {}
  for k, v in tree.items():
    if k in lora_lib.LORA_LEAVES:
      out[k] = v
    else:
      sub = _lora_only(v)
      if sub:
        out[k] = sub
  return out or None


def _deep_merge(base: dict, extra: Mapping) -> dict:
  for k, v in extra.items():
    if isinstance(v, Mapping):
      base[k] = _deep_merge(dict(base.get(k, {})), v)
    else:
      base[k] = v
  return base


def _init_lora(config: qwen2.Qwen2Config, rng: jax.Array, shardings: Any) -> dict:
  """LoRA parameters exactly as Qwen2.init makes them, created on their shardings.

  Only the LoRA leaves are outputs of the jitted init, so XLA drops the rest of the model's
  random init: no full-size weights are allocated.
  """
  fn = lambda key: _lora_only(qwen2.init_params(config, key))
  out_shardings = _lora_only(shardings) if shardings is not None else None
  return jax.jit(fn, out_shardings=out_shardings)(rng)


def load(hf_dir: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
         sharding_rules: Sequence | None = None, dtype: Any = None,
         lora: lora_lib.LoraConfig | None = None,
         rng: jax.Array | None = None) -> tuple[qwen2.Qwen2Config, dict]:
  """Reads a HF Qwen2ForCausalLM folder (config.json + safetensors, sharded or not).

  Args:
    hf_dir: the checkpoint folder. Pickle-only (.bin) checkpoints are refused.
    mesh: place each parameter on this mesh by its logical names (default: first device).
    sharding_rules: logical-axis rules (default sharding.DEFAULT_RULES).
    dtype: parameter and compute dtype (default: config.json's torch_dtype, else float32).
    lora: LoRA config to add adapters with (default: none, rank 0).
    rng: key for lora_a's init (default jax.random.key(0)).

  Returns:
    (config, params): params is the plain (unboxed) tree for `{'params': params}`.
  """
  overrides: dict[str, Any] = {}
  if dtype is not None:
    name = jnp.dtype(dtype).name
    overrides.update(dtype=name, param_dtype=name)
  if lora is not None:
    overrides["lora"] = lora
  config = qwen2.Qwen2Config.from_hf(read_config(hf_dir), **overrides)
  reader = SafetensorsReader(hf_dir)
  boxed = qwen2.abstract_params(config)
  target = sharding.unbox(boxed)
  table = rules(config)
  _check_tensors(reader, table, target, config)
  shardings = None
  if mesh is not None:
    shardings = sharding.shardings(boxed, mesh, sharding_rules or sharding.DEFAULT_RULES)
  params = hf_mapping.load(reader, table, target, config.num_hidden_layers, shardings)
  if config.lora.rank:
    rng = jax.random.key(0) if rng is None else rng
    params = _deep_merge(params, _init_lora(config, rng, shardings))
  return config, params


def _check_params(params: Mapping, config: qwen2.Qwen2Config, table: Sequence[Rule]) -> None:
  target = sharding.unbox(qwen2.abstract_params(
      dataclasses.replace(config, lora=lora_lib.LoraConfig())))
  for rule in table:
    want = hf_mapping.get_path(target, rule.path)
    try:
      got = hf_mapping.get_path(params, rule.path)
    except (KeyError, TypeError):
      raise CheckpointError(f"save: params lack {'/'.join(rule.path)}; pass the model's "
                            "parameter tree (the inner dict, not {'params': ...}).") from None
    if tuple(np.shape(got)) != tuple(want.shape):
      raise CheckpointError(f"save: parameter {'/'.join(rule.path)} has shape "
                            f"{tuple(np.shape(got))} but the config needs {tuple(want.shape)}.")


def save(params: Mapping, config: qwen2.Qwen2Config, out_dir: str | os.PathLike, *,
         merge: bool = True, max_shard_bytes: int = 5 * 2**30,
         overwrite: bool = False) -> None:
  """Writes a transformers-loadable Qwen2ForCausalLM folder (safetensors + config.json).

  Args:
    params: the model's (unboxed) parameter tree, on any sharding.
    config: its config; tensors are written in config.param_dtype.
    out_dir: output folder; must be new or empty (unless overwrite). Written atomically:
      after a failure nothing is left there.
    merge: fold LoRA adapters into the kernels (with config.lora's scale); False writes the
      base weights only.
    max_shard_bytes: split into model-0000i-of-0000n.safetensors + index above this size.
  """
  table = rules(config)
  _check_params(params, config, table)
  if merge and config.lora.rank:
    params = lora_lib.merge_lora(params, config.lora)
  tensors = hf_mapping.export(params, table, config.num_hidden_layers,
                              dtype=config.params_dtype)
  with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
    write_checkpoint(tmp, tensors, config.to_hf(), max_shard_bytes=max_shard_bytes)
