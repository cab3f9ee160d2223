"""On-device GRPO rewards: the emotion-wheel metric itself, jittable, static shapes, batched.

`completion_rewards(ids, lengths, gt_ids, n_gt, tables, cfg)` reads completions as token ids
(int32[B, N] with lengths int32[B]) and returns per-completion terms [B]:
- accuracy: per-sample EW-F of the <answer> labels against the ground truth, F averaged over
  the 5 level-1 wheels; 0 where undefined (ground truth mapping to nothing, empty answer).
  In the dataset metric such a sample is skipped; as a reward it is 0.
- format: 1 iff the completion is <think>X</think><answer>Y</answer> (labels.py module doc).
- alignment: EW-F of the <think> words (as prediction) against the <answer> labels.
- dual: EW-F of the <think> words (as prediction) against the ground truth.
- penalty: P1 / P2 / P3 when the answer has more items than the ground truth (configurable),
  multiplied into the configured terms; total = weighted sum (RewardConfig).
Completions with more than max_labels answer items score 0 on every term (and, when the
optional caps max_answer_tokens / max_think_tokens are set, an answer over its cap scores 0
and a think over its cap yields no think words). Nothing here can produce NaN.

The text rules are those of affect_jax/emotion/labels.py, evaluated on device from per-token
tables (affect_jax/rewards/ew_tables.py, built once per tokenizer and wheel) by the scans of
affect_jax/rewards/ew_scan.py: tags are found by a bit recurrence over tokens (any split of a
tag into tokens), the answer / think contents are walked piece by piece (a token, or the part
of a token beside a tag), the label parsers hash each label (2 x 32-bit polynomial hash of
its lowercased, stripped bytes) and a perfect hash table maps it to level-1 cluster sets of
the 5 wheels, compared with popcounts.
`reference_scores` is a plain host implementation of the same rules (the tests' reference).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import metrics as metrics_lib
from affect_jax.emotion import wheel as wheel_lib
from affect_jax.rewards import ew_scan as rs
from affect_jax.rewards import ew_tables as rt

TERMS = ("accuracy", "format", "alignment", "dual")
PENALTIES = ("none", "p1", "p2", "p3")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Validated reward settings (fields as in configs/reward.py)."""
  w_accuracy: float = 1.0
  w_format: float = 0.1
  w_alignment: float = 0.0
  w_dual: float = 0.0
  penalty: str = "none"
  penalty_terms: tuple = ("accuracy",)
  p3_form: str = "shifted"
  max_labels: int = 16
  max_answer_tokens: int = 0
  max_think_tokens: int = 0
  max_gt_labels: int = 16
  hash_bases: tuple = (0x01000193, 0x5BD1E995)
  parser_compaction: tuple = (2, 8)

  def __post_init__(self):
    if self.penalty not in PENALTIES:
      raise ValueError(f"reward.penalty='{self.penalty}': expected one of {PENALTIES}.")
    unknown = [t for t in self.penalty_terms if t not in TERMS]
    if unknown:
      raise ValueError(f"reward.penalty_terms: unknown {unknown}; terms are {TERMS}.")
    if self.p3_form not in ("shifted", "raw"):
      raise ValueError(f"reward.p3_form='{self.p3_form}': expected 'shifted' or 'raw'.")
    for name in ("max_labels", "max_gt_labels"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"reward.{name}={getattr(self, name)}: must be >= 1.")
    for name in ("max_answer_tokens", "max_think_tokens"):
      if int(getattr(self, name)) < 0:
        raise ValueError(f"reward.{name}={getattr(self, name)}: must be >= 0 (0 = no cap).")
    for name in ("w_accuracy", "w_format", "w_alignment", "w_dual"):
      if not math.isfinite(float(getattr(self, name))):
        raise ValueError(f"reward.{name}: must be a finite number.")
    divisors = tuple(self.parser_compaction)
    if (any(int(d) != d or d < 2 for d in divisors)
        or any(b <= a for a, b in zip(divisors, divisors[1:]))):
      raise ValueError(f"reward.parser_compaction={divisors}: expected increasing integers "
                       ">= 2 (lane divisors of the later parser phases), or () for none.")

  @classmethod
  def from_config(cls, c) -> "RewardConfig":
    terms = c.penalty_terms
    if isinstance(terms, str):
      terms = tuple(t.strip() for t in terms.split(",") if t.strip())
    return cls(w_accuracy=float(c.w_accuracy), w_format=float(c.w_format),
               w_alignment=float(c.w_alignment), w_dual=float(c.w_dual),
               penalty=str(c.penalty), penalty_terms=tuple(terms), p3_form=str(c.p3_form),
               max_labels=int(c.max_labels), max_answer_tokens=int(c.max_answer_tokens),
               max_think_tokens=int(c.max_think_tokens), max_gt_labels=int(c.max_gt_labels),
               hash_bases=tuple(int(b) for b in c.hash_bases),
               parser_compaction=tuple(c.get("parser_compaction", cls.parser_compaction)))

  def weight(self, term: str) -> float:
    return float(getattr(self, f"w_{term}"))

  @property
  def needs_think_words(self) -> bool:
    return self.w_alignment != 0 or self.w_dual != 0


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
      raise ValueError(f"ground truth row {i}: {len(row)} labels > reward.max_gt_labels="
                       f"{max_gt}; raise it.")
    out[i, :len(row)] = row
  return out, np.array([len(r) for r in ids], np.int32)


def penalty_factor(n_pred, n_gt, cfg: RewardConfig, xp=np):
  """Length penalty (1 unless n_pred > n_gt); `xp` is numpy or jax.numpy."""
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


def _combine(terms: dict, n_pred, n_gt, cfg: RewardConfig, xp=np):
  factor = penalty_factor(n_pred, n_gt, cfg, xp)
  total = 0.0
  for term in TERMS:
    value = terms[term] * (factor if term in cfg.penalty_terms else 1.0)
    total = total + cfg.weight(term) * value
  return factor, total


# ------------------------------------------------------------------------------------------
# Host reference (plain Python over text; the same rules, independent of the device tables).


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


def reference_scores(text: str, gt_cell, tables: wheel_lib.EwTables, cfg: RewardConfig,
                     token_spans=None) -> dict:
  """All reward terms of one completion text, by the text rules (labels.py).

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
  factor, total = _combine(terms, len(items), len(gt_items), cfg)
  return dict(terms, penalty=float(factor), total=float(total), n_pred=len(items), bad=bad)


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


def completion_rewards(ids, lengths, gt_ids, n_gt, tables: rt.RewardTables,
                       cfg: RewardConfig) -> dict:
  """Reward terms of a batch of completions (jittable; `tables` arrays, `cfg` static).

  Args:
    ids: int32[B, N] completion token ids (anything past `lengths` is ignored).
    lengths: int32[B] number of valid tokens per row.
    gt_ids: int32[B, G] ground-truth surface ids, -1 padded (`gt_arrays`).
    n_gt: int32[B] ground-truth label counts (for the length penalty).
    tables: RewardTables from reward_tables.build_reward_tables (+ to_device).
    cfg: RewardConfig.
  Returns:
    dict of float32[B]: accuracy, format, alignment, dual, penalty, total; int32[B] n_pred;
    bool[B] bad; float32[B, 5] precision, recall, hits (|G & P|) and bool[B, 5] scored (the
    answer against the ground truth per level-1 wheel, what the dataset metrics average).
  """
  if tuple(cfg.hash_bases) != tuple(tables.bases):
    raise ValueError(f"reward.hash_bases={tuple(cfg.hash_bases)} but the tables were built with "
                     f"{tables.bases}; build them with bases=cfg.hash_bases.")
  ids = jnp.asarray(ids, jnp.int32)
  if ids.shape[1] == 0:       # no tokens at all: one padding column keeps the shapes valid
    ids = jnp.zeros((ids.shape[0], 1), jnp.int32)
  batch = ids.shape[0]
  toks = rs.Tokens(ids, jnp.asarray(lengths, jnp.int32), tables.vocab_size)
  info = rs.tag_scan(toks, tables)

  answer = rs.content_span(info, toks, tables, pair=rt.MODE_ANSWER)
  answer_words, n_pred = rs.answer_scan(toks, answer, cfg.max_answer_tokens, tables,
                                        cfg.parser_compaction)
  answer_over = rs.overflow(answer, cfg.max_answer_tokens)
  truth = gt_words(gt_ids, tables)
  f_acc, precision, recall = _set_f(truth, answer_words, tables)

  if cfg.needs_think_words:
    think = rs.content_span(info, toks, tables, pair=rt.MODE_THINK)
    think_over = rs.overflow(think, cfg.max_think_tokens)
    think_words = [jnp.where(think_over, np.uint32(0), x)
                   for x in rs.think_scan(toks, think, cfg.max_think_tokens, tables,
                                          cfg.parser_compaction)]
    alignment = jnp.mean(_set_f(answer_words, think_words, tables)[0], axis=1)
    dual = jnp.mean(_set_f(truth, think_words, tables)[0], axis=1)
  else:
    alignment = dual = jnp.zeros((batch,), jnp.float32)

  terms = {"accuracy": jnp.mean(f_acc, axis=1),
           "format": rs.format_ok(info, toks, tables).astype(jnp.float32),
           "alignment": alignment, "dual": dual}
  bad = (n_pred > cfg.max_labels) | answer_over
  terms = {k: jnp.where(bad, 0.0, v).astype(jnp.float32) for k, v in terms.items()}
  factor, total = _combine(terms, n_pred, n_gt, cfg, xp=jnp)
  scored = rs.wheel_counts(truth, tables) > 0
  hits = rs.wheel_counts([g & a for g, a in zip(truth, answer_words)], tables)
  return dict(terms, penalty=factor, total=total.astype(jnp.float32), n_pred=n_pred, bad=bad,
              precision=precision, recall=recall, scored=scored, hits=hits)


def row_local_rewards(ids, lengths, gt_ids, n_gt, tables: rt.RewardTables, cfg: RewardConfig,
                      *, mesh=None, batch_axes=None) -> dict:
  """`completion_rewards` with every device scoring only its own rows (jittable).

  The reward is per row, so under a mesh it runs inside `jax.shard_map` over the batch: no
  collective, and each device's loops run as long as its own longest content (not the batch's).
  batch_axes: the mesh axes the rows are split over (a name, a tuple of names, or None for
  all of the mesh's axes); the row count must be a multiple of their size. The tables are
  replicated. Without a mesh (or on one device) this is `completion_rewards` itself.
  """
  if mesh is None or mesh.size == 1:
    return completion_rewards(ids, lengths, gt_ids, n_gt, tables, cfg)
  if batch_axes is None:
    batch_axes = tuple(mesh.axis_names)
  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  if ids.shape[0] % shards:
    raise ValueError(f"reward batch of {ids.shape[0]} rows cannot be split over mesh axes "
                     f"{axes} ({shards} devices); use a multiple of {shards} rows.")
  rows = jax.sharding.PartitionSpec(axes if len(axes) > 1 else axes[0])
  local = jax.shard_map(
      lambda i, l, g, n, t: completion_rewards(i, l, g, n, t, cfg), mesh=mesh,
      in_specs=(rows, rows, rows, rows, jax.sharding.PartitionSpec()), out_specs=rows,
      check_vma=False)
  return local(ids, lengths, gt_ids, n_gt, tables)


# XLA:CPU's default copy insertion copies most loop-carried arrays once per loop iteration
# (about a third of the parsers' kernels); with region analysis it copies none, and the
# reward runs about 7% faster (launch.benchmark --bench=reward). A CPU debug option, so it is
# passed only when compiling for CPU.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options() -> dict | None:
  """XLA options for jitting the reward on its own (CPU_COMPILER_OPTIONS on CPU, else None)."""
  return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def make_reward_fn(tables: rt.RewardTables, cfg: RewardConfig):
  """A jitted fn(ids, lengths, gt_ids, n_gt) -> dict of reward terms, tables closed over."""
  return jax.jit(lambda ids, lengths, gt_ids, n_gt: completion_rewards(
      ids, lengths, gt_ids, n_gt, tables, cfg), compiler_options=compiler_options())
