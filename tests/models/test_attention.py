"""models/attention.py: every named implementation against a plain numpy attention (masks,
GQA, causal + KV cache decode in both cache layouts, padding rows), "auto"'s choice, and the
decoder run end to end with each implementation against transformers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.testlib import qwen2 as lib
from affect_jax.checkpoints import hf_qwen2
from affect_jax.generation import sampler
from affect_jax.models import attention, qwen2

TOL = 2e-5
ON_GPU = jax.default_backend() == "gpu"
IMPLS = ["reference", "xla", "cpu_tuned",
         pytest.param("cudnn", marks=pytest.mark.skipif(not ON_GPU, reason="cuDNN needs a GPU"))]


def numpy_attention(q, k, v, mask):
  """q [B, T, N, D], k / v [B, S, K, D], mask [B, T, S]: softmax(q k^T / sqrt(D)) v per head,
  query head n reading kv head n // (N / K); rows with no allowed slot are left at 0."""
  b, t, n, d = q.shape
  g = n // k.shape[2]
  out = np.zeros(q.shape, np.float64)
  for bi in range(b):
    for ti in range(t):
      allowed = mask[bi, ti]
      if not allowed.any():
        continue
      for ni in range(n):
        s = k[bi, :, ni // g] @ q[bi, ti, ni].astype(np.float64) / np.sqrt(d)
        s = np.where(allowed, s, -np.inf)
        p = np.exp(s - s.max())
        out[bi, ti, ni] = (p / p.sum()) @ v[bi, :, ni // g]
  return out


def _qkv(seed, b, t, s, n, kv, d, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, t, n, d)).astype(dtype), rng.normal(size=(b, s, kv, d)).astype(dtype),
          rng.normal(size=(b, s, kv, d)).astype(dtype))


def _run(impl, q, k, v, mask, layout="bskd"):
  dtype = jnp.bfloat16 if impl == "cudnn" else jnp.float32   # cuDNN's fused kernel: 16-bit
  cast = lambda x: jnp.asarray(x, dtype)
  k, v = (attention.to_layout(name, cast(x), layout) for name, x in (("k", k), ("v", v)))
  fn = jax.jit(lambda q, k, v, m: attention.attend(q, k, v, m, impl=impl, layout=layout))
  return np.asarray(fn(cast(q), k, v, jnp.asarray(mask)).astype(jnp.float32))


def _check(impl, got, want, mask):
  rows = mask.any(-1)                                   # [B, T]: queries with a real slot
  tol = 3e-2 if impl == "cudnn" else TOL
  np.testing.assert_allclose(got[rows], want[rows], atol=tol, rtol=tol)
  assert np.isfinite(got).all(), "padding rows must stay finite"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kv", [1, 2, 4, 8])
@pytest.mark.parametrize("side", ["left", "right"])
def test_causal_forward_with_padding(impl, kv, side):
  b, t, n, d = 3, 7, 8, 16
  q, k, v = _qkv(kv, b, t, t, n, kv, d)
  lengths = np.array([7, 4, 1])
  cols = np.arange(t)[None]
  real = cols >= t - lengths[:, None] if side == "left" else cols < lengths[:, None]
  mask = np.asarray(attention.causal_mask(jnp.asarray(real), b, t))
  _check(impl, _run(impl, q, k, v, mask), numpy_attention(q, k, v, mask), mask)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", attention.CACHE_LAYOUTS)
@pytest.mark.parametrize("kv,new", [(1, 1), (2, 1), (4, 1), (8, 1), (2, 5), (8, 3)])
def test_cache_prefill_and_decode(impl, layout, kv, new):
  """T new tokens at slots [index, index + T) of a 13-slot cache with left-padded prompts."""
  b, s, n, d, index = 3, 13, 8, 16, 6
  q, k, v = _qkv(10 + kv, b, new, s, n, kv, d)
  kv_mask = np.zeros((b, s), bool)
  kv_mask[0, :index + new] = True
  kv_mask[1, 2:index + new] = True
  kv_mask[2, index - 1:index + new] = True
  mask = np.asarray(attention.cache_mask(jnp.asarray(kv_mask), jnp.int32(index), new))
  _check(impl, _run(impl, q, k, v, mask, layout), numpy_attention(q, k, v, mask), mask)


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_query_rows_stay_finite(impl):
  b, t, n, kv, d = 2, 4, 4, 2, 8
  q, k, v = _qkv(3, b, t, t, n, kv, d)
  mask = np.ones((b, t, t), bool)
  mask[1, :2] = False                                  # two queries with no allowed slot
  _check(impl, _run(impl, q, k, v, mask), numpy_attention(q, k, v, mask), mask)


def test_cpu_tuned_under_a_kv_head_split_uses_the_reference(monkeypatch):
  monkeypatch.setattr(attention, "_kv_heads_split", lambda: True)
  q, k, v = _qkv(4, 2, 1, 9, 8, 2, 16)
  mask = np.ones((2, 1, 9), bool)
  got = _run("cpu_tuned", q, k, v, mask)
  np.testing.assert_array_equal(got, _run("reference", q, k, v, mask))


def test_bfloat16_inputs_give_their_dtype():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv(5, 2, 3, 3, 4, 2, 8))
  mask = attention.causal_mask(None, 2, 3)
  for impl in ("reference", "xla", "cpu_tuned"):
    assert attention.attend(q, k, v, mask, impl=impl).dtype == jnp.bfloat16


@pytest.mark.parametrize("backend,impl,layout", [("cpu", "cpu_tuned", "decode"),
                                                 ("gpu", "xla", "bskd"),
                                                 ("tpu", "xla", "bskd")])
def test_auto_picks_by_backend(monkeypatch, backend, impl, layout):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert attention.resolve("auto") == impl
  assert attention.decode_layout("auto") == layout
  assert attention.resolve("reference") == "reference"
  assert attention.decode_layout("reference") == "bskd"


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="attention_impl='flash'.*use one of"):
    qwen2.Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=2, attention_impl="flash")
  with pytest.raises(ValueError, match="cache layout 'bkds'"):
    attention.attend(*(jnp.zeros((1, 1, 2, 4)),) * 3, jnp.ones((1, 1, 1), bool), layout="bkds")


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
  hf = lib.hf_model(seed=7, num_key_value_heads=2)
  config, params = hf_qwen2.load(lib.save_hf(hf, tmp_path_factory.mktemp("attn")))
  return hf, config, params


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_decoder_with_each_impl_matches_transformers(hf_case, impl):
  """Left-padded full forward, and greedy sampling (prefill + decode over the impl's cache
  layout) against transformers."""
  hf, config, params = hf_case
  config = dataclasses.replace(config, attention_impl=impl)
  tokens, mask, positions = lib.padded_batch(0, [9, 5, 2], 9, config.vocab_size, "left")
  logits, _ = jax.jit(lambda p: qwen2.Qwen2(config).apply(
      {"params": p}, tokens, positions=positions, attention_mask=mask))(params)
  ref = lib.hf_logits(hf, tokens, mask, positions)
  np.testing.assert_allclose(np.asarray(logits)[mask], ref[mask], atol=1e-4, rtol=1e-4)

  settings = sampler.SamplingConfig(max_new_tokens=6, greedy=True, buckets=(9,))
  out, _ = jax.jit(lambda p: sampler.sample(p, config, settings, prompt_mask=jnp.asarray(mask),
                                            rng=jax.random.key(0), tokens=tokens))(params)
  for row, n in enumerate([9, 5, 2]):
    seq = list(tokens[row, 9 - n:])
    for _ in range(6):
      seq.append(int(lib.hf_logits(hf, np.asarray([seq]))[0, -1].argmax()))
    assert list(np.asarray(out.tokens[row])) == seq[n:], (row, impl)


@pytest.mark.parametrize("impl", attention.IMPLEMENTATIONS)
def test_config_validation_accepts_every_implementation(impl):
  from configs import tiny, validate
  c = tiny.get_config()
  c.model.llm.attention_impl = impl
  assert validate.errors(c, root="", training=False) == []
  assert qwen2.Qwen2Config.from_dict(c.model.llm).attention_impl == impl
