"""Host metrics of MER-UniBench (PAPER_NOTES.md sections 4 and 5), in numpy over EwTables.

- `ov_scores`: OV-MER dataset EW-F / precision / recall (mean over the 5 wheels at level 1)
  and the 12 OV-MER variants (case1, case2, wheelK_levelL).
- `hit_scores`: HIT for basic-emotion sets (per wheel, level 1: mean over samples with a
  mappable ground truth of |G & P|; then the mean over the 5 wheels).
- `sentiment_scores`: weighted F1 (WAF) and accuracy of positive-vs-negative, dropping
  ground-truth valence 0; `label_polarity` is the documented wheel-based mapper from predicted
  labels to positive / negative / neutral (the official pipeline asks an LLM instead).
- `unibench_table`: the 9-dataset table and its unweighted mean.
- `official_sample_scores` / `official_completion_reward`: a deliberately plain per-sample
  reimplementation of the official code's dict/set logic (sorting candidates per label, as the
  official code does). It is the independent reference of the tests and the baseline of the
  reward benchmark.
All scores are fractions in [0, 1]; launch.score prints percent.
"""
from __future__ import annotations

import numpy as np

from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import wheel as wheel_lib

# Level-1 cluster words (official and demo wheels) -> sentiment polarity; others are neutral.
POSITIVE_WORDS = frozenset({
    "happy", "joy", "joyful", "powerful", "peaceful", "genius", "trust", "anticipation",
    "lively", "serene", "positive", "connected", "energized"})
NEGATIVE_WORDS = frozenset({
    "mad", "angry", "anger", "disgusted", "disgust", "sad", "sadness", "scared", "fearful",
    "fear", "bad", "tense", "down", "negative", "uneasy", "hurting", "irritated"})

UNIBENCH_DATASETS = ("MER2023", "MER2024", "MELD", "IEMOCAP", "CMU-MOSI", "CMU-MOSEI",
                     "CH-SIMS", "CH-SIMS v2", "OV-MERD+")
UNIBENCH_METRIC = {"MER2023": "hit", "MER2024": "hit", "MELD": "hit", "IEMOCAP": "hit",
                   "CMU-MOSI": "waf", "CMU-MOSEI": "waf", "CH-SIMS": "waf", "CH-SIMS v2": "waf",
                   "OV-MERD+": "ew_f"}


# ------------------------------------------------------------------------------------------
# Mapping cells to cluster sets.


def surface_ids(cells, tables: wheel_lib.EwTables) -> list[list[int]]:
  """Cells -> per cell the surface index of every parsed label (-1 = not a surface form)."""
  index = tables.surface_ids()
  return [[index.get(label, -1) for label in labels_lib.parse_labels(cell)] for cell in cells]


def cluster_sets(ids: list[list[int]], tables: wheel_lib.EwTables, variant: str) -> list[set]:
  """Surface ids -> per sample the set of cluster ids under `variant` (dropped ones removed)."""
  column = tables.clusters[:, tables.variant_index(variant)]
  return [{int(column[i]) for i in row if i >= 0 and column[i] >= 0} for row in ids]


def sample_precision_recall(gt: list[set], pred: list[set]):
  """Per sample (precision, recall, scored): skipped (scored False) when G is empty."""
  p = np.zeros(len(gt))
  r = np.zeros(len(gt))
  scored = np.zeros(len(gt), bool)
  for i, (g, q) in enumerate(zip(gt, pred)):
    if not g:
      continue
    scored[i] = True
    if q:
      hits = len(g & q)
      p[i], r[i] = hits / len(q), hits / len(g)
  return p, r, scored


def f_score(precision: float, recall: float) -> float:
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def per_sample_f(p: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Elementwise 2PR / (P + R), 0 where P + R = 0."""
  total = p + r
  return np.where(total > 0, 2 * p * r / np.where(total > 0, total, 1.0), 0.0)


# ------------------------------------------------------------------------------------------
# Dataset metrics.


def variant_scores(gt_ids, pred_ids, tables, variant: str) -> dict:
  """One variant: mean precision / recall over scored samples, F from those means."""
  p, r, scored = sample_precision_recall(cluster_sets(gt_ids, tables, variant),
                                         cluster_sets(pred_ids, tables, variant))
  n = int(scored.sum())
  precision = float(p[scored].mean()) if n else 0.0
  recall = float(r[scored].mean()) if n else 0.0
  return {"f": f_score(precision, recall), "precision": precision, "recall": recall,
          "n_scored": n}


def ov_scores(gt_cells, pred_cells, tables: wheel_lib.EwTables, level: int = 1) -> dict:
  """OV-MER: ew_f / ew_precision / ew_recall (mean over the 5 wheels at `level`, 1 by
  default as the papers report), n_scored (of wheel 1) and the 12 variants. Samples whose
  ground truth maps to nothing are skipped per variant; a variant with no scored sample
  reports 0 (the official code would give NaN)."""
  if level not in wheel_lib.LEVELS:
    raise ValueError(f"level={level}: expected one of {wheel_lib.LEVELS}.")
  gt_ids, pred_ids = surface_ids(gt_cells, tables), surface_ids(pred_cells, tables)
  variants = {v: variant_scores(gt_ids, pred_ids, tables, v) for v in wheel_lib.VARIANTS}
  headline = [variants[f"wheel{k}_level{level}"] for k in range(1, wheel_lib.NUM_WHEELS + 1)]
  return {"ew_f": float(np.mean([s["f"] for s in headline])),
          "ew_precision": float(np.mean([s["precision"] for s in headline])),
          "ew_recall": float(np.mean([s["recall"] for s in headline])),
          "n_scored": headline[0]["n_scored"], "variants": variants}


def per_sample_rewards(gt_cells, pred_cells, tables: wheel_lib.EwTables) -> np.ndarray:
  """Per sample F averaged over the 5 level-1 wheels, 0 where undefined (PAPER_NOTES 4.8)."""
  gt_ids, pred_ids = surface_ids(gt_cells, tables), surface_ids(pred_cells, tables)
  total = np.zeros(len(gt_ids))
  for v in wheel_lib.LEVEL1:
    p, r, _ = sample_precision_recall(cluster_sets(gt_ids, tables, v),
                                      cluster_sets(pred_ids, tables, v))
    total += per_sample_f(p, r)
  return total / len(wheel_lib.LEVEL1)


def hit_scores(gt_cells, pred_cells, tables: wheel_lib.EwTables) -> dict:
  """HIT: per level-1 wheel the mean of |G & P| over samples with a non-empty mapped G (so
  neutral samples drop out), then the mean over the 5 wheels."""
  gt_ids, pred_ids = surface_ids(gt_cells, tables), surface_ids(pred_cells, tables)
  per_wheel, counts = [], []
  for v in wheel_lib.LEVEL1:
    gt, pred = cluster_sets(gt_ids, tables, v), cluster_sets(pred_ids, tables, v)
    hits = [len(g & q) for g, q in zip(gt, pred) if g]
    per_wheel.append(float(np.mean(hits)) if hits else 0.0)
    counts.append(len(hits))
  return {"hit": float(np.mean(per_wheel)), "n_scored": counts[0],
          "per_wheel": dict(zip(wheel_lib.LEVEL1, per_wheel))}


def label_polarity(cells, tables: wheel_lib.EwTables) -> np.ndarray:
  """Wheel-based sentiment of predicted label lists: +1 / -1 / 0 per cell.

  Each label votes with the polarity of its level-1 clusters over the 5 wheels (POSITIVE_WORDS
  +1, NEGATIVE_WORDS -1, others 0); a cell is the sign of the sum of its labels' signs.
  """
  ids = surface_ids(cells, tables)
  columns = [tables.variant_index(v) for v in wheel_lib.LEVEL1]
  out = np.zeros(len(ids), np.int32)
  for n, row in enumerate(ids):
    total = 0
    for i in row:
      if i < 0:
        continue
      vote = 0
      for c in columns:
        cluster = tables.clusters[i, c]
        if cluster >= 0:
          word = tables.cluster_names[c][cluster]
          vote += (word in POSITIVE_WORDS) - (word in NEGATIVE_WORDS)
      total += int(np.sign(vote))
    out[n] = int(np.sign(total))
  return out


def sentiment_scores(valence, pred_positive) -> dict:
  """WAF and ACC of y = valence > 0 against y_hat = pred_positive, samples with valence 0
  dropped. WAF = F1 per class (positive, negative) weighted by the class support."""
  valence = np.asarray(valence, np.float64)
  pred_positive = np.asarray(pred_positive, bool)
  keep = valence != 0
  y, y_hat = valence[keep] > 0, pred_positive[keep]
  n = int(keep.sum())
  if n == 0:
    return {"waf": 0.0, "acc": 0.0, "n_scored": 0}
  waf = 0.0
  for cls in (True, False):
    tp = np.sum((y == cls) & (y_hat == cls))
    fp = np.sum((y != cls) & (y_hat == cls))
    fn = np.sum((y == cls) & (y_hat != cls))
    f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    waf += f1 * np.sum(y == cls) / n
  return {"waf": float(waf), "acc": float(np.mean(y == y_hat)), "n_scored": n}


def unibench_table(scores: dict) -> dict:
  """scores: dataset name -> primary score (percent) -> rows in the paper's order and the mean.

  `mean` is the unweighted mean of the 9 primary scores; `complete` is False (and the mean is
  over the present datasets) when some are missing.
  """
  unknown = sorted(set(scores) - set(UNIBENCH_DATASETS))
  if unknown:
    raise ValueError(f"unibench_table: unknown dataset(s) {unknown}; expected names from "
                     f"{UNIBENCH_DATASETS}.")
  rows = [{"dataset": d, "metric": UNIBENCH_METRIC[d], "score": float(scores[d])}
          for d in UNIBENCH_DATASETS if d in scores]
  mean = float(np.mean([r["score"] for r in rows])) if rows else 0.0
  return {"rows": rows, "mean": mean, "complete": len(rows) == len(UNIBENCH_DATASETS)}


# ------------------------------------------------------------------------------------------
# Plain per-sample reference of the official code (independent of the compiled tables).


def official_sample_scores(gt_cell, pred_cell, maps: wheel_lib.OfficialMaps,
                           variants=wheel_lib.LEVEL1) -> list:
  """Per variant (precision, recall) of one sample, or None where the sample is skipped.

  Straight dict/set code in the official evaluation's style: every label is mapped by
  `wheel.map_label` (format map, synonym map, sorted candidates, first one in the wheel).
  """
  gt_labels = labels_lib.parse_labels(gt_cell)
  pred_labels = labels_lib.parse_labels(pred_cell)
  out = []
  for variant in variants:
    gt = {c for c in (wheel_lib.map_label(l, maps, variant) for l in gt_labels) if c}
    pred = {c for c in (wheel_lib.map_label(l, maps, variant) for l in pred_labels) if c}
    if not gt:
      out.append(None)
    elif not pred:
      out.append((0.0, 0.0))
    else:
      out.append((len(gt & pred) / len(pred), len(gt & pred) / len(gt)))
  return out


def official_completion_reward(gt_cell, completion: str, maps: wheel_lib.OfficialMaps) -> float:
  """The official metric as a per-sample reward of one completion: its <answer> labels
  scored against `gt_cell`, F averaged over the 5 level-1 wheels (0 where undefined)."""
  answer = labels_lib.split_completion(completion).answer
  total = 0.0
  for pr in official_sample_scores(gt_cell, answer, maps):
    if pr is not None:
      total += f_score(*pr)
  return total / len(wheel_lib.LEVEL1)
