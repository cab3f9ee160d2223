"""The GRPO run shared by the single-process reference and the 2-process workers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from affect_jax import distributed as dist
from affect_jax import sharding
from affect_jax.models import qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler
from configs.grpo_loss import get_grpo_loss_config

TARGET = 7


def reward(tokens, lengths, rows):
  del rows
  valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
  share = jnp.sum((tokens == TARGET) & valid, -1) / jnp.maximum(lengths, 1)
  return share.astype(jnp.float32), {}


def run(mesh, distributed=None, steps=2):
  """Two GRPO steps on a tiny LoRA decoder; returns (metrics per step, a param fingerprint)."""
  cfg = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, lora=LoraConfig(rank=4, alpha=8.0))
  policy = policy_lib.TextPolicy(cfg)
  params = jax.device_get(sharding.unbox(qwen2.init_params(cfg, jax.random.key(0))))
  lcfg = losses.GrpoLossConfig.from_config(get_grpo_loss_config(num_generations=4,
                                                                logprob_chunk=8))
  scfg = grpo_step.StepConfig(sampler.SamplingConfig(max_new_tokens=8, buckets=(8,)), lcfg)
  opt = optax.sgd(0.5)
  rules = sharding.DEFAULT_RULES
  state_sh = grpo_step.state_shardings(policy, qwen2.abstract_params(cfg), opt, mesh, rules)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(3))
  state = dist.put(state, state_sh)
  rng = np.random.default_rng(0)
  full = {"prompt_tokens": rng.integers(1, 64, (4, 8)).astype(np.int32),
          "prompt_mask": np.arange(8)[None] >= rng.integers(0, 4, (4, 1))}
  if distributed is not None:
    rows = distributed.local_rows(4)
    batch = distributed.global_batch({k: v[rows] for k, v in full.items()}, mesh, rules)
  else:
    batch = dist.put(full, grpo_step.batch_shardings(full, mesh, rules))
  batch_sh = grpo_step.batch_shardings(full, mesh, rules)
  step = grpo_step.make_step(policy, scfg, opt, reward, mesh=mesh, rules=rules,
                             state_sh=state_sh, batch_sh=batch_sh)
  history = []
  for _ in range(steps):
    state, m = step(state, batch)
    history.append({k: float(v) for k, v in m.items()})
  # A replicated fingerprint of the trained parameters (every process can read it).
  leaves = jax.tree.leaves(state["trainable"])
  fingerprint = jax.jit(lambda xs: jnp.stack([jnp.sum(x.astype(jnp.float32) ** 2) for x in xs]),
                        out_shardings=sharding.replicated(mesh))(leaves)
  return history, [float(x) for x in np.asarray(fingerprint)]
