"""Every encoding of the on-device EW reward, in one place: what each packed word, flag bit,
table column and record means. ew_tables.py writes these encodings on the host, ew_scan.py
reads them on device; neither defines its own.

Per vocabulary token (`RewardTables.tok`, uint32[V + 1, 2]; row V is the empty token that
padding, positions past a row's length and out-of-vocabulary ids read):

  word (column 0), one of
    EMPTY_WORD          the token adds no text (special tokens, row V);
    ALLWS_WORD          the token is whitespace only;
    SPECIAL | start | multi << 28
                        the token holds '<' or '>': bit 31 set; bits 0-27 `start`: for each
                        tag t, bit TAG_OFFSETS[t] + k - 1 when the token ends with the tag's
                        first k bytes (a tag begun here); bit 28 `multi`: it holds one tag
                        twice. It also has a row of the special tables (`tok_special`);
    mid | len << 28     a token that can sit strictly inside a tag: bit TAG_OFFSETS[t] + k - 1
                        when it equals tag t's bytes k..k+len-1 (continuing a tag begun with k
                        bytes); bits 28-30 its byte length;
    0                   any other token.
  end (column 1): bits 0-27: bit TAG_OFFSETS[t] + k - 1 when the token starts with tag t's
    bytes from k on (a tag begun with k bytes ends here); bits 28-31: bit 28 + t when the
    token holds all of tag t.
  The tag scan keeps `active` (which tag prefixes the text so far ends with, the bits of
  `start`) and steps it per token: active' = start (special token) or (active & mid) << len.
  A tag split over tokens ends in the token where `active & end` is set (TAG_FIELDS masks
  tag t's bits).

Tag-scan events (ew_scan.tag_scan): one position bitmask per kind (uint32 words, bit p of word
w = position 32 w + p): K_CHAIN + t tag t ends here, begun in an earlier token; K_INSIDE + t
tag t lies wholly in this token; K_TEXT the token adds text; K_MULTI it holds one tag twice;
K_SPECIAL it holds '<' or '>'; K_NONWS it is neither empty nor whitespace only.

Special tokens (`sp`, int32[P, len(SP_COLUMNS)]): byte offsets inside the token, -1 for none:
  first_gt_end (just after its first '>'), last_lt (its last '<'), int_start{t} / int_end{t}
  (the first whole tag t inside it), close{t}_start{s} / close{t}_end{s} (the first close tag
  t = 1, 3 after content start option s).
  Content start options s (START_*): token start, after the first '>' (the open tag ended in
  this token but began earlier), after the open tag inside the token. End options (END_*):
  token end, before the last '<' (the close tag starts here, ends later), before the close
  tag inside the token. `sp_kinds[p, mode, s, e]` is the record row of that cut piece
  (mode MODE_THINK / MODE_ANSWER), row V (the empty string) where the cut is impossible.
  `sp_ws[p, a, b]` is 1 when bytes a..b of the token are whitespace only, for the
  WS_OPTIONS start options (0, first '>' end, end of tag t inside) and end options (length,
  last '<', start of tag t inside).
  A position inside the text is token * KEY_STRIDE + byte offset (tokens add < KEY_STRIDE
  bytes), so tags are ordered by comparing integers.

Records (one per distinct lowercased string: whole tokens at rows 0..V, then the cut pieces
and bracket variants). `rec_answer` uint32[R, len(ANSWER_COLUMNS) + W]:
  a_h1, a_h2     hashes of piece a: the non-whitespace core of the text before the first
                 separator (, ' ");
  a_m0_1, a_m0_2 the multipliers base^len(core) that append piece a to a label (times the
                 base once more after a one-space gap);
  a_flags        bits 0-5 the piece class (F_ALLWS whitespace only; F_LEAD / F_TRAIL, 2 bits
                 each, the kind of leading / trailing whitespace: 0 none, 1 one ' ', 2 other;
                 F_INNER_BAD non-space whitespace inside the core); F_SEP the string holds a
                 separator; F_EMPTY it is the empty string; bits F_COUNT.. (8) the labels lying
                 wholly between two separators inside it; bits F_STATE.. (4) the label state
                 after its last separator;
  f_h1, f_h2     the hash of the label begun after the last separator;
  then W words: the cluster sets of the labels wholly inside the string.
  `rec_think` uint32[R, len(THINK_COLUMNS) + W]: ta_* hash and power of the first word
  fragment, tb_* hash of the last one, t_flags (T_BREAK the string holds a non-word
  character; T_A_NONEMPTY / T_B_NONEMPTY the first / last fragment is non-empty), then the
  cluster sets of the whole words inside.
  `bracket_first` / `bracket_last` [R]: the row of the same string with a leading '[' /
  trailing ']' made a separator (the official bracket rule on the first / last piece).

Label state (4 bits, the answer parser's `flags`): S_SEEN non-whitespace seen, S_BAD the label
is bad (a gap of several or non-space whitespace between words, or such whitespace inside),
S_PEND (2 bits) the pending whitespace kind. `piece_transition` (host, ew_tables; device,
ew_scan) appends a piece class to a state. The answer parser carries one packed word per row
(ew_scan.AnswerState.flags): bits 0-3 the label state (STATE_MASK), bit FC_LOOK the label its
previous step closed is to be looked up, bits FC_COUNT.. the items counted so far.

Hashes: two polynomial hashes mod 2^32 (bases HASH_BASES, both odd) of a label's lowercased,
stripped UTF-8 bytes, each byte b coded b + 1 and a space coded 0. The perfect hash table
(hash and displace): bucket = (h1 * GOLDEN[0]) >> (32 - bucket_bits); slot =
((h2 ^ disp[bucket]) * GOLDEN[1]) >> (32 - slot_bits); `slots[slot]` = (h1, h2, cluster set
words).

Cluster sets: the level-1 clusters of the 5 wheels, `field_bits` bits per wheel (the most
clusters of a wheel), `fields_per_word` wheels per uint32 word, W words in all.
"""
from __future__ import annotations

from affect_jax.emotion import labels as labels_lib

TAGS = tuple(t.encode() for t in labels_lib.TAGS)   # <think> </think> <answer> </answer>
TAG_BITS = tuple(len(t) - 1 for t in TAGS)            # proper prefix lengths 1..len-1
TAG_OFFSETS = tuple(int(sum(TAG_BITS[:i])) for i in range(len(TAGS)))
TAG_FIELDS = tuple(((1 << b) - 1) << o for b, o in zip(TAG_BITS, TAG_OFFSETS))
FIELD = (1 << 28) - 1                                 # the 28 tag bits of a packed word
SPECIAL = 1 << 31
ALLWS_WORD = 7 << 28                                  # tok word of a whitespace-only token
EMPTY_WORD = FIELD                                    # tok word of a token adding no text
MOD = 1 << 32
KEY_STRIDE = 1 << 12                                  # token * KEY_STRIDE + byte: a position
GOLDEN = (0x9E3779B1, 0x85EBCA77)                     # the perfect hash's multipliers
HASH_BASES = (0x01000193, 0x5BD1E995)                 # the label hash's two odd bases

# Tag-scan event kinds (bit of the per-token kind word, and the bitmask they fill).
K_CHAIN, K_INSIDE, K_TEXT, K_MULTI, K_SPECIAL, K_NONWS = 0, 4, 8, 9, 10, 11
KINDS = 12

# a_flags bits (answer records).
F_ALLWS, F_LEAD, F_TRAIL, F_INNER_BAD, F_SEP, F_EMPTY, F_COUNT = 0, 1, 3, 5, 6, 7, 8
F_STATE = 16          # a_flags bits 16-19: the label state after the last separator
PIECE_CLASS_BITS = 6  # a_flags bits 0-5: the piece class piece_transition reads
# Label state bits.
S_SEEN, S_BAD, S_PEND = 0, 1, 2
STATE_MASK = 15       # the 4 label state bits
# The answer parser's packed loop word: label state, look-up bit, item count.
FC_LOOK, FC_COUNT = 4, 5
# t_flags bits (think records).
T_BREAK, T_A_NONEMPTY, T_B_NONEMPTY = 0, 1, 2
# Cut pieces of special tokens: content start and end options, modes.
START_TOKEN, START_CROSS, START_INTERNAL = 0, 1, 2
END_TOKEN, END_CROSS, END_INTERNAL = 0, 1, 2
MODE_THINK, MODE_ANSWER = 0, 1
WS_OPTIONS = 6

ANSWER_COLUMNS = ("a_h1", "a_h2", "a_m0_1", "a_m0_2", "a_flags", "f_h1", "f_h2")
THINK_COLUMNS = ("ta_h1", "ta_h2", "ta_p1", "ta_p2", "tb_h1", "tb_h2", "t_flags")
SP_COLUMNS = ("first_gt_end", "last_lt") + tuple(
    f"int_{edge}{t}" for t in range(4) for edge in ("start", "end")) + tuple(
        f"close{t}_{edge}{s}" for t in (1, 3) for s in range(3) for edge in ("start", "end"))
SP = {name: i for i, name in enumerate(SP_COLUMNS)}
A = {name: i for i, name in enumerate(ANSWER_COLUMNS)}
T = {name: i for i, name in enumerate(THINK_COLUMNS)}
