"""Hubert against transformers' HubertModel (PyTorch, random init, float32) as the reference."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from affect_jax.checkpoints import hf_hubert
from affect_jax.models import hubert
from affect_jax.models.hubert import Hubert, HubertConfig, audio_features

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 24, 24), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
VARIANTS = {
    # hubert-base style: group norm on conv 0, post-LN encoder.
    "group_postln": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    "group_postln_bias": dict(feat_extract_norm="group", do_stable_layer_norm=False,
                              conv_bias=True, num_conv_pos_embeddings=15,
                              feat_proj_layer_norm=False),
    # hubert-large style: layer norm on every conv, pre-LN encoder with a final layer norm.
    "layer_stable": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False,
                         mask_time_prob=0.0),
    "layer_stable_bias": dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                              conv_bias=True),
}
SAMPLES = 800


def perturb(model, seed):
  """Randomises what transformers initialises to constants (norm scales, biases, g)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim <= 1 or "original0" in name or "weight_g" in name:
        p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model


def hf_model(variant, seed=0):
  torch.manual_seed(seed)
  config = transformers.HubertConfig(**{**TINY, **VARIANTS[variant]})
  return perturb(transformers.HubertModel(config).eval(), seed)


def reference_hidden(model, waveform):
  """transformers' hidden states [L + 1, B, T, D]: hidden_states[:L] + (last_hidden_state,)."""
  with torch.no_grad():
    out = model(torch.from_numpy(waveform), output_hidden_states=True)
  states = [h.numpy() for h in out.hidden_states[:-1]] + [out.last_hidden_state.numpy()]
  return np.stack(states), out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{variant: (torch model, saved folder)}."""
  out = {}
  for i, variant in enumerate(VARIANTS):
    model = hf_model(variant, seed=i)
    path = tmp_path_factory.mktemp(variant)
    model.save_pretrained(path)
    out[variant] = (model, path)
  return out


def _waveform(batch, seed=0, samples=SAMPLES):
  return np.random.default_rng(seed).standard_normal((batch, samples)).astype(np.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hidden_states_match_transformers(variant, checkpoints):
  model, path = checkpoints[variant]
  config, params = hf_hubert.load(path)
  waveform = _waveform(2, seed=3)
  want, out = reference_hidden(model, waveform)
  got = np.asarray(jax.jit(Hubert(config).apply)({"params": params}, jnp.asarray(waveform)))
  assert got.shape == (config.num_hidden_layers + 1, 2, config.num_frames(SAMPLES), 32)
  diff = np.abs(got - want).max()
  print(f"HuBERT {variant}: all {got.shape[0]} hidden states max|diff| = {diff:.2e}")
  assert diff <= 1e-4
  if not config.do_stable_layer_norm:  # post-LN: the last hidden state is the layer output
    np.testing.assert_allclose(got[-1], out.hidden_states[-1].numpy(), atol=1e-4)


def test_batch_of_windows_gives_the_paper_audio_feature(checkpoints):
  model, path = checkpoints["layer_stable_bias"]
  config, params = hf_hubert.load(path)
  clips, windows = 2, 3
  waveform = _waveform(clips * windows, seed=4)  # [B * K, S]
  hidden, _ = reference_hidden(model, waveform)
  want = hidden[-4:].mean(axis=0).mean(axis=1).reshape(clips, windows, -1)
  features = jax.jit(lambda p, w: audio_features(Hubert(config).apply({"params": p}, w)))
  got = np.asarray(features(params, jnp.asarray(waveform))).reshape(clips, windows, -1)
  diff = np.abs(got - want).max()
  print(f"HuBERT audio_features ([B*K, S] windows) max|diff| = {diff:.2e}")
  assert diff <= 1e-4


def test_remat_gives_the_same_hidden_states(checkpoints):
  _, path = checkpoints["group_postln"]
  config, params = hf_hubert.load(path)
  waveform = jnp.asarray(_waveform(1))
  plain = jax.jit(Hubert(config).apply)({"params": params}, waveform)
  remat = jax.jit(Hubert(dataclasses.replace(config, remat=True)).apply)({"params": params},
                                                                          waveform)
  np.testing.assert_allclose(np.asarray(remat), np.asarray(plain), atol=1e-6)


def test_audio_features_errors_name_the_argument():
  with pytest.raises(ValueError, match="num_layers_avg=5"):
    audio_features(jnp.zeros((4, 1, 2, 3)), num_layers_avg=5)
  with pytest.raises(ValueError, match=r"hidden_states have shape \(1, 2, 3\)"):
    audio_features(jnp.zeros((1, 2, 3)))


def test_waveform_errors_name_the_input():
  config = HubertConfig(**TINY)
  init = lambda x: jax.eval_shape(Hubert(config).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"waveform has shape \(2, 3, 800\)"):
    init(jnp.zeros((2, 3, 800)))
  with pytest.raises(ValueError, match=f"need at least config.min_samples={config.min_samples}"):
    init(jnp.zeros((1, config.min_samples - 1)))
  assert config.num_frames(config.min_samples) == 1


def test_config_round_trips_through_hf_and_dict():
  for variant in VARIANTS:
    config = HubertConfig(**{**TINY, **VARIANTS[variant]})
    hf = transformers.HubertConfig(**config.to_hf()).to_dict()
    assert HubertConfig.from_hf(hf) == config
    assert HubertConfig.from_dict(dataclasses.asdict(config)) == config


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="feat_extract_norm='batch'"):
    HubertConfig(feat_extract_norm="batch")
  with pytest.raises(ValueError, match="conv_dim=\\[512\\], conv_stride"):
    HubertConfig(conv_dim=(512,))
  with pytest.raises(ValueError, match="num_conv_pos_embedding_groups=5"):
    HubertConfig(num_conv_pos_embedding_groups=5)
  with pytest.raises(ValueError, match="unknown fields \\['hidden'\\]"):
    HubertConfig.from_dict({"hidden": 3})
  with pytest.raises(ValueError, match="model_type='wav2vec2'"):
    HubertConfig.from_hf({"model_type": "wav2vec2"})
  with pytest.raises(ValueError, match="conv_pos_batch_norm"):
    HubertConfig.from_hf({"model_type": "hubert", "conv_pos_batch_norm": True})


def test_hubert_large_param_count_equals_transformers():
  hf = transformers.HubertConfig(
      hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
      feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
      feat_proj_layer_norm=True)
  with torch.device("meta"):
    model = transformers.HubertModel(hf)
  want = sum(p.numel() for p in model.parameters())
  config = HubertConfig.from_hf(hf.to_dict())
  got = hubert.param_count(config)
  print(f"HuBERT-large: project {got:,} / transformers {want:,}")
  assert got == want == hf_hubert.param_count(config)
