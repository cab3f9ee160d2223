"""The overlap rule in a recipe run: SFT and GRPO sources that hold some of the evaluation
source's clips (as MER2025-OV holds the OV-MERD+ test clips) train on none of them, and
summary.json counts the dropped clips per phase.

The data: the tiny demo set, copied, with some test clips (media and table rows) added to its
train (SFT) and rl (GRPO) splits; the three sources point at the copy.
"""
import csv
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from affect_jax import experiment
from affect_jax.data import synthetic
from affect_jax.train import loop, recipe
from tests.train import recipe_mesh_worker as worker

ADDED = {"train": ("test_00000", "test_00001"), "rl": ("test_00001", "test_00002", "test_00003")}


def _overlapping_copy(root: pathlib.Path, cfg) -> pathlib.Path:
  """The demo set copied to root/overlap with the ADDED test clips in its train / rl splits."""
  demo = pathlib.Path(synthetic.ensure_demo_data(str(root), cfg))
  out = root / "overlap"
  shutil.copytree(demo, out)
  for split, names in ADDED.items():
    for sub, ext in ((cfg.video_dir, ".mp4"), (cfg.audio_dir, ".wav")):
      for name in names:
        shutil.copy(out / "test" / sub / (name + ext), out / split / sub / (name + ext))
    for table in (cfg.labels_file, cfg.reasons_file, cfg.subtitles_file):
      with open(out / "test" / table, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r[0] in names]
      with open(out / split / table, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
  return out


@pytest.mark.slow
def test_eval_clips_never_reach_a_training_batch(tmp_path, monkeypatch):
  c = worker.tiny_config((1, 1, 1))
  c.data.cache_dir = str(tmp_path / "data")
  data = _overlapping_copy(tmp_path / "data", c.data.synthetic)
  for phase in ("sft", "grpo", "eval"):
    c.data.sources[phase].data_dir = str(data)
  trained = {}

  def stepless_train(*, phase, state, loader, total_steps, **_):
    """loop.train without the steps (their compiles are not what this checks): the names of
    the real rows of the `total_steps` batches the phase's loader gives, state unchanged."""
    it = iter(loader)
    for _ in range(total_steps):
      batch = next(it)
      names = np.asarray(batch["names"])[np.asarray(batch["example_mask"])]
      trained.setdefault(phase, []).extend(str(n) for n in names)
    return loop.LoopResult(state=state, step=total_steps, preempted=False, last_metrics={})

  monkeypatch.setattr(loop, "train", stepless_train)
  # Nor is held-out generation: a fixed score instead of compiling it.
  monkeypatch.setattr(recipe, "run_eval", lambda *a, **k: {"ew_f": 0.0})
  summary = recipe.run(c, tmp_path / "run", mesh=experiment.make_mesh(c, jax.devices()[:1]))

  eval_names = {f"test_{i:05d}" for i in range(c.data.synthetic.splits["test"])}
  for phase, split in (("sft", "train"), ("grpo", "rl")):
    own = {f"{split}_{i:05d}" for i in range(c.data.synthetic.splits[split])}
    # 2 steps of 8 rows over the 8 rows left: every kept clip, no evaluation clip.
    assert set(trained[phase]) == own, phase
    assert not set(trained[phase]) & eval_names, phase
  assert summary["eval_overlap_dropped"] == {"sft": 2, "grpo": 3}
  saved = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert saved["eval_overlap_dropped"] == {"sft": 2, "grpo": 3}
  assert summary["eval_clips"] == c.data.synthetic.splits["test"]

