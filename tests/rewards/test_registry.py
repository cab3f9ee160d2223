"""The reward registry: terms by name, the weighted total, normalisation, penalties, metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax.rewards import registry, total
from configs.reward import get_reward_config


def _config(terms: dict, **top):
  c = get_reward_config(**top)
  c.terms = terms
  return total.RewardConfig.from_config(c)


def _run(cfg, lengths, n_gt=None, width=8):
  lengths = np.asarray(lengths, np.int32)
  ids = np.zeros((len(lengths), width), np.int32)
  rows = {"n_gt": np.zeros(len(lengths), np.int32) if n_gt is None else np.asarray(n_gt)}
  return jax.device_get(total.make_reward_fn({}, cfg)(ids, lengths, rows))


def test_terms_register_from_their_modules():
  registry.load()
  for name in ("accuracy", "format", "alignment", "dual", "brevity", "accuracy_host"):
    assert name in registry.TERMS
  assert registry.TERMS["accuracy"].analysis == "ew"
  assert registry.TERMS["brevity"].analysis is None


def test_brevity_alone_runs_no_analysis_and_logs_itself():
  cfg = _config({"brevity": {"weight": 0.5, "target_tokens": 4}})
  assert cfg.needed_analyses() == () and total.metric_names(cfg) == ("brevity", "penalty")
  out = _run(cfg, [0, 4, 5, 6, 8, 9])
  want = np.clip(1 - np.maximum(np.array([0, 4, 5, 6, 8, 9]) - 4, 0) / 4, 0, 1)
  np.testing.assert_allclose(out["brevity"], want, rtol=1e-6)
  np.testing.assert_allclose(out["total"], 0.5 * want, rtol=1e-6)
  assert out["penalty"].tolist() == [1.0] * 6


def test_metric_names_follow_the_registry():
  cfg = total.RewardConfig.from_config(get_reward_config())
  # What the GRPO recipe logs (reward/<name>), in the registry's order whatever the config's.
  assert total.metric_names(cfg) == ("accuracy", "format", "alignment", "dual", "penalty",
                                     "n_pred")
  c = get_reward_config()
  c.terms.brevity = dict(weight=0.05)
  assert total.metric_names(total.RewardConfig.from_config(c))[:5] == (
      "accuracy", "format", "alignment", "dual", "brevity")


def test_batch_normalisation_and_weights():
  cfg = _config({"brevity": {"weight": 2.0, "normalize": "batch", "target_tokens": 2}},
                normalize_eps=1e-3)
  lengths = np.array([1, 2, 3, 4, 5, 6, 2, 3])
  out = _run(cfg, lengths)
  x = np.clip(1 - np.maximum(lengths - 2, 0) / 2, 0, 1)
  want = 2.0 * (x - x.mean()) / (x.std() + 1e-3)
  np.testing.assert_allclose(out["total"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["brevity"], x, rtol=1e-6)   # the term itself, unscaled


def test_penalty_multiplies_a_new_term_and_reads_the_ew_item_count():
  """The P2 penalty on brevity: the EW analysis runs for n_pred (the answer's items)."""
  from affect_jax.emotion import wheel
  from affect_jax.rewards.terms import emotion_wheel as ew_term
  from tests.testlib import ew as ew_testlib
  tables = wheel.load_tables(None)
  tokenizer = ew_testlib.char_tokenizer("".join(sorted(set("<think>/answer happy, sad"))))
  cfg = _config({"brevity": {"weight": 1.0, "target_tokens": 200}}, penalty="p2",
                penalty_terms="brevity")
  assert cfg.needed_analyses() == ("ew",)
  texts = ["<think>a</think><answer>happy, sad, happy</answer>", "<answer>sad</answer>"]
  ids, lengths = ew_testlib.encode(tokenizer, texts)
  gt_ids, n_gt = ew_term.gt_arrays(["happy", "sad"], tables, 4)
  resources = total.setup(cfg, registry.Context(tokenizer, tables))
  out = jax.device_get(total.make_reward_fn(resources, cfg)(
      ids, lengths, {"gt_ids": gt_ids, "n_gt": n_gt}))
  assert out["n_pred"].tolist() == [3, 1]
  np.testing.assert_allclose(out["penalty"], [1 / 3, 1.0], rtol=1e-6)
  np.testing.assert_allclose(out["total"], [1 / 3, 1.0], rtol=1e-6)
  assert "accuracy" not in out


def test_errors_name_the_field():
  with pytest.raises(ValueError, match="reward.terms: no term"):
    _config({})
  with pytest.raises(ValueError, match="reward.terms.brevity: target_tokens=0"):
    _config({"brevity": {"target_tokens": 0}})
  with pytest.raises(ValueError, match="penalty_terms: unknown \\['accuracy'\\]"):
    _config({"brevity": {}}, penalty="p1")
  with pytest.raises(ValueError, match="registered twice"):
    registry.term("brevity")(lambda *a, **k: 0.0)
  with pytest.raises(ValueError, match="the batch rows lack \\['n_gt'\\]"):
    total.completion_rewards(np.zeros((1, 2), np.int32), np.ones(1, np.int32), {}, {},
                             _config({"brevity": {}}))


def test_label_counts_is_a_bincount_with_an_overflow_bin():
  n_pred = np.array([0, 2, 2, 16, 17, 40, 1], np.int32)
  got = np.asarray(total.label_counts(jnp.asarray(n_pred), 16))
  want = np.bincount(np.minimum(n_pred, 17), minlength=18)
  assert got.dtype == np.int32 and got.tolist() == want.tolist()
