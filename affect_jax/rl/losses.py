"""The GRPO objective as small registered pure functions (DESIGN.md section 3).

  group_advantages   rewards[B*G] -> advantages[B*G]   (registry ADVANTAGE_SCALES)
  grpo_loss          policy loss + beta * KL            (registries POLICY_LOSSES, KL_ESTIMATORS,
                                                         AGGREGATIONS)
  loss_normalizer    the full-batch denominators, so micro-batch losses add up exactly

Every choice is a field of `GrpoLossConfig` (configs/grpo_loss.py). Errors are raised while
tracing, from static shapes and the config, and name the field to change.

Aggregation, for per-token losses l[b, t], completion mask m[b, t] and n_b = sum_t m[b, t]:
  token_mean                 sum_bt l m / sum_bt m                          (DAPO)
  sequence_mean_token_mean   (1/B) sum_b (sum_t l m / n_b)                  (original GRPO)
  constant_normalizer        sum_bt l m / (B * normalizer_constant)        (Dr. GRPO)
Each is sum_bt l[b, t] m[b, t] s[b] / D with a per-row scale s (1/n_b or 1) that depends on the
row alone and a denominator D (tokens, B or B * constant) that depends on the whole batch.
`loss_normalizer` computes D (and the token and sequence counts the metrics divide by) from
the full batch; passing it to `grpo_loss` on each micro-batch makes the micro-batch losses,
gradients and metrics additive, so their sums (optim/accumulate.py) equal the full-batch values.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from affect_jax import config_dataclass
from affect_jax import sharding

Array = jax.Array
# name -> fn(centred[P, G], group_std[P, 1], batch_std[1], group_count[P, 1], varies[P, 1], eps)
# -> adv[P, G]; centred = r - mean_g over the finite rewards of each group, group_count = their
# number, varies = they are not all equal (exact; a rounded mean_g can leave std_g > 0).
ADVANTAGE_SCALES: dict[str, Callable[..., Array]] = {}
# name -> fn(logps[B, N], old_logps[B, N], adv[B, 1], mask[B, N], cfg) -> PolicyTerms.
POLICY_LOSSES: dict[str, Callable[..., "PolicyTerms"]] = {}
# name -> fn(logps[B, N], ref_logps[B, N]) -> per-token KL estimate[B, N].
KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {}
# name -> fn(lengths[B], num_tokens, num_sequences, constant) -> (row_scale[B], denominator).
AGGREGATIONS: dict[str, Callable[..., tuple[Array, Array]]] = {}


def _register(table: dict, name: str):
  def wrap(fn):
    table[name] = fn
    return fn
  return wrap


# ----------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class GrpoLossConfig:
  """The grpo_loss config section (configs/grpo_loss.py documents each field)."""
  num_generations: int = 8
  beta: float = 0.04
  kl_estimator: str = "k3"
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  advantage_scale: str = "group"
  advantage_eps: float = 1e-4
  std_ddof: int = 1
  loss_aggregation: str = "sequence_mean_token_mean"
  normalizer_constant: float = 1024.0
  num_iterations: int = 1
  logprob_chunk: int = 256
  micro_batches: int = 1
  policy_loss: str = "grpo"
  dual_clip_c: float = 0.0
  overlong_buffer: int = 0
  overlong_penalty: float = 1.0
  mask_truncated: bool = False
  oversample: int = 1

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"grpo_loss.{field}={getattr(self, field)!r}: {why}.")
    if self.num_generations < 2:
      bad("num_generations", "GRPO compares completions of one prompt; use at least 2")
    for field in ("beta", "epsilon_low", "epsilon_high", "advantage_eps"):
      if not getattr(self, field) >= 0:
        bad(field, "must be >= 0")
    if self.epsilon_low >= 1:
      bad("epsilon_low", "must be < 1 so that the lower clip bound 1 - epsilon_low is positive")
    if self.std_ddof not in (0, 1):
      bad("std_ddof", "use 0 (population std) or 1 (unbiased std)")
    if not self.normalizer_constant > 0:
      bad("normalizer_constant", "must be > 0 (Dr. GRPO: the max completion length)")
    for field in ("num_iterations", "logprob_chunk", "micro_batches", "oversample"):
      if getattr(self, field) < 1:
        bad(field, "must be >= 1")
    if self.dual_clip_c != 0 and not self.dual_clip_c > 1:
      bad("dual_clip_c", "use 0 (off) or a cap c > 1 on the loss of negative advantages")
    if self.overlong_buffer < 0:
      bad("overlong_buffer", "must be >= 0 (0 turns the overlong penalty off)")
    if not self.overlong_penalty >= 0:
      bad("overlong_penalty", "must be >= 0")
    for field, table in (("advantage_scale", ADVANTAGE_SCALES), ("kl_estimator", KL_ESTIMATORS),
                         ("loss_aggregation", AGGREGATIONS), ("policy_loss", POLICY_LOSSES)):
      if getattr(self, field) not in table:
        bad(field, f"unknown; use one of {sorted(table)}")

  @classmethod
  def from_config(cls, c: Any) -> "GrpoLossConfig":
    """From a ConfigDict or mapping (the grpo_loss section); unknown fields are an error."""
    return config_dataclass.build(cls, c, name="grpo_loss")


# ----------------------------------------------------------------------------------------------
# Advantages.


def _divide(centred: Array, std: Array, varies: Array, eps: float) -> Array:
  """centred / (std + eps) where the group's rewards vary; exact zeros where they are all equal.

  The test is `varies` (max > min over the finite rewards), not std > 0: the float32 mean of
  equal rewards is rounded (0.9 x 3 gives a mean one ulp off), so std_g is then a few 1e-8, not
  0, and (r - mean_g) / (std_g + eps) would give each row a spurious advantage of about 6e-4
  (about 0.8 with eps = 0)."""
  return jnp.where(varies & (std > 0), centred / jnp.where(std > 0, std + eps, 1.0), 0.0)


@_register(ADVANTAGE_SCALES, "group")
def _group_scale(centred, group_std, batch_std, group_count, varies, eps):
  del batch_std, group_count
  return _divide(centred, group_std, varies, eps)


@_register(ADVANTAGE_SCALES, "batch")
def _batch_scale(centred, group_std, batch_std, group_count, varies, eps):
  del group_count
  return _divide(centred, jnp.broadcast_to(batch_std, group_std.shape), varies, eps)


@_register(ADVANTAGE_SCALES, "none")
def _no_scale(centred, group_std, batch_std, group_count, varies, eps):
  del group_std, batch_std, group_count, eps
  return jnp.where(varies, centred, 0.0)   # exact zeros for a group of equal rewards


@_register(ADVANTAGE_SCALES, "rloo")
def _rloo(centred, group_std, batch_std, group_count, varies, eps):
  """r_i - mean_{j != i} r_j = c / (c - 1) * (r_i - mean_g) over the c finite rewards; exact
  zeros for a group whose rewards are all equal."""
  del group_std, batch_std, eps
  c = group_count.astype(jnp.float32)
  return jnp.where(varies, centred * (c / jnp.maximum(c - 1.0, 1.0)), 0.0)


def _masked_moments(x: Array, valid: Array, axis, ddof: int) -> tuple[Array, Array, Array]:
  """Mean and std of x over `axis` counting only `valid` entries (x is 0 where invalid)."""
  count = valid.sum(axis=axis, keepdims=True)
  mean = x.sum(axis=axis, keepdims=True) / jnp.maximum(count, 1)
  sq = jnp.where(valid, (x - mean) ** 2, 0.0).sum(axis=axis, keepdims=True)
  std = jnp.sqrt(sq / jnp.maximum(count - ddof, 1))
  return mean, std, count


def group_advantages(rewards: Array, num_generations: int, scale: str = "group",
                     eps: float = 1e-4, std_ddof: int = 1) -> tuple[Array, dict[str, Array]]:
  """GRPO advantages from rewards of consecutive groups of completions.

  Rows are grouped consecutively: (prompt 0, generations 0..G-1), (prompt 1, ...), ...

    'group':  (r - mean_g) / (std_g + eps)
    'batch':  (r - mean_g) / (std_batch + eps), std_batch over all rewards of the batch
    'none':   r - mean_g (Dr. GRPO)
    'rloo':   r_i - mean_{j != i} r_j (leave-one-out; 0 for a group of equal rewards)

  The std uses `std_ddof` degrees of freedom: 1 (default) is the unbiased std of torch.std, which
  TRL's GRPOTrainer (and the AffectGPT-R1 reimplementations built on it) use; 0 the population
  std. A group whose rewards are all equal (std 0) gets exactly zero advantages.

  Non-finite rewards (NaN, +-inf; e.g. a reward function failing on a completion) are left out:
  they get zero advantage, and their group's mean and std are those of its finite rewards (zero
  advantages when fewer than 2 are finite). Nothing non-finite reaches the outputs.

  Args:
    rewards: float[B*G].
    num_generations: G (grpo_loss.num_generations), >= 2, dividing B*G.
    scale: a key of ADVANTAGE_SCALES (grpo_loss.advantage_scale).
    eps: added to the std (grpo_loss.advantage_eps).
    std_ddof: 0 or 1 (grpo_loss.std_ddof).

  Returns:
    advantages float32[B*G] (no gradient), and stats of scalars: num_nan_rewards (int32, count
    of non-finite rewards), reward_mean, reward_std (over finite rewards of the batch),
    group_std_mean (mean over groups of std_g), frac_zero_std_groups (groups without signal:
    equal rewards, or fewer than 2 finite ones).
  """
  if rewards.ndim != 1:
    raise ValueError(f"group_advantages: rewards has shape {rewards.shape}; expected [B*G].")
  if isinstance(num_generations, bool) or not isinstance(num_generations, int) \
      or num_generations < 2:
    raise ValueError(f"grpo_loss.num_generations={num_generations!r}: GRPO compares completions "
                     "of one prompt; use an int >= 2.")
  if rewards.shape[0] % num_generations:
    raise ValueError(f"grpo_loss.num_generations={num_generations} does not divide the "
                     f"{rewards.shape[0]} rewards of the batch; the batch must hold whole groups "
                     "(prompts * num_generations rows).")
  if scale not in ADVANTAGE_SCALES:
    raise ValueError(f"grpo_loss.advantage_scale={scale!r}: unknown; use one of "
                     f"{sorted(ADVANTAGE_SCALES)}.")
  if std_ddof not in (0, 1):
    raise ValueError(f"grpo_loss.std_ddof={std_ddof!r}: use 0 (population) or 1 (unbiased).")
  if not eps >= 0:
    raise ValueError(f"grpo_loss.advantage_eps={eps!r}: must be >= 0.")
  r = jax.lax.stop_gradient(rewards).astype(jnp.float32)
  valid = jnp.isfinite(r)
  r = jnp.where(valid, r, 0.0)
  groups, vg = r.reshape(-1, num_generations), valid.reshape(-1, num_generations)
  mean_g, std_g, count_g = _masked_moments(groups, vg, axis=1, ddof=std_ddof)
  mean_b, std_b, _ = _masked_moments(r, valid, axis=0, ddof=std_ddof)
  varies = (jnp.where(vg, groups, -jnp.inf).max(axis=1, keepdims=True)
            > jnp.where(vg, groups, jnp.inf).min(axis=1, keepdims=True))
  adv = ADVANTAGE_SCALES[scale](groups - mean_g, std_g, std_b, count_g, varies, eps)
  adv = jnp.where(vg & (count_g >= 2), adv, 0.0).reshape(-1)
  stats = dict(
      num_nan_rewards=(~valid).sum().astype(jnp.int32),
      reward_mean=mean_b[0],
      reward_std=std_b[0],
      group_std_mean=std_g.mean(),
      frac_zero_std_groups=(~varies[:, 0]).mean(),
  )
  return adv, stats


# ----------------------------------------------------------------------------------------------
# KL estimators: per-token estimates of KL(policy || reference) from log-probs of sampled tokens.


@_register(KL_ESTIMATORS, "k1")
def _k1(logps: Array, ref_logps: Array) -> Array:
  return logps - ref_logps


@_register(KL_ESTIMATORS, "k2")
def _k2(logps: Array, ref_logps: Array) -> Array:
  return 0.5 * (logps - ref_logps) ** 2


@_register(KL_ESTIMATORS, "k3")
def _k3(logps: Array, ref_logps: Array) -> Array:
  d = ref_logps - logps
  return jnp.exp(d) - d - 1.0


# ----------------------------------------------------------------------------------------------
# Aggregation: per-row scale s[b] (see the module docstring) and the full-batch denominator.


class Normalizer(NamedTuple):
  """Full-batch denominators (float32 scalars); a pytree, so it can enter a lax.scan."""
  loss_denominator: Array   # D of the aggregation mode
  num_tokens: Array         # completion tokens of the full batch (>= 1)
  num_sequences: Array      # rows of the full batch


@_register(AGGREGATIONS, "token_mean")
def _token_mean(lengths: Array, num_tokens: Array, num_sequences: Array, constant: float):
  del num_sequences, constant
  return jnp.ones_like(lengths), num_tokens


@_register(AGGREGATIONS, "sequence_mean_token_mean")
def _sequence_mean(lengths: Array, num_tokens: Array, num_sequences: Array, constant: float):
  del num_tokens, constant
  return 1.0 / jnp.maximum(lengths, 1.0), num_sequences


@_register(AGGREGATIONS, "constant_normalizer")
def _constant(lengths: Array, num_tokens: Array, num_sequences: Array, constant: float):
  del num_tokens
  return jnp.ones_like(lengths), num_sequences * constant


def loss_normalizer(mask: Array, cfg: GrpoLossConfig | Mapping) -> Normalizer:
  """Denominators from the FULL batch's completion mask float[B, N], before micro-batching."""
  cfg = GrpoLossConfig.from_config(cfg)
  mask = mask.astype(jnp.float32)
  num_tokens = jnp.maximum(mask.sum(), 1.0)
  num_sequences = jnp.asarray(mask.shape[0], jnp.float32)
  _, denominator = AGGREGATIONS[cfg.loss_aggregation](
      mask.sum(-1), num_tokens, num_sequences, float(cfg.normalizer_constant))
  return Normalizer(denominator, num_tokens, num_sequences)


# ----------------------------------------------------------------------------------------------
# Policy losses: per-token policy-gradient losses l[b, t] (aggregated like the KL term).


class PolicyTerms(NamedTuple):
  """A policy loss's per-token pieces, each [B, N]."""
  loss: Array        # l[b, t], differentiable
  ratio: Array       # the importance ratio the loss clips (reported as ratio_mean)
  clip_low: Array    # bool: clipped below (counted in clip_frac_low)
  clip_high: Array   # bool: clipped above (counted in clip_frac_high)


def _dual_clip(per_token: Array, adv: Array, cfg: GrpoLossConfig) -> Array:
  """Dual-clip PPO: for A < 0 the loss is capped at -c * A (off when dual_clip_c = 0)."""
  if not cfg.dual_clip_c:
    return per_token
  return jnp.where(adv < 0, jnp.minimum(per_token, -cfg.dual_clip_c * adv), per_token)


@_register(POLICY_LOSSES, "grpo")
def _grpo_policy(logps, old_logps, adv, mask, cfg) -> PolicyTerms:
  """PPO's clipped surrogate per token, ratio = exp(logps - old_logps):
  -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A), dual-clipped."""
  del mask
  ratio = jnp.exp(logps - old_logps)
  clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
  per_token = _dual_clip(-jnp.minimum(ratio * adv, clipped * adv), adv, cfg)
  low = (ratio < 1.0 - cfg.epsilon_low) & (adv < 0)
  high = (ratio > 1.0 + cfg.epsilon_high) & (adv > 0)
  return PolicyTerms(per_token, ratio, low, high)


@_register(POLICY_LOSSES, "gspo")
def _gspo_policy(logps, old_logps, adv, mask, cfg) -> PolicyTerms:
  """GSPO: the clipped surrogate on the sequence ratio s_b = exp(mean_t (logps - old_logps)) over
  the completion's tokens, one value per sequence put on each of its tokens (so the
  'sequence_mean_token_mean' aggregation gives GSPO's mean over sequences), dual-clipped."""
  n = jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
  s = jnp.exp(jnp.sum((logps - old_logps) * mask, -1, keepdims=True) / n)      # [B, 1]
  clipped = jnp.clip(s, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
  per_seq = _dual_clip(-jnp.minimum(s * adv, clipped * adv), adv, cfg)
  shape = logps.shape
  low = jnp.broadcast_to((s < 1.0 - cfg.epsilon_low) & (adv < 0), shape)
  high = jnp.broadcast_to((s > 1.0 + cfg.epsilon_high) & (adv > 0), shape)
  return PolicyTerms(jnp.broadcast_to(per_seq, shape), jnp.broadcast_to(s, shape), low, high)


@_register(POLICY_LOSSES, "cispo")
def _cispo_policy(logps, old_logps, adv, mask, cfg) -> PolicyTerms:
  """CISPO: REINFORCE with clipped, stop-gradient importance weights,
  -sg(clip(ratio, 1 - epsilon_low, 1 + epsilon_high)) * A * logps; every token keeps a gradient,
  the clip fractions count the tokens whose weight was clipped (either sign of A)."""
  del mask
  ratio = jnp.exp(logps - old_logps)
  weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high))
  return PolicyTerms(-weight * adv * logps, ratio, ratio < 1.0 - cfg.epsilon_low,
                     ratio > 1.0 + cfg.epsilon_high)


# ----------------------------------------------------------------------------------------------
# The loss.


def _check_loss_inputs(logps, old_logps, ref_logps, advantages, mask, cfg) -> None:
  if logps.ndim != 2:
    raise ValueError(f"grpo_loss: logps has shape {logps.shape}; expected [B, N].")
  for name, x in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask)):
    if x is not None and x.shape != logps.shape:
      raise ValueError(f"grpo_loss: {name} has shape {x.shape} but logps is {logps.shape}; "
                       "all per-token inputs must be [B, N].")
  if advantages.shape != logps.shape[:1]:
    raise ValueError(f"grpo_loss: advantages has shape {advantages.shape}; expected "
                     f"[{logps.shape[0]}] (one per completion).")
  if ref_logps is None and cfg.beta != 0:
    raise ValueError(f"grpo_loss: ref_logps is None but grpo_loss.beta={cfg.beta}; pass the "
                     "reference log-probs or set grpo_loss.beta=0.")
  if old_logps is None and cfg.num_iterations > 1:
    raise ValueError(f"grpo_loss: old_logps is None but grpo_loss.num_iterations="
                     f"{cfg.num_iterations}; pass the rollout policy's log-probs, computed "
                     "once before the first iteration.")


def grpo_loss(logps: Array, old_logps: Array | None, ref_logps: Array | None,
              advantages: Array, mask: Array, cfg: GrpoLossConfig | Mapping,
              normalizer: Normalizer | None = None) -> tuple[Array, dict[str, Array]]:
  """A policy loss plus beta * KL to the reference, aggregated over completion tokens.

  Per token, with ratio = exp(logps - old_logps) and A = advantages[b], the default policy loss
  (cfg.policy_loss = 'grpo'; POLICY_LOSSES holds 'gspo' and 'cispo' too) is
    l = -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A) + beta * kl
  (with dual_clip_c = c > 1, l is capped at -c * A + beta * kl for A < 0). kl is cfg.kl_estimator (k3: exp(ref - logps) - (ref - logps) - 1); the aggregation over tokens
  is cfg.loss_aggregation (module docstring).

  Args:
    logps: float32[B, N] log-probs of the completion tokens under the current policy
      (differentiable).
    old_logps: float32[B, N] under the policy that sampled them. Ignored when
      cfg.num_iterations == 1: the old policy is then stop_gradient(logps) (ratio 1, gradient of
      the unclipped surrogate); required when num_iterations > 1.
    ref_logps: float32[B, N] under the reference policy, or None when cfg.beta == 0.
    advantages: float32[B], one per completion (group_advantages).
    mask: float[B, N], 1 on completion tokens (EOS included), 0 on padding.
    cfg: GrpoLossConfig or the grpo_loss config section.
    normalizer: from `loss_normalizer(full_mask, cfg)` when this call sees one micro-batch of a
      larger batch; then the loss and metrics are this micro-batch's additive shares of the
      full-batch values. None: computed from this call's mask.

  Returns:
    loss (float32 scalar) and metrics, float32 scalars that are token means (kl, ratio_mean,
    clip_frac_low, clip_frac_high, clip_frac) or sequence means (advantage_mean,
    completion_length), plus policy_loss (the loss without the KL term). clip_frac_low counts
    tokens where ratio < 1 - epsilon_low with A < 0, clip_frac_high ratio > 1 + epsilon_high with
    A > 0 (where the clipped branch is taken and the token gives no policy gradient; GSPO counts
    each token of a clipped sequence, CISPO each token whose weight was clipped). kl is
    reported whenever ref_logps is given.
  """
  cfg = GrpoLossConfig.from_config(cfg)
  _check_loss_inputs(logps, old_logps, ref_logps, advantages, mask, cfg)
  logps = sharding.constrain(logps.astype(jnp.float32), ("batch", "length"))
  mask = mask.astype(jnp.float32)
  if normalizer is None:
    normalizer = loss_normalizer(mask, cfg)
  if cfg.num_iterations == 1:
    old_logps = jax.lax.stop_gradient(logps)
  old_logps = jax.lax.stop_gradient(old_logps.astype(jnp.float32))
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]

  terms = POLICY_LOSSES[cfg.policy_loss](logps, old_logps, adv, mask, cfg)
  per_token_pg, ratio = terms.loss, terms.ratio
  per_token = per_token_pg
  kl = None
  if ref_logps is not None:
    kl = KL_ESTIMATORS[cfg.kl_estimator](logps, jax.lax.stop_gradient(
        ref_logps.astype(jnp.float32)))
    if cfg.beta:
      per_token = per_token + cfg.beta * kl

  row_scale, _ = AGGREGATIONS[cfg.loss_aggregation](
      mask.sum(-1), normalizer.num_tokens, normalizer.num_sequences,
      float(cfg.normalizer_constant))
  weights = mask * row_scale[:, None] / normalizer.loss_denominator      # [B, N]
  loss = jnp.sum(per_token * weights)

  def token_mean(x):
    return jax.lax.stop_gradient(jnp.sum(x * mask) / normalizer.num_tokens)

  low, high = terms.clip_low, terms.clip_high
  metrics = dict(
      policy_loss=jax.lax.stop_gradient(jnp.sum(per_token_pg * weights)),
      ratio_mean=token_mean(ratio),
      clip_frac_low=token_mean(low.astype(jnp.float32)),
      clip_frac_high=token_mean(high.astype(jnp.float32)),
      clip_frac=token_mean((low | high).astype(jnp.float32)),
      advantage_mean=jnp.sum(adv) / normalizer.num_sequences,
      completion_length=jnp.sum(mask) / normalizer.num_sequences,
  )
  if kl is not None:
    metrics["kl"] = token_mean(kl)
  return loss, metrics
