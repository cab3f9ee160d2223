r"""MER-UniBench evaluation: the 9-set table (and its mean) of a checkpoint.

  python -m launch.evaluate --checkpoint=runs/demo --data_dir=/data/MER-UniBench
  python -m launch.evaluate --config=configs/affectgpt_r1_7b.py --checkpoint=runs/r1 \
      --data_dir=/data/MER-UniBench --config.tokenizer_dir=/ckpt/Qwen2.5-7B-Instruct \
      --config.init_from=/ckpt/base --sets=ovmerdplus,mer2023 --json_out=unibench.json \
      --predictions_out=runs/r1/unibench [--ew_dir=DIR] [--extractor=answer|rule|llm] \
      [--extractor_checkpoint=/ckpt/Qwen2.5-7B-Instruct] [--sentiment=wheel|llm]
  python -m launch.evaluate --protocol=affectgpt --checkpoint=runs/r1 --data_dir=... \
      --extractor_checkpoint=/ckpt/Qwen2.5-7B-Instruct

--protocol: 'r1' (default, config.unibench.protocol): the fields of config.unibench as they
are (labels from the <answer> span unless --extractor says otherwise); 'affectgpt': the
official AffectGPT evaluation (config.unibench.protocols.affectgpt: sampling at temperature 1,
top-p 0.9, 1,200 new tokens, stop at "###", labels and sentiment by the LLM extractor with the
official prompts and answer reading; it needs --extractor_checkpoint). --extractor and
--sentiment still override the protocol's choice.

--checkpoint: a launch.convert checkpoint, a run's workdir or a folder of numbered steps
(affect_jax/eval/model.py). --data_dir: one sub-folder per set (mer2023, mer2024, meld,
iemocapfour, cmumosi, cmumosei, sims, simsv2, ovmerdplus; config.unibench.folders lists the
names tried). Prints the markdown table, then one JSON line (the table, the mean, failed sets);
--json_out writes every set's scores, --predictions_out the per-set CSVs for launch.score
(affect_jax/eval/unibench.py). --ablate=audio,video,subtitle,multi (default
config.unibench.ablate; 'a+b' masks both in one pass) scores every set again per item with
those inputs' prompt blocks left out, in a second table beside the full model ('score
(delta)'), under 'ablations' in the JSON and in --predictions_out/no_NAME/
(affect_jax/eval/ablation.py). Built sets and feature caches go to --cache_dir (default
config.data.cache_dir, else the run's <workdir>/data, for a seed of a multi-seed run the data
its seeds share, else runs/unibench_cache).
Exit status: 0 when every requested set was scored, 1 when some failed, ablated sets included
(each is reported in the table and the JSON), 2 when nothing could run (bad flags, checkpoint,
tokenizer).

It runs on config.mesh (--config.mesh.data=, fsdp=, tensor=; -1 = all remaining devices) with
config.sharding_rules, as training does: the parameters (and the LLM extractor's) are restored
onto their shardings and each batch's prompts split over data x fsdp. Started as several
jax.distributed processes (a TPU pod slice, or AFFECT_JAX_COORDINATOR / _NUM_PROCESSES /
_PROCESS_ID), each process reads its share of each set's clips; all get every completion and
score alike; process 0 prints and writes --json_out / --predictions_out. Per set the JSON also
holds clips_per_s, tokens_per_s, padding_fraction (affect_jax/eval/batches.py) and generate_s.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import app, flags, logging

from configs import unibench as unibench_config
from configs import validate
from launch import cli

FLAGS = flags.FLAGS
DEFAULT_CACHE = "runs/unibench_cache"


def define_flags():
  """The CLI flags (defined only when run as a program, so imports never clash)."""
  cli.define_config_file("config", "configs/demo.py", "Config of the checkpoint.")
  flags.DEFINE_string("checkpoint", None, "launch.convert checkpoint, run workdir or steps.")
  flags.DEFINE_string("data_dir", None, "MER-UniBench folder (one sub-folder per set).")
  flags.DEFINE_enum("protocol", None, ["r1", "affectgpt"],
                    "Evaluation protocol (default config.unibench.protocol, 'r1').")
  flags.DEFINE_string("sets", None, "Comma-separated sets (default config.unibench.sets).")
  flags.DEFINE_string("ew_dir", None, "Emotion-wheel folder (default config.ew_dir, else the "
                      "demo wheel).")
  flags.DEFINE_enum("extractor", None, ["answer", "rule", "llm"],
                    "Labels from <answer>, the rule extractor or the LLM "
                    "(default config.unibench.extractor).")
  flags.DEFINE_enum("sentiment", None, ["wheel", "llm"],
                    "Sentiment from the labels by the wheel, or by the LLM "
                    "(default config.unibench.sentiment).")
  flags.DEFINE_string("extractor_checkpoint", None, "LLM for --extractor/--sentiment=llm: a HF "
                      "Qwen2 folder or a launch.convert checkpoint.")
  flags.DEFINE_string("cache_dir", None, "Where built sets and feature caches go.")
  flags.DEFINE_string("json_out", None, "Write the full JSON result here.")
  flags.DEFINE_string("predictions_out", None, "Folder for the per-set prediction CSVs.")
  flags.DEFINE_string("ablate", None, "Modality ablations: comma list of audio, video, "
                      "subtitle, multi ('+' joins several into one), each scored beside the "
                      "full model (default config.unibench.ablate; '' = none).")


def cache_root(config, checkpoint: str, flag: str | None) -> pathlib.Path:
  if flag:
    return pathlib.Path(flag)
  if config.data.get("cache_dir", ""):
    return pathlib.Path(config.data.cache_dir)
  run = pathlib.Path(checkpoint)
  if (run / "checkpoints").is_dir():
    # A seed of a multi-seed run (affect_jax/train/seeds.py) shares <workdir>/data.
    if (not (run / "data").is_dir() and run.name.startswith("seed_")
        and (run.parent / "data").is_dir()):
      return run.parent / "data"
    return run / "data"     # a run's workdir: reuse its caches
  return pathlib.Path(DEFAULT_CACHE)


def unibench_section(config):
  """config.unibench, or the defaults of configs/unibench.py for a config without it."""
  return config.unibench if "unibench" in config else unibench_config.get_unibench_config()


def ablation_text(config, flag: str | None) -> tuple[str, str]:
  """(the ablation list, where it came from): --ablate, else config.unibench.ablate."""
  if flag is not None:
    return flag, "--ablate"
  return unibench_section(config).ablate, "--config.unibench.ablate"


def parse_ablations(config, ucfg, flag: str | None) -> tuple[tuple[str, ...], ...]:
  """The ablations (affect_jax/eval/ablation.py), checked against the evaluated prompt's
  blocks."""
  from affect_jax.eval import ablation, unibench
  text, source = ablation_text(config, flag)
  ablations = ablation.parse(text, source)
  ablation.check(ablations, unibench.data_config(config.data, ucfg).prompt.modalities, source)
  return ablations


def check_extractor(extractor: str, sentiment: str, checkpoint: str | None) -> None:
  """--extractor / --sentiment = llm need --extractor_checkpoint (checked before any work)."""
  which = [f"--{n}=llm" for n, v in (("extractor", extractor), ("sentiment", sentiment))
           if v == "llm"]
  if which and not checkpoint:
    raise ValueError(f"{' and '.join(which)} need(s) --extractor_checkpoint=DIR (a "
                     "Qwen2.5-Instruct folder or its launch.convert checkpoint).")


def load_extractor(extractor: str, sentiment: str, checkpoint: str | None, ucfg,
                   mesh=None, rules=None):
  """The LLM extractor when --extractor or --sentiment is 'llm' (on `mesh` when given), else
  None; shared by launch.evaluate and launch.predict."""
  if "llm" not in (extractor, sentiment):
    return None
  check_extractor(extractor, sentiment, checkpoint)
  from affect_jax.eval import llm_extract
  return llm_extract.LlmExtractor.load(checkpoint, ucfg.llm, mesh, rules)


def run(config, f) -> dict:
  from affect_jax import experiment, sharding
  from affect_jax.emotion import wheel
  from affect_jax.eval import ablation, model as eval_model, unibench
  ucfg = unibench_section(config)
  ucfg = unibench.with_protocol(ucfg, f.protocol or ucfg.get("protocol", "r1"))
  sets = unibench.parse_sets(f.sets or ucfg.sets)
  ablations = parse_ablations(config, ucfg, f.ablate)
  extractor = f.extractor or ucfg.extractor
  sentiment = f.sentiment or ucfg.sentiment
  ew_dir = f.ew_dir or config.get("ew_dir", "") or None
  tables = wheel.load_tables(ew_dir)
  check_extractor(extractor, sentiment, f.extractor_checkpoint)
  mesh = experiment.make_mesh(config)
  rules = sharding.rules_from_config(config.sharding_rules)
  labeler = unibench.Labeler(extractor, sentiment, tables, ucfg,
                             load_extractor(extractor, sentiment, f.extractor_checkpoint, ucfg,
                                            mesh, rules))
  root = cache_root(config, f.checkpoint, f.cache_dir)
  em = eval_model.load(config, f.checkpoint, root, mesh, rules)
  result = unibench.evaluate(em, f.data_dir, sets, labeler, root, f.predictions_out, ucfg,
                             ablations=ablations)
  if ablations:
    result["ablations"] = ablation.summarize(result["sets"])
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.checkpoint or not FLAGS.data_dir:
    raise app.UsageError("--checkpoint and --data_dir are required.")
  validate.check(FLAGS.config)
  from affect_jax.eval import ablation
  ablation.parse(*ablation_text(FLAGS.config, FLAGS.ablate))   # names, before any work
  from affect_jax import distributed
  from affect_jax.eval import unibench
  distributed.initialize()
  import jax
  logging.set_verbosity(logging.WARNING)
  result = run(FLAGS.config, FLAGS)   # CheckpointError, WheelFileError, ...: cli.run_main
  result["markdown"] = unibench.markdown(result)
  if jax.process_index() != 0:        # every process scored alike; process 0 reports
    sys.exit(1 if result["failed"] or ablation.failed(result) else 0)
  if result.get("ablations"):
    result["markdown"] += "\n\n" + ablation.markdown(result)
  print(result["markdown"])
  if FLAGS.json_out:
    path = pathlib.Path(FLAGS.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
  summary = {"mean": result["mean"], "complete": result["table"]["complete"],
             "rows": result["table"]["rows"], "failed": {k: result["sets"][k]["error"]
                                                         for k in result["failed"]}}
  if result.get("ablations"):
    summary["ablations"] = {n: {k: a[k] for k in ("mean", "mean_delta", "failed")}
                            for n, a in result["ablations"].items()}
  print(json.dumps(summary, sort_keys=True))
  sys.exit(1 if result["failed"] or ablation.failed(result) else 0)


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  cli.run_main(main, "launch.evaluate", define_flags)
