"""CLIP ViT image tower: one projected image embedding per image (the frame feature of AffectGPT).

Computes exactly what transformers' `CLIPModel.get_image_features` (and
`CLIPVisionModelWithProjection(...).image_embeds`) return: patch convolution (no bias), class
token, learned position embeddings, `pre_layrnorm`, pre-LN transformer layers, `post_layernorm`
of the class token, then `visual_projection` (no bias).

The tower is frozen in AffectGPT, so it uses plain Flax Dense/LayerNorm/Conv; every parameter
carries logical axis names (see affect_jax/sharding.py) and the transformer layers are stacked
with nn.scan (one compiled layer, a leading 'layers' axis on each layer parameter).

Parameter tree (`params` of `ClipVision.init`):
  patch_embedding/kernel        [P, P, C, D]      ('kernel', None, 'conv_in', 'embed')
  class_embedding               [D]               ('embed',)
  position_embedding            [N + 1, D]        ('length', 'embed'), N = (image / P)**2
  pre_layrnorm/{scale, bias}    [D]
  layers/layer_norm1/{scale, bias}             [L, D]
  layers/self_attn/{q,k,v}_proj/{kernel, bias} [L, D, D], [L, D]   ('layers', 'embed', 'heads')
  layers/self_attn/out_proj/{kernel, bias}     [L, D, D], [L, D]   ('layers', 'heads', 'embed')
  layers/layer_norm2/{scale, bias}             [L, D]
  layers/mlp/fc1/{kernel, bias}                [L, D, F], [L, F]   ('layers', 'embed', 'mlp')
  layers/mlp/fc2/{kernel, bias}                [L, F, D], [L, D]   ('layers', 'mlp', 'embed')
  post_layernorm/{scale, bias}  [D]
  visual_projection/kernel      [D, E]            ('embed', None)
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

# HF model types / architectures this tower can be read from.
HF_FULL_MODEL_TYPE = "clip"
HF_VISION_MODEL_TYPE = "clip_vision_model"
HF_ARCHITECTURES = ("CLIPModel", "CLIPVisionModelWithProjection")


def _square(name: str, value: Any) -> int:
  """HF allows image_size / patch_size as int or [h, w]; this tower needs a square int."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"CLIP config {name}={list(value)}: only square sizes are supported; "
                       "use a single int.")
    value = value[0]
  return int(value)


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
  """CLIP vision tower + visual projection; field names and defaults follow HF CLIPVisionConfig.

  dtype is the compute dtype, param_dtype the parameter dtype; remat recomputes each layer's
  activations in the backward pass (only useful if gradients flow through the tower).
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  projection_dim: int = 512
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "image_size", "patch_size", "num_channels", "projection_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ClipVisionConfig.{name}={value!r}: must be a positive int.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"ClipVisionConfig.hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}.")
    if self.image_size % self.patch_size:
      raise ValueError(f"ClipVisionConfig.image_size={self.image_size} is not divisible by "
                       f"patch_size={self.patch_size}.")
    if self.hidden_act not in blocks.ACTIVATIONS:
      raise ValueError(f"ClipVisionConfig.hidden_act={self.hidden_act!r}: unsupported; use one "
                       f"of {sorted(blocks.ACTIVATIONS)}.")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError:
        raise ValueError(f"ClipVisionConfig.{name}={getattr(self, name)!r}: not a dtype name "
                         "(use e.g. 'float32' or 'bfloat16').") from None

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_positions(self) -> int:
    return self.num_patches + 1

  @classmethod
  def from_dict(cls, mapping: Mapping[str, Any]) -> "ClipVisionConfig":
    """From a plain mapping of this class's fields (e.g. a config file section)."""
    return config_dataclass.build(cls, mapping, name="ClipVisionConfig")

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> "ClipVisionConfig":
    """From an HF config.json dict: a full CLIPModel config (vision_config nested, the
    projection_dim that CLIPModel uses at top level) or a CLIPVisionModelWithProjection one.

    `overrides` set project-only fields (dtype, param_dtype, remat).
    """
    model_type = hf.get("model_type")
    architectures = list(hf.get("architectures") or [])
    unknown_arch = [a for a in architectures if a not in HF_ARCHITECTURES]
    if model_type not in (HF_FULL_MODEL_TYPE, HF_VISION_MODEL_TYPE) or unknown_arch:
      raise ValueError(
          f"config.json has model_type={model_type!r}, architectures={architectures}: not a CLIP "
          f"image tower with projection. Use a checkpoint of {' or '.join(HF_ARCHITECTURES)} "
          "(e.g. openai/clip-vit-large-patch14).")
    if model_type == HF_FULL_MODEL_TYPE:
      vision = dict(hf.get("vision_config") or {})
      vision["projection_dim"] = hf.get("projection_dim", cls.projection_dim)
    else:
      vision = dict(hf)
    fields = {}
    for f in dataclasses.fields(cls):
      if f.name in vision and f.name not in ("dtype", "param_dtype", "remat"):
        fields[f.name] = vision[f.name]
    for name in ("image_size", "patch_size"):
      if name in fields:
        fields[name] = _square(name, fields[name])
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """config.json of a CLIPVisionModelWithProjection (what transformers loads)."""
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": HF_VISION_MODEL_TYPE,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "image_size": self.image_size,
        "patch_size": self.patch_size,
        "num_channels": self.num_channels,
        "projection_dim": self.projection_dim,
        "layer_norm_eps": self.layer_norm_eps,
        "hidden_act": self.hidden_act,
        "attention_dropout": 0.0,
        "dtype": self.param_dtype,
    }


class _EncoderLayer(nn.Module):
  """Pre-LN transformer layer (CLIPEncoderLayer); scan body, so returns (carry, None)."""
  config: ClipVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
    cfg = self.config
    attention = blocks.SelfAttention(cfg, name="self_attn")
    x = x + attention(blocks.layer_norm(cfg, "layer_norm1")(x))
    x = x + blocks.Mlp(cfg, ("fc1", "fc2"), name="mlp")(blocks.layer_norm(cfg, "layer_norm2")(x))
    return sharding.constrain(x, ("batch", "length", "embed")), None


class ClipVision(nn.Module):
  """CLIP image tower with visual projection (frozen encoder of AffectGPT)."""
  config: ClipVisionConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """Projected image embeddings.

    Args:
      pixels: float[B, H, W, C], NHWC, already CLIP-normalised (the HF CLIPImageProcessor output
        transposed from NCHW), with H = W = config.image_size, C = config.num_channels.

    Returns:
      image_embeds: float[B, projection_dim] (dtype = config.dtype), not L2-normalised, equal to
      transformers' CLIPModel.get_image_features(pixel_values).pooler_output.
    """
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
      raise ValueError(f"ClipVision pixels have shape {tuple(pixels.shape)}; expected "
                       f"[B, {expected[0]}, {expected[1]}, {expected[2]}] (NHWC, resized to "
                       "config.image_size and CLIP-normalised).")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    x = nn.Conv(
        cfg.hidden_size, kernel_size=(cfg.patch_size, cfg.patch_size),
        strides=(cfg.patch_size, cfg.patch_size), padding="VALID", use_bias=False, dtype=dtype,
        param_dtype=param_dtype, name="patch_embedding",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("kernel", None, "conv_in", "embed")))(
                pixels.astype(dtype))
    b = x.shape[0]
    x = x.reshape(b, cfg.num_patches, cfg.hidden_size)  # row-major grid, as torch flatten(2)
    cls = self.param("class_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)),
                     (cfg.hidden_size,), param_dtype)
    pos = self.param("position_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  ("length", "embed")),
                     (cfg.num_positions, cfg.hidden_size), param_dtype)
    cls = jnp.broadcast_to(cls.astype(dtype), (b, 1, cfg.hidden_size))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(dtype)[None]
    x = sharding.constrain(x, ("batch", "length", "embed"))
    x = blocks.layer_norm(cfg, "pre_layrnorm")(x)

    layer = nn.remat(_EncoderLayer, prevent_cse=False) if cfg.remat else _EncoderLayer
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=cfg.num_hidden_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(cfg, name="layers")(x, None)

    pooled = blocks.layer_norm(cfg, "post_layernorm")(x[:, 0])
    return blocks.dense(cfg.projection_dim, ("embed", None), cfg, "visual_projection",
                  use_bias=False)(pooled)


def abstract_params(config: ClipVisionConfig) -> Any:
  """Boxed (LogicallyPartitioned) jax.ShapeDtypeStruct tree of `params`; allocates nothing."""
  model = ClipVision(config)
  pixels = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels),
                                jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), pixels)["params"]


def param_count(config: ClipVisionConfig) -> int:
  """Number of parameters (computed abstractly, no weights allocated)."""
  return sum(int(x.size) for x in jax.tree.leaves(sharding.unbox(abstract_params(config))))
