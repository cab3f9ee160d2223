"""Shared pieces of the config files: mesh, sharding rules and the model sections.

Every number an experiment depends on lives in a config; launchers override any field with
--config.a.b=value. Model sections use Hugging Face field names so a config can be compared
with (or replaced by) a checkpoint's config.json.
"""
import ml_collections

from affect_jax import sharding


def mesh_config(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axis sizes; one axis may be -1 (= all remaining devices)."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def sharding_rules() -> list:
  """Logical axis -> mesh axes (see affect_jax/sharding.py for the names)."""
  return [[name, list(axes) if isinstance(axes, tuple) else axes]
          for name, axes in sharding.DEFAULT_RULES]


def lora_config(rank: int = 16, alpha: float = 32.0, dropout: float = 0.05):
  return dict(rank=rank, alpha=alpha, dropout=dropout,
              targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"))
