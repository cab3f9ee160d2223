"""Decoder building blocks: RMSNorm, rotary embeddings, grouped-query attention with a static KV
cache, and the SwiGLU MLP.

Shapes: B batch, T new tokens, S attended slots (T without a cache, the cache length with one),
H model width, N query heads, K key/value heads (N % K == 0), D head width, F MLP width.

Attention masks are boolean [B, T, S] (True = may attend) and are built once per forward by
`causal_mask` (no cache) or `cache_mask` (static KV cache), then shared by every layer.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from affect_jax import sharding
from affect_jax.models import lora as lora_lib

KVCache = dict[str, jax.Array]  # {'k': [B, S, K, D], 'v': [B, S, K, D]} for one layer
# A layer cache's layout: 'bskd' = k and v [B, S, K, D] (the model's public cache, stacked over
# layers); 'decode' = k [B, K, D, S] (transposed), v [B, K, S, D], what a decode loop carries
# (see attention_decode).
CACHE_LAYOUTS = ("bskd", "decode")


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale, normalised in float32 (as HF's Qwen2RMSNorm)."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., H] -> float[..., H] in `dtype`."""
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x32.astype(self.dtype)


def rotary_tables(positions: jax.Array, head_dim: int,
                  theta: float) -> tuple[jax.Array, jax.Array]:
  """Rotary cos / sin tables for HF's rotate_half convention.

  Args:
    positions: int32[B, T] position of each token (per row, so padded rows work).
    head_dim: D (even).
    theta: rope base (config.rope_theta).

  Returns:
    (cos, sin), each float32[B, T, D]: frequencies repeated twice along D.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: float[B, T, N, D]; cos, sin: float[B, T, D] -> rotated x (x's dtype)."""
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def causal_mask(attention_mask: jax.Array | None, batch: int, length: int) -> jax.Array:
  """bool[B, T, T] for a forward without cache: key valid (attention_mask[b, s]) and s <= t.

  attention_mask: bool[B, T] (True = real token) or None (all real). Left and right padding both
  work; rows of padded queries get a mask that may be all False, which the attention turns into
  finite garbage the caller ignores.
  """
  t = jnp.arange(length)
  mask = (t[None, :] <= t[:, None])[None]
  if attention_mask is None:
    return jnp.broadcast_to(mask, (batch, length, length))
  return mask & attention_mask.astype(bool)[:, None, :]


def cache_mask(kv_mask: jax.Array, cache_index: jax.Array, length: int) -> jax.Array:
  """bool[B, T, S] for T new tokens written at cache slots [cache_index, cache_index + T).

  kv_mask: bool[B, S], True for every slot holding a real token (the new ones included);
  query t may attend slot s where kv_mask[b, s] and s <= cache_index + t.
  """
  slots = jnp.arange(kv_mask.shape[1])
  query_slot = cache_index + jnp.arange(length)
  return kv_mask.astype(bool)[:, None, :] & (slots[None, None, :] <= query_slot[None, :, None])


# Flat projections: the projections run on activations flattened to [B*T, features]. With
# [B, T, features] operands, XLA:CPU lays out the weight-gradient matmul of the backward pass
# with a transposed copy of the output gradient, fused with its elementwise producer (e.g.
# SiLU's derivative): on the GRPO training shapes that copy cost more than the matmul itself.


def _kv_heads_split() -> bool:
  """True while tracing under a mesh whose rules split kv_heads over more than one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return False
  axes = dict(nn.get_logical_axis_rules()).get("kv_heads")
  if axes is None:
    return False
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  sizes = dict(mesh.shape)
  return any(sizes.get(a, 1) > 1 for a in axes)


def _softmax_rows(scores: jax.Array, mask: jax.Array, dtype: Any) -> jax.Array:
  """Masked softmax over the last axis in float32, cast to `dtype`."""
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _attention_grouped(q, k, v, mask):
  """One einsum over (batch, kv head) pairs: the layout tensor parallelism shards on heads."""
  b, t, n, d = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, n // kv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  probs = _softmax_rows(scores * (d ** -0.5), mask[:, None, None], v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, n, d)


def _attention_per_kv_head(q, k, v, mask):
  """A static loop over the K key/value heads; each is a plain batched matmul over B.

  Query rows (t, g) of kv head j come straight from q's [B, T, N, D] layout, so only the kv
  head's own K and V columns are gathered. On XLA:CPU this runs prefill / training shapes several
  times faster (forward and backward) than the two-batch-dim einsum of `_attention_grouped`.
  """
  b, t, n, d = q.shape
  kv = k.shape[2]
  g = n // kv
  row_mask = jnp.repeat(mask, g, axis=1) if g > 1 else mask          # [B, T*G, S]
  outs = []
  for j in range(kv):
    qj = q[:, :, j * g:(j + 1) * g].reshape(b, t * g, d)
    scores = jnp.einsum("bmd,bsd->bms", qj, k[:, :, j], preferred_element_type=jnp.float32)
    probs = _softmax_rows(scores * (d ** -0.5), row_mask, v.dtype)
    outs.append(jnp.einsum("bms,bsd->bmd", probs, v[:, :, j]).reshape(b, t, g, d))
  return outs[0] if kv == 1 else jnp.concatenate(outs, axis=2)


def _attention_flat(q, k, v, mask, num_kv_heads):
  """Every query head against every (slot, kv head) row of a flat [B, S*K, D] cache.

  k, v: float[B, S*K, D], row s*K + j holding slot s of kv head j (the [B, S, K, D] layout seen
  as 3-D). Rows of a foreign kv head are masked out before the softmax (probability exactly 0),
  so the result is the grouped attention's; the K-fold extra score work buys reading K and V in
  place with no copy or transpose, the right trade for single-token decode (memory bound).
  """
  b, t, n, d = q.shape
  kv = num_kv_heads
  s = k.shape[1] // kv
  scores = jnp.einsum("bmd,bjd->bmj", q.reshape(b, t * n, d), k,
                      preferred_element_type=jnp.float32)
  own = jnp.arange(kv)[:, None] == jnp.arange(kv)[None, :]                  # [K, K']
  pair_mask = mask[:, :, None, None, :, None] & own[None, None, :, None, None, :]
  scores = jnp.where(pair_mask, scores.reshape(b, t, kv, n // kv, s, kv) * (d ** -0.5),
                     jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores.reshape(b, t * n, s * kv), axis=-1).astype(v.dtype)
  out = jnp.einsum("bmj,bjd->bmd", probs, v)
  return out.reshape(b, t, n, d)


# Single-token decode reads the cache in place (flat) while the kv-head waste stays small.
_FLAT_MAX_KV_HEADS = 4


def attention_decode(q: jax.Array, k_t: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Single-token attention over a cache in the 'decode' layout, softmax in float32.

  Args:
    q: float[B, 1, N, D].
    k_t: float[B, K, D, S] (keys transposed), v: float[B, K, S, D].
    mask: bool[B, 1, S].

  Returns:
    float[B, 1, N, D] in v's dtype.

  The scores are a multiply-reduce over D with S contiguous (it vectorises along the slots; each
  kv head's keys are read once for its G query heads) and the weighted sum one batched matmul
  with no transposed operand. On XLA:CPU the scores take about half the time of a batched dot
  against [B, K, S, D] keys and a quarter of the [B, S, K, D] layout's.
  """
  b, _, n, d = q.shape
  kv = k_t.shape[1]
  g = n // kv
  qs = q.reshape(b, kv, g, d, 1).astype(jnp.float32) * (d ** -0.5)
  scores = jnp.sum(qs * k_t[:, :, None].astype(jnp.float32), axis=3)          # [B, K, G, S]
  probs = _softmax_rows(scores, mask[:, :, None], v.dtype)
  out = jnp.einsum("bkgs,bksd->bkgd", probs, v)
  return out.reshape(b, 1, n, d)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """Grouped-query attention, softmax in float32.

  Args:
    q: float[B, T, N, D]; query head n reads key/value head n // (N // K) (HF's repeat_kv).
    k, v: float[B, S, K, D].
    mask: bool[B, T, S].

  Returns:
    float[B, T, N, D] in v's dtype.

  The implementation is picked from the shapes (all give the same values): single-token decode
  with few kv heads attends the cache in its own layout (`_attention_flat`), other shapes loop
  over kv heads (`_attention_per_kv_head`), and a mesh that splits kv heads over devices keeps
  the head-batched einsum (`_attention_grouped`).
  """
  t, kv = q.shape[1], k.shape[2]
  if _kv_heads_split():
    return _attention_grouped(q, k, v, mask)
  if t == 1 and 1 < kv <= _FLAT_MAX_KV_HEADS:
    b, s, _, d = k.shape
    return _attention_flat(q, k.reshape(b, s * kv, d), v.reshape(b, s * kv, d), mask, kv)
  return _attention_per_kv_head(q, k, v, mask)


class Attention(nn.Module):
  """Grouped-query self-attention with q/k/v biases, rotary positions and an optional KV cache.

  Parameters: q_proj (embed -> heads, bias), k_proj / v_proj (embed -> kv_heads, bias),
  o_proj (heads -> embed, no bias); kernels are flat [in, heads * head_dim], as in HF.
  cache_layout picks the layout of the cache it is called with ('bskd' or 'decode', see
  CACHE_LAYOUTS); it changes no parameter.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()
  cache_layout: str = "bskd"   # one of CACHE_LAYOUTS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  def _dense(self, name: str, features: int, axes: tuple[str, str], bias: bool):
    return lora_lib.LoraDense(features, axes, use_bias=bias,
                              lora=lora_lib.for_target(self.lora, name), dtype=self.dtype,
                              param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                              name=name)

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               cache: KVCache | None = None, cache_index: jax.Array | None = None, *,
               use_lora: bool = True,
               deterministic: bool = True) -> tuple[jax.Array, KVCache | None]:
    """Attends the T new tokens over the cache (if any) or over themselves.

    Args:
      x: float[B, T, H].
      cos, sin: float[B, T, D] from `rotary_tables`.
      mask: bool[B, T, S] (`causal_mask` or `cache_mask`).
      cache: this layer's {'k', 'v'}: [B, S, K, D] (with cache_layout 'decode': k [B, K, D, S],
        v [B, K, S, D]), or None. The updated cache keeps the layout.
      cache_index: int32 scalar, first slot written (required with a cache).
      use_lora: static; False runs the base projections only.
      deterministic: static; False enables LoRA dropout (rng 'dropout').

    Returns:
      (float[B, T, H], the updated cache or None).
    """
    if self.cache_layout not in CACHE_LAYOUTS:
      raise ValueError(f"Attention.cache_layout={self.cache_layout!r}: use one of "
                       f"{CACHE_LAYOUTS}.")
    b, t, h = x.shape
    n, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
    flags = dict(use_lora=use_lora, deterministic=deterministic)
    x2 = x.reshape(b * t, h)           # 2-D matmuls: see "Flat projections"
    q = self._dense("q_proj", n * d, ("embed", "heads"), True)(x2, **flags)
    k = self._dense("k_proj", kv * d, ("embed", "kv_heads"), True)(x2, **flags)
    v = self._dense("v_proj", kv * d, ("embed", "kv_heads"), True)(x2, **flags)
    q = sharding.constrain(q.reshape(b, t, n, d), ("batch", "length", "heads", "head_dim"))
    k = sharding.constrain(k.reshape(b, t, kv, d), ("batch", "length", "kv_heads", "head_dim"))
    v = sharding.constrain(v.reshape(b, t, kv, d), ("batch", "length", "kv_heads", "head_dim"))
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(k, cos, sin)
    new_cache = None
    if cache is None:
      out = dot_product_attention(q, k, v, mask)
    elif self.cache_layout == "decode":    # k [B, K, D, S], v [B, K, S, D]
      axes = {"k": ("batch", "kv_heads", "head_dim", "kv_length"),
              "v": ("batch", "kv_heads", "kv_length", "head_dim")}
      updates = {"k": (k.transpose(0, 2, 3, 1), (0, 0, 0, cache_index)),
                 "v": (v.transpose(0, 2, 1, 3), (0, 0, cache_index, 0))}
      new_cache = {
          name: sharding.constrain(lax.dynamic_update_slice(
              cache[name], new.astype(cache[name].dtype), start), axes[name])
          for name, (new, start) in updates.items()}
      ck, cv = new_cache["k"].astype(self.dtype), new_cache["v"].astype(self.dtype)
      if t == 1:     # reads the updated buffers as they are: no copy in a decode loop
        out = attention_decode(q, ck, cv, mask)
      else:          # prefill: one transpose back to [B, S, K, D]
        out = dot_product_attention(q, ck.transpose(0, 3, 1, 2), cv.transpose(0, 2, 1, 3), mask)
    else:
      start = (0, cache_index, 0, 0)
      axes = ("batch", "kv_length", "kv_heads", "head_dim")
      new_cache = {
          name: sharding.constrain(lax.dynamic_update_slice(
              cache[name], new.astype(cache[name].dtype), start), axes)
          for name, new in (("k", k), ("v", v))}
      out = dot_product_attention(q, new_cache["k"].astype(self.dtype),
                                  new_cache["v"].astype(self.dtype), mask)
    out = sharding.constrain(out, ("batch", "length", "heads", "head_dim")).reshape(b * t, n * d)
    out = self._dense("o_proj", h, ("heads", "embed"), False)(out, **flags)
    return out.reshape(b, t, h), new_cache


class SwiGLU(nn.Module):
  """down_proj(silu(gate_proj(x)) * up_proj(x)); no biases."""
  intermediate_size: int
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  def _dense(self, name: str, features: int, axes: tuple[str, str]):
    return lora_lib.LoraDense(features, axes, use_bias=False,
                              lora=lora_lib.for_target(self.lora, name), dtype=self.dtype,
                              param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                              name=name)

  @nn.compact
  def __call__(self, x: jax.Array, *, use_lora: bool = True,
               deterministic: bool = True) -> jax.Array:
    """x: float[B, T, H] -> float[B, T, H]."""
    flags = dict(use_lora=use_lora, deterministic=deterministic)
    lead, width = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, width)          # 2-D matmuls: see "Flat projections"
    gate = self._dense("gate_proj", self.intermediate_size, ("embed", "mlp"))(x2, **flags)
    up = self._dense("up_proj", self.intermediate_size, ("embed", "mlp"))(x2, **flags)
    hidden = nn.silu(gate) * up
    if len(lead) == 2:
      hidden = sharding.constrain(hidden.reshape(lead + (-1,)), ("batch", "length", "mlp"))
      hidden = hidden.reshape(-1, self.intermediate_size)
    out = self._dense("down_proj", width, ("mlp", "embed"))(hidden, **flags)
    return out.reshape(lead + (width,))
