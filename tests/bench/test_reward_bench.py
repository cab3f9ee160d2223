"""Smoke test of the reward benchmark's code path (tiny batch, no timing assertions)."""
import pytest
from absl import app

from affect_jax.bench import reward_bench, timing
from launch import benchmark


def test_reward_bench_tiny_batch(tmp_path, monkeypatch):
  monkeypatch.setenv("AFFECT_JAX_CACHE", str(tmp_path / "cache"))
  out = reward_bench.run(batch=16, runs=1, host_samples=8, host_runs=1)
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
