"""`launch.benchmark --bench=grpo_step`: seconds per fused GRPO step on a HF Qwen2 checkpoint.

Matches the Tunix peer (../shared/bench/peers/tunix_grpo_bench.py): the same prompts every step,
G samples each at temperature 1 (no top-k / top-p), exactly N new tokens (no EOS), reward = the
fraction of even ids in a completion, beta 0.04, epsilon 0.2, one iteration, AdamW(1e-6)
(b1 .9, b2 .999, eps 1e-8, weight decay 1e-4). `lora_rank` 0 = full fine-tuning, R > 0 = LoRA;
the reference is a frozen copy of the starting trainable leaves either way.

step_s is the median of the steady-state steps (compile time reported apart). The phase split
comes from separately jitted programs for the same shapes (rollout alone, reference log-probs
alone); the fused step itself has no host-visible boundaries.

FLOPs (affect_jax/bench/flops.py grpo_step: generation, reference and update, model FLOPs) give
flops / achieved_tflops / mfu of the whole step (over step_s) and `phases`: per phase its FLOPs,
seconds and MFU (update = the step's time minus the two measured phases, so it also holds the
reward, advantages and the optimizer's elementwise work). MFU is against flops.peak().
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from affect_jax import experiment
from affect_jax.bench import flops as flops_lib
from affect_jax.bench.rollout_bench import load_prompts
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler


def even_share_reward(tokens, lengths, rows):
  del rows
  valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
  share = jnp.sum((tokens % 2 == 0) & valid, -1) / jnp.maximum(lengths, 1)
  return share.astype(jnp.float32), {}


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def run(*, hf_dir: str, prompts: str, grpo_loss: ml_collections.ConfigDict,
        num_generations: int = 4, new_tokens: int = 128, steps: int = 6, lora_rank: int = 0,
        learning_rate: float = 1e-6, dtype: str | None = None, micro_batches: int = 1,
        logprob_chunk: int = 128, phases: bool = True, seed: int = 0, **_) -> dict:
  """grpo_loss: the config's GRPO loss section (configs/grpo_loss.py); the peer's settings
  (module doc) are set over it."""
  ids = load_prompts(prompts)
  config, params = experiment.text_model(hf_dir, dtype=dtype, lora_rank=lora_rank)
  policy = policy_lib.TextPolicy(config)
  section = ml_collections.ConfigDict(grpo_loss.to_dict())
  section.update(num_generations=num_generations, beta=0.04, epsilon_low=0.2, epsilon_high=0.2,
                 num_iterations=1, micro_batches=micro_batches, logprob_chunk=logprob_chunk,
                 loss_aggregation="sequence_mean_token_mean")
  lcfg = losses.GrpoLossConfig.from_config(section)
  scfg = grpo_step.StepConfig(
      sampler.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0,
                             buckets=(ids.shape[1],), eos_ids=()), lcfg)
  opt = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)
  batch = {"prompt_tokens": jnp.asarray(ids), "prompt_mask": jnp.ones(ids.shape, bool)}
  grpo_step.check_batch(policy, batch, scfg)

  phase_s = {}
  if phases:   # before the state takes (donates) the parameters
    gen = jax.jit(lambda p, r: sampler.sample(
        p, config, scfg.sampling, prompt_mask=batch["prompt_mask"], rng=r,
        num_samples=num_generations, tokens=batch["prompt_tokens"])[0])
    out, _ = _timed(gen, params, jax.random.key(seed))
    _, phase_s["rollout"] = _timed(gen, params, jax.random.key(seed + 1))
    # As in the fused step: the B prompts once, their G completions each on top.
    mask = jnp.ones(out.tokens.shape, bool)
    ref = jax.jit(lambda p: policy_lib.completion_logps(
        policy, p, batch, out.tokens, mask, chunk=logprob_chunk, temperature=1.0)[0])
    _timed(ref, params)
    _, phase_s["reference_logps"] = _timed(ref, params)

  state = grpo_step.init_state(policy, params, opt, jax.random.key(seed))
  step = grpo_step.make_step(policy, scfg, opt, even_share_reward)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  times, rewards = [], []
  for _ in range(steps):
    (state, metrics), dt = _timed(compiled, state, batch)
    times.append(dt)
    rewards.append(float(metrics["reward"]))
  steady = times[1:] if len(times) > 2 else times
  step_s = statistics.median(steady)
  rows_n = ids.shape[0] * num_generations
  if phases:
    phase_s["update_and_rest"] = max(step_s - sum(phase_s.values()), 0.0)
  count = flops_lib.grpo_step(config, ids.shape[0], num_generations, ids.shape[1], new_tokens,
                              lora_rank=lora_rank, beta=lcfg.beta,
                              num_iterations=lcfg.num_iterations)
  peak = flops_lib.peak()
  util = flops_lib.utilisation(count["total"], step_s, peak)
  phase_report = {}
  if phases:
    for name, key in (("rollout", "rollout"), ("reference", "reference_logps"),
                      ("update", "update_and_rest")):
      phase_report[name] = flops_lib.utilisation(count[name], phase_s[key], peak)
  return {
      "flops": count["total"], "achieved_tflops": util["achieved_tflops"], "mfu": util["mfu"],
      "peak_flops": peak["flops_per_s"], "peak_source": peak["source"],
      "flops_by_phase": {k: count[k] for k in ("rollout", "reference", "old", "update")},
      "phases": phase_report,
      "bench": "grpo_step", "step_s": step_s, "sequences_per_s": rows_n / step_s,
      "tokens_per_s": rows_n * new_tokens / step_s, "compile_s": compile_s,
      "first_step_s": times[0], "step_seconds": times, "rows": rows_n,
      "new_tokens": new_tokens, "prompt_len": int(ids.shape[1]), "lora_rank": lora_rank,
      "phases_s": phase_s, "rewards": rewards, "devices": jax.device_count(),
      "backend": jax.default_backend(),
  }
