"""Reward terms by name: what a term is, how it registers, and the shared analyses.

A reward term is a jittable function of the completions and their batch rows,

  fn(ids int32[R, N], lengths int32[R], rows, *, cfg, resources, shared) -> float32[R]

registered by name with a frozen dataclass of its config fields (a subclass of TermConfig, so
it also has `weight` and `normalize`):

  @dataclasses.dataclass(frozen=True)
  class BrevityConfig(registry.TermConfig):
    max_tokens: int = 64

  @registry.term("brevity", BrevityConfig)
  def brevity(ids, lengths, rows, *, cfg, resources, shared):
    return ...

rows: the batch's leaves named in `row_keys` (each repeated G times, one row per completion).
resources: what the term's `setup(context, cfg)` built once on the host (device tables; None
without a setup). shared: the output of the term's `analysis`, a named computation that several
terms read and that runs once per batch (the four EW terms share one scan of the tokens).
An analysis is registered the same way, with `analysis(name, config_cls)`; its function gets
`wanted` (the names of its terms with a nonzero weight) and may skip work only zero-weight
terms need. Its config section is reward.<name>.

Term modules live in affect_jax/rewards/terms/ and are imported by that package, so adding a
term is one new file there plus one config line (reward.terms.<name> = dict(weight=...)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

NORMALIZE = ("none", "batch")


@dataclasses.dataclass(frozen=True)
class TermConfig:
  """Fields every term has. weight: its factor in the total; normalize: 'none' or 'batch'
  (the term standardised over the batch, (x - mean) / (std + reward.normalize_eps), before
  the weight)."""
  weight: float = 1.0
  normalize: str = "none"

  def __post_init__(self):
    if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
      raise ValueError(f"weight={self.weight!r}: must be a number.")
    object.__setattr__(self, "weight", float(self.weight))
    if not math.isfinite(self.weight):
      raise ValueError(f"weight={self.weight}: must be a finite number.")
    if self.normalize not in NORMALIZE:
      raise ValueError(f"normalize='{self.normalize}': expected one of {NORMALIZE}.")


@dataclasses.dataclass(frozen=True)
class Context:
  """What setups may read on the host: the decoder's tokenizer and the emotion wheel
  (affect_jax.emotion.wheel.EwTables)."""
  tokenizer: Any
  wheel: Any


@dataclasses.dataclass(frozen=True)
class Term:
  name: str
  config: type
  fn: Callable
  analysis: str | None = None
  row_keys: tuple = ()
  setup: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Analysis:
  """fn(ids, lengths, rows, *, cfg, resources, wanted) -> dict of [R, ...] arrays; `stats`:
  the keys that are also logged as metrics (mean over the batch)."""
  name: str
  config: type
  fn: Callable
  setup: Callable | None = None
  row_keys: tuple = ()
  stats: tuple = ()


TERMS: dict[str, Term] = {}
ANALYSES: dict[str, Analysis] = {}


def term(name: str, config: type = TermConfig, *, analysis: str | None = None,
         row_keys=(), setup: Callable | None = None):
  """Decorator: registers fn as reward term `name` (module doc)."""
  if not (isinstance(config, type) and issubclass(config, TermConfig)):
    raise TypeError(f"reward term '{name}': its config must subclass registry.TermConfig.")

  def register(fn):
    old = TERMS.get(name)
    if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__,
                                                                         fn.__qualname__):
      raise ValueError(f"reward term '{name}' is registered twice ({old.fn.__module__} "
                       f"and {fn.__module__}); give one another name.")
    TERMS[name] = Term(name, config, fn, analysis, tuple(row_keys), setup)
    return fn
  return register


def analysis(name: str, config: type, *, row_keys=(), stats=(), setup: Callable | None = None):
  """Decorator: registers fn as shared analysis `name` (module doc)."""
  def register(fn):
    ANALYSES[name] = Analysis(name, config, fn, setup, tuple(row_keys), tuple(stats))
    return fn
  return register


def get(name: str) -> Term:
  """The registered term `name`; an unknown name is an error listing the known ones."""
  load()
  if name not in TERMS:
    raise ValueError(f"reward.terms.{name}: no such reward term; registered: {sorted(TERMS)} "
                     f"(a new term is a module in affect_jax/rewards/terms/).")
  return TERMS[name]


def load() -> None:
  """Imports every term module (affect_jax/rewards/terms/)."""
  from affect_jax.rewards import terms  # noqa: F401  (registers on import)
