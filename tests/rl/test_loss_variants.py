"""The GRPO-family options of rl/losses.py (GSPO, CISPO, dual clip, RLOO) against plain numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax.rl import losses
from tests.rl.test_losses import (AGGREGATIONS, CONSTANT, EPS_HIGH, EPS_LOW, cfg, loss_inputs,
                                  np_advantages)


def aggregate(per, mask, agg):
  """The three aggregations by their formulas (float64)."""
  if agg == "token_mean":
    return (per * mask).sum() / mask.sum()
  if agg == "sequence_mean_token_mean":
    return np.mean((per * mask).sum(1) / mask.sum(1))
  return (per * mask).sum() / (len(mask) * CONSTANT)


def np_policy(lp, old, adv, mask, kind, dual_c=0.0):
  """Per-token policy loss [B, N] in float64."""
  lp, old, a, mask = np.float64(lp), np.float64(old), np.float64(adv)[:, None], np.float64(mask)
  if kind == "gspo":
    n = mask.sum(1, keepdims=True)
    s = np.exp(((lp - old) * mask).sum(1, keepdims=True) / n)             # [B, 1]
    per = -np.minimum(s * a, np.clip(s, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
    per = np.broadcast_to(per, lp.shape)
  elif kind == "cispo":
    per = -np.clip(np.exp(lp - old), 1 - EPS_LOW, 1 + EPS_HIGH) * a * lp
  else:
    r = np.exp(lp - old)
    per = -np.minimum(r * a, np.clip(r, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
  if dual_c:
    per = np.where(a < 0, np.minimum(per, -dual_c * a), per)
  return per


def fd_grad(f, x, h=1e-6):
  """Central differences of a float64 numpy function."""
  x = np.float64(x)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[i] = h
    g[i] = (f(x + e) - f(x - e)) / (2 * h)
  return g


def gspo_inputs(seed):
  """Sequence log-ratios chosen per row: above, below and inside the clip range, and one above
  the dual-clip cap 1.5 with a negative advantage; small per-token noise around them."""
  lp, _, _, adv, mask = loss_inputs(seed=seed)
  rng = np.random.default_rng(seed)
  seq = np.log([1.6, 0.6, 1.05, 2.0, 0.7, 0.95])[:, None]
  old = (lp - seq - 0.03 * rng.normal(size=lp.shape)).astype(np.float32)
  adv[3] = -abs(adv[3]) - 0.1
  return lp, old, adv, mask


def jax_loss(lp, old, adv, mask, c):
  fn = jax.jit(jax.value_and_grad(lambda x: losses.grpo_loss(x, old, None, adv, mask, c),
                                  has_aux=True))
  return fn(lp)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gspo_loss_and_gradient_match_numpy(agg):
  lp, old, adv, mask = gspo_inputs(seed=4)
  c = cfg(policy_loss="gspo", loss_aggregation=agg, beta=0.0, num_iterations=2)
  (loss, m), grad = jax_loss(lp, old, adv, mask, c)
  f = lambda x: aggregate(np_policy(x, old, adv, mask, "gspo"), mask, agg)
  np.testing.assert_allclose(loss, f(lp), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, fd_grad(f, lp), rtol=1e-4, atol=1e-6)
  s = np.exp(((np.float64(lp) - old) * mask).sum(1) / mask.sum(1))
  a = np.float64(adv)
  clipped = ((s < 1 - EPS_LOW) & (a < 0)) | ((s > 1 + EPS_HIGH) & (a > 0))
  assert clipped.any() and not clipped.all()        # both branches are exercised
  want = (clipped[:, None] * mask).sum() / mask.sum()
  np.testing.assert_allclose(m["clip_frac"], want, rtol=1e-5)
  np.testing.assert_allclose(m["ratio_mean"], (s[:, None] * mask).sum() / mask.sum(), rtol=1e-5)


def test_gspo_with_one_iteration_is_the_sequence_mean_reinforce_gradient():
  lp, old, _, adv, mask = loss_inputs(seed=5)
  c = cfg(policy_loss="gspo", beta=0.0)              # old = stop_gradient(logps): s = 1
  (loss, _), grad = jax_loss(lp, old, adv, mask, c)
  n = mask.sum(1, keepdims=True)
  np.testing.assert_allclose(loss, -np.mean(adv), rtol=1e-5)
  np.testing.assert_allclose(grad, -adv[:, None] * mask / n / len(mask), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("num_iterations", [1, 2])
def test_cispo_loss_and_gradient_match_numpy(agg, num_iterations):
  lp, old, _, adv, mask = loss_inputs(seed=6)
  c = cfg(policy_loss="cispo", loss_aggregation=agg, beta=0.0, num_iterations=num_iterations)
  (loss, m), grad = jax_loss(lp, old, adv, mask, c)
  old_eff = lp if num_iterations == 1 else old
  per = np_policy(lp, old_eff, adv, mask, "cispo")
  np.testing.assert_allclose(loss, aggregate(per, mask, agg), rtol=1e-5, atol=1e-7)
  # The weight is a constant: d/dlogp of -w * A * logp is -w * A, times the aggregation weight.
  w = np.clip(np.exp(np.float64(lp) - old_eff), 1 - EPS_LOW, 1 + EPS_HIGH)
  d_per = -w * np.float64(adv)[:, None]
  weight = fd_grad(lambda x: aggregate(x, mask, agg), np.zeros_like(per))
  np.testing.assert_allclose(grad, d_per * weight, rtol=1e-4, atol=1e-6)
  r = np.exp(np.float64(lp) - old_eff)
  out = (r < 1 - EPS_LOW) | (r > 1 + EPS_HIGH)
  np.testing.assert_allclose(m["clip_frac"], (out * mask).sum() / mask.sum(), rtol=1e-5)
  if num_iterations == 2:
    assert (out * mask).any()                        # the clip is active


@pytest.mark.parametrize("kind", ["grpo", "gspo"])
def test_dual_clip_caps_the_loss_of_negative_advantages(kind):
  if kind == "gspo":
    lp, old, adv, mask = gspo_inputs(seed=7)
  else:
    lp, old, _, adv, mask = loss_inputs(seed=7)
  dual_c = 1.5
  c = cfg(policy_loss=kind, dual_clip_c=dual_c, beta=0.0, num_iterations=2,
          loss_aggregation="token_mean")
  (loss, _), grad = jax_loss(lp, old, adv, mask, c)
  f = lambda x: aggregate(np_policy(x, old, adv, mask, kind, dual_c), mask, "token_mean")
  np.testing.assert_allclose(loss, f(lp), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, fd_grad(f, lp), rtol=1e-4, atol=1e-6)
  capped = np_policy(lp, old, adv, mask, kind) > -dual_c * np.float64(adv)[:, None]
  assert (capped & (adv[:, None] < 0) & (mask > 0)).any()      # the cap binds
  assert not np.isclose(f(lp), aggregate(np_policy(lp, old, adv, mask, kind), mask, "token_mean"))



def np_rloo(rewards, g):
  """A_i = r_i - mean_{j != i} r_j over the finite rewards of each group (0 with < 2 of them)."""
  r = np.asarray(rewards, np.float64)
  adv = np.zeros_like(r)
  for start in range(0, len(r), g):
    ok = [i for i in range(start, start + g) if np.isfinite(r[i])]
    if len(ok) < 2:
      continue
    for i in ok:
      adv[i] = r[i] - np.mean([r[j] for j in ok if j != i])
  return adv


def test_rloo_advantages_match_numpy():
  rng = np.random.default_rng(2)
  rewards = rng.uniform(0, 1, size=20).astype(np.float32)
  rewards[4:8] = 0.7                                  # equal rewards: exact zeros
  rewards[9] = np.nan                                 # 3 finite rewards left
  rewards[12:15] = np.nan                             # 1 finite reward left: zeros
  adv, stats = jax.jit(lambda r: losses.group_advantages(r, 4, "rloo", 1e-4, 1))(rewards)
  np.testing.assert_allclose(adv, np_rloo(rewards, 4), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(adv)[4:8], 0.0)
  assert int(stats["num_nan_rewards"]) == 4


@pytest.mark.parametrize("scale", ["none", "rloo"])
def test_equal_rewards_give_exact_zeros(scale):
  """0.9 * 3 / 3 != 0.9 in float32: r - mean_g is not 0 unless the group is recognised as equal
  (dynamic sampling relies on zero-variance groups having zero advantages)."""
  rewards = jnp.asarray([0.9, 0.9, 0.9, 0.1, 0.7, 0.3], jnp.float32)
  adv, _ = losses.group_advantages(rewards, 3, scale)
  np.testing.assert_array_equal(np.asarray(adv)[:3], 0.0)
  want = np_rloo(rewards[3:], 3) if scale == "rloo" else np_advantages(rewards[3:], 3, "none",
                                                                       0.0, 1)
  np.testing.assert_allclose(adv[3:], want, rtol=1e-5)


@pytest.mark.parametrize("field,value", [("policy_loss", "ppo"), ("dual_clip_c", 0.5),
                                         ("overlong_buffer", -1), ("overlong_penalty", -1.0),
                                         ("oversample", 0), ("advantage_scale", "loo")])
def test_config_names_the_bad_field(field, value):
  with pytest.raises(ValueError, match=f"grpo_loss.{field}"):
    cfg(**{field: value})
