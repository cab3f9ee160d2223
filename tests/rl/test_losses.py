"""GRPO advantages, loss and micro-batched gradients against plain-numpy (float64) formulas."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.generation import logprobs
from affect_jax.optim import accumulate
from affect_jax.rl import losses
from configs import grpo_loss as grpo_loss_config

AGGREGATIONS = ["token_mean", "sequence_mean_token_mean", "constant_normalizer"]
EPS_LOW, EPS_HIGH, CONSTANT = 0.2, 0.28, 9.0


# ----------------------------------------------------------------------------------------------
# Numpy references.


def np_advantages(rewards, g, scale, eps, ddof):
  r = np.asarray(rewards, np.float64)
  valid = np.isfinite(r)
  std_b = np.std(r[valid], ddof=ddof)
  adv = np.zeros_like(r)
  for start in range(0, len(r), g):
    idx = np.arange(start, start + g)
    ok = idx[valid[idx]]
    if len(ok) < 2:
      continue
    centred = r[ok] - r[ok].mean()
    std = {"group": np.std(r[ok], ddof=ddof), "batch": std_b, "none": None}[scale]
    adv[ok] = centred if std is None else centred / (std + eps)
  return adv


def np_loss(lp, old, ref, adv, mask, agg, beta, num_iterations):
  """The GRPO loss by its formulas; returns the loss and per-token pieces."""
  lp, adv, mask = np.float64(lp), np.float64(adv)[:, None], np.float64(mask)
  old = lp if num_iterations == 1 else np.float64(old)
  ratio = np.exp(lp - old)
  per = -np.minimum(ratio * adv, np.clip(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * adv)
  if ref is not None:
    d = np.float64(ref) - lp
    per = per + beta * (np.exp(d) - d - 1)
  if agg == "token_mean":
    loss = (per * mask).sum() / mask.sum()
  elif agg == "sequence_mean_token_mean":
    loss = np.mean((per * mask).sum(1) / mask.sum(1))
  else:
    loss = (per * mask).sum() / (len(mask) * CONSTANT)
  return loss


def np_loss_grad(lp, old, ref, adv, mask, agg, beta, num_iterations):
  """d loss / d logps, derived by hand (old and ref are constants)."""
  lp, adv, mask = np.float64(lp), np.float64(adv)[:, None], np.float64(mask)
  ratio = np.ones_like(lp) if num_iterations == 1 else np.exp(lp - np.float64(old))
  clipped = ((ratio < 1 - EPS_LOW) & (adv < 0)) | ((ratio > 1 + EPS_HIGH) & (adv > 0))
  d_per = np.where(clipped, 0.0, -adv * ratio)
  if ref is not None:
    d_per = d_per + beta * (1 - np.exp(np.float64(ref) - lp))
  if agg == "token_mean":
    weight = mask / mask.sum()
  elif agg == "sequence_mean_token_mean":
    weight = mask / (mask.sum(1, keepdims=True) * len(mask))
  else:
    weight = mask / (len(mask) * CONSTANT)
  return d_per * weight


def np_clip_fractions(lp, old, adv, mask):
  ratio = np.exp(np.float64(lp) - old)
  a = np.asarray(adv)[:, None]
  low = (ratio < 1 - EPS_LOW) & (a < 0)
  high = (ratio > 1 + EPS_HIGH) & (a > 0)
  n = mask.sum()
  return (low * mask).sum() / n, (high * mask).sum() / n, ((low | high) * mask).sum() / n


def make_ratios(rng, shape):
  """exp(log-ratio) values away from the clip boundaries, on both sides of them."""
  bands = np.array([[0.4, 0.7], [0.9, 1.1], [1.4, 2.0]])
  pick = bands[rng.integers(0, 3, size=shape)]
  return rng.uniform(pick[..., 0], pick[..., 1])


def make_mask(rng, b, n):
  lengths = rng.integers(1, n + 1, size=b)
  lengths[0] = n
  return (np.arange(n)[None] < lengths[:, None]).astype(np.float32)


def cfg(**kw):
  base = dict(epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, normalizer_constant=CONSTANT,
              num_generations=2)
  base.update(kw)
  return losses.GrpoLossConfig.from_config(grpo_loss_config.get_grpo_loss_config(**base))


# ----------------------------------------------------------------------------------------------
# Advantages.


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_advantages_match_numpy(scale, ddof):
  rng = np.random.default_rng(0)
  rewards = rng.uniform(0, 1, size=24).astype(np.float32)
  rewards[8:12] = 0.5                       # a group with zero std
  adv, stats = jax.jit(functools.partial(
      losses.group_advantages, num_generations=4, scale=scale, eps=1e-4, std_ddof=ddof))(rewards)
  np.testing.assert_allclose(adv, np_advantages(rewards, 4, scale, 1e-4, ddof),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(adv[8:12], 0.0)
  assert int(stats["num_nan_rewards"]) == 0
  np.testing.assert_allclose(stats["reward_mean"], rewards.astype(np.float64).mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["reward_std"], np.std(np.float64(rewards), ddof=ddof),
                             rtol=1e-5)
  np.testing.assert_allclose(stats["frac_zero_std_groups"], 1 / 6)


def test_nan_rewards_get_zero_advantage_and_are_counted():
  rng = np.random.default_rng(1)
  rewards = rng.uniform(0, 1, size=12).astype(np.float32)
  rewards[1] = np.nan                      # group 0: 3 finite rewards left
  rewards[4:7] = [np.nan, np.inf, np.nan]  # group 1: 1 finite reward left -> all zero
  for scale in ("group", "batch", "none"):
    adv, stats = losses.group_advantages(jnp.asarray(rewards), 4, scale, 1e-4)
    assert np.isfinite(np.asarray(adv)).all()
    assert all(np.isfinite(np.asarray(v)).all() for v in stats.values())
    assert int(stats["num_nan_rewards"]) == 4
    np.testing.assert_array_equal(np.asarray(adv)[[1, 4, 5, 6, 7]], 0.0)
    np.testing.assert_allclose(adv, np_advantages(rewards, 4, scale, 1e-4, 1), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_equal_rewards_with_zero_eps_give_zero_not_nan(scale):
  rewards = jnp.asarray([0.3, 0.3, 0.3, 0.3, 1.0, 0.0, 0.5, 0.5])
  adv, _ = losses.group_advantages(rewards if scale == "group" else rewards[:4], 4, scale, 0.0)
  np.testing.assert_array_equal(np.asarray(adv)[:4], 0.0)
  if scale == "group":
    np.testing.assert_allclose(adv[4:], np_advantages(rewards[4:], 4, "group", 0.0, 1),
                               rtol=1e-6)


@pytest.mark.parametrize("g", [1, 5])
def test_bad_num_generations_names_the_field(g):
  with pytest.raises(ValueError, match="grpo_loss.num_generations"):
    losses.group_advantages(jnp.zeros(12), g)


def test_config_rejects_a_single_generation():
  with pytest.raises(ValueError, match="grpo_loss.num_generations"):
    cfg(num_generations=1)


# ----------------------------------------------------------------------------------------------
# Loss.


def loss_inputs(seed=0, b=6, n=7):
  rng = np.random.default_rng(seed)
  lp = -rng.uniform(0.05, 3.0, size=(b, n)).astype(np.float32)
  old = (lp - np.log(make_ratios(rng, (b, n)))).astype(np.float32)
  ref = (lp + 0.3 * rng.normal(size=(b, n))).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  adv[:2] = [1.0, -1.0]                    # both signs, whatever the seed
  return lp, old, ref, adv, make_mask(rng, b, n)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("num_iterations", [1, 2])
def test_loss_and_gradient_match_numpy(agg, beta, num_iterations):
  lp, old, ref, adv, mask = loss_inputs()
  c = cfg(loss_aggregation=agg, beta=beta, num_iterations=num_iterations)
  ref_in = None if beta == 0 else ref
  fn = jax.jit(jax.value_and_grad(
      lambda x: losses.grpo_loss(x, old, ref_in, adv, mask, c), has_aux=True))
  (loss, metrics), grad = fn(lp)
  want = np_loss(lp, old, ref_in, adv, mask, agg, beta, num_iterations)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, np_loss_grad(lp, old, ref_in, adv, mask, agg, beta,
                                                num_iterations), rtol=1e-5, atol=1e-7)
  old_eff = np.float64(lp) if num_iterations == 1 else np.float64(old)
  low, high, total = np_clip_fractions(lp, old_eff, adv, mask)
  if num_iterations > 1:
    assert low > 0 and high > 0            # clipping is active on both sides
  np.testing.assert_allclose(metrics["clip_frac_low"], low, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_frac_high"], high, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_frac"], total, rtol=1e-5)
  ratio = np.exp(np.float64(lp) - old_eff)
  np.testing.assert_allclose(metrics["ratio_mean"], (ratio * mask).sum() / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["completion_length"], mask.sum() / len(mask), rtol=1e-6)
  np.testing.assert_allclose(metrics["advantage_mean"], adv.mean(), rtol=1e-5, atol=1e-7)
  if beta:
    d = np.float64(ref) - lp
    np.testing.assert_allclose(metrics["kl"], ((np.exp(d) - d - 1) * mask).sum() / mask.sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics["policy_loss"],
                               np_loss(lp, old, None, adv, mask, agg, 0.0, num_iterations),
                               rtol=1e-5, atol=1e-7)
  else:
    assert "kl" not in metrics


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_numpy_gradient_agrees_with_finite_differences(agg):
  """Checks the hand-derived reference itself (float64 central differences)."""
  lp, old, ref, adv, mask = loss_inputs(seed=3, b=3, n=4)
  lp = np.float64(lp)
  analytic = np_loss_grad(lp, old, ref, adv, mask, agg, 0.04, 2)
  numeric = np.zeros_like(lp)
  for i in np.ndindex(lp.shape):
    step = np.zeros_like(lp)
    step[i] = 1e-6
    numeric[i] = (np_loss(lp + step, old, ref, adv, mask, agg, 0.04, 2)
                  - np_loss(lp - step, old, ref, adv, mask, agg, 0.04, 2)) / 2e-6
  np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_loss_input_errors_name_the_fix():
  lp, old, ref, adv, mask = loss_inputs()
  with pytest.raises(ValueError, match="grpo_loss.beta"):
    losses.grpo_loss(lp, old, None, adv, mask, cfg(beta=0.04))
  with pytest.raises(ValueError, match="grpo_loss.num_iterations"):
    losses.grpo_loss(lp, None, ref, adv, mask, cfg(num_iterations=2))
  with pytest.raises(ValueError, match="advantages"):
    losses.grpo_loss(lp, old, ref, adv[:-1], mask, cfg())
  with pytest.raises(ValueError, match="mask"):
    losses.grpo_loss(lp, old, ref, adv, mask[:, :-1], cfg())
  with pytest.raises(ValueError, match="grpo_loss.loss_aggregation"):
    cfg(loss_aggregation="mean")
  with pytest.raises(ValueError, match="grpo_loss.std_ddof"):
    cfg(std_ddof=2)
  with pytest.raises(ValueError, match="unknown fields"):
    losses.GrpoLossConfig.from_config(dict(num_generations=4, epsilon=0.2))


def test_config_file_round_trips_with_defaults():
  c = losses.GrpoLossConfig.from_config(grpo_loss_config.get_grpo_loss_config())
  assert c == losses.GrpoLossConfig()
  assert (c.num_generations, c.beta, c.epsilon_low, c.kl_estimator) == (8, 0.04, 0.2, "k3")


# ----------------------------------------------------------------------------------------------
# Micro-batched gradients, through a linear output head: logits = hidden @ w + b.


def np_head_grads(params, hidden, targets, d_logp):
  """d loss / d (w, b) given d loss / d logp, by the chain rule through the log-softmax."""
  logits = np.float64(hidden) @ np.float64(params["w"]) + np.float64(params["b"])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  d_logits = d_logp[..., None] * (np.eye(logits.shape[-1])[targets] - p)
  return dict(w=np.einsum("bth,btv->hv", np.float64(hidden), d_logits), b=d_logits.sum((0, 1)))


def np_head_logprobs(params, hidden, targets):
  logits = np.float64(hidden) @ np.float64(params["w"]) + np.float64(params["b"])
  logits = logits - logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return np.take_along_axis(logp, targets[..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def head_batch():
  rng = np.random.default_rng(5)
  b, n, h, v = 8, 6, 4, 11
  params = dict(w=(0.5 * rng.normal(size=(h, v))).astype(np.float32),
                b=(0.1 * rng.normal(size=(v,))).astype(np.float32))
  hidden = rng.normal(size=(b, n, h)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, n)).astype(np.int32)
  lp = np_head_logprobs(params, hidden, targets)
  batch = dict(
      hidden=hidden, targets=targets,
      old=(lp - np.log(make_ratios(rng, (b, n)))).astype(np.float32),
      ref=(lp + 0.3 * rng.normal(size=(b, n))).astype(np.float32),
      adv=np.concatenate([[1.0, -1.0], rng.normal(size=b - 2)]).astype(np.float32),
      mask=make_mask(rng, b, n))
  return params, batch


@pytest.fixture(scope="module")
def accumulated(head_batch):
  """{num_micro or 'full': {agg: (loss, grads, metrics)}}; one compile per entry (fast tests)."""
  params, batch = head_batch
  configs = {agg: cfg(loss_aggregation=agg, num_iterations=2, beta=0.04) for agg in AGGREGATIONS}

  def loss_fn(c, p, mb, normalizer=None):
    lp, _ = logprobs.token_logprobs(mb["hidden"], mb["targets"],
                                    lambda x: x @ p["w"] + p["b"], 4)
    return losses.grpo_loss(lp, mb["old"], mb["ref"], mb["adv"], mb["mask"], c, normalizer)

  @jax.jit
  def full(p, batch):
    out = {}
    for agg, c in configs.items():
      (loss, metrics), grads = jax.value_and_grad(
          functools.partial(loss_fn, c), has_aux=True)(p, batch)
      out[agg] = (loss, grads, metrics)
    return out

  @functools.partial(jax.jit, static_argnums=2)
  def micro(p, batch, num_micro):
    out = {}
    for agg, c in configs.items():
      norm = losses.loss_normalizer(batch["mask"], c)
      out[agg] = accumulate.accumulate_grads(
          lambda q, mb, c=c, norm=norm: loss_fn(c, q, mb, norm), p, batch, num_micro)
    return out

  results = {num_micro: micro(params, batch, num_micro) for num_micro in (1, 2, 4)}
  results["full"] = full(params, batch)
  return results


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("num_micro", [1, 2, 4])
def test_accumulated_gradients_equal_full_batch(head_batch, accumulated, agg, num_micro):
  params, batch = head_batch
  full_loss, full_grads, full_metrics = accumulated["full"][agg]
  loss, grads, metrics = accumulated[num_micro][agg]
  lp = np_head_logprobs(params, batch["hidden"], batch["targets"])
  args = (batch["old"], batch["ref"], batch["adv"], batch["mask"], agg, 0.04, 2)
  np_grads = np_head_grads(params, batch["hidden"], batch["targets"], np_loss_grad(lp, *args))
  np.testing.assert_allclose(full_loss, np_loss(lp, *args), rtol=1e-5)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-5, atol=1e-7)
  for k in ("w", "b"):
    np.testing.assert_allclose(grads[k], full_grads[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[k], np_grads[k], rtol=1e-4, atol=1e-6)
  assert metrics.keys() == full_metrics.keys()
  for k in metrics:
    np.testing.assert_allclose(metrics[k], full_metrics[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_accumulate_rejects_a_non_dividing_micro_batch_count(head_batch):
  params, batch = head_batch
  with pytest.raises(ValueError, match="grpo_loss.micro_batches"):
    accumulate.accumulate_grads(lambda p, mb: (jnp.sum(p["b"]), {}), params, batch, 3)


def test_accumulate_under_a_mesh_matches_unsharded(head_batch, accumulated):
  """Sharding constraints inside the loss and the scan keep the numbers (8 fake CPU devices)."""
  params, batch = head_batch
  c = cfg(loss_aggregation="token_mean", num_iterations=2, beta=0.04)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))

  def step(p, batch):
    norm = losses.loss_normalizer(batch["mask"], c)

    def loss_fn(q, mb):
      lp, _ = logprobs.token_logprobs(mb["hidden"], mb["targets"],
                                      lambda x: x @ q["w"] + q["b"], 4)
      return losses.grpo_loss(lp, mb["old"], mb["ref"], mb["adv"], mb["mask"], c, norm)

    return accumulate.accumulate_grads(loss_fn, p, batch, 2)

  with sharding.active(mesh, sharding.DEFAULT_RULES):
    sharded = jax.device_put(batch, sharding.named(mesh, ("batch",), sharding.DEFAULT_RULES))
    loss, grads, _ = jax.jit(step)(params, sharded)
  want_loss, want_grads, _ = accumulated["full"]["token_mean"]
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for k in ("w", "b"):
    np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch"])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_equal_rewards_with_a_rounded_mean_give_exact_zeros(scale, eps):
  # float32: (0.9 + 0.9 + 0.9) / 3 rounds to 0.90000004, so the group's std is ~4e-8, not 0.
  # The advantages must still be exactly 0 and the group counted as without signal.
  equal = np.full(3, 0.9, np.float32)
  assert equal.sum(dtype=np.float32) / np.float32(3) != np.float32(0.9)
  rewards = np.concatenate([equal, np.float32([0.1, 0.5, 0.9])])
  adv, stats = jax.jit(functools.partial(
      losses.group_advantages, num_generations=3, scale=scale, eps=eps))(rewards)
  np.testing.assert_array_equal(np.asarray(adv)[:3], 0.0)
  np.testing.assert_allclose(np.asarray(adv)[3:], np_advantages(rewards, 3, scale, eps, 1)[3:],
                             rtol=1e-5, atol=1e-6)
  assert float(stats["frac_zero_std_groups"]) == 0.5
