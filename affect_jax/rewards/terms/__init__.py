"""Reward term modules: every module in this package is imported, and registers its terms
(affect_jax/rewards/registry.py). Adding a term is a new module here plus one config line.
The EW terms come first, then the other modules by name: registration order is the order of
the total's sum and of the logged metrics."""
import importlib
import pkgutil

from affect_jax.rewards.terms import emotion_wheel  # noqa: F401  (registers first)

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
