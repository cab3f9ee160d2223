"""The decoder's cached forward layer by layer: Qwen2.__call__'s twin for decode loops.

  layer_params = unstack_layers(params)                     # once, outside the loop
  caches = split_cache(init_cache(config, B, S), layout)    # layout = cache_layout(config)
  logits, caches = decode_forward(config, params, layer_params, tokens, positions=...,
                                  caches=caches, cache_index=..., kv_mask=...)
  cache = stack_cache(caches, layout)                       # back to [L, B, S, K, D]

Why a twin: Qwen2.__call__ scans one DecoderLayer over the stacked [L, ...] weights and cache.
Inside a lax.while_loop, every step of that scan slices (copies) each layer's weights and cache
on XLA:CPU. decode_forward runs the same DecoderLayer (same parameters, same code) in a Python
loop over per-layer weights (`unstack_layers`, hoisted out of the loop) and per-layer caches
carried by the loop, so a step updates each cache in place and copies nothing. The per-layer
caches use the layout the attention implementation reads best (attention.decode_layout: the
transposed "decode" layout for "cpu_tuned", "bskd" otherwise). tests/models/test_decode.py checks
that both forwards agree.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from affect_jax import sharding
from affect_jax.models import attention
from affect_jax.models import layers
from affect_jax.models.qwen2 import DecoderLayer, Qwen2, Qwen2Config


def cache_layout(config: Qwen2Config) -> str:
  """The per-layer cache layout decode loops carry for this config's attention."""
  return attention.decode_layout(config.attention_impl)


def unstack_layers(params: Mapping) -> tuple[dict, ...]:
  """params['layers'] (leading layer axis L) -> L per-layer parameter trees (DecoderLayer's).

  Copies the layer weights once; call it outside a decode loop.
  """
  layers_ = params["layers"]
  num = jax.tree.leaves(layers_)[0].shape[0]
  return tuple(jax.tree.map(lambda x, i=i: x[i], layers_) for i in range(num))


def split_cache(cache: Mapping, layout: str = "bskd") -> tuple[dict, ...]:
  """{'k', 'v'}: [L, B, S, K, D] -> L per-layer caches {'k', 'v'} in `layout`
  (attention.CACHE_LAYOUTS; "decode" gives transposed copies)."""
  attention.check_layout(layout)
  return tuple({name: attention.to_layout(name, cache[name][i], layout) for name in ("k", "v")}
               for i in range(cache["k"].shape[0]))


def stack_cache(caches: tuple[Mapping, ...], layout: str = "bskd") -> dict:
  """The inverse of split_cache: L per-layer caches in `layout` -> {'k', 'v'}: [L, B, S, K, D]."""
  attention.check_layout(layout)
  return {name: jnp.stack([attention.from_layout(name, c[name], layout) for c in caches])
          for name in ("k", "v")}


def decode_forward(config: Qwen2Config, params: Mapping, layer_params: tuple[Mapping, ...],
                   tokens: jax.Array | None = None, *, embeds: jax.Array | None = None,
                   positions: jax.Array, caches: tuple[Mapping, ...], cache_index: jax.Array,
                   kv_mask: jax.Array, use_lora: bool = True, return_hidden: bool = False,
                   layout: str | None = None) -> tuple[jax.Array, tuple[dict, ...]]:
  """`Qwen2(config).apply({'params': params}, tokens, positions=..., cache=stack_cache(caches,
  layout), cache_index=..., kv_mask=...)` (deterministic), layer by layer.

  Args:
    params: the full parameter tree (its 'layers' entry is not read; it may be absent).
    layer_params: unstack_layers(params).
    tokens: int32[B, T], or embeds: float[B, T, H].
    positions: int32[B, T].
    caches: L per-layer caches {'k', 'v'} in `layout` (split_cache(cache, layout)).
    cache_index: int32 scalar, the slot of the first new token.
    kv_mask: bool[B, S], True for slots holding real tokens (new ones included).
    use_lora: static; False runs the base projections.
    return_hidden: static; return the final-normed hidden float[B, T, H] instead of logits.
    layout: static; the caches' layout (None = cache_layout(config)).

  Returns:
    (logits float32[B, T, V] or hidden, the updated per-layer caches, same layout).
  """
  c = config
  layout = cache_layout(c) if layout is None else layout
  attention.check_layout(layout)
  if len(layer_params) != c.num_hidden_layers or len(caches) != c.num_hidden_layers:
    raise ValueError(f"decode_forward: {len(layer_params)} layer params and {len(caches)} "
                     f"caches for a {c.num_hidden_layers}-layer model.")
  model = Qwen2(c)
  outer = {"params": {k: v for k, v in params.items() if k != "layers"}}
  if (tokens is None) == (embeds is None):
    raise ValueError("decode_forward: pass exactly one of tokens or embeds.")
  if embeds is None:
    x = model.apply(outer, tokens, method=Qwen2.embed)
  else:
    x = sharding.constrain(embeds.astype(c.compute_dtype), ("batch", "length", "embed"))
  t = x.shape[1]
  cache_index = jnp.asarray(cache_index, jnp.int32)
  mask = attention.cache_mask(kv_mask, cache_index, t)
  cos, sin = layers.rotary_tables(positions, c.head_dim, c.rope_theta)
  block = DecoderLayer(c, cache_layout=layout)
  new_caches = []
  for lp, cache in zip(layer_params, caches):
    x, cache = block.apply({"params": lp}, x, cache, cos, sin, mask, cache_index, use_lora, True)
    new_caches.append(cache)
  final = lambda m, h: m.norm(h) if return_hidden else m.logits(m.norm(h))
  return model.apply(outer, x, method=final), tuple(new_caches)
