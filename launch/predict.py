r"""What a trained model says about one clip, or a folder or CSV of clips.

  python -m launch.predict --checkpoint=runs/demo --video=clip.mp4 [--audio=clip.wav] \
      [--subtitle="I can't believe it."] [--out=pred.csv] [--json_out=pred.json]
  python -m launch.predict --checkpoint=runs/demo --inputs=clips/ --out=pred.csv
  python -m launch.predict --config=configs/affectgpt_r1_7b.py --checkpoint=runs/r1 \
      --config.tokenizer_dir=/ckpt/Qwen2.5-7B-Instruct --config.init_from=/ckpt/base \
      --inputs=clips.csv [--nogreedy --temperature=1 --top_p=0.9] [--max_new_tokens=N] \
      [--protocol=r1|affectgpt] [--extractor=answer|rule|llm --extractor_checkpoint=DIR] \
      [--missing_audio=error|silence]

--checkpoint: a launch.convert checkpoint, a run's workdir or a folder of numbered steps, read
with the config it was trained with (--config, default configs/demo.py; affect_jax/eval/
model.py). One clip: --video (a video file, or OpenFace face crops .npy for a 'faces'
config), --audio (wav / flac / ogg) and --subtitle (the text; --subtitle= for a clip without
speech). Many: --inputs, a folder (<stem>.mp4 with <stem>.wav and <stem>.txt beside it) or a
CSV name,video[,audio][,subtitle] whose paths are relative to its folder and may not leave it
(affect_jax/eval/predict.py says exactly).
For each clip it prints the model's answer, the labels read from it and each label's level-1
group in the 5 emotion wheels, then one JSON line (clips, predicted, failed: name -> message).
--out writes name,openset for every predicted clip, the CSV `python -m launch.score --pred`
reads; --json_out everything printed.
Decoding: config.unibench under --protocol (default 'r1': greedy, config.unibench.max_new_tokens;
'affectgpt': the official sampling), with --greedy / --nogreedy, --temperature, --top_p,
--top_k, --max_new_tokens, --seed and --batch_size over it. A clip without audio fails unless
--missing_audio=silence (the official inference stops on one; predict.py module doc).
Exit status: 0 when every clip was predicted, 1 when some failed (each is named with its
reason; the others are still predicted and written), 2 when nothing could run (bad flags,
inputs CSV, checkpoint, tokenizer).
"""
from __future__ import annotations

import copy
import json
import os
import sys

from absl import app, flags, logging

from configs import validate
from launch import cli
from launch import evaluate as evaluate_launcher

FLAGS = flags.FLAGS


def define_flags():
  """The CLI flags (defined only when run as a program, so imports never clash)."""
  cli.define_config_file("config", "configs/demo.py", "Config of the checkpoint.")
  flags.DEFINE_string("checkpoint", None, "launch.convert checkpoint, run workdir or steps.")
  flags.DEFINE_string("video", None, "One clip's video file (or face crops .npy).")
  flags.DEFINE_string("audio", None, "The clip's audio file (wav, flac, ogg).")
  flags.DEFINE_string("subtitle", None, "The clip's subtitle ('' = a clip without speech).")
  flags.DEFINE_string("inputs", None, "A folder of clips or a CSV name,video[,audio]"
                      "[,subtitle] (paths relative to its folder).")
  flags.DEFINE_string("out", None, "Write name,openset here (launch.score --pred).")
  flags.DEFINE_string("json_out", None, "Write every clip's answer, labels and groups here.")
  flags.DEFINE_enum("protocol", None, ["r1", "affectgpt"],
                    "Decoding and labels of this evaluation protocol (default "
                    "config.unibench.protocol, 'r1').")
  flags.DEFINE_bool("greedy", None, "Greedy decoding (--nogreedy: sample; default: the "
                    "protocol's).")
  flags.DEFINE_float("temperature", None, "Sampling temperature (with --nogreedy).")
  flags.DEFINE_float("top_p", None, "Nucleus sampling mass (with --nogreedy).")
  flags.DEFINE_integer("top_k", None, "Top-k sampling, 0 = off (with --nogreedy).")
  flags.DEFINE_integer("max_new_tokens", None, "Longest answer in tokens.")
  flags.DEFINE_integer("seed", None, "Sampling seed (default config.unibench.seed).")
  flags.DEFINE_integer("batch_size", None, "Clips per generate call (default "
                       "config.unibench.batch_size).")
  flags.DEFINE_enum("extractor", None, ["answer", "rule", "llm"],
                    "Labels from <answer>, the rule extractor or the LLM (default: the "
                    "protocol's).")
  flags.DEFINE_string("extractor_checkpoint", None, "LLM for --extractor=llm: a HF Qwen2 "
                      "folder or a launch.convert checkpoint.")
  flags.DEFINE_string("ew_dir", None, "Emotion-wheel folder (default config.ew_dir, else the "
                      "demo wheel).")
  flags.DEFINE_enum("missing_audio", "error", ["error", "silence"],
                    "A clip without audio: fail it, or feed silence.")
  flags.DEFINE_string("cache_dir", None, "Where the tokenizer and feature statistics are "
                      "cached (as launch.evaluate).")


SAMPLING_FLAGS = ("temperature", "top_p", "top_k")


def decoding_section(config, f):
  """config.unibench under the protocol with the decoding flags set over it."""
  from affect_jax.eval import unibench
  ucfg = evaluate_launcher.unibench_section(config)
  ucfg = copy.deepcopy(unibench.with_protocol(ucfg, f.protocol or ucfg.get("protocol", "r1")))
  with ucfg.unlocked():
    for name in ("greedy", "temperature", "top_p", "top_k", "max_new_tokens", "seed",
                 "batch_size"):
      if getattr(f, name) is not None:
        ucfg[name] = type(ucfg[name])(getattr(f, name))
  given = [f"--{n}" for n in SAMPLING_FLAGS if getattr(f, n) is not None]
  if given and ucfg.greedy:
    raise app.UsageError(f"{', '.join(given)} apply only when sampling; add --nogreedy (the "
                         f"'{ucfg.protocol}' protocol decodes greedily).")
  if int(ucfg.max_new_tokens) < 1 or int(ucfg.batch_size) < 1:
    raise app.UsageError("--max_new_tokens and --batch_size must be >= 1.")
  if not ucfg.greedy and not (float(ucfg.temperature) > 0 and 0 < float(ucfg.top_p) <= 1):
    raise app.UsageError(f"--temperature={ucfg.temperature} --top_p={ucfg.top_p}: sampling "
                         "needs temperature > 0 and 0 < top_p <= 1.")
  return ucfg


def list_clips(f):
  from affect_jax.eval import predict
  if bool(f.video) == bool(f.inputs):
    raise app.UsageError("give one clip (--video=FILE [--audio=FILE] [--subtitle=TEXT]) or "
                         "many (--inputs=FOLDER or CSV), not both.")
  if f.inputs:
    if f.audio is not None or f.subtitle is not None:
      raise app.UsageError("--audio and --subtitle go with --video; with --inputs give them "
                           "in the folder or the CSV.")
    return predict.clips_from_inputs(f.inputs)
  name = os.path.splitext(os.path.basename(f.video))[0]
  return [predict.Clip(name, f.video, f.audio or None, f.subtitle)]


def check_outputs(f, clips) -> None:
  """--out and --json_out may not name an input (the --inputs CSV, a clip's video or audio) or
  each other: writing them would overwrite what the user had."""
  outputs = {name: getattr(f, name) for name in ("out", "json_out") if getattr(f, name)}
  inputs = [f.inputs] if f.inputs and os.path.isfile(f.inputs) else []
  inputs += [p for c in clips for p in (c.video, c.audio) if p]
  taken = {os.path.realpath(p): p for p in inputs}
  for name, path in outputs.items():
    real = os.path.realpath(path)
    if real in taken:
      raise app.UsageError(f"--{name}={path} is the input {taken[real]}; writing it would "
                           "overwrite the input. Choose another file.")
    taken[real] = f"--{name}"


def run(config, f):
  """(results, ucfg) of the clips the flags name."""
  from affect_jax.emotion import wheel
  from affect_jax.eval import predict, unibench
  from affect_jax.eval import model as eval_model
  clips = list_clips(f)          # inputs errors stop here, before the model loads
  check_outputs(f, clips)
  ucfg = decoding_section(config, f)
  extractor = f.extractor or ucfg.extractor
  tables = wheel.load_tables(f.ew_dir or config.get("ew_dir", "") or None)
  llm = evaluate_launcher.load_extractor(extractor, "wheel", f.extractor_checkpoint, ucfg)
  labeler = unibench.Labeler(extractor, "wheel", tables, ucfg, llm)
  root = evaluate_launcher.cache_root(config, f.checkpoint, f.cache_dir)
  em = eval_model.load(config, f.checkpoint, root)
  return predict.predict(em, clips, ucfg, labeler, f.missing_audio), ucfg


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.checkpoint:
    raise app.UsageError("--checkpoint is required.")
  validate.check(FLAGS.config)
  from affect_jax import distributed
  from affect_jax.eval import predict
  distributed.initialize()
  import jax
  if jax.process_count() > 1:
    print(f"launch.predict: error: it predicts on one device of one process but was started "
          f"as {jax.process_count()} processes; run it as a single process.", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  results, _ = run(FLAGS.config, FLAGS)   # InputsError, CheckpointError, ...: cli.run_main
  for r in results:
    print(predict.describe(r))
  if FLAGS.out:
    predict.write_predictions(FLAGS.out, results)
  if FLAGS.json_out:
    predict.write_json(FLAGS.json_out, results)
  failed = {r.clip.name: r.error for r in results if not r.ok}
  for message in failed.values():
    print(f"launch.predict: clip failed: {message}", file=sys.stderr)
  print(json.dumps({"clips": len(results), "predicted": len(results) - len(failed),
                    "failed": failed, "out": FLAGS.out}, sort_keys=True))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  cli.run_main(main, "launch.predict", define_flags)
