"""`launch.benchmark --bench=rollout`: tokens/s of the jitted sampler on a HF Qwen2 checkpoint.

Same protocol as the transformers peer (../shared/bench/peers/hf_generate_bench.py): every
prompt repeated G times (rows p0 x G, p1 x G, ...), no padding, exactly N new tokens (no EOS),
one warm-up (compile) call, then `runs` timed calls; tokens/s = rows * N / median seconds.

flops / achieved_tflops / mfu: the generation's analytic FLOPs (affect_jax/bench/flops.py
rollout: one prefill per prompt, N - 1 decode steps attending the growing cache) over the median
seconds, against flops.peak() (peak_source says which: measured matmul peak on CPU, the vendor's
dense bf16 figure on TPU / GPU). ceiling_tokens_per_s: the tokens/s at MFU 1, i.e. the analytic
FLOPs done at that peak (the compute roofline; what any implementation of the same generation
can reach on this machine at most).
"""
from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from affect_jax import experiment
from affect_jax.bench import flops as flops_lib
from affect_jax.models import qwen2
from affect_jax.generation import sampler


def load_prompts(path: str) -> np.ndarray:
  prompts = np.load(path)
  if prompts.ndim != 2 or not np.issubdtype(prompts.dtype, np.integer):
    raise ValueError(f"--prompts={path}: expected an int array [num_prompts, prompt_len], got "
                     f"{prompts.dtype}{list(prompts.shape)}.")
  return prompts.astype(np.int32)


def run(*, hf_dir: str, prompts: str, num_generations: int = 4, new_tokens: int = 128,
        greedy: bool = True, temperature: float = 1.0, runs: int = 3, tokens_out: str | None = None,
        dtype: str | None = None, seed: int = 0, **_) -> dict:
  ids = load_prompts(prompts)
  config, params = experiment.text_model(hf_dir, dtype=dtype)
  vocab = config.vocab_size
  if ids.min() < 0 or ids.max() >= vocab:
    raise ValueError(f"--prompts={prompts}: ids must lie in [0, {vocab}).")
  cfg = sampler.SamplingConfig(max_new_tokens=new_tokens, greedy=greedy, temperature=temperature,
                               buckets=(ids.shape[1],), eos_ids=())
  rows = ids.shape[0] * num_generations
  generate = sampler.make_generate(config, cfg, num_samples=num_generations)
  mask = np.ones(ids.shape, bool)
  cache = qwen2.init_cache(config, rows, ids.shape[1] + new_tokens)
  rng = jax.random.key(seed)

  t0 = time.perf_counter()
  compiled = generate.lower(params, ids, mask, rng, cache).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out, cache = compiled(params, ids, mask, rng, cache)
  jax.block_until_ready(out)
  first_s = time.perf_counter() - t0
  times = []
  for i in range(runs):
    t0 = time.perf_counter()
    out, cache = compiled(params, ids, mask, jax.random.fold_in(rng, i + 1), cache)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  tokens = np.asarray(out.tokens)
  if tokens_out:
    np.save(tokens_out, tokens)
  count = flops_lib.rollout(config, ids.shape[0], num_generations, ids.shape[1], new_tokens)
  peak = flops_lib.peak()
  util = flops_lib.utilisation(count["total_flops"], seconds, peak)
  return {
      "flops": count["total_flops"], "prefill_flops": count["prefill_flops"],
      "decode_flops": count["decode_flops"], "achieved_tflops": util["achieved_tflops"],
      "mfu": util["mfu"], "peak_flops": peak["flops_per_s"], "peak_source": peak["source"],
      "ceiling_tokens_per_s": (rows * new_tokens * peak["flops_per_s"] / count["total_flops"]
                               if peak["flops_per_s"] else None),
      "bench": "rollout", "tokens_per_s": rows * new_tokens / seconds, "seconds": seconds,
      "compile_s": compile_s, "first_call_s": first_s, "run_seconds": times, "rows": rows,
      "new_tokens": new_tokens, "prompt_len": int(ids.shape[1]), "greedy": greedy,
      "ms_per_decode_step": 1000 * seconds / new_tokens, "devices": jax.device_count(),
      "backend": jax.default_backend(), "param_dtype": config.param_dtype,
      "distinct_ids_row0": int(len(np.unique(tokens[0]))),
  }
