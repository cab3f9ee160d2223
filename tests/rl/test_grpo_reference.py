"""GRPO's reference policy is the policy at the start of GRPO, frozen: after an SFT that moved the
LoRA adapters and the fusion (or, under full fine-tuning, every decoder weight), the first step's
KL is 0, and the reference stays where it started while the policy moves."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from affect_jax import sharding
from affect_jax.models import affectgpt
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler
from configs import tiny
from configs.grpo_loss import get_grpo_loss_config

pytestmark = pytest.mark.slow   # minutes: started first (conftest)

TARGET = 7
PROMPTS, PROMPT_LEN, GENERATIONS, NEW_TOKENS = 2, 8, 4, 8
KL_ZERO = 1e-6          # k3 of two equal log-probs is exactly 0; this is float rounding


def share_reward(tokens, lengths, rows):
  """The share of TARGET among a completion's tokens."""
  del rows
  valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
  share = jnp.sum((tokens == TARGET) & valid, -1) / jnp.maximum(lengths, 1)
  return share.astype(jnp.float32), {"share": share.mean()}


def _after_sft(rank: int):
  """A tiny AffectGPT policy whose params look trained: every LoRA B, fusion and (rank 0)
  decoder leaf moved away from its initialisation by random noise."""
  mc = tiny.get_config().model
  mc.llm.lora = dict(mc.llm.lora, rank=rank)
  cfg = affectgpt.AffectGPTConfig.from_config(mc)
  policy = policy_lib.AffectGPTPolicy(cfg)
  params = sharding.unbox(affectgpt.init(cfg, jax.random.key(0)))
  mask = policy.trainable_mask(params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) if m else x
           for x, m, k in zip(leaves, jax.tree.leaves(mask), keys)]
  params = jax.tree.unflatten(treedef, moved)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, cfg.llm.vocab_size - 8, (PROMPTS, PROMPT_LEN))
  ids = cfg.placeholders
  tokens[:, -3:] = [ids["multi"], ids["audio"], ids["video"]]
  batch = {"prompt_tokens": jnp.asarray(tokens, jnp.int32),
           "prompt_mask": jnp.asarray(np.arange(PROMPT_LEN)[None] >= np.array([[0], [2]])),
           "video": jnp.asarray(rng.normal(size=(PROMPTS, 4, 24)), jnp.float32),
           "audio": jnp.asarray(rng.normal(size=(PROMPTS, 3, 32)), jnp.float32)}
  lcfg = losses.GrpoLossConfig.from_config(get_grpo_loss_config(
      num_generations=GENERATIONS, beta=0.04, logprob_chunk=8))
  scfg = grpo_step.StepConfig(
      sampler.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, buckets=(PROMPT_LEN,)),
      lcfg)
  return policy, params, scfg, batch


def _numpy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


@pytest.mark.parametrize("rank", [4, 0], ids=["lora", "full_finetuning"])
def test_first_step_kl_is_zero_after_sft(rank):
  policy, params, scfg, batch = _after_sft(rank)
  lora_b = [x for p, x in jax.tree_util.tree_leaves_with_path(params)
            if "lora_b" in jax.tree_util.keystr(p)]
  assert bool(rank) == bool(lora_b) and all(float(jnp.abs(x).max()) > 0.01 for x in lora_b)
  opt = optax.adam(1e-2)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(2))
  # The optimizer starts fresh: no step counted, zero moments.
  adam = state["opt_state"][0]
  assert int(adam.count) == 0
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves((adam.mu, adam.nu)))
  _, m = grpo_step.make_step(policy, scfg, opt, share_reward)(state, batch)
  print(f"rank {rank}: first GRPO step kl = {float(m['kl']):.3e}")
  assert abs(float(m["kl"])) <= KL_ZERO


def test_reference_stays_fixed_while_the_policy_moves():
  policy, params, scfg, batch = _after_sft(4)
  opt = optax.adam(1e-2)
  state = grpo_step.init_state(policy, jax.tree.map(jnp.copy, params), opt, jax.random.key(2))
  start = _numpy(state["trainable"])
  assert "fusion" in start and "llm" in start       # adapters and fusion are trained
  step = grpo_step.make_step(policy, scfg, opt, share_reward)
  kls = []
  for _ in range(4):
    state, m = step(state, batch)
    kls.append(float(m["kl"]))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                       start, _numpy(state["trainable"])))
  assert max(moved) > 1e-3                                   # the policy moved ...
  print(f"kl over 4 steps: {kls}")
  assert abs(kls[0]) <= KL_ZERO and kls[-1] > 10 * KL_ZERO    # ... away from its reference
  reference = _numpy(state["reference"])      # (before the next step donates the state)
  # Put the policy back at its start: it equals the reference again.
  back = dict(state, trainable=jax.tree.map(jnp.asarray, start),
              opt_state=opt.init(jax.tree.map(jnp.asarray, start)))
  _, m = step(back, batch)
  assert abs(float(m["kl"])) <= KL_ZERO
  # The reference never moved.
  assert jax.tree.structure(reference) == jax.tree.structure(start)
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
