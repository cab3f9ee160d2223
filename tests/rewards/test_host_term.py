"""The host-Python adapter: the EW reference registered through jax.pure_callback
(accuracy_host) equals the device term accuracy on sample completions."""
import jax
import numpy as np
import pytest

from affect_jax.emotion import labels, wheel
from affect_jax.rewards import host_term, registry, total
from affect_jax.rewards.terms import emotion_wheel as ew_term
from configs.reward import get_reward_config
from tests.testlib import ew as ew_testlib


def test_host_accuracy_equals_the_device_term():
  tables = wheel.load_tables(None)
  rng = np.random.default_rng(4)
  surfaces = list(tables.surfaces)
  texts = [ew_testlib.random_completion(rng, surfaces) for _ in range(48)]
  texts += ["<think>x</think><answer>" + ", ".join(surfaces[:20]) + "</answer>", "no tags",
            "<think>x</think><answer>[Happy, sad]</answer>"]
  gts = [", ".join(rng.choice(surfaces, size=int(rng.integers(0, 4)))) for _ in texts]
  tokenizer = ew_testlib.bpe_tokenizer(tuple(texts) + tuple(surfaces))
  c = get_reward_config()
  c.terms = dict(accuracy=dict(weight=1.0), accuracy_host=dict(weight=0.5))
  cfg = total.RewardConfig.from_config(c)
  ids, lengths = ew_testlib.encode(tokenizer, texts)
  ids[-1, lengths[-1]:] = 7                       # past a row's length: ignored on both sides
  gt_ids, n_gt = ew_term.gt_arrays(gts, tables, 16)
  resources = total.setup(cfg, registry.Context(tokenizer, tables))
  out = jax.device_get(total.make_reward_fn(resources, cfg)(
      ids, lengths, {"gt_ids": gt_ids, "n_gt": n_gt}))
  assert len(set(np.round(out["accuracy"], 3))) > 3       # not all 0 or 1
  np.testing.assert_allclose(out["accuracy_host"], out["accuracy"], atol=1e-6)
  np.testing.assert_allclose(out["total"], out["accuracy"] + 0.5 * out["accuracy_host"],
                             atol=1e-6)
  # The adapter decodes what the device reads.
  assert host_term.decode_rows(tokenizer, ids[:3], lengths[:3]) == texts[:3]
  assert total.metric_names(cfg) == ("accuracy", "accuracy_host", "penalty", "n_pred")
  # The bad-completion rule (more items than max_labels) holds on the host too.
  assert out["accuracy_host"][-3] == 0.0 and len(labels.parse_labels(
      labels.split_completion(texts[-3]).answer)) > 16


def test_a_wrong_shape_from_the_host_is_an_error():
  @host_term.register("test_wrong_shape")
  def wrong(texts, rows, cfg, context):
    return [0.0] * (len(texts) + 1)

  c = get_reward_config()
  c.terms = dict(test_wrong_shape=dict(weight=1.0))
  cfg = total.RewardConfig.from_config(c)
  tokenizer = ew_testlib.char_tokenizer("ab")
  resources = total.setup(cfg, registry.Context(tokenizer, None))
  with pytest.raises(Exception, match="returned shape \\(3,\\); expected \\(2,\\)"):
    jax.block_until_ready(total.make_reward_fn(resources, cfg)(
        np.zeros((2, 3), np.int32), np.ones(2, np.int32), {"n_gt": np.zeros(2, np.int32)}))
  registry.TERMS.pop("test_wrong_shape")


def test_host_term_and_batch_normalisation_on_a_mesh_equal_one_device():
  """Each device runs the host callback on its own rows, and the batch-normalised term's mean
  and std cover all rows: every term equals one device's bit for bit, the total to float
  rounding (the cross-device mean and std add in another order)."""
  if jax.device_count() < 4:
    pytest.skip("needs 4 (fake) devices")
  tables = wheel.load_tables(None)
  rng = np.random.default_rng(6)
  surfaces = list(tables.surfaces)
  texts = [ew_testlib.random_completion(rng, surfaces) for _ in range(16)]
  gts = [", ".join(rng.choice(surfaces, size=2)) for _ in texts]
  tokenizer = ew_testlib.bpe_tokenizer(tuple(texts) + tuple(surfaces))
  c = get_reward_config()
  c.terms = dict(accuracy=dict(weight=1.0), accuracy_host=dict(weight=0.5),
                 brevity=dict(weight=0.1, normalize="batch", target_tokens=20))
  cfg = total.RewardConfig.from_config(c)
  ids, lengths = ew_testlib.encode(tokenizer, texts)
  gt_ids, n_gt = ew_term.gt_arrays(gts, tables, 16)
  resources = total.setup(cfg, registry.Context(tokenizer, tables))
  rows = {"gt_ids": gt_ids, "n_gt": n_gt}
  single = jax.device_get(total.make_reward_fn(resources, cfg)(ids, lengths, rows))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  args = jax.device_put((ids, lengths, rows), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data")))
  out = jax.device_get(jax.jit(lambda i, l, r: total.row_local_rewards(
      i, l, r, resources, cfg, mesh=mesh, batch_axes="data"))(*args))
  assert set(out) == set(single) and np.std(single["brevity"]) > 0
  for key in single:
    if key != "total":
      np.testing.assert_array_equal(out[key], single[key], err_msg=key)
  np.testing.assert_allclose(out["total"], single["total"], atol=1e-6)
