"""The emotion-wheel (EW) reward terms: one shared analysis of the completions, four terms.

The analysis "ew" (config section reward.ew) reads completions as token ids and, in one scan of
the tokens and one loop over each content, finds the tags, parses the <answer> labels and the
<think> words and maps them to level-1 cluster sets of the 5 wheels. The terms read it:
- accuracy: per-sample EW-F of the <answer> labels against the ground truth, F averaged over
  the 5 level-1 wheels; 0 where undefined (ground truth mapping to nothing, empty answer).
  In the dataset metric such a sample is skipped; as a reward it is 0.
- format: 1 iff the completion is <think>X</think><answer>Y</answer> (labels.py module doc).
- alignment: EW-F of the <think> words (as prediction) against the <answer> labels.
- dual: EW-F of the <think> words (as prediction) against the ground truth.
Completions with more than max_labels answer items score 0 on every EW term (and, when the
optional caps max_answer_tokens / max_think_tokens are set, an answer over its cap scores 0
and a think over its cap yields no think words). The <think> words are parsed only when
alignment or dual has a nonzero weight (else both are 0). Nothing here can produce NaN.

The text rules are those of affect_jax/emotion/labels.py, evaluated on device from per-token
tables (affect_jax/rewards/ew_tables.py, built once per tokenizer and wheel) by the scans of
affect_jax/rewards/ew_scan.py; the encodings are described in ew_encodings.py. The analysis
also returns n_pred (answer items, which the length penalty reads), bad, and per wheel
precision, recall, hits (|G & P|) and scored (what the dataset metrics average).
affect_jax/rewards/ew_reference.py is a plain host implementation of the same rules.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax.emotion import metrics as metrics_lib
from affect_jax.emotion import wheel as wheel_lib
from affect_jax.rewards import ew_encodings as enc
from affect_jax.rewards import ew_scan as rs
from affect_jax.rewards import ew_tables as rt
from affect_jax.rewards import registry

ROWS = ("gt_ids", "n_gt")
THINK_TERMS = ("alignment", "dual")


@dataclasses.dataclass(frozen=True)
class EwConfig:
  """reward.ew (configs/reward.py)."""
  max_labels: int = 16
  max_answer_tokens: int = 0
  max_think_tokens: int = 0
  max_gt_labels: int = 16

  def __post_init__(self):
    for name in ("max_labels", "max_gt_labels"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"reward.ew.{name}={getattr(self, name)}: must be >= 1.")
    for name in ("max_answer_tokens", "max_think_tokens"):
      if int(getattr(self, name)) < 0:
        raise ValueError(f"reward.ew.{name}={getattr(self, name)}: must be >= 0 (0 = no cap).")


# ------------------------------------------------------------------------------------------
# Host helpers.


def gt_arrays(cells, tables: wheel_lib.EwTables, max_gt: int):
  """Ground-truth cells -> (surface ids int32[B, max_gt] padded with -1, n_gt int32[B]).

  n_gt counts every parsed label (also those outside the vocabulary): the length penalty's
  n_gt. Raises when a cell has more labels than max_gt.
  """
  ids = metrics_lib.surface_ids(cells, tables)
  out = np.full((len(ids), max_gt), -1, np.int32)
  for i, row in enumerate(ids):
    if len(row) > max_gt:
      raise ValueError(f"ground truth row {i}: {len(row)} labels > reward.ew.max_gt_labels="
                       f"{max_gt}; raise it.")
    out[i, :len(row)] = row
  return out, np.array([len(r) for r in ids], np.int32)


def setup(context: registry.Context, cfg: EwConfig) -> rt.RewardTables:
  """The device tables of the context's tokenizer and wheel (hash bases enc.HASH_BASES)."""
  return rt.to_device(rt.build_reward_tables(context.tokenizer, context.wheel))


# ------------------------------------------------------------------------------------------
# Device.


def _set_f(gt_words, pred_words, tables):
  """Per-wheel F, precision, recall [B, 5] of two cluster sets; 0 where either is empty."""
  n_g = rs.wheel_counts(gt_words, tables)
  n_p = rs.wheel_counts(pred_words, tables)
  hits = rs.wheel_counts([g & p for g, p in zip(gt_words, pred_words)], tables)
  precision = jnp.where(n_p > 0, hits / jnp.maximum(n_p, 1.0), 0.0)
  recall = jnp.where(n_g > 0, hits / jnp.maximum(n_g, 1.0), 0.0)
  total = precision + recall
  f = jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1.0), 0.0)
  return jnp.where((n_g > 0) & (n_p > 0), f, 0.0), precision, recall


def gt_words(gt_ids, tables: rt.RewardTables):
  """Ground-truth surface ids int32[B, G] (-1 padded) -> cluster sets [W][B]."""
  ids = jnp.asarray(gt_ids, jnp.int32)
  ok = ids >= 0
  sets = rs.gather(tables.sets, jnp.clip(ids, 0, tables.sets.shape[0] - 1))   # [B, G, W]
  return [jax.lax.reduce(jnp.where(ok, sets[..., w], np.uint32(0)), np.uint32(0),
                         jax.lax.bitwise_or, (1,)) for w in range(tables.num_words)]


def analyse(ids, lengths, gt_ids, tables: rt.RewardTables, cfg: EwConfig, think: bool,
            compaction=rs.PARSER_COMPACTION) -> dict:
  """The EW terms and statistics of a batch of completions (jittable; module doc).

  ids int32[B, N], lengths int32[B], gt_ids int32[B, G] (gt_arrays); think: parse the
  <think> words (else alignment and dual are 0); compaction: the parsers' lane divisors.
  Returns float32[B] accuracy, format, alignment, dual; int32[B] n_pred; bool[B] bad;
  float32[B, 5] precision, recall, hits and bool[B, 5] scored.
  """
  ids = jnp.asarray(ids, jnp.int32)
  if ids.shape[1] == 0:       # no tokens at all: one padding column keeps the shapes valid
    ids = jnp.zeros((ids.shape[0], 1), jnp.int32)
  batch = ids.shape[0]
  toks = rs.Tokens(ids, jnp.asarray(lengths, jnp.int32), tables.vocab_size)
  info = rs.tag_scan(toks, tables)

  answer = rs.content_span(info, toks, tables, pair=enc.MODE_ANSWER)
  answer_words, n_pred = rs.answer_scan(toks, answer, cfg.max_answer_tokens, tables,
                                        compaction)
  answer_over = rs.overflow(answer, cfg.max_answer_tokens)
  truth = gt_words(gt_ids, tables)
  f_acc, precision, recall = _set_f(truth, answer_words, tables)

  if think:
    span = rs.content_span(info, toks, tables, pair=enc.MODE_THINK)
    think_over = rs.overflow(span, cfg.max_think_tokens)
    think_words = [jnp.where(think_over, np.uint32(0), x)
                   for x in rs.think_scan(toks, span, cfg.max_think_tokens, tables, compaction)]
    alignment = jnp.mean(_set_f(answer_words, think_words, tables)[0], axis=1)
    dual = jnp.mean(_set_f(truth, think_words, tables)[0], axis=1)
  else:
    alignment = dual = jnp.zeros((batch,), jnp.float32)

  terms = {"accuracy": jnp.mean(f_acc, axis=1),
           "format": rs.format_ok(info, toks, tables).astype(jnp.float32),
           "alignment": alignment, "dual": dual}
  bad = (n_pred > cfg.max_labels) | answer_over
  terms = {k: jnp.where(bad, 0.0, v).astype(jnp.float32) for k, v in terms.items()}
  scored = rs.wheel_counts(truth, tables) > 0
  hits = rs.wheel_counts([g & a for g, a in zip(truth, answer_words)], tables)
  return dict(terms, n_pred=n_pred, bad=bad, precision=precision, recall=recall,
              scored=scored, hits=hits)


@registry.analysis("ew", EwConfig, row_keys=ROWS, stats=("n_pred",), setup=setup)
def ew_analysis(ids, lengths, rows, *, cfg, resources, wanted):
  return analyse(ids, lengths, rows["gt_ids"], resources, cfg,
                 think=any(t in wanted for t in THINK_TERMS))


def _register(name: str):
  @registry.term(name, analysis="ew", row_keys=ROWS)
  def read(ids, lengths, rows, *, cfg, resources, shared):
    return shared[name]
  return read


for _name in ("accuracy", "format", "alignment", "dual"):
  _register(_name)
