"""Training checkpoints: the train state, the data position and a JSON record, per step, with Orbax.

  ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint, config=cfg)
  restored = ckpt.restore_latest(abstract_state, data_iterator=it)   # None on a fresh run
  if restored: state = {**state, **restored.state}; start = restored.meta["step"]
  for step in ...:
    state, metrics = step_fn(state, batch)
    ckpt.save(step, state, data=it, metrics=metrics)    # every cfg.save_every_steps, async
  ckpt.close()                                          # waits for the last write

One step directory holds (each an Orbax item):
  state/          the state dict without its frozen keys (step, trainable, opt_state, rng, ...)
  frozen/         FROZEN_KEYS ('frozen', 'reference') only when cfg.save_frozen or asked for:
                  normally those come back from the converted base checkpoint
  data/ or data_iterator/
                  the input position: a JSON dict ({'epoch': 3, 'index': 17}, the same on every
                  process) or a grain iterator's state (one file per process, grain's handler)
  meta/           JSON: step, saved keys, PRNG key implementations, array checksums, the config
                  snapshot and the metrics at save time

Typed PRNG keys (jax.random.key) are stored as their key data and re-wrapped with the recorded
implementation. Restore goes straight onto the shardings of the target (jax.ShapeDtypeStruct
leaves with .sharding), so a checkpoint saved on a (2, 4) mesh restores on (4, 2) or one device.
A step that cannot be read (a save cut short, a truncated or deleted file, a checksum mismatch) is
skipped with a warning for the previous one; when the run reaches that step again, the damaged
folder is moved to damaged/STEP-TIME (kept, not deleted) and the step is saved afresh.
A save that fails because the disk is full raises one CheckpointNoSpace naming the folder (from
save, wait_until_finished or close, whichever first meets it); the step's partial temporary folder
is removed, earlier steps stay as they were, and Orbax's background threads' copies of the error
are kept out of the log.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import shutil
from typing import Any, Mapping, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from grain import checkpoint as grain_checkpoint
from jax.experimental import multihost_utils

from affect_jax import diskspace
from affect_jax.checkpoints import params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError

FORMAT = "affect_jax.train_checkpoint"
FROZEN_KEYS = ("frozen", "reference")
_ARRAY_ITEMS = ("state", "frozen")
DAMAGED_DIR = "damaged"   # unreadable steps moved aside when they are saved again
_ITEM_HANDLERS = {
    "state": ocp.PyTreeCheckpointHandler,
    "frozen": ocp.PyTreeCheckpointHandler,
    "data": ocp.JsonCheckpointHandler,
    "data_iterator": grain_checkpoint.CheckpointHandler,
    "meta": ocp.JsonCheckpointHandler,
}
_GOLDEN = np.uint32(0x9E3779B1)    # odd multiplier that spreads element positions over 32 bits


class Restored(NamedTuple):
  """What `restore_latest` returns; unpacks as `state, data, meta = restored`."""
  state: dict      # the target's keys that were saved, on the target's shardings
  data: Any        # the JSON dict, the grain iterator (its state set), or None
  meta: dict       # the meta/ record (meta['step'] is the step)


class CheckpointNoSpace(CheckpointError, diskspace.DiskFullError):
  """A save failed because the disk is full (a CheckpointError and a DiskFullError)."""


class _UsageError(ValueError):
  """A wrong call (target or arguments), raised at once instead of trying older steps."""


class Checkpointer:
  """Saves and restores training checkpoints in `directory` (one numbered folder per step).

  Args:
    directory: the checkpoint folder (created if missing), e.g. WORKDIR/checkpoints.
    cfg: configs/checkpoint.py section (save_every_steps, keep, keep_period, async_save,
      save_frozen, verify_checksums).
    config: optional experiment config (ConfigDict or dict) recorded in every step's meta.
    read_only: open for restoring only (nothing is created, cleaned up or deleted).
  """

  def __init__(self, directory: str | os.PathLike, cfg: ml_collections.ConfigDict, *,
               config: Any = None, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self.cfg = cfg
    if cfg.save_every_steps < 1:
      raise ValueError(f"checkpoint.save_every_steps={cfg.save_every_steps}: must be >= 1.")
    self._config = _jsonable(config) if config is not None else None
    # Saves that never finished (the process died mid-write) leave temporary folders; note
    # them before Orbax removes them, so restore can say why the newest step is missing.
    self._unfinished = _unfinished_steps(self.directory)
    # Steps restore_latest found unreadable: saving such a step again moves the damaged
    # folder aside (DAMAGED_DIR) instead of skipping the save.
    self._damaged: set[int] = set()
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=bool(cfg.async_save),
        preservation_policy=_preservation_policy(cfg),
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
        save_interval_steps=0 if read_only else 1)
    self._mgr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={name: cls() for name, cls in _ITEM_HANDLERS.items()})
    # Steps handed to Orbax and not yet known to be on disk; the disk-full error already raised.
    self._pending: list[int] = []
    self._no_space: CheckpointNoSpace | None = None
    diskspace.quiet_background_disk_full_logs()

  # -- bookkeeping ---------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Finished steps, oldest first."""
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    return step % self.cfg.save_every_steps == 0

  def wait_until_finished(self) -> None:
    """Blocks until background writes are on disk (raises the error of a failed one)."""
    self._orbax(self._mgr.wait_until_finished)
    self._pending = []

  def close(self) -> None:
    """Waits for the last write and closes; a full disk already raised is not raised again."""
    reported = self._no_space is not None
    try:
      self.wait_until_finished()
    except CheckpointNoSpace:
      if not reported:
        raise
    finally:
      try:
        self._mgr.close()
      except Exception as e:  # pylint: disable=broad-except
        if self._no_space is None or not diskspace.is_disk_full(e):
          raise

  def _orbax(self, call, *args, **kwargs):
    """Runs an Orbax call that may meet a failed write; a full disk becomes CheckpointNoSpace."""
    try:
      result = call(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless the disk is full)
      if not diskspace.is_disk_full(e):
        raise
      if self._no_space is None:
        self._no_space = self._disk_full(e)
        diskspace.background_disk_full_reported()
      raise self._no_space from e
    return result

  def _disk_full(self, error: BaseException) -> CheckpointNoSpace:
    """The error for a save the full disk stopped: its unfinished steps' temporary folders are
    removed (process 0; they only hold space), finished steps are left as they are."""
    self._mgr.reload()
    kept = self.all_steps()
    lost = sorted(s for s in self._pending if s not in kept)
    partial = {}
    for name in ocp.path.step.tmp_checkpoints(self.directory):
      try:
        step = ocp.path.step.step_from_checkpoint_name(name)
      except ValueError:
        continue
      if step in lost:
        partial[step] = self.directory / name
    if jax.process_index() == 0:
      for path in partial.values():
        shutil.rmtree(path, ignore_errors=True)
    self._pending = []
    failed = sorted(partial) or lost
    resume = (f"Nothing was overwritten: the saved steps {kept} are intact and a rerun resumes "
              f"from step {kept[-1]}." if kept else "No step was saved before it; a rerun starts "
              "the phase afresh.")
    return CheckpointNoSpace(
        f"{self.directory}: no space left on device while saving checkpoint step"
        f"{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed)) or '?'} "
        f"({diskspace.first_line(diskspace.disk_full_cause(error))[:200]}). {resume} Free "
        "space there (or lower checkpoint.keep) and run again.")

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- save ----------------------------------------------------------------------------------

  def save(self, step: int, state: Mapping[str, Any], *, data: Any = None,
           metrics: Mapping[str, Any] | None = None, force: bool = False,
           with_frozen: bool | None = None, wait: bool = False) -> bool:
    """Saves `state` as step `step` when `should_save(step)` or `force`; returns whether it did.

    Args:
      step: the step number (the folder name); a step already on disk is not written again.
      state: the train state dict, e.g. {'step', 'trainable', 'frozen', 'opt_state', 'rng'};
        any sharding; PRNG key leaves are typed keys (jax.random.key).
      data: the input position: a JSON-able dict, or a grain iterator (DatasetIterator or
        DataLoaderIterator; its state is read now, before this returns).
      metrics: scalars recorded in meta (device scalars are fetched).
      force: save regardless of cfg.save_every_steps (preemption, end of training).
      with_frozen: also save FROZEN_KEYS (default cfg.save_frozen).
      wait: block until the step (and any earlier one still being written) is on disk, e.g.
        before exiting on preemption.
    """
    if not (force or self.should_save(step)):
      return False
    if step in self._damaged and step in self._mgr.all_steps():
      self._quarantine(step)
    if step in self._mgr.all_steps():
      logging.info("checkpoint step %d is already in %s; not saving it again.", step,
                   self.directory)
      if wait:
        self.wait_until_finished()
      return False
    with_frozen = self.cfg.save_frozen if with_frozen is None else with_frozen
    trees = {"state": {k: v for k, v in state.items() if k not in FROZEN_KEYS}}
    frozen = {k: state[k] for k in FROZEN_KEYS if k in state}
    if with_frozen and frozen:
      trees["frozen"] = frozen
    args, meta = {}, {
        "format": FORMAT, "step": int(step), "items": sorted(trees),
        "keys": {name: sorted(tree) for name, tree in trees.items()},
        "key_impls": {}, "checksums": {},
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "process_count": jax.process_count(),
        "config": self._config, "metrics": _jsonable(dict(metrics or {}))}
    for name, tree in trees.items():
      storable, meta["key_impls"][name] = _keys_to_data(tree)
      if self.cfg.verify_checksums:
        meta["checksums"][name] = checksums(storable)
      args[name] = ocp.args.PyTreeSave(storable)
    if data is not None:
      if hasattr(data, "get_state") and hasattr(data, "set_state"):
        args["data_iterator"] = grain_checkpoint.CheckpointSave(data)
        meta["items"].append("data_iterator")
      elif isinstance(data, Mapping):
        args["data"] = ocp.args.JsonSave(_jsonable(dict(data)))
        meta["items"].append("data")
      else:
        raise TypeError(f"save(data={type(data).__name__}): pass a JSON-able dict or a grain "
                        "iterator (with get_state/set_state).")
    args["meta"] = ocp.args.JsonSave(meta)
    if self._no_space is not None:
      raise self._no_space
    self._pending.append(step)
    # Raises for this step, or for an earlier one still being written (Orbax waits for it).
    self._orbax(self._mgr.save, step, args=ocp.args.Composite(**args), force=True)
    self._pending = [step] if self.cfg.async_save else []
    if wait:
      self.wait_until_finished()
    return True

  def _quarantine(self, step: int) -> None:
    """Moves the unreadable folder of `step` to DAMAGED_DIR/STEP-TIME (one atomic rename by
    process 0; nothing is deleted), so the step can be written again."""
    self._mgr.wait_until_finished()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = self.directory / DAMAGED_DIR / f"{step}-{stamp}"
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      os.rename(self.directory / str(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"affect_jax_quarantine_{step}")
    self._mgr.reload()
    self._damaged.discard(step)
    logging.warning("checkpoint step %d in %s was unreadable; moved it to %s and saving the "
                    "step again.", step, self.directory, target)

  # -- restore -------------------------------------------------------------------------------

  def read_meta(self, step: int) -> dict:
    """The meta/ record of one step."""
    meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise CheckpointError(f"{self.directory}/{step}/meta: not an {FORMAT} record.")
    return meta

  def restore(self, step: int, target: Mapping[str, Any], *, data_iterator: Any = None,
              restore_data: bool = True) -> Restored:
    """Restores one step onto the target's shardings (see `restore_latest`)."""
    target = abstract(target)
    meta = self.read_meta(step)
    args = {}
    for name in _ARRAY_ITEMS:
      if name not in meta["items"]:
        continue
      stored = set(meta["keys"][name])
      wanted = {k: v for k, v in target.items() if k in stored}
      if name == "state":
        expected = {k for k in target if k not in FROZEN_KEYS}
        if expected != stored:
          raise _UsageError(
              f"{self.directory}/{step}: the checkpoint's state has keys {sorted(stored)} but "
              f"the restore target has {sorted(expected)} (besides {FROZEN_KEYS}); build the "
              "target from the same kind of state the run saved.")
      if wanted:
        storable = _keys_to_abstract_data(wanted, meta["key_impls"][name])
        args[name] = ocp.args.PyTreeRestore(
            storable, restore_args=ocp.checkpoint_utils.construct_restore_args(storable))
    if restore_data and "data" in meta["items"]:
      args["data"] = ocp.args.JsonRestore()
    if restore_data and "data_iterator" in meta["items"]:
      if data_iterator is None:
        raise _UsageError(
            f"{self.directory}/{step} holds a grain iterator's position; pass "
            "data_iterator=<a fresh iterator of the same pipeline> to restore it (or "
            "restore_data=False to start the input afresh).")
      saved_by = meta.get("process_count", 1)
      if saved_by != jax.process_count():
        raise _UsageError(
            f"{self.directory}/{step}: the grain iterator's position was saved by {saved_by} "
            f"processes (one state each) but this run has {jax.process_count()}; resume with "
            f"{saved_by} processes, or pass restore_data=False to start the input afresh.")
      args["data_iterator"] = grain_checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._mgr.restore(step, args=ocp.args.Composite(**args))
    except ValueError as e:
      if "data_iterator" in args and "does not match" in str(e):
        raise _UsageError(
            f"{self.directory}/{step}: the step is readable, but its saved input position "
            f"belongs to another input pipeline ({_first_line(e)}). Resume with the data "
            "settings that saved it (dataset, split, batch size, seed, workers), or start the "
            "input afresh (restore_data=False).") from e
      raise
    state = {}
    for name in _ARRAY_ITEMS:
      if name not in args:
        continue
      tree = restored[name]
      if self.cfg.verify_checksums and name in meta.get("checksums", {}):
        _verify(checksums(tree), meta["checksums"][name], f"{self.directory}/{step}/{name}")
      state.update(_data_to_keys(tree, meta["key_impls"][name], target))
    data = restored["data"] if "data" in args else (
        restored["data_iterator"] if "data_iterator" in args else None)
    return Restored(state, data, meta)

  def restore_latest(self, target: Mapping[str, Any], *, data_iterator: Any = None,
                     restore_data: bool = True) -> Restored | None:
    """The newest readable step, or None when the directory holds no finished step.

    Args:
      target: the state dict's abstract form: jax.ShapeDtypeStruct leaves with .sharding (or
        arrays, whose shardings are used); typed-key leaves for PRNG keys. Keys in FROZEN_KEYS
        come back only if that step saved them; otherwise the returned state lacks them (merge
        over a freshly built state: `state = {**state, **restored.state}`).
      data_iterator: a fresh grain iterator of the same pipeline, when the run saved one: its
        state is set and it is returned as `data`. Its state is per process, so resume with
        the number of processes that saved it.
      restore_data: False skips the input position (data comes back None).

    A step that fails to restore is skipped with an absl warning naming it and the reason; when
    every finished step fails, CheckpointError names the directory and each step's reason.
    """
    steps = sorted(self._mgr.all_steps(), reverse=True)
    for bad in sorted(s for s in self._unfinished if not steps or s > steps[0]):
      logging.warning("checkpoint step %d in %s was never finished (the run stopped while "
                      "saving it); restoring an earlier step.", bad, self.directory)
    if not steps:
      return None
    reasons = []
    for step in steps:
      try:
        result = self.restore(step, target, data_iterator=data_iterator,
                              restore_data=restore_data)
        error = None
      except _UsageError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any read failure = a bad step)
        result, error = None, f"{type(e).__name__}: {_first_line(e)}"
      if _all_processes_ok(error is None):
        return result
      error = error or "another process could not read it"
      self._damaged.add(step)
      reasons.append(f"step {step}: {error}")
      logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous step.",
                      step, self.directory, error)
    raise CheckpointError(
        f"{self.directory}: no readable checkpoint ({'; '.join(reasons)}). Move these step "
        f"folders out of {self.directory} (keep them for inspection) and run again to start "
        "the phase afresh.")


# -- starting from an earlier run -------------------------------------------------------------

def load_initial_params(path: str | os.PathLike, target: Mapping, init: Mapping | None = None
                        ) -> dict:
  """Parameters to start training from, read from a parameter or a training checkpoint.

  Args:
    path: a parameter checkpoint from launch.convert (meta.json + params/), or a training
      checkpoint directory (numbered step folders, e.g. an SFT run's WORKDIR/checkpoints/sft,
      or the run's WORKDIR itself: its checkpoints/grpo, else checkpoints/sft): its newest
      readable step's trainable (and, if saved, frozen) params.
    target: the full parameter tree, abstract (jax.ShapeDtypeStruct with .sharding) or arrays.
    init: optional parameters with the target's structure supplying the leaves the checkpoint
      lacks (freshly initialised LoRA or projectors; the base weights under an SFT checkpoint
      that saved only its trainable leaves).

  Returns:
    A nested dict with the target's structure: each leaf from the checkpoint, on the target's
    sharding, where it holds one, else from `init`. Checkpoint leaves the target lacks are left.
  """
  path = pathlib.Path(path)
  target = abstract(target)
  want = flax.traverse_util.flatten_dict(dict(target))
  if (path / "meta.json").is_file():
    params_io.read_meta(path)
    found = _restore_matching(ocp.PyTreeCheckpointer(), path.absolute() / "params", want, path)
  else:
    train_dir = run_steps_folder(path)
    if train_dir is None:
      raise CheckpointError(
          f"{path}: neither a parameter checkpoint (meta.json + params/, written by "
          "`python -m launch.convert`) nor a training checkpoint directory (numbered step "
          "folders written by affect_jax.checkpoints.manager); check the path.")
    found = _restore_training_params(train_dir, want)
  if not found:
    raise CheckpointError(
        f"{path}: holds none of the requested parameters (requested top-level keys "
        f"{sorted({k[0] for k in want})}); is it a checkpoint of this model?")
  missing = [k for k in want if k not in found]
  init_flat = flax.traverse_util.flatten_dict(dict(init)) if init is not None else {}
  unfilled = [k for k in missing if k not in init_flat]
  if unfilled:
    names = ["/".join(map(str, k)) for k in unfilled]
    raise CheckpointError(
        f"{path}: has no {len(names)} of the requested parameters ({names[:4]}...); pass "
        "init=<params with the target's structure> (freshly initialised, or the converted base "
        "checkpoint) to supply them.")
  logging.info("load_initial_params: %d leaves from %s, %d from init.", len(found), path,
               len(missing))
  return flax.traverse_util.unflatten_dict({**{k: init_flat[k] for k in missing}, **found})


def _is_training_dir(path: pathlib.Path) -> bool:
  return path.is_dir() and any(p.is_dir() and p.name.isdigit() and (p / "meta").is_dir()
                               for p in path.iterdir())


RUN_PHASES = ("grpo", "sft")     # a run's checkpoint folders, newest phase first


def run_steps_folder(path: str | os.PathLike) -> pathlib.Path | None:
  """The folder of numbered steps that `path` names: itself, its checkpoints/, or, for a run's
  workdir, its checkpoints/grpo, else checkpoints/sft; None when there is none."""
  path = pathlib.Path(path)
  for folder in (path, path / "checkpoints",
                 *(path / "checkpoints" / phase for phase in RUN_PHASES)):
    if _is_training_dir(folder):
      return folder
  return None


def _restore_training_params(train_dir: pathlib.Path, want: dict) -> dict:
  """Flat {path: array} of the wanted leaves from the newest readable step's params."""
  cfg = ml_collections.ConfigDict(dict(save_every_steps=1, keep=0, keep_period=0,
                                       async_save=False, verify_checksums=True))
  ckpt = Checkpointer(train_dir, cfg, read_only=True)
  reasons = []
  for step in sorted(ckpt.all_steps(), reverse=True):
    try:
      meta = ckpt.read_meta(step)
      found = {}
      for item, key in (("frozen", "frozen"), ("state", "trainable")):
        if item in meta["items"] and key in meta["keys"][item]:
          # Orbax reads an item's metadata only through an absolute path (a relative one
          # gives None, as if the item were missing).
          found.update(_restore_matching(
              ocp.PyTreeCheckpointer(), (train_dir / str(step) / item).absolute(), want,
              train_dir,
              prefix=(key,), saved_checksums=meta.get("checksums", {}).get(item)))
      return found
    except _UsageError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (any read failure = a bad step)
      reasons.append(f"step {step}: {type(e).__name__}: {_first_line(e)}")
      logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous step.",
                      step, train_dir, reasons[-1])
  raise CheckpointError(f"{train_dir}: no readable checkpoint ({'; '.join(reasons)}).")


def _restore_matching(checkpointer, item_dir: pathlib.Path, want: dict, source, prefix=(),
                      saved_checksums: Mapping[str, int] | None = None) -> dict:
  """Flat {path: array}: the stored leaves under `prefix` whose paths (minus prefix) are in
  `want`, restored onto want's shardings ({} when none are), checked against saved_checksums."""
  stored = checkpointer.metadata(item_dir).item_metadata.tree
  for key in prefix:
    stored = stored[key]
  stored = flax.traverse_util.flatten_dict(dict(stored))
  common = {k: want[k] for k in stored if k in want}
  if not common:
    return {}
  bad = [f"{'/'.join(map(str, k))}: stored {tuple(stored[k].shape)}, wanted {v.shape}"
         for k, v in common.items() if tuple(stored[k].shape) != tuple(v.shape)]
  if bad:
    raise _UsageError(f"{source}: parameter shapes differ from the model's ({bad[:4]}); "
                      "the checkpoint is of another model size.")
  item = flax.traverse_util.unflatten_dict(common)
  for key in reversed(prefix):
    item = {key: item}
  restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
      item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True))
  if saved_checksums is not None:
    _verify(checksums(restored), saved_checksums, str(item_dir))
  for key in prefix:
    restored = restored[key]
  return flax.traverse_util.flatten_dict(restored)


# -- pieces ------------------------------------------------------------------------------------

def abstract(tree: Any) -> Any:
  """jax.ShapeDtypeStruct leaves with shardings, from arrays or already-abstract leaves."""
  def one(path, x):
    sh = getattr(x, "sharding", None)
    if sh is None:
      raise _UsageError(
          f"restore target leaf {jax.tree_util.keystr(path)} has no sharding; build it with "
          "jax.ShapeDtypeStruct(shape, dtype, sharding=...) (e.g. from "
          "grpo_step.state_shardings).")
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
  return jax.tree_util.tree_map_with_path(one, tree)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> tuple[Any, dict[str, str]]:
  """Typed PRNG key leaves -> their uint32 key data; returns {leaf path: impl name} too."""
  impls = {}
  def one(path, x):
    if _is_key(x):
      impls[jax.tree_util.keystr(path)] = str(jax.random.key_impl(x))
      return jax.random.key_data(x)
    return x
  return jax.tree_util.tree_map_with_path(one, tree), impls


def _keys_to_abstract_data(target: Any, impls: Mapping[str, str]) -> Any:
  """The restore target with key leaves replaced by their key data's ShapeDtypeStruct."""
  def one(path, x):
    name = jax.tree_util.keystr(path)
    if _is_key(x) != (name in impls):
      raise _UsageError(f"restore target leaf {name}: a PRNG key in one of the checkpoint and "
                        "the target but not in the other; use jax.random.key for both.")
    if not _is_key(x):
      return x
    data = jax.eval_shape(lambda k: jax.random.key_data(k), x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)
  return jax.tree_util.tree_map_with_path(one, target)


def _data_to_keys(tree: Any, impls: Mapping[str, str], target: Mapping) -> dict:
  """Re-wraps key data leaves with the recorded implementation."""
  def one(path, x):
    name = jax.tree_util.keystr(path)
    if name not in impls:
      return x
    key = jax.random.wrap_key_data(x, impl=impls[name])
    want = _leaf(target, path).dtype
    if key.dtype != want:
      raise _UsageError(f"PRNG key {name}: the checkpoint holds {key.dtype} keys but the target "
                        f"wants {want}; use the same jax.random.key implementation.")
    return key
  return jax.tree_util.tree_map_with_path(one, tree)


def _leaf(tree: Any, path) -> Any:
  for entry in path:
    tree = tree[entry.key] if hasattr(entry, "key") else (
        tree[entry.idx] if hasattr(entry, "idx") else getattr(tree, entry.name))
  return tree


def _fingerprint(x: jax.Array) -> jax.Array:
  """uint32 sum over elements of bits * (position * odd constant + 1), modulo 2**32.

  Integer sums wrap exactly in any order, so the value does not depend on the sharding; the
  position weight catches blocks written to the wrong place.
  """
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  position = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):
    iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
    position = position + iota * np.uint32(stride % 2**32)
    stride *= bits.shape[axis]
  return jnp.sum(bits * (position * _GOLDEN + np.uint32(1)), dtype=jnp.uint32)


_fingerprints = jax.jit(lambda tree: jax.tree.map(_fingerprint, tree))


def checksums(tree: Any) -> dict[str, int]:
  """{leaf path: 32-bit checksum} of a tree of arrays (no PRNG keys); sharding-independent."""
  values = jax.device_get(_fingerprints(tree))
  return {jax.tree_util.keystr(p): int(v)
          for p, v in jax.tree_util.tree_flatten_with_path(values)[0]}


def _verify(got: Mapping[str, int], saved: Mapping[str, int], where: str) -> None:
  bad = [k for k, v in got.items() if saved.get(k) != v]
  if bad:
    raise CheckpointError(f"{where}: checksum mismatch for {bad[:4]} (the files were damaged "
                          "after writing).")


def _preservation_policy(cfg) -> Any:
  policies = ocp.checkpoint_managers
  latest = policies.LatestN(cfg.keep if cfg.keep else None)
  if cfg.keep < 0 or cfg.keep_period < 0:
    raise ValueError(f"checkpoint.keep={cfg.keep}, keep_period={cfg.keep_period}: use >= 0.")
  if not cfg.keep_period:
    return latest
  return policies.AnyPreservationPolicy([latest, policies.EveryNSteps(cfg.keep_period)])


def _unfinished_steps(directory: pathlib.Path) -> set[int]:
  if not directory.is_dir():
    return set()
  steps = set()
  for name in ocp.path.step.tmp_checkpoints(directory):
    try:
      steps.add(ocp.path.step.step_from_checkpoint_name(name))
    except ValueError:
      continue
  return steps


def _all_processes_ok(ok: bool) -> bool:
  """True when every process got ok (one process: no communication)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else "")[:300]


def _jsonable(x: Any) -> Any:
  """JSON-safe copy: mappings, sequences, numbers, strings; arrays become lists or scalars."""
  if isinstance(x, ml_collections.ConfigDict):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(jax.device_get(x))
    return value.item() if value.ndim == 0 else value.tolist()
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  return str(x)
