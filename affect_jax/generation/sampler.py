"""Rollout sampler: prefill + lax.while_loop decode over the decoder's static KV cache.

  out = sample(params, llm_config, sampling, tokens=prompt_ids | embeds=prompt_embeds,
               prompt_mask=mask, rng=key, num_samples=G, cache=init_cache(...))

Prompts are LEFT-padded to a common length P (`pad_prompts` pads to a bucket so a new prompt
length reuses a compiled program); rows with a False mask prefix are padding. Each prompt is
prefilled once, its cache rows are repeated G times (rows p0 g0..gG-1, p1 ...), and G samples
are decoded token by token until every row has emitted an EOS (or ended with one of the
`stop_sequences`, token-id sequences checked against the row's last generated tokens, as
transformers' stopping criteria on the generated ids) or N tokens exist. Finished rows emit
`pad_id` with log-prob 0; a row's length counts its tokens up to and including the EOS or the
stop sequence's last token.

Returned log-probs are log-softmax(logits / temperature) of the chosen token (log-softmax of the
raw logits when greedy): the behaviour policy's log-probs before top-k / top-p truncation, which
is what GRPO's importance ratio uses.

`repetition_penalty` (1.0 = off, as GRPO uses it) is transformers' RepetitionPenaltyLogitsProcessor
(CTRL): before temperature / top-k / top-p, the logit of every token already in the row (the real
prompt tokens when prompts are given as ids, and every generated token) is divided by the penalty
when positive and multiplied by it when negative; log-probs are then those of the penalised
logits. Left padding does not count (transformers counts pad ids too).

`sample` is a pure, jittable function (the fused GRPO step calls it inside its own jit);
`make_generate` wraps it in a jit with the cache donated, for standalone use.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from affect_jax import config_dataclass
from affect_jax import sharding
from affect_jax.models import attention
from affect_jax.models import decode
from affect_jax.models import qwen2
from affect_jax.models.qwen2 import Qwen2, Qwen2Config, init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 128
  temperature: float = 1.0
  top_k: int = 0              # 0 = off
  top_p: float = 1.0          # 1.0 = off
  greedy: bool = False
  repetition_penalty: float = 1.0   # 1.0 = off
  eos_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()   # a row also ends after any of these
  pad_id: int = 0
  buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens}: must be >= 1.")
    if not self.greedy and self.temperature <= 0:
      raise ValueError(f"sampling.temperature={self.temperature}: must be > 0 (or set greedy).")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k={self.top_k}: must be >= 0 (0 = off).")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling.top_p={self.top_p}: must be in (0, 1].")
    if self.repetition_penalty <= 0:
      raise ValueError(f"sampling.repetition_penalty={self.repetition_penalty}: must be > 0 "
                       "(1.0 = off).")
    if any(not len(s) for s in self.stop_sequences):
      raise ValueError(f"sampling.stop_sequences={self.stop_sequences}: a stop sequence is "
                       "empty; give at least one token id each.")
    if list(self.buckets) != sorted(set(self.buckets)):
      raise ValueError(f"sampling.buckets={self.buckets}: must be strictly increasing.")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "SamplingConfig":
    return config_dataclass.build(cls, d, name="sampling config")


class SampleOutput(NamedTuple):
  tokens: jax.Array      # int32[B*G, N], pad_id after the end
  logps: jax.Array       # float32[B*G, N], 0 after the end
  lengths: jax.Array     # int32[B*G], tokens up to and including the EOS / stop sequence
  done: jax.Array        # bool[B*G], True if the row emitted an EOS or a stop sequence


@struct.dataclass
class DecodeState:
  """The decode loop's state (R = B * G rows, N = max_new_tokens, V vocabulary)."""
  step: jax.Array        # int32 scalar: tokens generated so far (the next output column)
  caches: tuple          # per-layer KV caches in decode.cache_layout(config)
  logits: jax.Array      # float32[R, V]: the next token's logits
  tokens: jax.Array      # int32[R, N]: generated tokens, pad_id after a row's end
  logps: jax.Array       # float32[R, N]: their log-probs, 0 after a row's end
  done: jax.Array        # bool[R]: the row has emitted an EOS or a stop sequence
  positions: jax.Array   # int32[R]: the rotary position of the next token
  kv_mask: jax.Array     # bool[R, P + N]: cache slots holding real tokens
  rng: jax.Array         # the key split for each step's draw
  seen: jax.Array        # bool[R, V] tokens already in the row (repetition penalty), else [R, 0]
  recent: jax.Array      # int32[R, W]: the row's last W tokens (W = longest stop sequence)
  lengths: jax.Array     # int32[R]: tokens through the EOS / stop sequence (N while running)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return int(b)
  raise ValueError(f"prompt length {length} exceeds the largest bucket {buckets[-1]}; add a "
                   "larger bucket to sampling.buckets or shorten the prompts.")


def pad_prompts(prompts: Sequence[Sequence[int]], sampling: SamplingConfig
                ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to the bucket of the longest: (int32[B, P], bool[B, P])."""
  if not len(prompts):
    raise ValueError("pad_prompts: no prompts.")
  empty = [i for i, row in enumerate(prompts) if not len(row)]
  if empty:
    raise ValueError(f"pad_prompts: prompts {empty[:10]} are empty; every prompt needs a token.")
  longest = max(len(p) for p in prompts)
  p = bucket_length(longest, sampling.buckets)
  tokens = np.full((len(prompts), p), sampling.pad_id, np.int32)
  mask = np.zeros((len(prompts), p), bool)
  for i, row in enumerate(prompts):
    tokens[i, p - len(row):] = row
    mask[i, p - len(row):] = True
  return tokens, mask


def filter_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """Temperature, top-k and top-p (nucleus) filtering: float32[B, V] -> float32[B, V]."""
  logits = logits.astype(jnp.float32) / sampling.temperature
  neg = jnp.finfo(jnp.float32).min
  if sampling.top_k and sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if sampling.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs      # mass strictly above each token
    keep_sorted = before < sampling.top_p            # smallest prefix reaching top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
  return logits


_BLOCK = 128   # vocabulary block of the two-level inverse-CDF sampler


def _argmax(x: jax.Array) -> jax.Array:
  """int32[B]: the first index of each row's maximum of float32[B, V].

  Two plain reductions (max, then the smallest index holding it) rather than jnp.argmax's
  (value, index) pair reduction, which XLA:CPU vectorises poorly.
  """
  v = x.shape[-1]
  top = jnp.max(x, axis=-1, keepdims=True)
  index = jnp.min(jnp.where(x == top, jax.lax.broadcasted_iota(jnp.int32, x.shape, 1), v), -1)
  return jnp.minimum(index, v - 1)      # a NaN row has no index equal to its max


def _logsumexp(x: jax.Array) -> jax.Array:
  """float32[B, V] -> float32[B]."""
  top = jnp.max(x, axis=-1)
  return top + jnp.log(jnp.sum(jnp.exp(x - top[:, None]), axis=-1))


def _picked(x: jax.Array, token: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0]


def _first_last_positive(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Indices of the first and last positive entry of each row of w float32[..., M]."""
  iota = jax.lax.broadcasted_iota(jnp.int32, w.shape, w.ndim - 1)
  m = w.shape[-1]
  first = jnp.min(jnp.where(w > 0, iota, m), axis=-1)
  last = jnp.max(jnp.where(w > 0, iota, -1), axis=-1)
  return jnp.minimum(first, m - 1), jnp.maximum(last, 0)


def _categorical(logits: jax.Array, rng: jax.Array) -> jax.Array:
  """One draw per row from softmax(logits float32[B, V]) -> int32[B].

  Inverse-CDF sampling with one uniform per row, in two levels (blocks of _BLOCK tokens, then
  the tokens of the chosen block), so besides one exp pass over the logits all the work is on
  [B, V / _BLOCK] and [B, _BLOCK] arrays, where jax.random.categorical would draw B x V Gumbel
  variates. Tokens of zero probability (masked to
  -inf or the float32 minimum) are never drawn: the search is clamped to the positive range of
  each level.
  """
  b, v = logits.shape
  nb = -(-v // _BLOCK)
  x = jnp.pad(logits, ((0, 0), (0, nb * _BLOCK - v)), constant_values=-jnp.inf)
  w = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True)).reshape(b, nb, _BLOCK)
  block_mass = jnp.sum(w, axis=-1)                                     # [B, nb]
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  target = jax.random.uniform(rng, (b,), jnp.float32) * block_cdf[:, -1]
  lo, hi = _first_last_positive(block_mass)
  block = jnp.clip(jnp.sum(block_cdf <= target[:, None], axis=-1), lo, hi).astype(jnp.int32)
  target = target - _picked(block_cdf - block_mass, block)
  w = jnp.take_along_axis(w, block[:, None, None], axis=1)[:, 0]       # [B, _BLOCK]
  lo, hi = _first_last_positive(w)
  inner = jnp.clip(jnp.sum(jnp.cumsum(w, axis=-1) <= target[:, None], axis=-1), lo, hi)
  return block * _BLOCK + inner.astype(jnp.int32)


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """float32[B, V] logits with those of `seen` (bool[B, V]) tokens penalised (module doc)."""
  penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
  return jnp.where(seen, penalised, logits)


def _choose(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig):
  """Picks the next token for every row: (int32[B], its log-prob float32[B])."""
  logits = logits.astype(jnp.float32)
  if sampling.greedy:
    token = _argmax(logits)
    return token, _picked(logits, token) - _logsumexp(logits)
  scaled = logits / sampling.temperature
  token = _categorical(filter_logits(logits, sampling), rng)
  return token, _picked(scaled, token) - _logsumexp(scaled)


def check_lengths(prompt_len: int, config: Qwen2Config, sampling: SamplingConfig) -> int:
  """Cache length P + N; errors before compiling if it cannot fit the model."""
  total = prompt_len + sampling.max_new_tokens
  if total > config.max_position_embeddings:
    raise ValueError(
        f"prompt length {prompt_len} + max_new_tokens {sampling.max_new_tokens} = {total} exceeds "
        f"the model's max_position_embeddings {config.max_position_embeddings}; shorten the "
        "prompts or lower sampling.max_new_tokens.")
  return total


def sample(params: Mapping, config: Qwen2Config, sampling: SamplingConfig, *,
           prompt_mask: jax.Array, rng: jax.Array, num_samples: int = 1,
           tokens: jax.Array | None = None, embeds: jax.Array | None = None,
           cache: Mapping | None = None, use_lora: bool = True) -> tuple[SampleOutput, dict]:
  """Samples `num_samples` completions per prompt (pure; call inside jit).

  Args:
    params: the decoder's parameters (Qwen2 tree).
    prompt_mask: bool[B, P], True for real prompt tokens (left padding).
    tokens: int32[B, P] prompt ids, or embeds: float[B, P, H] prompt embeddings (multimodal).
    cache: optional zeroed cache for B * num_samples rows and P + N slots (donate it to reuse
      the buffer); built here when None.
  Returns:
    (SampleOutput for B * num_samples rows, the final cache).
  """
  if (tokens is None) == (embeds is None):
    raise ValueError("sample: pass exactly one of tokens= and embeds=.")
  if num_samples < 1:
    raise ValueError(f"sample: num_samples={num_samples} must be >= 1.")
  b, p = prompt_mask.shape
  n = sampling.max_new_tokens
  rows = b * num_samples
  total = check_lengths(p, config, sampling)
  model = Qwen2(config)
  variables = {"params": params}
  if cache is None:
    cache = init_cache(config, rows, total)
  if cache["k"].shape[1:3] != (rows, total):
    raise ValueError(f"sample: cache is for {cache['k'].shape[1]} rows x {cache['k'].shape[2]} "
                     f"slots, need {rows} x {total} (B*G x P+N).")

  positions = qwen2.positions_from_mask(prompt_mask)
  layout = decode.cache_layout(config)
  layer_params = decode.unstack_layers(params)      # hoisted: see models/decode.py
  # Prefill each prompt once on the first B rows' worth of cache, then repeat rows G times.
  small = tuple(jax.tree.map(lambda x: x[:b], c) for c in decode.split_cache(cache, layout))
  kv_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, n), bool)], axis=1)
  hidden, small = decode.decode_forward(config, params, layer_params, tokens, embeds=embeds,
                                        positions=positions, caches=small,
                                        cache_index=jnp.int32(0), kv_mask=kv_mask,
                                        use_lora=use_lora, return_hidden=True, layout=layout)
  last = model.apply(variables, hidden[:, -1:], method=Qwen2.logits)[:, 0]      # [B, V]
  rep = lambda x, axis: jnp.repeat(x, num_samples, axis=axis)
  axes = attention.CACHE_AXES[layout]
  caches = tuple({name: sharding.constrain(rep(c[name], 0), axes[name]) for name in ("k", "v")}
                 for c in small)
  eos = jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)
  penalise = sampling.repetition_penalty != 1.0
  seen = jnp.zeros((b, last.shape[-1]) if penalise else (b, 0), bool)
  if penalise and tokens is not None:
    seen = seen.at[jnp.arange(b)[:, None], tokens].max(prompt_mask)
  stops = [jnp.asarray(s, jnp.int32) for s in sampling.stop_sequences]
  window = max((len(s) for s in sampling.stop_sequences), default=0)

  def ends(token, recent):
    """(bool[R]: the row ends with `token`, its last `window` tokens after it)."""
    hit = jnp.any(token[:, None] == eos[None, :], axis=-1)
    if window:
      recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
      for s in stops:
        hit |= jnp.all(recent[:, window - len(s):] == s[None, :], axis=-1)
    return hit, recent

  def cond(state: DecodeState):
    return (state.step < n) & ~jnp.all(state.done)

  def body(state: DecodeState) -> DecodeState:
    t, done = state.step, state.done
    rng, step_rng = jax.random.split(state.rng)
    logits = state.logits
    if penalise:
      logits = apply_repetition_penalty(logits.astype(jnp.float32), state.seen,
                                        sampling.repetition_penalty)
    token, logp = _choose(logits, step_rng, sampling)
    token = jnp.where(done, sampling.pad_id, token)
    logp = jnp.where(done, 0.0, logp)
    hit, recent = ends(token, state.recent)
    slot = p + t
    kv_mask = state.kv_mask.at[:, slot].set(~done)
    new_logits, caches = decode.decode_forward(config, params, layer_params, token[:, None],
                                               positions=state.positions[:, None],
                                               caches=state.caches, cache_index=slot,
                                               kv_mask=kv_mask, use_lora=use_lora,
                                               layout=layout)
    seen = state.seen.at[jnp.arange(rows), token].set(True) if penalise else state.seen
    return DecodeState(step=t + 1, caches=caches, logits=new_logits[:, 0],
                       tokens=state.tokens.at[:, t].set(token),
                       logps=state.logps.at[:, t].set(logp), done=done | hit,
                       positions=state.positions + 1, kv_mask=kv_mask, rng=rng, seen=seen,
                       recent=recent, lengths=jnp.where(hit & ~done, t + 1, state.lengths))

  state = DecodeState(step=jnp.int32(0), caches=caches, logits=rep(last, 0),
                      tokens=jnp.full((rows, n), sampling.pad_id, jnp.int32),
                      logps=jnp.zeros((rows, n), jnp.float32), done=jnp.zeros((rows,), bool),
                      positions=rep(qwen2.continuation_positions(positions, 1)[:, 0], 0),
                      kv_mask=rep(kv_mask, 0), rng=rng, seen=rep(seen, 0),
                      recent=jnp.full((rows, window), -1, jnp.int32),
                      lengths=jnp.full((rows,), n, jnp.int32))
  state = jax.lax.while_loop(cond, body, state)
  cache = jax.tree.map(lambda x: sharding.constrain(x, qwen2.CACHE_AXES),
                       decode.stack_cache(state.caches, layout))
  out = SampleOutput(tokens=state.tokens, logps=state.logps, lengths=state.lengths,
                     done=state.done)
  return out, cache


def make_generate(config: Qwen2Config, sampling: SamplingConfig, num_samples: int = 1,
                  use_lora: bool = True):
  """A jitted `generate(params, tokens, prompt_mask, rng, cache) -> (SampleOutput, cache)`.

  The cache argument is donated: pass the cache returned by the previous call (or
  init_cache(config, B * num_samples, P + N)) so its buffer is reused. Prompts of another bucket
  length compile once more.
  """

  def generate(params, tokens, prompt_mask, rng, cache):
    cache = jax.tree.map(jnp.zeros_like, cache)
    return sample(params, config, sampling, prompt_mask=prompt_mask, rng=rng,
                  num_samples=num_samples, tokens=tokens, cache=cache, use_lora=use_lora)

  return jax.jit(generate, donate_argnums=(4,))
