"""Grouped-query attention: one entry point, `attend`, with named implementations.

Shapes: B batch, T queries, S key/value slots, N query heads, K key/value heads (N % K == 0;
query head n reads kv head n // (N // K), HF's repeat_kv), D head width.

Implementations (Qwen2Config.attention_impl; every one computes the same function, softmax in
float32, output in v's dtype):
  "reference"  plain einsum over (batch, kv head) pairs + masked softmax: the definition the others
               are tested against, and the layout tensor parallelism shards on heads.
  "xla"        jax.nn.dot_product_attention(implementation="xla").
  "cudnn"      jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused attention,
               GPU only, for float16 / bfloat16 and the head widths cuDNN supports.
  "cpu_tuned"  kernels laid out for XLA:CPU, picked inside from the shapes (`_cpu_tuned`).
  "auto"       "cpu_tuned" when jax.default_backend() is "cpu", "xla" on GPU and TPU.

Masks are boolean [B, T, S] (True = may attend), built once per forward by `causal_mask` (no
cache) or `cache_mask` (static KV cache) and shared by every layer. A query row whose mask is all
False (a padding token) gets finite values the caller ignores.

Key/value layouts (`CACHE_LAYOUTS`):
  "bskd"    k and v [B, S, K, D]: the projections' layout and the model's public cache.
  "decode"  k [B, K, D, S] (keys transposed), v [B, K, S, D]: what a CPU decode loop carries,
            so single-token attention reads each layer's cache in place (`_decode_in_place`).
`decode_layout(impl)` says which one a decode loop should carry for an implementation;
`update_cache` writes new keys / values into a cache of either layout.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "reference", "xla", "cudnn", "cpu_tuned")
CACHE_LAYOUTS = ("bskd", "decode")
# Logical axis names of one layer's cache arrays, per layout.
CACHE_AXES = {
    "bskd": {"k": ("batch", "kv_length", "kv_heads", "head_dim"),
             "v": ("batch", "kv_length", "kv_heads", "head_dim")},
    "decode": {"k": ("batch", "kv_heads", "head_dim", "kv_length"),
               "v": ("batch", "kv_heads", "kv_length", "head_dim")},
}
# Axis permutations from the "bskd" layout to the "decode" one, and back.
TO_DECODE = {"k": (0, 2, 3, 1), "v": (0, 2, 1, 3)}
FROM_DECODE = {"k": (0, 3, 1, 2), "v": (0, 2, 1, 3)}
# cpu_tuned: single-token decode attends a [B, S, K, D] cache as flat rows while the wasted
# cross-kv-head scores (K - 1 of every K) stay this small.
FLAT_MAX_KV_HEADS = 4


def check_impl(impl: str) -> None:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl={impl!r}: use one of {IMPLEMENTATIONS}.")


def check_layout(layout: str) -> None:
  if layout not in CACHE_LAYOUTS:
    raise ValueError(f"cache layout {layout!r}: use one of {CACHE_LAYOUTS}.")


def resolve(impl: str) -> str:
  """The implementation `impl` names ("auto" by jax.default_backend(), at trace time)."""
  check_impl(impl)
  if impl != "auto":
    return impl
  return "cpu_tuned" if jax.default_backend() == "cpu" else "xla"


def decode_layout(impl: str) -> str:
  """The cache layout a decode loop should carry for `impl`."""
  return "decode" if resolve(impl) == "cpu_tuned" else "bskd"


def _permute(x: jax.Array, layout: str, axes: tuple) -> jax.Array:
  """x's last 4 axes permuted by `axes` unless layout is "bskd" (leading axes kept)."""
  check_layout(layout)
  if layout == "bskd":
    return x
  lead = tuple(range(x.ndim - 4))
  return x.transpose(lead + tuple(len(lead) + a for a in axes))


def to_layout(name: str, x: jax.Array, layout: str) -> jax.Array:
  """A "bskd" cache array ('k' or 'v', [..., B, S, K, D] batched over leading axes) in `layout`."""
  return _permute(x, layout, TO_DECODE[name])


def from_layout(name: str, x: jax.Array, layout: str) -> jax.Array:
  """The inverse of to_layout."""
  return _permute(x, layout, FROM_DECODE[name])


def causal_mask(attention_mask: jax.Array | None, batch: int, length: int) -> jax.Array:
  """bool[B, T, T] for a forward without cache: key valid (attention_mask[b, s]) and s <= t.

  attention_mask: bool[B, T] (True = real token) or None (all real). Left and right padding both
  work.
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


def update_cache(cache: dict, k: jax.Array, v: jax.Array, cache_index: jax.Array,
                 layout: str, constrain: Callable) -> dict:
  """Writes k, v float[B, T, K, D] at slots [cache_index, cache_index + T) of one layer's cache.

  cache: {'k', 'v'} in `layout`; the result keeps it (and the cache's dtype). `constrain(x, axes)`
  places each updated array (sharding.constrain).
  """
  check_layout(layout)
  out = {}
  for name, new in (("k", k), ("v", v)):
    new = to_layout(name, new, layout).astype(cache[name].dtype)
    slot_axis = CACHE_AXES[layout][name].index("kv_length")
    start = tuple(cache_index if a == slot_axis else 0 for a in range(4))
    out[name] = constrain(lax.dynamic_update_slice(cache[name], new, start),
                          CACHE_AXES[layout][name])
  return out


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


def _softmax_rows(scores: jax.Array, mask: jax.Array, dtype) -> jax.Array:
  """Masked softmax over the last axis in float32, cast to `dtype`."""
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _reference(q, k, v, mask):
  """One einsum over (batch, kv head) pairs; k, v [B, S, K, D]."""
  b, t, n, d = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, n // kv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  probs = _softmax_rows(scores * (d ** -0.5), mask[:, None, None], v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, n, d)


def _jax_nn(implementation: str):
  def attend_(q, k, v, mask):
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None],
                                       implementation=implementation)
    return out.astype(v.dtype)
  return attend_


def _per_kv_head(q, k, v, mask):
  """A static loop over the K kv heads, each a plain matmul batched over B; k, v [B, S, K, D].

  Query rows (t, g) of kv head j are read straight from q's [B, T, N, D] layout and only the kv
  head's own K and V columns are gathered: XLA:CPU runs single-batch-dim matmuls (forward and
  backward) well, and the two-batch-dim einsum of `_reference` poorly.
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


def _flat(q, k, v, mask, num_kv_heads):
  """Every query head against every (slot, kv head) row of a flat [B, S*K, D] cache.

  k, v: float[B, S*K, D], row s*K + j holding slot s of kv head j (the [B, S, K, D] layout seen
  as 3-D). Rows of a foreign kv head are masked out before the softmax (probability exactly 0),
  so the result is the grouped attention's; the K-fold extra score work buys reading K and V in
  place with no copy or transpose, the right trade for memory-bound single-token decode.
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


def _decode_in_place(q, k_t, v, mask):
  """Single-token attention over a "decode"-layout cache: k_t [B, K, D, S], v [B, K, S, D].

  The scores are a multiply-reduce over D with S contiguous (vectorised along the slots; each kv
  head's keys are read once for its G query heads) and the weighted sum one batched matmul with
  no transposed operand.
  """
  b, _, n, d = q.shape
  kv = k_t.shape[1]
  g = n // kv
  qs = q.reshape(b, kv, g, d, 1).astype(jnp.float32) * (d ** -0.5)
  scores = jnp.sum(qs * k_t[:, :, None].astype(jnp.float32), axis=3)          # [B, K, G, S]
  probs = _softmax_rows(scores, mask[:, :, None], v.dtype)
  out = jnp.einsum("bkgs,bksd->bkgd", probs, v)
  return out.reshape(b, 1, n, d)


def _cpu_tuned(q, k, v, mask, layout):
  """The XLA:CPU kernels, picked from the shapes and the layout.

  A "decode"-layout cache is read in place for one query token (`_decode_in_place`) and
  transposed back for more. Under a mesh that splits kv heads over devices, the head-batched
  `_reference` einsum; single-token decode with 2..FLAT_MAX_KV_HEADS kv heads, `_flat`;
  otherwise the per-kv-head loop.
  """
  if layout == "decode":
    if q.shape[1] == 1:
      return _decode_in_place(q, k, v, mask)
    k, v = from_layout("k", k, layout), from_layout("v", v, layout)
  t, kv = q.shape[1], k.shape[2]
  if _kv_heads_split():
    return _reference(q, k, v, mask)
  if t == 1 and 1 < kv <= FLAT_MAX_KV_HEADS:
    b, s, _, d = k.shape
    return _flat(q, k.reshape(b, s * kv, d), v.reshape(b, s * kv, d), mask, kv)
  return _per_kv_head(q, k, v, mask)


_BSKD_IMPLS = {"reference": _reference, "xla": _jax_nn("xla"), "cudnn": _jax_nn("cudnn")}


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, impl: str = "auto",
           layout: str = "bskd") -> jax.Array:
  """Grouped-query attention of q over k, v, softmax in float32.

  Args:
    q: float[B, T, N, D] (rotary already applied).
    k, v: keys / values in `layout`: [B, S, K, D] each ("bskd"), or k [B, K, D, S] and
      v [B, K, S, D] ("decode").
    mask: bool[B, T, S] (`causal_mask` or `cache_mask`).
    impl: one of IMPLEMENTATIONS (static).
    layout: one of CACHE_LAYOUTS (static).

  Returns:
    float[B, T, N, D] in v's dtype.
  """
  check_layout(layout)
  impl = resolve(impl)
  if impl == "cpu_tuned":
    return _cpu_tuned(q, k, v, mask, layout)
  k, v = from_layout("k", k, layout), from_layout("v", v, layout)
  return _BSKD_IMPLS[impl](q, k, v, mask)
