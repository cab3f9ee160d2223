"""What every launcher shares: errors a user made end as `<launcher>: error: ...` on stderr with
exit status 2 and no traceback.

  if __name__ == "__main__":
    cli.run_main(main, "launch.grpo", define_flags)   # define_flags uses cli.define_config_file

run_main parses the flags itself, so a --config.<path> override naming no field
(`unknown config field 'grpo.lerning_rate'; did you mean 'grpo.learning_rate'?`), a value of the
wrong type, an unknown flag or a config file that cannot be found is reported that way too. In
main, the launcher calls configs/validate.py's `check` first, then the library's user
errors (USER_ERRORS: ValueError and its subclasses such as CheckpointError, WheelFileError,
ConfigError; missing files) are reported the same way. Anything else (a bug) keeps its
traceback; --verbose or AFFECT_JAX_DEBUG=1 shows the traceback of user errors too.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from affect_jax import diskspace
from configs import validate

FLAGS = flags.FLAGS
# Exceptions that mean the user's input (flags, config, files) is wrong, not the code.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
DEBUG_ENV = "AFFECT_JAX_DEBUG"
DISK_FULL_STATUS = 1    # a full disk is not an input error (2): the same run succeeds with room


def debug() -> bool:
  """Whether user errors keep their traceback (--verbose or AFFECT_JAX_DEBUG=1)."""
  if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    return True
  return "verbose" in FLAGS and FLAGS.is_parsed() and bool(FLAGS.verbose)


def fail(name: str, message) -> None:
  """Prints `<name>: error: <message>` to stderr and exits with status 2."""
  print(f"{name}: error: {message}", file=sys.stderr)
  sys.exit(2)


# Config flags defined through define_config_file: flag name -> default config file.
_CONFIG_FLAGS: dict[str, str | None] = {}


class UnknownConfigField(ValueError):
  """A --<config>.<path> override that names no field of its config."""


def _config_path(flag_name: str, argv: list[str]) -> str | None:
  """The config file of flag `flag_name`: its last --<flag_name>= value in argv, else its
  default."""
  path = _CONFIG_FLAGS.get(flag_name)
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag_name}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{flag_name}" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def load_config(path: str):
  """get_config() of a config file, as config_flags loads it ('file.py:arg' passes arg)."""
  file, *args = path.split(":", 1)
  return runpy.run_path(file)["get_config"](*args)


def unknown_overrides(argv: list[str]) -> list[str]:
  """Messages for the --<config>.<path> overrides of argv that name no field of their config
  (with the closest field path, difflib)."""
  out = []
  for name in _CONFIG_FLAGS:
    overrides = [a[len(name) + 3:].split("=", 1)[0] for a in argv
                 if a.startswith(f"--{name}.")]
    path = _config_path(name, argv)
    if not overrides or not path:
      continue
    try:
      known = validate.field_paths(load_config(path))
    except Exception:   # pylint: disable=broad-except
      continue          # the config itself does not load: the caller reports that error
    for field in overrides:
      if field not in known:
        out.append(f"unknown config field '{field}'{validate.suggest(field, known)}")
  return out


def define_config_file(name: str, default: str | None, help_string: str, **kwargs):
  """config_flags.DEFINE_config_file, which already applies the --<name>.<path> overrides of
  sys.argv to the default config; one naming no field raises UnknownConfigField (run_main
  reports it)."""
  _CONFIG_FLAGS[name] = default
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except (KeyError, AttributeError) as e:
    unknown = unknown_overrides(sys.argv)
    if unknown:
      raise UnknownConfigField(_join(unknown)) from e
    raise


def parse_flags(name: str, argv: list[str]) -> list[str]:
  """absl's flag parsing with every user error reported as `<name>: error: ...`, exit 2."""
  try:
    rest = FLAGS(argv)
  except Exception as e:   # pylint: disable=broad-except
    unknown = unknown_overrides(argv)
    if unknown:
      fail(name, _join(unknown))
    if isinstance(e, flags.Error):   # a bad value, an unknown flag, a missing required flag
      fail(name, str(e))
    if isinstance(e, OSError):       # the --config file does not load
      fail(name, f"cannot load the config file: {_last_line(e)}")
    raise
  for flag_name in _CONFIG_FLAGS:
    value = FLAGS[flag_name].value
    if value is not None:
      try:
        value.keys()    # a config file that failed to load raises its error on first use
      except OSError as e:
        fail(name, f"--{flag_name}={_config_path(flag_name, argv)}: cannot load the config "
                   f"file: {_last_line(e)}")
  return rest


def _join(problems: list[str]) -> str:
  return problems[0] if len(problems) == 1 else "\n  ".join([f"{len(problems)} errors:"] +
                                                               problems)


def _last_line(e: Exception) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def run_main(main: Callable, name: str, define_flags: Callable | None = None,
             argv: list[str] | None = None) -> None:
  """define_flags(), then app.run(main) with the flag parsing above; user errors end as
  `<name>: error: ...`, exit 2; a full disk as `<name>: error: <folder>: no space left on
  device ...`, exit 1 (affect_jax/diskspace.py)."""
  if define_flags is not None:
    try:
      define_flags()
    except UnknownConfigField as e:
      fail(name, e)
  if "verbose" not in FLAGS:
    flags.DEFINE_bool("verbose", False, f"Show the traceback of user errors too (or set "
                      f"{DEBUG_ENV}=1).")

  def wrapped(args):
    try:
      return main(args)
    except app.UsageError as e:
      if debug():
        raise
      fail(name, e)

  try:
    app.run(wrapped, argv=argv, flags_parser=lambda a: parse_flags(name, a))
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless the user's doing)
    if diskspace.is_disk_full(e) and not debug():   # the input is fine: exit 1, not 2
      print(f"{name}: error: {diskspace.message(e)}", file=sys.stderr)
      sys.exit(DISK_FULL_STATUS)
    if not isinstance(e, USER_ERRORS) or debug():
      raise
    fail(name, e)


CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
CACHE_SUBDIR = "xla_cache"


def use_compilation_cache(workdir: str | os.PathLike) -> str | None:
  """XLA's persistent compilation cache in <workdir>/xla_cache, so a resumed run, the demo's
  later seeds and a second phase load the programs an earlier one compiled instead of compiling
  them again (about a minute each for the demo's GRPO step on 2 CPU cores). The cache is keyed
  by the program, so it is never stale.

  Left alone when JAX_COMPILATION_CACHE_DIR is set (empty turns the cache off) and when several
  processes run (a process that hits the cache while another compiles would wait at the first
  collective). Call after distributed.initialize() and before anything is compiled; returns the
  folder in use, or None."""
  import jax
  if CACHE_ENV in os.environ or jax.process_count() > 1:
    return os.environ.get(CACHE_ENV) or None
  path = os.path.join(os.fspath(workdir), CACHE_SUBDIR)
  jax.config.update("jax_compilation_cache_dir", path)
  return path
