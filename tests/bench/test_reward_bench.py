"""Smoke test of the reward benchmark's code path (tiny batch, no timing assertions)."""
import pytest
from absl import app

from affect_jax.bench import reward_bench, timing
from configs import data as data_config
from configs.reward import get_reward_config
from launch import benchmark


def test_reward_bench_tiny_batch(tmp_path, monkeypatch):
  monkeypatch.setenv("AFFECT_JAX_CACHE", str(tmp_path / "cache"))
  out = reward_bench.run(reward_config=get_reward_config(),
                         tokenizer_config=data_config.tokenizer_config(), batch=16, runs=1,
                         host_samples=8, host_runs=1)
  for key in ("device_samples_per_s", "host_samples_per_s", "speedup", "compile_s", "batch"):
    assert key in out
  assert out["batch"] == 16 and out["host_samples"] == 8
  assert out["max_abs_diff"] < 1e-6      # device accuracy == the official metric


def test_completions_are_deterministic():
  from affect_jax.emotion import wheel
  tables = wheel.load_tables(None)
  assert reward_bench.make_completions(tables, 5, 3) == reward_bench.make_completions(
      tables, 5, 3)


def test_dispatch_table():
  assert benchmark.resolve("reward") is reward_bench.run
  with pytest.raises(app.UsageError, match="expected one of"):
    benchmark.resolve("nope")


def test_timing_helpers():
  import jax
  import jax.numpy as jnp
  t, out = timing.time_jitted(jax.jit(lambda x: x * 2), jnp.ones(3), runs=2)
  assert t.runs == 2 and t.compile_s >= 0 and t.min_s <= t.median_s
  assert out.tolist() == [2.0, 2.0, 2.0]
  assert timing.time_host(lambda: None, runs=2).runs == 2
  with pytest.raises(ValueError, match="runs=0"):
    timing.time_host(lambda: None, runs=0)


def test_cli_splits_the_batch_over_one_cpu_device_per_core(tmp_path):
  """Without --cpu_devices (and no device count in XLA_FLAGS) the reward bench uses one host
  CPU device per core; --cpu_devices=1 keeps one."""
  import json
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["AFFECT_JAX_CACHE"] = str(tmp_path / "cache")
  common = ["--bench=reward", "--batch=16", "--runs=1", "--host_samples=8"]
  for extra, want in (([], os.cpu_count() if 16 % os.cpu_count() == 0 else 1),
                      (["--cpu_devices=1"], 1)):
    r = subprocess.run([sys.executable, "-m", "launch.benchmark", *common, *extra], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == want and out["max_abs_diff"] < 1e-6, (extra, out["devices"])
