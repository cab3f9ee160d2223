"""The overlap rule (data/overlap.py): a training source loses exactly the clips whose names are
in the evaluation source, keeps its record order, errors when nothing is left, and a grain
iterator position saved over the filtered source resumes onto a freshly filtered one."""
import logging
import os
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest

from affect_jax.data import overlap, pipeline
from configs import data as data_config

NAMES = [f"clip_{i:03d}" for i in range(23)]
EVAL = ["clip_004", "clip_011", "clip_012", "clip_022", "other_000"]


def _records(names):
  return [{"name": n, "value": np.int64(i)} for i, n in enumerate(names)]


class _Identity(grain.transforms.Map):
  def map(self, element):
    return element


def _loader(source, shard_index=0, shard_count=1):
  p = data_config.pipeline_config()
  p.batch_size, p.seed, p.shuffle, p.num_epochs = 3, 7, True, 0
  p.shard_index, p.shard_count = shard_index, shard_count
  return pipeline.make_loader(source, _Identity(), lambda ex: [e["name"] for e in ex], p)


def test_drops_exactly_the_eval_names_in_record_order():
  source = _records(NAMES)
  kept, dropped = overlap.drop_eval_clips(source, NAMES, EVAL, what="sft", eval_what="eval")
  # Reference: a numpy membership mask over the names.
  mask = ~np.isin(np.asarray(NAMES), np.asarray(EVAL))
  want = list(np.asarray(NAMES)[mask])
  assert [kept[i]["name"] for i in range(len(kept))] == want
  assert [int(kept[i]["value"]) for i in range(len(kept))] == list(np.flatnonzero(mask))
  assert dropped == list(np.asarray(NAMES)[~mask])
  assert len(kept) == 19 and len(dropped) == 4
  with pytest.raises(IndexError):
    kept[len(kept)]


def test_no_overlap_keeps_the_source_itself():
  source = _records(NAMES)
  kept, dropped = overlap.drop_eval_clips(source, NAMES, ["x", "y"], what="a", eval_what="b")
  assert kept is source and dropped == []


def test_every_clip_in_eval_is_an_error_naming_both_sources():
  source = _records(NAMES[:3])
  with pytest.raises(ValueError, match=r"config\.data\.sources\.grpo.*all 3 clips.*"
                                       r"config\.data\.sources\.eval"):
    overlap.drop_eval_clips(source, NAMES[:3], NAMES, what="config.data.sources.grpo",
                            eval_what="config.data.sources.eval")


def test_names_must_match_the_source():
  with pytest.raises(ValueError, match="2 names for 3 records"):
    overlap.drop_eval_clips(_records(NAMES[:3]), NAMES[:2], [], what="sft", eval_what="eval")


def test_the_log_names_the_dropped_clips_up_to_the_limit(caplog):
  with caplog.at_level(logging.WARNING):
    overlap.drop_eval_clips(_records(NAMES), NAMES, EVAL, what="SFTSRC", eval_what="EVALSRC",
                            log_names=2)
  text = caplog.text
  assert "SFTSRC" in text and "EVALSRC" in text and "dropped 4 of 23" in text
  assert "clip_004, clip_011 and 2 more" in text and "clip_012" not in text


def test_resume_over_a_freshly_filtered_source_continues_exactly():
  kept, _ = overlap.drop_eval_clips(_records(NAMES), NAMES, EVAL, what="a", eval_what="b")
  it = iter(_loader(kept))
  for _ in range(4):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(6)]
  again, _ = overlap.drop_eval_clips(_records(NAMES), NAMES, EVAL, what="a", eval_what="b")
  resumed = pipeline.restore_iterator(_loader(again), state)
  got = [next(resumed) for _ in range(6)]
  assert got == want
  assert not set(sum(got, [])) & set(EVAL)


def test_process_shards_of_the_filtered_source_cover_the_kept_clips_once():
  kept, dropped = overlap.drop_eval_clips(_records(NAMES), NAMES, EVAL, what="a", eval_what="b")
  seen = []
  for index in range(2):
    p = data_config.pipeline_config()
    p.batch_size, p.shuffle, p.num_epochs, p.drop_remainder = 1, False, 1, False
    p.shard_index, p.shard_count = index, 2
    loader = pipeline.make_loader(kept, _Identity(), lambda ex: ex[0]["name"], p)
    seen += list(loader)
  assert sorted(seen) == sorted(set(NAMES) - set(EVAL)) and not set(seen) & set(dropped)


def test_digest_depends_on_names_and_order():
  assert overlap.digest(["a", "b"]) == overlap.digest(["a", "b"])
  assert overlap.digest(["a", "b"]) != overlap.digest(["b", "a"])
  assert 0 <= overlap.digest(NAMES) < 2**31


_AGREE_WORKER = """
import sys
from affect_jax import distributed
from affect_jax.data import overlap
port, index, value = sys.argv[1:]
distributed.initialize(f"localhost:{port}", 2, int(index))
try:
  overlap.check_processes_agree(int(value), "SRC")
  print("agreed")
except ValueError as e:
  print(e)
"""


@pytest.mark.slow
@pytest.mark.parametrize("values,want", [((7, 7), "agreed"), ((7, 9), "kept different rows")])
def test_two_processes_must_keep_the_same_rows(values, want):
  from tests.testlib import process as process_testlib
  port = process_testlib.free_port()
  root = pathlib.Path(__file__).resolve().parents[2]
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(root)}
  procs = [subprocess.Popen([sys.executable, "-c", _AGREE_WORKER, str(port), str(i), str(v)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, cwd=root)
           for i, v in enumerate(values)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert want in out and (want == "agreed" or "SRC" in out), out
