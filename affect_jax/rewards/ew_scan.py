"""Device internals of the EW reward: one scan over the tokens, one loop over each content.

Loops run over positions with [B]-vector state, each position visited once: on XLA:CPU this
was several times faster than fixed-point iteration (or any pass) over [B, N] arrays, and
the loop outputs are kept few because XLA:CPU emits one kernel per loop output. The token
ids stay as generated ([B, N], `Tokens`): each loop step reads its column, and facts about
positions are kept as bitmasks (one uint32 per 32 positions), so "first / last occurrence",
"the last special token before p" and "non-whitespace tokens before p" are bit operations
on [W, B] words instead of reductions over [N, B]. The rules are those of
affect_jax/emotion/labels.py; every packed word, flag bit and table column read here is
described in ew_encodings.py (the tables are built by ew_tables.py).

1. `tag_scan`: a bit recurrence over the tokens finds every tag however it is split into
   tokens; per row, for each of the 4 tags: the first occurrence (end token, start token,
   whether it spans tokens), the number of occurrences, the non-whitespace tokens around it
   (for the format rule) and the first close tag after each open tag.
2. `content_span`: where the answer (or think) content starts and ends, and the record rows
   of the tokens cut by its tags.
3. `answer_scan` / `think_scan`: loops as long as the longest content of the batch; per
   piece they gather the record, advance the label state and look up each label that a
   separator (or word break) closes in the perfect hash table; result: cluster sets per row.
   Once few rows are still inside their content, those continue on fewer lanes
   (`lane_loop`, PARSER_COMPACTION).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax.emotion import wheel as wheel_lib
from affect_jax.rewards import ew_encodings as enc

_U0 = np.uint32(0)
_FIELDS = np.array(enc.TAG_FIELDS, np.uint32)
# Lane divisors of the parsers' later phases (lane_loop): once at most B/d rows (B: rows per
# device) are still inside their content, those continue on B/d lanes, for each d. Speed
# only: no value depends on it.
PARSER_COMPACTION = (2, 8)


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
# Completions.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tokens:
  """Completions as generated: ids int32[B, N] and lengths int32[B]. A position past a row's
  length or outside [0, N), and an id outside the vocabulary, read as the empty-token row
  V (no text), so nothing needs a cleaned copy of ids."""
  ids: jax.Array
  lengths: jax.Array
  vocab: int = dataclasses.field(metadata=dict(static=True))

  def _clean(self, token, position):
    ok = ((position >= 0) & (position < self.lengths) & (position < self.ids.shape[1])
          & (token >= 0) & (token < self.vocab))
    return jnp.where(ok, token, self.vocab)

  def column(self, t):
    """Every row's token at scalar position t (0 <= t < N) -> int32[B]."""
    return self._clean(jax.lax.dynamic_index_in_dim(self.ids, t, axis=1, keepdims=False), t)

  def at(self, position):
    """Each row's token at position [B] -> int32[B]."""
    pos = jnp.clip(position, 0, self.ids.shape[1] - 1)
    return self._clean(jnp.take_along_axis(self.ids, pos[:, None], axis=1)[:, 0], position)


# ------------------------------------------------------------------------------------------
# Position bitmasks: uint32[W, B], bit p of word w set when position 32 w + p holds.


def mask_words(n: int) -> int:
  return -(-n // 32)


def _ctz(x):
  """Trailing zeros of nonzero uint32 x (garbage for 0)."""
  return jax.lax.population_count((x & (~x + np.uint32(1))) - np.uint32(1)).astype(jnp.int32)


def mask_first(m):
  """First set position of bitmasks uint32[W, B] -> int32[B] (-1: none)."""
  base = 32 * jnp.arange(m.shape[0], dtype=jnp.int32)[:, None]
  at = jnp.where(m != 0, base + _ctz(m), np.int32(1 << 30))
  first = jnp.min(at, axis=0)
  return jnp.where(first < (1 << 30), first, -1)


def mask_last(m):
  """Last set position of bitmasks uint32[W, B] -> int32[B] (-1: none)."""
  base = 32 * jnp.arange(m.shape[0], dtype=jnp.int32)[:, None]
  at = jnp.where(m != 0, base + 31 - jax.lax.clz(m).astype(jnp.int32), -1)
  return jnp.max(at, axis=0)


def _low_bits(words: int, position):
  """uint32[W, B]: in each word, the bits of the positions below position [B]."""
  k = jnp.clip(position[None] - 32 * jnp.arange(words, dtype=jnp.int32)[:, None], 0, 32)
  return jnp.where(k >= 32, np.uint32(0xFFFFFFFF),
                   (np.uint32(1) << jnp.minimum(k, 31).astype(jnp.uint32)) - np.uint32(1))


def mask_above(m, position):
  """Bitmasks m [W, B] with the positions <= position [B] cleared."""
  return m & ~_low_bits(m.shape[0], position + 1)


def mask_below(m, position):
  """Bitmasks m [W, B] keeping only the positions < position [B]."""
  return m & _low_bits(m.shape[0], position)


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
  twice; nz_total: non-whitespace tokens; text: uint32[W, B] bitmask of the tokens that add
  text (mask_first / mask_last read it).
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
  text: jax.Array




def bit_at(m, position):
  """Bit `position` [B] of bitmasks m [W, B] -> bool[B] (False outside [0, 32 W))."""
  w = jnp.clip(position >> 5, 0, m.shape[0] - 1)
  word = jnp.take_along_axis(m, w[None], axis=0)[0]
  inside = (position >= 0) & (position < 32 * m.shape[0])
  return inside & (((word >> (position & 31).astype(jnp.uint32)) & np.uint32(1)) != 0)


def mask_count(m):
  """Set positions of bitmasks m [W, B] -> int32[B]."""
  return jnp.sum(jax.lax.population_count(m).astype(jnp.int32), axis=0)


def mask_count_below(m, position):
  """Set positions of bitmasks m [W, B] below position [B] -> int32[B]."""
  return mask_count(mask_below(m, position))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TagCarry:
  """The tag scan's state within a block of 32 tokens, all [B] but slab.

  active: the tag prefixes the text so far ends with (tok word bits, ew_encodings); kind: the
  event kinds (enc.K_* bits) of the previous token, recorded one step late; slab:
  uint32[KINDS, B] this block's bitmask word of every kind.
  """
  active: jax.Array
  kind: jax.Array
  slab: jax.Array


def tag_scan(toks: Tokens, tables) -> TagInfo:
  """Tags of the completions.

  The scan carries only the tag prefix bits and, per kind of token event (_K_*), a position
  bitmask (one word per 32 tokens); first / last occurrences, the start token of a tag
  split over tokens (the last special token before its end) and non-whitespace counts are
  then bit operations on [W, B] words, not reductions over [N, B].
  """
  batch, n = toks.ids.shape
  fields = jnp.asarray(_FIELDS)[:, None]
  shifts = np.arange(enc.KINDS, dtype=np.uint32)[:, None]

  def record(slab, kind, t):
    """Sets bit t % 32 of every kind's word in slab [KINDS, B] where kind [B] has it."""
    return slab | (((kind[None] >> shifts) & np.uint32(1)) << (t & 31).astype(jnp.uint32))

  def body(t, c: TagCarry) -> TagCarry:
    # The kind word of token t is recorded one step later, from the carry: so the bitmask
    # update reads a stored [B] word instead of recomputing the token's events per kind.
    active = c.active
    slab = record(c.slab, c.kind, t - 1)
    token = toks.column(t)
    packed = gather(tables.tok, token)
    word, end = packed[:, 0], packed[:, 1]
    special = (word >> np.uint32(31)) == 1
    low = word & np.uint32(enc.FIELD)
    chain = ((active & end)[None] & fields) != 0                  # [4, B]
    mid = jnp.where(special, _U0, low)
    shift = jnp.where(special, _U0, bits(word, 28, 3))
    kind = (sum(chain[t].astype(jnp.uint32) << np.uint32(enc.K_CHAIN + t) for t in range(4))
            | ((end >> np.uint32(28)) << np.uint32(enc.K_INSIDE))
            | ((word != np.uint32(enc.EMPTY_WORD)).astype(jnp.uint32) << np.uint32(enc.K_TEXT))
            | ((special & (bits(word, 28) != 0)).astype(jnp.uint32) << np.uint32(enc.K_MULTI))
            | (special.astype(jnp.uint32) << np.uint32(enc.K_SPECIAL))
            | (((word != np.uint32(enc.ALLWS_WORD)) & (word != np.uint32(enc.EMPTY_WORD))
                ).astype(jnp.uint32) << np.uint32(enc.K_NONWS)))
    active = jnp.where(special, low, _U0) | ((active & mid) << shift)
    return TagCarry(active=active, kind=kind, slab=slab)

  def block(w, active):
    # 32 tokens: the inner loop fills one bitmask word per kind in its carry (no slicing of
    # the whole bitmask array per token) -> (active, uint32[KINDS, B]).
    lo = 32 * w
    hi = min(lo + 32, n) if isinstance(w, int) else jnp.minimum(lo + 32, n)
    zero = jnp.zeros((batch,), jnp.uint32)          # a first step records nothing
    c = jax.lax.fori_loop(lo, hi, body, TagCarry(
        active=active, kind=zero, slab=jnp.zeros((enc.KINDS, batch), jnp.uint32)))
    return c.active, record(c.slab, c.kind, jnp.int32(hi - 1))

  active = jnp.zeros((batch,), jnp.uint32)
  if mask_words(n) <= 4:    # up to 128 tokens: one loop per block, words kept apart
    words = []
    for w in range(mask_words(n)):
      active, slab = block(w, active)
      words.append(slab)
    kind_mask = lambda k: jnp.stack([word[k] for word in words])    # [W, B], kind k only
  else:                     # a loop over the blocks: the program does not grow with N
    def store(w, c):
      active, slab = block(w, c[0])
      return active, c[1].at[w].set(slab)
    _, masks = jax.lax.fori_loop(0, mask_words(n), store, (active, jnp.zeros(
        (mask_words(n), enc.KINDS, batch), jnp.uint32)))
    kind_mask = lambda k: masks[:, k]
  special, nonws = kind_mask(enc.K_SPECIAL), kind_mask(enc.K_NONWS)
  last_special_before = lambda p: mask_last(mask_below(special, p))

  firsts, crosses, starts, counts, befores, throughs, closes = [], [], [], [], [], [], []
  for t in range(4):
    chain, inside = kind_mask(enc.K_CHAIN + t), kind_mask(enc.K_INSIDE + t)
    hit = chain | inside
    first = mask_first(hit)
    is_cross = bit_at(chain, first)
    start = jnp.where(is_cross, last_special_before(first), first)
    # Occurrences: 0, 1, or 2 standing for "more than one" (all the format rule needs):
    # tokens holding the tag, plus one where a token both ends one and holds another.
    counts.append(jnp.minimum(mask_count(hit) + mask_count(chain & inside), 2))
    firsts.append(first)
    crosses.append(is_cross)
    starts.append(start)
    # Non-whitespace tokens before the start token / up to the end token (a start token is
    # special, hence never whitespace).
    befores.append(mask_count_below(nonws, start))
    throughs.append(mask_count_below(nonws, first) + 1)
    if t % 2:   # a close tag: its first occurrence ending after the open tag's token
      opened = firsts[t - 1]
      closes.append(jnp.where(opened >= 0, mask_first(mask_above(hit, opened)), -1))
  close_crosses = [bit_at(kind_mask(enc.K_CHAIN + 2 * p + 1), closes[p]) for p in range(2)]
  close_starts = [jnp.where(close_crosses[p], last_special_before(closes[p]), closes[p])
                  for p in range(2)]
  return TagInfo(first=jnp.stack(firsts), cross=jnp.stack(crosses), start=jnp.stack(starts),
                 count=jnp.stack(counts), nz_before=jnp.stack(befores),
                 nz_through=jnp.stack(throughs), close=jnp.stack(closes),
                 close_cross=jnp.stack(close_crosses), close_start=jnp.stack(close_starts),
                 multi=jnp.any(kind_mask(enc.K_MULTI) != 0, axis=0),
                 nz_total=mask_count(nonws),
                 text=kind_mask(enc.K_TEXT))


def _sp(tables, special, column):
  return tables.sp[jnp.maximum(special, 0), enc.SP[column]]


def _special_at(toks, tables, position):
  """Special-table row of each row's token at `position` [B] (-1: none)."""
  return gather(tables.tok_special, toks.at(position))


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


def content_span(info: TagInfo, toks, tables, pair: int) -> Span:
  """The content from the first open tag to the first close tag after it (pair 0: think,
  1: answer)."""
  open_t, close_t = 2 * pair, 2 * pair + 1
  t_open = info.first[open_t]
  crossed = info.cross[open_t]
  sp_open = _special_at(toks, tables, t_open)
  inner = jnp.where(crossed, _sp(tables, sp_open, f"close{close_t}_start1"),
                    _sp(tables, sp_open, f"close{close_t}_start2"))
  same = (sp_open >= 0) & (inner >= 0)
  later = info.close[pair] >= 0
  later_cross = info.close_cross[pair]
  t_close = jnp.where(same, t_open, jnp.where(later_cross, info.close_start[pair],
                                              info.close[pair]))
  end_kind = jnp.where(~same & later_cross, enc.END_CROSS, enc.END_INTERNAL)
  start_kind = jnp.where(crossed, enc.START_CROSS, enc.START_INTERNAL)
  sp_close = _special_at(toks, tables, t_close)
  single = t_open == t_close
  row_open = tables.sp_kinds[jnp.maximum(sp_open, 0), pair, start_kind,
                             jnp.where(single, end_kind, enc.END_TOKEN)]
  row_close = tables.sp_kinds[jnp.maximum(sp_close, 0), pair, enc.START_TOKEN, end_kind]
  # Non-empty pieces: the cut ends by their records, whole tokens by the tag scan.
  empty = lambda r: bits(gather(tables.rec_answer, r)[:, enc.A["a_flags"]], enc.F_EMPTY) != 0
  open_ne, close_ne = ~empty(row_open), ~single & ~empty(row_close)
  middle = mask_below(mask_above(info.text, t_open), t_close)
  first_mid = mask_first(middle)
  last_mid = mask_last(middle)
  span_j = t_close - t_open
  first = jnp.where(open_ne, 0, jnp.where(first_mid >= 0, first_mid - t_open,
                                          jnp.where(close_ne, span_j, -1)))
  last = jnp.where(close_ne, span_j, jnp.where(last_mid >= 0, last_mid - t_open,
                                               jnp.where(open_ne, 0, -1)))
  return Span(present=(t_open >= 0) & (same | later), t_open=t_open, t_close=t_close,
              row_open=row_open, row_close=row_close, first=first, last=last)


def format_ok(info: TagInfo, toks, tables):
  """The format rule (labels.py) -> bool[B]."""
  specials = [_special_at(toks, tables, info.first[t]) for t in range(4)]
  starts = [_special_at(toks, tables, info.start[t]) for t in range(4)]
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
  keys = [info.first[t] * enc.KEY_STRIDE + end_off[t] for t in range(4)]
  ordered = (keys[0] < keys[1]) & (keys[1] < keys[2]) & (keys[2] < keys[3])
  head = (info.nz_before[0] == 0) & ws(starts[0], 0, before[0])
  tail = (info.nz_total == info.nz_through[3]) & ws(specials[3], after[3], 0)
  return (counts_ok & ordered & head & gap(1, 2, True) & tail & gap(0, 1, False)
          & gap(2, 3, False))


# ------------------------------------------------------------------------------------------
# 2. Contents.


def _plain_row(j, token, span: Span, tables):
  """Record row [B] and inside flag of content piece j (j and token: scalar or [B])."""
  at = span.t_open + j
  inside = span.present & (at <= span.t_close)
  row = jnp.where(j == 0, span.row_open, jnp.where(at == span.t_close, span.row_close, token))
  return jnp.where(inside, row, tables.vocab_size), inside   # row V: the empty string


def bracket_rows(toks, span: Span, tables):
  """The rows of the first / last non-empty answer pieces with the official bracket rule
  applied (a leading "[" / trailing "]" made a separator), [B] each."""
  pick = lambda j: _plain_row(j, toks.at(span.t_open + j), span, tables)[0]
  first = gather(tables.bracket_first, pick(span.first))
  last_plain = jnp.where(span.last == span.first, first, pick(span.last))
  return first, gather(tables.bracket_last, last_plain)


def _piece_row(j, toks, span: Span, tables, brackets=None):
  """Record row [B] and inside flag of content piece j (a scalar) of every row; brackets:
  bracket_rows(...) for the answer, None for the think content."""
  token = toks.at(span.t_open + j)
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


def lane_widths(batch: int, divisors) -> tuple:
  """The lane counts of lane_loop's later phases: batch // d for each divisor d (those
  between 1 and batch - 1 lanes)."""
  return tuple(w for w in (batch // int(d) for d in divisors) if 0 < w < batch)


def _phase_starts(length, steps, widths, top: int):
  """The step at which each compacted phase starts: the first j at which at most widths[p]
  rows still have pieces (length > j); at most `steps`. top: a bound on length."""
  bins = jnp.zeros((top + 2,), jnp.int32).at[jnp.clip(length, 0, top + 1)].add(1)
  count_gt = length.shape[0] - jnp.cumsum(bins)          # [j]: rows with length > j
  return [jnp.minimum(jnp.sum((count_gt > w).astype(jnp.int32)), steps) for w in widths]


def lane_loop(body, carry, lanes, length, steps, widths, top: int):
  """carry = body(j, carry, lanes) for j in [0, steps), on ever fewer lanes.

  carry: pytree of arrays with the rows on the last axis; lanes: pytree of per-row inputs with
  the rows on the first axis; length [B]: the steps each row needs (a step past a row's
  length must leave its carry unchanged, as an empty piece does; 0 <= length <= top).
  widths: lane counts of the phases after the first (decreasing). Once at most widths[p]
  rows still need steps, those rows are gathered into widths[p] lanes (padded with copies of
  a row, which compute the same values) and continue there; the result is scattered back. On XLA:CPU a loop step
  costs about the same per lane however few rows still need it, so this cuts the parsers'
  work to about the rows' total length instead of the longest row's times B.
  """
  def run(start, stop, c, rows):
    return jax.lax.while_loop(lambda s: s[0] < stop,
                              lambda s: (s[0] + 1, body(s[0], s[1], rows)), (start, c))[1]

  starts = _phase_starts(length, steps, widths, top) + [steps]
  carry = run(jnp.int32(0), starts[0], carry, lanes)
  for p, width in enumerate(widths):
    idx = jnp.nonzero(length > starts[p], size=width, fill_value=0)[0]
    part = run(starts[p], starts[p + 1], jax.tree.map(lambda x: x[..., idx], carry),
               jax.tree.map(lambda x: x[idx], lanes))
    carry = jax.tree.map(lambda x, y: x.at[..., idx].set(y), carry, part)
  return carry


# ------------------------------------------------------------------------------------------
# 3. Parsers.


def lookup_pairs(h, valid, tables):
  """Label hashes h uint32[2, B] -> cluster sets uint32[W, B] (0 when not a surface form)."""
  bucket = ((h[0] * np.uint32(enc.GOLDEN[0])) >> np.uint32(32 - tables.bucket_bits)).astype(
      jnp.int32)
  slot = (((h[1] ^ gather(tables.disp, bucket)) * np.uint32(enc.GOLDEN[1]))
          >> np.uint32(32 - tables.slot_bits)).astype(jnp.int32)
  row = gather(tables.slots, slot).T                      # [2 + W, B]
  hit = valid & (row[0] == h[0]) & (row[1] == h[1])
  return jnp.where(hit[None], row[2:], _U0)


def piece_transition(klass, state):
  """reward_tables.piece_transition on device: piece class klass (the low 6 bits of a_flags)
  appended to label states `state` [B] -> (new state, gap == one space, whitespace only)."""
  seen, bad, pend = bits(state, enc.S_SEEN), bits(state, enc.S_BAD), bits(state, enc.S_PEND, 2)
  allws = bits(klass, enc.F_ALLWS) != 0
  gap = jnp.minimum(pend + bits(klass, enc.F_LEAD, 2), np.uint32(2))
  bad = bad | (seen & (gap == 2).astype(jnp.uint32)) | bits(klass, enc.F_INNER_BAD)
  new = jnp.where(allws, (state & np.uint32(3)) | (gap << np.uint32(enc.S_PEND)),
                  np.uint32(1 << enc.S_SEEN) | (bad << np.uint32(enc.S_BAD))
                  | (bits(klass, enc.F_TRAIL, 2) << np.uint32(enc.S_PEND)))
  return new, gap == 1, allws


def answer_step(h, f, rec, bases):
  """Appends piece a of records rec [cols, B] to label states: hashes h uint32[2, B] and
  flags f uint32[B] (enc.S_* bits). Returns the new (h, f).

  The flag logic (whitespace kinds, badness) is `piece_transition`; the hash grows by the
  core's power (times the base for a one-space gap): h * m + H.
  """
  a = enc.A
  new_f, gap_one, allws = piece_transition(rec[a["a_flags"]], f)
  seen = (bits(f, enc.S_SEEN) != 0)[None]
  m0 = rec[a["a_m0_1"]:a["a_m0_1"] + 2]
  m = jnp.where(gap_one[None], m0 * jnp.asarray(np.array(bases, np.uint32))[:, None], m0)
  grown = jnp.where(seen, h * m, _U0) + rec[a["a_h1"]:a["a_h1"] + 2]
  return jnp.where(allws[None], h, grown), new_f


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AnswerState:
  """The answer parser's loop state (rows on the last axis).

  hash: uint32[2, B] the two hashes of the label being read; flags: uint32[B] packed as
  ew_encodings says (label state, look-up bit, item count; one array, as XLA:CPU emits one
  kernel per loop output); words: uint32[W, B] the cluster sets found so far; pending:
  uint32[2, B] the hash of the label the previous step closed (looked up this step);
  next_row: int32[B] the record row of this step's piece. The last two are computed one step ahead so that the gathers read
  stored arrays instead of recomputing their index for every gathered column.
  """
  hash: jax.Array
  flags: jax.Array
  words: jax.Array
  pending: jax.Array
  next_row: jax.Array


def answer_scan(toks, span: Span, cap: int, tables, compaction=PARSER_COMPACTION):
  """Answer parser over the answer content's pieces -> (cluster set words [W][B], item count
  [B]). A loop over piece index j runs as many steps as the longest answer of the batch has
  tokens (at most `cap` when cap > 0): per step it gathers each row's record, advances the
  label state, and looks up the label a separator closes. The loop state is AnswerState;
  compaction: the lane divisors of lane_loop's later phases.
  """
  batch, n = toks.ids.shape
  a, n_cols = enc.A, len(enc.ANSWER_COLUMNS)
  steps = _steps(span, cap, n)
  brackets = bracket_rows(toks, span, tables)

  def body(j, c: AnswerState, lanes) -> AnswerState:
    # A piece outside the content is the empty-string row V, which changes nothing.
    toks, span, brackets = lanes
    h, fc = c.hash, c.flags
    found = lookup_pairs(c.pending, bits(fc, enc.FC_LOOK) != 0, tables)
    rec = gather(tables.rec_answer, c.next_row).T           # [cols + W, B]
    flags = rec[a["a_flags"]]
    sep = bits(flags, enc.F_SEP) != 0
    closing_h, closing_f = answer_step(h, fc & np.uint32(enc.STATE_MASK), rec, tables.bases)
    closed = sep & (bits(closing_f, enc.S_SEEN) != 0)
    look = closed & (bits(closing_f, enc.S_BAD) == 0)
    h = jnp.where(sep[None], rec[a["f_h1"]:a["f_h1"] + 2], closing_h)
    f = jnp.where(sep, bits(flags, enc.F_STATE, 4), closing_f)
    count = (fc >> np.uint32(enc.FC_COUNT)) + closed.astype(jnp.uint32) + bits(
        flags, enc.F_COUNT, 8)
    fc = (f | (look.astype(jnp.uint32) << np.uint32(enc.FC_LOOK))
          | (count << np.uint32(enc.FC_COUNT)))
    return AnswerState(hash=h, flags=fc, words=c.words | found | rec[n_cols:],
                       pending=closing_h,
                       next_row=_piece_row(j + 1, toks, span, tables, brackets)[0])

  init = AnswerState(hash=jnp.zeros((2, batch), jnp.uint32),
                     flags=jnp.zeros((batch,), jnp.uint32),
                     words=jnp.zeros((tables.num_words, batch), jnp.uint32),
                     pending=jnp.zeros((2, batch), jnp.uint32),
                     next_row=_piece_row(jnp.int32(0), toks, span, tables, brackets)[0])
  final = lane_loop(body, init, (toks, span, brackets), span_tokens(span), steps,
                    lane_widths(batch, compaction), n)
  h, fc, words, pend = final.hash, final.flags, final.words, final.pending
  # The last label ends with the content (rows shorter than the loop keep their state: the
  # pieces past a content's end are empty strings); the last closed label is still pending.
  final_seen = span.present & (bits(fc, enc.S_SEEN) != 0)
  both = lookup_pairs(jnp.concatenate([pend, h], axis=1), jnp.concatenate(
      [bits(fc, enc.FC_LOOK) != 0, final_seen & (bits(fc, enc.S_BAD) == 0)]), tables)
  words = words | both[:, :batch] | both[:, batch:]
  count = (fc >> np.uint32(enc.FC_COUNT)).astype(jnp.int32) + final_seen.astype(jnp.int32)
  return list(words), count


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ThinkState:
  """The think parser's loop state: hash uint32[2, B] of the word being read; nonempty
  uint32[B] 1 when that word has a character; words uint32[W, B] the cluster sets found."""
  hash: jax.Array
  nonempty: jax.Array
  words: jax.Array


def think_scan(toks, span: Span, cap: int, tables, compaction=PARSER_COMPACTION):
  """Think parser over the think content's pieces -> cluster set words [W][B] of its words
  (a loop as in answer_scan)."""
  batch, n = toks.ids.shape
  t, n_cols = enc.T, len(enc.THINK_COLUMNS)
  steps = _steps(span, cap, n)

  def body(j, c: ThinkState, lanes) -> ThinkState:
    toks, span = lanes
    h, ne, words = c.hash, c.nonempty, c.words
    row, ins = _piece_row(j, toks, span, tables)
    rec = gather(tables.rec_think, row).T
    flags = rec[t["t_flags"]]
    brk = ins & (bits(flags, enc.T_BREAK) != 0)
    grown = h * rec[t["ta_p1"]:t["ta_p1"] + 2] + rec[t["ta_h1"]:t["ta_h1"] + 2]
    grown_ne = ne | bits(flags, enc.T_A_NONEMPTY)
    found = lookup_pairs(grown, brk & (grown_ne != 0), tables)
    h = jnp.where(brk[None], rec[t["tb_h1"]:t["tb_h1"] + 2], grown)
    ne = jnp.where(brk, bits(flags, enc.T_B_NONEMPTY), grown_ne)
    return ThinkState(hash=h, nonempty=ne,
                      words=words | found | jnp.where(ins[None], rec[n_cols:], _U0))

  init = ThinkState(hash=jnp.zeros((2, batch), jnp.uint32),
                    nonempty=jnp.zeros((batch,), jnp.uint32),
                    words=jnp.zeros((tables.num_words, batch), jnp.uint32))
  final = lane_loop(body, init, (toks, span), span_tokens(span), steps,
                    lane_widths(batch, compaction), n)
  h, ne, words = final.hash, final.nonempty, final.words
  words = words | lookup_pairs(h, span.present & (ne != 0), tables)
  return list(words)
