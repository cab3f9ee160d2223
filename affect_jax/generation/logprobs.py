"""Per-token log-probabilities of given targets, computed in chunks along the sequence.

The full logits [B, T, vocab] of a 7B decoder (vocab 152,064) are far larger than its hidden
states, so `token_logprobs` applies the output head to `chunk` positions at a time inside a
`lax.scan`, keeps only the target's log-probability (and optionally the entropy) per position, and
rematerialises each chunk's logits in the backward pass (`jax.checkpoint` on the chunk body): at
no point, forward or backward, does more than one chunk's [B, chunk, vocab] exist.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from affect_jax import sharding

HeadFn = Callable[[jax.Array], jax.Array]


def _check(hidden: jax.Array, targets: jax.Array, chunk: int) -> None:
  if hidden.ndim != 3:
    raise ValueError(f"token_logprobs: hidden has shape {hidden.shape}; expected [B, T, H].")
  if targets.shape != hidden.shape[:2]:
    raise ValueError(f"token_logprobs: targets has shape {targets.shape} but hidden is "
                     f"{hidden.shape}; targets must be [B, T] matching hidden's first two axes "
                     "(shift them yourself: hidden[:, :-1] predicts tokens[:, 1:]).")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"token_logprobs: targets has dtype {targets.dtype}; pass token ids "
                     "(int32).")
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
    raise ValueError(f"token_logprobs: chunk={chunk!r}; set grpo_loss.logprob_chunk to a "
                     "positive int.")


def _chunk_stats(head_fn: HeadFn, h: jax.Array, y: jax.Array, temperature: float,
                 with_entropy: bool) -> tuple[jax.Array, jax.Array | None]:
  """h: [B, C, H], y: int[B, C] -> logp float32[B, C], entropy float32[B, C] | None."""
  logits = head_fn(h).astype(jnp.float32)
  if logits.ndim != 3 or logits.shape[:2] != h.shape[:2]:
    raise ValueError(f"token_logprobs: head_fn mapped {h.shape} to {logits.shape}; it must map "
                     "h[B, C, H] to logits[B, C, vocab].")
  if temperature != 1.0:
    logits = logits / temperature
  logits = sharding.constrain(logits, ("batch", "length", "vocab"))
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, y[..., None].astype(jnp.int32), axis=-1)[..., 0]
  logp = picked - lse
  if not with_entropy:
    return logp, None
  probs = jnp.exp(logits - lse[..., None])
  entropy = lse - jnp.sum(probs * logits, axis=-1)
  return logp, entropy


def token_logprobs(hidden: jax.Array, targets: jax.Array, head_fn: HeadFn, chunk: int, *,
                   temperature: float = 1.0, with_entropy: bool = False
                   ) -> tuple[jax.Array, jax.Array | None]:
  """log softmax(head_fn(hidden) / temperature)[targets], `chunk` positions at a time.

  Args:
    hidden: float[B, T, H] decoder states (any float dtype, e.g. bfloat16). Position t must be
      the state that predicts targets[:, t]; no shift is applied here.
    targets: int[B, T] token ids whose log-probabilities are wanted.
    head_fn: h[B, C, H] -> logits[B, C, vocab], e.g. the decoder's output projection; parameters
      it closes over receive gradients.
    chunk: positions per chunk (grpo_loss.logprob_chunk). T need not be a multiple: the last
      chunk is padded and the padding dropped; a chunk larger than T becomes T.
    temperature: the sampling temperature the logits are divided by (1.0 = none).
    with_entropy: also return the entropy of each position's distribution.

  Returns:
    (logps float32[B, T], entropy float32[B, T] or None). The log-softmax is in float32 whatever
    the dtype of hidden or of the logits.
  """
  _check(hidden, targets, chunk)
  batch, length, width = hidden.shape
  chunk = min(chunk, length)
  num_chunks = -(-length // chunk)
  pad = num_chunks * chunk - length
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  # [B, n*C, ...] -> [n, B, C, ...]: the scan walks the chunks.
  hs = hidden.reshape(batch, num_chunks, chunk, width).swapaxes(0, 1)
  ys = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def body(h, y):
    h = sharding.constrain(h, ("batch", "length", "embed"))
    return _chunk_stats(head_fn, h, y, temperature, with_entropy)

  def step(carry, xs):
    return carry, body(*xs)

  _, (logps, entropy) = jax.lax.scan(step, None, (hs, ys))

  def unchunk(x):
    x = x.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :length]
    return sharding.constrain(x, ("batch", "length"))

  return unchunk(logps), (unchunk(entropy) if with_entropy else None)
