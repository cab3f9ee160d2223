"""Reward terms written in plain host Python: decoded text in, floats out.

  @host_term.register("my_term", MyConfig, row_keys=("gt_ids",))
  def my_term(texts: list[str], rows: dict[str, np.ndarray], cfg, context) -> list[float]:
    ...

registers a device term (affect_jax/rewards/registry.py) that decodes the completions with the
tokenizer on the host (special tokens skipped) and calls the function through
jax.pure_callback, so a researcher can try a term in the GRPO step before writing it for the
device. rows: the batch rows named in row_keys, as numpy arrays (one row per completion);
context: registry.Context (the tokenizer and the emotion wheel). The step waits for the host,
so a host term is for prototyping; the result must hold one finite float per completion.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax.rewards import ew_tables as rt
from affect_jax.rewards import registry


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HostResources:
  """A host term's resources: no arrays, the host context as static data."""
  context: Any = dataclasses.field(metadata=dict(static=True))


def decode_rows(tokenizer, ids: np.ndarray, lengths: np.ndarray) -> list[str]:
  """The text of each completion: its first lengths[i] tokens, out-of-vocabulary ids dropped,
  decoded as the device reads them (special tokens add no text)."""
  vocab = getattr(tokenizer, "backend_tokenizer", tokenizer).get_vocab_size(
      with_added_tokens=True)
  out = []
  for row, n in zip(np.asarray(ids), np.asarray(lengths)):
    row = row[:max(int(n), 0)]
    out.append(rt.decode(tokenizer, [int(t) for t in row if 0 <= t < vocab]))
  return out


def register(name: str, config: type = registry.TermConfig, *, row_keys=()):
  """Decorator: registers host function fn(texts, rows, cfg, context) -> floats as reward
  term `name` (module doc)."""
  keys = tuple(row_keys)

  def wrap(host_fn: Callable):
    def setup(context, cfg):
      return HostResources(context)

    def term(ids, lengths, rows, *, cfg, resources, shared):
      context = resources.context

      def on_host(ids, lengths, *values):
        texts = decode_rows(context.tokenizer, ids, lengths)
        out = np.asarray(host_fn(texts, dict(zip(keys, values)), cfg, context), np.float32)
        if out.shape != (len(texts),):
          raise ValueError(f"host reward term '{name}' returned shape {out.shape}; expected "
                           f"({len(texts)},): one float per completion.")
        return out

      return jax.pure_callback(on_host, jax.ShapeDtypeStruct((ids.shape[0],), jnp.float32),
                               ids, lengths, *[rows[k] for k in keys],
                               vmap_method="sequential")

    term.__module__, term.__qualname__ = host_fn.__module__, host_fn.__qualname__
    registry.term(name, config, row_keys=keys, setup=setup)(term)
    return host_fn
  return wrap
