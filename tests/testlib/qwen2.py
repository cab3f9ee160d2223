"""Shared helpers for the Qwen2 tests: random-init transformers models built offline, padded
batches, and the transformers reference forward."""
from __future__ import annotations

import pathlib

import numpy as np
import torch
import transformers

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=8, rms_norm_eps=1e-6, max_position_embeddings=512)


def hf_config(**overrides) -> transformers.Qwen2Config:
  """A tiny transformers Qwen2Config (eager attention, float32)."""
  values = dict(SMALL, num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10000.0)
  values.update(overrides)
  config = transformers.Qwen2Config(**values)
  config._attn_implementation = "eager"
  return config


def hf_model(seed: int = 0, **overrides) -> transformers.Qwen2ForCausalLM:
  """Random-init Qwen2ForCausalLM in eval mode, weights rescaled so that biases and norm scales
  are non-trivial and logits are O(1)."""
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(hf_config(**overrides)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn_like(p)
      p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.1 * noise)
  return model


def save_hf(model: transformers.PreTrainedModel, out: pathlib.Path, **kwargs) -> pathlib.Path:
  model.save_pretrained(out, safe_serialization=True, **kwargs)
  return out


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None,
              positions: np.ndarray | None = None) -> np.ndarray:
  """transformers' logits float32[B, T, V] for a (padded) batch."""
  kwargs = {"input_ids": torch.as_tensor(np.asarray(tokens, np.int64))}
  if mask is not None:
    kwargs["attention_mask"] = torch.as_tensor(np.asarray(mask, np.int64))
  if positions is not None:
    kwargs["position_ids"] = torch.as_tensor(np.asarray(positions, np.int64))
  with torch.no_grad():
    return model(**kwargs).logits.float().numpy()


def padded_batch(seed: int, lengths: list[int], width: int, vocab: int,
                 side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random tokens padded to `width` on `side` ('left' / 'right').

  Returns (tokens int32[B, W], mask bool[B, W], positions int32[B, W]) where positions count
  real tokens from 0 (pad slots: 0).
  """
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros((len(lengths), width), bool)
  for b, n in enumerate(lengths):
    cols = slice(width - n, width) if side == "left" else slice(0, n)
    tokens[b, cols] = rng.integers(1, vocab, n)
    mask[b, cols] = True
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return tokens, mask, positions
