"""brevity: 1 for a completion of at most target_tokens tokens, falling linearly to 0 at twice
that length (README "Adding a reward term" shows this file as the worked example)."""
import dataclasses

import jax.numpy as jnp

from affect_jax.rewards import registry


@dataclasses.dataclass(frozen=True)
class BrevityConfig(registry.TermConfig):
  target_tokens: int = 64    # completions up to this many tokens score 1

  def __post_init__(self):
    super().__post_init__()
    if self.target_tokens < 1:
      raise ValueError(f"target_tokens={self.target_tokens}: must be >= 1.")


@registry.term("brevity", BrevityConfig)
def brevity(ids, lengths, rows, *, cfg, resources, shared):
  over = jnp.maximum(lengths - cfg.target_tokens, 0) / cfg.target_tokens
  return jnp.clip(1.0 - over, 0.0, 1.0)
