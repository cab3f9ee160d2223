"""Decoder building blocks: RMSNorm, rotary embeddings, the grouped-query attention layer with a
static KV cache, and the SwiGLU MLP.

Shapes: B batch, T new tokens, S attended slots (T without a cache, the cache length with one),
H model width, N query heads, K key/value heads (N % K == 0), D head width, F MLP width.

The attention itself (its implementations, masks and cache layouts) is models/attention.py.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from affect_jax import sharding
from affect_jax.models import attention as attention_lib
from affect_jax.models import lora as lora_lib

KVCache = dict[str, jax.Array]  # one layer's {'k', 'v'}, in an attention.CACHE_LAYOUTS layout


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


# The projections run on activations flattened to [B*T, features] ("flat projections"): with
# [B, T, features] operands XLA:CPU lays out the backward pass's weight-gradient matmul with a
# transposed copy of the output gradient.


class Attention(nn.Module):
  """Grouped-query self-attention with q/k/v biases, rotary positions and an optional KV cache.

  Parameters: q_proj (embed -> heads, bias), k_proj / v_proj (embed -> kv_heads, bias),
  o_proj (heads -> embed, no bias); kernels are flat [in, heads * head_dim], as in HF.
  attention_impl names the attention implementation (attention.IMPLEMENTATIONS) and
  cache_layout the layout of the cache it is called with (attention.CACHE_LAYOUTS); neither
  changes a parameter.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()
  attention_impl: str = "auto"   # one of attention.IMPLEMENTATIONS
  cache_layout: str = "bskd"     # one of attention.CACHE_LAYOUTS
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
      mask: bool[B, T, S] (attention.causal_mask or attention.cache_mask).
      cache: this layer's {'k', 'v'} in cache_layout, or None. The updated cache keeps the
        layout.
      cache_index: int32 scalar, first slot written (required with a cache).
      use_lora: static; False runs the base projections only.
      deterministic: static; False enables LoRA dropout (rng 'dropout').

    Returns:
      (float[B, T, H], the updated cache or None).
    """
    attention_lib.check_layout(self.cache_layout)
    b, t, h = x.shape
    n, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
    flags = dict(use_lora=use_lora, deterministic=deterministic)
    x2 = x.reshape(b * t, h)           # flat projections (above)
    q = self._dense("q_proj", n * d, ("embed", "heads"), True)(x2, **flags)
    k = self._dense("k_proj", kv * d, ("embed", "kv_heads"), True)(x2, **flags)
    v = self._dense("v_proj", kv * d, ("embed", "kv_heads"), True)(x2, **flags)
    q = sharding.constrain(q.reshape(b, t, n, d), ("batch", "length", "heads", "head_dim"))
    k = sharding.constrain(k.reshape(b, t, kv, d), ("batch", "length", "kv_heads", "head_dim"))
    v = sharding.constrain(v.reshape(b, t, kv, d), ("batch", "length", "kv_heads", "head_dim"))
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(k, cos, sin)
    if cache is None:
      new_cache = None
      out = attention_lib.attend(q, k, v, mask, impl=self.attention_impl)
    else:
      new_cache = attention_lib.update_cache(cache, k, v, cache_index, self.cache_layout,
                                             sharding.constrain)
      out = attention_lib.attend(q, new_cache["k"].astype(self.dtype),
                                 new_cache["v"].astype(self.dtype), mask,
                                 impl=self.attention_impl, layout=self.cache_layout)
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
    x2 = x.reshape(-1, width)          # flat projections (above)
    gate = self._dense("gate_proj", self.intermediate_size, ("embed", "mlp"))(x2, **flags)
    up = self._dense("up_proj", self.intermediate_size, ("embed", "mlp"))(x2, **flags)
    hidden = nn.silu(gate) * up
    if len(lead) == 2:
      hidden = sharding.constrain(hidden.reshape(lead + (-1,)), ("batch", "length", "mlp"))
      hidden = hidden.reshape(-1, self.intermediate_size)
    out = self._dense("down_proj", width, ("mlp", "embed"))(hidden, **flags)
    return out.reshape(lead + (width,))
