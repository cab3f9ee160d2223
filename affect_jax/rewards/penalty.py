"""The length penalty: P1 / P2 / P3 when the answer has more items than the ground truth,
multiplied into the configured terms (reward.penalty, reward.penalty_terms, reward.p3_form)."""
from __future__ import annotations

import numpy as np

PENALTIES = ("none", "p1", "p2", "p3")
P3_FORMS = ("shifted", "raw")


def penalty_factor(n_pred, n_gt, cfg, xp=np):
  """Length penalty (1 unless n_pred > n_gt); cfg has `penalty` and `p3_form`; `xp` is numpy
  or jax.numpy."""
  n_pred = xp.asarray(n_pred, xp.float32)
  n_gt = xp.asarray(n_gt, xp.float32)
  over = n_pred > n_gt
  safe_pred = xp.maximum(n_pred, 1.0)
  if cfg.penalty == "none":
    value = xp.ones_like(n_pred)
  elif cfg.penalty == "p1":
    value = 1.0 / (xp.maximum(n_pred - n_gt, 0.0) + 1.0)
  elif cfg.penalty == "p2":
    value = n_gt / safe_pred
  elif cfg.p3_form == "shifted":
    value = xp.log(n_gt + 1.0) / xp.log(safe_pred + 1.0)
  else:
    value = xp.where(n_gt > 1, xp.log(xp.maximum(n_gt, 1.0)) / xp.log(
        xp.maximum(safe_pred, 2.0)), 0.0)
  return xp.where(over, value, 1.0).astype(xp.float32)


def combine(terms: dict, factor, cfg, xp=np):
  """The weighted sum: sum over cfg.terms of weight * term (times the penalty factor for the
  terms in cfg.penalty_terms; a term with normalize='batch' standardised over the batch
  first), in the order of cfg.terms."""
  total = 0.0
  for name, tcfg in cfg.terms:
    value = terms[name]
    if tcfg.normalize == "batch":
      value = (value - xp.mean(value)) / (xp.std(value) + cfg.normalize_eps)
    value = value * (factor if name in cfg.penalty_terms else 1.0)
    total = total + tcfg.weight * value
  return total
