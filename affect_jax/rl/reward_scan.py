"""Device internals of the EW reward: one scan over the tokens, one loop over each content.

Loops run over positions with [B]-vector state, each position visited once: on XLA:CPU this
was several times faster than fixed-point iteration over [B, N] arrays, and the loop outputs
are kept few because XLA:CPU emits one kernel per loop output. Token ids are time-major
[N, B]. See rewards.py for the rules and reward_tables.py for the table layout.

1. `tag_scan`: a bit recurrence over the tokens finds every tag however it is split into
   tokens; per row, for each of the 4 tags: the first occurrence (end token, start token,
   whether it spans tokens), the number of occurrences, the non-whitespace tokens around it
   (for the format rule) and the first close tag after each open tag.
2. `content_span`: where the answer (or think) content starts and ends, and the record rows
   of the tokens cut by its tags.
3. `answer_scan` / `think_scan`: while loops as long as the longest content of the batch;
   per piece they gather the record, advance the label state and look up each label that a
   separator (or word break) closes in the perfect hash table; result: cluster sets per row.
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


def gather(table, idx):
  """table[idx] for indices already known to be in range (no bounds handling)."""
  return table.at[idx].get(mode="promise_in_bounds")


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


# ------------------------------------------------------------------------------------------
# 1. Tags.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TagInfo:
  """Per row ([B]; per-tag fields [4, B]) facts about the tags.

  first: token where the tag's first occurrence ends (-1: none); cross: it spans tokens;
  start: token holding its '<'; count: occurrences (2 = two or more); nz_before /
  nz_through: non-whitespace tokens before its start token / up to and including its end
  token; close / close_cross / close_start ([2, B], for <think> and <answer>): the first
  close tag ending in a token after the open tag's token; multi: some token holds one tag
  twice; nz_total: non-whitespace tokens; empty: bool[N, B] tokens that add no text.
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
  empty: jax.Array


def tag_scan(ids_t, tables) -> TagInfo:
  """Tags of time-major token ids (int32[N, B], padding = the empty-token row V).

  The scan carries only what is sequential (the tag prefix bits, the last token with '<' or
  '>', the count of non-whitespace tokens) and emits one packed word per token: event bits
  (bit t: tag t ends here as a chain over tokens, bit 4 + t: tag t lies inside this token),
  "holds a tag twice", "adds no text", and the two counters. First occurrences and counts are
  then read off with a few vectorized reductions.
  """
  n, batch = ids_t.shape
  fields = jnp.asarray(_FIELDS)[:, None]
  weights = jnp.asarray(1 << np.arange(4, dtype=np.uint32))[:, None]

  def body(c, x):
    active, last_sp, nz = c
    token, t = x
    packed = gather(tables.tok, token)
    word, end = packed[:, 0], packed[:, 1]
    special = (word >> np.uint32(31)) == 1
    low = word & np.uint32(rt.FIELD)
    ended = active & end
    hit = jnp.where((ended[None] & fields) != 0, weights, _U0)
    cross = hit[0] | hit[1] | hit[2] | hit[3]
    mid = jnp.where(special, _U0, low)
    shift = jnp.where(special, _U0, bits(word, 28, 3))
    active = jnp.where(special, low, _U0) | ((active & mid) << shift)
    event = cross | ((end >> np.uint32(24)) & np.uint32(0xF0))
    nonws = (word != np.uint32(rt.ALLWS_WORD)) & (word != np.uint32(rt.EMPTY_WORD))
    flags = (event | ((special & (bits(word, 28) != 0)).astype(jnp.uint32) << np.uint32(8))
             | ((word == np.uint32(rt.EMPTY_WORD)).astype(jnp.uint32) << np.uint32(9)))
    if packed_out:   # one output per step: flags, last special token + 1, non-ws count
      out = (flags | ((last_sp + 1).astype(jnp.uint32) << np.uint32(10))
             | (nz.astype(jnp.uint32) << np.uint32(21)))
    else:
      out = (flags, last_sp, nz)
    return (active, jnp.where(special, t, last_sp), nz + nonws.astype(jnp.int32)), out

  packed_out = n < 2048          # 11-bit fields
  init = (jnp.zeros((batch,), jnp.uint32), jnp.full((batch,), -1, jnp.int32),
          jnp.zeros((batch,), jnp.int32))
  (_, _, nz_total), out = jax.lax.scan(body, init, (ids_t, jnp.arange(n, dtype=jnp.int32)))
  if packed_out:
    flags = out & np.uint32(1023)
    field_at = lambda idx: jnp.take_along_axis(out, jnp.clip(idx, 0, n - 1)[None], axis=0)[0]
    flags_at = lambda idx: field_at(idx) & np.uint32(1023)
    last_sp_at = lambda idx: ((field_at(idx) >> np.uint32(10)) & np.uint32(2047)).astype(
        jnp.int32) - 1
    nz_at = lambda idx: (field_at(idx) >> np.uint32(21)).astype(jnp.int32)
  else:
    flags, last_sp, nz = out
    take = lambda x, idx: jnp.take_along_axis(x, jnp.clip(idx, 0, n - 1)[None], axis=0)[0]
    flags_at = lambda idx: take(flags, idx)
    last_sp_at = lambda idx: take(last_sp, idx)
    nz_at = lambda idx: take(nz, idx)
  pos = jnp.arange(n, dtype=jnp.int32)[:, None]

  def first_where(mask):
    first = jnp.min(jnp.where(mask, pos, n), axis=0)
    return jnp.where(first < n, first, -1)

  firsts, crosses, starts, counts, befores, throughs = [], [], [], [], [], []
  for t in range(4):
    hit = (flags & np.uint32(0x11 << t)) != 0                    # chain end or inside
    first = first_where(hit)
    last = jnp.max(jnp.where(hit, pos, -1), axis=0)
    at_first = flags_at(first)
    is_cross = (first >= 0) & (bits(at_first, t) != 0)
    start = jnp.where(is_cross, last_sp_at(first), first)
    # Occurrences: 0, 1, or 2 standing for "more than one" (all the format rule needs).
    both = (bits(at_first, t) != 0) & (bits(at_first, 4 + t) != 0)
    counts.append(jnp.where(first < 0, 0, jnp.where((last > first) | both, 2, 1)))
    firsts.append(first)
    crosses.append(is_cross)
    starts.append(start)
    # Non-whitespace tokens before the start token / up to the end token (a start token is
    # special, hence never whitespace).
    befores.append(nz_at(start))
    throughs.append(nz_at(first) + 1)
  closes, close_crosses, close_starts = [], [], []
  for pair in range(2):
    t, opened = 2 * pair + 1, firsts[2 * pair]
    close = first_where(((flags & np.uint32(0x11 << t)) != 0) & (pos > opened[None])
                        & (opened[None] >= 0))
    is_cross = (close >= 0) & (bits(flags_at(close), t) != 0)
    closes.append(close)
    close_crosses.append(is_cross)
    close_starts.append(jnp.where(is_cross, last_sp_at(close), close))
  return TagInfo(first=jnp.stack(firsts), cross=jnp.stack(crosses), start=jnp.stack(starts),
                 count=jnp.stack(counts), nz_before=jnp.stack(befores),
                 nz_through=jnp.stack(throughs), close=jnp.stack(closes),
                 close_cross=jnp.stack(close_crosses), close_start=jnp.stack(close_starts),
                 multi=jnp.any(bits(flags, 8) != 0, axis=0), nz_total=nz_total,
                 empty=bits(flags, 9) != 0)


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
  """A content: tokens t_open..t_close, all [B]. Its pieces: j = 0 the cut record row_open
  (the part of t_open after the open tag; up to the close tag when t_open == t_close),
  j = t_close - t_open > 0 the cut record row_close, the whole tokens between; first / last:
  the first / last non-empty piece (-1: none), where the bracket rule applies."""
  present: jax.Array
  t_open: jax.Array
  t_close: jax.Array
  row_open: jax.Array
  row_close: jax.Array
  first: jax.Array
  last: jax.Array


def content_span(info: TagInfo, ids_t, tables, pair: int) -> Span:
  """The content from the first open tag to the first close tag after it (pair 0: think,
  1: answer)."""
  open_t, close_t = 2 * pair, 2 * pair + 1
  n = ids_t.shape[0]
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
  start_kind = jnp.where(crossed, rt.START_CROSS, rt.START_INTERNAL)
  sp_close = _special_at(ids_t, tables, t_close)
  single = t_open == t_close
  row_open = tables.sp_kinds[jnp.maximum(sp_open, 0), pair, start_kind,
                             jnp.where(single, end_kind, rt.END_TOKEN)]
  row_close = tables.sp_kinds[jnp.maximum(sp_close, 0), pair, rt.START_TOKEN, end_kind]
  # Non-empty pieces: the cut ends by their records, whole tokens by the tag scan.
  empty = lambda r: bits(gather(tables.rec_answer, r)[:, rt.A["a_flags"]], rt.F_EMPTY) != 0
  open_ne, close_ne = ~empty(row_open), ~single & ~empty(row_close)
  pos = jnp.arange(n, dtype=jnp.int32)[:, None]
  middle = ~info.empty & (pos > t_open[None]) & (pos < t_close[None])
  first_mid = jnp.min(jnp.where(middle, pos, n), axis=0)
  last_mid = jnp.max(jnp.where(middle, pos, -1), axis=0)
  span_j = t_close - t_open
  first = jnp.where(open_ne, 0, jnp.where(first_mid < n, first_mid - t_open,
                                          jnp.where(close_ne, span_j, -1)))
  last = jnp.where(close_ne, span_j, jnp.where(last_mid >= 0, last_mid - t_open,
                                               jnp.where(open_ne, 0, -1)))
  return Span(present=(t_open >= 0) & (same | later), t_open=t_open, t_close=t_close,
              row_open=row_open, row_close=row_close, first=first, last=last)


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
  keys = [info.first[t] * rt.KEY_STRIDE + end_off[t] for t in range(4)]
  ordered = (keys[0] < keys[1]) & (keys[1] < keys[2]) & (keys[2] < keys[3])
  head = (info.nz_before[0] == 0) & ws(starts[0], 0, before[0])
  tail = (info.nz_total == info.nz_through[3]) & ws(specials[3], after[3], 0)
  return (counts_ok & ordered & head & gap(1, 2, True) & tail & gap(0, 1, False)
          & gap(2, 3, False))


# ------------------------------------------------------------------------------------------
# 2. Contents.


def content_tokens(ids_t, span: Span):
  """int32[N, B]: token t_open + j of every row at j (one vectorized gather, so that the
  loops below read contiguous rows instead of gathering from ids_t at every step)."""
  n = ids_t.shape[0]
  at = jnp.clip(span.t_open[None] + jnp.arange(n, dtype=jnp.int32)[:, None], 0, n - 1)
  return jnp.take_along_axis(ids_t, at, axis=0)


def _plain_row(j, token, span: Span, tables):
  """Record row [B] and inside flag of content piece j (j and token: scalar or [B])."""
  at = span.t_open + j
  inside = span.present & (at <= span.t_close)
  row = jnp.where(j == 0, span.row_open, jnp.where(at == span.t_close, span.row_close, token))
  return jnp.where(inside, row, tables.vocab_size), inside   # row V: the empty string


def bracket_rows(tokens, span: Span, tables):
  """The rows of the first / last non-empty answer pieces with the official bracket rule
  applied (a leading "[" / trailing "]" made a separator), [B] each."""
  pick = lambda j: _plain_row(j, jnp.take_along_axis(
      tokens, jnp.clip(j, 0, tokens.shape[0] - 1)[None], axis=0)[0], span, tables)[0]
  first = gather(tables.bracket_first, pick(span.first))
  last_plain = jnp.where(span.last == span.first, first, pick(span.last))
  return first, gather(tables.bracket_last, last_plain)


def _piece_row(j, tokens, span: Span, tables, brackets=None):
  """Record row [B] and inside flag of content piece j (a scalar) of every row; brackets:
  bracket_rows(...) for the answer, None for the think content."""
  token = jax.lax.dynamic_index_in_dim(tokens, j, keepdims=False)
  row, inside = _plain_row(j, token, span, tables)
  if brackets is not None:
    first, last = brackets
    row = jnp.where(j == span.first, first, row)
    row = jnp.where(j == span.last, last, row)
  return row, inside


def span_tokens(span: Span):
  """Tokens a content spans [B] (0 when absent)."""
  return jnp.where(span.present, span.t_close - span.t_open + 1, 0)


def overflow(span: Span, cap: int):
  """Contents spanning more than `cap` tokens [B] (never, when cap is 0)."""
  return (span_tokens(span) > cap) if cap > 0 else jnp.zeros_like(span.present)


def _steps(span: Span, cap: int, n: int):
  """Loop trip count: the longest content of the batch (at most cap, or n when cap is 0)."""
  return jnp.minimum(jnp.max(span_tokens(span)), cap if cap > 0 else n)


# ------------------------------------------------------------------------------------------
# 3. Parsers.


def lookup_pairs(h, valid, tables):
  """Label hashes h uint32[2, B] -> cluster sets uint32[W, B] (0 when not a surface form)."""
  bucket = ((h[0] * np.uint32(rt.GOLDEN[0])) >> np.uint32(32 - tables.bucket_bits)).astype(
      jnp.int32)
  slot = (((h[1] ^ gather(tables.disp, bucket)) * np.uint32(rt.GOLDEN[1]))
          >> np.uint32(32 - tables.slot_bits)).astype(jnp.int32)
  row = gather(tables.slots, slot).T                      # [2 + W, B]
  hit = valid & (row[0] == h[0]) & (row[1] == h[1])
  return jnp.where(hit[None], row[2:], _U0)


def answer_step(h, f, rec, transitions):
  """Appends piece a of records rec [cols, B] to label states: hashes h uint32[2, B] and
  flags f uint32[B] (rt.S_* bits). Returns the new (h, f).

  The flag logic (whitespace kinds, badness) is one lookup in the transition table; the hash
  grows by the core's power (times the base for a one-space gap): h * m + H.
  """
  a = rt.A
  tr = gather(transitions, ((rec[a["a_flags"]] & np.uint32(63)) << np.uint32(4)) | f)
  gap_one = (bits(tr, 4, 2) == 1)[None]
  allws = (bits(tr, 6) != 0)[None]
  seen = (bits(f, rt.S_SEEN) != 0)[None]
  m = jnp.where(gap_one, rec[a["a_m1_1"]:a["a_m1_1"] + 2], rec[a["a_m0_1"]:a["a_m0_1"] + 2])
  grown = jnp.where(seen, h * m, _U0) + rec[a["a_h1"]:a["a_h1"] + 2]
  return jnp.where(allws, h, grown), tr & np.uint32(15)


def answer_scan(ids_t, span: Span, cap: int, tables):
  """Answer parser over the answer content's pieces -> (cluster set words uint32[B, W], item
  count [B]). A while loop over piece index j runs as many steps as the longest answer of the
  batch has tokens (at most `cap` when cap > 0): per step it gathers each row's record,
  advances the label state, and looks up the label a separator closes. The loop state is
  three arrays (XLA:CPU emits one kernel per loop output, so fewer outputs run faster).
  """
  n, batch = ids_t.shape
  a, n_cols = rt.A, len(rt.ANSWER_COLUMNS)
  steps = _steps(span, cap, n)
  tokens = content_tokens(ids_t, span)
  brackets = bracket_rows(tokens, span, tables)

  def body(c):
    # fc: label flags in bits 0-3, "pend holds a label to look up" in bit 4, the item count
    # above. Two values are computed one step ahead and carried, so that the gathers read
    # stored arrays instead of recomputing their index for every gathered column: the record
    # row of the next piece, and the hash of the label this step closed (looked up next step).
    # A piece outside the content is the empty-string row V, which changes nothing.
    j, h, fc, words, pend, row = c
    found = lookup_pairs(pend, bits(fc, 4) != 0, tables)
    rec = gather(tables.rec_answer, row).T                  # [cols + W, B]
    flags = rec[a["a_flags"]]
    sep = bits(flags, rt.F_SEP) != 0
    closing_h, closing_f = answer_step(h, fc & np.uint32(15), rec, tables.transitions)
    closed = sep & (bits(closing_f, rt.S_SEEN) != 0)
    look = closed & (bits(closing_f, rt.S_BAD) == 0)
    h = jnp.where(sep[None], rec[a["f_h1"]:a["f_h1"] + 2], closing_h)
    f = jnp.where(sep, rec[a["f_state"]], closing_f)
    count = (fc >> np.uint32(5)) + closed.astype(jnp.uint32) + bits(flags, rt.F_COUNT, 8)
    fc = f | (look.astype(jnp.uint32) << np.uint32(4)) | (count << np.uint32(5))
    next_row = _piece_row(j + 1, tokens, span, tables, brackets)[0]
    return j + 1, h, fc, words | found | rec[n_cols:], closing_h, next_row

  init = (jnp.int32(0), jnp.zeros((2, batch), jnp.uint32), jnp.zeros((batch,), jnp.uint32),
          jnp.zeros((tables.num_words, batch), jnp.uint32), jnp.zeros((2, batch), jnp.uint32),
          _piece_row(jnp.int32(0), tokens, span, tables, brackets)[0])
  _, h, fc, words, pend, _ = jax.lax.while_loop(lambda c: c[0] < steps, body, init)
  # The last label ends with the content (rows shorter than the loop keep their state: the
  # pieces past a content's end are empty strings); the last closed label is still pending.
  final_seen = span.present & (bits(fc, rt.S_SEEN) != 0)
  both = lookup_pairs(jnp.concatenate([pend, h], axis=1), jnp.concatenate(
      [bits(fc, 4) != 0, final_seen & (bits(fc, rt.S_BAD) == 0)]), tables)
  words = words | both[:, :batch] | both[:, batch:]
  count = (fc >> np.uint32(5)).astype(jnp.int32) + final_seen.astype(jnp.int32)
  return list(words), count


def think_scan(ids_t, span: Span, cap: int, tables):
  """Think parser over the think content's pieces -> cluster set words [W][B] of its words
  (a while loop as in answer_scan)."""
  n, batch = ids_t.shape
  t, n_cols = rt.T, len(rt.THINK_COLUMNS)
  steps = _steps(span, cap, n)
  tokens = content_tokens(ids_t, span)

  def body(c):
    j, h, ne, words = c
    row, ins = _piece_row(j, tokens, span, tables)
    rec = gather(tables.rec_think, row).T
    flags = rec[t["t_flags"]]
    brk = ins & (bits(flags, rt.T_BREAK) != 0)
    grown = h * rec[t["ta_p1"]:t["ta_p1"] + 2] + rec[t["ta_h1"]:t["ta_h1"] + 2]
    grown_ne = ne | bits(flags, rt.T_A_NONEMPTY)
    found = lookup_pairs(grown, brk & (grown_ne != 0), tables)
    h = jnp.where(brk[None], rec[t["tb_h1"]:t["tb_h1"] + 2], grown)
    ne = jnp.where(brk, bits(flags, rt.T_B_NONEMPTY), grown_ne)
    return j + 1, h, ne, words | found | jnp.where(ins[None], rec[n_cols:], _U0)

  init = (jnp.int32(0), jnp.zeros((2, batch), jnp.uint32), jnp.zeros((batch,), jnp.uint32),
          jnp.zeros((tables.num_words, batch), jnp.uint32))
  _, h, ne, words = jax.lax.while_loop(lambda c: c[0] < steps, body, init)
  words = words | lookup_pairs(h, span.present & (ne != 0), tables)
  return list(words)
