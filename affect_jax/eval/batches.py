"""Evaluation batches on a mesh: clips grouped by prompt bucket, filler rows, each process's share.

  plan = plan_batches(lengths, buckets, batch_size, bucketed=True)   # [int array of rows]
  rows = compiled_rows(batch_size, mesh)     # rows of every compiled batch (>= batch_size)
  mine = local_indices(plan[i], rows)        # the set rows this process feeds of batch i
  stats = padding_stats(plan, lengths, buckets, rows)

A batch holds at most `batch_size` clips of the set (the same batches on every mesh, so the
results do not depend on it). With `bucketed` the clips are grouped by the prompt bucket their
length pads to (the smallest of `buckets` that holds it, as the pipeline pads a batch to the
bucket of its longest prompt): the buckets in increasing order, each bucket's clips in set order,
cut into batches of batch_size; without, the set is cut in order. Every batch is compiled with
`rows` rows: batch_size rounded up to a multiple of the mesh's data x fsdp devices and of the
process count, the missing rows filled with copies of the batch's first clip (filler rows:
generated, never read back). Process i of n feeds rows [i * rows / n, (i + 1) * rows / n) of
every batch (distributed.local_rows), so it reads the media of those clips only.

`padding_stats`: padding_fraction = the prompt positions of the compiled batches that hold no
token of a set clip (left padding of each row to its batch's bucket, and every position of a
filler row) / all prompt positions of the compiled batches (sum over batches of rows x bucket).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

from affect_jax import distributed
from affect_jax.data import prompts as prompts_lib


def plan_batches(lengths: Sequence[int], buckets: Sequence[int], batch_size: int,
                 bucketed: bool) -> list[np.ndarray]:
  """The set's row indices cut into batches of at most batch_size (module doc)."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1.")
  order = np.arange(len(lengths))
  if not bucketed:
    groups = [order]
  else:
    bucket = np.asarray([prompts_lib.bucket_length(int(n), buckets) for n in lengths], int)
    groups = [order[bucket == b] for b in sorted(set(bucket.tolist()))]
  return [g[start:start + batch_size] for g in groups for start in range(0, len(g), batch_size)]


def compiled_rows(batch_size: int, mesh: jax.sharding.Mesh | None) -> int:
  """batch_size rounded up to a multiple of the mesh's data x fsdp and the process count."""
  if mesh is None:
    return int(batch_size)
  step = math.lcm(int(mesh.shape["data"] * mesh.shape["fsdp"]), jax.process_count())
  return -(-int(batch_size) // step) * step


def filled(batch: np.ndarray, rows: int) -> np.ndarray:
  """The batch's row indices, then copies of its first up to `rows` (filler rows)."""
  if not 0 < len(batch) <= rows:
    raise ValueError(f"a batch of {len(batch)} clips does not fit {rows} compiled rows.")
  return np.concatenate([batch, np.repeat(batch[:1], rows - len(batch))])


def local_indices(batch: np.ndarray, rows: int, mesh: jax.sharding.Mesh | None = None
                  ) -> np.ndarray:
  """The set rows this process feeds of a batch compiled with `rows` rows (filler included)."""
  full = filled(batch, rows)
  return full if mesh is None else full[distributed.local_rows(rows)]


def padding_stats(plan: Sequence[np.ndarray], lengths: Sequence[int], buckets: Sequence[int],
                  rows: int) -> dict:
  """{padding_fraction, prompt_positions, filler_rows, batches} of a plan (module doc)."""
  lengths = np.asarray(lengths, int)
  total = real = filler = 0
  for batch in plan:
    width = prompts_lib.bucket_length(int(lengths[batch].max()), buckets)
    total += rows * width
    real += int(lengths[batch].sum())
    filler += rows - len(batch)
  return {"padding_fraction": 1.0 - real / total if total else 0.0,
          "prompt_positions": int(total), "filler_rows": int(filler), "batches": len(plan)}
