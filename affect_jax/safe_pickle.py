"""Reading the official label .npz files without running code hidden in them.

The MER-UniBench label files (label-6way.npz, label_4way.npz, label.npz; PAPER_NOTES.md
section 6) hold dicts saved by `np.savez` as 0-d object arrays, i.e. as pickles. Loading them
with `np.load(allow_pickle=True)` would let a crafted file run any code (a pickle may call any
importable function). Here every .npy member is read by hand (numpy's header functions), and an
object array's pickle goes through an unpickler whose `find_class` admits only:
- plain containers and scalars: dict, list, tuple, set, frozenset, collections.OrderedDict,
  str, bytes, bytearray, int, float, complex, bool, None (most need no global at all);
- what numpy itself emits for object arrays and numpy scalars, under both module paths
  (numpy 1.x `numpy.core.*`, numpy 2 `numpy._core.*`): multiarray._reconstruct,
  multiarray.scalar, numeric._frombuffer, numpy.ndarray, numpy.dtype;
- `_codecs.encode` (how protocol-2 pickles, e.g. from Python 2, spell bytes).
Any other global raises `UnsafePickleError` naming the file and the global, before it is
imported or called. Arrays without objects are read with allow_pickle=False.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import os
import pickle
import zipfile
from typing import Any, Mapping

import numpy as np

# The reconstruction functions numpy's own reductions name (taken from them, so the same
# objects are found under numpy 1.x and 2.x).
_NUMPY_GLOBALS = {
    "_reconstruct": np.ndarray.__reduce__(np.zeros(0))[0],
    "scalar": np.float64(0).__reduce__()[0],
    "_frombuffer": np.zeros(1).__reduce_ex__(5)[0],
}
_ALLOWED = {
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray, ("builtins", "complex"): complex,
    ("builtins", "str"): str, ("builtins", "bytes"): bytes, ("builtins", "int"): int,
    ("builtins", "float"): float, ("builtins", "bool"): bool,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
}
for _prefix in ("numpy.core", "numpy._core"):
  _ALLOWED[(f"{_prefix}.multiarray", "_reconstruct")] = _NUMPY_GLOBALS["_reconstruct"]
  _ALLOWED[(f"{_prefix}.multiarray", "scalar")] = _NUMPY_GLOBALS["scalar"]
  _ALLOWED[(f"{_prefix}.numeric", "_frombuffer")] = _NUMPY_GLOBALS["_frombuffer"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
  """A pickle asked for a global outside the allowed set; `path` and `global_name` name it."""

  def __init__(self, path: str, global_name: str):
    self.path = path
    self.global_name = global_name
    super().__init__(
        f"{path}: refused to unpickle '{global_name}'; label files may only hold dicts, lists, "
        f"strings and numbers (and numpy arrays of them). Recreate the file from plain data, "
        f"or check where it came from: it may be crafted to run code.")


class RestrictedUnpickler(pickle.Unpickler):
  """pickle.Unpickler whose find_class admits only `allowed` ({(module, name): object}).

  Subclasses (e.g. the torch checkpoint reader) set their own `allowed` and `refuse`.
  """
  allowed: Mapping[tuple[str, str], Any] = _ALLOWED

  def __init__(self, file, path: str):
    super().__init__(file, encoding="latin1")
    self._path = path

  def refuse(self, global_name: str) -> Exception:
    """The error raised for a global outside `allowed`."""
    return UnsafePickleError(self._path, global_name)

  def find_class(self, module: str, name: str):
    # Python 2 names (protocol < 3), mapped as pickle.Unpickler(fix_imports=True) does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    try:
      return self.allowed[(module, name)]
    except KeyError:
      raise self.refuse(f"{module}.{name}") from None

  def persistent_load(self, pid):
    raise self.refuse(f"persistent id {pid!r}")


def loads(data: bytes, path: str = "<bytes>") -> Any:
  """Unpickles `data` with the restricted unpickler (module doc); `path` names it in errors."""
  return RestrictedUnpickler(io.BytesIO(data), path).load()


def _read_npy(f, path: str) -> np.ndarray:
  """One .npy stream: header by numpy's format functions, object payload restricted."""
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
  elif version in ((2, 0), (3, 0)):
    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
  else:
    raise ValueError(f"{path}: unsupported .npy format version {version}; re-save it with "
                     f"numpy.save.")
  if dtype.hasobject:
    array = RestrictedUnpickler(f, path).load()
    if not isinstance(array, np.ndarray):
      raise ValueError(f"{path}: the object payload is a {type(array).__name__}, not an "
                       f"array; the file is not an np.save output.")
    return array
  count = int(np.prod(shape, dtype=np.int64))
  data = f.read(count * dtype.itemsize)
  if len(data) != count * dtype.itemsize:
    raise ValueError(f"{path}: truncated array data ({len(data)} of {count * dtype.itemsize} "
                     f"bytes); re-download or re-save the file.")
  array = np.frombuffer(data, dtype=dtype, count=count)
  return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def load_npz(path) -> dict[str, np.ndarray]:
  """All arrays of an .npz (or a single .npy, under the key ''), objects restricted.

  Returns:
    {member name without '.npy': array}; object arrays hold the unpickled plain data.
  Raises:
    FileNotFoundError, ValueError (not an npz/npy), UnsafePickleError (a refused global).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such label file.")
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      try:
        return {"": _read_npy(f, path)}
      except ValueError as e:
        if "magic" in str(e).lower():
          raise ValueError(f"{path}: neither an .npz (zip) nor an .npy file.") from e
        raise
  out = {}
  with zipfile.ZipFile(path) as z:
    for member in z.namelist():
      if not member.endswith(".npy"):
        continue
      with z.open(member) as f:
        out[member[:-len(".npy")]] = _read_npy(io.BytesIO(f.read()), f"{path}:{member}")
  return out


def load_label_npz(path) -> dict[str, Any]:
  """The label corpora of an official .npz: 0-d object arrays unwrapped to their dicts.

  Returns:
    e.g. {'train_corpus': {name: {'emo': 'happy'}}, 'test1_corpus': {...}}.
  """
  return {k: (v.item() if v.dtype.hasobject and v.ndim == 0 else v)
          for k, v in load_npz(path).items()}
