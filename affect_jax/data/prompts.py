"""The AffectGPT prompt and target, as token ids, with the SFT loss mask and left padding.

Layout (the official template word for word, PAPER_NOTES.md section 7; strings in
configs/data.py `prompt`):
  prompt = human + multi block + audio block + video block + subtitle block + instruction
           + question + assistant
           e.g. "###Human: The audio and video merged info is: <Multi><MultiHere></Multi>. The "
                "audio content is as follows: <Audio><AudioHere></Audio>. Meanwhile, we "
                "uniformly sample raw frames from the video: <Video><FrameHere></Video>. The "
                "subtitle of this video is: <Subtitle>I feel so sad.</Subtitle>. Now, please "
                "answer my question based on all the provided information. Please recognize "
                "all possible emotional states of the character. ###Assistant: "
           (the video block follows `video_prompt`: 'frames' as above, 'faces' "... from the
           video and extract faces from these frames: <Video><FaceHere></Video>. ")
  target = "<think>reason</think><answer>a, b</answer>" (target_format 'think_answer'),
           "<answer>a, b</answer>" ('answer') or "a, b" ('labels'), then end_marker.
Sequences as the official loader builds them (base_dataset.py __getitem__ and collater):
the prompt text and the target text are each tokenized whole, without special tokens, and cut
to their first max_length tokens; a sample with len(prompt) + len(target) > max_length is
skipped (`within_max_length`); the SFT sequence is <bos> prompt target <eos>, the loss on
target + <eos>.
The bos / eos tokens are the tokenizer's `bos` / `eos` roles (tokenizer.special_tokens; for
Qwen2.5 "<|im_start|>" / "<|im_end|>", as load_tokenizer_from_LLM sets them). Rollout and
evaluation prompts are <bos> prompt (generation_bos; the official inference sends the prompt
without <bos>). Training and inference both use these functions, so they agree.

SFT pieces are ([bos] + prompt, target + [eos]); loss_mask[t] = 1 where token t is a target
token (it is predicted from position t - 1). Batches are LEFT-padded with pad_id to the
smallest bucket that fits (as the rollout sampler pads prompts), with attention mask False on
padding.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections
import numpy as np

TARGET_FORMATS = ("think_answer", "answer", "labels")
MODALITY_BLOCKS = {"multi": "multi_block", "audio": "audio_block", "video": "video_blocks"}


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
  if cfg.video_prompt not in cfg.video_blocks:
    raise ValueError(f"prompt.video_prompt='{cfg.video_prompt}': expected one of "
                     f"{tuple(cfg.video_blocks)} (prompt.video_blocks).")
  if cfg.max_length < 1:
    raise ValueError(f"prompt.max_length={cfg.max_length}: must be >= 1.")


def _block(modality: str, cfg: ml_collections.ConfigDict,
           special_tokens: Mapping[str, str]) -> str:
  if modality not in special_tokens:
    raise ValueError(f"prompt.modalities has '{modality}' but tokenizer.special_tokens has "
                     f"no '{modality}' placeholder.")
  template = cfg.video_blocks[cfg.video_prompt] if modality == "video" else \
      cfg[MODALITY_BLOCKS[modality]]
  return template.format(token=special_tokens[modality] * cfg.tokens_per_block)


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
    before += _block(modality, cfg, special_tokens)
  after = ""
  if "subtitle" in cfg.modalities:
    head, tail = cfg.subtitle_block.split("{subtitle}")
    before += head
    after = tail
    rest = cfg.modalities[list(cfg.modalities).index("subtitle") + 1:]
  else:
    subtitle, rest = "", ()
  for modality in rest:
    after += _block(modality, cfg, special_tokens)
  return before, subtitle, after + cfg.instruction + cfg.question + cfg.assistant


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


def to_token_ids(tokenizer, text: str, max_length: int) -> list[int]:
  """The text tokenized whole without special tokens, cut to its first max_length ids (the
  official to_token_ids)."""
  ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
  return ids[:max_length]


def role_id(tokenizer, special_tokens: Mapping[str, str], role: str) -> int:
  """The id of the special token of `role` (e.g. 'bos', 'eos')."""
  if role not in special_tokens:
    raise ValueError(f"tokenizer.special_tokens has no '{role}' token; add one (Qwen2.5: "
                     f"bos='<|im_start|>', eos='<|im_end|>').")
  i = tokenizer.convert_tokens_to_ids(special_tokens[role])
  if i is None or tokenizer.convert_ids_to_tokens(i) != special_tokens[role]:
    raise ValueError(f"tokenizer.special_tokens.{role}={special_tokens[role]!r} is not a "
                     f"single token of the tokenizer; add it or pick the tokenizer's own.")
  return int(i)


def prompt_ids(tokenizer, subtitle: str, cfg: ml_collections.ConfigDict,
               special_tokens: Mapping[str, str]) -> list[int]:
  """The prompt's ids, no special tokens, at most cfg.max_length."""
  return to_token_ids(tokenizer, prompt_text(subtitle, cfg, special_tokens), cfg.max_length)


def target_ids(tokenizer, labels: Sequence[str], reason: str,
               cfg: ml_collections.ConfigDict) -> list[int]:
  """The target's ids (end_marker included, no EOS), at most cfg.max_length."""
  return to_token_ids(tokenizer, target_text(labels, reason, cfg), cfg.max_length)


def encode_prompt(tokenizer, subtitle: str, cfg: ml_collections.ConfigDict,
                  special_tokens: Mapping[str, str]) -> list[int]:
  """The rollout / evaluation prompt: [bos] (when cfg.generation_bos) + prompt_ids."""
  ids = prompt_ids(tokenizer, subtitle, cfg, special_tokens)
  return ([role_id(tokenizer, special_tokens, "bos")] if cfg.generation_bos else []) + ids


def within_max_length(prompt: Sequence[int], target: Sequence[int],
                      cfg: ml_collections.ConfigDict) -> bool:
  """Whether the official loader keeps a sample: len(prompt) + len(target) <= max_length
  (both without bos / eos)."""
  return len(prompt) + len(target) <= cfg.max_length


def encode_example(tokenizer, subtitle: str, labels: Sequence[str], reason: str,
                   cfg: ml_collections.ConfigDict, special_tokens: Mapping[str, str]
                   ) -> tuple[list[int], list[int]] | None:
  """The SFT pieces of one clip, ([bos] + prompt ids, target ids + [eos]), or None when the
  official loader skips the clip (`within_max_length`)."""
  bos = role_id(tokenizer, special_tokens, "bos")
  eos = role_id(tokenizer, special_tokens, "eos")
  prompt = prompt_ids(tokenizer, subtitle, cfg, special_tokens)
  target = target_ids(tokenizer, labels, reason, cfg)
  if not within_max_length(prompt, target, cfg):
    return None
  return [bos] + prompt, target + [eos]


def sft_sequence(prompt: Sequence[int], target: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """prompt + target (the encode_example pieces) with the loss mask.

  Returns:
    tokens: int32[P + T]; loss_mask: bool[P + T], True on the T target tokens.
  """
  tokens = np.asarray(list(prompt) + list(target), np.int32)
  mask = np.zeros(tokens.shape, bool)
  mask[len(prompt):] = True
  return tokens, mask


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length."""
  fits = [b for b in sorted(buckets) if b >= length]
  if not fits:
    raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}; add a larger "
                     f"bucket (prompt.prompt_buckets / sequence_buckets) or lower "
                     f"prompt.max_length.")
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
