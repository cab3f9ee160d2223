"""Host side of the on-device EW reward: tokenizer + EwTables -> device lookup tables, once.

The device reads completions as token ids, so everything the text rules of
affect_jax/emotion/labels.py need is precomputed here per vocabulary token, from the exact
bytes each token adds to the decoded text (`token_bytes`):

- per token, two packed words (`tok`: word, end): for each of the 4 tags, the proper
  prefixes the token ends with (start bits), the inner slices it equals (mid bits, with the
  token length), the suffixes it starts with (end bits), whether it holds a whole tag, and
  whether it is whitespace only. A tag split over any number of tokens is found on device by
  a bit recurrence over these words. Tokens holding '<' or '>' ("special") get a row of the
  special tables: offsets of their first '>' / last '<' and of the tags inside them, the
  records of their cut pieces and which cut pieces are whitespace only.
- records: one record summarises one string (a whole token, or a token cut at a tag, or with a
  leading "[" / trailing "]" turned into a separator for the official bracket rule) for the
  two label parsers:
  * answer parser (split at , ' " then strip): the text before the first separator (piece a:
    64-bit polynomial hash of its non-whitespace core, the multipliers that append it after
    no gap or after one space, its whitespace class for `piece_transition`) and the label
    state right after the last separator; labels lying wholly between two separators inside
    the string are resolved here, on the host, into their cluster sets.
  * think parser (words = runs of the wheel's word characters): first and last word fragments
    and the cluster sets of the whole words inside.
- a perfect hash table (hash and displace) from label hash to cluster sets, the level-1
  clusters of the 5 wheels packed in `num_words` uint32 words (`field_bits` bits per wheel).
Exactness: the device equals the text rules for every completion, except where a multi-byte
UTF-8 character is split between two tokens and that character is whitespace, changes under
lower(), or is a word character next to a <think> word; and up to 64-bit hash collisions
between a junk label and a surface form (surface forms among themselves are checked here).
Every packed word, flag bit and column is described in affect_jax/rewards/ew_encodings.py.
"""
from __future__ import annotations

import dataclasses
import json
import re

import jax
import numpy as np

from affect_jax.emotion import wheel as wheel_lib
from affect_jax.rewards.ew_encodings import (
    ALLWS_WORD, ANSWER_COLUMNS, EMPTY_WORD, F_ALLWS, F_COUNT, F_EMPTY, F_INNER_BAD, F_LEAD,
    F_SEP, F_STATE, F_TRAIL, GOLDEN, HASH_BASES, KEY_STRIDE, MOD, MODE_ANSWER, MODE_THINK,
    PIECE_CLASS_BITS, S_BAD, S_PEND, SP_COLUMNS, SPECIAL, T_A_NONEMPTY, T_B_NONEMPTY,
    T_BREAK, TAG_OFFSETS, TAGS, WS_OPTIONS)

class TokenizerError(ValueError):
  """A tokenizer whose decoded text is not the concatenation of per-token strings."""


# ------------------------------------------------------------------------------------------
# Token -> bytes.


def _bytes_to_unicode() -> dict[str, int]:
  """The GPT-2 / Qwen2 byte-level alphabet: printable stand-in character -> byte."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  chars, n = list(keep), 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(keep, chars)}


def _backend(tokenizer):
  return getattr(tokenizer, "backend_tokenizer", tokenizer)


def _decoder_steps(spec) -> list[dict]:
  if spec is None:
    return []
  if spec.get("type") == "Sequence":
    return [step for sub in spec["decoders"] for step in _decoder_steps(sub)]
  return [spec]


def token_bytes(tokenizer) -> list[bytes]:
  """Per token id, the bytes it adds to the decoded text (special tokens add nothing).

  Supports decoders made of ByteLevel (GPT-2, Qwen2) or Metaspace / Replace / ByteFallback /
  Fuse / Strip steps (SentencePiece style); `verify_token_bytes` checks the result.
  """
  backend = _backend(tokenizer)
  steps = _decoder_steps(json.loads(backend.to_str()).get("decoder"))
  kinds = {s.get("type") for s in steps}
  unsupported = kinds - {"ByteLevel", "Metaspace", "Replace", "ByteFallback", "Fuse", "Strip"}
  if unsupported or not steps:
    raise TokenizerError(
        f"tokenizer decoder {sorted(unsupported) or 'None'}: the on-device reward needs a "
        f"decoder whose text is the concatenation of per-token strings (ByteLevel as in "
        f"Qwen2/GPT-2, Metaspace/ByteFallback as in SentencePiece, or Fuse).")
  added = backend.get_added_tokens_decoder()
  byte_of = _bytes_to_unicode()
  out = []
  for i in range(backend.get_vocab_size(with_added_tokens=True)):
    if i in added:
      out.append(b"" if added[i].special else added[i].content.encode())
      continue
    piece = backend.id_to_token(i)
    if piece is None:
      out.append(b"")
      continue
    data = None
    for step in steps:
      kind = step["type"]
      if kind == "ByteLevel" and all(c in byte_of for c in piece):
        data = bytes(byte_of[c] for c in piece)
      elif kind == "Metaspace":
        piece = piece.replace(step.get("replacement", "\u2581"), " ")
      elif kind == "Replace" and step["pattern"].get("String") is not None:
        piece = piece.replace(step["pattern"]["String"], step["content"])
      elif kind == "ByteFallback":
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if m:
          data = bytes([int(m.group(1), 16)])
    out.append(data if data is not None else piece.encode())
  return out


def _encode(tokenizer, text: str) -> list[int]:
  if hasattr(tokenizer, "backend_tokenizer"):
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
  return list(tokenizer.encode(text, add_special_tokens=False).ids)


def decode(tokenizer, ids) -> str:
  """The host side's text of a completion (special tokens skipped, no space clean-up)."""
  ids = [int(i) for i in ids]
  if hasattr(tokenizer, "backend_tokenizer"):
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
  return tokenizer.decode(ids, skip_special_tokens=True)


def verify_token_bytes(tokenizer, pieces: list[bytes], probes) -> None:
  """Raises TokenizerError unless decode(encode(p)) equals the concatenated token bytes for
  every probe text (a leading space that the decoder strips is allowed)."""
  for text in probes:
    ids = _encode(tokenizer, text)
    decoded = decode(tokenizer, ids)
    joined = b"".join(pieces[i] for i in ids).decode("utf-8", "replace")
    if decoded != joined and decoded != joined.removeprefix(" "):
      raise TokenizerError(
          f"tokenizer: decode({text!r}) = {decoded!r} but its tokens' bytes join to "
          f"{joined!r}; the on-device reward needs a concatenating decoder.")


# ------------------------------------------------------------------------------------------
# Hashing: two polynomial hashes mod 2^32 over UTF-8 bytes + 1 (a space hashes as 0).


def _hash(codes, base: int) -> tuple[int, int]:
  h, p = 0, 1
  for c in codes:
    h = (h * base + c) % MOD
    p = (p * base) % MOD
  return h, p


def _codes(text: str) -> list[int]:
  return [0 if ch == " " else b + 1 for ch in text
          for b in (b" " if ch == " " else ch.encode("utf-8", "surrogateescape"))]


def surface_hash(surface: str, bases) -> tuple[int, int]:
  codes = _codes(surface)
  return _hash(codes, bases[0])[0], _hash(codes, bases[1])[0]


def _lower(data: bytes) -> str:
  return data.decode("utf-8", "surrogateescape").lower()


def _ws_kind(run: str) -> int:
  return 0 if not run else (1 if run == " " else 2)


def piece_transition(klass: int, state: int) -> tuple[int, int, bool]:
  """(new state flags, whitespace gap before the piece's core, whitespace only) when a
  separator-free piece of class `klass` is appended to a label with state flags `state`.

  A gap of 1 is one space between two words; 2 (several or non-space whitespace) makes the
  label bad once something follows it. Leading and trailing whitespace never counts (the
  official strip()).
  """
  seen, bad, pend = state & 1, (state >> 1) & 1, (state >> 2) & 3
  allws, lead = klass & 1, (klass >> F_LEAD) & 3
  trail, inner_bad = (klass >> F_TRAIL) & 3, (klass >> F_INNER_BAD) & 1
  gap = min(pend + lead, 2)
  if allws:
    return (state & 3) | (gap << S_PEND), gap, True
  bad = bad | (seen & int(gap == 2)) | inner_bad
  return 1 | (bad << S_BAD) | (trail << S_PEND), gap, False


def _answer_piece(text: str, bases) -> list[int]:
  """[h1, h2, p1, p2, flags] of a separator-free string (flags: F_* bits)."""
  core = text.strip()
  if not core:
    return [0, 0, 1, 1, (1 << F_ALLWS) | (_ws_kind(text) << F_LEAD)]
  start = len(text) - len(text.lstrip())
  lead, trail = text[:start], text[start + len(core):]
  inner_bad = any(ch.isspace() and ch != " " for ch in core)
  h1, p1 = _hash(_codes(core), bases[0])
  h2, p2 = _hash(_codes(core), bases[1])
  flags = (_ws_kind(lead) << F_LEAD) | (_ws_kind(trail) << F_TRAIL) | (
      int(inner_bad) << F_INNER_BAD)
  return [h1, h2, p1, p2, flags]


# ------------------------------------------------------------------------------------------
# Records.

# Record tables are row-major. Answer rows: piece a (text before the first separator: core
# hash h, multiplier m0 = P^core (base * m0 after a one-space gap), flags, with the label
# state right after the last separator in bits F_STATE..), the hash of that label (piece b
# appended to an empty label: f_h), then the inner labels' cluster set words. Think rows: the
# first word fragment (hash, power), the last one's hash, flags, then the inner words'
# cluster sets.


@dataclasses.dataclass
class _Records:
  """Deduplicated records of lowercased strings; rows 0..V are the whole tokens."""
  surface_ids: dict
  sets: np.ndarray          # uint32[S, words] cluster sets of every surface
  word_chars: frozenset
  word_bytes: frozenset
  bases: tuple
  rows: list = dataclasses.field(default_factory=list)
  inner: list = dataclasses.field(default_factory=list)
  texts: list = dataclasses.field(default_factory=list)
  index: dict = dataclasses.field(default_factory=dict)

  def _set(self, labels) -> np.ndarray:
    out = np.zeros(self.sets.shape[1], np.uint32)
    for label in labels:
      if label in self.surface_ids:
        out |= self.sets[self.surface_ids[label]]
    return out

  def copy(self, row: int) -> int:
    self.rows.append(list(self.rows[row]))
    self.inner.append(self.inner[row])
    self.texts.append(self.texts[row])
    return len(self.rows) - 1

  def add(self, text: str) -> int:
    if text in self.index:
      return self.index[text]
    parts = re.split("[,'\"]", text)
    inner_items = [p.strip() for p in parts[1:-1]]
    h1, h2, p1, p2, flags = _answer_piece(parts[0], self.bases)
    count = sum(1 for p in inner_items if p)
    flags |= (int(len(parts) > 1) << F_SEP) | (int(text == "") << F_EMPTY) | (
        min(count, 255) << F_COUNT)
    if len(parts) > 1:   # the label state after the last separator
      b1, b2, _, _, klass = _answer_piece(parts[-1], self.bases)
      state, _, allws = piece_transition(klass & ((1 << PIECE_CLASS_BITS) - 1), 0)
      flags |= state << F_STATE
      f_h = [0, 0] if allws else [b1, b2]
    else:
      f_h = [0, 0]
    a = [h1, h2, p1, p2, flags] + f_h
    runs, current, breaks = [], [], 0
    for ch in text:
      encoded = ch.encode("utf-8", "surrogateescape")
      if ch in self.word_chars or (len(encoded) == 1 and encoded[0] in self.word_bytes):
        current.append(ch)
      else:
        runs.append("".join(current))
        current, breaks = [], breaks + 1
    runs.append("".join(current))
    ta = self._word(runs[0])
    tb = self._word(runs[-1])[:2] if breaks else [0, 0]
    t_flags = (int(breaks > 0) << T_BREAK) | (int(bool(runs[0])) << T_A_NONEMPTY) | (
        int(breaks > 0 and bool(runs[-1])) << T_B_NONEMPTY)
    self.rows.append(a + ta + tb + [t_flags])
    self.inner.append((self._set(inner_items), self._set(runs[1:-1])))
    self.texts.append(text)
    self.index[text] = len(self.rows) - 1
    return self.index[text]

  def _word(self, word: str) -> list[int]:
    codes = [b + 1 for ch in word for b in ch.encode("utf-8", "surrogateescape")]
    h1, p1 = _hash(codes, self.bases[0])
    h2, p2 = _hash(codes, self.bases[1])
    return [h1, h2, p1, p2]


# ------------------------------------------------------------------------------------------
# Tag fields.


def _first_at(data: bytes, tag: bytes, start: int) -> tuple[int, int]:
  """(start, end) of the first occurrence of `tag` at or after byte `start`, or (-1, -1)."""
  at = data.find(tag, start) if start >= 0 else -1
  return (at, at + len(tag)) if at >= 0 else (-1, -1)


def _tag_words(data: bytes) -> tuple[int, int]:
  """(tok_word, tok_end) of one token's bytes."""
  start = mid = end = inside = multi = 0
  for t, tag in enumerate(TAGS):
    for k in range(1, len(tag)):
      bit = 1 << (TAG_OFFSETS[t] + k - 1)
      if data.endswith(tag[:k]):
        start |= bit
      if data and k + len(data) <= len(tag) - 1 and tag[k:k + len(data)] == data:
        mid |= bit
      if len(data) >= len(tag) - k and data.startswith(tag[k:]):
        end |= bit
    count = data.count(tag)
    inside |= int(count > 0) << t
    multi |= int(count > 1)
  if not data:
    word = EMPTY_WORD
  elif b"<" in data or b">" in data:
    word = SPECIAL | start | (multi << 28)
  elif mid:
    word = mid | (len(data) << 28)
  else:
    word = ALLWS_WORD if not _lower(data).strip() else 0
  return word, end | (inside << 28)


def _special_row(data: bytes) -> dict:
  gt = data.find(b">") + 1 if b">" in data else -1
  lt = data.rfind(b"<")
  out = {"first_gt_end": gt, "last_lt": lt}
  for t, tag in enumerate(TAGS):
    out[f"int_start{t}"], out[f"int_end{t}"] = _first_at(data, tag, 0)
  # The close tag inside the token that ends a content starting at each start option.
  for t in (1, 3):
    starts = (0, gt, out[f"int_end{t - 1}"])
    for s, a in enumerate(starts):
      out[f"close{t}_start{s}"], out[f"close{t}_end{s}"] = _first_at(data, TAGS[t], a)
  return out


# ------------------------------------------------------------------------------------------
# Perfect hash table (hash and displace).


def _slot(h2: int, disp: int, bits: int) -> int:
  return (((h2 ^ disp) * GOLDEN[1]) % MOD) >> (32 - bits)


def _bucket(h1: int, bits: int) -> int:
  return ((h1 * GOLDEN[0]) % MOD) >> (32 - bits)


def _perfect_hash(hashes, surfaces):
  n = max(1, len(hashes))
  slot_bits = max(2, int(np.ceil(np.log2(2 * n))))
  bucket_bits = max(1, int(np.ceil(np.log2(max(2, n // 2)))))
  seen = {}
  for s, h in zip(surfaces, hashes):
    if h in seen:
      raise ValueError(f"surface forms {seen[h]!r} and {s!r} share a 64-bit label hash; "
                       "pass other bases to build_reward_tables (default "
                       "ew_encodings.HASH_BASES).")
    seen[h] = s
  buckets = {}
  for i, (h1, _) in enumerate(hashes):
    buckets.setdefault(_bucket(h1, bucket_bits), []).append(i)
  taken = np.full(1 << slot_bits, -1, np.int64)
  disp = np.zeros(1 << bucket_bits, np.int64)
  for b, members in sorted(buckets.items(), key=lambda kv: (-len(kv[1]), kv[0])):
    for attempt in range(1 << 20):
      d = (attempt * 0x2545F491) % MOD
      slots = [_slot(hashes[i][1], d, slot_bits) for i in members]
      if len(set(slots)) == len(slots) and all(taken[s] < 0 for s in slots):
        for i, s in zip(members, slots):
          taken[s] = i
        disp[b] = d
        break
    else:
      raise ValueError("perfect hash: no displacement found; pass other bases to "
                       "build_reward_tables (default ew_encodings.HASH_BASES).")
  return taken, disp.astype(np.uint32), slot_bits, bucket_bits


# ------------------------------------------------------------------------------------------
# The device tables.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RewardTables:
  """Device lookup tables of one (tokenizer, emotion wheel) pair. Shapes: V tokens (+1 row
  for padding / unknown ids), P special tokens, R records, T slots, W words per cluster set.

  tok: uint32[V + 1, 2] packed tag words (word, end; see _tag_words); tok_special:
    int32[V + 1] special row or -1.
  sp: int32[P, len(SP_COLUMNS)] offsets; sp_kinds: int32[P, 2, 3, 3] record rows of cut
    pieces (mode, start kind, end kind); sp_ws: int32[P, 6, 6] 1 if a cut piece is
    whitespace only.
  rec_answer: uint32[R, len(ANSWER_COLUMNS) + W], rec_think: uint32[R, len(THINK_COLUMNS)
    + W] records (the last W columns: cluster sets of the labels inside the string);
    bracket_first / bracket_last: int32[R].
  slots: uint32[T, 2 + W] perfect hash slots (h1, h2, cluster set); disp: uint32[buckets].
  sets: uint32[S, W] cluster set of every surface form.
  """
  tok: jax.Array
  tok_special: jax.Array
  sp: jax.Array
  sp_kinds: jax.Array
  sp_ws: jax.Array
  rec_answer: jax.Array
  rec_think: jax.Array
  bracket_first: jax.Array
  bracket_last: jax.Array
  slots: jax.Array
  disp: jax.Array
  sets: jax.Array
  field_bits: int = dataclasses.field(metadata=dict(static=True))
  fields_per_word: int = dataclasses.field(metadata=dict(static=True))
  slot_bits: int = dataclasses.field(metadata=dict(static=True))
  bucket_bits: int = dataclasses.field(metadata=dict(static=True))
  bases: tuple = dataclasses.field(metadata=dict(static=True))

  @property
  def vocab_size(self) -> int:
    return self.tok.shape[0] - 1

  @property
  def num_words(self) -> int:
    return self.sets.shape[1]




def cluster_sets(tables: wheel_lib.EwTables):
  """uint32[S, W] level-1 cluster sets per surface, and (field_bits, fields_per_word)."""
  columns = [tables.variant_index(v) for v in wheel_lib.LEVEL1]
  field_bits = max(1, max(tables.num_clusters(v) for v in wheel_lib.LEVEL1))
  if field_bits > 32:
    raise ValueError(f"{field_bits} level-1 clusters in one wheel; at most 32 are supported.")
  per_word = 32 // field_bits
  words = -(-len(columns) // per_word)
  out = np.zeros((len(tables.surfaces), words), np.uint64)
  for w, c in enumerate(columns):
    ids = tables.clusters[:, c].astype(np.int64)
    bit = np.where(ids >= 0, np.left_shift(1, np.maximum(ids, 0) + field_bits * (w % per_word)),
                   0).astype(np.uint64)
    out[:, w // per_word] |= bit
  return out.astype(np.uint32), field_bits, per_word


_PROBE_TEXTS = ("<think>The Voice SHAKES, a tear…\t\n</think>\n<answer>[Worried, "
                "'sad',\"Happy\" ,don’t care]</answer>",
                "<answer> joy ,  Let Down</answer><think>ok</think>  ",
                "plain words, naïve café… ＡＢＣ ✓")


def build_reward_tables(tokenizer, tables: wheel_lib.EwTables, bases=HASH_BASES,
                        probes=_PROBE_TEXTS) -> RewardTables:
  """Host, once: the device tables of `tokenizer` (an HF fast tokenizer or a
  tokenizers.Tokenizer) for the emotion wheel `tables`; `bases`: two odd hash bases."""
  bases = tuple(int(b) for b in bases)
  if len(bases) != 2 or any(b % 2 == 0 for b in bases):
    raise ValueError(f"hash bases {bases}: need two odd integers.")
  pieces = token_bytes(tokenizer)
  verify_token_bytes(tokenizer, pieces, probes)
  for s in tables.surfaces:
    if s != s.strip() or "  " in s or any(ch.isspace() and ch != " " for ch in s):
      raise ValueError(f"surface form {s!r}: only single spaces between words are supported.")
  sets, field_bits, per_word = cluster_sets(tables)
  word_bytes = frozenset(b for ch in tables.word_chars for b in ch.encode() if b >= 0x80)
  records = _Records(surface_ids=tables.surface_ids(), sets=sets,
                     word_chars=tables.word_chars, word_bytes=word_bytes, bases=bases)
  vocab = len(pieces)
  tok = np.zeros((vocab + 1, 2), np.uint32)
  tok_special = np.full(vocab + 1, -1, np.int32)
  for i, data in enumerate(pieces + [b""]):
    if len(data) >= KEY_STRIDE:
      raise TokenizerError(f"tokenizer token {i} adds {len(data)} bytes; at most "
                           f"{KEY_STRIDE - 1} are supported.")
    if records.add(_lower(data)) != i:   # whole-token records sit at row i
      records.copy(records.index[_lower(data)])
    tok[i] = _tag_words(data)
  sp_rows, kinds, ws = [], [], []
  for i, data in enumerate(pieces):
    if b"<" not in data and b">" not in data:
      continue
    tok_special[i] = len(sp_rows)
    row = _special_row(data)
    sp_rows.append([row[c] for c in SP_COLUMNS])
    block = np.full((2, 3, 3), vocab, np.int64)       # row V: the empty string
    for mode, (open_t, close_t) in ((MODE_THINK, (0, 1)), (MODE_ANSWER, (2, 3))):
      starts = (0, row["first_gt_end"], row[f"int_end{open_t}"])
      for s, a in enumerate(starts):
        ends = (len(data), row["last_lt"], row[f"close{close_t}_start{s}"])
        for e, b in enumerate(ends):
          if 0 <= a <= b:
            block[mode, s, e] = records.add(_lower(data[a:b]))
    kinds.append(block)
    starts = [0, row["first_gt_end"]] + [row[f"int_end{t}"] for t in range(4)]
    ends = [len(data), row["last_lt"]] + [row[f"int_start{t}"] for t in range(4)]
    ws.append([[int(0 <= a <= b and not _lower(data[a:b]).strip()) for b in ends]
               for a in starts])
  bracket_first, bracket_last = [], []
  r = 0
  while r < len(records.rows):   # rows added here get their own bracket variants
    text = records.texts[r]
    bracket_first.append(records.add("," + text[1:]) if text.startswith("[") else r)
    bracket_last.append(records.add(text[:-1] + ",") if text.endswith("]") else r)
    r += 1
  hashes = [surface_hash(s, bases) for s in tables.surfaces]
  taken, disp, slot_bits, bucket_bits = _perfect_hash(hashes, tables.surfaces)
  slots = np.zeros((len(taken), 2 + sets.shape[1]), np.uint32)
  for s, i in enumerate(taken):
    if i >= 0:
      slots[s, :2] = hashes[i]
      slots[s, 2:] = sets[i]
  rows = np.array(records.rows, np.uint64).astype(np.uint32)
  inner = [np.stack([x[k] for x in records.inner]) for k in range(2)]
  n_answer = len(ANSWER_COLUMNS)
  n_sp = max(1, len(sp_rows))
  return RewardTables(
      tok=tok, tok_special=tok_special,
      sp=np.array(sp_rows or [[-1] * len(SP_COLUMNS)], np.int32).reshape(n_sp, -1),
      sp_kinds=np.array(kinds or [np.full((2, 3, 3), vocab)], np.int32),
      sp_ws=np.array(ws or [np.ones((WS_OPTIONS, WS_OPTIONS))], np.int32),
      rec_answer=np.concatenate([rows[:, :n_answer], inner[0]], axis=1),
      rec_think=np.concatenate([rows[:, n_answer:], inner[1]], axis=1),
      bracket_first=np.array(bracket_first, np.int32),
      bracket_last=np.array(bracket_last, np.int32),
      slots=slots, disp=disp, sets=sets,
      field_bits=field_bits, fields_per_word=per_word, slot_bits=slot_bits,
      bucket_bits=bucket_bits, bases=bases)


def to_device(tables: RewardTables) -> RewardTables:
  """The same tables as device arrays (jnp), ready to pass into jitted code."""
  return jax.tree_util.tree_map(jax.numpy.asarray, tables)


# Everyday English for the wheel tokenizer (so that descriptions in <think> tokenize like
# text, not letter by letter).
_PLAIN_ENGLISH = (
    "The speaker's voice is low and the face looks calm, then she smiles a bit. His tone "
    "rises; the words and the audio suggest that he feels it, with hints of something "
    "underneath. They frown, sounds agree, maybe not. She says that it was fine, but her "
    "eyes and hands show more. The subtitle reads: I can't believe this happened to us!")


def wheel_tokenizer(tables: wheel_lib.EwTables, tokenizer_section):
  """A byte-level BPE tokenizer (the demo's recipe, affect_jax/data/tokenizer.py) trained on
  the wheel's surface forms inside think / answer tags and a paragraph of everyday English;
  built once, cached under the user cache dir. The default tokenizer of launch.score
  --engine=device and of the reward benchmark. tokenizer_section: the data.tokenizer config
  section (configs/data.py tokenizer_config(); the launcher passes it)."""
  from affect_jax.data import tokenizer as tokenizer_lib
  texts = [f"<think>{s}</think><answer>{s}, {s.capitalize()}</answer>" for s in tables.surfaces]
  texts += [_PLAIN_ENGLISH] * 20
  root = str(wheel_lib.cache_dir() / "tokenizers")
  return tokenizer_lib.ensure_demo_tokenizer(root, texts, tokenizer_section)
