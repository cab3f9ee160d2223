"""Tiny random HF checkpoints (Qwen2, CLIP vision tower, HuBERT) at configs/tiny.py's sizes,
written with transformers' save_pretrained, for the converter tests."""
import pathlib

import torch
import transformers

from configs import tiny

NAMES = ("qwen", "clip", "hubert")


def seeded(model, seed: int = 0):
  """model with every parameter drawn from 0.1 * N(0, 1) under torch seed `seed`, in eval mode."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.1 * torch.randn_like(p))
  return model.eval()


def write_tiny_hf(root: pathlib.Path, seeds=(0, 0, 0), names=NAMES) -> dict:
  """Writes root/qwen, root/clip, root/hubert (those in `names`); returns name -> folder."""
  c = tiny.get_config().model
  drop = ("dtype", "param_dtype", "remat", "lora")
  make = {
      "qwen": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
          **{k: v for k, v in c.llm.items() if k not in drop})),
      "clip": lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
          **{k: v for k, v in c.vision.items() if k not in drop})),
      "hubert": lambda: transformers.HubertModel(transformers.HubertConfig(
          **{k: v for k, v in c.audio.items() if k not in drop})),
  }
  out = {}
  for name, seed in zip(NAMES, seeds):
    if name in names:
      seeded(make[name](), seed).save_pretrained(root / name)
      out[name] = root / name
  return out
