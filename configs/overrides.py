"""Keyword overrides of a config section: the one check every `get_*_config(**overrides)` does."""
import ml_collections


def apply(c: ml_collections.ConfigDict, overrides: dict, name: str) -> ml_collections.ConfigDict:
  """Sets each override on section `c` (built by function `name`); an unknown field is an error
  that lists the known ones."""
  for key, value in overrides.items():
    if key not in c:
      raise ValueError(f"{name}({key}=...): unknown field; known: {sorted(c)}.")
    c[key] = value
  return c
