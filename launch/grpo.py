r"""GRPO training (AffectGPT-R1). With no flags: the embedded demo on one CPU.

  python -m launch.grpo                                   # demo: data, SFT, GRPO, eval x 3 seeds
  python -m launch.grpo --workdir=runs/demo --config.grpo.steps=100
  python -m launch.grpo --config.seeds='(0,)' --config.sft.steps=50 --workdir=/tmp/quick

The workdir receives checkpoints/, metrics.jsonl, tensorboard/, curves.png and summary.json
(sft_eval_ew_f and grpo_eval_ew_f, percent). A config with `seeds` (the demo: 0, 1, 2) runs the
recipe once per seed in <workdir>/seed_<s> and writes the per-seed scores, their mean and spread
and every seed's curves to <workdir> (affect_jax/train/seeds.py). Rerunning with the same
workdir resumes; SIGTERM saves and stops cleanly. A config or flag error (configs/validate.py, checked before any work)
ends with exit status 2 and "launch.grpo: error: ...".
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging

from configs import validate
from launch import cli


FLAGS = flags.FLAGS


def define_flags():
  """The CLI flags (defined only when run as a program, so imports never clash)."""
  cli.define_config_file("config", "configs/demo.py", "Experiment config file.")
  flags.DEFINE_string("workdir", "runs/demo", "Output folder (resumed if it exists).")
  flags.DEFINE_list("phases", ["sft", "grpo"],
                    "Phases to run: sft,grpo (the demo) or grpo (from an SFT run in the workdir "
                    "or --config.init_from).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  phases = tuple(FLAGS.phases)
  validate.check(FLAGS.config, training=True)
  from affect_jax import distributed
  from affect_jax.train import recipe
  distributed.initialize()
  validate.check_mesh(FLAGS.config, phases)
  logging.set_verbosity(logging.WARNING)
  cli.use_compilation_cache(FLAGS.workdir)
  if FLAGS.config.get("seeds", ()):
    from affect_jax.train import seeds
    summary = seeds.run(FLAGS.config, FLAGS.workdir, FLAGS.config.seeds, phases=phases)
  else:
    summary = recipe.run(FLAGS.config, FLAGS.workdir, phases=phases)
  print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
                   indent=1))
  for row in summary.get("per_seed", ()):
    if "gain_ew_f" in row:
      print(f"seed {row['seed']}: held-out EW-F after SFT {row['sft_eval_ew_f']:.2f}, after "
            f"GRPO {row['grpo_eval_ew_f']:.2f} ({row['gain_ew_f']:+.2f})")
  if "gain_ew_f" in summary:
    print(f"held-out EW-F{' (mean over seeds)' if 'per_seed' in summary else ''}: after SFT "
          f"{summary['sft_eval_ew_f']:.2f}, after GRPO "
          f"{summary['grpo_eval_ew_f']:.2f} ({summary['gain_ew_f']:+.2f} points); "
          f"{summary['total_s'] / 60:.1f} min; details in {FLAGS.workdir}/summary.json")



if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  cli.run_main(main, "launch.grpo", define_flags)
