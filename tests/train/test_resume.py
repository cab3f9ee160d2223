"""kill -9 in the middle of GRPO, then resume: every logged metric equals an uninterrupted run's,
step for step (the whole main job on a tiny config, in subprocesses)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = [
    "--config.data.synthetic.splits.train=16", "--config.data.synthetic.splits.rl=8",
    "--config.data.synthetic.splits.test=8", "--config.sft.steps=6", "--config.sft.batch_size=4",
    "--config.sft.log_every=1", "--config.grpo.steps=5", "--config.grpo.prompts_per_step=2",
    "--config.grpo.log_every=1", "--config.grpo_loss.num_generations=2",
    "--config.sampling.max_new_tokens=24", "--config.eval.max_new_tokens=24",
    "--config.eval.batch_size=8", "--config.checkpoint.save_every_steps=2",
    "--config.features.batch_size=8", "--config.seeds=()",
]
TIMING = ("elapsed_s", "tokens_per_s")


def _cmd(workdir, data):
  return [sys.executable, "-m", "launch.grpo", f"--workdir={workdir}",
          f"--config.data.cache_dir={data}", *TINY]


def _records(workdir):
  """(phase, step) -> the last record logged for it (a resumed run logs some steps twice)."""
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    out[(r["phase"], r["step"], r.get("model"))] = {k: v for k, v in r.items() if k not in TIMING}
  return out


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  data = tmp_path / "data"
  full = subprocess.run(_cmd(tmp_path / "full", data), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert full.returncode == 0, full.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed, data), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  metrics = killed / "metrics.jsonl"
  while time.time() < deadline and proc.poll() is None:
    if metrics.is_file() and '"phase": "grpo", "step": 3' in metrics.read_text():
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "summary.json").exists()

  resumed = subprocess.run(_cmd(killed, data), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a, b = _records(tmp_path / "full"), _records(killed)
  assert a.keys() == b.keys()
  assert [k for k in a if k[0] == "grpo"] == [("grpo", s, None) for s in range(1, 6)]
  for key in a:
    assert a[key] == b[key], (key, a[key], b[key])
  sa = json.loads((tmp_path / "full" / "summary.json").read_text())
  sb = json.loads((killed / "summary.json").read_text())
  assert sa["sft_eval_ew_f"] == sb["sft_eval_ew_f"] and sa["grpo_eval_ew_f"] == sb["grpo_eval_ew_f"]
