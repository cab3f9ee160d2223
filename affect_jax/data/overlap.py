"""Evaluation clips out of training: the overlap rule.

  source, dropped = drop_eval_clips(source, names, eval_names, what=..., eval_what=...)

A training source (SFT or GRPO) may hold clips of the evaluation source: MER2025-OV, the
paper's GRPO data, contains the 200 OV-MERD+ test clips. Every row whose clip name is among
the evaluation source's names is dropped before the phase reads batches; the rest keep their
record order (SubsetSource). The result depends only on the two name lists, so every process
and every resumed run gets the same rows in the same order, and a grain iterator position
saved over the filtered source indexes the same records when restored.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
from absl import logging

# Dropped clip names written into the log per phase; past this many only the count is given.
LOG_NAMES = 20


class SubsetSource:
  """records[indices] of a random-access source, as a random-access source."""

  def __init__(self, source, indices: Sequence[int]):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(f"SubsetSource index {index} out of range [0, {len(self)}).")
    return self._source[int(self._indices[int(index)])]

  @property
  def names(self) -> list[str]:
    """The clip names of the kept records (when the wrapped source lists its names)."""
    names = self._source.names
    return [names[int(i)] for i in self._indices]

  def __repr__(self) -> str:
    return f"SubsetSource({self._source!r}, {len(self)} of {len(self._source)} records)"


def eval_overlap(names: Sequence[str], eval_names: Iterable[str]) -> tuple[np.ndarray, list[str]]:
  """(indices of the names not in eval_names, in order; the names dropped, in record order)."""
  banned = set(eval_names)
  keep = np.asarray([i for i, n in enumerate(names) if n not in banned], np.int64)
  return keep, [n for n in names if n in banned]


def digest(names: Sequence[str]) -> int:
  """A 31-bit fingerprint of a name list (its order included), for cross-process checks (an
  int32, which JAX gathers without 64-bit mode)."""
  h = hashlib.sha256("\n".join(names).encode("utf-8")).digest()
  return int.from_bytes(h[:4], "little") >> 1


def check_processes_agree(value: int, what: str) -> None:
  """Raises unless `value` is the same on every JAX process (no-op with one process)."""
  import jax   # the data layer needs jax only for this check
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  values = np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32))).ravel()
  if np.any(values != values[0]):
    raise ValueError(f"{what}: the processes kept different rows (fingerprints "
                     f"{values.tolist()}); every process must read the same built datasets.")


def drop_eval_clips(source, names: Sequence[str], eval_names: Iterable[str], *, what: str,
                    eval_what: str, log_names: int = LOG_NAMES) -> tuple[object, list[str]]:
  """The source without the rows whose clip name is in the evaluation source.

  Args:
    source: a random-access training source; names[i] is the clip name of source[i].
    names: its clip names, one per record.
    eval_names: the evaluation source's clip names.
    what / eval_what: the two sources as the user configured them (for the log and errors).
    log_names: at most this many dropped names are logged; the rest are counted.
  Returns:
    (the source itself when nothing is dropped, else a SubsetSource of the kept records;
    the dropped names in record order).
  Raises:
    ValueError: names does not match the source, or every record is an evaluation clip.
  """
  if len(names) != len(source):
    raise ValueError(f"{what}: {len(names)} names for {len(source)} records.")
  keep, dropped = eval_overlap(names, eval_names)
  check_processes_agree(digest([names[int(i)] for i in keep]), what)
  if not dropped:
    return source, []
  if not len(keep):
    raise ValueError(f"{what}: all {len(names)} clips are in the evaluation source "
                     f"{eval_what}, so none is left to train on; point one of the two at "
                     "other data.")
  shown = ", ".join(dropped[:log_names])
  more = f" and {len(dropped) - log_names} more" if len(dropped) > log_names else ""
  logging.warning("%s: dropped %d of %d clips that are in the evaluation source %s: %s%s",
                  what, len(dropped), len(names), eval_what, shown, more)
  return SubsetSource(source, keep), dropped
