"""Reading and writing Hugging Face checkpoint folders (safetensors only).

The safetensors format is small enough to read directly: an 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Reading it here
(instead of through a framework) lets every tensor be a lazy np.memmap view, bfloat16 included
(via ml_dtypes), so a loader can slice one device's shard without reading the whole tensor.

Pickle-based checkpoints (pytorch_model*.bin, *.pt, *.ckpt) are refused: unpickling runs code.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import struct
import tempfile
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

from affect_jax.errors import CheckpointError  # noqa: F401  (re-exported: checkpoints raise it)

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_config(hf_dir: str | os.PathLike) -> dict:
  """Returns config.json of a Hugging Face checkpoint folder as a dict."""
  path = pathlib.Path(hf_dir) / "config.json"
  if not path.is_file():
    raise CheckpointError(
        f"{hf_dir}: no config.json; point --hf_dir at a Hugging Face model folder "
        "(config.json + *.safetensors).")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}).") from e


def _read_header(path: pathlib.Path) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise CheckpointError(f"{path}: truncated safetensors file (no header).")
    (n,) = struct.unpack("<Q", raw)
    size = path.stat().st_size
    if n > size - 8:
      raise CheckpointError(f"{path}: header length {n} exceeds the file size {size}.")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header ({e}).") from e
  header.pop("__metadata__", None)
  for name, info in header.items():
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if (not isinstance(offsets, list) or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)):
      raise CheckpointError(f"{path}: tensor '{name}' has no valid data_offsets in the header.")
    if 8 + n + offsets[1] > size:
      raise CheckpointError(
          f"{path}: truncated safetensors file: tensor '{name}' ends at byte "
          f"{8 + n + offsets[1]} but the file has {size} bytes. Copy or download it again.")
  return header, 8 + n


class SafetensorsReader:
  """Lazy access to the tensors of a checkpoint folder (single file or sharded with an index).

  `reader[name]` returns a read-only np.memmap-backed array (no copy until sliced and used).
  """

  def __init__(self, hf_dir: str | os.PathLike):
    self.dir = pathlib.Path(hf_dir)
    if not self.dir.is_dir():
      raise CheckpointError(f"{hf_dir}: not a folder.")
    files = self._files()
    self._where: dict[str, tuple[pathlib.Path, dict, int]] = {}
    for path in files:
      header, base = _read_header(path)
      for name, info in header.items():
        self._where[name] = (path, info, base)

  def _files(self) -> list[pathlib.Path]:
    index = self.dir / "model.safetensors.index.json"
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a safetensors index (needs 'weight_map': {e}).")
      files = sorted({self.dir / f for f in weight_map.values()})
      missing = [str(f) for f in files if not f.is_file()]
      if missing:
        raise CheckpointError(f"{index} names shard files that do not exist: {missing}.")
      return files
    files = sorted(self.dir.glob("*.safetensors"))
    if files:
      return files
    pickles = [p.name for p in self.dir.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
      raise CheckpointError(
          f"{self.dir}: only pickle-based weights ({', '.join(sorted(pickles))}); they are refused "
          "because unpickling can run arbitrary code. Convert them once in a trusted environment: "
          "`transformers.AutoModel.from_pretrained(DIR).save_pretrained(DIR, "
          "safe_serialization=True)`.")
    raise CheckpointError(f"{self.dir}: no *.safetensors files.")

  def keys(self) -> list[str]:
    return sorted(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._info(name)[1]["shape"])

  def _info(self, name):
    if name not in self._where:
      raise CheckpointError(f"{self.dir}: tensor '{name}' is missing from the checkpoint.")
    return self._where[name]

  def __getitem__(self, name: str) -> np.ndarray:
    path, info, base = self._info(name)
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}.")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
      raise CheckpointError(f"{path}: tensor '{name}' byte size does not match shape {shape}.")
    if end == start:
      return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes one .safetensors file (C-contiguous little-endian, 8-byte aligned header)."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(np.asarray(tensors[name]))
    if a.dtype not in _NAMES:
      raise CheckpointError(f"tensor '{name}': dtype {a.dtype} cannot be written to safetensors.")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  header["__metadata__"] = dict(metadata or {"format": "pt"})
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for a in arrays:
      f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def write_checkpoint(out_dir: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     config: Mapping, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json and model.safetensors, or shards + model.safetensors.index.json."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = np.asarray(tensors[name]).nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  if len(shards) == 1:
    write_safetensors(out / "model.safetensors", shards[0])
    return
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(out / fname, shard)
    for name, a in shard.items():
      weight_map[name] = fname
      total += np.asarray(a).nbytes
  (out / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a temporary folder beside `out`; renames it to `out` only if the block succeeds.

  On any failure the temporary folder is removed, so nothing is left in `out`, and an existing
  `out` is never touched unless `overwrite` is set.
  """
  out = pathlib.Path(out).absolute()
  if out.exists() and any(out.iterdir() if out.is_dir() else [out]):
    if not overwrite:
      raise CheckpointError(f"{out} already exists and is not empty; choose a new --out "
                            "(or pass --overwrite).")
  out.parent.mkdir(parents=True, exist_ok=True)
  _remove_leftovers(out)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(out)}", dir=out.parent))
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if out.exists():
    shutil.rmtree(out) if out.is_dir() else out.unlink()
  os.replace(tmp, out)


def _tmp_prefix(out: pathlib.Path) -> str:
  return f".{out.name}.tmp-"


def _remove_leftovers(out: pathlib.Path) -> None:
  """Removes the temporary folders of earlier writes of `out` that were killed before their
  rename (only folders named by _tmp_prefix beside `out`, which hold no finished output)."""
  for stale in out.parent.glob(f"{_tmp_prefix(out)}*"):
    if stale.is_dir() and not stale.is_symlink():
      shutil.rmtree(stale, ignore_errors=True)


def check_output_apart(out: str | os.PathLike, sources) -> None:
  """Raises CheckpointError when the output folder `out` is one of `sources` (input folders or
  files), lies inside one, or holds one: writing it, or replacing it with --overwrite, would
  change or delete the inputs."""
  out_real = pathlib.Path(os.path.realpath(out))
  for source in sources:
    src = pathlib.Path(os.path.realpath(source))
    if out_real == src or src in out_real.parents or out_real in src.parents:
      raise CheckpointError(
          f"--out={out} and the input {source} overlap (the same folder, or one inside the "
          "other); writing or --overwrite there would change or delete the input. Choose an "
          "--out outside the inputs.")
