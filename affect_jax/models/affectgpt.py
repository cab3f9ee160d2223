"""The AffectGPT multimodal model as pure functions over one parameter pytree.

  params = {"llm": Qwen2 params, "vision": CLIP tower params, "audio": HuBERT params,
            "fusion": Fusion params}

Data flow (PAPER_NOTES.md section 2):
  frames  float[B, F, 224, 224, 3] --CLIP--> video features float[B, F, Dv]
  windows float[B, K, S] (16 kHz, 2 s) --HuBERT--> mean of the last 4 layers, time mean
                                                   -> audio features float[B, K, Da]
  (video, audio) --Fusion--> {multi, audio, video} tokens float[B, H]
  prompt ids with placeholders --embed + splice--> float[B, T, H] --Qwen2--> logits
The encoders can be skipped by passing cached features (the frozen encoders' outputs).
Trainable: LoRA leaves of the LLM and all of the fusion (`trainable_mask`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from affect_jax import sharding
from affect_jax.models import fusion as fusion_lib
from affect_jax.models.clip_vision import ClipVision, ClipVisionConfig
from affect_jax.models.hubert import Hubert, HubertConfig, audio_features
from affect_jax.models.lora import lora_mask
from affect_jax.models.qwen2 import Qwen2, Qwen2Config


@dataclasses.dataclass(frozen=True)
class AffectGPTConfig:
  llm: Qwen2Config
  vision: ClipVisionConfig
  audio: HubertConfig
  fusion: fusion_lib.FusionConfig
  # (modality, token id) pairs; a tuple so the config stays hashable (a static jit argument).
  placeholder_ids: tuple[tuple[str, int], ...]
  audio_layers_avg: int = 4

  @property
  def placeholders(self) -> dict[str, int]:
    return dict(self.placeholder_ids)

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict | Mapping) -> "AffectGPTConfig":
    """Builds from the `model` section of a config file (see configs/)."""
    model = dict(model)
    missing = [k for k in ("llm", "vision", "audio", "fusion", "placeholder_ids") if k not in model]
    if missing:
      raise ValueError(f"config.model is missing {missing}.")
    llm = Qwen2Config.from_dict(dict(model["llm"]))
    vision = ClipVisionConfig.from_dict(dict(model["vision"]))
    audio = HubertConfig.from_dict(dict(model["audio"]))
    fusion = fusion_lib.FusionConfig.from_dict(dict(model["fusion"]))
    if fusion.llm_dim != llm.hidden_size:
      raise ValueError(f"model.fusion.llm_dim={fusion.llm_dim} but model.llm.hidden_size="
                       f"{llm.hidden_size}; they must match.")
    if fusion.video_dim != vision.projection_dim:
      raise ValueError(f"model.fusion.video_dim={fusion.video_dim} but model.vision."
                       f"projection_dim={vision.projection_dim}; they must match.")
    if fusion.audio_dim != audio.hidden_size:
      raise ValueError(f"model.fusion.audio_dim={fusion.audio_dim} but model.audio.hidden_size="
                       f"{audio.hidden_size}; they must match.")
    ids = dict(model["placeholder_ids"])
    for name, i in ids.items():
      if name not in fusion_lib.MODALITIES:
        raise ValueError(f"model.placeholder_ids.{name}: unknown modality; use "
                         f"{fusion_lib.MODALITIES}.")
      if not 0 <= int(i) < llm.vocab_size:
        raise ValueError(f"model.placeholder_ids.{name}={i} is outside the vocabulary "
                         f"[0, {llm.vocab_size}).")
    return cls(llm=llm, vision=vision, audio=audio, fusion=fusion,
               placeholder_ids=tuple(sorted((k, int(v)) for k, v in ids.items())),
               audio_layers_avg=int(model.get("audio_layers_avg", 4)))


def _modules(config: AffectGPTConfig):
  return (Qwen2(config.llm), ClipVision(config.vision), Hubert(config.audio),
          fusion_lib.Fusion(config.fusion))


def init(config: AffectGPTConfig, rng: jax.Array) -> dict[str, Any]:
  """Random parameters (boxed with logical axis names; `sharding.unbox` strips them).

  Shapes only depend on the config, so jax.eval_shape(init, config, rng) gives the abstract
  tree without allocating anything.
  """
  llm, vision, audio, fuse = _modules(config)
  r = jax.random.split(rng, 4)
  n_pix = config.vision.image_size
  tokens = jnp.zeros((1, 4), jnp.int32)
  positions = jnp.arange(4, dtype=jnp.int32)[None]
  return {
      "llm": llm.init(r[0], tokens, positions=positions)["params"],
      "vision": vision.init(r[1], jnp.zeros((1, n_pix, n_pix, 3)))["params"],
      "audio": audio.init(r[2], jnp.zeros((1, 16000)))["params"],
      "fusion": fuse.init(r[3], jnp.zeros((1, 2, config.fusion.video_dim)),
                          jnp.zeros((1, 2, config.fusion.audio_dim)))["params"],
  }


def abstract_params(config: AffectGPTConfig) -> dict[str, Any]:
  """ShapeDtypeStructs (boxed) of every parameter; nothing allocated."""
  return jax.eval_shape(lambda: init(config, jax.random.key(0)))


def param_counts(config: AffectGPTConfig) -> dict[str, int]:
  """Number of parameters per component, computed abstractly (LoRA counted apart)."""
  tree = sharding.unbox(abstract_params(config))
  counts = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in tree.items()}
  lora = jax.tree.leaves(jax.tree.map(lambda x, m: x.size if m else 0, tree["llm"],
                                      lora_mask(tree["llm"])))
  counts["lora"] = int(sum(lora))
  counts["llm"] -= counts["lora"]
  counts["total"] = sum(counts.values())
  return counts


def trainable_mask(params: Mapping[str, Any]) -> dict[str, Any]:
  """True for the LoRA leaves of the LLM and every fusion leaf; encoders and base LLM frozen."""
  return {
      "llm": lora_mask(params["llm"]),
      "vision": jax.tree.map(lambda _: False, params["vision"]),
      "audio": jax.tree.map(lambda _: False, params["audio"]),
      "fusion": jax.tree.map(lambda _: True, params["fusion"]),
  }


def encode_video(params, config: AffectGPTConfig, frames: jax.Array) -> jax.Array:
  """frames: float[B, F, H, W, 3] (CLIP-normalised) -> float[B, F, projection_dim]."""
  b, f = frames.shape[:2]
  flat = frames.reshape((b * f,) + frames.shape[2:])
  emb = ClipVision(config.vision).apply({"params": params["vision"]}, flat)
  return emb.reshape(b, f, -1)


def encode_audio(params, config: AffectGPTConfig, windows: jax.Array) -> jax.Array:
  """windows: float[B, K, S] 16 kHz windows -> float[B, K, hidden] (last-4-layer mean, time mean)."""
  b, k, s = windows.shape
  hidden = Hubert(config.audio).apply({"params": params["audio"]}, windows.reshape(b * k, s))
  return audio_features(hidden, config.audio_layers_avg).reshape(b, k, -1)


def prompt_embeds(params, config: AffectGPTConfig, tokens: jax.Array, video: jax.Array,
                  audio: jax.Array) -> jax.Array:
  """Prompt embeddings with modality tokens spliced in.

  Args:
    tokens: int32[B, T] prompt ids with placeholder ids.
    video: float[B, F, Dv] video features; audio: float[B, K, Da] audio features.
  Returns:
    float[B, T, H].
  """
  llm = Qwen2(config.llm)
  embeds = llm.apply({"params": params["llm"]}, tokens, method=Qwen2.embed)
  mods = fusion_lib.Fusion(config.fusion).apply({"params": params["fusion"]}, video, audio)
  return fusion_lib.splice(embeds, tokens, mods, config.placeholders)


def forward(params, config: AffectGPTConfig, tokens: jax.Array, video: jax.Array,
            audio: jax.Array, *, positions: jax.Array, attention_mask: jax.Array | None = None,
            use_lora: bool = True, deterministic: bool = True, return_hidden: bool = False,
            rngs: Mapping[str, jax.Array] | None = None) -> jax.Array:
  """Full forward on a multimodal prompt (+ target) without a cache: logits float[B, T, V]."""
  embeds = prompt_embeds(params, config, tokens, video, audio)
  out, _ = Qwen2(config.llm).apply(
      {"params": params["llm"]}, embeds=embeds, positions=positions,
      attention_mask=attention_mask, use_lora=use_lora, deterministic=deterministic,
      return_hidden=return_hidden, rngs=rngs)
  return out

