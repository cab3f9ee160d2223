"""Qwen2 / Qwen2.5 decoder language model with LoRA and a static KV cache.

Public API:
  Qwen2Config                 frozen dataclass, HF field names + dtype, param_dtype, remat,
                              remat_policy, attention_impl, lora (LoraConfig)
    .from_hf(hf_config: dict, **overrides) -> Qwen2Config     validates a HF config.json
    .to_hf() -> dict                                          config.json for transformers
    .from_dict(mapping) -> Qwen2Config                        plain dict / ml_collections
  Qwen2(config)               flax.linen module
    __call__(tokens=None, *, embeds=None, positions, attention_mask=None, cache=None,
             cache_index=None, kv_mask=None, use_lora=True, deterministic=True,
             return_hidden=False) -> (logits float32[B, T, V] | hidden float[B, T, H], cache | None)
    embed(tokens int32[B, T]) -> float[B, T, H]          model.apply(v, t, method=Qwen2.embed)
    logits(hidden float[B, T, H]) -> float32[B, T, V]    model.apply(v, h, method=Qwen2.logits)
  init_cache(config, batch, max_len, dtype=None) -> {'k', 'v'}: [L, B, S, K, D]
  CACHE_AXES                  logical names of the cache arrays (for shardings)
  positions_from_mask(mask bool[B, T]) -> int32[B, T]   rotary positions of a padded batch
  continuation_positions(positions int32[B, P], n) -> int32[B, n]   the n tokens after a prompt
  init_params(config, rng) -> params;  abstract_params(config) -> boxed ShapeDtypeStructs
  param_count(config, include_lora=False) -> int        computed abstractly (no allocation)

Calling conventions. Variables are `{'params': params}`. Without a cache, `attention_mask`
(bool[B, T], True = real token) plus causality masks the attention; left or right padding both
work when `positions` are per row (see positions_from_mask). With a cache (from init_cache), the
T new tokens' keys/values are written at slots [cache_index, cache_index + T) of every row and
each new token attends slots s with kv_mask[b, s] and s <= cache_index + t; the caller keeps
kv_mask (bool[B, S]) True for every slot holding a real token, the new ones included. The same
call does prefill (T = prompt length, cache_index 0) and decode (T = 1); cache_index is a traced
int32 scalar, so one compiled step serves a whole lax.while_loop.

Decode loops run the same DecoderLayer layer by layer through models/decode.py (its docstring
says why).

`use_lora` and `deterministic` are static Python bools: use_lora=False runs the base model on the
same parameters (LoRA skipped); deterministic=False enables LoRA dropout (rng 'dropout').

Parameter tree (L = num_hidden_layers; logical axis names in parentheses):
  embed_tokens/embedding                 [V, H]            (vocab, embed)
  layers/input_layernorm/scale           [L, H]            (layers, norm)
  layers/self_attn/q_proj/kernel, bias   [L, H, N*D], [L, N*D]   (layers, embed, heads)
  layers/self_attn/k_proj|v_proj/kernel, bias  [L, H, K*D], [L, K*D]  (layers, embed, kv_heads)
  layers/self_attn/o_proj/kernel         [L, N*D, H]       (layers, heads, embed)
  layers/post_attention_layernorm/scale  [L, H]            (layers, norm)
  layers/mlp/gate_proj|up_proj/kernel    [L, H, F]         (layers, embed, mlp)
  layers/mlp/down_proj/kernel            [L, F, H]         (layers, mlp, embed)
  layers/.../<proj>/lora_a, lora_b       [L, in, r], [L, r, out]  (layers, <in>, lora), ...
  norm/scale                             [H]               (norm)
  lm_head/kernel                         [H, V]            (embed, vocab); untied only
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from affect_jax import config_dataclass
from affect_jax import sharding
from affect_jax.errors import CheckpointError
from affect_jax.models import attention
from affect_jax.models import layers
from affect_jax.models import lora as lora_lib

CACHE_AXES = ("layers", "batch", "kv_length", "kv_heads", "head_dim")
ARCHITECTURES = ("Qwen2ForCausalLM",)
MODEL_TYPE = "qwen2"
_DTYPES = ("float32", "bfloat16", "float16")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")


def _dtype_name(value: Any, field: str) -> str:
  name = jnp.dtype(value).name if not isinstance(value, str) else value
  if name not in _DTYPES:
    raise ValueError(f"Qwen2Config.{field}={value!r}: use one of {_DTYPES}.")
  return name


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  """Architecture (HF names) plus how this project runs it.

  num_key_value_heads defaults to num_attention_heads and head_dim to
  hidden_size // num_attention_heads. dtype is the compute dtype, param_dtype the storage dtype
  ('float32', 'bfloat16' or 'float16'). remat recomputes each layer in the backward pass with
  jax.checkpoint_policies.<remat_policy>. attention_impl names the attention implementation
  (models/attention.py).
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  initializer_range: float = 0.02
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  # Which attention implementation runs (attention.IMPLEMENTATIONS): "auto" = "cpu_tuned" on
  # CPU, jax.nn.dot_product_attention ("xla") on GPU / TPU; "cudnn" opts into cuDNN's fused
  # attention (GPU, float16 / bfloat16).
  attention_impl: str = "auto"
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    for name in _REQUIRED:
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"Qwen2Config.{name}={getattr(self, name)}: must be positive.")
    if self.num_key_value_heads is None:
      set_("num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      if self.hidden_size % self.num_attention_heads:
        raise ValueError(f"Qwen2Config: hidden_size={self.hidden_size} is not divisible by "
                         f"num_attention_heads={self.num_attention_heads}; set head_dim.")
      set_("head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"Qwen2Config: num_attention_heads={self.num_attention_heads} is not a "
                       f"multiple of num_key_value_heads={self.num_key_value_heads}.")
    if self.head_dim % 2:
      raise ValueError(f"Qwen2Config.head_dim={self.head_dim}: rotary needs an even head_dim.")
    set_("dtype", _dtype_name(self.dtype, "dtype"))
    set_("param_dtype", _dtype_name(self.param_dtype, "param_dtype"))
    if not hasattr(jax.checkpoint_policies, self.remat_policy):
      raise ValueError(f"Qwen2Config.remat_policy={self.remat_policy!r} is not a "
                       "jax.checkpoint_policies name (e.g. 'nothing_saveable', "
                       "'dots_with_no_batch_dims_saveable').")
    if self.attention_impl not in attention.IMPLEMENTATIONS:
      raise ValueError(f"Qwen2Config.attention_impl={self.attention_impl!r}: use one of "
                       f"{attention.IMPLEMENTATIONS}.")
    if isinstance(self.eos_token_id, list):
      set_("eos_token_id", tuple(self.eos_token_id))
    if not isinstance(self.lora, lora_lib.LoraConfig):
      set_("lora", lora_lib.LoraConfig.from_dict(self.lora))
    unknown = [t for t in self.lora.targets if t not in lora_lib.DEFAULT_TARGETS]
    if unknown:
      raise ValueError(f"Qwen2Config.lora.targets: {unknown} are not Qwen2 projections; use "
                       f"names from {lora_lib.DEFAULT_TARGETS}.")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_dict(cls, mapping: Mapping[str, Any]) -> "Qwen2Config":
    """From a plain dict or an ml_collections ConfigDict (lora may be a nested mapping)."""
    return config_dataclass.build(cls, mapping, name="Qwen2 config", required=_REQUIRED)

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "Qwen2Config":
    """Validates a HF config.json dict of a Qwen2ForCausalLM; `overrides` set other fields.

    Raises CheckpointError naming the offending field: another architecture or model_type,
    missing size fields, rope scaling (only plain rope is implemented), an activation other than
    silu, sliding-window attention, or an unsupported dtype.
    """
    archs = hf.get("architectures") or []
    if archs and not any(a in ARCHITECTURES for a in archs):
      raise CheckpointError(f"config.json 'architectures'={archs}: not a Qwen2 causal LM; "
                            f"this converter handles {list(ARCHITECTURES)}.")
    if hf.get("model_type", MODEL_TYPE) != MODEL_TYPE:
      raise CheckpointError(f"config.json 'model_type'={hf['model_type']!r}: expected "
                            f"'{MODEL_TYPE}'.")
    missing = [k for k in _REQUIRED if hf.get(k) is None]
    if missing:
      raise CheckpointError(f"config.json lacks required fields {missing}.")
    if hf.get("rope_scaling") is not None:
      raise CheckpointError(f"config.json 'rope_scaling'={hf['rope_scaling']!r}: only plain "
                            "rotary embeddings are implemented; set it to null.")
    theta = hf.get("rope_theta")
    rope = hf.get("rope_parameters")
    if rope is not None:
      kind = rope.get("rope_type", rope.get("type", "default"))
      if kind != "default":
        raise CheckpointError(f"config.json 'rope_parameters'.rope_type={kind!r}: only "
                              "'default' rotary embeddings are implemented.")
      theta = rope.get("rope_theta", theta)
    if hf.get("hidden_act", "silu") != "silu":
      raise CheckpointError(f"config.json 'hidden_act'={hf['hidden_act']!r}: Qwen2 uses silu.")
    if hf.get("use_sliding_window", False):
      raise CheckpointError("config.json 'use_sliding_window'=true: sliding-window attention is "
                            "not implemented; set it to false.")
    dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    if dtype not in _DTYPES:
      raise CheckpointError(f"config.json 'torch_dtype'={dtype!r}: use one of {_DTYPES}.")
    values = {k: hf[k] for k in _REQUIRED}
    for k in ("num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
              "max_position_embeddings", "initializer_range", "bos_token_id", "eos_token_id"):
      if hf.get(k) is not None:
        values[k] = hf[k]
    if theta is not None:
      values["rope_theta"] = float(theta)
    values.update(dtype=dtype, param_dtype=dtype)
    values.update(overrides)
    return cls(**values)

  def to_hf(self) -> dict:
    """config.json contents that transformers' Qwen2ForCausalLM loads."""
    out = {
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rope_theta": self.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "initializer_range": self.initializer_range,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": self.param_dtype,
    }
    if self.bos_token_id is not None:
      out["bos_token_id"] = self.bos_token_id
    if self.eos_token_id is not None:
      eos = self.eos_token_id
      out["eos_token_id"] = list(eos) if isinstance(eos, tuple) else eos
    return out


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).

  cache_layout: the layout of the layer cache it is called with (attention.CACHE_LAYOUTS): 'bskd'
  inside Qwen2, decode.py's choice in its decode loops. It changes no parameter.
  """
  config: Qwen2Config
  cache_layout: str = "bskd"

  @nn.compact
  def __call__(self, hidden, cache, cos, sin, mask, cache_index, use_lora, deterministic):
    """hidden: float[B, T, H]; cache: this layer's {'k', 'v'} or None. Returns (hidden, cache)."""
    c = self.config
    common = dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)
    init = nn.initializers.normal(c.initializer_range)
    flags = dict(use_lora=use_lora, deterministic=deterministic)
    h = layers.RMSNorm(c.rms_norm_eps, name="input_layernorm", **common)(hidden)
    h, cache = layers.Attention(
        c.num_attention_heads, c.num_key_value_heads, c.head_dim, lora=c.lora, kernel_init=init,
        attention_impl=c.attention_impl, cache_layout=self.cache_layout, name="self_attn",
        **common)(
            h, cos, sin, mask, cache, cache_index, **flags)
    hidden = sharding.constrain(hidden + h, ("batch", "length", "embed"))
    h = layers.RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **common)(hidden)
    h = layers.SwiGLU(c.intermediate_size, lora=c.lora, kernel_init=init, name="mlp",
                      **common)(h, **flags)
    return sharding.constrain(hidden + h, ("batch", "length", "embed")), cache


def _stacked_layers(config: Qwen2Config) -> type[nn.Module]:
  """DecoderLayer scanned over num_hidden_layers (params and cache get a leading layer axis)."""
  block = DecoderLayer
  if config.remat:
    block = nn.remat(block, prevent_cse=False, static_argnums=(7, 8),
                     policy=getattr(jax.checkpoint_policies, config.remat_policy))
  return nn.scan(block, variable_axes={"params": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast,
                          nn.broadcast, nn.broadcast),
                 length=config.num_hidden_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"})


class LMHead(nn.Module):
  """Untied output projection; logits accumulated in float32."""
  vocab_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init,
                                                               ("embed", "vocab")),
                        (hidden.shape[-1], self.vocab_size), self.param_dtype)
    # A 2-D matmul over [B*T, H]: flat projections, as in layers.py.
    lead = hidden.shape[:-1]
    out = jnp.dot(hidden.reshape(-1, hidden.shape[-1]).astype(self.dtype),
                  kernel.astype(self.dtype), preferred_element_type=jnp.float32)
    return out.reshape(lead + (self.vocab_size,))


class Qwen2(nn.Module):
  """Qwen2ForCausalLM in flax.linen (see the module docstring for the calling conventions)."""
  config: Qwen2Config

  def setup(self):
    c = self.config
    common = dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)
    init = nn.initializers.normal(c.initializer_range)
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size,
        embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")), **common)
    self.layers = _stacked_layers(c)(c)
    self.norm = layers.RMSNorm(c.rms_norm_eps, **common)
    if not c.tie_word_embeddings:
      self.lm_head = LMHead(c.vocab_size, kernel_init=init, **common)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """tokens: int32[B, T] -> float[B, T, H] token embeddings (compute dtype)."""
    return sharding.constrain(self.embed_tokens(tokens), ("batch", "length", "embed"))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden: float[B, T, H] (final-normed) -> float32[B, T, V]."""
    c = self.config
    if c.tie_word_embeddings:
      table = self.embed_tokens.embedding.astype(c.compute_dtype)
      lead = hidden.shape[:-1]
      out = jnp.einsum("mh,vh->mv", hidden.reshape(-1, hidden.shape[-1]).astype(c.compute_dtype),
                       table, preferred_element_type=jnp.float32).reshape(lead + (c.vocab_size,))
    else:
      out = self.lm_head(hidden)
    return sharding.constrain(out.astype(jnp.float32), ("batch", "length", "vocab"))

  def __call__(self, tokens: jax.Array | None = None, *, embeds: jax.Array | None = None,
               positions: jax.Array, attention_mask: jax.Array | None = None,
               cache: dict | None = None, cache_index: jax.Array | int | None = None,
               kv_mask: jax.Array | None = None, use_lora: bool = True,
               deterministic: bool = True, return_hidden: bool = False):
    """Runs the decoder on T new tokens.

    Args:
      tokens: int32[B, T] token ids, or None when `embeds` is given.
      embeds: float[B, T, H] input embeddings (e.g. token embeddings with modality embeddings
        spliced in); replaces the token lookup.
      positions: int32[B, T] rotary position of each token (per row).
      attention_mask: bool[B, T], True for real tokens (no-cache forward only; None = all real).
      cache: {'k', 'v'}: [L, B, S, K, D] from init_cache, or None for a plain forward.
      cache_index: int32 scalar, the slot the first new token is written to (with a cache).
      kv_mask: bool[B, S], True for slots holding real tokens, new ones included (with a cache).
      use_lora: static bool; False skips every LoRA update (the base model).
      deterministic: static bool; False enables LoRA dropout (needs rngs={'dropout': key}).
      return_hidden: static bool; return final-normed hidden float[B, T, H] instead of logits.

    Returns:
      (logits float32[B, T, V] or hidden, the updated cache or None).
    """
    c = self.config
    if (tokens is None) == (embeds is None):
      raise ValueError("Qwen2: pass exactly one of tokens (int32[B, T]) or embeds "
                       "(float[B, T, H]).")
    if embeds is not None:
      if embeds.ndim != 3 or embeds.shape[-1] != c.hidden_size:
        raise ValueError(f"Qwen2: embeds has shape {embeds.shape}; expected "
                         f"[B, T, {c.hidden_size}] (hidden_size).")
      x = sharding.constrain(embeds.astype(c.compute_dtype), ("batch", "length", "embed"))
    else:
      if tokens.ndim != 2:
        raise ValueError(f"Qwen2: tokens has shape {tokens.shape}; expected int32[B, T].")
      x = self.embed(tokens)
    b, t = x.shape[:2]
    if tuple(positions.shape) != (b, t):
      raise ValueError(f"Qwen2: positions has shape {tuple(positions.shape)}; expected "
                       f"[B, T] = {(b, t)}.")
    if cache is None:
      if cache_index is not None or kv_mask is not None:
        raise ValueError("Qwen2: cache_index / kv_mask were given without a cache; pass "
                         "cache=init_cache(...) or drop them (use attention_mask).")
      mask = attention.causal_mask(attention_mask, b, t)
    else:
      if cache_index is None or kv_mask is None:
        raise ValueError("Qwen2: with a cache, pass cache_index (int32 scalar) and kv_mask "
                         "(bool[B, S]).")
      if attention_mask is not None:
        raise ValueError("Qwen2: with a cache, mark real tokens in kv_mask, not attention_mask.")
      if tuple(kv_mask.shape) != (b, cache["k"].shape[2]):
        raise ValueError(f"Qwen2: kv_mask has shape {tuple(kv_mask.shape)}; expected "
                         f"[B, S] = {(b, cache['k'].shape[2])} (the cache length).")
      cache_index = jnp.asarray(cache_index, jnp.int32)
      mask = attention.cache_mask(kv_mask, cache_index, t)
    cos, sin = layers.rotary_tables(positions, c.head_dim, c.rope_theta)
    x, cache = self.layers(x, cache, cos, sin, mask, cache_index, use_lora, deterministic)
    x = self.norm(x)
    if return_hidden:
      return x, cache
    return self.logits(x), cache


def init_cache(config: Qwen2Config, batch: int, max_len: int, dtype: Any = None) -> dict:
  """Zeroed KV cache {'k', 'v'}: [L, B, max_len, K, D] (dtype default: the compute dtype)."""
  shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads,
           config.head_dim)
  dtype = config.compute_dtype if dtype is None else dtype
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """mask: bool[B, T] (True = real token) -> int32[B, T]: 0, 1, ... over the real tokens of
  each row (HF generate's position_ids for padded batches; pad slots get 0)."""
  mask = mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def continuation_positions(positions: jax.Array, length: int) -> jax.Array:
  """positions: int32[B, P] of left-padded prompts (positions_from_mask) -> int32[B, length]:
  the positions of the `length` tokens that follow each prompt."""
  return positions[:, -1:] + 1 + jnp.arange(length, dtype=jnp.int32)[None]


def _init_inputs():
  return jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)


def init_params(config: Qwen2Config, rng: jax.Array) -> dict:
  """Randomly initialised parameters (unboxed; LoRA b at zero)."""
  tokens, positions = _init_inputs()
  init = jax.jit(lambda key: Qwen2(config).init(key, tokens, positions=positions)["params"])
  return sharding.unbox(init(rng))


def abstract_params(config: Qwen2Config) -> dict:
  """The parameter tree as boxed jax.ShapeDtypeStructs (logical names kept); no allocation."""
  tokens, positions = _init_inputs()
  return jax.eval_shape(
      lambda: Qwen2(config).init(jax.random.key(0), tokens, positions=positions))["params"]


def param_count(config: Qwen2Config, include_lora: bool = False) -> int:
  """Number of parameters, computed abstractly (LoRA excluded unless include_lora)."""
  tree = abstract_params(config)
  if include_lora:
    return lora_lib.count(tree)
  mask = jax.tree.map(lambda m: not m, lora_lib.lora_mask(sharding.unbox(tree)))
  return lora_lib.count(tree, mask)
