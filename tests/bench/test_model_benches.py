"""launch.benchmark --bench=rollout / grpo_step on a tiny checkpoint: the DESIGN.md JSON contract."""
import json

import numpy as np

from tests.testlib import bench as bench
from tests.testlib import qwen2 as lib


def _run(*args):
  return bench.last_json(bench.run(*args))


def test_rollout_and_grpo_step_json(tmp_path):
  ckpt = lib.save_hf(lib.hf_model(seed=1), tmp_path / "ckpt")
  prompts = tmp_path / "prompts.npy"
  np.save(prompts, np.random.default_rng(0).integers(3, 256, (2, 8)).astype(np.int32))
  common = [f"--hf_dir={ckpt}", f"--prompts={prompts}", "--num_generations=2",
            "--new_tokens=4"]
  out = _run("--bench=rollout", *common, "--runs=1", f"--tokens_out={tmp_path / 't.npy'}")
  for key in ("tokens_per_s", "seconds", "compile_s", "flops", "achieved_tflops", "mfu"):
    assert out[key] > 0, key
  assert "measured" in out["peak_source"]
  # The compute roofline: tokens/s at MFU 1 (so the measured rate is its fraction mfu).
  assert abs(out["tokens_per_s"] / out["ceiling_tokens_per_s"] - out["mfu"]) < 1e-9
  assert np.load(tmp_path / "t.npy").shape == (4, 4)
  assert out["param_dtype"] == "float32"
  out = _run("--bench=rollout", *common, "--runs=1", "--dtype=bfloat16")
  assert out["param_dtype"] == "bfloat16" and out["tokens_per_s"] > 0
  out = _run("--bench=grpo_step", *common, "--steps=2", "--lora_rank=0",
             f"--json_out={tmp_path / 'g.json'}")
  for key in ("step_s", "sequences_per_s", "tokens_per_s", "compile_s", "flops", "mfu"):
    assert out[key] > 0, key
  for phase in ("rollout", "reference", "update"):
    assert out["phases"][phase]["flops"] > 0 and out["phases"][phase]["seconds"] >= 0, phase
  assert sum(out["flops_by_phase"].values()) == out["flops"]
  assert json.loads((tmp_path / "g.json").read_text())["bench"] == "grpo_step"
