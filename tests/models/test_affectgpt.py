"""The assembled AffectGPT model: multimodal forward, parameter counts, trainable set."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from affect_jax import sharding
from affect_jax.models import affectgpt, fusion
from affect_jax.models.qwen2 import Qwen2
from configs import affectgpt_r1_7b, tiny


@pytest.fixture(scope="module")
def tiny_model():
  config = affectgpt.AffectGPTConfig.from_config(tiny.get_config().model)
  params = sharding.unbox(affectgpt.init(config, jax.random.key(0)))
  return config, params


def test_multimodal_forward_equals_manual_composition(tiny_model):
  config, params = tiny_model
  rng = np.random.default_rng(0)
  frames = jnp.asarray(rng.normal(size=(2, 3, 32, 32, 3)), jnp.float32)
  windows = jnp.asarray(rng.normal(size=(2, 4, 1600)), jnp.float32)
  ids = config.placeholders
  tokens = jnp.asarray([[5, ids["multi"], ids["audio"], ids["video"], 9, 10],
                        [7, ids["multi"], ids["audio"], ids["video"], 11, 12]], jnp.int32)
  video = affectgpt.encode_video(params, config, frames)
  audio = affectgpt.encode_audio(params, config, windows)
  assert video.shape == (2, 3, 24) and audio.shape == (2, 4, 32)
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  logits = affectgpt.forward(params, config, tokens, video, audio, positions=positions)
  # Independent composition: fusion tokens written into the embedding rows by hand.
  mods = fusion.Fusion(config.fusion).apply({"params": params["fusion"]}, video, audio)
  emb = np.array(Qwen2(config.llm).apply({"params": params["llm"]}, tokens, method=Qwen2.embed))
  for col, name in ((1, "multi"), (2, "audio"), (3, "video")):
    emb[:, col] = np.asarray(mods[name])
  ref, _ = Qwen2(config.llm).apply({"params": params["llm"]}, embeds=jnp.asarray(emb),
                                   positions=positions)
  np.testing.assert_allclose(logits, ref, atol=1e-6)
  # The video features are per-frame CLIP embeddings: frame 1 of clip 0 alone gives the same.
  one = affectgpt.encode_video(params, config, frames[:1, 1:2])
  np.testing.assert_allclose(one[0, 0], video[0, 1], atol=1e-5)


def test_trainable_mask_is_lora_and_fusion(tiny_model):
  config, params = tiny_model
  mask = affectgpt.trainable_mask(params)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  on = {jax.tree_util.keystr(p) for p, m in flat if m}
  assert all("lora_" in k or k.startswith("['fusion']") for k in on)
  assert any("lora_a" in k for k in on) and any(k.startswith("['fusion']") for k in on)
  assert not any(m for p, m in flat if jax.tree_util.keystr(p).startswith("['vision']"))


def _hf_count(model_cls, config):
  with torch.device("meta"):
    return sum(p.numel() for p in model_cls(config).parameters())


def test_real_scale_parameter_counts_equal_transformers():
  c = affectgpt_r1_7b.get_config().model
  config = affectgpt.AffectGPTConfig.from_config(c)
  counts = affectgpt.param_counts(config)
  drop = ("dtype", "param_dtype", "remat", "lora")
  hf_llm = _hf_count(transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
      **{k: v for k, v in c.llm.items() if k not in drop}))
  hf_vis = _hf_count(transformers.CLIPVisionModelWithProjection, transformers.CLIPVisionConfig(
      **{k: v for k, v in c.vision.items() if k not in drop}))
  hf_aud = _hf_count(transformers.HubertModel, transformers.HubertConfig(
      **{k: v for k, v in c.audio.items() if k not in drop}))
  print(f"real scale: llm {counts['llm']:,} (transformers {hf_llm:,}), vision {counts['vision']:,} "
        f"(transformers {hf_vis:,}), audio {counts['audio']:,} (transformers {hf_aud:,}), "
        f"lora {counts['lora']:,}, fusion {counts['fusion']:,}, total {counts['total']:,}")
  assert counts["llm"] == hf_llm
  assert counts["vision"] == hf_vis
  assert counts["audio"] == hf_aud
  # LoRA r=16 on q,k,v,o,gate,up,down of 28 layers: r * (in + out) per projection.
  h, f, kv = 3584, 18944, 4 * 128
  per_layer = 16 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + f) + (f + h))
  assert counts["lora"] == 28 * per_layer


def test_config_mismatch_is_a_clear_error():
  c = tiny.get_config().model
  c.fusion.llm_dim = 65
  with pytest.raises(ValueError, match="llm_dim"):
    affectgpt.AffectGPTConfig.from_config(c)
  c = tiny.get_config().model
  c.placeholder_ids.video = 100000
  with pytest.raises(ValueError, match="placeholder_ids.video"):
    affectgpt.AffectGPTConfig.from_config(c)
