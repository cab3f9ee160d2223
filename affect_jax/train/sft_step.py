"""The cold-start SFT step: token-level cross-entropy on the target only, one jitted update.

batch (B rows, left-padded):
  tokens          int32[B, L]   prompt (with modality placeholders) + target
  attention_mask  bool[B, L]    True for real tokens
  loss_mask       bool[B, L]    True for target tokens (the ones to predict)
  video, audio    float[B, F, Dv], float[B, K, Da]   cached encoder features (multimodal)

The loss is sum over target tokens of -log p(token | prefix) / number of target tokens in the
batch, computed in vocab chunks (the [B, L, V] logits never exist whole) and accumulated over
micro-batches by lax.scan. The state layout is optim/state.py's, shared with GRPO, so one
checkpoint format serves both phases.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from affect_jax import sharding
from affect_jax.models import qwen2
from affect_jax.models.qwen2 import Qwen2
from affect_jax.optim import accumulate, state as train_state
from affect_jax.generation import policy as policy_lib
from affect_jax.generation.logprobs import token_logprobs

BATCH_KEYS = ("tokens", "attention_mask", "loss_mask")


def target_logps(policy: policy_lib.Policy, params: Mapping, batch: Mapping, *, chunk: int,
                 deterministic: bool = True, rngs: Mapping | None = None) -> jax.Array:
  """log p(tokens[:, t+1] | tokens[:, :t+1]) for t < L-1: float32[B, L-1]."""
  cfg = policy.llm_config
  model = Qwen2(cfg)
  llm = {"params": policy.llm_params(params)}
  inputs = dict(batch, prompt_tokens=batch["tokens"], prompt_mask=batch["attention_mask"])
  embeds = policy.prompt_embeds(params, inputs)
  mask = batch["attention_mask"]
  positions = qwen2.positions_from_mask(mask)
  hidden, _ = model.apply(llm, embeds=embeds, positions=positions, attention_mask=mask,
                          deterministic=deterministic, rngs=rngs, return_hidden=True)
  head = lambda x: model.apply(llm, x, method=Qwen2.logits)
  logps, _ = token_logprobs(hidden[:, :-1], batch["tokens"][:, 1:], head, chunk)
  return logps


def check_batch(policy: policy_lib.Policy, batch: Mapping, micro_batches: int, mesh=None) -> None:
  keys = tuple(BATCH_KEYS) + tuple(k for k in policy.batch_keys if k in ("video", "audio"))
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"SFT batch is missing {missing}; it has {sorted(batch)}.")
  b, length = batch["tokens"].shape
  if length > policy.llm_config.max_position_embeddings:
    raise ValueError(f"SFT sequences of {length} tokens exceed max_position_embeddings "
                     f"{policy.llm_config.max_position_embeddings}; lower the length buckets.")
  sharding.check_batch_divisible(b, mesh, what=f"the SFT batch of {b} rows", fix="use",
                                 micro=micro_batches, micro_what="sft.micro_batches")


def init_state(policy: policy_lib.Policy, params: Mapping,
               optimizer: optax.GradientTransformation, rng: jax.Array) -> dict:
  """The SFT state (optim.state, no 'reference': SFT has no KL term)."""
  return train_state.init_state(policy, params, optimizer, rng, reference=False)


def state_shardings(policy: policy_lib.Policy, abstract_params: Mapping,
                    optimizer: optax.GradientTransformation, mesh, rules) -> dict:
  """NamedShardings of every leaf of the SFT state."""
  return train_state.state_shardings(policy, abstract_params, optimizer, mesh, rules,
                                     reference=False)


def make_step(policy: policy_lib.Policy, optimizer: optax.GradientTransformation, *,
              logprob_chunk: int = 256, micro_batches: int = 1, mesh=None, rules=None,
              state_sh=None, batch_sh=None) -> Callable:
  """The jitted SFT step `(state, batch) -> (state, metrics)`; state is donated."""
  dropout = bool(policy.llm_config.lora.rank and policy.llm_config.lora.dropout > 0)

  def step(state, batch):
    rng, r_drop = jax.random.split(state["rng"])
    frozen = state["frozen"]
    target = batch["loss_mask"][:, 1:].astype(jnp.float32)
    num_tokens = jnp.maximum(target.sum(), 1.0)
    data = dict(batch, row=jnp.arange(batch["tokens"].shape[0]))

    def loss_fn(trainable, mb):
      params = policy_lib.merge(trainable, frozen)
      rngs = {"dropout": jax.random.fold_in(r_drop, mb["row"][0])} if dropout else None
      logps = target_logps(policy, params, mb, chunk=logprob_chunk,
                           deterministic=not dropout, rngs=rngs)
      w = mb["loss_mask"][:, 1:].astype(jnp.float32)
      nll = -jnp.sum(logps * w)
      correct = jnp.sum(w * (logps > jnp.log(0.5)))
      return nll / num_tokens, {"nll_sum": nll, "likely_tokens": correct}

    loss, grads, m = accumulate.accumulate_grads(loss_fn, state["trainable"], data, micro_batches)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
    trainable = optax.apply_updates(state["trainable"], updates)
    new_state = dict(state, step=state["step"] + 1, trainable=trainable, opt_state=opt_state,
                     rng=rng)
    metrics = {"loss": loss, "target_tokens": num_tokens, "grad_norm": optax.global_norm(grads),
               "token_p_above_half": m["likely_tokens"] / num_tokens}
    return new_state, metrics

  return sharding.jit_train_step(
      step, mesh=mesh, rules=rules, state_sh=state_sh, batch_sh=batch_sh,
      check=lambda state, batch: check_batch(policy, batch, micro_batches, mesh))


def make_eval_loss(policy: policy_lib.Policy, logprob_chunk: int = 256) -> Callable:
  """jitted (params, batch) -> mean target NLL (no update)."""

  def fn(params, batch):
    logps = target_logps(policy, params, batch, chunk=logprob_chunk)
    w = batch["loss_mask"][:, 1:].astype(jnp.float32)
    return -jnp.sum(logps * w) / jnp.maximum(w.sum(), 1.0)

  return jax.jit(fn)
