"""HuBERT audio encoder (frozen): waveform -> every hidden state, and AffectGPT's audio feature.

Follows transformers' HubertModel in eval mode: convolutional feature encoder ('group': group
norm on the first conv layer only; 'layer': layer norm on every conv layer), feature projection
(optional layer norm, Linear), convolutional positional embedding with weight norm, then either
post-LN layers after an encoder layer norm (do_stable_layer_norm=False, hubert-base style) or
pre-LN layers followed by a final layer norm (do_stable_layer_norm=True, hubert-large style).

No attention mask and no SpecAugment masking: every waveform of a batch has the same length
(AffectGPT's fixed 2 s windows, zero-padded), which is how the base checkpoints were run
(their feature extractors return no attention mask). `masked_spec_embed` is kept as a parameter
only so that HF -> project -> HF is lossless; the forward pass does not use it.

The positional convolution keeps weight norm's (g, v) as parameters and computes
w = g * v / ||v|| in the forward pass, so the HF tensors round-trip bit for bit.

Parameter tree (`params` of `Hubert.init`; L layers, D hidden, C_i conv_dim, K / G positional
kernel / groups, F intermediate):
  feature_extractor/conv_layers_{i}/conv/{kernel [k_i, C_{i-1}, C_i], bias [C_i] if conv_bias}
  feature_extractor/conv_layers_{i}/layer_norm/{scale, bias} [C_i]  ('group': i = 0 only)
  feature_projection/layer_norm/{scale, bias} [C_last]               (if feat_proj_layer_norm)
  feature_projection/projection/{kernel [C_last, D], bias [D]}
  masked_spec_embed [D]                                  (if mask_time_prob or mask_feature_prob)
  encoder/pos_conv_embed/{weight_g [K], weight_v [K, D / G, D], bias [D]}
  encoder/layer_norm/{scale, bias} [D]
  encoder/layers/attention/{q,k,v,out}_proj/{kernel [L, D, D], bias [L, D]}
  encoder/layers/layer_norm/{scale, bias} [L, D]
  encoder/layers/feed_forward/intermediate_dense/{kernel [L, D, F], bias [L, F]}
  encoder/layers/feed_forward/output_dense/{kernel [L, F, D], bias [L, D]}
  encoder/layers/final_layer_norm/{scale, bias} [L, D]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from affect_jax import config_dataclass
from affect_jax import sharding
from affect_jax.models import encoder_blocks as blocks

HF_MODEL_TYPE = "hubert"
# torch LayerNorm / GroupNorm default, used by the conv feature encoder's norms.
_CONV_NORM_EPS = 1e-5
_PROJECT_ONLY = ("dtype", "param_dtype", "remat")
_TUPLES = ("conv_dim", "conv_stride", "conv_kernel")


@dataclasses.dataclass(frozen=True)
class HubertConfig:
  """HuBERT encoder; field names and defaults follow HF HubertConfig (hubert-base).

  mask_time_prob / mask_feature_prob matter only for whether the checkpoint has a
  masked_spec_embed. dtype is the compute dtype, param_dtype the parameter dtype; remat
  recomputes each transformer layer in the backward pass.
  """
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5
  feat_extract_norm: str = "group"
  feat_extract_activation: str = "gelu"
  feat_proj_layer_norm: bool = True
  conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_bias: bool = False
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  do_stable_layer_norm: bool = False
  mask_time_prob: float = 0.05
  mask_feature_prob: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    for name in _TUPLES:
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "num_conv_pos_embeddings", "num_conv_pos_embedding_groups"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"HubertConfig.{name}={value!r}: must be a positive int.")
    if not self.conv_dim or len({len(self.conv_dim), len(self.conv_stride),
                                 len(self.conv_kernel)}) != 1:
      raise ValueError(f"HubertConfig conv_dim={list(self.conv_dim)}, conv_stride="
                       f"{list(self.conv_stride)}, conv_kernel={list(self.conv_kernel)}: need "
                       "one entry per conv layer in each (same non-zero length).")
    if min(self.conv_dim + self.conv_stride + self.conv_kernel) <= 0:
      raise ValueError("HubertConfig conv_dim / conv_stride / conv_kernel entries must be > 0.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"HubertConfig.hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}.")
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f"HubertConfig.hidden_size={self.hidden_size} is not divisible by "
                       f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}.")
    if self.feat_extract_norm not in ("group", "layer"):
      raise ValueError(f"HubertConfig.feat_extract_norm={self.feat_extract_norm!r}: use "
                       "'group' or 'layer'.")
    for name in ("hidden_act", "feat_extract_activation"):
      if getattr(self, name) not in blocks.ACTIVATIONS:
        raise ValueError(f"HubertConfig.{name}={getattr(self, name)!r}: unsupported; use one "
                         f"of {sorted(blocks.ACTIVATIONS)}.")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError:
        raise ValueError(f"HubertConfig.{name}={getattr(self, name)!r}: not a dtype name "
                         "(use e.g. 'float32' or 'bfloat16').") from None

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def has_masked_spec_embed(self) -> bool:
    return self.mask_time_prob > 0 or self.mask_feature_prob > 0

  @property
  def min_samples(self) -> int:
    """Shortest waveform that yields one frame (the conv encoder's receptive field)."""
    n = 1
    for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
      n = (n - 1) * s + k
    return n

  def num_frames(self, num_samples: int) -> int:
    """T for a waveform of S samples (16 kHz -> 50 frames per second for the HF layout)."""
    t = num_samples
    for k, s in zip(self.conv_kernel, self.conv_stride):
      t = (t - k) // s + 1
    return max(t, 0)

  @classmethod
  def from_dict(cls, mapping: Mapping[str, Any]) -> "HubertConfig":
    """From a plain mapping of this class's fields (e.g. a config file section)."""
    return config_dataclass.build(cls, mapping, name="HubertConfig")

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> "HubertConfig":
    """From an HF HuBERT config.json dict; `overrides` set dtype, param_dtype, remat."""
    model_type = hf.get("model_type")
    if model_type != HF_MODEL_TYPE:
      raise ValueError(
          f"config.json has model_type={model_type!r}, architectures="
          f"{list(hf.get('architectures') or [])}: not a HuBERT model. Use a HubertModel "
          "checkpoint (e.g. TencentGameMate/chinese-hubert-large).")
    if hf.get("conv_pos_batch_norm"):
      raise ValueError("config.json conv_pos_batch_norm=true: batch-normed positional "
                       "convolutions are not supported (HuBERT checkpoints use weight norm).")
    if hf.get("adapter_attn_dim") is not None:
      raise ValueError(f"config.json adapter_attn_dim={hf['adapter_attn_dim']}: attention "
                       "adapters are not supported; use a checkpoint without adapters.")
    layers = hf.get("num_feat_extract_layers")
    if layers is not None and layers != len(hf.get("conv_dim", cls.conv_dim)):
      raise ValueError(f"config.json num_feat_extract_layers={layers} but conv_dim has "
                       f"{len(hf.get('conv_dim', cls.conv_dim))} entries.")
    fields = {f.name: hf[f.name] for f in dataclasses.fields(cls)
              if f.name in hf and f.name not in _PROJECT_ONLY}
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """config.json of an HF HubertModel (what transformers loads)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in _PROJECT_ONLY}
    for name in _TUPLES:
      out[name] = list(out[name])
    out.update(architectures=["HubertModel"], model_type=HF_MODEL_TYPE,
               num_feat_extract_layers=len(self.conv_dim), conv_pos_batch_norm=False,
               dtype=self.param_dtype)
    return out


class _ConvLayer(nn.Module):
  """One conv layer of the feature encoder: Conv1d (VALID) -> [norm] -> activation."""
  config: HubertConfig
  index: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, S_in, C_in] -> float[B, S_out, C_out]."""
    cfg, i = self.config, self.index
    x = nn.Conv(
        cfg.conv_dim[i], kernel_size=(cfg.conv_kernel[i],), strides=(cfg.conv_stride[i],),
        padding="VALID", use_bias=cfg.conv_bias, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), name="conv",
        kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(),
                                                 ("kernel", "conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)))(x)
    norm_kwargs = dict(
        epsilon=_CONV_NORM_EPS, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), use_fast_variance=False, name="layer_norm",
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))
    if cfg.feat_extract_norm == "layer":
      x = nn.LayerNorm(**norm_kwargs)(x)
    elif i == 0:  # 'group': one group per channel, normalised over time, first layer only
      x = nn.GroupNorm(num_groups=cfg.conv_dim[0], **norm_kwargs)(x)
    return blocks.ACTIVATIONS[cfg.feat_extract_activation](x)


class _FeatureEncoder(nn.Module):
  """The conv stack: raw samples -> frames (HF HubertFeatureEncoder)."""
  config: HubertConfig

  @nn.compact
  def __call__(self, waveform: jax.Array) -> jax.Array:
    """waveform: float[B, S] -> features float[B, T, conv_dim[-1]]."""
    cfg = self.config
    x = waveform.astype(jnp.dtype(cfg.dtype))[..., None]
    for i in range(len(cfg.conv_dim)):
      x = _ConvLayer(cfg, i, name=f"conv_layers_{i}")(x)
    return sharding.constrain(x, ("batch", "length", None))


class _FeatureProjection(nn.Module):
  """[LayerNorm] -> Linear from conv channels to the model width (HF HubertFeatureProjection)."""
  config: HubertConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, conv_dim[-1]] -> float[B, T, D]."""
    cfg = self.config
    if cfg.feat_proj_layer_norm:
      x = blocks.layer_norm(cfg, "layer_norm")(x)
    x = blocks.dense(cfg.hidden_size, ("conv_out", "embed"), cfg, "projection")(x)
    return sharding.constrain(x, ("batch", "length", "embed"))


class _PositionalConvEmbedding(nn.Module):
  """Grouped 'same' Conv1d over time with weight norm (dim = kernel taps), then activation."""
  config: HubertConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, D] -> float[B, T, D]."""
    cfg = self.config
    k, groups, d = (cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups,
                    cfg.hidden_size)
    param_dtype, dtype = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
    v = self.param("weight_v", nn.with_logical_partitioning(
        nn.initializers.he_normal(), ("kernel", "conv_in", "embed")), (k, d // groups, d),
                   param_dtype)
    g = self.param("weight_g", nn.with_logical_partitioning(
        nn.initializers.ones_init(), ("kernel",)), (k,), param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("embed",)), (d,), param_dtype)
    v32 = v.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(v32 * v32, axis=(1, 2), keepdims=True))  # torch norm_except_dim(2)
    w = (g.astype(jnp.float32)[:, None, None] * v32 / norm).astype(dtype)
    # torch pads k // 2 on both sides and, for even k, drops the last output frame.
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), w, window_strides=(1,), padding=[(k // 2, k // 2 - 1 + k % 2)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)
    return blocks.ACTIVATIONS[cfg.feat_extract_activation](y + bias.astype(dtype))


class _EncoderLayer(nn.Module):
  """HubertEncoderLayer (post-LN) or HubertEncoderLayerStableLayerNorm (pre-LN).

  Scan body: returns (output, output) so the scan also stacks every layer's output.
  """
  config: HubertConfig

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    attention = blocks.SelfAttention(cfg, name="attention")
    feed_forward = blocks.Mlp(cfg, ("intermediate_dense", "output_dense"), name="feed_forward")
    attention_norm = blocks.layer_norm(cfg, "layer_norm")
    final_layer_norm = blocks.layer_norm(cfg, "final_layer_norm")
    if cfg.do_stable_layer_norm:
      x = x + attention(attention_norm(x))
      x = x + feed_forward(final_layer_norm(x))
    else:
      x = attention_norm(x + attention(x))
      x = final_layer_norm(x + feed_forward(x))
    x = sharding.constrain(x, ("batch", "length", "embed"))
    return x, x


class _Encoder(nn.Module):
  config: HubertConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, D] projected features -> hidden states float[L + 1, B, T, D]."""
    cfg = self.config
    x = x + _PositionalConvEmbedding(cfg, name="pos_conv_embed")(x)
    if not cfg.do_stable_layer_norm:
      x = blocks.layer_norm(cfg, "layer_norm")(x)
    layer = nn.remat(_EncoderLayer, prevent_cse=False) if cfg.remat else _EncoderLayer
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=cfg.num_hidden_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    last, outputs = stack(cfg, name="layers")(x, None)
    if cfg.do_stable_layer_norm:
      last = blocks.layer_norm(cfg, "layer_norm")(last)
      outputs = jnp.concatenate([outputs[:-1], last[None]], axis=0)
    return jnp.concatenate([x[None], outputs], axis=0)


class Hubert(nn.Module):
  """HuBERT encoder returning every hidden state (frozen audio encoder of AffectGPT)."""
  config: HubertConfig

  @nn.compact
  def __call__(self, waveform: jax.Array) -> jax.Array:
    """All hidden states of the transformer encoder.

    Args:
      waveform: float[B, S], 16 kHz mono as the HF feature extractor returns it (normalised if
        the checkpoint's processor does so); for K windows per clip pass [B * K, S]. All rows
        share S (no attention mask); S >= config.min_samples.

    Returns:
      hidden_states: float[L + 1, B, T, D], T = config.num_frames(S). Entry 0 is the input of
      layer 0 (after the positional convolution and, for post-LN, the encoder layer norm);
      entry l is the output of layer l. For do_stable_layer_norm the last entry has the final
      encoder layer norm applied: entries 0..L-1 equal transformers' HubertModel hidden_states
      and entry L its last_hidden_state (transformers 4.x returned exactly this tuple as
      hidden_states; 5.x leaves the final layer norm off hidden_states[-1]).
    """
    cfg = self.config
    if waveform.ndim != 2:
      raise ValueError(f"Hubert waveform has shape {tuple(waveform.shape)}; expected [B, S] "
                       "(reshape [B, K, S] windows to [B * K, S]).")
    if waveform.shape[1] < cfg.min_samples:
      raise ValueError(f"Hubert waveform has {waveform.shape[1]} samples; need at least "
                       f"config.min_samples={cfg.min_samples} (zero-pad short clips).")
    x = _FeatureEncoder(cfg, name="feature_extractor")(waveform)
    x = _FeatureProjection(cfg, name="feature_projection")(x)
    if cfg.has_masked_spec_embed:  # training-only (SpecAugment); kept for lossless export
      self.param("masked_spec_embed", nn.with_logical_partitioning(
          nn.initializers.uniform(1.0), ("embed",)), (cfg.hidden_size,),
                 jnp.dtype(cfg.param_dtype))
    return _Encoder(cfg, name="encoder")(x)


def audio_features(hidden_states: jax.Array, num_layers_avg: int = 4) -> jax.Array:
  """AffectGPT's per-window audio feature: time-mean of the mean of the last hidden layers.

  Args:
    hidden_states: float[L + 1, B, T, D] from `Hubert`.
    num_layers_avg: how many of the last hidden states to average (4 in the paper).

  Returns:
    float[B, D] (accumulated in float32, returned in the input dtype).
  """
  if hidden_states.ndim != 4:
    raise ValueError(f"audio_features hidden_states have shape {tuple(hidden_states.shape)}; "
                     "expected [L + 1, B, T, D] as Hubert returns them.")
  if not 1 <= num_layers_avg <= hidden_states.shape[0]:
    raise ValueError(f"audio_features num_layers_avg={num_layers_avg}: must be in "
                     f"[1, {hidden_states.shape[0]}] (the number of hidden states).")
  last = hidden_states[-num_layers_avg:].astype(jnp.float32)
  return jnp.mean(last, axis=(0, 2)).astype(hidden_states.dtype)


def abstract_params(config: HubertConfig) -> Any:
  """Boxed (LogicallyPartitioned) jax.ShapeDtypeStruct tree of `params`; allocates nothing."""
  waveform = jax.ShapeDtypeStruct((1, config.min_samples), jnp.float32)
  return jax.eval_shape(Hubert(config).init, jax.random.key(0), waveform)["params"]


def param_count(config: HubertConfig) -> int:
  """Number of parameters (computed abstractly, no weights allocated)."""
  return sum(int(x.size) for x in jax.tree.leaves(sharding.unbox(abstract_params(config))))
