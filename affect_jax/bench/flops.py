"""Analytic FLOPs of the model's work and MFU (model FLOPs utilisation).

  from affect_jax.bench import flops
  f = flops.sft_step(config, batch=4, length=256)            # {'forward', 'train', 'total', ...}
  peak = flops.peak()                                          # {'flops_per_s', 'source', ...}
  flops.utilisation(f["total"], seconds, peak)                # {'flops', 'achieved_tflops', 'mfu'}

Counting conventions (C = Qwen2 config; T new tokens; S attended key slots):
  * A matmul [M, K] x [K, N] is 2 M K N FLOPs. Elementwise work (norms, rotary, softmax, SiLU,
    the log-softmax over the vocabulary, the optimizer update) is left out: it is O(M (H + F + V))
    per step, a few percent of the matmuls at these widths. Embedding lookups are gathers, 0.
  * Attention counts the useful FLOPs, 4 T S N D per layer (scores and the weighted sum), with S
    the slots a token may attend (causal: (L + 1) / 2 on average for a sequence of L), whatever
    the implementation pads or masks. XLA's own count (compiled.cost_analysis()) includes the
    masked half and the elementwise work, so it is higher for a forward.
  * LoRA adds 2 T r (in + out) per adapted projection.
  * Training = MODEL FLOPs, the 6 N D convention: forward + backward = 3x the forward for every
    trained matmul (input and weight gradients); a frozen matmul still propagates input
    gradients, so 2x (LoRA: the frozen base weights and lm_head); attention has no weights but
    its backward is 2x its forward, so 3x. Rematerialisation (config.remat) and the log-prob
    chunks' recomputation are NOT counted: they are extra hardware FLOPs, not model FLOPs (so
    MFU = model FLOPs / s / peak; `hardware_extra` reports what remat recomputes).
  * A decode step runs R rows, one new token each, attending its cache slots; a rollout is one
    prefill of each prompt (the sampler's prefill runs once per prompt, its cache repeated G
    times), then N - 1 decode steps (the last sampled token needs no forward).
  * Encoders (CLIP, HuBERT) and the fusion are counted the same way where a step runs them; the
    GRPO and SFT steps read cached encoder features, so only the fusion is counted there.

Peak FLOP/s: PEAK_BF16 holds the vendors' dense (no sparsity) bf16 figures per chip; on CPU
the peak is MEASURED: the best of a few large square float32 matmuls through XLA.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from affect_jax.models.qwen2 import Qwen2Config

# Dense bf16 FLOP/s per chip (what one JAX device is, megacore chips included), vendor figures.
#   TPU v4:  275 TFLOP/s bf16 per chip   (cloud.google.com/tpu/docs/v4, "Peak compute per chip")
#   TPU v5e: 197 TFLOP/s bf16 per chip   (cloud.google.com/tpu/docs/v5e)
#   TPU v5p: 459 TFLOP/s bf16 per chip   (cloud.google.com/tpu/docs/v5p)
#   TPU v6e: 918 TFLOP/s bf16 per chip   (cloud.google.com/tpu/docs/v6e, Trillium)
#   A100:    312 TFLOP/s BF16 Tensor Core, dense (NVIDIA A100 datasheet; 624 with sparsity)
#   H100:    989 TFLOP/s BF16 Tensor Core, SXM, dense (NVIDIA H100 datasheet: 1,979 with
#            sparsity); the PCIe card: 756 dense (1,513 with sparsity)
#   H200:    989 TFLOP/s BF16 Tensor Core, SXM, dense (NVIDIA H200 datasheet: 1,979 with sparsity)
PEAK_BF16 = {
    "tpu_v4": (275e12, "Google Cloud TPU v4 docs: 275 TFLOP/s bf16 per chip"),
    "tpu_v5e": (197e12, "Google Cloud TPU v5e docs: 197 TFLOP/s bf16 per chip"),
    "tpu_v5p": (459e12, "Google Cloud TPU v5p docs: 459 TFLOP/s bf16 per chip"),
    "tpu_v6e": (918e12, "Google Cloud TPU v6e docs: 918 TFLOP/s bf16 per chip"),
    "a100": (312e12, "NVIDIA A100 datasheet: 312 TFLOP/s BF16 dense (624 sparse)"),
    "h100_sxm": (989e12, "NVIDIA H100 SXM datasheet: 989 TFLOP/s BF16 dense (1,979 sparse)"),
    "h100_pcie": (756e12, "NVIDIA H100 PCIe datasheet: 756 TFLOP/s BF16 dense (1,513 sparse)"),
    "h200": (989e12, "NVIDIA H200 SXM datasheet: 989 TFLOP/s BF16 dense (1,979 sparse)"),
}

# Memory per chip (bytes), for the memory plan: vendor figures.
HBM_BYTES = {
    "tpu_v4": 32 * 2**30, "tpu_v5e": 16 * 2**30, "tpu_v5p": 95 * 2**30, "tpu_v6e": 32 * 2**30,
    "a100": 80 * 10**9, "h100_sxm": 80 * 10**9, "h100_pcie": 80 * 10**9, "h200": 141 * 10**9,
}

# Square sizes of the CPU peak measurement.
CPU_PEAK_SIZES = (1024, 2048, 3072)


def chip_key(device_kind: str) -> str | None:
  """PEAK_BF16 key of a jax Device.device_kind ('TPU v5 lite', 'NVIDIA H100 80GB HBM3', ...)."""
  kind = device_kind.lower()
  if "tpu" in kind:
    if "v6" in kind:
      return "tpu_v6e"
    if "v5" in kind:
      return "tpu_v5e" if ("lite" in kind or "v5e" in kind) else "tpu_v5p"
    if "v4" in kind:
      return "tpu_v4"
    return None
  if "a100" in kind:
    return "a100"
  if "h100" in kind:
    return "h100_pcie" if "pcie" in kind else "h100_sxm"
  if "h200" in kind:
    return "h200"
  return None


def _best_seconds(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


@functools.lru_cache(maxsize=None)
def measure_cpu_peak(sizes: tuple[int, ...] = CPU_PEAK_SIZES, reps: int = 3) -> dict:
  """Float32 matmul FLOP/s of this host through XLA: the best over square n x n x n matmuls.

  Cached per process (each bench measures once).
  """
  matmul = jax.jit(jnp.matmul)
  per_size = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    per_size[str(n)] = 2.0 * n ** 3 / _best_seconds(matmul, a, b, reps=reps)
    del a, b
  best = max(per_size.values())
  return {"flops_per_s": best, "per_size_gflops": {k: v / 1e9 for k, v in per_size.items()},
          "source": f"measured: best float32 square matmul of sizes {list(sizes)} through XLA "
                    f"on {jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
                    f"best of {reps}"}


def peak(device: jax.Device | None = None) -> dict:
  """Peak FLOP/s of one device: {'flops_per_s', 'source', 'chip'}; flops_per_s None if unknown.

  CPU: measured (measure_cpu_peak). A host split into several XLA devices (--cpu_devices) shares
  its cores among them, so the measured figure is the peak of all of them together.
  TPU / GPU: the chip's PEAK_BF16 entry times jax.device_count() (the work counted is the whole
  program's, over every device).
  """
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    m = measure_cpu_peak()
    return {"flops_per_s": m["flops_per_s"], "source": m["source"], "chip": "cpu",
            "per_size_gflops": m["per_size_gflops"]}
  key = chip_key(device.device_kind)
  if key is None:
    return {"flops_per_s": None, "chip": device.device_kind,
            "source": f"unknown device kind {device.device_kind!r}: no bf16 peak in "
                      "affect_jax/bench/flops.py PEAK_BF16; add it there"}
  value, source = PEAK_BF16[key]
  return {"flops_per_s": value * jax.device_count(), "chip": key,
          "source": f"{source} x {jax.device_count()} device(s)"}


def utilisation(flop: float, seconds: float, peak_info: Mapping) -> dict:
  """{'flops', 'seconds', 'achieved_tflops', 'mfu'} (mfu None without a known peak)."""
  achieved = flop / seconds if seconds > 0 else 0.0
  p = peak_info.get("flops_per_s")
  return {"flops": flop, "seconds": seconds, "achieved_tflops": achieved / 1e12,
          "mfu": achieved / p if p else None}


# ----------------------------------------------------------------------------------------------
# Qwen2 decoder.

def layer_matmul_shapes(config: Qwen2Config) -> list[tuple[int, int]]:
  """(in, out) of the seven projections of one decoder layer (q, k, v, o, gate, up, down)."""
  c = config
  q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
  h, f = c.hidden_size, c.intermediate_size
  return [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)]


_PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_params_per_layer(config: Qwen2Config) -> int:
  """LoRA parameters (a and b) of one layer: r (in + out) per adapted projection."""
  lora = config.lora
  if not lora.rank:
    return 0
  return sum(lora.rank * (i + o) for name, (i, o) in zip(_PROJ_NAMES, layer_matmul_shapes(config))
             if name in lora.targets)


def forward_flops(config: Qwen2Config, tokens: float, attended: float, head_tokens: float,
                  use_lora: bool = True) -> dict:
  """Matmul FLOPs of a decoder forward over `tokens` new tokens.

  Args:
    tokens: total new tokens (rows x T).
    attended: mean number of key slots each token attends (useful slots only).
    head_tokens: tokens that go through the lm_head.
    use_lora: count the LoRA adapters (when the config has them).
  Returns:
    {'layers', 'lora', 'attention', 'lm_head', 'total'}.
  """
  c = config
  per_token = sum(i * o for i, o in layer_matmul_shapes(c)) * c.num_hidden_layers
  layers = 2.0 * tokens * per_token
  lora = 2.0 * tokens * lora_params_per_layer(c) * c.num_hidden_layers if use_lora else 0.0
  attention = 4.0 * tokens * attended * c.num_attention_heads * c.head_dim * c.num_hidden_layers
  head = 2.0 * head_tokens * c.hidden_size * c.vocab_size
  return {"layers": layers, "lora": lora, "attention": attention, "lm_head": head,
          "total": layers + lora + attention + head}


def add(*parts: Mapping) -> dict:
  """Key-wise sum of FLOP dicts."""
  out: dict = {}
  for p in parts:
    for k, v in p.items():
      out[k] = out.get(k, 0.0) + v
  return out


def train_flops(forward: Mapping, lora: bool, remat: bool = False) -> dict:
  """Forward + backward model FLOPs from a forward's split (module doc).

  Full fine-tuning: 3x every part. LoRA: frozen base layers and lm_head 2x (input gradients
  only), adapters and attention 3x. Returns {'forward', 'backward', 'total', 'hardware_extra'}
  where hardware_extra is the decoder-layer forward that remat recomputes (not in 'total').
  With LoRA on a text-only policy the first layer's frozen input gradients are dead (nothing
  before it trains), so XLA skips up to 1 / num_hidden_layers of the frozen backward; the
  multimodal policy needs them (the trainable fusion feeds the prompt embeddings).
  """
  fwd = forward["total"]
  if lora:
    frozen = forward["layers"] + forward["lm_head"]
    backward = frozen + 2.0 * (forward["lora"] + forward["attention"])
  else:
    backward = 2.0 * fwd
  extra = (forward["layers"] + forward["lora"] + forward["attention"]) if remat else 0.0
  return {"forward": fwd, "backward": backward, "total": fwd + backward, "hardware_extra": extra}


def decode_step_flops(config: Qwen2Config, rows: int, slots: float) -> dict:
  """One decode step: `rows` new tokens attending `slots` cache slots each."""
  return forward_flops(config, rows, slots, rows)


def rollout(config: Qwen2Config, prompts: int, generations: int, prompt_len: int,
            new_tokens: int, prefill_rows: int | None = None) -> dict:
  """A whole rollout: a prefill of `prefill_rows` prompts (default: once per prompt, as the
  sampler does; prompts x generations for transformers' generate), then `new_tokens` - 1 decode
  steps over prompts x generations rows, step j attending prompt_len + j + 1 slots.

  Returns {'prefill_flops', 'decode_flops', 'total_flops', 'decode_steps'}.
  """
  rows = prompts * generations
  prefill_rows = prompts if prefill_rows is None else prefill_rows
  prefill = forward_flops(config, prefill_rows * prompt_len, (prompt_len + 1) / 2, prefill_rows)
  steps = new_tokens - 1
  # Attended slots summed over the steps: sum_{j=0}^{steps-1} (prompt_len + j + 1).
  mean_slots = prompt_len + (steps + 1) / 2 if steps else 0.0
  decode = forward_flops(config, rows * steps, mean_slots, rows * steps)
  return {"prefill_flops": prefill["total"], "decode_flops": decode["total"],
          "total_flops": prefill["total"] + decode["total"], "decode_steps": steps}


def completion_forward(config: Qwen2Config, prompts: int, generations: int, prompt_len: int,
                       new_tokens: int, use_lora: bool = True) -> dict:
  """The log-prob forward of G completions per prompt (policy.completion_logps): the prompts
  once, then the completions over the repeated cache; every completion token through the head."""
  rows = prompts * generations
  prompt = forward_flops(config, prompts * prompt_len, (prompt_len + 1) / 2, 0, use_lora)
  comp = forward_flops(config, rows * new_tokens, prompt_len + (new_tokens + 1) / 2,
                       rows * new_tokens, use_lora)
  return add(prompt, comp)


def grpo_step(config: Qwen2Config, prompts: int, generations: int, prompt_len: int,
              new_tokens: int, lora_rank: int | None = None, remat: bool | None = None,
              num_iterations: int = 1, beta: float = 0.04, extra_forward: float = 0.0) -> dict:
  """FLOPs of a fused GRPO step by phase.

  rollout (the sampler), reference (one log-prob forward with the frozen starting weights;
  none when beta = 0), old (num_iterations > 1: one more forward of the policy), update (num_iterations x
  forward + backward). lora_rank / remat default to the config's. extra_forward: FLOPs of
  per-prompt work outside the decoder (e.g. the fusion), run once per forward pass and trained.

  Returns {'rollout', 'reference', 'old', 'update', 'total', 'hardware_extra'}.
  """
  rank = config.lora.rank if lora_rank is None else lora_rank
  remat = config.remat if remat is None else remat
  if rank and not config.lora.rank:
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=rank))
  lora = bool(rank)
  roll = rollout(config, prompts, generations, prompt_len, new_tokens)["total_flops"]
  fwd = completion_forward(config, prompts, generations, prompt_len, new_tokens)
  train = train_flops(fwd, lora, remat)
  reference = (fwd["total"] + extra_forward) if beta else 0.0
  old = (fwd["total"] + extra_forward) if num_iterations > 1 else 0.0
  update = num_iterations * (train["total"] + 3.0 * extra_forward)
  rollout_total = roll + extra_forward
  return {"rollout": rollout_total, "reference": reference, "old": old, "update": update,
          "total": rollout_total + reference + old + update,
          "hardware_extra": num_iterations * train["hardware_extra"]}


def sft_step(config: Qwen2Config, batch: int, length: int, lora_rank: int | None = None,
             remat: bool | None = None, extra_forward: float = 0.0) -> dict:
  """FLOPs of one SFT step (sft_step.make_step) on `batch` rows of `length` tokens: a causal
  forward over every token (mean (L + 1) / 2 slots attended), the lm_head over the L - 1
  predicting positions, then the backward (train_flops).

  Returns {'forward', 'backward', 'total', 'hardware_extra', 'tokens', 'split'}.
  """
  rank = config.lora.rank if lora_rank is None else lora_rank
  remat = config.remat if remat is None else remat
  fwd = forward_flops(config, batch * length, (length + 1) / 2, batch * (length - 1))
  out = train_flops(fwd, bool(rank), remat)
  out["forward"] += extra_forward
  out["backward"] += 2.0 * extra_forward
  out["total"] += 3.0 * extra_forward
  return dict(out, tokens=batch * length, split=fwd)


def param_matmul_flops_per_token(params: Mapping) -> float:
  """2 x (sum of the sizes of every matmul kernel) of a Qwen2 parameter tree: an independent
  count of the per-token projection + lm_head FLOPs (the embedding table is a lookup, biases and
  norm scales are elementwise)."""
  total = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(k, "key", str(k)) for k in path]
    if names[-1] in ("kernel", "lora_a", "lora_b"):
      total += float(leaf.size)
  return 2.0 * total


# ----------------------------------------------------------------------------------------------
# Encoders and fusion (affect_jax/models/{clip_vision,hubert,fusion}.py).

def _transformer_layer(width: int, inner: int, heads_dim: int, tokens: float, seq: int) -> float:
  """Bidirectional encoder layer: q, k, v, out projections, MLP, full attention over `seq`."""
  proj = 2.0 * tokens * (4 * width * heads_dim + 2 * width * inner)
  return proj + 4.0 * tokens * seq * heads_dim


def clip_flops(vision: Any, images: int) -> float:
  """CLIP vision tower + projection forward over `images` images."""
  v = vision
  patches = (v.image_size // v.patch_size) ** 2
  seq = patches + 1
  patch = 2.0 * images * patches * (v.patch_size ** 2 * v.num_channels) * v.hidden_size
  layer = _transformer_layer(v.hidden_size, v.intermediate_size, v.hidden_size, images * seq, seq)
  proj = 2.0 * images * v.hidden_size * v.projection_dim
  return patch + v.num_hidden_layers * layer + proj


def hubert_flops(audio: Any, windows: int, samples: int) -> float:
  """HuBERT forward over `windows` windows of `samples` samples: conv feature extractor,
  feature projection, grouped positional conv, transformer layers."""
  a = audio
  length, channels, conv = samples, 1, 0.0
  for dim, kernel, stride in zip(a.conv_dim, a.conv_kernel, a.conv_stride):
    length = (length - kernel) // stride + 1
    conv += 2.0 * windows * length * kernel * channels * dim
    channels = dim
  proj = 2.0 * windows * length * channels * a.hidden_size
  groups = a.num_conv_pos_embedding_groups
  pos = 2.0 * windows * length * a.num_conv_pos_embeddings * (a.hidden_size // groups) * a.hidden_size
  layer = _transformer_layer(a.hidden_size, a.intermediate_size, a.hidden_size,
                             windows * length, length)
  return conv + proj + pos + a.num_hidden_layers * layer


def fusion_flops(fusion: Any, batch: int, frames: int, windows: int) -> float:
  """Fusion forward: attention pooling of each modality, the Multi token, the projectors."""
  f = fusion
  pool = 2.0 * batch * (frames * f.video_dim + windows * f.audio_dim)            # scores
  pool += 2.0 * batch * (f.video_dim + f.audio_dim) * f.llm_dim                 # projectors
  multi = 2.0 * batch * ((f.video_dim + f.audio_dim) * f.multi_dim + 2 * f.multi_dim ** 2
                         + f.multi_dim * 2 + f.multi_dim * f.llm_dim)
  return pool + multi
