"""Building blocks shared by the frozen encoders (CLIP vision tower, HuBERT).

Both follow the same BERT-style transformer block: biased q/k/v/out projections with
bidirectional, unmasked softmax attention, and a two-layer MLP. Only the module names of the MLP
differ (CLIP: fc1 / fc2; HuBERT: intermediate_dense / output_dense), so `Mlp` takes them as
fields. Each block reads the fields its config needs: hidden_size, num_attention_heads,
head_dim, intermediate_size, hidden_act, layer_norm_eps, dtype and param_dtype.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from affect_jax import sharding

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def dense(features: int, axes: tuple[str | None, str | None], cfg: Any, name: str,
          use_bias: bool = True) -> nn.Dense:
  """nn.Dense in the config's dtypes, kernel and bias carrying logical axis names."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype), name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(cfg: Any, name: str, eps: float | None = None) -> nn.LayerNorm:
  """torch-style LayerNorm (exact variance) in the config's dtypes; eps defaults to the config's."""
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps if eps is None else eps, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype), use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


class SelfAttention(nn.Module):
  """Bidirectional multi-head self-attention with biased q/k/v/out projections (no mask)."""
  config: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, D] -> float[B, T, D]."""
    cfg = self.config
    b, t, _ = x.shape
    split = lambda y: sharding.constrain(
        y.reshape(b, t, cfg.num_attention_heads, cfg.head_dim),
        ("batch", "length", "heads", "head_dim"))
    q = split(dense(cfg.hidden_size, ("embed", "heads"), cfg, "q_proj")(x))
    k = split(dense(cfg.hidden_size, ("embed", "heads"), cfg, "k_proj")(x))
    v = split(dense(cfg.hidden_size, ("embed", "heads"), cfg, "v_proj")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (cfg.head_dim ** -0.5)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, cfg.hidden_size)
    return dense(cfg.hidden_size, ("heads", "embed"), cfg, "out_proj")(out)


class Mlp(nn.Module):
  """Dense(intermediate) -> activation -> Dense(hidden); `names` are the two layers' names."""
  config: Any
  names: tuple[str, str] = ("fc1", "fc2")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, D] -> float[B, T, D]."""
    cfg = self.config
    h = dense(cfg.intermediate_size, ("embed", "mlp"), cfg, self.names[0])(x)
    h = sharding.constrain(ACTIVATIONS[cfg.hidden_act](h), ("batch", "length", "mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), cfg, self.names[1])(h)
