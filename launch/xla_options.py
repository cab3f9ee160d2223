"""XLA compiler options the launchers pass to what they jit, by implementation switch and
backend (library functions take `compiler_options` as an argument and choose none).

  options = xla_options.reward("tuned", jax.default_backend())   # a dict or None
"""
from __future__ import annotations

# The on-device reward jitted on its own (launch.score --engine=device, --bench=reward), by
# --reward_compiler. tuned, cpu: XLA:CPU's default copy insertion copies most loop-carried
# arrays once per loop iteration (about a third of the parsers' kernels); with region analysis
# it copies none, and the reward runs about 7% faster (launch.benchmark --bench=reward). A CPU
# debug option, so it is passed only when compiling for CPU.
REWARD = {
    "tuned": {"cpu": {"xla_cpu_copy_insertion_use_region_analysis": True}},
    "default": {},
}


def reward(impl: str, backend: str) -> dict | None:
  """The reward's compiler options for implementation switch `impl` on `backend` (None: XLA's
  defaults)."""
  if impl not in REWARD:
    raise ValueError(f"--reward_compiler={impl!r}: expected one of {sorted(REWARD)}.")
  options = REWARD[impl].get(backend)
  return dict(options) if options else None
