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


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """Grouped-query attention, softmax in float32.

  Args:
    q: float[B, T, N, D]; query head n reads key/value head n // (N // K) (HF's repeat_kv).
    k, v: float[B, S, K, D].
    mask: bool[B, T, S].

  Returns:
    float[B, T, N, D] in v's dtype.
  """
  b, t, n, d = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, n // kv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, n, d)


class Attention(nn.Module):
  """Grouped-query self-attention with q/k/v biases, rotary positions and an optional KV cache.

  Parameters: q_proj (embed -> heads, bias), k_proj / v_proj (embed -> kv_heads, bias),
  o_proj (heads -> embed, no bias); kernels are flat [in, heads * head_dim], as in HF.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()
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
      cache: this layer's {'k', 'v'}: [B, S, K, D], or None.
      cache_index: int32 scalar, first slot written (required with a cache).
      use_lora: static; False runs the base projections only.
      deterministic: static; False enables LoRA dropout (rng 'dropout').

    Returns:
      (float[B, T, H], the updated cache or None).
    """
    b, t, h = x.shape
    n, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
    flags = dict(use_lora=use_lora, deterministic=deterministic)
    q = self._dense("q_proj", n * d, ("embed", "heads"), True)(x, **flags)
    k = self._dense("k_proj", kv * d, ("embed", "kv_heads"), True)(x, **flags)
    v = self._dense("v_proj", kv * d, ("embed", "kv_heads"), True)(x, **flags)
    q = sharding.constrain(q.reshape(b, t, n, d), ("batch", "length", "heads", "head_dim"))
    k = sharding.constrain(k.reshape(b, t, kv, d), ("batch", "length", "kv_heads", "head_dim"))
    v = sharding.constrain(v.reshape(b, t, kv, d), ("batch", "length", "kv_heads", "head_dim"))
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(k, cos, sin)
    new_cache = None
    if cache is not None:
      start = (0, cache_index, 0, 0)
      axes = ("batch", "kv_length", "kv_heads", "head_dim")
      new_cache = {
          "k": sharding.constrain(
              lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start), axes),
          "v": sharding.constrain(
              lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start), axes),
      }
      k = new_cache["k"].astype(self.dtype)
      v = new_cache["v"].astype(self.dtype)
    out = dot_product_attention(q, k, v, mask)
    out = sharding.constrain(out, ("batch", "length", "heads", "head_dim")).reshape(b, t, n * d)
    out = self._dense("o_proj", h, ("heads", "embed"), False)(out, **flags)
    return out, new_cache


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
    gate = self._dense("gate_proj", self.intermediate_size, ("embed", "mlp"))(x, **flags)
    up = self._dense("up_proj", self.intermediate_size, ("embed", "mlp"))(x, **flags)
    hidden = sharding.constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return self._dense("down_proj", x.shape[-1], ("mlp", "embed"))(hidden, **flags)
