r"""GRPO training (AffectGPT-R1). With no flags: the embedded demo on one CPU.

  python -m launch.grpo                                   # demo: data, SFT, GRPO, eval
  python -m launch.grpo --workdir=runs/demo --config.grpo.steps=100
  python -m launch.grpo --config=configs/demo.py --config.sft.steps=50 --workdir=/tmp/quick

The workdir receives checkpoints/, metrics.jsonl, tensorboard/, curves.png and summary.json
(sft_eval_ew_f and grpo_eval_ew_f, percent). Rerunning with the same workdir resumes; SIGTERM
saves and stops cleanly.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from affect_jax import diskspace

FLAGS = flags.FLAGS


def define_flags():
  """The CLI flags (defined only when run as a program, so imports never clash)."""
  config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.")
  flags.DEFINE_string("workdir", "runs/demo", "Output folder (resumed if it exists).")
  flags.DEFINE_list("phases", ["sft", "grpo"],
                    "Phases to run: sft,grpo (the demo) or grpo (from an SFT run in the workdir "
                    "or --config.init_from).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from affect_jax import distributed
  from affect_jax.train import recipe
  distributed.initialize()
  logging.set_verbosity(logging.WARNING)
  summary = recipe.run(FLAGS.config, FLAGS.workdir, phases=tuple(FLAGS.phases))
  print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=1))
  if "gain_ew_f" in summary:
    print(f"held-out EW-F: after SFT {summary['sft_eval_ew_f']:.2f}, after GRPO "
          f"{summary['grpo_eval_ew_f']:.2f} ({summary['gain_ew_f']:+.2f} points); "
          f"{summary['total_s'] / 60:.1f} min; details in {FLAGS.workdir}/summary.json")


def run():
  """main under absl; a full disk ends the run with one line and exit status 1."""
  define_flags()
  try:
    app.run(main)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless the disk is full)
    if not diskspace.is_disk_full(e):
      raise
    print(f"launch.grpo: error: {diskspace.message(e)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  run()
