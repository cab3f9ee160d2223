"""hf_clip: HF -> project -> HF, loading onto a mesh, and errors on bad checkpoints."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import NamedSharding, PartitionSpec

from affect_jax import sharding
from affect_jax.checkpoints import hf_clip
from affect_jax.checkpoints.safetensors_io import (CheckpointError, SafetensorsReader,
                                                   write_safetensors)
from affect_jax.models.clip_vision import ClipVision

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, projection_dim=24)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _pixels(batch, seed=0):
  x = np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)
  return torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16)
  model = transformers.CLIPModel(config).eval()
  out = tmp_path_factory.mktemp("clip_full")
  model.save_pretrained(out)
  return out


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
  torch.manual_seed(1)
  model = transformers.CLIPVisionModelWithProjection(
      transformers.CLIPVisionConfig(**VISION)).eval()
  out = tmp_path_factory.mktemp("clip_vision")
  model.save_pretrained(out)
  return out


def _tensors(hf_dir):
  reader = SafetensorsReader(hf_dir)
  return {k: np.array(reader[k]) for k in reader.keys()}


def _copy_with(src, dst, tensors=None, config_update=None):
  """A copy of checkpoint `src` with replaced tensors and/or config.json entries."""
  shutil.copytree(src, dst)
  if tensors is not None:
    (dst / "model.safetensors").unlink()
    write_safetensors(dst / "model.safetensors", tensors)
  if config_update is not None:
    config = json.loads((dst / "config.json").read_text())
    config.update(config_update)
    (dst / "config.json").write_text(json.dumps(config))
  return dst


@pytest.mark.parametrize("which", ["full_dir", "vision_dir"])
def test_hf_to_project_to_hf_is_identical_and_loads_in_transformers(which, request, tmp_path):
  hf_dir = request.getfixturevalue(which)
  config, params = hf_clip.load(hf_dir)
  out = tmp_path / "export"
  hf_clip.save(params, config, out)

  source, exported = _tensors(hf_dir), _tensors(out)
  tower = {k: v for k, v in source.items()
           if k.startswith(hf_clip.TOWER_PREFIX) or k == "visual_projection.weight"}
  assert sorted(exported) == sorted(tower)
  for name, value in tower.items():
    assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name

  reloaded = transformers.CLIPVisionModelWithProjection.from_pretrained(out).eval()
  torch_pixels, pixels = _pixels(2)
  with torch.no_grad():
    want = reloaded(pixel_values=torch_pixels).image_embeds.numpy()
  got = np.asarray(ClipVision(config).apply({"params": params}, pixels))
  diff = np.abs(got - want).max()
  print(f"{which}: exported folder in transformers vs project max|diff| = {diff:.2e}")
  assert diff <= 1e-4


def test_forward_on_a_2x4_mesh_equals_one_device(vision_dir):
  config, params = hf_clip.load(vision_dir)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  rules = sharding.DEFAULT_RULES
  _, sharded = hf_clip.load(vision_dir, mesh=mesh, sharding_rules=rules)
  fc1 = sharded["layers"]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding == NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor"))
  assert len(fc1.addressable_shards) == 8
  assert fc1.addressable_shards[0].data.shape == (2, 8, 64)

  _, pixels = _pixels(8, seed=2)
  single = np.asarray(jax.jit(ClipVision(config).apply)({"params": params}, pixels))
  batch = sharding.named(mesh, ("batch", None, None, None), rules)
  with sharding.active(mesh, rules):
    out = jax.jit(ClipVision(config).apply)({"params": sharded}, jax.device_put(pixels, batch))
  diff = np.abs(np.asarray(out) - single).max()
  print(f"CLIP (2, 4) mesh vs 1 device max|diff| = {diff:.2e}")
  assert diff <= 1e-5


def test_dtype_argument_casts_params(vision_dir):
  config, params = hf_clip.load(vision_dir, dtype="bfloat16")
  assert config.param_dtype == config.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))


def test_missing_tensor_is_named(vision_dir, tmp_path):
  tensors = _tensors(vision_dir)
  del tensors["vision_model.post_layernorm.weight"]
  bad = _copy_with(vision_dir, tmp_path / "bad", tensors=tensors)
  with pytest.raises(CheckpointError, match="'vision_model.post_layernorm.weight' is missing"):
    hf_clip.load(bad)


def test_missing_projection_is_named(vision_dir, tmp_path):
  tensors = _tensors(vision_dir)
  del tensors["visual_projection.weight"]
  bad = _copy_with(vision_dir, tmp_path / "bad", tensors=tensors)
  with pytest.raises(CheckpointError, match="'visual_projection.weight' is missing"):
    hf_clip.load(bad)


def test_misshaped_tensor_is_named(vision_dir, tmp_path):
  tensors = _tensors(vision_dir)
  tensors["vision_model.encoder.layers.1.mlp.fc1.weight"] = np.zeros((65, 32), np.float32)
  bad = _copy_with(vision_dir, tmp_path / "bad", tensors=tensors)
  with pytest.raises(CheckpointError, match="mlp.fc1.weight' has shape"):
    hf_clip.load(bad)


@pytest.mark.parametrize("config", [
    {"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]},
    {"model_type": "vit", "architectures": ["ViTModel"]},
    {"model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"]},
])
def test_unknown_architecture_is_refused(vision_dir, tmp_path, config):
  bad = _copy_with(vision_dir, tmp_path / "bad", config_update=config)
  with pytest.raises(CheckpointError, match=f"model_type='{config['model_type']}'"):
    hf_clip.load(bad)


@pytest.mark.parametrize("update,match", [
    ({"hidden_size": 64, "num_attention_heads": 4}, "has shape .* needs"),
    ({"num_hidden_layers": 3}, "'vision_model.encoder.layers.2.layer_norm1.weight' is missing"),
    ({"num_hidden_layers": 1}, "num_hidden_layers=1.* does not match the weights"),
    ({"projection_dim": 8}, "'visual_projection.weight' has shape"),
])
def test_config_that_does_not_match_the_weights(vision_dir, tmp_path, update, match):
  bad = _copy_with(vision_dir, tmp_path / "bad", config_update=update)
  with pytest.raises(CheckpointError, match=match):
    hf_clip.load(bad)


def test_failed_save_leaves_nothing(vision_dir, tmp_path, monkeypatch):
  config, params = hf_clip.load(vision_dir)
  out = tmp_path / "out"

  params_bad = jax.tree.map(lambda x: x, params)
  params_bad["visual_projection"]["kernel"] = jnp.zeros((32, 7))
  with pytest.raises(CheckpointError, match="visual_projection/kernel has shape"):
    hf_clip.save(params_bad, config, out)
  assert not out.exists()

  def broken_write(out_dir, tensors, hf_config):
    (out_dir / "config.json").write_text("{}")
    raise OSError("disk full")

  monkeypatch.setattr(hf_clip, "write_checkpoint", broken_write)
  with pytest.raises(OSError, match="disk full"):
    hf_clip.save(params, config, out)
  assert not out.exists() and list(tmp_path.iterdir()) == []


def test_save_refuses_a_non_empty_folder(vision_dir, tmp_path):
  config, params = hf_clip.load(vision_dir)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")
  with pytest.raises(CheckpointError, match="already exists"):
    hf_clip.save(params, config, tmp_path / "out")
  assert (tmp_path / "out" / "keep.txt").read_text() == "x"
