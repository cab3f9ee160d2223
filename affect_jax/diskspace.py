"""A full disk, told apart from other write failures and reported in one line.

Writers fail on a full disk in different ways: Python raises OSError(ENOSPC); tensorstore (Orbax's
array writer) raises ValueError("RESOURCE_EXHAUSTED ... No space left on device
[os_error_code='28']"); libsndfile says only "System error."; OpenCV's video writer fails silently
(isOpened() False, or a file without its index). `is_disk_full` recognises the first two anywhere
in an exception's chain; the writers of the others ask `has_room` after a failure.

  try: write(...)
  except Exception as e:
    if is_disk_full(e): raise DiskFullError(f"{folder}: no space left on device ...") from e
    raise
"""
from __future__ import annotations

import errno
import logging
import os
import shutil

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
  '<folder of the file>: no space left on device (<the error>)'."""
  if isinstance(exc, DiskFullError):
    return str(exc)
  cause = disk_full_cause(exc) or exc
  if isinstance(cause, DiskFullError):
    return str(cause)
  name = getattr(cause, "filename", None)
  where = os.path.dirname(os.path.abspath(name)) if name else "a folder of this run"
  return (f"{where}: no space left on device ({first_line(cause)}); free space there and run "
          "again (finished work is kept and resumed).")


class _DropBackgroundDiskFull(logging.Filter):
  """Drops Orbax's log records about a full disk: its background threads each log the same
  error with a traceback, and the Checkpointer raises it once, as one CheckpointError."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" not in record.pathname:
      return True
    exc = record.exc_info[1] if record.exc_info else None
    if is_disk_full(exc):
      return False
    return not any(t in record.getMessage().lower() for t in _NO_SPACE_TEXTS)


_FILTER = _DropBackgroundDiskFull()


def quiet_background_disk_full_logs() -> None:
  """Installs the filter on absl's logger (which Orbax logs through); idempotent."""
  logger = logging.getLogger("absl")
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
