"""A run folder resumes after `mv` or `cp -r`: the dataset build and feature cache are found
again under the new path (identified by content, not location), and the saved input position
restores onto them, giving the same batches as an uninterrupted run (before the fix the grain
state held the feature cache's absolute path, so every step was 'unreadable' and the message
advised deleting the step folders)."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax.checkpoints import manager
from affect_jax.data import builders, features, pipeline, prompts, synthetic
from affect_jax.data import tokenizer as tok_lib
from tests.testlib import data as data_testlib
from configs.checkpoint import get_checkpoint_config
from configs import data as data_config


def _cfg():
  return data_testlib.small_data_config(train=8, rl=2, test=2)


def _open(workdir, cfg):
  """What a run does at start: the demo data, its build, the feature cache, a loader."""
  src = synthetic.ensure_demo_data(str(workdir / "data" / "src"), cfg.synthetic)
  report = builders.build("demo", src, str(workdir / "data" / "built"), cfg,
                          data_config.builder_config(), ("train",))
  source, meta = builders.load_source(report["path"], "train")
  key = features.checkpoint_key({"w": np.ones(2, np.float32)}, "encoders")
  cache = features.build_feature_cache(
      source, meta, report["path"], "train", key, lambda f: f.mean(axis=(2, 3)),
      lambda w: np.stack([w.mean(-1), w.std(-1)], -1), cfg, batch_size=4)
  fsource = features.FeatureSource(builders.load_source(report["path"], "train",
                                                        skip_media=True)[0], cache)
  rows = synthetic.read_split(src, "train", cfg.synthetic)
  texts = [prompts.example_text(r["english"], [r["openset"]], r["reason"], cfg.prompt,
                                dict(cfg.tokenizer.special_tokens)) for r in rows]
  tok = tok_lib.build_from_config(texts, cfg.tokenizer)
  p = data_config.pipeline_config()
  p.batch_size, p.shuffle, p.seed, p.num_epochs = 2, True, 3, 0
  return report["path"], pipeline.sft_loader(fsource, meta, tok, cfg, p)


def _state(step):
  return {"step": jnp.int32(step), "w": jnp.full((3,), float(step)),
          "rng": jax.random.key(step)}


def _names(batches):
  return [[str(n) for n, m in zip(b["names"], b["example_mask"]) if m] for b in batches]


@pytest.mark.parametrize("how", ["mv", "cp -r"])
def test_moved_workdir_resumes_with_the_same_input(tmp_path, how):
  cfg = _cfg()
  first = tmp_path / "run"
  built, loader = _open(first, cfg)
  it = iter(loader)
  for _ in range(3):
    next(it)
  ckpt_cfg = get_checkpoint_config(save_every_steps=1, async_save=False)
  with manager.Checkpointer(first / "checkpoints", ckpt_cfg) as ckpt:
    ckpt.save(3, _state(3), data=it)
  expected = _names([next(it) for _ in range(4)])

  moved = tmp_path / "elsewhere" / "run"
  moved.parent.mkdir()
  if how == "mv":
    shutil.move(str(first), str(moved))
  else:
    shutil.copytree(first, moved, symlinks=True)
  built2, loader2 = _open(moved, cfg)
  # The build is reused where it now lies, not made again.
  assert os.path.relpath(built2, moved) == os.path.relpath(built, first)
  it2 = iter(loader2)
  restored = manager.Checkpointer(moved / "checkpoints", ckpt_cfg).restore_latest(
      manager.abstract(_state(0)), data_iterator=it2)
  assert restored is not None and restored.meta["step"] == 3
  assert _names([next(restored.data) for _ in range(4)]) == expected


def test_another_input_pipeline_is_named_not_called_damaged(tmp_path):
  cfg = _cfg()
  _, loader = _open(tmp_path / "run", cfg)
  it = iter(loader)
  next(it)
  ckpt_cfg = get_checkpoint_config(save_every_steps=1, async_save=False)
  with manager.Checkpointer(tmp_path / "run" / "checkpoints", ckpt_cfg) as ckpt:
    ckpt.save(1, _state(1), data=it)
  other = data_testlib.small_data_config(train=6, rl=2, test=2)      # another dataset
  _, loader2 = _open(tmp_path / "run2", other)
  with pytest.raises(ValueError, match="readable, but its saved input position") as e:
    manager.Checkpointer(tmp_path / "run" / "checkpoints", ckpt_cfg).restore_latest(
        manager.abstract(_state(0)), data_iterator=iter(loader2))
  assert "Move these step folders" not in str(e.value)
