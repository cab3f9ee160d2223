r"""Hugging Face checkpoints <-> affect_jax parameter checkpoints (Orbax).

  # HF -> project (one or more folders: Qwen2/Qwen2.5, CLIP, HuBERT; detected from config.json)
  python -m launch.convert --hf_dir=Qwen2.5-7B-Instruct,clip-vit-large-patch14,hubert-large \
      --out=/ckpt/affectgpt_base [--config=configs/affectgpt_r1_7b.py] [--mesh=fsdp=8]

  # project -> HF (LoRA merged into the decoder; one folder per component, or OUT itself when
  # the checkpoint holds a single component). --checkpoint may also be a training run (its
  # workdir: checkpoints/grpo, else /sft; or a folder of numbered steps): its trained leaves
  # over the launch.convert checkpoint its config.init_from leads to.
  python -m launch.convert --to_hf --checkpoint=/ckpt/affectgpt_base --out=/export

  # HF + the released AffectGPT checkpoint (its fusion, projectors and LoRA) -> one checkpoint
  # that SFT / GRPO start from (--config.init_from=OUT)
  python -m launch.convert --hf_dir=Qwen2.5-7B-Instruct,clip-vit-large-patch14,hubert-large \
      --affectgpt_ckpt=affectgpt.pth --out=/ckpt/affectgpt_sft [--config=...]

With a mesh, every tensor goes straight to its target sharding (never the whole model on one
device). Without --affectgpt_ckpt the decoder gets freshly initialised LoRA parameters
(lora_b = 0, so the model is unchanged) with rank / alpha / dropout from config.model.llm.lora;
with it, the LoRA and the fusion come from the official checkpoint (read without running its
pickle's code; every name and shape checked first, see affect_jax/checkpoints/
affectgpt_official.py). Nothing is left in --out after a failure.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

from absl import app, flags, logging

from configs import validate
from launch import cli

FLAGS = flags.FLAGS


def define_flags():
  """The CLI flags (defined only when run as a program, so importing this module beside other
  launchers, e.g. in tests, never clashes)."""
  flags.DEFINE_string("hf_dir", None, "HF folder(s), comma-separated, or a parent folder.")
  flags.DEFINE_string("out", None, "Output folder (must not exist or be empty).")
  flags.DEFINE_bool("to_hf", False, "Convert an affect_jax checkpoint to HF safetensors.")
  flags.DEFINE_string("checkpoint", None, "affect_jax parameter checkpoint, or a training run "
                      "(its workdir or checkpoints/<phase>) started from one (--to_hf).")
  flags.DEFINE_string("mesh", "", "Mesh sizes, e.g. 'data=1,fsdp=8,tensor=1' (default: "
                      "config.mesh).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                    "Parameter dtype (default: the model config's param_dtype).")
  flags.DEFINE_integer("seed", 0, "Seed for the LoRA initialisation.")
  flags.DEFINE_string("affectgpt_ckpt", None, "An official AffectGPT checkpoint (torch.save "
                      ".pth of the trainable fusion, projectors and LoRA) to start from; needs "
                      "the Qwen2 folder in --hf_dir.")
  flags.DEFINE_float("affectgpt_lora_alpha", 32.0, "lora_alpha of the official checkpoint "
                     "(affectgpt.py trains with 32); config.model.llm.lora.alpha must equal it.")
  flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")
  cli.define_config_file(
      "config", "configs/affectgpt_r1_7b.py", "Config file (LoRA settings, mesh, sharding rules).")


def _check_official(path: str, folders: dict, config, lora, official_alpha: float):
  """(reader, fusion config, skipped names) of an official checkpoint, validated against the
  configs before any weight is read."""
  from affect_jax.checkpoints import affectgpt_official, torch_io
  from affect_jax.checkpoints.safetensors_io import read_config
  from affect_jax.models.fusion import FusionConfig
  from affect_jax.models.qwen2 import Qwen2Config

  if "llm" not in folders:
    raise ValueError("--affectgpt_ckpt needs the Qwen2 folder in --hf_dir (its LoRA adapts that "
                     "decoder).")
  reader = affectgpt_official.state_dict(torch_io.TorchCheckpoint(path))
  llm = Qwen2Config.from_hf(read_config(folders["llm"]), lora=lora)
  fusion = FusionConfig.from_dict(dict(config.model.fusion))
  skipped = affectgpt_official.check(reader, llm, fusion, official_alpha)
  return reader, fusion, skipped


def to_project(hf_dir: str, out: str, config, mesh_flag: str, dtype: str | None, seed: int,
               overwrite: bool, affectgpt_ckpt: str | None = None,
               affectgpt_lora_alpha: float = 32.0) -> dict:
  import jax

  from affect_jax import sharding
  from affect_jax.checkpoints import affectgpt_official, hf, hf_hubert, params_io
  from affect_jax.models import qwen2
  from affect_jax.models.lora import LoraConfig

  mesh_shape = sharding.parse_mesh_flag(mesh_flag) if mesh_flag else dict(config.mesh)
  mesh = sharding.make_mesh(mesh_shape)
  rules = sharding.rules_from_config(config.sharding_rules)
  lora_cfg = dict(config.model.llm.lora)
  lora = LoraConfig(rank=int(lora_cfg["rank"]), alpha=float(lora_cfg["alpha"]),
                    dropout=float(lora_cfg["dropout"]), targets=tuple(lora_cfg["targets"]))
  folders = hf.discover(hf_dir)
  official = (_check_official(affectgpt_ckpt, folders, config, lora, affectgpt_lora_alpha)
              if affectgpt_ckpt else None)
  params, meta = {}, {"components": {}}
  llm_cfg = None
  for name, folder in folders.items():
    logging.info("converting %s from %s", name, folder)
    # The official checkpoint supplies the LoRA: no fresh adapters to initialise.
    cfg, p = hf.load(name, folder, mesh=mesh, sharding_rules=rules, dtype=dtype,
                     lora=None if official else lora, rng=jax.random.key(seed))
    if name == "llm" and official:
      cfg = dataclasses.replace(cfg, lora=lora)
    params[name] = p
    entry = {"hf_config": cfg.to_hf(), "source": str(folder)}
    if name == "llm":
      entry["lora"] = dataclasses.asdict(cfg.lora)
      llm_cfg = cfg
    if name == "audio":
      # HuBERT's input normalisation (configs/data.py media.audio_normalize='checkpoint').
      entry["do_normalize"] = hf_hubert.read_do_normalize(folder)
    meta["components"][name] = entry
  extra = {}
  if official is not None:
    reader, fusion_cfg, skipped = official
    lora_params, params["fusion"] = affectgpt_official.load(
        reader, llm_cfg, fusion_cfg,
        llm_shardings=sharding.shardings(qwen2.abstract_params(llm_cfg), mesh, rules),
        fusion_shardings=sharding.shardings(affectgpt_official.abstract_fusion(fusion_cfg), mesh,
                                            rules))
    reader.close()
    params["llm"] = _deep_merge(params["llm"], lora_params)
    meta["components"]["llm"]["lora_source"] = affectgpt_ckpt
    meta["components"]["fusion"] = {"source": affectgpt_ckpt,
                                    "config": dataclasses.asdict(fusion_cfg)}
    extra = {"affectgpt_ckpt": affectgpt_ckpt, "skipped": skipped}
  params_io.save(out, params, meta, overwrite=overwrite)
  counts = {k: int(sum(x.size for x in jax.tree.leaves(v))) for k, v in params.items()}
  return {"out": out, "components": sorted(params), "parameters": counts,
          "mesh": dict(mesh.shape), **extra}


def _deep_merge(base, extra):
  """`base` with the leaves of `extra` put in place (a new dict; `base` is unchanged)."""
  out = dict(base)
  for k, v in extra.items():
    out[k] = _deep_merge(out.get(k, {}), v) if isinstance(v, dict) else v
  return out


def to_hf(checkpoint: str, out: str, overwrite: bool) -> dict:
  from affect_jax.checkpoints import hf, params_io, trained
  from affect_jax.checkpoints.safetensors_io import atomic_output_dir
  from affect_jax.models.lora import LoraConfig

  if trained.is_training_checkpoint(checkpoint):     # a run: its trained leaves over its base
    params, meta = trained.load_trained(checkpoint)
  else:
    params, meta = params_io.load(checkpoint)
  names = [n for n in ("llm", "vision", "audio") if n in meta["components"]]
  if not names:
    raise ValueError(f"{checkpoint}: holds no Hugging Face component (llm, vision, audio).")
  written = {}
  with atomic_output_dir(out, overwrite=overwrite) as tmp:
    for name in names:
      entry = meta["components"][name]
      cfg = hf.config_from_hf(name, entry["hf_config"])
      if name == "llm" and "lora" in entry:
        lora = dict(entry["lora"])
        lora["targets"] = tuple(lora["targets"])
        cfg = dataclasses.replace(cfg, lora=LoraConfig(**lora))
      target = tmp if len(names) == 1 else tmp / name
      hf.save(name, params[name], cfg, target)
      written[name] = str(pathlib.Path(out) / target.relative_to(tmp))
  return {"out": out, "written": written}


def _inputs() -> list[str]:
  """The input folders and files of this conversion (never to be written)."""
  if FLAGS.to_hf:
    return [FLAGS.checkpoint] if FLAGS.checkpoint else []
  parts = [p.strip() for p in (FLAGS.hf_dir or "").split(",") if p.strip()]
  return parts + ([FLAGS.affectgpt_ckpt] if FLAGS.affectgpt_ckpt else [])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.out:
    raise app.UsageError("--out is required.")
  validate.check(FLAGS.config)
  from affect_jax.checkpoints.safetensors_io import check_output_apart
  check_output_apart(FLAGS.out, _inputs())
  if FLAGS.to_hf:
    if FLAGS.affectgpt_ckpt:
      raise app.UsageError("--affectgpt_ckpt imports (HF -> affect_jax); drop it with --to_hf.")
    if not FLAGS.checkpoint:
      raise app.UsageError("--to_hf needs --checkpoint=DIR (an affect_jax parameter checkpoint "
                           "or a training run).")
    result = to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.overwrite)
  else:
    if not FLAGS.hf_dir:
      raise app.UsageError("--hf_dir is required (or --to_hf --checkpoint=DIR).")
    result = to_project(FLAGS.hf_dir, FLAGS.out, FLAGS.config, FLAGS.mesh, FLAGS.dtype,
                        FLAGS.seed, FLAGS.overwrite, FLAGS.affectgpt_ckpt,
                        FLAGS.affectgpt_lora_alpha)
  print(json.dumps(result))


def run():
  # User errors (CheckpointError and other ValueErrors, missing files) end as
  # "convert: error: ..." with exit status 2 (launch/cli.py).
  cli.run_main(main, "convert", define_flags)


if __name__ == "__main__":
  run()
