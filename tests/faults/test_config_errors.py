"""Config errors end every launcher within seconds, before any work: exit status 2, one
`<launcher>: error: ...` message naming the field and the fix, no traceback, nothing written.

Before the fix a negative learning rate trained without complaint, num_generations=1 was refused
only after data, SFT and evaluation had run, and an unknown --config field ended in a KeyError
traceback (issue 18 item 4).
"""
import os
import pathlib
import subprocess
import sys
import time

import pytest

from configs import affectgpt_r1_7b, data, demo, tiny, tiny_plan, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Seconds a refused launch may take: Python, absl and JAX imports on a busy 2-core machine;
# the work it refuses (data generation, SFT) takes minutes.
REFUSE_WITHIN_S = 30


def _run(module, *args, env=None):
  env = {**{k: v for k, v in os.environ.items() if k != "AFFECT_JAX_DEBUG"},
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         **(env or {})}
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=REFUSE_WITHIN_S * 4)
  return proc, time.perf_counter() - t0


def _refused(proc, seconds, prefix, *needles):
  """Exit 2, the launcher's prefix, every needle in the message, no traceback, in seconds."""
  err = proc.stderr
  assert proc.returncode == 2, f"rc={proc.returncode}\n{err[-3000:]}"
  assert f"{prefix}: error: " in err, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  message = err[err.index(f"{prefix}: error: "):]
  for needle in needles:
    assert needle in message, message
  assert seconds < REFUSE_WITHIN_S, seconds
  return message


def _nothing_written(workdir: pathlib.Path):
  assert not workdir.exists() or not any(workdir.iterdir()), sorted(workdir.rglob("*"))


def test_negative_learning_rate_is_refused_before_any_work(tmp_path):
  work = tmp_path / "run"
  proc, s = _run("launch.grpo", f"--workdir={work}", "--config.sft.learning_rate=-0.001")
  _refused(proc, s, "launch.grpo", "config.sft.learning_rate=-0.001", "> 0",
           "--config.sft.learning_rate")
  _nothing_written(work)


def test_one_generation_is_refused_before_data_and_sft(tmp_path):
  work = tmp_path / "run"
  proc, s = _run("launch.grpo", f"--workdir={work}", "--config.grpo_loss.num_generations=1")
  _refused(proc, s, "launch.grpo", "config.grpo_loss.num_generations=1", ">= 2")
  _nothing_written(work)


def test_unknown_field_names_the_nearest_one(tmp_path):
  work = tmp_path / "run"
  proc, s = _run("launch.grpo", f"--workdir={work}", "--config.grpo.lerning_rate=1e-4")
  _refused(proc, s, "launch.grpo",
           "unknown config field 'grpo.lerning_rate'; did you mean 'grpo.learning_rate'?")
  _nothing_written(work)
  # The same with another --config file (the overrides are then parsed against it).
  proc, s = _run("launch.sft", f"--workdir={work}", "--config=configs/tiny_plan.py",
                 "--config.sft.bach_size=4")
  _refused(proc, s, "launch.sft",
           "unknown config field 'sft.bach_size'; did you mean 'sft.batch_size'?")
  _nothing_written(work)


def test_batch_the_mesh_cannot_split_is_refused_before_any_work(tmp_path):
  # 8 devices, mesh fsdp=-1: data x fsdp = 8 does not divide 12 rows.
  work = tmp_path / "run"
  proc, s = _run("launch.sft", f"--workdir={work}", "--config.sft.batch_size=12")
  _refused(proc, s, "launch.sft", "config.sft.batch_size=12", "multiple of 8")
  _nothing_written(work)


def test_every_error_is_listed_at_once(tmp_path):
  work = tmp_path / "run"
  proc, s = _run("launch.grpo", f"--workdir={work}", "--config.grpo.learning_rate=-1.0",
                 "--config.sampling.top_p=0.0", "--config.data.synthetic.text_neutral_prob=2.0",
                 "--config.checkpoint.save_every_steps=0")
  message = _refused(proc, s, "launch.grpo", "4 errors", "config.grpo.learning_rate=-1.0",
                     "config.sampling.top_p=0.0", "config.data.synthetic.text_neutral_prob=2.0",
                     "config.checkpoint.save_every_steps=0")
  assert "(0, 1]" in message and "[0, 1]" in message
  _nothing_written(work)


def test_bad_value_type_and_missing_config_file(tmp_path):
  work = tmp_path / "run"
  proc, s = _run("launch.grpo", f"--workdir={work}", "--config.grpo.learning_rate=fast")
  _refused(proc, s, "launch.grpo", "--config.grpo.learning_rate=fast", "float")
  proc, s = _run("launch.grpo", f"--workdir={work}", "--config=configs/no_such.py")
  _refused(proc, s, "launch.grpo", "configs/no_such.py")
  _nothing_written(work)


def test_the_other_launchers_refuse_config_errors_the_same_way(tmp_path):
  out = tmp_path / "out"
  proc, s = _run("launch.prepare", f"--out_dir={out}", "--config.media.num_frames=0")
  _refused(proc, s, "prepare", "config.media.num_frames=0", ">= 1")
  proc, s = _run("launch.prepare", f"--out_dir={out}", "--config.media.nmu_frames=2")
  _refused(proc, s, "prepare", "did you mean 'media.num_frames'?")
  proc, s = _run("launch.evaluate", f"--checkpoint={tmp_path / 'ckpt'}",
                 f"--data_dir={tmp_path / 'data'}", f"--cache_dir={out}",
                 "--config.unibench.top_p=1.5")
  _refused(proc, s, "launch.evaluate", "config.unibench.top_p=1.5", "(0, 1]")
  proc, s = _run("launch.convert", f"--hf_dir={tmp_path / 'hf'}", f"--out={out}",
                 "--config=configs/tiny.py", "--config.model.llm.lora.rank=-1")
  _refused(proc, s, "convert", "config.model.llm.lora.rank=-1", ">= 0")
  proc, s = _run("launch.benchmark", "--bench=plan", "--config=configs/tiny_plan.py",
                 f"--json_out={out / 'plan.json'}", "--config.grpo_loss.num_generations=1")
  _refused(proc, s, "launch.benchmark", "config.grpo_loss.num_generations=1")
  _nothing_written(out)


def test_library_user_errors_have_no_traceback_unless_asked(tmp_path):
  # A user error found by the library (not the config): the same one-line error, exit 2;
  # --verbose or AFFECT_JAX_DEBUG=1 shows its traceback.
  args = ("--dataset=ovmerd", f"--out_dir={tmp_path / 'out'}")
  proc, s = _run("launch.prepare", *args)
  _refused(proc, s, "prepare", "--dataset=ovmerd needs --data_dir")
  for extra, env in ((("--verbose",), None), ((), {"AFFECT_JAX_DEBUG": "1"})):
    proc, _ = _run("launch.prepare", *args, *extra, env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr[-2000:]
    assert "ValueError: --dataset=ovmerd needs --data_dir" in proc.stderr


def test_a_bug_keeps_its_traceback():
  code = ("from launch import cli\n"
          "def main(argv):\n"
          "  return {}['missing']\n"
          "cli.run_main(main, 'launch.x')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError" in proc.stderr
  assert "launch.x: error" not in proc.stderr


# In-process checks of configs/validate.py (no CLI).

@pytest.mark.parametrize("config,root,training", [
    (demo.get_config(), "", True), (tiny.get_config(), "", True),
    (tiny_plan.get_config(), "", False), (affectgpt_r1_7b.get_config(), "", False),
    (data.get_config(), "data", False)])
def test_shipped_configs_are_valid(config, root, training):
  assert validate.errors(config, root=root, training=training) == []


def test_real_recipe_needs_its_data_and_tokenizer_folders():
  c = affectgpt_r1_7b.get_config()
  problems = validate.errors(c, training=True)
  assert sorted(p.split(" ")[0] for p in problems) == [
      "config.data.sources.eval.data_dir", "config.data.sources.grpo.data_dir",
      "config.data.sources.sft.data_dir", "config.tokenizer_dir"]
  for phase in ("sft", "grpo", "eval"):
    c.data.sources[phase].data_dir = f"/data/{phase}"
  c.tokenizer_dir = "/ckpt/qwen"
  assert validate.errors(c, training=True) == []


@pytest.mark.parametrize("path,value,needle", [
    ("grpo.learning_rate", 0.0, "> 0"),
    ("sft.steps", -1, ">= 0"),
    ("grpo_loss.num_generations", 1, ">= 2"),
    ("eval.batch_size", 0, ">= 1"),
    ("data.synthetic.train_swap_prob", -0.1, "[0, 1]"),
    ("sampling.temperature", 0.0, "> 0"),
    ("sampling.top_p", 1.01, "(0, 1]"),
    ("unibench.llm.top_p", 0.0, "(0, 1]"),
    ("model.llm.lora.rank", -4, ">= 0"),
    ("model.llm.lora.dropout", 1.0, "[0, 1)"),
    ("model.llm.attention_impl", "flash", "'cpu_tuned'"),
    ("mesh.tensor", 0, "-1"),
    ("data.builder.media", "rwa", "['raw', 'paths']"),
    ("grpo_loss.epsilon_low", 1.0, "[0, 1)"),
    ("grpo_loss.oversample", 0, ">= 1"),
    ("grpo_loss.overlong_buffer", -2, ">= 0"),
    ("grpo.samples_every", -1, ">= 0"),
    ("grpo.samples_per_log", 0, ">= 1"),
    ("grpo.eval_every", -5, ">= 0"),
])
def test_each_range_rule(path, value, needle):
  c = demo.get_config()
  section, field = path.rsplit(".", 1)
  node = c
  for part in section.split("."):
    node = node[part]
  node[field] = value
  problems = validate.errors(c, training=True)
  assert len(problems) == 1 and problems[0].startswith(f"config.{path}="), problems
  assert needle in problems[0], problems


def test_cross_field_rules():
  c = demo.get_config()
  c.mesh.data, c.mesh.fsdp = -1, -1
  c.data.prompt.max_length = 300           # the largest buckets hold 254 + 1 / + 2
  c.model.llm.num_key_value_heads = 3      # 4 heads
  c.data.sources.eval.dataset = "ovmerdpluss"
  c.tokenizer_dir = "/ckpt/qwen"           # (non-demo data needs it)
  problems = validate.errors(c, training=True)
  assert len(problems) == 5, problems
  text = "\n".join(problems)
  for needle in ("at most one axis may be -1", "prompt_buckets", "sequence_buckets",
                 "num_key_value_heads=3", "did you mean 'ovmerdplus'?"):
    assert needle in text, text


def test_prompts_per_step_must_split_into_micro_batches():
  c = demo.get_config()                    # 16 prompts per step
  c.grpo_loss.micro_batches = 3
  problems = validate.errors(c, training=True)
  assert len(problems) == 1 and problems[0].startswith("config.grpo.prompts_per_step=16"), problems
  assert "multiple of 3" in problems[0]
  c.grpo_loss.micro_batches = 4
  c.grpo_loss.oversample = 3               # rolls out 48 prompts, trains on 16: no constraint
  assert validate.errors(c, training=True) == []


def test_library_checks_of_a_section_run_too():
  # reward.penalty_terms has no rule of its own: the library's RewardConfig check finds it.
  c = demo.get_config()
  c.reward.penalty_terms = "accuracy,lenght"
  problems = validate.errors(c)
  assert len(problems) == 1 and "reward.penalty_terms" in problems[0], problems
