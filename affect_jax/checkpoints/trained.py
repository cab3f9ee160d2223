"""A training run's parameters, whole: its trained leaves over the launch.convert checkpoint the
run started from (what `launch.convert --to_hf` exports).

  params, meta = load_trained(path)     # path: a run's workdir or a folder of numbered steps

A training checkpoint (manager.Checkpointer) holds the trainable leaves (LoRA adapters, fusion,
projectors; every decoder weight under full fine-tuning) and, only with save_frozen, the frozen
ones. The frozen base comes from the parameter checkpoint its config's init_from names, followed
through runs that started from other runs (an SFT workdir, then its own init_from). The newest
readable step is read (GRPO continues the SFT adapters, so its checkpoint alone holds the trained
model). meta is the base's meta.json with the llm's LoRA settings of the run (rank, alpha, ...),
which the export uses to merge the adapters.
"""
from __future__ import annotations

import os
import pathlib

import ml_collections

from affect_jax.checkpoints import manager, params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError

MAX_CHAIN = 8                    # runs followed through init_from before giving up (a cycle)
_READ = ml_collections.ConfigDict(dict(save_every_steps=1, keep=0, keep_period=0,
                                       async_save=False, verify_checksums=True))


def is_training_checkpoint(path: str | os.PathLike) -> bool:
  """True for a folder of numbered steps or a run's workdir holding checkpoints/<phase>."""
  return manager.run_steps_folder(path) is not None


def _run_config(folder: pathlib.Path) -> dict:
  ckpt = manager.Checkpointer(folder, _READ, read_only=True)
  try:
    step = ckpt.latest_step()
    return ckpt.read_meta(step).get("config") or {}
  finally:
    ckpt.close()


def _base_checkpoint(folder: pathlib.Path, config: dict) -> pathlib.Path:
  """The launch.convert checkpoint at the end of the init_from chain."""
  seen = [folder]
  init_from = config.get("init_from", "")
  for _ in range(MAX_CHAIN):
    if not init_from:
      raise CheckpointError(
          f"{seen[-1]}: the run started from a random initialisation (config.init_from is "
          "empty), so no checkpoint holds its frozen weights; export a run that started from "
          "a launch.convert checkpoint (--config.init_from=/ckpt/base).")
    base = pathlib.Path(init_from)
    if (base / "meta.json").is_file():
      return base
    steps = manager.run_steps_folder(base)
    if steps is None:
      raise CheckpointError(
          f"{seen[-1]}: its config.init_from={base} is neither a launch.convert checkpoint nor "
          "a training run (moved or deleted?).")
    seen.append(steps)
    init_from = _run_config(steps).get("init_from", "")
  raise CheckpointError(f"{folder}: init_from leads through more than {MAX_CHAIN} runs "
                        f"({[str(s) for s in seen]}); is there a cycle?")


def load_trained(path: str | os.PathLike) -> tuple[dict, dict]:
  """(params, meta) of a run's newest checkpoint over its base (module doc)."""
  folder = manager.run_steps_folder(path)
  if folder is None:
    raise CheckpointError(f"{path}: not a training run (checkpoints/{{grpo,sft}}/<step>) nor a "
                          "folder of numbered steps.")
  config = _run_config(folder)
  base = _base_checkpoint(folder, config)
  params, meta = params_io.load(base)
  llm = meta.get("components", {}).get("llm")
  lora = ((config.get("model") or {}).get("llm") or {}).get("lora")
  if llm is not None and lora is not None and int(lora["rank"]):
    base_rank = int(llm.get("lora", {}).get("rank", 0))
    if int(lora["rank"]) != base_rank:
      raise CheckpointError(
          f"{folder}: the run trained LoRA rank {lora['rank']} but its base {base} holds rank "
          f"{base_rank} adapters; convert the base with the run's config (launch.convert "
          "--config=... --hf_dir=...) and point the run's init_from at it.")
    llm["lora"] = {k: lora[k] for k in ("rank", "alpha", "dropout", "targets")}
  params = manager.load_initial_params(folder, manager.abstract(params), init=params)
  return params, meta
