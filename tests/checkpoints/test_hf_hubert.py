"""hf_hubert: HF -> project -> HF, weight-norm names, mesh loading, errors on bad checkpoints."""
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
from affect_jax.checkpoints import hf_hubert
from affect_jax.checkpoints.safetensors_io import (CheckpointError, SafetensorsReader,
                                                   write_safetensors)
from affect_jax.models.hubert import Hubert

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
BASE = dict(TINY, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
LARGE = dict(TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
POS_G = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
POS_V = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"


def _perturb(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim <= 1 or "original0" in name:
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model


def _save(model_cls, kwargs, path, seed):
  torch.manual_seed(seed)
  model = _perturb(model_cls(transformers.HubertConfig(**kwargs)).eval(), seed)
  model.save_pretrained(path)
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(folders, models): both HF checkpoints written once per module, whichever test runs
  first (under xdist any test may be a worker's first)."""
  dirs = {name: tmp_path_factory.mktemp(name) for name in ("base", "large")}
  return dirs, {"base": _save(transformers.HubertModel, BASE, dirs["base"], 0),
                "large": _save(transformers.HubertModel, LARGE, dirs["large"], 1)}


@pytest.fixture(scope="module")
def dirs(saved):
  return saved[0]


@pytest.fixture(scope="module")
def models(saved):
  return saved[1]


def _tensors(hf_dir):
  reader = SafetensorsReader(hf_dir)
  return {k: np.array(reader[k]) for k in reader.keys()}


def _copy_with(src, dst, tensors=None, config_update=None):
  shutil.copytree(src, dst)
  if tensors is not None:
    (dst / "model.safetensors").unlink()
    write_safetensors(dst / "model.safetensors", tensors)
  if config_update is not None:
    config = json.loads((dst / "config.json").read_text())
    config.update(config_update)
    (dst / "config.json").write_text(json.dumps(config))
  return dst


def _waveform(batch, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, 400)).astype(np.float32)


def _hidden(model, waveform):
  with torch.no_grad():
    out = model(torch.from_numpy(waveform), output_hidden_states=True)
  return np.stack([h.numpy() for h in out.hidden_states[:-1]] + [out.last_hidden_state.numpy()])


@pytest.mark.parametrize("name", ["base", "large"])
def test_hf_to_project_to_hf_is_identical_and_loads_in_transformers(name, dirs, models,
                                                                    tmp_path):
  config, params = hf_hubert.load(dirs[name])
  out = tmp_path / "export"
  hf_hubert.save(params, config, out)

  source, exported = _tensors(dirs[name]), _tensors(out)
  assert sorted(exported) == sorted(source)
  for key, value in source.items():
    assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key

  reloaded = transformers.HubertModel.from_pretrained(out).eval()
  waveform = _waveform(2)
  want = _hidden(reloaded, waveform)
  np.testing.assert_array_equal(want, _hidden(models[name], waveform))
  got = np.asarray(jax.jit(Hubert(config).apply)({"params": params}, jnp.asarray(waveform)))
  diff = np.abs(got - want).max()
  print(f"HuBERT {name}: exported folder in transformers vs project max|diff| = {diff:.2e}")
  assert diff <= 1e-4


def test_legacy_weight_g_v_names_load_and_export_as_parametrizations(dirs, tmp_path):
  tensors = _tensors(dirs["large"])
  legacy = dict(tensors)
  legacy["encoder.pos_conv_embed.conv.weight_g"] = legacy.pop(POS_G)
  legacy["encoder.pos_conv_embed.conv.weight_v"] = legacy.pop(POS_V)
  old = _copy_with(dirs["large"], tmp_path / "legacy", tensors=legacy)
  config, params = hf_hubert.load(old)
  _, want = hf_hubert.load(dirs["large"])
  jax.tree.map(np.testing.assert_array_equal, params, want)
  hf_hubert.save(params, config, tmp_path / "export")
  exported = _tensors(tmp_path / "export")
  assert np.array_equal(exported[POS_G], tensors[POS_G])
  assert np.array_equal(exported[POS_V], tensors[POS_V])
  # transformers itself reads the legacy names too, to the same outputs.
  waveform = _waveform(1)
  np.testing.assert_allclose(
      _hidden(transformers.HubertModel.from_pretrained(old).eval(), waveform),
      np.asarray(Hubert(config).apply({"params": params}, jnp.asarray(waveform))), atol=1e-4)


def test_task_checkpoint_encoder_under_hubert_prefix(tmp_path):
  model = _save(transformers.HubertForCTC, dict(BASE, vocab_size=12), tmp_path / "ctc", 2)
  config, params = hf_hubert.load(tmp_path / "ctc")
  waveform = _waveform(2, seed=1)
  want = _hidden(model.hubert, waveform)
  got = np.asarray(jax.jit(Hubert(config).apply)({"params": params}, jnp.asarray(waveform)))
  assert np.abs(got - want).max() <= 1e-4


def test_forward_on_a_2x4_mesh_equals_one_device(dirs):
  config, params = hf_hubert.load(dirs["large"])
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  rules = sharding.DEFAULT_RULES
  _, sharded = hf_hubert.load(dirs["large"], mesh=mesh, sharding_rules=rules)
  dense = sharded["encoder"]["layers"]["feed_forward"]["intermediate_dense"]["kernel"]
  assert dense.sharding == NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor"))
  pos_v = sharded["encoder"]["pos_conv_embed"]["weight_v"]
  assert pos_v.addressable_shards[0].data.shape == (16, 8, 8)

  waveform = jnp.asarray(_waveform(8, seed=2))
  single = np.asarray(jax.jit(Hubert(config).apply)({"params": params}, waveform))
  batch = sharding.named(mesh, ("batch", None), rules)
  with sharding.active(mesh, rules):
    out = jax.jit(Hubert(config).apply)({"params": sharded}, jax.device_put(waveform, batch))
  diff = np.abs(np.asarray(out) - single).max()
  print(f"HuBERT (2, 4) mesh vs 1 device max|diff| = {diff:.2e}")
  assert diff <= 1e-5


def test_missing_tensor_is_named(dirs, tmp_path):
  tensors = _tensors(dirs["base"])
  del tensors["encoder.layers.1.final_layer_norm.bias"]
  bad = _copy_with(dirs["base"], tmp_path / "bad", tensors=tensors)
  with pytest.raises(CheckpointError, match="'encoder.layers.1.final_layer_norm.bias' is missing"):
    hf_hubert.load(bad)


def test_misshaped_tensor_is_named(dirs, tmp_path):
  tensors = _tensors(dirs["base"])
  tensors[POS_V] = np.zeros((32, 4, 16), np.float32)
  bad = _copy_with(dirs["base"], tmp_path / "bad", tensors=tensors)
  with pytest.raises(CheckpointError, match="parametrizations.weight.original1' has shape"):
    hf_hubert.load(bad)


@pytest.mark.parametrize("config", [
    {"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]},
    {"model_type": "clip_vision_model", "architectures": ["CLIPVisionModelWithProjection"]},
])
def test_unknown_architecture_is_refused(dirs, tmp_path, config):
  bad = _copy_with(dirs["base"], tmp_path / "bad", config_update=config)
  with pytest.raises(CheckpointError, match=f"model_type='{config['model_type']}'"):
    hf_hubert.load(bad)


@pytest.mark.parametrize("update,match", [
    ({"conv_bias": True}, "'feature_extractor.conv_layers.0.conv.bias' is missing"),
    ({"num_hidden_layers": 1}, "'encoder.layers.1.attention.k_proj.bias'.* does not match"),
    ({"mask_time_prob": 0.0}, "'masked_spec_embed'.*mask_time_prob=0.0"),
    ({"feat_extract_norm": "layer"}, "'feature_extractor.conv_layers.1.layer_norm.weight' is"),
    ({"intermediate_size": 48}, "intermediate_dense.weight' has shape"),
])
def test_config_that_does_not_match_the_weights(dirs, tmp_path, update, match):
  bad = _copy_with(dirs["base"], tmp_path / "bad", config_update=update)
  with pytest.raises(CheckpointError, match=match):
    hf_hubert.load(bad)


def test_failed_save_leaves_nothing(dirs, tmp_path, monkeypatch):
  config, params = hf_hubert.load(dirs["base"])
  out = tmp_path / "out"
  bad = jax.tree.map(lambda x: x, params)
  bad["encoder"]["pos_conv_embed"]["weight_g"] = jnp.ones((3,))
  with pytest.raises(CheckpointError, match="encoder/pos_conv_embed/weight_g has shape"):
    hf_hubert.save(bad, config, out)
  assert not out.exists()

  def broken_write(out_dir, tensors, hf_config):
    (out_dir / "model.safetensors").write_bytes(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(hf_hubert, "write_checkpoint", broken_write)
  with pytest.raises(OSError, match="disk full"):
    hf_hubert.save(params, config, out)
  assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("written", [{"do_normalize": True}, {"do_normalize": False}, {}])
def test_read_do_normalize_agrees_with_wav2vec2_feature_extractor(tmp_path, written):
  config = transformers.Wav2Vec2FeatureExtractor().to_dict()
  config.pop("do_normalize")
  config.update(written)
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
  want = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path).do_normalize
  assert hf_hubert.read_do_normalize(tmp_path) is want


def test_read_do_normalize_without_a_preprocessor_file(tmp_path):
  assert hf_hubert.read_do_normalize(tmp_path) is None
  (tmp_path / "preprocessor_config.json").write_text("{not json")
  with pytest.raises(hf_hubert.CheckpointError, match="preprocessor_config.json"):
    hf_hubert.read_do_normalize(tmp_path)
