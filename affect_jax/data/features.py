"""Feature cache: run the frozen encoders once over a built dataset, store the features beside it.

The vision and audio towers are frozen in AffectGPT(-R1) training, so their outputs can be
computed once per clip and reused every epoch (and by every GRPO rollout):

  key = checkpoint_key(params["vision"], params["audio"])     # or any strings naming them
  path = build_feature_cache(source, meta, dataset_path, "train", key, video_fn, audio_fn, cfg)
  base, meta = builders.load_source(dataset_path, "train", skip_media=True)
  source = FeatureSource(base, path)      # examples with video_features / audio_features
  loader = pipeline.sft_loader(source, meta, tokenizer, cfg)   # batches: video, audio

Layout: <dataset_path>/features/<hash of key and cfg.media>/<split>/ with
  video.npy  float32[N, F, Dv]   (video_fn of the CLIP-normalised frames)
  audio.npy  float32[N, K, Da]   (audio_fn of the K windows)
  names.json [N] clip names, row i = record i of the split (checked on every read)
  meta.json  key, split, shapes, the media settings used.
The folder is written under a temporary name and renamed when complete; an existing cache
with the same key and media settings is reused. The arrays' disk space is reserved when they are
created, so a full disk is one diskspace.DiskFullError naming the folder (not SIGBUS when a
page of the memory map is first written), and the temporary folder is removed. The key should change whenever the encoder
weights change (checkpoint_key hashes whatever it is given); the media settings (resize,
sampling, HuBERT input normalisation, ...) are added to it here.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import threading
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from affect_jax import diskspace, distributed
from affect_jax.data import pipeline

# Guards the lazy open of the cache: grain's reader threads may ask at once, and CPython 3.11's
# ast.literal_eval (np.load parses the .npy header with it) is not thread-safe before 3.11.8
# ("AST constructor recursion depth mismatch", CPython gh-106905).
_OPEN_LOCK = threading.Lock()

MEDIA_KEYS = ("frames", "audio", "visual_path", "audio_path")
EncoderFn = Callable[[np.ndarray], Any]


def checkpoint_key(*parts, length: int = 16) -> str:
  """Hex digest of encoder checkpoints: pytrees of arrays (their structure, dtypes, shapes and
  bytes) and / or strings (e.g. a checkpoint path and step)."""
  h = hashlib.sha256()
  for part in parts:
    if isinstance(part, (str, bytes)):
      h.update(part.encode() if isinstance(part, str) else part)
      continue
    leaves, treedef = jax.tree.flatten(part)
    h.update(str(treedef).encode())
    for leaf in leaves:
      a = np.asarray(leaf)
      h.update(f"{a.dtype}{a.shape}".encode())
      h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:length]


def cache_dir(dataset_path: str, split: str, key: str) -> str:
  return os.path.join(dataset_path, "features", key, split)


def _media_batch(source, indices, media_cfg, meta) -> tuple[np.ndarray, np.ndarray, list[str]]:
  frames, windows, names = [], [], []
  for i in indices:
    ex = pipeline.decode_example(source[int(i)])
    m = pipeline.load_media(ex, media_cfg, meta)
    frames.append(m["frames"])
    windows.append(m["windows"])
    names.append(ex["name"])
  return np.stack(frames), np.stack(windows), names


def _allocate(path: str, shape: tuple[int, ...]) -> np.memmap:
  """A float32 .npy memory map whose blocks are reserved on disk (OSError ENOSPC here when the
  disk cannot hold it; the sparse file np.lib.format makes would fail later, with SIGBUS)."""
  array = np.lib.format.open_memmap(path, "w+", np.float32, shape)
  if hasattr(os, "posix_fallocate"):
    with open(path, "r+b") as f:
      try:
        os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
      except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # file systems without it
          raise
  return array


def build_feature_cache(source, meta: Mapping[str, Any], dataset_path: str, split: str,
                        key: str, video_fn: EncoderFn, audio_fn: EncoderFn,
                        cfg: ml_collections.ConfigDict, batch_size: int = 8) -> str:
  """Encodes every clip of a split once; returns the cache folder (module doc).

  Args:
    source: the split's records with media (builders.load_source, raw or paths mode).
    meta: its metadata.
    dataset_path: the built dataset folder (the cache goes under it).
    split: the split's name.
    key: names the encoders (checkpoint_key); the folder's name also hashes cfg.media.
    video_fn: frames float32[B, F, S, S, 3] -> features [B, F, Dv] (e.g. a jitted
      affectgpt.encode_video with its params bound).
    audio_fn: windows float32[B, K, W] -> features [B, K, Da].
    cfg: configs/data.py (its `media` section prepares the encoder inputs).
    batch_size: clips per encoder call; the last batch is padded to it (one compiled shape).
  """
  # The folder is named by the encoders and every media setting that shapes their inputs.
  key = checkpoint_key(key, json.dumps(cfg.media.to_dict(), sort_keys=True, default=list))
  out = cache_dir(dataset_path, split, key)
  # Every process must decide alike: the encoders run across all of them.
  if distributed.all_processes(os.path.isfile(os.path.join(out, "meta.json"))):
    return out
  n = len(source)
  if n < 1 or batch_size < 1:
    raise ValueError(f"build_feature_cache: {n} records, batch_size={batch_size}; need >= 1 "
                     f"of each.")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = None
  try:
    tmp = tempfile.mkdtemp(prefix=f".tmp_{split}_", dir=os.path.dirname(out))
    video = audio = None
    names: list[str] = []
    for start in range(0, n, batch_size):
      idx = np.arange(start, min(start + batch_size, n))
      padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
      frames, windows, batch_names = _media_batch(source, padded, cfg.media, meta)
      v = np.asarray(video_fn(frames), np.float32)[:len(idx)]
      a = np.asarray(audio_fn(windows), np.float32)[:len(idx)]
      if video is None:
        video = _allocate(os.path.join(tmp, "video.npy"), (n,) + v.shape[1:])
        audio = _allocate(os.path.join(tmp, "audio.npy"), (n,) + a.shape[1:])
      video[start:start + len(idx)] = v
      audio[start:start + len(idx)] = a
      names += batch_names[:len(idx)]
    video.flush()
    audio.flush()
    info = dict(key=key, split=split, num_records=n, video_shape=list(video.shape),
                audio_shape=list(audio.shape), dataset_path=os.path.abspath(dataset_path),
                media=cfg.media.to_dict())
    del video, audio
    with open(os.path.join(tmp, "names.json"), "w", encoding="utf-8") as f:
      json.dump(names, f)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump(info, f, indent=1, default=list)
    try:
      os.rename(tmp, out)
    except OSError:
      if not os.path.isfile(os.path.join(out, "meta.json")):   # not a concurrent winner
        raise
  except OSError as e:
    if not diskspace.is_disk_full(e):
      raise
    raise diskspace.DiskFullError(
        f"{os.path.dirname(out)}: no space left on device while caching the encoders' "
        f"features of split '{split}' ({n} clips; {diskspace.first_line(e)}); nothing was "
        "kept. Free space there and run again.") from e
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  return out


class FeatureSource:
  """Random-access records of a split with cached features instead of media.

  source[i] = base[i] without frames / audio / *_path, plus video_features float32[F, Dv]
  and audio_features float32[K, Da]. Raises when the cache does not match the records.
  """

  def __init__(self, base, path: str):
    if not os.path.isfile(os.path.join(path, "meta.json")):
      raise FileNotFoundError(f"{path}: no feature cache (meta.json missing); run "
                              f"build_feature_cache first.")
    with open(os.path.join(path, "names.json"), encoding="utf-8") as f:
      self._names = json.load(f)
    if len(self._names) != len(base):
      raise ValueError(f"{path}: the cache has {len(self._names)} clips, the dataset split "
                       f"{len(base)}; the dataset was rebuilt, rebuild the cache.")
    self._base = base
    self._path = path
    self._arrays = None

  def _open(self) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped arrays, opened on first use (and anew in each worker process)."""
    if self._arrays is None:
      with _OPEN_LOCK:
        if self._arrays is None:
          self._arrays = tuple(np.load(os.path.join(self._path, f), mmap_mode="r")
                               for f in ("video.npy", "audio.npy"))
    return self._arrays

  def __getstate__(self) -> dict[str, Any]:
    return dict(self.__dict__, _arrays=None)

  def __len__(self) -> int:
    return len(self._names)

  @property
  def names(self) -> list[str]:
    """The clip name of every record, in record order (the cache's names.json)."""
    return list(self._names)

  def text_record(self, index: int) -> dict[str, Any]:
    """source[index] without its features (no cache read)."""
    return {k: v for k, v in self._base[index].items() if k not in MEDIA_KEYS}

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self.text_record(index)
    name = pipeline.decode_example({"name": ex["name"]})["name"]
    if name != self._names[index]:
      raise ValueError(f"{self._path}: record {index} is {name!r} but the cache row is "
                       f"{self._names[index]!r}; the dataset was rebuilt, rebuild the cache.")
    video, audio = self._open()
    ex["video_features"] = np.array(video[index])
    ex["audio_features"] = np.array(audio[index])
    return ex

  def __repr__(self) -> str:
    # Where the cache lies is left out (a saved input position must restore in a moved or
    # copied workdir); its folder names (the encoder / media key and the split) identify it.
    key = os.path.join(*pathlib.PurePath(os.path.abspath(self._path)).parts[-2:])
    return f"FeatureSource(base={self._base!r}, cache={key!r}, records={len(self._names)})"
