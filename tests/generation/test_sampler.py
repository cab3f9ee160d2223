"""Sampler: greedy parity with transformers' generate, sampling distributions (chi-square),
EOS handling and input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.testlib import qwen2 as lib
from affect_jax.checkpoints import hf_qwen2
from affect_jax.models import qwen2
from affect_jax.generation import sampler

NEW = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  hf = lib.hf_model(seed=3, num_key_value_heads=2, tie_word_embeddings=False)
  config, params = hf_qwen2.load(lib.save_hf(hf, tmp_path_factory.mktemp("sampler")))
  return hf, config, params


def _hf_greedy(hf, prompts, new_tokens):
  tokens, mask = sampler.pad_prompts(prompts, sampler.SamplingConfig(buckets=(16,)))
  with torch.no_grad():
    out = hf.generate(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                      attention_mask=torch.as_tensor(mask, dtype=torch.long),
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=0, eos_token_id=None, use_cache=True)
  return out[:, tokens.shape[1]:].numpy()


def test_greedy_matches_transformers_generate(model):
  hf, config, params = model
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, 256, size=n)) for n in (11, 4, 7, 1)]
  cfg = sampler.SamplingConfig(max_new_tokens=NEW, greedy=True, buckets=(8, 16))
  tokens, mask = sampler.pad_prompts(prompts, cfg)
  assert tokens.shape == (4, 16)
  generate = sampler.make_generate(config, cfg, num_samples=2)
  cache = qwen2.init_cache(config, 8, 16 + NEW)
  out, _ = generate(params, tokens, mask, jax.random.key(0), cache)
  expect = _hf_greedy(hf, prompts, NEW)
  got = np.asarray(out.tokens)
  np.testing.assert_array_equal(got[0::2], expect)
  np.testing.assert_array_equal(got[1::2], expect)
  assert np.all(np.asarray(out.lengths) == NEW)
  # Log-probs are those of the model's distribution at each step.
  full = np.concatenate([tokens, expect], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(expect, bool)], axis=1)
  pos = np.maximum(np.cumsum(full_mask, 1) - 1, 0)
  logits = lib.hf_logits(hf, full, full_mask, pos)[:, tokens.shape[1] - 1:-1]
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  ref = np.take_along_axis(logp, expect[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logps)[0::2], ref, atol=2e-4)


def test_eos_stops_rows_and_pads(model):
  hf, config, params = model
  prompts = [[5, 6, 7, 8], [9, 10]]
  greedy = sampler.SamplingConfig(max_new_tokens=NEW, greedy=True, buckets=(8,))
  free = _hf_greedy(hf, prompts, NEW)
  eos = int(free[0, 3])                 # row 0 emits this id at step 3 (maybe earlier too)
  cfg = sampler.SamplingConfig(max_new_tokens=NEW, greedy=True, buckets=(8,), eos_ids=(eos,),
                               pad_id=0)
  tokens, mask = sampler.pad_prompts(prompts, cfg)
  out, _ = jax.jit(lambda p, t, m: sampler.sample(
      p, config, cfg, prompt_mask=m, rng=jax.random.key(0), tokens=t))(params, tokens, mask)
  got, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for r in range(2):
    hits = np.flatnonzero(free[r] == eos)
    end = hits[0] + 1 if len(hits) else NEW
    assert lengths[r] == end
    np.testing.assert_array_equal(got[r, :end], free[r, :end])
    assert np.all(got[r, end:] == 0) and np.all(np.asarray(out.logps)[r, end:] == 0)
  assert bool(out.done[0])
  del greedy


def test_stop_sequences_end_rows_as_stopping_criteria_do(model):
  """A row ends after the first generated window equal to a stop sequence (as the official
  Chat's StoppingCriteriaSub checks the last generated ids), or at an EOS; the reference is the
  first such position in transformers' free-running greedy tokens."""
  hf, config, params = model
  prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
  free = _hf_greedy(hf, prompts, NEW)
  pair = (int(free[1, 4]), int(free[1, 5]))        # a two-token stop, ends row 1 by step 5
  single = (int(free[0, 2]),)                      # a one-token stop, ends row 0 by step 2
  cfg = sampler.SamplingConfig.from_dict(dict(max_new_tokens=NEW, greedy=True, buckets=(8,),
                                              pad_id=0, stop_sequences=[list(pair), single]))
  tokens, mask = sampler.pad_prompts(prompts, cfg)
  out, _ = jax.jit(lambda p, t, m: sampler.sample(
      p, config, cfg, prompt_mask=m, rng=jax.random.key(0), tokens=t))(params, tokens, mask)
  got, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for r in range(3):
    ends = [i + 1 for i in range(NEW) if free[r, i] == single[0]
            or (i >= 1 and (free[r, i - 1], free[r, i]) == pair)]
    end = ends[0] if ends else NEW
    assert lengths[r] == end, r
    np.testing.assert_array_equal(got[r, :end], free[r, :end])
    assert np.all(got[r, end:] == 0) and bool(out.done[r]) == bool(ends)
  assert lengths[0] <= 3 and lengths[1] <= 6
  with pytest.raises(ValueError, match="stop sequence is empty"):
    sampler.SamplingConfig(stop_sequences=((),))


def _expected_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
  z = logits / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  keep = np.ones_like(p, bool)
  if top_k:
    keep &= z >= np.sort(z)[-top_k]
  if top_p < 1.0:
    # As transformers' TopPLogitsWarper after TopK: the nucleus of the top-k-renormalised p.
    p = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum()
    order = np.argsort(-z, kind="stable")
    cum_before = np.cumsum(p[order]) - p[order]
    nucleus = np.zeros_like(keep)
    nucleus[order[cum_before < top_p]] = True
    keep &= nucleus
  q = np.where(keep, p, 0.0)
  return q / q.sum()


def _chi_square_pvalue(counts, probs):
  support = probs > 0
  assert counts[~support].sum() == 0, "sampled a token outside the allowed set"
  expected = probs[support] * counts.sum()
  stat = float(((counts[support] - expected) ** 2 / expected).sum())
  df = int(support.sum()) - 1
  return float(jax.scipy.stats.chi2.sf(stat, df))


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0), dict(temperature=0.5), dict(temperature=1.7),
    dict(temperature=1.0, top_k=4), dict(temperature=0.8, top_p=0.7),
    dict(temperature=1.2, top_k=6, top_p=0.9)])
def test_sampling_distribution_chi_square(settings):
  logits = np.array([2.0, 1.5, 1.2, 0.3, 0.0, -0.4, -1.0, 0.9, 1.1, -2.0], np.float32)
  draws = 40000
  cfg = sampler.SamplingConfig(**settings)
  batch = jnp.broadcast_to(jnp.asarray(logits), (draws, logits.size))
  tokens, logp = jax.jit(lambda l, r: sampler._choose(l, r, cfg))(batch, jax.random.key(7))
  counts = np.bincount(np.asarray(tokens), minlength=logits.size)
  probs = _expected_probs(logits.astype(np.float64), **settings)
  assert _chi_square_pvalue(counts, probs) > 1e-3, (counts, probs * draws)
  # The returned log-prob is that of the temperature-scaled, untruncated distribution.
  full = _expected_probs(logits.astype(np.float64), settings["temperature"])
  np.testing.assert_allclose(np.asarray(logp), np.log(full[np.asarray(tokens)]), atol=1e-5)


def test_first_token_distribution_of_the_model(model):
  hf, config, params = model
  cfg = sampler.SamplingConfig(max_new_tokens=1, temperature=0.9, top_k=6, buckets=(8,))
  tokens, mask = sampler.pad_prompts([[4, 8, 15, 16, 23]], cfg)
  g = 6000
  out, _ = jax.jit(lambda p, t, m, r: sampler.sample(
      p, config, cfg, prompt_mask=m, rng=r, tokens=t, num_samples=g))(
          params, tokens, mask, jax.random.key(1))
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  logits = lib.hf_logits(hf, tokens, mask, pos)[0, -1].astype(np.float64)
  probs = _expected_probs(logits, 0.9, top_k=6)
  counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=logits.size)
  assert _chi_square_pvalue(counts, probs) > 1e-3


def test_bad_inputs_are_clear_errors(model):
  _, config, params = model
  with pytest.raises(ValueError, match="largest bucket"):
    sampler.pad_prompts([[1] * 40], sampler.SamplingConfig(buckets=(8, 16)))
  with pytest.raises(ValueError, match="empty"):
    sampler.pad_prompts([[1, 2], []], sampler.SamplingConfig())
  cfg = sampler.SamplingConfig(max_new_tokens=500, greedy=True)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    sampler.sample(params, config, cfg, prompt_mask=jnp.ones((1, 64), bool),
                   rng=jax.random.key(0), tokens=jnp.ones((1, 64), jnp.int32))
  with pytest.raises(ValueError, match="temperature"):
    sampler.SamplingConfig(temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    sampler.SamplingConfig(top_p=1.5)


def test_repetition_penalty_matches_numpy_and_transformers(model):
  logits = np.array([[2.0, -1.0, 0.5, -0.2, 0.0]], np.float32)
  seen = np.array([[True, True, False, True, True]])
  # CTRL / transformers' rule written out: positive logits / p, negative ones * p.
  expect = np.array([[2.0 / 1.3, -1.3, 0.5, -0.26, 0.0]], np.float32)
  np.testing.assert_allclose(np.asarray(sampler.apply_repetition_penalty(
      jnp.asarray(logits), jnp.asarray(seen), 1.3)), expect, rtol=1e-6)

  hf, config, params = model
  rng = np.random.default_rng(5)
  prompts = [list(rng.integers(3, 40, size=6)) for _ in range(3)]   # repeats inside prompts
  for penalty in (1.3, 0.8):
    cfg = sampler.SamplingConfig(max_new_tokens=NEW, greedy=True, buckets=(6,),
                                 repetition_penalty=penalty)
    tokens, mask = sampler.pad_prompts(prompts, cfg)
    out, _ = jax.jit(lambda p, t, m: sampler.sample(
        p, config, cfg, prompt_mask=m, rng=jax.random.key(0), tokens=t))(params, tokens, mask)
    with torch.no_grad():
      ref = hf.generate(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                        max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                        repetition_penalty=penalty, pad_token_id=0, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, tokens.shape[1]:].numpy())
  plain = sampler.SamplingConfig(max_new_tokens=NEW, greedy=True, buckets=(6,))
  unpenalised = jax.jit(lambda p, t, m: sampler.sample(
      p, config, plain, prompt_mask=m, rng=jax.random.key(0), tokens=t)[0].tokens)(
          params, tokens, mask)
  assert not np.array_equal(np.asarray(unpenalised), np.asarray(out.tokens))   # it acts
  with pytest.raises(ValueError, match="repetition_penalty"):
    sampler.SamplingConfig(repetition_penalty=0.0)
