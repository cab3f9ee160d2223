"""The AffectGPT prompt and target, as token ids, with the SFT loss mask and left padding.

Layout (PAPER_NOTES.md section 2; strings in configs/data.py `prompt`):
  prompt = human + multi block + audio block + video block + subtitle block + question
           + assistant
           e.g. "###Human: <Multi><MultiHere></Multi> <Audio><AudioHere></Audio> "
                "<Video><FrameHere></Video> The subtitle of this video: <Subtitle>I feel so "
                "sad.</Subtitle> Please recognize all possible emotional states of the "
                "character. ###Assistant: "
  target = "<think>reason</think><answer>a, b</answer>" (target_format 'think_answer'),
           "<answer>a, b</answer>" ('answer') or "a, b" ('labels'), then end_marker ("###"),
           then the EOS id.
Each text piece is tokenized on its own (the text before the subtitle, the subtitle, the
text after it; the think part, the reason, the rest of the target) and the ids are joined, so
the subtitle and the reason can be cut at a token boundary to fit max_prompt_tokens /
max_target_tokens. Training and inference both use these functions, so they agree.

SFT sequences are prompt + target; loss_mask[t] = 1 where token t is a target token (it is
predicted from position t - 1). Batches are LEFT-padded with pad_id to the smallest bucket
that fits (as the rollout sampler pads prompts), with attention mask False on padding.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections
import numpy as np

TARGET_FORMATS = ("think_answer", "answer", "labels")
MODALITY_BLOCKS = {"multi": "multi_block", "audio": "audio_block", "video": "video_block"}


def _check(cfg: ml_collections.ConfigDict) -> None:
  unknown = [m for m in cfg.modalities if m not in (*MODALITY_BLOCKS, "subtitle")]
  if unknown:
    raise ValueError(f"prompt.modalities: unknown {unknown}; known: "
                     f"{(*MODALITY_BLOCKS, 'subtitle')}.")
  if cfg.target_format not in TARGET_FORMATS:
    raise ValueError(f"prompt.target_format='{cfg.target_format}': expected one of "
                     f"{TARGET_FORMATS}.")
  if cfg.tokens_per_block < 1:
    raise ValueError(f"prompt.tokens_per_block={cfg.tokens_per_block}: must be >= 1.")


def prompt_parts(subtitle: str, cfg: ml_collections.ConfigDict,
                 special_tokens: Mapping[str, str]) -> tuple[str, str, str]:
  """(text before the subtitle, the subtitle, text after it); joined they are the prompt.

  Args:
    subtitle: the clip's subtitle (English).
    cfg: configs/data.py `prompt`.
    special_tokens: role -> token (configs/data.py `tokenizer.special_tokens`), for the
      placeholders of 'multi', 'audio' and 'video'.
  """
  _check(cfg)
  before = cfg.human
  for modality in cfg.modalities:
    if modality == "subtitle":
      break
    if modality not in special_tokens:
      raise ValueError(f"prompt.modalities has '{modality}' but tokenizer.special_tokens has "
                       f"no '{modality}' placeholder.")
    before += cfg[MODALITY_BLOCKS[modality]].format(
        token=special_tokens[modality] * cfg.tokens_per_block)
  after = ""
  if "subtitle" in cfg.modalities:
    head, tail = cfg.subtitle_block.split("{subtitle}")
    before += head
    after = tail
    rest = cfg.modalities[list(cfg.modalities).index("subtitle") + 1:]
  else:
    subtitle, rest = "", ()
  for modality in rest:
    after += cfg[MODALITY_BLOCKS[modality]].format(
        token=special_tokens[modality] * cfg.tokens_per_block)
  return before, subtitle, after + cfg.question + cfg.assistant


def prompt_text(subtitle: str, cfg: ml_collections.ConfigDict,
                special_tokens: Mapping[str, str]) -> str:
  return "".join(prompt_parts(subtitle, cfg, special_tokens))


def format_labels(labels: Sequence[str], cfg: ml_collections.ConfigDict) -> str:
  return cfg.label_separator.join(labels)


def target_parts(labels: Sequence[str], reason: str, cfg: ml_collections.ConfigDict
                 ) -> tuple[str, str, str]:
  """(text before the reason, the reason, text after it), end_marker included (no EOS)."""
  _check(cfg)
  answer = format_labels(labels, cfg)
  if cfg.target_format == "labels":
    return "", "", answer + cfg.end_marker
  answer = cfg.answer_template.format(labels=answer) + cfg.end_marker
  if cfg.target_format == "answer":
    return "", "", answer
  head, tail = cfg.think_template.split("{reason}")
  return head, reason, tail + answer


def target_text(labels: Sequence[str], reason: str, cfg: ml_collections.ConfigDict) -> str:
  return "".join(target_parts(labels, reason, cfg))


def example_text(subtitle: str, labels: Sequence[str], reason: str,
                 cfg: ml_collections.ConfigDict, special_tokens: Mapping[str, str]) -> str:
  """Prompt + target text (EOS excluded): the tokenizer's training corpus is made of these."""
  return prompt_text(subtitle, cfg, special_tokens) + target_text(labels, reason, cfg)


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _fit(tokenizer, parts: tuple[str, str, str], budget: int, what: str) -> list[int]:
  """Ids of before + middle + after, the middle cut to fit `budget` tokens."""
  before, middle, after = (_encode(tokenizer, p) for p in parts)
  room = budget - len(before) - len(after)
  if room < 0:
    raise ValueError(f"prompt.max_{what}_tokens={budget}: the fixed {what} text alone takes "
                     f"{len(before) + len(after)} tokens; raise max_{what}_tokens.")
  return before + middle[:room] + after


def encode_prompt(tokenizer, subtitle: str, cfg: ml_collections.ConfigDict,
                  special_tokens: Mapping[str, str]) -> list[int]:
  """Prompt ids, at most cfg.max_prompt_tokens (the subtitle cut to fit)."""
  return _fit(tokenizer, prompt_parts(subtitle, cfg, special_tokens), cfg.max_prompt_tokens,
              "prompt")


def encode_target(tokenizer, labels: Sequence[str], reason: str,
                  cfg: ml_collections.ConfigDict, eos_id: int) -> list[int]:
  """Target ids ending with eos_id, at most cfg.max_target_tokens (the reason cut to fit)."""
  return _fit(tokenizer, target_parts(labels, reason, cfg), cfg.max_target_tokens - 1,
              "target") + [int(eos_id)]


def encode_example(tokenizer, subtitle: str, labels: Sequence[str], reason: str,
                   cfg: ml_collections.ConfigDict, special_tokens: Mapping[str, str]
                   ) -> tuple[list[int], list[int]]:
  """(prompt_ids, target_ids) of one clip; the EOS id is the tokenizer's `eos` role."""
  eos_id = tokenizer.convert_tokens_to_ids(special_tokens["eos"])
  return (encode_prompt(tokenizer, subtitle, cfg, special_tokens),
          encode_target(tokenizer, labels, reason, cfg, eos_id))


def sft_sequence(prompt_ids: Sequence[int], target_ids: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """prompt + target with the loss mask.

  Returns:
    tokens: int32[P + T]; loss_mask: bool[P + T], True on the T target tokens.
  """
  tokens = np.asarray(list(prompt_ids) + list(target_ids), np.int32)
  mask = np.zeros(tokens.shape, bool)
  mask[len(prompt_ids):] = True
  return tokens, mask


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length."""
  fits = [b for b in sorted(buckets) if b >= length]
  if not fits:
    raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}; add a larger "
                     f"bucket (prompt.prompt_buckets / sequence_buckets) or lower max lengths.")
  return int(fits[0])


def pad_left(seqs: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads sequences to `length`.

  Returns:
    tokens: int32[B, length]; mask: bool[B, length], True on real tokens.
  """
  tokens = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), bool)
  for b, seq in enumerate(seqs):
    if len(seq) > length:
      raise ValueError(f"pad_left: sequence {b} has {len(seq)} tokens > length {length}.")
    if len(seq):
      tokens[b, length - len(seq):] = np.asarray(seq, np.int32)
      mask[b, length - len(seq):] = True
  return tokens, mask


def prompt_batch(prompts: Sequence[Sequence[int]], cfg: ml_collections.ConfigDict, pad_id: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Prompts left-padded to the smallest prompt bucket: (int32[B, P], bool[B, P])."""
  return pad_left(prompts, bucket_length(max(len(p) for p in prompts), cfg.prompt_buckets),
                  pad_id)


def sft_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
              cfg: ml_collections.ConfigDict, pad_id: int) -> dict[str, np.ndarray]:
  """SFT batch of (prompt_ids, target_ids) pairs, left-padded to a sequence bucket.

  Returns:
    tokens: int32[B, L]; attention_mask: bool[B, L] (False on padding);
    loss_mask: bool[B, L] (True on target tokens).
  """
  seqs = [sft_sequence(p, t) for p, t in pairs]
  length = bucket_length(max(len(s) for s, _ in seqs), cfg.sequence_buckets)
  tokens, attention = pad_left([s for s, _ in seqs], length, pad_id)
  loss, _ = pad_left([m.astype(np.int32) for _, m in seqs], length, 0)
  return dict(tokens=tokens, attention_mask=attention, loss_mask=loss.astype(bool))
