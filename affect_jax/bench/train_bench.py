"""`launch.benchmark --bench=train_step`: the SFT train step (affect_jax/train/sft_step.py) on a
HF Qwen2 checkpoint, text-only policy: steps/s, tokens/s, compile time, FLOPs and MFU.

Inputs: the rows of P.npy (int32 [num_prompts, prompt_len]) joined end to end, cycling, into
`batch` sequences of `seq_len` tokens (row i starts at prompt i mod num_prompts); every token is
real (no padding) and the loss covers every position after the first `prompt_len` (the "target").
The step is the real one: chunked log-probs over the vocabulary, AdamW (b1 .9, b2 .999, eps 1e-8,
weight decay 1e-4) over every parameter (`lora_rank` 0) or the LoRA adapters (R > 0), state
donated. Timing: one compile (compile_s), then `steps` steps; step_s = the median of the steps
after the first (the first runs on freshly placed buffers).

Defaults chosen for this CPU (and fine elsewhere): 4 x 256 tokens (large enough matmuls for
XLA:CPU, a few seconds per step), one log-prob chunk per sequence (logprob_chunk = seq_len: the
lm_head as one matmul of [B * L, H] x [H, V]), no remat (memory is plentiful at this size; remat
would add a forward that MFU does not count). FLOPs: affect_jax/bench/flops.py (model FLOPs,
6 N D-style, plus causal attention); MFU against flops.peak() (measured matmul peak on CPU).
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from affect_jax import experiment
from affect_jax.bench import flops as flops_lib
from affect_jax.bench.rollout_bench import load_prompts
from affect_jax.generation import policy as policy_lib
from affect_jax.train import sft_step

DEFAULT_BATCH = 4
DEFAULT_SEQ_LEN = 256


def sequences(prompts: np.ndarray, batch: int, seq_len: int) -> np.ndarray:
  """int32[batch, seq_len]: the prompt rows joined end to end (cycling), row i from prompt i."""
  n, p = prompts.shape
  per_row = -(-seq_len // p)
  rows = [np.concatenate([prompts[(i + j) % n] for j in range(per_row)])[:seq_len]
          for i in range(batch)]
  return np.stack(rows).astype(np.int32)


def run(*, hf_dir: str, prompts: str, steps: int = 6, batch: int = 0, seq_len: int = 0,
        lora_rank: int = 0, logprob_chunk: int = 0, learning_rate: float = 1e-5,
        dtype: str | None = None, remat: bool = False, seed: int = 0, **_) -> dict:
  batch = batch or DEFAULT_BATCH
  seq_len = seq_len or DEFAULT_SEQ_LEN
  chunk = logprob_chunk or seq_len
  if steps < 1:
    raise ValueError(f"--steps={steps}: need at least one step.")
  ids = load_prompts(prompts)
  prompt_len = ids.shape[1]
  if seq_len <= prompt_len:
    raise ValueError(f"--seq_len={seq_len} must exceed the prompt length {prompt_len} of "
                     f"{prompts} (the loss covers the tokens after it).")
  config, params = experiment.text_model(hf_dir, dtype=dtype, lora_rank=lora_rank)
  config = dataclasses.replace(config, remat=remat)
  if ids.max() >= config.vocab_size:
    raise ValueError(f"--prompts={prompts}: ids must lie in [0, {config.vocab_size}).")
  policy = policy_lib.TextPolicy(config)
  tokens = sequences(ids, batch, seq_len)
  data = {"tokens": jnp.asarray(tokens), "attention_mask": jnp.ones(tokens.shape, bool),
          "loss_mask": jnp.asarray(np.arange(seq_len)[None] >= prompt_len).repeat(batch, 0)}
  opt = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)
  state = sft_step.init_state(policy, params, opt, jax.random.key(seed))
  step = sft_step.make_step(policy, opt, logprob_chunk=chunk)
  sft_step.check_batch(policy, data, 1)

  t0 = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  times, losses = [], []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
    losses.append(float(metrics["loss"]))
  steady = times[1:] if len(times) > 1 else times
  step_s = statistics.median(steady)
  count = flops_lib.sft_step(config, batch, seq_len, lora_rank=lora_rank, remat=remat)
  peak = flops_lib.peak()
  util = flops_lib.utilisation(count["total"], step_s, peak)
  return {
      "bench": "train_step", "steps_per_s": 1.0 / step_s, "step_s": step_s,
      "tokens_per_s": batch * seq_len / step_s, "compile_s": compile_s,
      "first_step_s": times[0], "step_seconds": times, "losses": losses,
      "batch": batch, "seq_len": seq_len, "logprob_chunk": chunk, "lora_rank": lora_rank,
      "remat": remat, "flops": count["total"], "flops_split": count["split"],
      "hardware_extra_flops": count["hardware_extra"],
      "achieved_tflops": util["achieved_tflops"], "mfu": util["mfu"],
      "peak_flops": peak["flops_per_s"], "peak_source": peak["source"],
      "param_dtype": config.param_dtype, "devices": jax.device_count(),
      "backend": jax.default_backend(),
  }
