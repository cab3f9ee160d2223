"""The fused GRPO step: learns a learnable reward, equals itself across meshes, rejects bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from affect_jax import sharding
from affect_jax.models import qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler
from configs.grpo_loss import get_grpo_loss_config

TARGET = 7


def _config(rank=0):
  return qwen2.Qwen2Config(
      vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      tie_word_embeddings=False, lora=LoraConfig(rank=rank, alpha=2.0 * rank))


def share_reward(tokens, lengths, rows):
  """The share of TARGET among a completion's tokens (learnable by a tiny model)."""
  del rows
  valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
  share = jnp.sum((tokens == TARGET) & valid, -1) / jnp.maximum(lengths, 1)
  return share.astype(jnp.float32), {"share": share.mean()}


def _setup(rank=0, generations=8, new_tokens=16, prompts=4, **loss_overrides):
  cfg = _config(rank)
  params = sharding.unbox(qwen2.init_params(cfg, jax.random.key(0)))
  lcfg = losses.GrpoLossConfig.from_config(get_grpo_loss_config(
      num_generations=generations, logprob_chunk=8, **loss_overrides))
  scfg = grpo_step.StepConfig(
      sampler.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, buckets=(8,)), lcfg)
  rng = np.random.default_rng(0)
  batch = {"prompt_tokens": jnp.asarray(rng.integers(1, 64, (prompts, 8)), jnp.int32),
           "prompt_mask": jnp.asarray(np.arange(8)[None] >= rng.integers(0, 4, (prompts, 1)))}
  return policy_lib.TextPolicy(cfg), params, scfg, batch


def test_learnable_reward_rises_within_50_steps():
  policy, params, scfg, batch = _setup(rank=0)
  opt = optax.adam(1e-2)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(1))
  step = grpo_step.make_step(policy, scfg, opt, share_reward)
  rewards = []
  for _ in range(50):
    state, m = step(state, batch)
    rewards.append(float(m["reward"]))
  first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
  print(f"share reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
  assert last > first + 0.4, rewards
  assert int(state["step"]) == 50


def _run(policy, params, scfg, batch, opt, steps, mesh=None):
  rules = sharding.DEFAULT_RULES
  params = jax.tree.map(jnp.copy, params)       # the step donates the state's buffers
  state = grpo_step.init_state(policy, params, opt, jax.random.key(3))
  kwargs = {}
  if mesh is not None:
    # Boxed abstract params keep the logical axis names, so the weights really shard.
    state_sh = grpo_step.state_shardings(policy, qwen2.abstract_params(policy.config), opt,
                                         mesh, rules)
    batch_sh = grpo_step.batch_shardings(batch, mesh, rules)
    state = jax.device_put(state, state_sh)
    batch = jax.device_put(batch, batch_sh)
    kwargs = dict(mesh=mesh, rules=rules, state_sh=state_sh, batch_sh=batch_sh)
  step = grpo_step.make_step(policy, scfg, opt, share_reward, **kwargs)
  history = []
  for _ in range(steps):
    state, m = step(state, batch)
    history.append({k: float(v) for k, v in m.items()})
  return jax.device_get(state["trainable"]), history


@pytest.mark.parametrize("rank", [0, 4])
def test_mesh_2x2x2_matches_one_device(rank):
  policy, params, scfg, batch = _setup(rank=rank, generations=2, new_tokens=8, num_iterations=2,
                                       micro_batches=2, prompts=8)
  # SGD: the update is linear in the gradient (Adam would amplify float noise in ~0 gradients
  # to +-lr and hide what is compared).
  opt = optax.sgd(0.5)
  single, h1 = _run(policy, params, scfg, batch, opt, 2,
                    mesh=sharding.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  multi, h8 = _run(policy, params, scfg, batch, opt, 2, mesh=mesh)
  sharded = [s.spec for s in jax.tree.leaves(
      grpo_step.state_shardings(policy, qwen2.abstract_params(policy.config), opt, mesh,
                                sharding.DEFAULT_RULES)["trainable" if rank == 0 else "frozen"],
      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))]
  assert any(any(axis is not None for axis in spec) for spec in sharded), sharded
  for a, b in zip(h1, h8):
    assert a["reward"] == b["reward"]          # same samples
    for k in ("loss", "kl", "entropy", "grad_norm"):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), single, multi))
  print(f"max |param diff| 1 device vs (2,2,2) mesh after 2 steps: {max(diffs):.2e}")
  assert max(diffs) <= 1e-5


def test_nan_reward_gives_zero_advantage_and_is_counted():
  policy, params, scfg, batch = _setup(rank=0, generations=4, new_tokens=8)

  def nan_reward(tokens, lengths, rows):
    r, m = share_reward(tokens, lengths, rows)
    return r.at[0].set(jnp.nan), m

  opt = optax.adam(1e-2)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(1))
  state, m = grpo_step.make_step(policy, scfg, opt, nan_reward)(state, batch)
  assert int(m["advantage/num_nan_rewards"]) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state["trainable"])))
  assert np.isfinite(float(m["loss"]))


def test_bad_inputs_fail_before_compiling():
  policy, params, scfg, batch = _setup(rank=0)
  with pytest.raises(ValueError, match="num_generations"):
    grpo_step.StepConfig(scfg.sampling, losses.GrpoLossConfig.from_config(
        get_grpo_loss_config(num_generations=1)))
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1})
  with pytest.raises(ValueError, match="cannot be split over the mesh"):
    grpo_step.check_batch(policy, batch, scfg, mesh)
  long = dict(batch, prompt_mask=jnp.ones((4, 120), bool),
              prompt_tokens=jnp.ones((4, 120), jnp.int32))
  with pytest.raises(ValueError, match="max_position_embeddings"):
    grpo_step.check_batch(policy, long, scfg)
  with pytest.raises(ValueError, match="micro-batches of 2 prompts"):
    grpo_step.check_batch(policy, batch, dataclasses.replace(
        scfg, loss=dataclasses.replace(scfg.loss, micro_batches=2)),
        sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  with pytest.raises(ValueError, match="missing"):
    grpo_step.check_batch(policy, {"prompt_mask": batch["prompt_mask"]}, scfg)
