"""Compiler options are chosen by the launcher, per implementation switch and backend."""
import pytest

from launch import xla_options


def test_reward_options_by_switch_and_backend():
  assert xla_options.reward("tuned", "cpu") == {"xla_cpu_copy_insertion_use_region_analysis":
                                                True}
  assert xla_options.reward("tuned", "gpu") is None       # a CPU-only flag
  assert xla_options.reward("default", "cpu") is None
  with pytest.raises(ValueError, match="--reward_compiler='fast'"):
    xla_options.reward("fast", "cpu")
