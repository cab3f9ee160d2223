"""The EW terms by the text rules in plain host Python (affect_jax/emotion/labels.py), independent
of the device tables: the tests' reference, and the example of a host term (terms/ew_host.py).

  reference_terms(text, gt_cell, wheel, ew_cfg)   # accuracy, format, alignment, dual, n_pred, ...
  reference_scores(text, gt_cell, wheel, cfg)     # + penalty and total of a RewardConfig
"""
from __future__ import annotations

from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import metrics as metrics_lib
from affect_jax.emotion import wheel as wheel_lib
from affect_jax.rewards import penalty as penalty_lib

EW_TERMS = ("accuracy", "format", "alignment", "dual")


def _clusters(surface_ids, tables, columns) -> list[set]:
  return [{int(tables.clusters[s, c]) for s in surface_ids if s >= 0 and
           tables.clusters[s, c] >= 0} for c in columns]


def _mean_f(gt: list[set], pred: list[set]) -> float:
  total = 0.0
  for g, p in zip(gt, pred):
    if g and p:
      hits = len(g & p)
      total += metrics_lib.f_score(hits / len(p), hits / len(g))
  return total / len(gt)


def _token_index(spans, byte: int) -> int:
  for i, (a, b) in enumerate(spans):
    if a <= byte < b:
      return i
  return -1


def reference_terms(text: str, gt_cell, tables: wheel_lib.EwTables, cfg,
                    token_spans=None) -> dict:
  """The four EW terms of one completion text, by the text rules; cfg: the EW config
  (max_labels, max_answer_tokens, max_think_tokens). Also n_pred, n_gt and bad.

  token_spans: optional (start_byte, end_byte) per token of the completion; when given, the
  optional max_answer_tokens / max_think_tokens caps (> 0) apply as on device.
  """
  columns = [tables.variant_index(v) for v in wheel_lib.LEVEL1]
  index = tables.surface_ids()
  comp = labels_lib.split_completion(text)
  items = labels_lib.parse_labels(comp.answer) if comp.answer is not None else []
  gt_items = labels_lib.parse_labels(gt_cell)
  answer_over = think_over = False
  if token_spans is not None and (cfg.max_answer_tokens or cfg.max_think_tokens):
    raw = text.encode("utf-8", "surrogateescape")
    for content, tags, cap in ((comp.answer, (b"<answer>", b"</answer>"), cfg.max_answer_tokens),
                               (comp.think, (b"<think>", b"</think>"), cfg.max_think_tokens)):
      if content is None:
        continue
      start = raw.find(tags[0]) + len(tags[0])
      stop = raw.find(tags[1], start)
      count = _token_index(token_spans, stop) - _token_index(token_spans, start - 1) + 1
      if 0 < cap < count:
        if tags[0] == b"<answer>":
          answer_over = True
        else:
          think_over = True
  gt = _clusters([index.get(l, -1) for l in gt_items], tables, columns)
  answer = _clusters([index.get(l, -1) for l in items], tables, columns)
  words = [] if think_over else labels_lib.think_words(comp.think, tables.word_chars)
  think = _clusters([index.get(w, -1) for w in words], tables, columns)
  terms = {"accuracy": _mean_f(gt, answer), "format": float(comp.format_ok),
           "alignment": _mean_f(answer, think), "dual": _mean_f(gt, think)}
  bad = len(items) > cfg.max_labels or answer_over
  if bad:
    terms = {k: 0.0 for k in terms}
  return dict(terms, n_pred=len(items), n_gt=len(gt_items), bad=bad)


def reference_scores(text: str, gt_cell, tables: wheel_lib.EwTables, cfg,
                     token_spans=None) -> dict:
  """reference_terms plus the penalty factor and the total of RewardConfig `cfg` (whose
  terms must all be EW terms)."""
  out = reference_terms(text, gt_cell, tables, cfg.analysis("ew"), token_spans)
  factor = penalty_lib.penalty_factor(out["n_pred"], out["n_gt"], cfg)
  total = penalty_lib.combine({k: out[k] for k in EW_TERMS}, factor, cfg)
  return dict(out, penalty=float(factor), total=float(total))
