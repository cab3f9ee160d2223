"""A full disk gives one message naming the folder and 'no space left on device', keeps nothing
half-written, and loses nothing already saved:
- demo data generation: one DiskFullError naming the data folder (before the fix: libsndfile's
  'System error.', OpenCV's 'cannot write fourcc', a bare OSError, or a silently truncated mp4);
  no folder is left that a later run would take as complete, and a run with room regenerates it;
- a checkpoint save: one CheckpointError naming the checkpoint folder, no Orbax background
  tracebacks in the log, the earlier steps restore, no half-written step is left behind;
- the launchers: `launch.grpo: error: <folder>: no space left on device ...`, exit 1, no traceback.

The full disk is a small tmpfs the test mounts (root only; skipped with the reason otherwise),
or an ENOSPC injected into Python's writes.
"""
import builtins
import errno
import gc
import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax import diskspace
from affect_jax.checkpoints import manager
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.data import synthetic
from configs import data as data_config
from configs.checkpoint import get_checkpoint_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
KIB = 1024


def _mount(folder: pathlib.Path, size_kib: int) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}); "
                "run as root to test a real full disk")


@pytest.fixture
def small_disk(tmp_path):
  """mount(size_kib[, folder]) -> a folder on a tmpfs of that size; resize(size_kib) grows it."""
  mounted = []

  def mount(size_kib, folder=tmp_path / "disk"):
    _mount(folder, size_kib)
    mounted.append(folder)
    return folder

  def resize(size_kib):
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(mounted[-1])], check=True)

  mount.resize = resize
  yield mount
  for f in mounted:
    subprocess.run(["umount", str(f)], check=False)


def _fill(folder: pathlib.Path, leave_bytes: int) -> None:
  """Fills the file system of `folder` up to `leave_bytes` free."""
  free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
  with open(folder / "filler", "wb") as f:
    f.write(b"\0" * max(free - leave_bytes, 0))


def _demo_cfg():
  cfg = data_config.synthetic_config()
  cfg.splits = dict(train=6, rl=3, test=3)
  return cfg


def _no_leftovers(root: pathlib.Path):
  return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# -- demo data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size_kib", [256, 1024])
def test_demo_data_on_a_full_disk_is_one_message_and_nothing_kept(small_disk, size_kib):
  disk = small_disk(size_kib)
  root = disk / "data"
  with pytest.raises(diskspace.DiskFullError) as info:
    synthetic.ensure_demo_data(str(root), _demo_cfg())
  text = str(info.value)
  assert text.startswith(f"{root}: no space left on device"), text
  assert "\n" not in text
  # Nothing is left that a later run would take as the dataset, and no space is held.
  assert _no_leftovers(root) == []

  # With room, the next run generates the whole set.
  small_disk.resize(64 * 1024)
  path = synthetic.ensure_demo_data(str(root), _demo_cfg())
  for split, n in _demo_cfg().splits.items():
    rows = synthetic.read_split(path, split, _demo_cfg())
    assert len(rows) == n
    for r in rows:
      assert os.path.getsize(r["video"]) > 0 and os.path.getsize(r["audio"]) > 0


@pytest.mark.parametrize("leave", [0, 12 * KIB])
def test_video_writer_on_a_full_disk_raises_enospc(small_disk, leave):
  """OpenCV's writer does not open (no room at all) or leaves a file without its index
  (some room): both are ENOSPC naming the file, not a fourcc complaint or a silent success."""
  disk = small_disk(256)
  _fill(disk, leave)
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
  path = disk / "clip.mp4"
  with pytest.raises(OSError) as info:
    synthetic._write_video(str(path), frames, _demo_cfg())
  assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)


def _inject_enospc(monkeypatch, under: pathlib.Path, after_files: int):
  """builtins.open raises ENOSPC for writes under `under` once `after_files` were opened."""
  real_open = builtins.open
  opened = []

  def fake_open(file, mode="r", *args, **kwargs):
    if (isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax")
        and str(os.path.abspath(file)).startswith(str(under))):
      opened.append(file)
      if len(opened) > after_files:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_open(file, mode, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", fake_open)
  return opened


@pytest.mark.parametrize("after_files", [0, 3])
def test_demo_data_with_injected_enospc(tmp_path, monkeypatch, after_files):
  """The same without root: Python's writes (media or tables) fail with ENOSPC."""
  root = tmp_path / "data"
  opened = _inject_enospc(monkeypatch, tmp_path, after_files)
  with pytest.raises(diskspace.DiskFullError) as info:
    synthetic.ensure_demo_data(str(root), _demo_cfg())
  assert len(opened) == after_files + 1
  assert str(info.value).startswith(f"{root}: no space left on device")
  assert _no_leftovers(root) == []
  monkeypatch.undo()
  path = synthetic.ensure_demo_data(str(root), _demo_cfg())
  assert len(synthetic.read_split(path, "train", _demo_cfg())) == 6


# -- checkpoints -------------------------------------------------------------------------------

def _state(value, n):
  w = jax.random.normal(jax.random.key(value), (n,), jnp.float32)   # incompressible
  return {"step": jnp.int32(value), "trainable": {"w": w}, "rng": jax.random.key(value)}


@pytest.mark.parametrize("async_save", [True, False])
def test_checkpoint_save_on_a_full_disk(small_disk, caplog, async_save):
  disk = small_disk(2 * KIB)
  folder = disk / "checkpoints"
  cfg = get_checkpoint_config(save_every_steps=1, async_save=async_save, keep=0)
  small, big = 1000, 1_000_000        # 4 KB steps fit, a 4 MB one does not
  caught = []
  with caplog.at_level(logging.WARNING):
    try:
      with manager.Checkpointer(folder, cfg) as ckpt:
        ckpt.save(1, _state(1, small), data={"i": 1})
        ckpt.save(2, _state(2, small), data={"i": 2})
        ckpt.wait_until_finished()
        ckpt.save(3, _state(3, big), data={"i": 3})
        ckpt.save(4, _state(4, small), data={"i": 4})
    except CheckpointError as e:
      caught.append(e)
    del ckpt
    gc.collect()    # asyncio logs the unretrieved failed futures of the write when collected
  assert len(caught) == 1
  text = str(caught[0])
  assert text.startswith(f"{folder}: no space left on device while saving checkpoint step 3")
  assert "\n" not in text and "[1, 2]" in text
  assert isinstance(caught[0], diskspace.DiskFullError)
  # Orbax's background threads' copies of the error are not logged (one message in all).
  noisy = [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.ERROR]
  assert noisy == []
  # Nothing half-written is left, and the earlier steps restore with their values.
  assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]
  fresh = manager.Checkpointer(folder, get_checkpoint_config(save_every_steps=1))
  restored = fresh.restore_latest(manager.abstract(_state(0, small)))
  assert restored.meta["step"] == 2 and restored.data == {"i": 2}
  np.testing.assert_array_equal(restored.state["trainable"]["w"],
                                np.asarray(_state(2, small)["trainable"]["w"]))
  fresh.close()


# -- launchers ---------------------------------------------------------------------------------

def test_launcher_says_disk_full_in_one_line(small_disk, tmp_path):
  disk = small_disk(256)
  workdir = disk / "run"
  r = subprocess.run(
      [sys.executable, "-m", "launch.grpo", f"--workdir={workdir}",
       "--config.data.synthetic.splits.train=8", "--config.data.synthetic.splits.rl=4",
       "--config.data.synthetic.splits.test=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert r.returncode == 1, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith(f"launch.grpo: error: {workdir / 'data'}: no space left on device")
  assert "Traceback" not in r.stderr


# -- feature cache -----------------------------------------------------------------------------

_FEATURES = """
import sys
import numpy as np
from affect_jax import diskspace
from affect_jax.data import builders, features
from configs import data as data_config
c = data_config.get_data_config()
source, meta = builders.load_source(sys.argv[1], "train")
wide = lambda x: np.repeat(x.reshape(x.shape[0], x.shape[1], -1)[..., :1], int(sys.argv[2]), -1)
try:
  print(features.build_feature_cache(source, meta, sys.argv[1], "train", "key", wide, wide, c,
                                     batch_size=4))
except diskspace.DiskFullError as e:
  print(e)
  sys.exit(3)
"""


def test_feature_cache_on_a_full_disk(small_disk, tmp_path):
  """The cache's memory maps on a full disk: one message naming the cache folder (before the
  fix the process died of SIGBUS when it first wrote a page), and nothing is left behind."""
  cfg = data_config.get_data_config()
  cfg.synthetic.splits = dict(train=4, rl=1, test=1)
  src = synthetic.ensure_demo_data(str(tmp_path / "src"), cfg.synthetic)
  from affect_jax.data import builders
  built = builders.build("demo", src, str(tmp_path / "built"), cfg, data_config.builder_config(),
                         ("train",))["path"]
  disk = small_disk(64)
  os.symlink(disk, pathlib.Path(built) / "features")   # the cache goes onto the small disk
  width = 4096                        # 4 clips x 8 x 4096 float32 = 512 KB per array
  run = lambda: subprocess.run([sys.executable, "-c", _FEATURES, built, str(width)], cwd=ROOT,
                               capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  r = run()
  assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
  key_dir = next((disk).iterdir())
  assert r.stdout.strip().startswith(f"{pathlib.Path(built) / 'features' / key_dir.name}: "
                                     "no space left on device")
  assert list(key_dir.iterdir()) == []
  small_disk.resize(4 * KIB)
  r = run()
  assert r.returncode == 0, r.stderr[-2000:]
  assert np.load(pathlib.Path(r.stdout.strip()) / "video.npy").shape == (4, 8, width)


_SAVE_MANY = """
import gc, os, sys
import jax, jax.numpy as jnp
from affect_jax.checkpoints import manager
from configs.checkpoint import get_checkpoint_config
folder = sys.argv[1]
state = {"trainable": {f"w{i}": jax.random.normal(jax.random.key(i), (1000,)) for i in range(100)}}
ckpt = manager.Checkpointer(folder, get_checkpoint_config(save_every_steps=1))
try:
  ckpt.save(1, state)
  ckpt.close()
except Exception as e:
  print(e, file=sys.stderr)
  sys.exit(1)
finally:
  del ckpt
  gc.collect()
"""


def test_checkpoint_disk_full_prints_one_line(small_disk):
  """Many arrays written at once onto a full disk: Orbax's threads, asyncio's unretrieved
  futures and tensorstore's callbacks into the closed event loop print nothing; the one error
  does (before the fix dozens of tracebacks did)."""
  disk = small_disk(64)
  r = subprocess.run([sys.executable, "-c", _SAVE_MANY, str(disk / "checkpoints")], cwd=ROOT,
                     capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert r.returncode == 1, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith(f"{disk / 'checkpoints'}: no space left on device while saving "
                             "checkpoint step 1")


# -- dataset build -----------------------------------------------------------------------------

def test_dataset_build_on_a_full_disk(small_disk, tmp_path):
  """TFDS fails with a RuntimeError wrapping the write error: one DiskFullError naming the
  output folder (before: 'a folder of this run' at best), nothing kept, the next run builds."""
  from affect_jax.data import builders
  cfg = data_config.get_data_config()
  cfg.synthetic.splits = dict(train=8, rl=1, test=1)
  src = synthetic.ensure_demo_data(str(tmp_path / "src"), cfg.synthetic)
  out = small_disk(200) / "built"
  with pytest.raises(diskspace.DiskFullError) as info:
    builders.build("demo", src, str(out), cfg, data_config.builder_config(), ("train",))
  assert str(info.value).startswith(f"{out}: no space left on device while building the demo")
  assert [p for p in out.rglob("*") if p.is_file()] == []
  small_disk.resize(64 * KIB)
  report = builders.build("demo", src, str(out), cfg, data_config.builder_config(), ("train",))
  assert not report["reused"] and report["splits"]["train"]["kept"] == 8


def test_message_names_the_folder_of_other_writes():
  """Writes without their own message (logs, TensorBoard, libraries) are named by their file."""
  e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/demo/metrics.jsonl")
  assert diskspace.message(e).startswith("/runs/demo: no space left on device")
  e = RuntimeError("write() failed: No space left on device; writing /out/x/part-0.rec")
  assert diskspace.message(e).startswith("/out/x: no space left on device")
  assert not diskspace.is_disk_full(OSError(errno.EACCES, "Permission denied", "/x"))


def test_training_loop_on_a_full_disk_stops_once_and_resumes(small_disk, tmp_path):
  """The loop's background save fails: train() raises the one CheckpointError (the loop's own
  closing of the Checkpointer does not raise it again), and with room the rerun resumes from the
  last saved step."""
  import ml_collections
  from affect_jax.train import loop
  workdir = tmp_path / "run"
  small_disk(1536, workdir / "checkpoints" / "sft")     # room for one 1 MB step
  config = ml_collections.ConfigDict({"checkpoint": get_checkpoint_config(save_every_steps=1)})
  w = jax.random.normal(jax.random.key(0), (250_000,), jnp.float32)
  state = {"step": jnp.int32(0), "trainable": {"w": w}, "rng": jax.random.key(1)}
  step_fn = lambda s, b: ({**s, "step": s["step"] + 1, "trainable": {"w": s["trainable"]["w"] + 1}},
                          {"loss": jnp.float32(0.5)})
  run = lambda: loop.train(phase="sft", step_fn=step_fn, state=state, loader=[{}] * 8,
                           total_steps=4, workdir=workdir, config=config, log_every=1)
  with pytest.raises(CheckpointError) as info:
    run()
  assert str(info.value).startswith(f"{workdir / 'checkpoints' / 'sft'}: no space left on device")
  assert sorted(p.name for p in (workdir / "checkpoints" / "sft").iterdir()) == ["1"]
  small_disk.resize(16 * KIB)
  result = run()
  assert result.step == 4 and not result.preempted
  want = np.asarray(w)
  for _ in range(4):             # step 1 restored, then steps 2..4 redone: four additions
    want = want + np.float32(1)
  np.testing.assert_array_equal(np.asarray(result.state["trainable"]["w"]), want)


@pytest.mark.slow
def test_sft_launcher_checkpoint_on_a_full_disk(small_disk, tmp_path):
  """launch.sft end to end (tiny demo, 2 steps) with its checkpoint folder on a full disk: one
  line naming the folder, exit 1, not one traceback (before: dozens from Orbax's threads)."""
  workdir = tmp_path / "run"
  ckpt_dir = small_disk(64, workdir / "checkpoints" / "sft")
  r = subprocess.run(
      [sys.executable, "-m", "launch.sft", f"--workdir={workdir}",
       "--config.data.synthetic.splits.train=8", "--config.data.synthetic.splits.rl=4",
       "--config.data.synthetic.splits.test=4", "--config.sft.steps=2",
       "--config.sft.batch_size=4", "--config.checkpoint.save_every_steps=1",
       "--config.features.batch_size=4", "--config.eval.batch_size=4", "--config.seeds=()"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert r.returncode == 1, r.stderr[-3000:]
  assert f"\nlaunch.sft: error: {ckpt_dir}: no space left on device while saving checkpoint " \
         "step 1" in r.stderr, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr
  assert list(ckpt_dir.iterdir()) == []
