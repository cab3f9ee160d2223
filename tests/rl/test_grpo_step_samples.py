"""The fused step's sampled completions (StepConfig.samples): the first rows it trained on, with
their prompt, reward, advantage and per-row reward terms, checked against plain numpy; the
training itself is bitwise the same with them on or off."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from affect_jax.rewards import total as reward_total
from affect_jax.rl import grpo_step
from tests.rl.test_grpo_step import _setup

EOS = 5


def first_token_reward(tokens, lengths, rows):
  """Prompts flagged 1: the (varying) first token / 64; the others a constant 0.5 (a group
  without signal). Per row under PER_ROW, as rewards.total.grpo_reward does."""
  del lengths
  r = jnp.where(rows["flag"] > 0, tokens[:, 0].astype(jnp.float32) / 64.0, 0.5)
  return r, {"r": r.mean(), reward_total.PER_ROW: {"r": r, "first": tokens[:, 0]}}


def _run(samples, oversample):
  policy, params, scfg, batch = _setup(rank=0, generations=4, new_tokens=4, prompts=8,
                                       oversample=oversample)
  scfg = dataclasses.replace(scfg, samples=samples)
  batch = dict(batch, flag=jnp.asarray([0, 1, 0, 1, 1, 0, 1, 1], jnp.int32))
  opt = optax.sgd(0.1)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(1))
  state, m = grpo_step.make_step(policy, scfg, opt, first_token_reward)(state, batch)
  return jax.device_get((state["trainable"], m))


def test_samples_are_the_trained_rows_and_change_nothing():
  # Under dynamic sampling (oversample 2: 4 of the 8 prompts trained on), whose row
  # selection the samples follow; tests/train/test_diagnostics.py covers the plain step.
  g, k = 4, 6
  trained_off, off = _run(0, 2)
  trained_on, on = _run(k, 2)
  s = on.pop(grpo_step.SAMPLES)
  assert grpo_step.SAMPLES not in off and reward_total.PER_ROW not in on
  jax.tree.map(np.testing.assert_array_equal, (trained_on, on), (trained_off, off))
  # Whole groups in the trained order, informative (flagged) prompts first: rows 0-3 are
  # prompt 1's completions, rows 4-5 prompt 3's.
  assert s["prompt"].tolist() == [[1, 3][i // g] for i in range(k)]
  first = s["tokens"][:, 0]
  want = (first / 64.0).astype(np.float32)
  np.testing.assert_array_equal(s["reward"], want)
  np.testing.assert_array_equal(s["terms"]["r"], want)
  np.testing.assert_array_equal(s["terms"]["first"], first)
  assert s["tokens"].shape == (k, 4) and np.all((1 <= s["lengths"]) & (s["lengths"] <= 4))
  # The first group is whole: its advantages are (r - mean) / (std + eps), std ddof 1.
  r = s["reward"][:g].astype(np.float64)
  np.testing.assert_allclose(s["advantage"][:g], (r - r.mean()) / (r.std(ddof=1) + 1e-4),
                             rtol=1e-5, atol=1e-6)
