"""A damaged newest checkpoint step is repaired when the run redoes that step: the damaged folder
is moved aside (kept) and the step is written afresh, so later readers restore it without falling
back (before the fix the save was skipped because the folder existed, and every later reader fell
back again)."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from affect_jax.checkpoints import manager
from configs.checkpoint import get_checkpoint_config


def _cfg():
  return get_checkpoint_config(save_every_steps=1, async_save=False)


def _state(value):
  params = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + value}
  return {"step": jnp.int32(value), "trainable": params,
          "opt_state": optax.adam(0.1).init(params), "rng": jax.random.key(int(value))}


def _truncate_largest(step_dir):
  path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)
  return path


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_newest_step_is_moved_aside_and_saved_again(tmp_path, caplog):
  with manager.Checkpointer(tmp_path, _cfg()) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step))
  damaged_file = _truncate_largest(tmp_path / "3")
  damaged_bytes = damaged_file.read_bytes()

  # The run resumes from step 2, redoes step 3 and saves it.
  with manager.Checkpointer(tmp_path, _cfg()) as ckpt:
    assert ckpt.restore_latest(manager.abstract(_state(0))).meta["step"] == 2
    with caplog.at_level(logging.WARNING):
      assert ckpt.save(3, _state(3.5))
  assert any("moved it to" in r.getMessage() for r in caplog.records)

  # A later reader gets the new step 3 straight away, with no fallback warning.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    restored = manager.Checkpointer(tmp_path, _cfg()).restore_latest(
        manager.abstract(_state(0)))
  assert restored.meta["step"] == 3
  np.testing.assert_array_equal(restored.state["trainable"]["w"], _state(3.5)["trainable"]["w"])
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

  # The damaged folder is kept, byte for byte, outside the step numbering.
  kept = list((tmp_path / manager.DAMAGED_DIR).iterdir())
  assert len(kept) == 1 and kept[0].name.startswith("3-")
  moved = kept[0] / damaged_file.relative_to(tmp_path / "3")
  assert moved.read_bytes() == damaged_bytes
  assert manager.Checkpointer(tmp_path, _cfg()).all_steps() == [1, 2, 3]


def test_readable_step_is_still_not_saved_twice(tmp_path):
  with manager.Checkpointer(tmp_path, _cfg()) as ckpt:
    ckpt.save(1, _state(1))
  with manager.Checkpointer(tmp_path, _cfg()) as ckpt:
    assert ckpt.restore_latest(manager.abstract(_state(0))).meta["step"] == 1
    assert not ckpt.save(1, _state(9))
  assert not (tmp_path / manager.DAMAGED_DIR).exists()
