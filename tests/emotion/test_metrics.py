"""Host metrics against hand-checked numbers and plain formulas."""
import numpy as np
import pytest

from tests.testlib import ew as ew_testlib
from affect_jax.emotion import metrics, wheel


def _f(p, r):
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_paper_notes_worked_example(official_ew_dir):
  tables = wheel.load_tables(official_ew_dir)
  # Per-wheel (P, R) from PAPER_NOTES.md section 4.
  pr = [(1, 1), (.5, 1), (.5, 1), (.5, .5), (1, .5)]
  s = metrics.ov_scores(["[happy, excited]"], ["joyful, surprised"], tables)
  assert s["n_scored"] == 1
  assert s["ew_precision"] == pytest.approx(np.mean([p for p, _ in pr]))
  assert s["ew_recall"] == pytest.approx(np.mean([r for _, r in pr]))
  assert s["ew_f"] == pytest.approx(np.mean([_f(p, r) for p, r in pr]))
  maps = wheel.official_maps(wheel.read_files(official_ew_dir))
  assert metrics.official_sample_scores("[happy, excited]", "joyful, surprised", maps) == pr
  reward = metrics.official_completion_reward(
      "[happy, excited]", "<think>x</think><answer>joyful, surprised</answer>", maps)
  assert reward == pytest.approx(np.mean([_f(p, r) for p, r in pr]))


def test_neutral_only_ground_truth_is_skipped(official_ew_dir):
  tables = wheel.load_tables(official_ew_dir)
  s = metrics.ov_scores(["neutral", "", "happy"], ["happy", "sad", "happy"], tables)
  assert s["n_scored"] == 1 and s["ew_f"] == pytest.approx(1.0)
  for v in s["variants"].values():
    assert v["n_scored"] == 1
  # Nothing scored at all: 0, not NaN.
  empty = metrics.ov_scores(["neutral"], ["happy"], tables)
  assert empty["n_scored"] == 0 and empty["ew_f"] == 0.0
  assert metrics.per_sample_rewards(["neutral"], ["happy"], tables).tolist() == [0.0]


def test_empty_predictions_score_zero(official_ew_dir):
  tables = wheel.load_tables(official_ew_dir)
  s = metrics.ov_scores(["happy", "sad"], ["", "xyzzy, neutral"], tables)
  assert s["n_scored"] == 2
  assert s["ew_precision"] == 0.0 and s["ew_recall"] == 0.0 and s["ew_f"] == 0.0


def test_dataset_scores_equal_reference_on_random_rows():
  tables = wheel.load_tables(None)
  ref = ew_testlib.ReferenceWheel(wheel.DEMO_DIR)
  rng = np.random.default_rng(0)
  surfaces = list(tables.surfaces) + ["neutral", "xyzzy"]
  cells = lambda: ", ".join(rng.choice(surfaces, size=int(rng.integers(0, 4))))
  gt = [cells() for _ in range(200)]
  pred = [cells() for _ in range(200)]
  s = metrics.ov_scores(gt, pred, tables)
  for variant, got in s["variants"].items():
    ps, rs = [], []
    for g_cell, p_cell in zip(gt, pred):
      g = {c for c in (ref.map(x.lower().strip(), variant)
                       for x in ew_testlib.official_list(g_cell)) if c}
      p = {c for c in (ref.map(x.lower().strip(), variant)
                       for x in ew_testlib.official_list(p_cell)) if c}
      if g:
        ps.append(len(g & p) / len(p) if p else 0.0)
        rs.append(len(g & p) / len(g) if p else 0.0)
    assert got["n_scored"] == len(ps)
    assert got["precision"] == pytest.approx(np.mean(ps))
    assert got["recall"] == pytest.approx(np.mean(rs))
    assert got["f"] == pytest.approx(_f(np.mean(ps), np.mean(rs)))
  assert len(s["variants"]) == 12
  level2 = metrics.ov_scores(gt, pred, tables, level=2)
  assert level2["ew_f"] == pytest.approx(np.mean(
      [s["variants"][f"wheel{k}_level2"]["f"] for k in range(1, 6)]))
  with pytest.raises(ValueError, match="level=3"):
    metrics.ov_scores(gt, pred, tables, level=3)
  per_sample = metrics.per_sample_rewards(gt, pred, tables)
  np.testing.assert_allclose(per_sample, [ref.sample_f(g, p) for g, p in zip(gt, pred)],
                             atol=1e-12)


def test_hit_counts_mapped_ground_truth_only():
  tables = wheel.load_tables(None)
  ref = ew_testlib.ReferenceWheel(wheel.DEMO_DIR)
  gt = ["happy", "sad", "neutral", "angry"]
  pred = ["joyful, calm", "happy", "sad", "xyzzy"]
  s = metrics.hit_scores(gt, pred, tables)
  expected = []
  for k in range(1, 6):
    hits = []
    for g, p in zip(gt, pred):
      gs = {ref.map(g, f"wheel{k}_level1")} - {""}
      ps = {ref.map(x.strip(), f"wheel{k}_level1") for x in p.split(",")} - {""}
      if gs:
        hits.append(len(gs & ps))
    expected.append(np.mean(hits))
  assert s["hit"] == pytest.approx(np.mean(expected))
  assert s["n_scored"] == 3


def test_sentiment_weighted_f1():
  valence = [1.5, -2.0, 0.0, 0.4, -0.2, 2.0]
  pred_positive = [True, False, True, False, False, True]
  s = metrics.sentiment_scores(valence, pred_positive)
  # Kept: y = [1, 0, 1, 0, 1], y_hat = [1, 0, 0, 0, 1]
  f_pos = 2 * 2 / (2 * 2 + 0 + 1)
  f_neg = 2 * 2 / (2 * 2 + 1 + 0)
  assert s["n_scored"] == 5
  assert s["waf"] == pytest.approx((3 * f_pos + 2 * f_neg) / 5)
  assert s["acc"] == pytest.approx(4 / 5)


def test_label_polarity_demo_wheel():
  tables = wheel.load_tables(None)
  assert metrics.label_polarity(["happy, cheerful", "sad, gloomy", "", "xyzzy"],
                                tables).tolist() == [1, -1, 0, 0]


def test_unibench_table_mean():
  scores = {d: float(i) for i, d in enumerate(metrics.UNIBENCH_DATASETS)}
  table = metrics.unibench_table(scores)
  assert table["complete"] and table["mean"] == pytest.approx(4.0)
  assert [r["dataset"] for r in table["rows"]] == list(metrics.UNIBENCH_DATASETS)
  partial = metrics.unibench_table({"MELD": 50.0, "OV-MERD+": 70.0})
  assert not partial["complete"] and partial["mean"] == pytest.approx(60.0)
  with pytest.raises(ValueError, match="unknown dataset"):
    metrics.unibench_table({"MOSI": 1.0})
