r"""Benchmarks; prints ONE JSON object as the last line of stdout (and writes it to --json_out).

  python -m launch.benchmark --bench=reward --batch=4096 [--ew_dir=DIR] [--json_out=F]
  python -m launch.benchmark --bench=rollout --hf_dir=DIR --prompts=P.npy ...
  python -m launch.benchmark --bench=train_step --hf_dir=DIR --prompts=P.npy [--batch=B] ...
  python -m launch.benchmark --bench=plan --config=configs/affectgpt_r1_7b.py \
      --mesh=data=1,fsdp=16,tensor=1 --cpu_devices=16 [--config.grpo.prompts_per_step=16]
      [--program=evaluate: launch.evaluate's generation at config.unibench's settings]

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

from configs import grpo_loss as grpo_loss_config
from configs import validate
from launch import cli, xla_options

BENCHES = {
    "reward": "affect_jax.bench.reward_bench:run",
    "rollout": "affect_jax.bench.rollout_bench:run",
    "grpo_step": "affect_jax.bench.grpo_bench:run",
    "train_step": "affect_jax.bench.train_bench:run",
    "plan": "affect_jax.bench.plan:run",
}


# Config sections a bench takes (its run function's keyword -> the section's defaults).
BENCH_SECTIONS = {"grpo_step": {"grpo_loss": grpo_loss_config.get_grpo_loss_config}}
# XLA flags a bench needs, set before JAX starts (unless XLA_FLAGS already names the flag).
# plan: XLA:CPU's default scheduler favours concurrency and keeps, e.g., every layer's gathered
# weights live at once (65 GiB per device for the 7B GRPO step on fsdp=16, against 27 GiB with
# this flag); TPU and GPU compilers schedule for memory, so the plan does too.
BENCH_XLA_FLAGS = {"plan": ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)}
# Host CPU devices when --cpu_devices is 0: the reward bench splits its batch over one device
# per core (each scores its own rows, as each accelerator does in the GRPO step); on a GPU /
# TPU machine this only shapes the unused host platform.
BENCH_CPU_DEVICES = {"reward": lambda: os.cpu_count() or 1}


def define_flags():
  """The CLI flags (defined only when run as a program, so that importing this module next
  to other launchers never clashes). Shared flags of the contract (DESIGN.md section 4): each
  benchmark reads the ones it needs."""
  flags.DEFINE_string("bench", None, f"One of {sorted(BENCHES)}.")
  flags.DEFINE_string("json_out", None, "Also write the JSON object to this file.")
  flags.DEFINE_integer("cpu_devices", 0, "If > 0, expose the host CPU as this many XLA "
                       "devices (set before JAX starts); 0 = the bench's default (reward: one "
                       "per core; others: 1).")
  flags.DEFINE_integer("batch", 0, "Rows per call (reward; default 4096) or per step "
                       "(train_step; default 4). 0 = the bench's default.")
  flags.DEFINE_string("ew_dir", None, "Emotion-wheel folder (default: the demo wheel).")
  flags.DEFINE_string("tokenizer_dir", None, "Tokenizer folder (reward; default: wheel BPE).")
  flags.DEFINE_integer("runs", 0, "Timed steady-state calls; 0 = the bench's default (reward "
                       "200: a call takes a few ms and the median needs many; rollout 3).")
  flags.DEFINE_integer("host_samples", 2000, "Rows timed for the host metric (reward).")
  flags.DEFINE_integer("seed", 0, "Seed of generated inputs.")
  flags.DEFINE_string("hf_dir", None, "HF checkpoint folder (rollout, grpo_step).")
  flags.DEFINE_string("prompts", None, "int32 [num_prompts, prompt_len] .npy (rollout, "
                      "grpo_step).")
  flags.DEFINE_integer("num_generations", 4, "Completions per prompt.")
  flags.DEFINE_integer("new_tokens", 128, "New tokens per completion.")
  flags.DEFINE_bool("greedy", True, "Greedy decoding (rollout).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter and compute dtype of "
                    "the checkpoint (rollout, grpo_step; default: the checkpoint's config).")
  flags.DEFINE_string("tokens_out", None, "Write the rollout tokens here (.npy).")
  flags.DEFINE_integer("steps", 6, "Steps (grpo_step, train_step).")
  flags.DEFINE_integer("lora_rank", 0, "LoRA rank; 0 = full fine-tuning.")
  flags.DEFINE_integer("seq_len", 0, "Tokens per sequence (train_step; 0 = 256).")
  flags.DEFINE_integer("logprob_chunk", 0, "Positions per log-prob chunk (train_step; "
                       "0 = the whole sequence).")
  cli.define_config_file("config", None, "Config file (plan): configs/X.py; override "
                                  "fields with --config.a.b=v.", lock_config=False)
  flags.DEFINE_string("mesh", "", "Mesh (plan): 'data=1,fsdp=16,tensor=1' or '1,16,1'; "
                      "empty = the config's mesh.")
  flags.DEFINE_enum("plan_step", "grpo", ["grpo", "sft"], "Which step --bench=plan compiles.")
  flags.DEFINE_enum("program", "train", ["train", "evaluate"], "What --bench=plan compiles: "
                    "the training step (--plan_step) or launch.evaluate's generation.")
  flags.DEFINE_enum("reward_compiler", "tuned", sorted(xla_options.REWARD),
                    "XLA options of the jitted reward (reward), per backend "
                    "(launch/xla_options.py).")


_SHARED = ("batch", "ew_dir", "tokenizer_dir", "runs", "host_samples", "seed", "hf_dir",
           "prompts", "num_generations", "new_tokens", "greedy", "tokens_out", "steps",
           "lora_rank", "seq_len", "logprob_chunk", "mesh", "plan_step", "program", "dtype")


def resolve(name: str):
  """The run function of a --bench name."""
  if name not in BENCHES:
    raise app.UsageError(f"--bench={name!r}: expected one of {sorted(BENCHES)}.")
  module, function = BENCHES[name].split(":")
  return getattr(importlib.import_module(module), function)


def _reward_kwargs(config, reward_compiler: str) -> dict:
  """The reward bench's sections (the --config's reward and data.tokenizer, else the
  defaults of configs/) and its compiler options for this backend."""
  import jax
  from configs import data as data_config
  from configs import reward as reward_config
  return {"reward_config": config.reward if config is not None and "reward" in config
          else reward_config.get_reward_config(),
          "tokenizer_config": config.data.tokenizer if config is not None and "data" in config
          else data_config.tokenizer_config(),
          "compiler_options": xla_options.reward(reward_compiler, jax.default_backend())}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.bench:
    raise app.UsageError(f"--bench is required: one of {sorted(BENCHES)}.")
  cpu_devices = f.cpu_devices
  if not cpu_devices and f.bench in BENCH_CPU_DEVICES and (
      "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")):
    cpu_devices = BENCH_CPU_DEVICES[f.bench]()
  if cpu_devices > 0:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={cpu_devices}").strip()
  for flag in BENCH_XLA_FLAGS.get(f.bench, ()):
    current = os.environ.get("XLA_FLAGS", "")
    if flag.split("=")[0] not in current:
      os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()
  if f.config is not None:
    validate.check(f.config)
  run = resolve(f.bench)
  kwargs = {name: f[name].value for name in _SHARED}
  for name in ("batch", "seq_len", "logprob_chunk", "runs"):   # 0 = the bench's own default
    if not kwargs[name]:
      del kwargs[name]
  if f.config is not None:
    kwargs["config"] = f.config
  if f.bench == "reward":
    kwargs.update(_reward_kwargs(f.config, f.reward_compiler))
  for name, section in BENCH_SECTIONS.get(f.bench, {}).items():
    kwargs[name] = section()
  result = run(**kwargs)
  text = json.dumps(result, sort_keys=True)
  if f.json_out:
    path = pathlib.Path(f.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  cli.run_main(main, "launch.benchmark", define_flags)
