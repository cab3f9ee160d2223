"""AffectGPT's modality fusion: attention pooling per modality and the "Multi" pre-fusion token.

PAPER_NOTES.md section 2:
  - per modality: a_t = Linear(h_t -> 1) (no softmax), pooled = sum_t a_t h_t, then a projector
    Linear(width -> LLM hidden); one token per modality.
  - Multi: time-means of video and audio features, each Linear -> multi_dim (1024), concatenated
    (2 * multi_dim) -> Linear(-> multi_dim) -> Linear(-> 2) gives two weights (no softmax);
    the weighted sum of the two multi_dim vectors -> Linear -> LLM hidden; one token.
All of these layers are trainable (the encoders and the LLM are frozen).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from affect_jax import config_dataclass
from affect_jax import sharding

MODALITIES = ("multi", "audio", "video")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  video_dim: int = 768        # CLIP projection_dim
  audio_dim: int = 1024       # HuBERT hidden size
  multi_dim: int = 1024       # width of the Multi pre-fusion
  llm_dim: int = 3584         # decoder hidden size
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FusionConfig":
    return config_dataclass.build(cls, d, name="model.fusion")


def _dense(features: int, names: tuple, cfg: FusionConfig, name: str) -> nn.Dense:
  return nn.Dense(
      features, name=name, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[1:]))


class AttentionPool(nn.Module):
  """sum_t Linear(h_t -> 1) * h_t, then Linear -> LLM width.  h: [B, T, D] -> [B, llm_dim]."""
  cfg: FusionConfig

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    scores = _dense(1, (None, None), self.cfg, "score")(h)          # [B, T, 1], no softmax
    pooled = jnp.sum(scores * h, axis=1)                            # [B, D]
    return _dense(self.cfg.llm_dim, (None, "embed"), self.cfg, "proj")(pooled)


class MultiToken(nn.Module):
  """The pre-fusion token from the time-means of video [B, Tv, Dv] and audio [B, Ta, Da]."""
  cfg: FusionConfig

  @nn.compact
  def __call__(self, video: jax.Array, audio: jax.Array) -> jax.Array:
    c = self.cfg
    v = _dense(c.multi_dim, (None, None), c, "video_in")(video.mean(axis=1))   # [B, M]
    a = _dense(c.multi_dim, (None, None), c, "audio_in")(audio.mean(axis=1))   # [B, M]
    hidden = _dense(c.multi_dim, (None, None), c, "mix")(jnp.concatenate([v, a], axis=-1))
    weights = _dense(2, (None, None), c, "weights")(hidden)                    # [B, 2]
    fused = weights[:, :1] * v + weights[:, 1:] * a                            # [B, M]
    return _dense(c.llm_dim, (None, "embed"), c, "proj")(fused)


class Fusion(nn.Module):
  """Modality tokens for the prompt.

  Args:
    video: float[B, Tv, video_dim] per-frame CLIP embeddings (frames or face crops).
    audio: float[B, Ta, audio_dim] per-window HuBERT features.
  Returns:
    {"multi": [B, llm_dim], "audio": [B, llm_dim], "video": [B, llm_dim]}.
  """
  cfg: FusionConfig

  @nn.compact
  def __call__(self, video: jax.Array, audio: jax.Array) -> dict[str, jax.Array]:
    video = video.astype(jnp.dtype(self.cfg.dtype))
    audio = audio.astype(jnp.dtype(self.cfg.dtype))
    return {
        "multi": MultiToken(self.cfg, name="multi")(video, audio),
        "audio": AttentionPool(self.cfg, name="audio")(audio),
        "video": AttentionPool(self.cfg, name="video")(video),
    }


def splice(token_embeds: jax.Array, tokens: jax.Array, modality_tokens: Mapping[str, jax.Array],
           placeholder_ids: Mapping[str, int]) -> jax.Array:
  """Replaces each placeholder token's embedding by its modality embedding.

  Args:
    token_embeds: float[B, T, H] the decoder's embeddings of `tokens`.
    tokens: int32[B, T] prompt ids containing placeholder ids.
    modality_tokens: {modality: float[B, H]}.
    placeholder_ids: {modality: token id of its placeholder (e.g. <AudioHere>)}.
  Returns:
    float[B, T, H]; rows without a placeholder are unchanged.
  """
  out = token_embeds
  for name, emb in modality_tokens.items():
    if name not in placeholder_ids:
      raise ValueError(f"modality '{name}' has no placeholder id; set "
                       f"model.placeholder_ids.{name} in the config.")
    hit = (tokens == placeholder_ids[name])[..., None]
    out = jnp.where(hit, emb[:, None, :].astype(out.dtype), out)
  return sharding.constrain(out, ("batch", "length", "embed"))
