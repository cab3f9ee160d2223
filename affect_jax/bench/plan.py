"""`launch.benchmark --bench=plan`: per-device memory and FLOPs of a training step, planned on a
mesh of (fake) devices without allocating a single weight.

  python -m launch.benchmark --bench=plan --config=configs/affectgpt_r1_7b.py \\
      --mesh=data=1,fsdp=16,tensor=1 --cpu_devices=16 --config.grpo.prompts_per_step=16

The step is the real one: the fused GRPO step (affect_jax/rl/grpo_step.py, --plan_step=grpo) or
the SFT step (affect_jax/train/sft_step.py, --plan_step=sft) of the config's multimodal
AffectGPT policy (LoRA as the config sets it), with the config's optimizer (AdamW + clipping,
affect_jax/experiment.py), state and batch shardings from the config's sharding rules. Its
inputs are jax.ShapeDtypeStruct with NamedShardings (params and optimizer state from
jax.eval_shape), so it is lowered and compiled for the mesh and never run.

Shapes come from the config: GRPO batch = grpo.prompts_per_step x grpo_loss.oversample prompts of
max(data.prompt.prompt_buckets) tokens, grpo_loss.num_generations completions each of
sampling.max_new_tokens tokens; SFT batch = sft.batch_size rows of
max(data.prompt.sequence_buckets) tokens; cached features: data.media.num_frames video rows of
model.fusion.video_dim, data.media.num_windows audio rows of model.fusion.audio_dim (the steps
read cached encoder features; the frozen encoders' weights are still in the state). Any of them
can be overridden with --config.a.b=v. The GRPO reward is a token statistic (the fraction of even
ids, as --bench=grpo_step): the EW reward needs the decoder's tokenizer for its tables, which
hold a few MB; nothing else in the program depends on it.

--program=evaluate compiles launch.evaluate's generation instead (`run_evaluate`: the model's
parameters on their shardings, a batch of unibench.batch_size clips rounded up to the mesh,
prompts of max(data.prompt.prompt_buckets) tokens, unibench.max_new_tokens new tokens; no
optimizer state).

Reports per device: memory from compiled.memory_analysis() (arguments, outputs, aliased
(donated), temporaries, generated code, total = arguments + outputs - aliased + temporaries +
code) and whether that fits each chip of flops.HBM_BYTES; XLA's FLOPs (compiled.cost_analysis(),
which counts a while-loop body once, so the layer scan and the decode loop are undercounted)
and the analytic FLOPs of affect_jax/bench/flops.py. Memory compiled for CPU approximates the
TPU / GPU figures (other fusion, layouts and collectives' buffers); treat a fit within ~10% of
the HBM size as uncertain.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from affect_jax import experiment, sharding
from affect_jax.bench import flops as flops_lib
from affect_jax.bench.grpo_bench import even_share_reward
from affect_jax.eval import batches as eval_batches
from affect_jax.eval import heldout
from affect_jax.models import affectgpt
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler
from affect_jax.train import sft_step

STEPS = ("grpo", "sft")
PROGRAMS = ("train", "evaluate")


def make_mesh(mesh: str, config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The --mesh flag (or config.mesh) over all devices, with the fix in the error."""
  shape = sharding.parse_mesh_flag(mesh) if mesh else dict(config.mesh)
  try:
    return sharding.make_mesh(shape)
  except ValueError as e:
    raise ValueError(f"--mesh={mesh or dict(config.mesh)}: {e} On CPU, fake that many devices "
                     "with --cpu_devices=N.") from None


def _with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _batch(shapes: Mapping[str, tuple[tuple[int, ...], Any]], mesh, rules) -> dict:
  """ShapeDtypeStructs split on their leading (batch) axis."""
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.named(
      mesh, ("batch",) + (None,) * (len(shape) - 1), rules)) for k, (shape, dtype) in
          shapes.items()}


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
            "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
            "generated_code": m.generated_code_size_in_bytes}
  fields["total"] = (fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
                     + fields["generated_code"])
  return {f"{k}_bytes": int(v) for k, v in fields.items()}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def run(*, config: ml_collections.ConfigDict | None = None, mesh: str = "",
        plan_step: str = "grpo", program: str = "train", **_) -> dict:
  if config is None:
    raise ValueError("--bench=plan needs --config=configs/X.py (e.g. "
                     "--config=configs/affectgpt_r1_7b.py).")
  if program not in PROGRAMS:
    raise ValueError(f"--program={program!r}: use one of {PROGRAMS}.")
  if program == "evaluate":
    return run_evaluate(config, mesh)
  if plan_step not in STEPS:
    raise ValueError(f"--plan_step={plan_step!r}: use one of {STEPS}.")
  c = config
  model = experiment.fixed_model_config(c, "--bench=plan")
  m = make_mesh(mesh, c)
  rules = sharding.rules_from_config(c.sharding_rules)
  policy = policy_lib.AffectGPTPolicy(model)
  section = c.grpo if plan_step == "grpo" else c.sft
  opt = experiment.optimizer(section, section.steps)

  t0 = time.perf_counter()
  abstract = affectgpt.abstract_params(model)
  steps = grpo_step if plan_step == "grpo" else sft_step     # the SFT state has no reference
  state_sh = steps.state_shardings(policy, abstract, opt, m, rules)
  state_abs = jax.eval_shape(lambda p: steps.init_state(policy, p, opt, jax.random.key(0)),
                             sharding.unbox(abstract))
  state = _with_shardings(state_abs, state_sh)

  media = c.data.media
  frames, windows = int(media.num_frames), int(media.num_windows)
  features = {"video": ((frames, model.fusion.video_dim), jnp.float32),
              "audio": ((windows, model.fusion.audio_dim), jnp.float32)}
  fusion = lambda rows: flops_lib.fusion_flops(model.fusion, rows, frames, windows)
  if plan_step == "grpo":
    lcfg = losses.GrpoLossConfig.from_config(c.grpo_loss)
    scfg = grpo_step.StepConfig(
        sampler.SamplingConfig.from_dict(dict(c.sampling, eos_ids=(), pad_id=0)), lcfg)
    b = int(c.grpo.prompts_per_step) * lcfg.oversample        # the rollout batch
    p = int(max(c.data.prompt.prompt_buckets))
    n, g = scfg.sampling.max_new_tokens, lcfg.num_generations
    shapes = {"prompt_tokens": ((b, p), jnp.int32), "prompt_mask": ((b, p), jnp.bool_),
              **{k: ((b,) + s, d) for k, (s, d) in features.items()}}
    batch = _batch(shapes, m, rules)
    grpo_step.check_batch(policy, batch, scfg, m)
    batch_sh = {k: v.sharding for k, v in batch.items()}
    step = grpo_step.make_step(policy, scfg, opt, even_share_reward, mesh=m, rules=rules,
                               state_sh=state_sh, batch_sh=batch_sh)
    count = flops_lib.grpo_step(model.llm, b, g, p, n, num_iterations=lcfg.num_iterations,
                                beta=lcfg.beta, extra_forward=fusion(b))
    shape_report = {"prompts": b, "prompt_len": p, "num_generations": g, "new_tokens": n,
                    "rows": b * g, "micro_batches": lcfg.micro_batches}
    analytic = {k: count[k] for k in ("rollout", "reference", "old", "update", "total")}
  else:
    b, length = int(c.sft.batch_size), int(max(c.data.prompt.sequence_buckets))
    micro = int(c.sft.get("micro_batches", 1))
    shapes = {"tokens": ((b, length), jnp.int32), "attention_mask": ((b, length), jnp.bool_),
              "loss_mask": ((b, length), jnp.bool_),
              **{k: ((b,) + s, d) for k, (s, d) in features.items()}}
    batch = _batch(shapes, m, rules)
    sft_step.check_batch(policy, batch, micro, m)
    batch_sh = {k: v.sharding for k, v in batch.items()}
    step = sft_step.make_step(policy, opt, logprob_chunk=int(c.sft.logprob_chunk),
                              micro_batches=micro, mesh=m, rules=rules, state_sh=state_sh,
                              batch_sh=batch_sh)
    count = flops_lib.sft_step(model.llm, b, length, extra_forward=fusion(b))
    shape_report = {"batch": b, "seq_len": length, "micro_batches": micro}
    analytic = {k: count[k] for k in ("forward", "backward", "total")}
  abstract_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0

  return _report(compiled, m, model, abstract, state, plan_step, shape_report, analytic,
                 abstract_s, lower_s, compile_s)


def _report(compiled, m, model, abstract, state, step: str, shape_report: dict,
            analytic: dict, abstract_s: float, lower_s: float, compile_s: float) -> dict:
  """The JSON of a compiled program (module doc)."""
  devices = m.devices.size
  memory = _memory(compiled)
  total = memory.get("total_bytes")
  fits = ({chip: total <= hbm for chip, hbm in flops_lib.HBM_BYTES.items()}
          if total is not None else {})
  counts = affectgpt.param_counts(model)
  return {
      "bench": "plan", "step": step, "mesh": dict(m.shape), "devices": devices,
      "backend": jax.default_backend(), "shapes": shape_report,
      "memory_per_device": memory,
      "memory_per_device_gib": {k.replace("_bytes", ""): v / 2**30 for k, v in memory.items()},
      "fits": fits, "hbm_gib": {k: v / 2**30 for k, v in flops_lib.HBM_BYTES.items()},
      "xla_cost_per_device": _cost(compiled),
      "analytic_flops": analytic, "analytic_flops_per_device": analytic["total"] / devices,
      "param_counts": counts, "param_bytes": sharding.param_bytes(abstract),
      "state_bytes_per_device": _state_bytes_per_device(state),
      "abstract_s": abstract_s, "lower_s": lower_s, "compile_s": compile_s,
      "note": "memory compiled for XLA:CPU approximates TPU/GPU figures; XLA's FLOPs count a "
              "while-loop body once",
  }


def run_evaluate(config: ml_collections.ConfigDict, mesh: str) -> dict:
  """--program=evaluate: launch.evaluate's generation program (eval/heldout.py make_generate
  on the mesh, as eval/unibench.py runs it) at config.unibench's settings: a batch of
  unibench.batch_size clips rounded up to the mesh (eval/batches.py compiled_rows), prompts of
  max(data.prompt.prompt_buckets) tokens, unibench.max_new_tokens new tokens, every parameter
  (decoder, LoRA, fusion and the encoders, which launch.evaluate holds too) on its sharding."""
  c = config
  if "unibench" not in c:
    raise ValueError("--program=evaluate plans config.unibench's generation; the config has no "
                     "unibench section (add c.unibench = unibench.get_unibench_config()).")
  u = c.unibench
  model = experiment.fixed_model_config(c, "--bench=plan")
  m = make_mesh(mesh, c)
  rules = sharding.rules_from_config(c.sharding_rules)
  t0 = time.perf_counter()
  shardings, abstract = experiment.param_shardings(model, m, rules)
  params = _with_shardings(sharding.unbox(abstract), shardings)
  b = eval_batches.compiled_rows(int(u.batch_size), m)
  p = int(max(c.data.prompt.prompt_buckets))
  media = c.data.media
  frames, windows = int(media.num_frames), int(media.num_windows)
  batch = _batch({"prompt_tokens": ((b, p), jnp.int32), "prompt_mask": ((b, p), jnp.bool_),
                  "video": ((b, frames, model.fusion.video_dim), jnp.float32),
                  "audio": ((b, windows, model.fusion.audio_dim), jnp.float32)}, m, rules)
  extra = {"repetition_penalty": float(u.repetition_penalty)} if float(
      u.repetition_penalty) else {}
  sampling = sampler.SamplingConfig.from_dict(dict(
      c.sampling, greedy=bool(u.greedy), temperature=float(u.temperature),
      top_p=float(u.top_p), top_k=int(u.top_k), max_new_tokens=int(u.max_new_tokens),
      eos_ids=(), pad_id=0, **extra))
  generate = heldout.make_generate(model, sampling, mesh=m)
  abstract_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  with sharding.active(m, rules):
    lowered = generate.lower(params, batch, jax.random.key(0))
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  n = sampling.max_new_tokens
  count = flops_lib.rollout(model.llm, b, 1, p, n)
  analytic = {"prefill": count["prefill_flops"], "decode": count["decode_flops"],
              "fusion": flops_lib.fusion_flops(model.fusion, b, frames, windows)}
  analytic["total"] = sum(analytic.values())
  shape_report = {"clips": int(u.batch_size), "rows": b, "prompt_len": p, "new_tokens": n,
                  "greedy": bool(u.greedy)}
  return _report(compiled, m, model, abstract, params, "evaluate", shape_report, analytic,
                 abstract_s, lower_s, compile_s)


def _state_bytes_per_device(state: Any) -> int:
  """Bytes of the state's shards on device 0 (the largest shard of each leaf)."""
  total = 0
  for leaf in jax.tree.leaves(state):
    shape = leaf.sharding.shard_shape(leaf.shape)
    size = 1
    for d in shape:
      size *= d
    total += size * leaf.dtype.itemsize      # (a PRNG key's dtype knows its size too)
  return int(total)
