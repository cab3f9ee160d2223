"""Test setup: 8 fake CPU devices so mesh tests run on one host.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# XLA's persistent compilation cache, shared by the xdist workers and the processes tests start
# (they inherit the environment): the many tests that compile the same demo programs (recipe,
# resume, reference, mesh workers) compile each once per suite run. Keyed by the program, so
# never stale; set JAX_COMPILATION_CACHE_DIR= (empty) to turn it off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(
    __import__("pathlib").Path(__file__).resolve().parents[1] / ".cache" / "jax_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """../shared beside the project, or skip."""
  if not SHARED.is_dir():
    pytest.skip("../shared is not present")
  return SHARED


@pytest.fixture(scope="session")
def official_ew_dir(shared_dir):
  """Folder with the official AffectGPT-era emotion-wheel files, or skip."""
  d = shared_dir / "emotion_wheel" / "affectgpt"
  if not d.is_dir():
    pytest.skip("official emotion-wheel files are not present in ../shared")
  return d


def pytest_collection_modifyitems(config, items):
  """Long tests (marked slow) first: pytest-xdist hands out tests in this order, so both
  workers start on the long ones and the run does not end with one long test on one worker."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
