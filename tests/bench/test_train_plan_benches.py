"""launch.benchmark --bench=train_step and --bench=plan: the JSON contracts on a tiny checkpoint
and config, and bad input (unknown mesh axis, a mesh that does not divide the devices, no
--config) failing with errors that name the fix."""
import json

import jax
import numpy as np
import pytest

from tests.testlib import bench as bench
from tests.testlib import qwen2 as lib
from affect_jax.bench import plan
from configs import tiny_plan

_bench, _json = bench.run, bench.last_json


def test_train_step_json(tmp_path):
  ckpt = lib.save_hf(lib.hf_model(seed=2), tmp_path / "ckpt")
  prompts = tmp_path / "prompts.npy"
  np.save(prompts, np.random.default_rng(0).integers(3, 256, (2, 8)).astype(np.int32))
  out = _json(_bench("--bench=train_step", f"--hf_dir={ckpt}", f"--prompts={prompts}",
                     "--steps=2", "--batch=2", "--seq_len=24", "--logprob_chunk=8",
                     f"--json_out={tmp_path / 't.json'}"))
  for key in ("steps_per_s", "tokens_per_s", "compile_s", "flops", "achieved_tflops", "mfu",
              "peak_flops"):
    assert out[key] > 0, key
  assert out["bench"] == "train_step" and "measured" in out["peak_source"]
  assert (out["batch"], out["seq_len"], out["logprob_chunk"]) == (2, 24, 8)
  np.testing.assert_allclose(out["tokens_per_s"], 48 * out["steps_per_s"], rtol=1e-9)
  assert out["losses"][1] < out["losses"][0]                 # the step trains
  assert json.loads((tmp_path / "t.json").read_text())["flops"] == out["flops"]


def test_plan_json_on_8_fake_devices():
  out = _json(_bench("--bench=plan", "--config=configs/tiny_plan.py", "--mesh=data=2,fsdp=4",
                     devices=8))
  assert out["devices"] == 8 and out["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  mem = out["memory_per_device"]
  for key in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes"):
    assert mem[key] > 0, key
  assert mem["total_bytes"] >= mem["argument_bytes"]
  assert out["xla_cost_per_device"]["flops"] > 0
  assert out["analytic_flops"]["total"] > out["analytic_flops"]["update"] > 0
  assert out["shapes"]["rows"] == 8 * 2 and out["shapes"]["micro_batches"] == 1
  assert out["fits"]["tpu_v5e"] is True


def test_plan_errors_name_the_fix():
  with pytest.raises(ValueError, match="--config=configs/"):
    plan.run(config=None, mesh="fsdp=8")
  config = tiny_plan.get_config()
  with pytest.raises(ValueError, match=r"mesh axes \['model'\] are unknown"):
    plan.run(config=config, mesh="model=8")
  n = jax.device_count()
  with pytest.raises(ValueError, match=f"but {n} are available.*--cpu_devices"):
    plan.run(config=config, mesh=f"fsdp={n + 1}")
  if n > 1:                  # a batch the mesh cannot split
    config.grpo.prompts_per_step = n + 1
    with pytest.raises(ValueError, match="cannot be split over the mesh"):
      plan.run(config=config, mesh=f"fsdp={n}")
  demo = tiny_plan.get_config()
  demo.model.llm.vocab_size = -1
  with pytest.raises(ValueError, match="model.llm.vocab_size"):
    plan.run(config=demo, mesh="")


def test_plan_sft_step():
  n = jax.device_count()
  config = tiny_plan.get_config()
  config.sft.batch_size = n
  out = plan.run(config=config, mesh=f"fsdp={n}", plan_step="sft")
  assert out["step"] == "sft" and out["shapes"] == {"batch": n, "seq_len": 32, "micro_batches": 1}
  assert out["memory_per_device"]["total_bytes"] > 0
  f = out["analytic_flops"]      # LoRA: frozen matmuls 2x, adapters / attention / fusion 3x
  assert 2 * f["forward"] < f["total"] < 3 * f["forward"]


def test_plan_evaluate_program():
  """--program=evaluate: launch.evaluate's generation at config.unibench's settings, 3 clips
  rounded up to the mesh's data x fsdp (8 rows on fsdp=8; 3 on one device)."""
  n = jax.device_count()
  config = tiny_plan.get_config()
  config.unibench.batch_size = 3
  config.unibench.max_new_tokens = 4
  out = plan.run(config=config, mesh=f"fsdp={n}", program="evaluate")
  assert out["step"] == "evaluate"
  assert out["shapes"] == {"clips": 3, "rows": -(-3 // n) * n, "prompt_len": 16,
                           "new_tokens": 4, "greedy": True}
  mem = out["memory_per_device"]
  # The arguments hold every parameter's shard (at least 1 / n of all parameter bytes).
  assert mem["argument_bytes"] >= out["param_bytes"] / n > 0
  assert mem["total_bytes"] >= mem["argument_bytes"]
  assert out["analytic_flops"]["decode"] > 0 and out["analytic_flops"]["prefill"] > 0
  with pytest.raises(ValueError, match="--program='predict'"):
    plan.run(config=config, mesh="", program="predict")
