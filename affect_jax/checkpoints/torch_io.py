"""Reading torch.save checkpoints (.pth / .pt) without running code hidden in them.

A torch checkpoint is a zip: ARCHIVE/data.pkl is a pickle of the saved object, and each tensor
storage is the raw bytes of ARCHIVE/data/KEY. Loading it with torch.load (or pickle) could run
any function the pickle names. Here data.pkl goes through a restricted unpickler
(`affect_jax.safe_pickle.RestrictedUnpickler`) whose find_class admits only:
- collections.OrderedDict and the builtin containers/scalars the label reader admits;
- torch's tensor rebuild functions torch._utils._rebuild_tensor_v2 / _rebuild_parameter,
  replaced by functions that record (storage, offset, shape, stride) without importing torch;
- torch's typed storage names (torch.FloatStorage, torch.BFloat16Storage, ...), which only
  select a numpy dtype.
Any other global raises `UnsafeTorchPickleError` naming the file and the global, before it is
imported or called. Storages are read lazily from the zip (only the tensors asked for), as
little-endian or big-endian per ARCHIVE/byteorder. The legacy (pre-zip, torch < 1.6) format is
refused with the re-save command.

Public API:
  TorchCheckpoint(path)   .obj: the unpickled object with `LazyTensor` leaves;
                          .tensor(lazy) -> np.ndarray (a contiguous copy)
  StateDictReader(ckpt, state_dict, name)
                          the reader interface hf_mapping.load uses (keys, in, shape, [])
  load(path) -> object    every tensor materialised as numpy (tests, small files)
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pathlib
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax import safe_pickle

# torch storage class name -> numpy dtype of its elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class UnsafeTorchPickleError(CheckpointError):
  """A checkpoint's pickle asked for something other than tensors and plain containers."""

  def __init__(self, path: str, global_name: str):
    self.path = path
    self.global_name = global_name
    super().__init__(
        f"{path}: refused to unpickle '{global_name}'; a torch checkpoint may only hold tensors "
        "and plain containers (dicts, lists, numbers, strings). Save the state dict alone "
        "(torch.save({'model': model.state_dict()}, F)) or check where the file came from: it "
        "may be crafted to run code.")


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str

  @property
  def dtype(self) -> np.dtype:
    return _STORAGE_DTYPES[self.name]


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """A tensor not yet read: its storage's key and dtype, element offset, shape and strides."""
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  @property
  def dtype(self) -> np.dtype:
    return self.storage.dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                    tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


# The label reader's builtin containers and scalars (not its numpy globals), plus torch's.
_ALLOWED = {k: v for k, v in safe_pickle.RestrictedUnpickler.allowed.items()
            if not k[0].startswith("numpy")}
_ALLOWED[("collections", "OrderedDict")] = collections.OrderedDict
_ALLOWED[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
_ALLOWED[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
for _name in _STORAGE_DTYPES:
  _ALLOWED[("torch", _name)] = _StorageType(_name)


class _TorchUnpickler(safe_pickle.RestrictedUnpickler):
  allowed = _ALLOWED

  def refuse(self, global_name: str) -> Exception:
    return UnsafeTorchPickleError(self._path, global_name)

  def persistent_load(self, pid):
    # torch's zip format: ('storage', storage type, key, location, numel).
    if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
        and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      return _StorageRef(pid[2], pid[1].dtype)
    raise self.refuse(f"persistent id {pid!r}")


class TorchCheckpoint:
  """A torch.save zip checkpoint, unpickled safely; tensors are read on demand."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such checkpoint file.")
    if not zipfile.is_zipfile(self.path):
      raise CheckpointError(
          f"{self.path}: not a torch zip checkpoint (torch >= 1.6 writes zips; the legacy format "
          "is not read). Re-save it once in a trusted environment: torch.save(torch.load(F), F2).")
    self._zip = zipfile.ZipFile(self.path)
    pkl = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise CheckpointError(f"{self.path}: a zip without one ARCHIVE/data.pkl; not a torch.save "
                            "checkpoint.")
    self._prefix = pkl[0][:-len("data.pkl")]
    order = self._read_optional("byteorder") or b"little"
    if order not in (b"little", b"big"):
      raise CheckpointError(f"{self.path}: unknown byteorder {order!r}.")
    self._byteorder = "<" if order == b"little" else ">"
    self.obj = _TorchUnpickler(io.BytesIO(self._zip.read(pkl[0])), str(self.path)).load()

  def close(self) -> None:
    self._zip.close()

  def _read_optional(self, name: str) -> bytes | None:
    try:
      return self._zip.read(self._prefix + name).strip()
    except KeyError:
      return None

  def tensor(self, t: LazyTensor, name: str = "") -> np.ndarray:
    """The tensor's values as a contiguous numpy array (native byte order)."""
    entry = f"{self._prefix}data/{t.storage.key}"
    try:
      raw = self._zip.read(entry)
    except KeyError:
      raise CheckpointError(f"{self.path}: tensor '{name}' names storage {entry}, which the file "
                            "lacks; the file is truncated or corrupt.") from None
    itemsize = t.dtype.itemsize
    if len(raw) % itemsize:
      raise CheckpointError(f"{self.path}: storage {entry} is {len(raw)} bytes, not a multiple "
                            f"of {itemsize} ({t.dtype}); the file is corrupt.")
    data = np.frombuffer(raw, t.dtype.newbyteorder(self._byteorder))
    if any(s < 0 for s in t.shape) or any(s < 0 for s in t.stride) or t.offset < 0:
      raise CheckpointError(f"{self.path}: tensor '{name}' has a negative size, stride or offset.")
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if all(t.shape) else -1
    if last >= data.size:
      raise CheckpointError(f"{self.path}: tensor '{name}' (shape {t.shape}, stride {t.stride}, "
                            f"offset {t.offset}) reaches past its storage of {data.size} "
                            "elements; the file is corrupt.")
    if not all(t.shape):
      return np.zeros(t.shape, t.dtype)
    if not t.shape:  # as_strided reads an empty shape as "keep the input's shape"
      return data[t.offset].reshape(()).astype(t.dtype)
    view = np.lib.stride_tricks.as_strided(
        data[t.offset:], shape=t.shape, strides=tuple(s * itemsize for s in t.stride),
        writeable=False)
    return np.ascontiguousarray(view).astype(t.dtype)


class StateDictReader:
  """A state dict of a TorchCheckpoint behind the reader interface of hf_mapping.load.

  Args:
    ckpt: the checkpoint.
    state_dict: {name: LazyTensor} inside ckpt.obj.
    name: how errors name it (e.g. "F.pth['model']").
  """

  def __init__(self, ckpt: TorchCheckpoint, state_dict: Mapping[str, Any], name: str):
    self._ckpt = ckpt
    self.dir = name
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or
           not isinstance(v, LazyTensor)]
    if bad:
      raise CheckpointError(f"{name}: entries {bad[:5]} are not tensors; expected a state dict "
                            "{parameter name: tensor}.")
    self._tensors = dict(state_dict)

  def keys(self) -> list[str]:
    return sorted(self._tensors)

  def close(self) -> None:
    """Closes the checkpoint file (no tensor can be read afterwards)."""
    self._ckpt.close()

  def __contains__(self, name: str) -> bool:
    return name in self._tensors

  def shape(self, name: str) -> tuple[int, ...]:
    return self._tensors[name].shape

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._tensors:
      raise CheckpointError(f"{self.dir}: tensor '{name}' is missing from the checkpoint.")
    return self._ckpt.tensor(self._tensors[name], name)


def load(path: str | os.PathLike) -> Any:
  """The whole checkpoint with every tensor read into numpy (containers kept as saved)."""
  ckpt = TorchCheckpoint(path)

  def walk(x, where):
    if isinstance(x, LazyTensor):
      return ckpt.tensor(x, where)
    if isinstance(x, Mapping):
      return type(x)((k, walk(v, f"{where}[{k!r}]")) for k, v in x.items())
    if isinstance(x, (list, tuple)):
      return type(x)(walk(v, f"{where}[{i}]") for i, v in enumerate(x))
    return x

  try:
    return walk(ckpt.obj, "")
  finally:
    ckpt.close()
