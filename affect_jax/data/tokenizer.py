"""The demo's tokenizer: byte-level BPE trained offline, Qwen2-style, wrapped for transformers.

Like Qwen2's tokenizer: text is split by Qwen2's regex, mapped to the GPT-2 byte alphabet
(ByteLevel pre-tokenizer, no prefix space) and merged by BPE; the ByteLevel decoder inverts it,
so every string round-trips and no text is ever unknown.

Token ids (stable, independent of the training texts):
- 0..: the special tokens by role in ROLE_ORDER (pad, eos, multi, audio, video; any other
  role after them, alphabetically): with the default config <|endoftext|> = 0, <|im_end|> = 1,
  <MultiHere> = 2, <AudioHere> = 3, <FrameHere> = 4, <|im_start|> = 5 (bos, as Qwen2.5's in
  AffectGPT); the model config maps 'multi', 'audio', 'video' to their ids
  (`placeholder_ids`). decode(skip_special_tokens=True) drops them.
- next: the added tokens <think>, </think>, <answer>, </answer> as NORMAL (non-special) single
  tokens: one id each makes the tags easy for a tiny model to emit, and being non-special they
  stay in decoded text, where the on-device reward (affect_jax/rewards/ew_tables.py) reads every
  token's bytes. An empty `added_tokens` leaves the tags to BPE as Qwen2.5 does; the reward
  works either way.
- then the 256 byte symbols and the merges, up to `vocab_size` in all.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterable, Mapping, Sequence

import ml_collections
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

REQUIRED_ROLES = ("pad", "eos")
PLACEHOLDER_ROLES = ("multi", "audio", "video")
ROLE_ORDER = REQUIRED_ROLES + PLACEHOLDER_ROLES


def ordered_specials(special_tokens: Mapping[str, str]) -> list[tuple[str, str]]:
  """(role, token) in id order: ROLE_ORDER first, other roles alphabetically."""
  rank = {role: i for i, role in enumerate(ROLE_ORDER)}
  return sorted(special_tokens.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _check_specials(special_tokens: Mapping[str, str], added_tokens: Sequence[str]) -> None:
  missing = [r for r in REQUIRED_ROLES if r not in special_tokens]
  if missing:
    raise ValueError(f"tokenizer.special_tokens={dict(special_tokens)}: missing roles {missing}; "
                     f"give each of {REQUIRED_ROLES} a token string.")
  strings = list(special_tokens.values()) + list(added_tokens)
  if len(set(strings)) != len(strings) or not all(strings):
    raise ValueError(f"tokenizer special / added tokens {strings}: must be distinct and "
                     f"non-empty.")


def build_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: Mapping[str, str],
                    added_tokens: Sequence[str] = (), *, pretokenize_regex: str,
                    min_frequency: int = 2,
                    model_max_length: int = 512) -> PreTrainedTokenizerFast:
  """Trains a byte-level BPE tokenizer on `texts` (module doc).

  Args:
    texts: the training corpus (subtitles, reasons, labels, prompt strings).
    vocab_size: the total size, special and added tokens included; BPE stops earlier when
      the corpus has no more pairs of min_frequency.
    special_tokens: role -> token (ids in ordered_specials order); 'pad' and 'eos' required.
    added_tokens: normal tokens kept whole (e.g. the think / answer tags).
    pretokenize_regex: the split before byte-level mapping (configs/data.py uses Qwen2's).
    min_frequency: a merge needs a pair seen at least this often.
    model_max_length: recorded in the tokenizer config.
  Returns:
    A transformers tokenizer with pad / eos (and bos when given) set, the other roles as extra
    special tokens, left padding.
  """
  _check_specials(special_tokens, added_tokens)
  specials = ordered_specials(special_tokens)
  fixed = [t for _, t in specials] + list(added_tokens)
  minimum = len(fixed) + len(pre_tokenizers.ByteLevel.alphabet())
  if vocab_size < minimum:
    raise ValueError(f"tokenizer.vocab_size={vocab_size}: must be >= {minimum} (the byte "
                     f"alphabet plus {len(fixed)} special / added tokens).")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=fixed,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(texts), trainer)
  # The trainer registers every listed token as special; the added ones become normal tokens.
  spec = json.loads(tok.to_str())
  for entry in spec["added_tokens"]:
    if entry["content"] in added_tokens:
      entry["special"] = False
  tok = Tokenizer.from_str(json.dumps(spec))
  extra = [t for role, t in specials if role not in REQUIRED_ROLES + ("bos",)]
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=special_tokens["pad"], eos_token=special_tokens["eos"],
      bos_token=special_tokens.get("bos"), extra_special_tokens=extra, padding_side="left",
      model_max_length=model_max_length)


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
  """The id of a token that must be a single entry of the vocabulary."""
  i = tokenizer.convert_tokens_to_ids(token)
  if i is None or i == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(i) != token:
    raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary; rebuild the "
                     f"tokenizer with it in tokenizer.special_tokens or added_tokens.")
  return int(i)


def special_token_ids(tokenizer: PreTrainedTokenizerFast,
                      special_tokens: Mapping[str, str]) -> dict[str, int]:
  """role -> id for every special token (e.g. {'pad': 0, 'eos': 1, 'multi': 2, ...})."""
  return {role: token_id(tokenizer, t) for role, t in special_tokens.items()}


def placeholder_ids(tokenizer: PreTrainedTokenizerFast,
                    special_tokens: Mapping[str, str]) -> dict[str, int]:
  """{'multi', 'audio', 'video'} -> placeholder id, for the model config's placeholder_ids."""
  missing = [r for r in PLACEHOLDER_ROLES if r not in special_tokens]
  if missing:
    raise ValueError(f"tokenizer.special_tokens has no {missing} placeholder; add e.g. "
                     f"multi='<MultiHere>', audio='<AudioHere>', video='<FrameHere>'.")
  return {role: token_id(tokenizer, special_tokens[role]) for role in PLACEHOLDER_ROLES}


def tokenizer_hash(texts: Sequence[str], cfg: ml_collections.ConfigDict) -> str:
  """Hash of the training texts and the tokenizer config (the cache key)."""
  h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=list).encode())
  for text in texts:
    h.update(text.encode("utf-8") + b"\0")
  return h.hexdigest()[:16]


def build_from_config(texts: Sequence[str], cfg: ml_collections.ConfigDict
                      ) -> PreTrainedTokenizerFast:
  """build_tokenizer with every setting from configs/data.py `tokenizer`."""
  return build_tokenizer(texts, cfg.vocab_size, dict(cfg.special_tokens), tuple(cfg.added_tokens),
                         pretokenize_regex=cfg.pretokenize_regex,
                         min_frequency=cfg.min_frequency, model_max_length=cfg.model_max_length)


def load_tokenizer(folder: str) -> PreTrainedTokenizerFast:
  """A tokenizer saved by ensure_demo_tokenizer (or any save_pretrained folder)."""
  if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
    raise FileNotFoundError(f"{folder}: no tokenizer.json; build it with ensure_demo_tokenizer "
                            f"or point to a save_pretrained folder.")
  return PreTrainedTokenizerFast.from_pretrained(folder)


def ensure_demo_tokenizer(root: str, texts: Sequence[str], cfg: ml_collections.ConfigDict
                          ) -> PreTrainedTokenizerFast:
  """The demo tokenizer, trained once on `texts` and cached under root/tokenizer_<hash>.

  Written to a temporary folder and renamed into place (atomic); later calls with the same
  texts and config reload it.
  """
  texts = list(texts)
  path = os.path.join(root, f"tokenizer_{tokenizer_hash(texts, cfg)}")
  if not os.path.isfile(os.path.join(path, "tokenizer.json")):
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_tokenizer_", dir=root)
    try:
      build_from_config(texts, cfg).save_pretrained(tmp)
      try:
        os.rename(tmp, path)
      except OSError:
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return load_tokenizer(path)
