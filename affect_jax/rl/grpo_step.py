"""The fused GRPO step: rollout -> reward -> advantages -> reference log-probs -> update, as ONE
jax.jit program over a mesh. Nothing returns to the host between the rollout and the update.

  step_fn = make_step(policy, step_config, optimizer, reward_fn, mesh, rules)
  state = init_state(policy, params, optimizer, rng, step_config)          # on the mesh
  state, metrics = step_fn(state, batch)                                    # donated state

batch: the prompts, B rows (policy.batch_keys, e.g. prompt_tokens int32[B, P], prompt_mask
bool[B, P] left-padded, plus reward inputs such as ground-truth label ids), sharded on the
batch axis. Each prompt gets G = grpo_loss.num_generations samples (rows p0 g0..gG-1, p1 ...).

reward_fn(tokens int32[R, N], lengths int32[R], rows) -> (rewards float32[R], metrics dict), a
jittable function; `rows` is the batch with every leaf repeated G times. Its metrics are logged
as reward/<name> (scalars, or 1-D count arrays such as the label-count histogram); the entry
metrics[rewards.total.PER_ROW], if any, holds per-completion values {name: [R]} that only the
sampled-completions table reads.

The reference policy is the policy at the start of GRPO, frozen: `state['reference']` is a copy
of the trainable leaves `init_state` was given (the SFT result, or the checkpoint GRPO starts
from), and the reference log-probs run the decoder with those leaves over the same frozen ones.
Under LoRA the trainable leaves are the adapters, fusion MLPs and projectors, so the copy is
small (never a second decoder); under full fine-tuning it is a full copy. The checkpoints leave
it out (manager.FROZEN_KEYS): a resumed run rebuilds it from the same starting parameters.
Metrics (each reward term, KL, clip fractions, lengths, entropy, ...) come back as
device scalars. With step_config.samples = k > 0, metrics[SAMPLES] also holds the first k
completion rows the step trained on (whole groups, p0 g0..gG-1, p1 ...): their token ids,
lengths, prompt index in the batch, reward, advantage and per-row reward terms, for a table
of sampled completions; a few rows, so the step's cost does not change.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from affect_jax import sharding
from affect_jax.optim import accumulate, state as train_state
from affect_jax.rewards import total as reward_total
from affect_jax.rl import losses
from affect_jax.generation import policy as policy_lib, sampler

RewardFn = Callable[[jax.Array, jax.Array, Mapping], tuple[jax.Array, Mapping[str, jax.Array]]]


# The metrics entry holding the sampled completions (module doc).
SAMPLES = "samples"


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """sampling: the rollout; loss: the objective; samples: completion rows returned in
  metrics[SAMPLES] each step (0 = none; at most the rows trained on)."""
  sampling: sampler.SamplingConfig
  loss: losses.GrpoLossConfig
  samples: int = 0

  def __post_init__(self):
    if self.samples < 0:
      raise ValueError(f"samples={self.samples}: the rows of sampled completions to return "
                       "must be >= 0 (0 = none).")
    if self.loss.num_generations < 2:
      raise ValueError(f"grpo_loss.num_generations={self.loss.num_generations}: GRPO needs at "
                       "least 2 samples per prompt (advantages are relative to the group).")


def uses_lora(policy: policy_lib.Policy) -> bool:
  return bool(policy.llm_config.lora.rank)


def init_state(policy: policy_lib.Policy, params: Mapping, optimizer: optax.GradientTransformation,
               rng: jax.Array) -> dict:
  """The GRPO state (optim.state): the policy starts at `params`, the reference is a frozen copy
  of its trainable leaves, and the optimizer state starts fresh."""
  return train_state.init_state(policy, params, optimizer, rng, reference=True)


def state_shardings(policy: policy_lib.Policy, abstract_params: Mapping,
                    optimizer: optax.GradientTransformation, mesh, rules) -> dict:
  """NamedShardings for every leaf of the GRPO state."""
  return train_state.state_shardings(policy, abstract_params, optimizer, mesh, rules,
                                     reference=True)


def batch_shardings(batch: Mapping, mesh, rules) -> dict:
  """Every batch leaf split on its leading (batch) axis."""
  return {k: sharding.named(mesh, ("batch",) + (None,) * (jnp.ndim(v) - 1), rules)
          for k, v in batch.items()}


def check_batch(policy: policy_lib.Policy, batch: Mapping, cfg: StepConfig, mesh=None) -> None:
  """Errors before compiling: missing keys, prompt + completion longer than the model allows,
  a batch the mesh cannot divide."""
  missing = [k for k in policy.batch_keys if k not in batch]
  if missing:
    raise ValueError(f"GRPO batch is missing {missing}; it has {sorted(batch)}.")
  b, p = batch["prompt_mask"].shape
  sampler.check_lengths(p, policy.llm_config, cfg.sampling)
  sharding.check_batch_divisible(b, mesh, what=f"the GRPO batch of {b} prompts", fix="use",
                                 micro=cfg.loss.micro_batches,
                                 micro_what="grpo_loss.micro_batches", unit="prompts")


def check_oversample(batch: Mapping, cfg: StepConfig, mesh=None) -> None:
  """Dynamic sampling trains on batch / grpo_loss.oversample prompts: they must divide."""
  b, k, micro = batch["prompt_mask"].shape[0], cfg.loss.oversample, cfg.loss.micro_batches
  if k == 1:
    return
  if b % k:
    raise ValueError(f"grpo_loss.oversample={k} does not divide the batch of {b} prompts; the "
                     f"step rolls out the batch and trains on batch / oversample of its prompts.")
  kept = b // k
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  if kept % (micro * shards):
    raise ValueError(f"the {kept} prompts kept by dynamic sampling (batch {b} / grpo_loss."
                     f"oversample {k}) do not split into grpo_loss.micro_batches={micro} x data x "
                     f"fsdp = {shards} devices; use a batch that is a multiple of "
                     f"{k * micro * shards} prompts.")


def overlong_penalty(lengths: jax.Array, cap: int, buffer: int, penalty: float) -> jax.Array:
  """DAPO's soft overlong penalty float32[R]: -min(1, (L - (cap - buffer)) / buffer) * penalty
  for L > cap - buffer, else 0; all zeros when buffer = 0."""
  if not buffer:
    return jnp.zeros(lengths.shape, jnp.float32)
  over = (lengths.astype(jnp.float32) - (cap - buffer)) / buffer
  return -jnp.clip(over, 0.0, 1.0) * penalty


def select_groups(rewards: jax.Array, num_generations: int, keep: int
                  ) -> tuple[jax.Array, jax.Array, dict]:
  """Dynamic sampling with static shapes: indices int32[keep] of the groups to train on,
  informative groups (at least 2 finite rewards, not all equal) first, each kind in batch order
  (a stable sort), whether each kept group is informative (bool[keep]), and int32 metrics: groups_rolled_out, groups_dropped (zero-variance groups),
  groups_kept (informative groups trained on, at most `keep`) and groups_short (the slots left
  to zero-variance groups, whose advantages are 0, when fewer than `keep` are informative)."""
  r = rewards.reshape(-1, num_generations)
  valid = jnp.isfinite(r)
  high = jnp.where(valid, r, -jnp.inf).max(-1)
  low = jnp.where(valid, r, jnp.inf).min(-1)
  informative = (valid.sum(-1) >= 2) & (high > low)
  order = jnp.argsort(jnp.where(informative, 0, 1), stable=True)[:keep].astype(jnp.int32)
  n_inf = informative.sum().astype(jnp.int32)
  kept = jnp.minimum(n_inf, keep)
  total = jnp.asarray(r.shape[0], jnp.int32)
  return order, informative[order], dict(groups_rolled_out=total, groups_dropped=total - n_inf, groups_kept=kept,
                     groups_short=keep - kept)


def make_step(policy: policy_lib.Policy, cfg: StepConfig, optimizer: optax.GradientTransformation,
              reward_fn: RewardFn, *, mesh=None, rules=None, state_sh=None, batch_sh=None
              ) -> Callable:
  """The jitted fused step `(state, batch) -> (state, metrics)`; state is donated."""
  lcfg = cfg.loss
  g = lcfg.num_generations
  lora = uses_lora(policy)
  temp = 1.0 if cfg.sampling.greedy else cfg.sampling.temperature

  def step(state, batch):
    rng, r_sample, r_drop = jax.random.split(state["rng"], 3)
    params = policy_lib.merge(state["trainable"], state["frozen"])

    # 1. Rollout from the current policy (no gradient).
    embeds = jax.lax.stop_gradient(policy.prompt_embeds(params, batch))
    out, _ = sampler.sample(policy.llm_params(params), policy.llm_config, cfg.sampling,
                            prompt_mask=batch["prompt_mask"], rng=r_sample, num_samples=g,
                            embeds=embeds)
    n = out.tokens.shape[1]
    comp_mask = jnp.arange(n)[None, :] < out.lengths[:, None]
    rows = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), dict(batch))   # reward inputs

    # 2. Rewards (plus the overlong penalty) and group advantages.
    rewards, reward_metrics = reward_fn(out.tokens, out.lengths, rows)
    reward_metrics = dict(reward_metrics)
    per_row = reward_metrics.pop(reward_total.PER_ROW, {})
    prompt_of = (jnp.repeat(jnp.arange(batch["prompt_mask"].shape[0], dtype=jnp.int32), g)
                 if cfg.samples else None)      # each row's prompt, for the samples
    extra = {}
    if lcfg.overlong_buffer:
      pen = overlong_penalty(out.lengths, cfg.sampling.max_new_tokens, lcfg.overlong_buffer,
                             lcfg.overlong_penalty)
      rewards = rewards + pen
      extra["overlong/penalty_mean"] = pen.mean()
    truncated = ~out.done
    if lcfg.mask_truncated:
      comp_mask = comp_mask & ~truncated[:, None]
    if lcfg.overlong_buffer or lcfg.mask_truncated:
      extra["overlong/truncated_frac"] = truncated.astype(jnp.float32).mean()

    all_rewards, all_lengths, all_done = rewards, out.lengths, out.done   # for the metrics
    # 2b. Dynamic sampling: keep batch / oversample groups, informative ones first.
    if lcfg.oversample > 1:
      keep = batch["prompt_mask"].shape[0] // lcfg.oversample
      idx, kept_informative, ds_metrics = select_groups(rewards, g, keep)
      extra.update({f"dynamic_sampling/{k}": v for k, v in ds_metrics.items()})
      take_rows = lambda x: x.reshape((-1, g) + x.shape[1:])[idx].reshape((-1,) + x.shape[1:])
      batch = jax.tree.map(lambda x: x[idx], dict(batch))
      out = out._replace(tokens=take_rows(out.tokens), lengths=take_rows(out.lengths),
                         done=take_rows(out.done))
      rewards, comp_mask = take_rows(rewards), take_rows(comp_mask)
      prompt_of, per_row = jax.tree.map(take_rows, (prompt_of, per_row))
    adv, adv_stats = losses.group_advantages(rewards, g, lcfg.advantage_scale,
                                             lcfg.advantage_eps, lcfg.std_ddof)
    if lcfg.oversample > 1:   # filler groups of equal rewards train with advantage exactly 0
      adv = jnp.where(jnp.repeat(kept_informative, g), adv, 0.0)

    logps_of = lambda p, **kw: policy_lib.completion_logps(
        policy, p, batch, out.tokens, comp_mask, chunk=lcfg.logprob_chunk, temperature=temp,
        **kw)

    # 3. Reference (the frozen copy of the starting trainable leaves) and old-policy log-probs.
    ref = None
    if lcfg.beta:
      ref, _ = logps_of(policy_lib.merge(state["reference"], state["frozen"]))
      ref = jax.lax.stop_gradient(ref)
    old = None
    if lcfg.num_iterations > 1:
      old = jax.lax.stop_gradient(logps_of(params)[0])

    # 4. num_iterations optimizer updates over micro-batches of whole prompt groups: every
    # per-completion array is viewed as [B, G, ...] so a micro-batch keeps a prompt with its G
    # completions (the prompt is computed once per micro-batch).
    norm = losses.loss_normalizer(comp_mask, lcfg)
    b = batch["prompt_mask"].shape[0]
    group = lambda x: x.reshape((b, g) + x.shape[1:])
    data = dict(prompts=dict(batch), completion=group(out.tokens), mask=group(comp_mask),
                adv=group(adv), prompt_index=jnp.arange(b))
    if ref is not None:
      data["ref"] = group(ref)
    if old is not None:
      data["old"] = group(old)
    frozen = state["frozen"]
    dropout = policy.llm_config.lora.dropout > 0 and lora
    flat = lambda x: None if x is None else x.reshape((-1,) + x.shape[2:])

    def loss_fn(trainable, mb):
      p = policy_lib.merge(trainable, frozen)
      rngs = {"dropout": jax.random.fold_in(r_drop, mb["prompt_index"][0])} if dropout else None
      mask = flat(mb["mask"])
      lp, ent = policy_lib.completion_logps(
          policy, p, mb["prompts"], flat(mb["completion"]), mask, chunk=lcfg.logprob_chunk,
          temperature=temp, deterministic=not dropout, rngs=rngs, with_entropy=True)
      loss, m = losses.grpo_loss(lp, flat(mb.get("old")), flat(mb.get("ref")), flat(mb["adv"]),
                                 mask, lcfg, normalizer=norm)
      m = dict(m)
      m["entropy"] = jnp.sum(jax.lax.stop_gradient(ent) * mask) / norm.num_tokens
      return loss, m

    trainable, opt_state = state["trainable"], state["opt_state"]
    loss_metrics = {}
    for _ in range(lcfg.num_iterations):
      loss, grads, loss_metrics = accumulate.accumulate_grads(loss_fn, trainable, data,
                                                          lcfg.micro_batches)
      updates, opt_state = optimizer.update(grads, opt_state, trainable)
      trainable = optax.apply_updates(trainable, updates)
      loss_metrics = dict(loss_metrics, loss=loss, grad_norm=optax.global_norm(grads))

    new_state = dict(state, step=state["step"] + 1, trainable=trainable, opt_state=opt_state,
                     rng=rng)
    lengths = all_lengths.astype(jnp.float32)
    metrics = {
        "reward": jnp.mean(jnp.where(jnp.isfinite(all_rewards), all_rewards, 0.0)),
        "completion_length": lengths.mean(),
        "completion_length_max": lengths.max(),
        "eos_fraction": all_done.astype(jnp.float32).mean(),
        **{f"reward/{k}": v for k, v in reward_metrics.items()},
        **{f"advantage/{k}": v for k, v in adv_stats.items()},
        **loss_metrics,
        **extra,
    }
    if cfg.samples:
      k = min(cfg.samples, out.tokens.shape[0])
      metrics[SAMPLES] = dict(tokens=out.tokens[:k], lengths=out.lengths[:k],
                              prompt=prompt_of[:k], reward=rewards[:k], advantage=adv[:k],
                              terms={name: v[:k] for name, v in per_row.items()})
    return new_state, metrics

  return sharding.jit_train_step(
      step, mesh=mesh, rules=rules, state_sh=state_sh, batch_sh=batch_sh,
      check=lambda state, batch: (check_batch(policy, batch, cfg, mesh),
                                  check_oversample(batch, cfg, mesh)))
