"""Roofline of the Qwen2 rollout and GRPO step on this machine.

Measures what the machine can do (float32 matmul FLOP/s through XLA, at a large square shape and
at the decode step's own shapes, and memory bandwidth) and counts what the work needs
(analytic FLOPs and bytes of a decode step, a prefill and a GRPO step), then bounds each:
best time = max(FLOPs / peak FLOP/s, bytes / bandwidth).

  from affect_jax.bench import roofline
  out = roofline.run(hf_dir=..., num_generations=4, new_tokens=128, prompt_len=128,
                     num_prompts=8)

FLOPs are counted by affect_jax/bench/flops.py (its module doc has the conventions); this
module adds the bytes: a decode step streams every weight once (the lm_head, the layers; the
embedding lookup reads R rows only) and reads every layer's K and V cache up to the current slot.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from affect_jax.bench import flops
from affect_jax.models.qwen2 import Qwen2Config

_F32 = 4


def _time(fn, *args, reps: int) -> tuple[float, float]:
  """(min, median) seconds of `reps` calls after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times), statistics.median(times)


def measure_matmul(m: int, k: int, n: int, reps: int = 10, dtype: Any = jnp.float32) -> dict:
  """GFLOP/s of a jitted [m, k] x [k, n] matmul (best and median of `reps`)."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (m, k), dtype)
  b = jax.random.normal(keys[1], (k, n), dtype)
  best, med = _time(jax.jit(jnp.matmul), a, b, reps=reps)
  flops = 2.0 * m * k * n
  return {"shape": [m, k, n], "gflops_best": flops / best / 1e9,
          "gflops_median": flops / med / 1e9, "ms_best": 1e3 * best}


def measure_bandwidth(mbytes: int = 512, reps: int = 10) -> dict:
  """Memory bandwidth in GB/s: a read-only reduction and an in-place update (read + write).

  The in-place update donates its input, so no fresh pages are touched (first-touch page faults
  would otherwise dominate a copy into a new buffer).
  """
  x = jnp.ones((mbytes * 2**20 // _F32,), jnp.float32)
  nbytes = x.size * _F32
  best, med = _time(jax.jit(jnp.sum), x, reps=reps)
  update = jax.jit(lambda v: v * 1.0001, donate_argnums=0)
  x = update(x)
  jax.block_until_ready(x)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    x = update(x)
    jax.block_until_ready(x)
    times.append(time.perf_counter() - t0)
  return {"mbytes": mbytes, "read_gbps_best": nbytes / best / 1e9,
          "read_gbps_median": nbytes / med / 1e9,
          "update_gbps_best": 2 * nbytes / min(times) / 1e9,
          "update_gbps_median": 2 * nbytes / statistics.median(times) / 1e9}


def weight_bytes(config: Qwen2Config) -> dict:
  """Bytes a decode step streams: per-layer weights and the lm_head (float32 parameters)."""
  c = config
  size = jnp.dtype(c.param_dtype).itemsize
  per_layer = sum(i * o for i, o in flops.layer_matmul_shapes(c)) + 2 * c.hidden_size
  layers = size * per_layer * c.num_hidden_layers
  head = size * c.hidden_size * c.vocab_size
  return {"layers": layers, "lm_head": head, "total": layers + head}


def decode_step(config: Qwen2Config, rows: int, slots: int) -> dict:
  """FLOPs and bytes of one decode step: `rows` new tokens attending `slots` cache slots."""
  c = config
  cache_bytes = (2 * rows * slots * c.num_key_value_heads * c.head_dim * c.num_hidden_layers
                 * jnp.dtype(c.dtype).itemsize)
  weights = weight_bytes(c)
  return {"flops": flops.decode_step_flops(c, rows, slots), "weight_bytes": weights["total"],
          "kv_cache_bytes": cache_bytes, "bytes": weights["total"] + cache_bytes}


def rollout(config: Qwen2Config, prompts: int, generations: int, prompt_len: int,
            new_tokens: int, prefill_rows: int | None = None) -> dict:
  """flops.rollout plus the bytes its decode steps stream."""
  out = flops.rollout(config, prompts, generations, prompt_len, new_tokens, prefill_rows)
  rows = prompts * generations
  out["decode_bytes"] = sum(decode_step(config, rows, prompt_len + j + 1)["bytes"]
                            for j in range(out["decode_steps"]))
  return out


def run(*, hf_dir: str | None = None, config: Qwen2Config | None = None, num_prompts: int = 8,
        num_generations: int = 4, prompt_len: int = 128, new_tokens: int = 128,
        reps: int = 10, **_) -> dict:
  """Measures the machine and bounds the rollout / GRPO step of a checkpoint's config.

  Returns a dict: matmul GFLOP/s (2048^3 and the decode step's shapes), bandwidth GB/s, FLOPs
  and bytes of a mid-rollout decode step, and the best possible ms per decode step, seconds per
  rollout and per GRPO step (compute bound at the measured large-matmul peak; also at the decode
  shapes' own measured rate, a tighter bound for XLA on this machine).
  """
  if config is None:
    if hf_dir is None:
      raise ValueError("roofline.run: pass hf_dir= or config=.")
    import json
    import os
    with open(os.path.join(hf_dir, "config.json")) as f:
      config = Qwen2Config.from_hf(json.load(f))
  c = config
  rows = num_prompts * num_generations
  peak = measure_matmul(2048, 2048, 2048, reps=max(3, reps // 2))
  bandwidth = measure_bandwidth(reps=reps)
  shapes = {f"{i}x{o}": measure_matmul(rows, i, o, reps=reps)
            for i, o in sorted(set(flops.layer_matmul_shapes(c)))}
  shapes["lm_head"] = measure_matmul(rows, c.hidden_size, c.vocab_size, reps=reps)
  # Time of one decode step's matmuls at the measured per-shape rates (best of reps).
  layer_ms = sum(shapes[f"{i}x{o}"]["ms_best"] for i, o in flops.layer_matmul_shapes(c))
  shape_ms = layer_ms * c.num_hidden_layers + shapes["lm_head"]["ms_best"]
  mid = decode_step(c, rows, prompt_len + new_tokens // 2)
  peak_flops = peak["gflops_best"] * 1e9
  bw = bandwidth["read_gbps_best"] * 1e9
  compute_ms = 1e3 * mid["flops"]["total"] / peak_flops
  memory_ms = 1e3 * mid["bytes"] / bw
  roll = rollout(c, num_prompts, num_generations, prompt_len, new_tokens)
  hf_roll = rollout(c, num_prompts, num_generations, prompt_len, new_tokens, prefill_rows=rows)
  step = flops.grpo_step(c, num_prompts, num_generations, prompt_len, new_tokens, lora_rank=0)
  step_lora = flops.grpo_step(c, num_prompts, num_generations, prompt_len, new_tokens,
                              lora_rank=16)
  return {
      "bench": "roofline", "backend": jax.default_backend(), "devices": jax.device_count(),
      "peak_gflops_2048": peak["gflops_best"], "peak_gflops_2048_median": peak["gflops_median"],
      "bandwidth": bandwidth, "decode_shape_matmuls": shapes,
      "decode_step": {
          "rows": rows, "slots": prompt_len + new_tokens // 2,
          "gflop": mid["flops"]["total"] / 1e9,
          "gflop_split": {k: v / 1e9 for k, v in mid["flops"].items() if k != "total"},
          "mbytes": mid["bytes"] / 1e6, "weight_mbytes": mid["weight_bytes"] / 1e6,
          "kv_cache_mbytes": mid["kv_cache_bytes"] / 1e6,
          "arithmetic_intensity_flop_per_byte": mid["flops"]["total"] / mid["bytes"],
          "compute_bound_ms": compute_ms, "memory_bound_ms": memory_ms,
          "best_ms": max(compute_ms, memory_ms),
          "matmuls_at_measured_decode_shape_rates_ms": shape_ms,
      },
      "rollout": {
          "gflop": roll["total_flops"] / 1e9, "prefill_gflop": roll["prefill_flops"] / 1e9,
          "best_s": max(roll["total_flops"] / peak_flops, roll["decode_bytes"] / bw),
          "best_tokens_per_s": rows * new_tokens / max(roll["total_flops"] / peak_flops,
                                                       roll["decode_bytes"] / bw),
          "hf_generate_gflop": hf_roll["total_flops"] / 1e9,
      },
      "grpo_step": {
          "full_ft_gflop": {k: v / 1e9 for k, v in step.items()},
          "full_ft_best_s": step["total"] / peak_flops,
          "lora16_gflop": {k: v / 1e9 for k, v in step_lora.items()},
          "lora16_best_s": step_lora["total"] / peak_flops,
      },
  }
