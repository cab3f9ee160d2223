"""ClipVision against transformers' CLIP (PyTorch, random init, float32) as the reference."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from affect_jax.checkpoints import hf_clip
from affect_jax.models import clip_vision
from affect_jax.models.clip_vision import ClipVision, ClipVisionConfig

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, projection_dim=24, hidden_act="quick_gelu")
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _pixels(batch=3, size=32, seed=0):
  """NCHW torch pixels and the same values NHWC for the project."""
  x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
  return torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def full_clip(tmp_path_factory):
  """A random CLIPModel (text tower included) saved with save_pretrained."""
  torch.manual_seed(0)
  config = transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16)
  model = transformers.CLIPModel(config).eval()
  out = tmp_path_factory.mktemp("clip_full")
  model.save_pretrained(out)
  return model, out


@pytest.fixture(scope="module")
def vision_clip(tmp_path_factory):
  """A random CLIPVisionModelWithProjection with gelu MLPs, saved with save_pretrained."""
  torch.manual_seed(1)
  config = transformers.CLIPVisionConfig(**{**VISION, "hidden_act": "gelu"})
  model = transformers.CLIPVisionModelWithProjection(config).eval()
  out = tmp_path_factory.mktemp("clip_vision")
  model.save_pretrained(out)
  return model, out


def test_image_embeds_match_clip_model_get_image_features(full_clip):
  model, hf_dir = full_clip
  config, params = hf_clip.load(hf_dir)
  assert config.projection_dim == 16  # CLIPModel's top-level projection_dim, not vision_config's
  torch_pixels, pixels = _pixels()
  with torch.no_grad():
    out = model.get_image_features(pixel_values=torch_pixels)
  # transformers 5.x returns an output object whose pooler_output is the projected embedding.
  want = (out.pooler_output if hasattr(out, "pooler_output") else out).numpy()
  got = np.asarray(jax.jit(ClipVision(config).apply)({"params": params}, pixels))
  diff = np.abs(got - want).max()
  print(f"CLIPModel.get_image_features max|diff| = {diff:.2e}")
  assert got.shape == (3, 16)
  assert diff <= 1e-4


def test_image_embeds_match_vision_model_with_projection(vision_clip):
  model, hf_dir = vision_clip
  config, params = hf_clip.load(hf_dir)
  assert config.hidden_act == "gelu"
  torch_pixels, pixels = _pixels(seed=1)
  with torch.no_grad():
    want = model(pixel_values=torch_pixels).image_embeds.numpy()
  got = np.asarray(ClipVision(config).apply({"params": params}, pixels))
  diff = np.abs(got - want).max()
  print(f"CLIPVisionModelWithProjection.image_embeds max|diff| = {diff:.2e}")
  assert diff <= 1e-4


def test_remat_gives_the_same_embeddings(vision_clip):
  _, hf_dir = vision_clip
  config, params = hf_clip.load(hf_dir)
  _, pixels = _pixels(batch=2)
  plain = ClipVision(config).apply({"params": params}, pixels)
  remat = ClipVision(dataclasses.replace(config, remat=True)).apply({"params": params}, pixels)
  np.testing.assert_allclose(np.asarray(remat), np.asarray(plain), atol=1e-6)


def test_config_round_trips_through_hf_and_dict():
  config = ClipVisionConfig(**VISION)
  hf = transformers.CLIPVisionConfig(**config.to_hf()).to_dict()
  assert ClipVisionConfig.from_hf(hf) == config
  assert ClipVisionConfig.from_dict(dataclasses.asdict(config)) == config


def test_from_hf_fills_hf_defaults_for_keys_a_diff_config_omits():
  config = ClipVisionConfig.from_hf({"model_type": "clip", "architectures": ["CLIPModel"],
                                     "vision_config": {"patch_size": 14}})
  assert (config.hidden_size, config.patch_size, config.projection_dim) == (768, 14, 512)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="hidden_size=30 is not divisible"):
    ClipVisionConfig(hidden_size=30, num_attention_heads=4)
  with pytest.raises(ValueError, match="hidden_act='tanhshrink'"):
    ClipVisionConfig(hidden_act="tanhshrink")
  with pytest.raises(ValueError, match="unknown fields \\['hidden'\\]"):
    ClipVisionConfig.from_dict({"hidden": 3})
  with pytest.raises(ValueError, match="model_type='vit'"):
    ClipVisionConfig.from_hf({"model_type": "vit", "architectures": ["ViTModel"]})
  with pytest.raises(ValueError, match="CLIPVisionModel'"):
    ClipVisionConfig.from_hf({"model_type": "clip_vision_model",
                              "architectures": ["CLIPVisionModel"]})


def test_wrong_pixel_shape_is_named():
  config = ClipVisionConfig(**VISION)
  with pytest.raises(ValueError, match=r"pixels have shape \(1, 3, 32, 32\)"):
    jax.eval_shape(ClipVision(config).init, jax.random.key(0), jnp.zeros((1, 3, 32, 32)))


def test_vit_large_param_count_equals_transformers():
  hf = transformers.CLIPVisionConfig(
      hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
      image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
  with torch.device("meta"):
    model = transformers.CLIPVisionModelWithProjection(hf)
  want = sum(p.numel() for p in model.parameters())
  # The same tower read from a full CLIPModel config (openai/clip-vit-large-patch14 layout).
  config = ClipVisionConfig.from_hf({
      "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 768,
      "vision_config": {k: getattr(hf, k) for k in (
          "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "image_size", "patch_size", "hidden_act")}})
  got = clip_vision.param_count(config)
  print(f"CLIP ViT-L/14 vision tower + projection: project {got:,} / transformers {want:,}")
  assert got == want == hf_clip.param_count(config)
