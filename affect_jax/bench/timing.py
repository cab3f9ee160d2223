"""Timing helpers shared by the benchmarks: compile time apart from steady-state time."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Timing:
  """compile_s: lowering + compilation (0 for host code); median_s / min_s: steady-state
  seconds per call over `runs` calls after one warm-up call."""
  compile_s: float
  median_s: float
  min_s: float
  runs: int


def _block(out):
  import jax
  return jax.block_until_ready(out)


def time_jitted(fn: Callable, *args, runs: int = 10, **kwargs) -> tuple[Timing, Any]:
  """Times a jax.jit-wrapped `fn`: compile once (timed), warm up once, then `runs` calls.

  Returns (Timing, the output of the last call).
  """
  if runs < 1:
    raise ValueError(f"runs={runs}: need at least one timed call.")
  start = time.perf_counter()
  compiled = fn.lower(*args, **kwargs).compile()
  compile_s = time.perf_counter() - start
  out = _block(compiled(*args, **kwargs))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    out = _block(compiled(*args, **kwargs))
    times.append(time.perf_counter() - start)
  return Timing(compile_s, statistics.median(times), min(times), runs), out


def time_host(fn: Callable[[], Any], runs: int = 3) -> Timing:
  """Times a host (Python) callable: median / min seconds per call over `runs` calls."""
  if runs < 1:
    raise ValueError(f"runs={runs}: need at least one timed call.")
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return Timing(0.0, statistics.median(times), min(times), runs)
