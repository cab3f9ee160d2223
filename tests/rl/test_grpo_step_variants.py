"""The fused step's DAPO options: dynamic sampling (static shapes, one compile) and overlong
shaping, against plain numpy and the step's own metrics."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from affect_jax.rl import grpo_step
from tests.rl.test_grpo_step import _setup

EOS = 5


def np_overlong(lengths, cap, buffer, penalty):
  lengths = np.asarray(lengths, np.float64)
  if buffer == 0:
    return np.zeros_like(lengths)
  return np.where(lengths > cap - buffer,
                  -np.minimum(1.0, (lengths - (cap - buffer)) / buffer) * penalty, 0.0)


@pytest.mark.parametrize("buffer", [0, 1, 4, 10])
def test_overlong_penalty_matches_numpy(buffer):
  lengths = np.arange(0, 11, dtype=np.int32)
  got = grpo_step.overlong_penalty(jnp.asarray(lengths), 10, buffer, 0.5)
  np.testing.assert_allclose(got, np_overlong(lengths, 10, buffer, 0.5), rtol=1e-6, atol=1e-7)


def test_select_groups_keeps_informative_groups_first_in_order():
  r = np.array([[1, 1], [0, 1], [np.nan, 1], [2, 3], [5, 5], [0, 0.5]], np.float32).reshape(-1)
  informative = [1, 3, 5]                 # finite rewards that differ; nan leaves one finite
  idx, kept_informative, m = grpo_step.select_groups(jnp.asarray(r), 2, 2)
  assert list(np.asarray(idx)) == informative[:2]
  assert np.asarray(kept_informative).all()
  assert {k: int(v) for k, v in m.items()} == dict(groups_rolled_out=6, groups_dropped=3,
                                                   groups_kept=2, groups_short=0)
  idx, kept_informative, m = grpo_step.select_groups(jnp.asarray(r), 2, 4)
  assert list(np.asarray(idx)) == informative + [0]   # then zero-variance groups, in order
  assert list(np.asarray(kept_informative)) == [True, True, True, False]
  assert int(m["groups_kept"]) == 3 and int(m["groups_short"]) == 1


def flag_reward(tokens, lengths, rows):
  """Prompts flagged 1 get the (varying) first token / 64, the others a constant 0.5."""
  del lengths
  varying = tokens[:, 0].astype(jnp.float32) / 64.0
  return jnp.where(rows["flag"] > 0, varying, 0.5), {}


def test_dynamic_sampling_trains_on_informative_groups_and_compiles_once():
  policy, params, scfg, batch = _setup(rank=0, generations=4, new_tokens=4, prompts=8,
                                       oversample=2)
  opt = optax.sgd(0.1)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(1))
  step = grpo_step.make_step(policy, scfg, opt, flag_reward)
  for flags, informative in (([1, 1, 0, 1, 0, 1, 1, 0], 5), ([1, 0, 0, 1, 0, 1, 0, 0], 3)):
    state, m = step(state, dict(batch, flag=jnp.asarray(flags, jnp.int32)))
    kept = min(informative, 4)
    assert int(m["dynamic_sampling/groups_rolled_out"]) == 8
    assert int(m["dynamic_sampling/groups_dropped"]) == 8 - informative
    assert int(m["dynamic_sampling/groups_kept"]) == kept
    assert int(m["dynamic_sampling/groups_short"]) == 4 - kept
    # The advantages are computed over the 4 trained groups: zero-variance ones only as filler.
    np.testing.assert_allclose(m["advantage/frac_zero_std_groups"], (4 - kept) / 4)
    assert np.isfinite(float(m["loss"]))
  assert step.jitted._cache_size() == 1


def test_oversample_must_divide_the_batch():
  policy, params, scfg, batch = _setup(rank=0, generations=2, prompts=4, oversample=3)
  with pytest.raises(ValueError, match="grpo_loss.oversample=3"):
    grpo_step.check_oversample(batch, scfg)


def test_overlong_penalty_and_truncation_mask_in_the_step():
  cap, buffer, penalty = 8, 4, 0.5
  policy, params, scfg, batch = _setup(rank=0, generations=8, new_tokens=cap,
                                       overlong_buffer=buffer, overlong_penalty=penalty,
                                       mask_truncated=True)
  scfg = dataclasses.replace(scfg, sampling=dataclasses.replace(scfg.sampling, eos_ids=(EOS,)))

  def zero_reward(tokens, lengths, rows):
    del rows
    valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
    done = jnp.any((tokens == EOS) & valid, -1)
    f = lengths.astype(jnp.float32)
    want = -jnp.clip((f - (cap - buffer)) / buffer, 0.0, 1.0) * penalty
    return jnp.zeros(lengths.shape, jnp.float32), {
        "want_penalty": want.mean(), "done_frac": done.mean(),
        "done_tokens": jnp.sum(jnp.where(done, f, 0.0))}

  opt = optax.sgd(0.1)
  state = grpo_step.init_state(policy, params, opt, jax.random.key(1))
  state, m = grpo_step.make_step(policy, scfg, opt, zero_reward)(state, batch)
  rows = 4 * 8
  assert 0 < float(m["reward/done_frac"]) < 1          # both kinds of completion occur
  np.testing.assert_allclose(m["overlong/penalty_mean"], m["reward/want_penalty"], rtol=1e-6)
  np.testing.assert_allclose(m["reward"], m["reward/want_penalty"], rtol=1e-6)
  assert float(m["overlong/penalty_mean"]) < 0
  np.testing.assert_allclose(m["overlong/truncated_frac"], 1 - float(m["reward/done_frac"]))
  # The loss sees only the completed rows' tokens.
  np.testing.assert_allclose(m["completion_length"], float(m["reward/done_tokens"]) / rows,
                             rtol=1e-6)
