"""Evaluation batches (affect_jax/eval/batches.py): grouping by prompt bucket, compiled rows on a
mesh, each process's rows and the padding fraction, against hand-worked examples."""
import jax
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.eval import batches

BUCKETS = (4, 8, 16)
# Prompt lengths of 7 clips in set order; their buckets: 8, 4, 16, 4, 8, 4, 16.
LENGTHS = [5, 3, 12, 4, 8, 1, 9]


def test_batches_group_clips_of_one_bucket_in_set_order():
  plan = batches.plan_batches(LENGTHS, BUCKETS, 2, bucketed=True)
  # bucket 4: clips 1, 3, 5; bucket 8: 0, 4; bucket 16: 2, 6.
  assert [b.tolist() for b in plan] == [[1, 3], [5], [0, 4], [2, 6]]
  plan = batches.plan_batches(LENGTHS, BUCKETS, 3, bucketed=False)
  assert [b.tolist() for b in plan] == [[0, 1, 2], [3, 4, 5], [6]]
  with pytest.raises(ValueError, match="exceeds the largest bucket"):
    batches.plan_batches([17], BUCKETS, 2, bucketed=True)


def test_padding_fraction_counts_left_padding_and_filler_rows():
  plan = batches.plan_batches(LENGTHS, BUCKETS, 2, bucketed=True)
  stats = batches.padding_stats(plan, LENGTHS, BUCKETS, rows=4)
  # Compiled positions: 4 rows x (4 + 4 + 8 + 16) = 128; real tokens: sum(LENGTHS) = 42.
  assert stats["prompt_positions"] == 128 and stats["filler_rows"] == 4 * 4 - 7
  assert stats["padding_fraction"] == pytest.approx(1 - 42 / 128)
  unbucketed = batches.padding_stats(batches.plan_batches(LENGTHS, BUCKETS, 2, False),
                                     LENGTHS, BUCKETS, rows=2)
  # Batches [0, 1] [2, 3] [4, 5] [6]: widths 8, 16, 8, 16 -> 2 x 48 = 96 positions.
  assert unbucketed["padding_fraction"] == pytest.approx(1 - 42 / 96)
  bucketed = batches.padding_stats(plan, LENGTHS, BUCKETS, rows=2)
  assert bucketed["padding_fraction"] == pytest.approx(1 - 42 / 64)
  assert bucketed["padding_fraction"] < unbucketed["padding_fraction"]


def test_compiled_rows_split_the_mesh_and_filler_rows_follow_the_clips():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes them)")
  assert batches.compiled_rows(3, None) == 3
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert batches.compiled_rows(3, mesh) == 4 and batches.compiled_rows(4, mesh) == 4
  assert batches.compiled_rows(5, mesh) == 8
  assert batches.local_indices(np.array([7, 2, 5]), 4, mesh).tolist() == [7, 2, 5, 7]
  assert batches.local_indices(np.array([9]), 3).tolist() == [9, 9, 9]
  with pytest.raises(ValueError, match="does not fit 2 compiled rows"):
    batches.filled(np.array([1, 2, 3]), 2)
