"""A full disk, told apart from other write failures and reported in one line.

Writers fail on a full disk in different ways: Python raises OSError(ENOSPC); tensorstore (Orbax's
array writer) raises ValueError("RESOURCE_EXHAUSTED ... No space left on device
[os_error_code='28']"); TFDS raises RuntimeError("... write() failed: No space left on device");
libsndfile says only "System error." (so the demo's wavs are encoded in memory and written by
Python); OpenCV's video writer fails silently (isOpened() False, or a file without its index).
`is_disk_full` recognises the first three anywhere in an exception's chain; the video writer asks
`has_room` after a failure.

  try: write(...)
  except Exception as e:
    if is_disk_full(e): raise DiskFullError(f"{folder}: no space left on device ...") from e
    raise
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
import traceback
import warnings

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How full-disk errors read when they come as text (tensorstore, libraries wrapping OSError).
_NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded",
                   f"os_error_code='{errno.ENOSPC}'", f"os_error_code='{errno.EDQUOT}'")


class DiskFullError(OSError):
  """A write failed because the disk (or quota) is full; the message names the folder."""

  def __init__(self, message: str):
    super().__init__(message)
    self.errno = errno.ENOSPC


def _chain(exc: BaseException | None):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def disk_full_cause(exc: BaseException | None) -> BaseException | None:
  """The first exception in `exc`'s chain (itself, causes, contexts) that says the disk is full."""
  for e in _chain(exc):
    if isinstance(e, DiskFullError):
      return e
    if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
      return e
    if any(t in str(e).lower() for t in _NO_SPACE_TEXTS):
      return e
  return None


def is_disk_full(exc: BaseException | None) -> bool:
  return disk_full_cause(exc) is not None


def has_room(folder: str | os.PathLike, num_bytes: int) -> bool:
  """Whether the file system holding `folder` (or its nearest existing parent) has num_bytes free."""
  path = os.path.abspath(folder)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free >= num_bytes


def first_line(exc: BaseException) -> str:
  text = str(exc).strip().splitlines()
  return text[0] if text else type(exc).__name__


def message(exc: BaseException) -> str:
  """One line for a launcher: a DiskFullError's own message (it names the folder), else
  '<folder>: no space left on device (<the error>)', the folder being that of the file the error
  names (its filename, or the first absolute path in its text)."""
  cause = disk_full_cause(exc) or exc
  if isinstance(exc, DiskFullError) or isinstance(cause, DiskFullError):
    return str(exc if isinstance(exc, DiskFullError) else cause)
  name = getattr(cause, "filename", None)
  if not name:
    found = re.search(r"(/[^\s\"',;:]+)", str(cause))
    name = found.group(1) if found else None
  where = os.path.dirname(os.path.abspath(name)) if name else "a folder of this run"
  return (f"{where}: no space left on device ({first_line(cause)[:300]}); free space there and "
          "run again (finished work is kept and resumed).")


class _DropBackgroundDiskFull(logging.Filter):
  """Drops the copies of a full-disk error that Orbax's write machinery logs: each background
  thread logs it with a traceback (absl logger), asyncio logs each failed write's future that
  nobody retrieved ('Future exception was never retrieved'), and once a Checkpointer has raised
  the error, a thread still finishing logs 'cannot schedule new futures after shutdown'. The
  Checkpointer raises the error itself once, as one CheckpointError; other records pass."""

  def __init__(self):
    super().__init__()
    self.reported = False     # set when a Checkpointer has raised a full-disk error

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if record.name == "asyncio":
      return not is_disk_full(exc)
    if "orbax" not in record.pathname:
      return True
    if is_disk_full(exc) or any(t in record.getMessage().lower() for t in _NO_SPACE_TEXTS):
      return False
    return not (self.reported and "cannot schedule new futures after shutdown"
                in f"{exc} {record.getMessage()}")


_FILTER = _DropBackgroundDiskFull()


def _closed_loop_callback(unraisable) -> bool:
  """An 'Event loop is closed' raised in asyncio's call_soon_threadsafe: a write that finished
  after the save it belonged to had failed and closed its event loop (tensorstore reports each
  such write as unraisable). The save's own error is raised by the Checkpointer."""
  exc = unraisable.exc_value
  if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
    return False
  return any(f.name == "call_soon_threadsafe"
             for f in traceback.extract_tb(unraisable.exc_traceback))


def _drop_closed_loop_callbacks(unraisable) -> None:
  if not _closed_loop_callback(unraisable):
    _drop_closed_loop_callbacks.previous(unraisable)


def quiet_background_disk_full_logs() -> None:
  """Installs the filter on the absl logger (Orbax logs through it) and the asyncio one, and
  leaves the closed-loop callbacks of a failed save out of sys.unraisablehook; idempotent."""
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)
  if sys.unraisablehook is not _drop_closed_loop_callbacks:
    _drop_closed_loop_callbacks.previous = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_callbacks


def background_disk_full_reported() -> None:
  """Tells the filter that the full-disk error has been raised in the main thread; the writes
  the failed save never started are then not warned about at exit either."""
  _FILTER.reported = True
  warnings.filterwarnings("ignore", message="coroutine 'async_serialize_from_host",
                          category=RuntimeWarning)
