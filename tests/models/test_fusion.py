"""Fusion against plain-numpy formulas of PAPER_NOTES.md section 2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.models import fusion

CFG = fusion.FusionConfig(video_dim=6, audio_dim=5, multi_dim=7, llm_dim=8)


def _dense(p, x):
  return x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  video = rng.normal(size=(3, 4, 6)).astype(np.float32)
  audio = rng.normal(size=(3, 5, 5)).astype(np.float32)
  params = sharding.unbox(fusion.Fusion(CFG).init(jax.random.key(1), video, audio))["params"]
  # Non-zero biases so that they are exercised.
  params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)
  return params, video, audio


def test_fusion_matches_numpy_formulas(setup):
  params, video, audio = setup
  out = fusion.Fusion(CFG).apply({"params": params}, video, audio)

  def pool(p, h):
    a = _dense(p["score"], h)                    # [B, T, 1], no softmax
    return _dense(p["proj"], (a * h).sum(axis=1))

  pm = params["multi"]
  v = _dense(pm["video_in"], video.mean(1))
  a = _dense(pm["audio_in"], audio.mean(1))
  w = _dense(pm["weights"], _dense(pm["mix"], np.concatenate([v, a], -1)))
  multi = _dense(pm["proj"], w[:, :1] * v + w[:, 1:] * a)
  np.testing.assert_allclose(out["video"], pool(params["video"], video), atol=1e-5)
  np.testing.assert_allclose(out["audio"], pool(params["audio"], audio), atol=1e-5)
  np.testing.assert_allclose(out["multi"], multi, atol=1e-5)
  assert all(x.shape == (3, 8) for x in out.values())


def test_splice_replaces_only_placeholders():
  tokens = jnp.array([[1, 9, 2, 8], [7, 7, 3, 4]])
  embeds = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  mods = {"audio": jnp.full((2, 3), -1.0), "video": jnp.full((2, 3), -2.0)}
  out = np.asarray(fusion.splice(embeds, tokens, mods, {"audio": 9, "video": 7}))
  expect = np.asarray(embeds).copy()
  expect[0, 1] = -1.0
  expect[1, 0] = expect[1, 1] = -2.0
  np.testing.assert_array_equal(out, expect)


def test_splice_unknown_modality_is_a_clear_error():
  with pytest.raises(ValueError, match="placeholder_ids.multi"):
    fusion.splice(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32),
                  {"multi": jnp.zeros((1, 3))}, {"audio": 1})


def test_config_rejects_unknown_fields():
  with pytest.raises(ValueError, match="unknown fields"):
    fusion.FusionConfig.from_dict({"video_dim": 3, "bogus": 1})
