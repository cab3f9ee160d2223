"""accuracy_host: the EW accuracy term by the host reference (ew_reference.py), through the
host-Python adapter (host_term.py): the adapter's example, equal to the device term
`accuracy` on the same completions (tests/rewards/test_host_term.py)."""
from __future__ import annotations

import dataclasses

from affect_jax.rewards import ew_reference, host_term, registry
from affect_jax.rewards.terms import emotion_wheel as ew_term


@dataclasses.dataclass(frozen=True)
class AccuracyHostConfig(registry.TermConfig):
  max_labels: int = 16       # as reward.ew.max_labels: more answer items score 0


@host_term.register("accuracy_host", AccuracyHostConfig, row_keys=("gt_ids",))
def accuracy_host(texts, rows, cfg, context):
  wheel = context.wheel
  ew = ew_term.EwConfig(max_labels=cfg.max_labels)
  out = []
  for text, ids in zip(texts, rows["gt_ids"]):
    gt = ", ".join(wheel.surfaces[i] for i in ids if i >= 0)
    out.append(ew_reference.reference_terms(text, gt, wheel, ew)["accuracy"])
  return out
