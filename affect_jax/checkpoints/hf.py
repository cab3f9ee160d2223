"""Hugging Face folders <-> the project's components, chosen by the architecture in config.json.

  llm     Qwen2 / Qwen2.5 decoders (Qwen2ForCausalLM)            -> hf_qwen2
  vision  CLIP (full CLIPModel or vision-only checkpoints)         -> hf_clip
  audio   HuBERT (HubertModel)                                      -> hf_hubert
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

from affect_jax.checkpoints import hf_clip, hf_hubert, hf_qwen2
from affect_jax.checkpoints.safetensors_io import CheckpointError, read_config
from affect_jax.models.clip_vision import ClipVisionConfig
from affect_jax.models.hubert import HubertConfig
from affect_jax.models.qwen2 import Qwen2Config

_BY_MODEL_TYPE = {
    "qwen2": "llm",
    "clip": "vision",
    "clip_vision_model": "vision",
    "hubert": "audio",
}
_BY_ARCH = {
    "Qwen2ForCausalLM": "llm",
    "CLIPModel": "vision",
    "CLIPVisionModel": "vision",
    "CLIPVisionModelWithProjection": "vision",
    "HubertModel": "audio",
    "HubertForCTC": "audio",
}
MODULES = {"llm": hf_qwen2, "vision": hf_clip, "audio": hf_hubert}
CONFIGS = {"llm": Qwen2Config, "vision": ClipVisionConfig, "audio": HubertConfig}


def component_of(hf_dir: str | os.PathLike) -> str:
  """Which project component a Hugging Face folder holds (from config.json)."""
  cfg = read_config(hf_dir)
  for arch in cfg.get("architectures") or []:
    if arch in _BY_ARCH:
      return _BY_ARCH[arch]
  model_type = cfg.get("model_type")
  if model_type in _BY_MODEL_TYPE:
    return _BY_MODEL_TYPE[model_type]
  raise CheckpointError(
      f"{hf_dir}/config.json: unknown architecture (architectures={cfg.get('architectures')}, "
      f"model_type={model_type!r}); supported: {sorted(_BY_ARCH)}.")


def discover(hf_dirs: str) -> dict[str, pathlib.Path]:
  """Component -> folder, from a comma-separated list of HF folders or a parent folder whose
  sub-folders are HF folders (e.g. the llm/ vision/ audio/ layout that --to_hf writes)."""
  found: dict[str, pathlib.Path] = {}
  for part in [p.strip() for p in hf_dirs.split(",") if p.strip()]:
    path = pathlib.Path(part)
    if not path.is_dir():
      raise CheckpointError(f"--hf_dir: {path} is not a folder.")
    if (path / "config.json").is_file():
      candidates = [path]
    else:
      candidates = sorted(p for p in path.iterdir() if (p / "config.json").is_file())
      if not candidates:
        raise CheckpointError(f"--hf_dir: {path} has no config.json and no sub-folder with one.")
    for c in candidates:
      name = component_of(c)
      if name in found:
        raise CheckpointError(f"--hf_dir: two folders hold the {name} component: {found[name]} "
                              f"and {c}; give one.")
      found[name] = c
  if not found:
    raise CheckpointError("--hf_dir is empty; give one or more Hugging Face model folders.")
  return found


def load(component: str, hf_dir: str | os.PathLike, *, mesh=None, sharding_rules=None,
         dtype=None, lora=None, rng=None) -> tuple[Any, dict]:
  """(project config object, params) for one component, placed on `mesh` when given."""
  mod = MODULES[component]
  if component == "llm":
    return mod.load(hf_dir, mesh=mesh, sharding_rules=sharding_rules, dtype=dtype, lora=lora,
                    rng=rng)
  return mod.load(hf_dir, mesh=mesh, sharding_rules=sharding_rules, dtype=dtype)


def save(component: str, params: Mapping, config: Any, out_dir: str | os.PathLike) -> None:
  """Writes one component as a Hugging Face folder (LoRA merged for the llm)."""
  MODULES[component].save(params, config, out_dir)


def config_from_hf(component: str, hf_config: Mapping) -> Any:
  return CONFIGS[component].from_hf(dict(hf_config))
