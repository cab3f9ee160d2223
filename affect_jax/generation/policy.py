"""What the GRPO step needs to know about a model: prompt embeddings, the decoder and its params.

Two kinds share one interface:
  TextPolicy(Qwen2Config)           params = Qwen2 params; batch has prompt_tokens / prompt_mask
  AffectGPTPolicy(AffectGPTConfig)  params = {llm, vision, audio, fusion}; the batch also carries
                                    per-clip features `video` float[B, F, Dv] and `audio`
                                    float[B, K, Da] (frozen encoders' outputs, cached)
Both also say which leaves are trainable (`trainable_mask`): LoRA (+ fusion) when LoRA is on,
every leaf (full fine-tuning) when the decoder's LoRA rank is 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp

from affect_jax.models import affectgpt
from affect_jax.models import qwen2
from affect_jax.models.lora import lora_mask
from affect_jax.models.qwen2 import Qwen2, Qwen2Config, init_cache


@dataclasses.dataclass(frozen=True)
class TextPolicy:
  config: Qwen2Config

  @property
  def llm_config(self) -> Qwen2Config:
    return self.config

  def llm_params(self, params: Mapping) -> Mapping:
    return params

  def prompt_embeds(self, params: Mapping, batch: Mapping) -> jax.Array:
    """batch['prompt_tokens'] int32[B, P] -> float[B, P, H]."""
    return Qwen2(self.config).apply({"params": params}, batch["prompt_tokens"],
                                    method=Qwen2.embed)

  def trainable_mask(self, params: Mapping) -> Any:
    if self.config.lora.rank:
      return lora_mask(params)
    return jax.tree.map(lambda _: True, params)

  batch_keys = ("prompt_tokens", "prompt_mask")


@dataclasses.dataclass(frozen=True)
class AffectGPTPolicy:
  config: affectgpt.AffectGPTConfig

  @property
  def llm_config(self) -> Qwen2Config:
    return self.config.llm

  def llm_params(self, params: Mapping) -> Mapping:
    return params["llm"]

  def prompt_embeds(self, params: Mapping, batch: Mapping) -> jax.Array:
    """Prompt ids with placeholders + cached features -> float[B, P, H]."""
    return affectgpt.prompt_embeds(params, self.config, batch["prompt_tokens"], batch["video"],
                                   batch["audio"])

  def trainable_mask(self, params: Mapping) -> Any:
    if self.config.llm.lora.rank:
      return affectgpt.trainable_mask(params)
    mask = affectgpt.trainable_mask(params)
    mask["llm"] = jax.tree.map(lambda _: True, params["llm"])
    return mask

  batch_keys = ("prompt_tokens", "prompt_mask", "video", "audio")


Policy = TextPolicy | AffectGPTPolicy


def split(params: Mapping, mask: Any) -> tuple[dict, dict]:
  """(trainable, frozen): nested dicts holding the leaves where mask is True / False."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  flat_mask = flax.traverse_util.flatten_dict(flax.core.unfreeze(mask))
  train = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return (flax.traverse_util.unflatten_dict(train), flax.traverse_util.unflatten_dict(frozen))


def merge(trainable: Mapping, frozen: Mapping) -> dict:
  """The inverse of `split`."""
  flat = flax.traverse_util.flatten_dict(dict(frozen))
  flat.update(flax.traverse_util.flatten_dict(dict(trainable)))
  return flax.traverse_util.unflatten_dict(flat)


def completion_logps(policy: Policy, params: Mapping, batch: Mapping, completion: jax.Array,
                     completion_mask: jax.Array, *, chunk: int, temperature: float,
                     use_lora: bool = True, deterministic: bool = True,
                     rngs: Mapping | None = None, with_entropy: bool = False):
  """Per-token log-probs of G completions per prompt, with the prompt computed once.

  The B prompts run through the decoder once (their keys/values land in a cache); the cache is
  repeated G times and the B*G completions run on top of it. Gradients flow through the cache
  into the prompt's activations (and, multimodally, into the fusion), summed over the group.
  Equal to a forward over each concatenated [prompt, completion] row, at 1/G of the prompt cost.

  Args:
    batch: B prompts (prompt_mask bool[B, P] left-padded, plus the policy's prompt inputs).
    completion: int32[B*G, N], rows grouped by prompt (p0 g0..gG-1, p1 ...).
    completion_mask: bool[B*G, N], True for completion tokens (through the EOS).
  Returns:
    (logps float32[B*G, N], entropy float32[B*G, N] or None).
  """
  from affect_jax.generation.logprobs import token_logprobs
  cfg = policy.llm_config
  model = Qwen2(cfg)
  llm = {"params": policy.llm_params(params)}
  prompt_mask = batch["prompt_mask"]
  b, p = prompt_mask.shape
  rows, n = completion.shape
  if rows % b:
    raise ValueError(f"completion_logps: {rows} completions are not a whole number of samples "
                     f"for {b} prompts.")
  g = rows // b
  flags = dict(use_lora=use_lora, deterministic=deterministic, rngs=rngs, return_hidden=True)
  prompt = policy.prompt_embeds(params, batch)
  cache = init_cache(cfg, b, p + n, dtype=prompt.dtype)
  positions = qwen2.positions_from_mask(prompt_mask)
  kv_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, n), bool)], axis=1)
  hidden_p, cache = model.apply(llm, embeds=prompt, positions=positions, cache=cache,
                                cache_index=jnp.int32(0), kv_mask=kv_mask, **flags)
  rep = lambda x, axis=0: jnp.repeat(x, g, axis=axis)
  cache = jax.tree.map(lambda c: rep(c, 1), cache)
  comp_embeds = model.apply(llm, completion, method=Qwen2.embed).astype(prompt.dtype)
  comp_positions = rep(qwen2.continuation_positions(positions, n))
  kv_mask = jnp.concatenate([rep(prompt_mask), completion_mask.astype(bool)], axis=1)
  hidden_c, _ = model.apply(llm, embeds=comp_embeds, positions=comp_positions, cache=cache,
                            cache_index=jnp.int32(p), kv_mask=kv_mask, **flags)
  # The state predicting completion token j: the prompt's last state for j = 0, else token j-1's.
  h = jnp.concatenate([rep(hidden_p[:, -1:]), hidden_c[:, :-1]], axis=1)
  head = lambda x: model.apply(llm, x, method=Qwen2.logits)
  return token_logprobs(h, completion, head, chunk, temperature=temperature,
                        with_entropy=with_entropy)
