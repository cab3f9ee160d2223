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
from affect_jax.models.lora import lora_mask
from affect_jax.models.qwen2 import Qwen2, Qwen2Config


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
  """Per-token log-probs of completions under the policy (one forward over prompt + completion).

  Args:
    batch: prompt inputs with R rows (prompt_mask bool[R, P], left-padded).
    completion: int32[R, N] sampled tokens; completion_mask: bool[R, N].
  Returns:
    (logps float32[R, N], entropy float32[R, N] or None).
  """
  from affect_jax.rl.logprobs import token_logprobs
  cfg = policy.llm_config
  model = Qwen2(cfg)
  llm = policy.llm_params(params)
  prompt = policy.prompt_embeds(params, batch)
  comp = model.apply({"params": llm}, completion, method=Qwen2.embed)
  embeds = jnp.concatenate([prompt, comp.astype(prompt.dtype)], axis=1)
  mask = jnp.concatenate([batch["prompt_mask"], completion_mask], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
  hidden, _ = model.apply({"params": llm}, embeds=embeds, positions=positions,
                          attention_mask=mask, use_lora=use_lora, deterministic=deterministic,
                          return_hidden=True, rngs=rngs)
  p = prompt.shape[1]
  n = completion.shape[1]
  h = hidden[:, p - 1:p + n - 1]
  head = lambda x: model.apply({"params": llm}, x, method=Qwen2.logits)
  return token_logprobs(h, completion, head, chunk, temperature=temperature,
                        with_entropy=with_entropy)
