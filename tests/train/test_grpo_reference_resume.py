"""GRPO's reference survives a resume: the loop restores the policy and the optimizer from the
checkpoint, and the reference (not checkpointed) is rebuilt from the same starting parameters,
so a run stopped after 2 steps and resumed logs, step for step, what an uninterrupted run logs,
KL included (the policy has moved away from its reference by then)."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from affect_jax import sharding
from affect_jax.models import qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler
from affect_jax.train import loop
from configs.checkpoint import get_checkpoint_config
from configs.grpo_loss import get_grpo_loss_config
import pytest  # noqa: E402

pytestmark = pytest.mark.slow   # minutes: started first (conftest)

TARGET = 7
STEPS, STOP = 4, 2


def share_reward(tokens, lengths, rows):
  del rows
  valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
  share = jnp.sum((tokens == TARGET) & valid, -1) / jnp.maximum(lengths, 1)
  return share.astype(jnp.float32), {"share": share.mean()}


def _setup():
  cfg = qwen2.Qwen2Config(
      vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      tie_word_embeddings=False, lora=LoraConfig(rank=4, alpha=8.0))
  policy = policy_lib.TextPolicy(cfg)
  params = sharding.unbox(qwen2.init_params(cfg, jax.random.key(0)))
  # A trained adapter (as after SFT): lora_b away from 0.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 if "lora_b" in jax.tree_util.keystr(p) else x, params)
  lcfg = losses.GrpoLossConfig.from_config(get_grpo_loss_config(
      num_generations=8, beta=0.04, logprob_chunk=8))
  scfg = grpo_step.StepConfig(
      sampler.SamplingConfig(max_new_tokens=16, temperature=1.0, buckets=(8,)), lcfg)
  rng = np.random.default_rng(0)
  batch = {"prompt_tokens": jnp.asarray(rng.integers(1, 64, (4, 8)), jnp.int32),
           "prompt_mask": jnp.asarray(np.arange(8)[None] >= rng.integers(0, 4, (4, 1)))}
  return policy, params, scfg, batch


def _train(workdir, total, policy, params, scfg, batch, opt, step_fn):
  """One launch of the loop, its state built from the starting params as the recipe builds it."""
  config = ml_collections.ConfigDict(dict(checkpoint=get_checkpoint_config(
      save_every_steps=1, async_save=False)))
  state = grpo_step.init_state(policy, jax.tree.map(jnp.copy, params), opt, jax.random.key(1))
  return loop.train(phase="grpo", step_fn=step_fn, state=state, loader=iter(lambda: batch, None),
                    total_steps=total, workdir=workdir, config=config, log_every=1,
                    show=("kl",))


def _kl(workdir):
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    out[r["step"]] = r["kl"]
  return out


def test_resumed_run_keeps_the_reference(tmp_path):
  policy, params, scfg, batch = _setup()
  opt = optax.adam(1e-2)
  step_fn = grpo_step.make_step(policy, scfg, opt, share_reward)
  _train(tmp_path / "full", STEPS, policy, params, scfg, batch, opt, step_fn)
  _train(tmp_path / "stopped", STOP, policy, params, scfg, batch, opt, step_fn)
  resumed = _train(tmp_path / "stopped", STEPS, policy, params, scfg, batch, opt, step_fn)
  full, again = _kl(tmp_path / "full"), _kl(tmp_path / "stopped")
  print(f"kl uninterrupted {full}, stopped at {STOP} and resumed {again}")
  assert abs(full[1]) <= 1e-6 and full[STEPS] > 1e-5          # the policy left its reference
  assert again == full
  start, _ = policy_lib.split(params, policy.trainable_mask(params))
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(resumed.state["reference"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
