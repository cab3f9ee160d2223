"""Reward term modules: every module in this package is imported, and registers its terms
(affect_jax/rewards/registry.py). Adding a term is a new module here plus one config line."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
