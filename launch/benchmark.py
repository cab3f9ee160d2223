r"""Benchmarks; prints ONE JSON object as the last line of stdout (and writes it to --json_out).

  python -m launch.benchmark --bench=reward --batch=4096 [--ew_dir=DIR] [--json_out=F]
  python -m launch.benchmark --bench=rollout --hf_dir=DIR --prompts=P.npy ...

BENCHES maps a --bench name to "module:function"; the function takes the flag values as
keyword arguments (ignoring the ones it does not use) and returns a JSON-ready dict. Adding
a benchmark is one line there. Modules are imported only after the flags are parsed, so
--cpu_devices can split the host CPU into several XLA devices first.
"""
from __future__ import annotations

import importlib
import json
import os
import pathlib

from absl import app, flags

BENCHES = {
    "reward": "affect_jax.bench.reward_bench:run",
    "rollout": "affect_jax.bench.rollout_bench:run",
    "grpo_step": "affect_jax.bench.grpo_bench:run",
}



def define_flags():
  """The CLI flags (defined only when run as a program, so that importing this module next
  to other launchers never clashes). Shared flags of the contract (DESIGN.md section 4): each
  benchmark reads the ones it needs."""
  flags.DEFINE_string("bench", None, f"One of {sorted(BENCHES)}.")
  flags.DEFINE_string("json_out", None, "Also write the JSON object to this file.")
  flags.DEFINE_integer("cpu_devices", 0, "If > 0, expose the host CPU as this many XLA "
                       "devices (set before JAX starts).")
  flags.DEFINE_integer("batch", 4096, "Rows per call (reward).")
  flags.DEFINE_string("ew_dir", None, "Emotion-wheel folder (default: the demo wheel).")
  flags.DEFINE_string("tokenizer_dir", None, "Tokenizer folder (reward; default: wheel BPE).")
  flags.DEFINE_integer("runs", 10, "Timed steady-state calls.")
  flags.DEFINE_integer("host_samples", 2000, "Rows timed for the host metric (reward).")
  flags.DEFINE_integer("seed", 0, "Seed of generated inputs.")
  flags.DEFINE_string("hf_dir", None, "HF checkpoint folder (rollout, grpo_step).")
  flags.DEFINE_string("prompts", None, "int32 [num_prompts, prompt_len] .npy (rollout, "
                      "grpo_step).")
  flags.DEFINE_integer("num_generations", 4, "Completions per prompt.")
  flags.DEFINE_integer("new_tokens", 128, "New tokens per completion.")
  flags.DEFINE_bool("greedy", True, "Greedy decoding (rollout).")
  flags.DEFINE_string("tokens_out", None, "Write the rollout tokens here (.npy).")
  flags.DEFINE_integer("steps", 6, "Steps (grpo_step, train_step).")
  flags.DEFINE_integer("lora_rank", 0, "LoRA rank; 0 = full fine-tuning.")


_SHARED = ("batch", "ew_dir", "tokenizer_dir", "runs", "host_samples", "seed", "hf_dir",
           "prompts", "num_generations", "new_tokens", "greedy", "tokens_out", "steps",
           "lora_rank")


def resolve(name: str):
  """The run function of a --bench name."""
  if name not in BENCHES:
    raise app.UsageError(f"--bench={name!r}: expected one of {sorted(BENCHES)}.")
  module, function = BENCHES[name].split(":")
  return getattr(importlib.import_module(module), function)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.bench:
    raise app.UsageError(f"--bench is required: one of {sorted(BENCHES)}.")
  if f.cpu_devices > 0:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={f.cpu_devices}").strip()
  run = resolve(f.bench)
  result = run(**{name: f[name].value for name in _SHARED})
  text = json.dumps(result, sort_keys=True)
  if f.json_out:
    path = pathlib.Path(f.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
