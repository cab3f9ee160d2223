r"""Cold-start SFT (token loss on the "<think>..</think><answer>..</answer>" target only).

  python -m launch.sft --workdir=runs/sft                       # the demo data and model
  python -m launch.sft --config=configs/demo.py --config.sft.steps=500 --workdir=runs/sft
  python -m launch.grpo --workdir=runs/sft --phases=grpo        # GRPO from this SFT run

Writes checkpoints/sft/, metrics.jsonl, tensorboard/, curves.png and summary.json
(sft_eval_ew_f); with config.seeds (the demo: 0, 1, 2) one such run per seed in
<workdir>/seed_<s>, which `launch.grpo --phases=grpo` then continues seed by seed
(affect_jax/train/seeds.py). Rerunning with the same workdir resumes. A config or flag error
(configs/validate.py, checked before any work) ends with exit status 2 and "launch.sft: error: ...".
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
  flags.DEFINE_string("workdir", "runs/sft", "Output folder (resumed if it exists).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  validate.check(FLAGS.config, training=True)
  from affect_jax import distributed
  from affect_jax.train import recipe
  distributed.initialize()
  validate.check_mesh(FLAGS.config, ("sft",))
  logging.set_verbosity(logging.WARNING)
  cli.use_compilation_cache(FLAGS.workdir)
  if FLAGS.config.get("seeds", ()):
    from affect_jax.train import seeds
    summary = seeds.run(FLAGS.config, FLAGS.workdir, FLAGS.config.seeds, phases=("sft",))
  else:
    summary = recipe.run(FLAGS.config, FLAGS.workdir, phases=("sft",))
  print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
                   indent=1))



if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  cli.run_main(main, "launch.sft", define_flags)
