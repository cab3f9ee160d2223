"""Device internals of the EW reward: one pass over the tokens, one over each content.

Everything is a sequential `lax.scan` over positions with [B]-vector state (each position is
visited once; on CPU this beats fixed-point iteration over [B, N] arrays several times over).
Inputs are time-major: token words [N, B]. See rewards.py for the rules and reward_tables.py
for the table layout.

1. `tag_scan`: the tags. A bit recurrence finds every tag however it is split into tokens;
   per row it keeps, for each of the 4 tags, the first occurrence (end token, start token,
   whether it spans tokens), the number of occurrences and counts of non-whitespace tokens
   around it (for the format rule), and the first close tag after each open tag.
2. `content_rows`: the answer (or think) content's token pieces as record rows [C, B].
3. `answer_scan` / `think_scan`: the label parsers over those rows, with the label hashes
   looked up in the perfect hash table as they complete; result: cluster sets per row.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax.emotion import wheel as wheel_lib
from affect_jax.rl import reward_tables as rt

_U0 = np.uint32(0)
_FIELDS = np.array([((1 << b) - 1) << o for b, o in zip(rt.TAG_BITS, rt.TAG_OFFSETS)],
                   np.uint32)
_INSIDE_SHIFT = np.arange(28, 32, dtype=np.uint32)


def gather(table, idx):
  """table[idx] for indices already known to be in range (no bounds handling)."""
  return table.at[idx].get(mode="promise_in_bounds")



def _take0(x, idx):
  """x[idx[b], b] for time-major x [C, B] (idx clipped into range)."""
  return jnp.take_along_axis(x, jnp.clip(idx, 0, x.shape[0] - 1)[None], axis=0)[0]


def reduce0(x, op):
  """Reduces axis 0 by a tree of elementwise `op`s over slices. On XLA:CPU this is several
  times faster than a reduction (or argmax) along the major axis of a fused producer."""
  while x.shape[0] > 1:
    half = x.shape[0] // 2
    y = op(x[:half], x[half:2 * half])
    x = jnp.concatenate([y, x[2 * half:]]) if x.shape[0] % 2 else y
  return x[0]


def _positions(n, ndim):
  return jnp.arange(n, dtype=jnp.int32).reshape((n,) + (1,) * (ndim - 1))


def first_true(mask):
  """Index of the first True along axis 0, -1 when none."""
  n = mask.shape[0]
  first = reduce0(jnp.where(mask, _positions(n, mask.ndim), n), jnp.minimum)
  return jnp.where(first < n, first, -1)


def last_true(mask):
  """Index of the last True along axis 0, -1 when none."""
  return reduce0(jnp.where(mask, _positions(mask.shape[0], mask.ndim), -1), jnp.maximum)


def count0(mask):
  return reduce0(mask.astype(jnp.int32), jnp.add)


def bits(x, at, width=1):
  return (x >> np.uint32(at)) & np.uint32((1 << width) - 1)


# ------------------------------------------------------------------------------------------
# Cluster sets.


def wheel_counts(words, tables):
  """Cluster sets (list of W uint32 arrays [...]) -> float32[..., 5] set sizes per wheel."""
  mask = np.uint32(0xFFFFFFFF if tables.field_bits >= 32 else (1 << tables.field_bits) - 1)
  out = []
  for k in range(len(wheel_lib.LEVEL1)):
    word = words[k // tables.fields_per_word]
    field = (word >> np.uint32(tables.field_bits * (k % tables.fields_per_word))) & mask
    out.append(jax.lax.population_count(field).astype(jnp.float32))
  return jnp.stack(out, axis=-1)


def lookup(h1, h2, valid, tables):
  """Label hashes [B] -> cluster sets (list of W uint32 [B]; 0 when not a surface form)."""
  bucket = ((h1 * np.uint32(rt.GOLDEN[0])) >> np.uint32(32 - tables.bucket_bits)).astype(
      jnp.int32)
  slot = (((h2 ^ gather(tables.disp, bucket)) * np.uint32(rt.GOLDEN[1]))
          >> np.uint32(32 - tables.slot_bits)).astype(jnp.int32)
  row = gather(tables.slots, slot)
  hit = valid & (row[..., 0] == h1) & (row[..., 1] == h2)
  return [jnp.where(hit, row[..., 2 + w], _U0) for w in range(tables.num_words)]


# ------------------------------------------------------------------------------------------
# 1. Tags.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TagInfo:
  """Per row ([B]; per-tag fields [4, B]) facts about the tags.

  first: token where the tag's first occurrence ends (-1: none); cross: it spans tokens;
  start: token holding its '<'; count: occurrences; nz_before / nz_through: non-whitespace
  tokens before its start token / up to and including its end token; close / close_cross /
  close_start ([2, B], for <think> and <answer>): the first close tag ending in a token after
  the open tag's token; multi: some token holds one tag twice; nz_total: non-whitespace tokens.
  """
  first: jax.Array
  cross: jax.Array
  start: jax.Array
  count: jax.Array
  nz_before: jax.Array
  nz_through: jax.Array
  close: jax.Array
  close_cross: jax.Array
  close_start: jax.Array
  multi: jax.Array
  nz_total: jax.Array


def tag_scan(ids_t, tables) -> TagInfo:
  """Tags of time-major token ids (int32[N, B], padding = the empty-token row V).

  The scan carries only what is sequential (the tag prefix bits, the last token with '<' or
  '>', the count of non-whitespace tokens); per token it emits an event byte (bit t: tag t
  ends here as a chain over tokens, bit 4 + t: tag t lies inside this token). First
  occurrences and counts are then read off the events in vectorized form.
  """
  n, batch = ids_t.shape
  fields = jnp.asarray(_FIELDS)[:, None]
  weights = jnp.asarray(1 << np.arange(4, dtype=np.uint32))[:, None]

  def body(c, x):
    active, last_sp, nz = c
    token, t = x
    word, end = gather(tables.tok_word, token), gather(tables.tok_end, token)
    special = (word >> np.uint32(31)) == 1
    low = word & np.uint32(rt.FIELD)
    ended = active & end
    cross = reduce0(jnp.where((ended[None] & fields) != 0, weights, _U0), jnp.bitwise_or)
    mid = jnp.where(special, _U0, low)
    shift = jnp.where(special, _U0, bits(word, 28, 3))
    active = jnp.where(special, low, _U0) | ((active & mid) << shift)
    event = (cross | ((end >> np.uint32(24)) & np.uint32(0xF0))).astype(jnp.uint8)
    nonws = (word != np.uint32(rt.ALLWS_WORD)) & (word != np.uint32(rt.EMPTY_WORD))
    multi = special & (bits(word, 28) != 0)
    out = (event, last_sp, nz, multi)
    return (active, jnp.where(special, t, last_sp), nz + nonws.astype(jnp.int32)), out

  init = (jnp.zeros((batch,), jnp.uint32), jnp.full((batch,), -1, jnp.int32),
          jnp.zeros((batch,), jnp.int32))
  (_, _, nz_total), (event, last_sp, nz, multi) = jax.lax.scan(
      body, init, (ids_t, jnp.arange(n, dtype=jnp.int32)))
  pos = jnp.arange(n, dtype=jnp.int32)[:, None]
  firsts, crosses, starts, counts, befores, throughs = [], [], [], [], [], []
  for t in range(4):
    cross = (event & np.uint8(1 << t)) != 0
    hit = (event & np.uint8(0x11 << t)) != 0
    first = first_true(hit)
    is_cross = _take0(cross, first)
    start = jnp.where(is_cross, _take0(last_sp, first), first)
    firsts.append(first)
    crosses.append(is_cross)
    starts.append(start)
    counts.append(count0(hit) + count0(cross & ((event & np.uint8(0x10 << t)) != 0)))
    # Non-whitespace tokens before the start token / up to the end token (a start token is
    # special, hence never whitespace).
    befores.append(_take0(nz, start))
    throughs.append(_take0(nz, first) + 1)
  closes, close_crosses, close_starts = [], [], []
  for pair in range(2):
    t = 2 * pair + 1
    hit = ((event & np.uint8(0x11 << t)) != 0) & (pos > firsts[2 * pair][None]) & (
        firsts[2 * pair][None] >= 0)
    close = first_true(hit)
    is_cross = _take0((event & np.uint8(1 << t)) != 0, close)
    closes.append(close)
    close_crosses.append(is_cross)
    close_starts.append(jnp.where(is_cross, _take0(last_sp, close), close))
  multi = reduce0(multi, jnp.logical_or)
  return TagInfo(first=jnp.stack(firsts), cross=jnp.stack(crosses), start=jnp.stack(starts),
                 count=jnp.stack(counts), nz_before=jnp.stack(befores),
                 nz_through=jnp.stack(throughs), close=jnp.stack(closes),
                 close_cross=jnp.stack(close_crosses), close_start=jnp.stack(close_starts),
                 multi=multi, nz_total=nz_total)


def _sp(tables, special, column):
  return tables.sp[jnp.maximum(special, 0), rt.SP[column]]


def _special_at(ids_t, tables, position):
  """Special-table row of the token at `position` [B] of time-major ids [N, B] (-1: none)."""
  pos = jnp.clip(position, 0, ids_t.shape[0] - 1)
  token = jnp.take_along_axis(ids_t, pos[None], axis=0)[0]
  return gather(tables.tok_special, token)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Span:
  """A content: tokens t_open..t_close, cut at the start / end kinds; all [B]."""
  present: jax.Array
  t_open: jax.Array
  start_kind: jax.Array
  t_close: jax.Array
  end_kind: jax.Array


def content_span(info: TagInfo, ids_t, tables, pair: int) -> Span:
  """The content from the first open tag to the first close tag after it (pair 0: think,
  1: answer)."""
  open_t, close_t = 2 * pair, 2 * pair + 1
  t_open = info.first[open_t]
  crossed = info.cross[open_t]
  sp_open = _special_at(ids_t, tables, t_open)
  inner = jnp.where(crossed, _sp(tables, sp_open, f"close{close_t}_start1"),
                    _sp(tables, sp_open, f"close{close_t}_start2"))
  same = (sp_open >= 0) & (inner >= 0)
  later = info.close[pair] >= 0
  later_cross = info.close_cross[pair]
  t_close = jnp.where(same, t_open, jnp.where(later_cross, info.close_start[pair],
                                              info.close[pair]))
  end_kind = jnp.where(~same & later_cross, rt.END_CROSS, rt.END_INTERNAL)
  return Span(present=(t_open >= 0) & (same | later), t_open=t_open,
              start_kind=jnp.where(crossed, rt.START_CROSS, rt.START_INTERNAL),
              t_close=t_close, end_kind=end_kind)


def format_ok(info: TagInfo, ids_t, tables):
  """The format rule (labels.py) -> bool[B]."""
  specials = [_special_at(ids_t, tables, info.first[t]) for t in range(4)]
  starts = [_special_at(ids_t, tables, info.start[t]) for t in range(4)]
  end_off = [jnp.where(info.cross[t], _sp(tables, specials[t], "first_gt_end"),
                       _sp(tables, specials[t], f"int_end{t}")) for t in range(4)]
  after = [jnp.where(info.cross[t], 1, 2 + t) for t in range(4)]    # ws start option
  before = [jnp.where(info.cross[t], 1, 2 + t) for t in range(4)]   # ws end option

  def ws(special, a, b):
    return tables.sp_ws[jnp.maximum(special, 0), a, b] != 0

  def gap(i, j, need_ws: bool):
    """From the end of tag i to the start of tag j: whitespace only (or not)."""
    e_i, s_j = info.first[i], info.start[j]
    between = info.nz_before[j] - info.nz_through[i]
    split = (between == 0) & ws(specials[i], after[i], 0) & ws(starts[j], 0, before[j])
    clean = jnp.where(s_j > e_i, split, ws(specials[i], after[i], before[j]))
    return clean if need_ws else ~clean

  counts_ok = jnp.all(info.count == 1, axis=0) & ~info.multi
  keys = [info.first[t] * 4096 + end_off[t] for t in range(4)]
  ordered = (keys[0] < keys[1]) & (keys[1] < keys[2]) & (keys[2] < keys[3])
  head = (info.nz_before[0] == 0) & ws(starts[0], 0, before[0])
  tail = (info.nz_total == info.nz_through[3]) & ws(specials[3], after[3], 0)
  return (counts_ok & ordered & head & gap(1, 2, True) & tail & gap(0, 1, False)
          & gap(2, 3, False))


# ------------------------------------------------------------------------------------------
# 2. Contents.


def content_rows(ids_t, span: Span, tables, mode: int, width: int, brackets: bool):
  """Record rows of a content's token pieces: (rows int32[C, B], inside bool[C, B], last
  index [B], overflow bool[B]), C = width. Rows come out of a scan (which also keeps XLA
  from fusing this index arithmetic into every consumer of the later gathers)."""
  n, batch = ids_t.shape
  sp_open = _special_at(ids_t, tables, span.t_open)
  sp_close = _special_at(ids_t, tables, span.t_close)
  same = span.t_open == span.t_close
  row_open = tables.sp_kinds[jnp.maximum(sp_open, 0), mode, span.start_kind,
                             jnp.where(same, span.end_kind, rt.END_TOKEN)]
  row_close = tables.sp_kinds[jnp.maximum(sp_close, 0), mode, rt.START_TOKEN, span.end_kind]

  def body(_, j):
    at = span.t_open + j
    inside = span.present & (at <= span.t_close)
    token = jnp.take_along_axis(ids_t, jnp.clip(at, 0, n - 1)[None], axis=0)[0]
    row = jnp.where(j == 0, row_open, jnp.where(at == span.t_close, row_close, token))
    row = jnp.where(inside, row, tables.vocab_size)    # row V: the empty string
    empty = bits(gather(tables.rec_answer, row)[:, rt.A["a_flags"]], rt.F_EMPTY) != 0
    return None, (row, inside, inside & ~empty)

  _, (rows, inside, nonempty) = jax.lax.scan(body, None, jnp.arange(width, dtype=jnp.int32))
  if brackets:
    j = jnp.arange(width, dtype=jnp.int32)[:, None]
    first, last = first_true(nonempty), last_true(nonempty)
    rows = jnp.where(j == first[None], tables.bracket_first[_take0(rows, first)][None], rows)
    rows = jnp.where(j == last[None], tables.bracket_last[_take0(rows, last)][None], rows)
  overflow = span.present & (span.t_close - span.t_open + 1 > width)
  return rows, inside, jnp.clip(span.t_close - span.t_open, 0, width - 1), overflow


# ------------------------------------------------------------------------------------------
# 3. Parsers.


def answer_step(state, piece, bases):
  """Appends one separator-free piece to a label state (h1, h2, flags).

  State flags: bit 0 a non-whitespace character seen, bit 1 bad (whitespace inside the label
  other than single spaces), bits 2-3 the kind of the pending whitespace run (0 none, 1 one
  space, 2 other). Piece: core hashes and powers and flags (reward_tables F_* bits).
  """
  h1, h2, f = state
  ph1, ph2, pp1, pp2, pf = piece
  seen = bits(f, 0) != 0
  gap = jnp.minimum(bits(f, 2, 2) + bits(pf, rt.F_LEAD, 2), np.uint32(2))
  allws = bits(pf, rt.F_ALLWS) != 0
  one = gap == 1
  n1 = jnp.where(seen, h1 * jnp.where(one, np.uint32(bases[0]), np.uint32(1)) * pp1 + ph1, ph1)
  n2 = jnp.where(seen, h2 * jnp.where(one, np.uint32(bases[1]), np.uint32(1)) * pp2 + ph2, ph2)
  bad = (bits(f, 1) != 0) | (seen & (gap == 2)) | (bits(pf, rt.F_INNER_BAD) != 0)
  grown = np.uint32(1) | (bad.astype(jnp.uint32) << np.uint32(1)) | (
      bits(pf, rt.F_TRAIL, 2) << np.uint32(2))
  waiting = (f & np.uint32(3)) | (gap << np.uint32(2))
  return (jnp.where(allws, h1, n1), jnp.where(allws, h2, n2), jnp.where(allws, waiting, grown))


def answer_scan(rows, inside, last, tables):
  """Answer parser over record rows [C, B] -> (cluster set words [W][B], item count [B]).

  Per position the scan gathers the record and advances the label state; labels closed by a
  separator come out as hashes and are looked up afterwards in one vectorized pass.
  """
  width, batch = rows.shape
  n_cols = len(rt.ANSWER_COLUMNS)
  u = jnp.zeros((batch,), jnp.uint32)
  empty = (u, u, u)

  def body(c, x):
    state, final, words, count = c
    row, ins, last_here = x
    rec = gather(tables.rec_answer, row)                    # [B, 10 + W]
    head = tuple(rec[:, i] for i in range(5))
    tail = tuple(rec[:, 5 + i] for i in range(5))
    sep = ins & (bits(head[4], rt.F_SEP) != 0)
    closing = answer_step(state, head, tables.bases)
    state = tuple(jnp.where(sep, a, b) for a, b in zip(answer_step(empty, tail, tables.bases),
                                                         closing))
    final = tuple(jnp.where(last_here, a, b) for a, b in zip(state, final))
    words = [w | jnp.where(ins, rec[:, n_cols + k], _U0) for k, w in enumerate(words)]
    count = count + jnp.where(ins, bits(head[4], rt.F_COUNT, 8), _U0).astype(jnp.int32)
    closed = sep & (bits(closing[2], 0) != 0)
    return (state, final, words, count), (closing[0], closing[1],
                                          closed & (bits(closing[2], 1) == 0), closed)

  is_last = jnp.arange(width, dtype=jnp.int32)[:, None] == last[None]
  init = (empty, empty, [u] * tables.num_words, jnp.zeros((batch,), jnp.int32))
  (_, final, inner, count), (h1, h2, ok, closed) = jax.lax.scan(
      body, init, (rows, inside, is_last))
  found = lookup(h1, h2, ok, tables)
  final_seen = reduce0(inside, jnp.logical_or) & (bits(final[2], 0) != 0)
  found_final = lookup(final[0], final[1], final_seen & (bits(final[2], 1) == 0), tables)
  words = [reduce0(f, jnp.bitwise_or) | ff | i for f, ff, i in zip(found, found_final, inner)]
  return words, count + count0(closed) + final_seen.astype(jnp.int32)


def think_scan(rows, inside, last, tables):
  """Think parser over record rows [C, B] -> cluster set words [W][B] of the think words."""
  width, batch = rows.shape
  n_cols = len(rt.THINK_COLUMNS)
  u = jnp.zeros((batch,), jnp.uint32)

  def body(c, x):
    (h1, h2, ne), final, words = c
    row, ins, last_here = x
    rec = gather(tables.rec_think, row)
    flags = rec[:, rt.T["t_flags"]]
    brk = ins & (bits(flags, rt.T_BREAK) != 0)
    grown = (h1 * rec[:, 2] + rec[:, 0], h2 * rec[:, 3] + rec[:, 1],
             ne | bits(flags, rt.T_A_NONEMPTY))
    state = (jnp.where(brk, rec[:, 4], grown[0]), jnp.where(brk, rec[:, 5], grown[1]),
             jnp.where(brk, bits(flags, rt.T_B_NONEMPTY), grown[2]))
    final = tuple(jnp.where(last_here, a, b) for a, b in zip(state, final))
    words = [w | jnp.where(ins, rec[:, n_cols + k], _U0) for k, w in enumerate(words)]
    return (state, final, words), (grown[0], grown[1], brk & (grown[2] != 0))

  is_last = jnp.arange(width, dtype=jnp.int32)[:, None] == last[None]
  init = ((u, u, u), (u, u, u), [u] * tables.num_words)
  (_, final, inner), (h1, h2, ok) = jax.lax.scan(body, init, (rows, inside, is_last))
  found = lookup(h1, h2, ok, tables)
  found_final = lookup(final[0], final[1], reduce0(inside, jnp.logical_or) & (final[2] != 0),
                       tables)
  return [reduce0(f, jnp.bitwise_or) | ff | i for f, ff, i in zip(found, found_final, inner)]
