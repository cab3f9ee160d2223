"""One way from a config section to a frozen dataclass.

  cfg = config_dataclass.build(GrpoLossConfig, config.grpo_loss, name="grpo_loss")

`section` may be an ml_collections ConfigDict, a plain mapping, or already an instance of `cls`
(returned as is). A field the class does not have is an error naming `name.field` and the known
fields; so is a missing field listed in `required`. Lists become tuples (recursively, so lists
of lists become tuples of tuples), and a mapping given for a field whose default is a dataclass
instance (or whose default_factory makes one) is built into that dataclass the same way, so the
frozen result is hashable and safe to close over in jitted code. Each class keeps its checks in
its own `__post_init__`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


def _plain(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _items(section: Any) -> dict:
  if hasattr(section, "to_dict"):
    return dict(section.to_dict())
  if isinstance(section, Mapping):
    return dict(section.items())
  raise TypeError(f"expected a config section (ConfigDict or mapping), got "
                  f"{type(section).__name__}.")


def _nested_type(field: dataclasses.Field):
  default = field.default
  if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
    default = field.default_factory()
  return type(default) if dataclasses.is_dataclass(default) else None


def build(cls: type[T], section: Any, *, name: str, required: Iterable[str] = ()) -> T:
  """`cls(**section)` with unknown and missing fields named, lists as tuples, nested sections
  built into their dataclasses."""
  if isinstance(section, cls):
    return section
  values = _items(section)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"{name}: unknown fields {unknown}; known: {sorted(fields)}.")
  missing = [k for k in required if k not in values]
  if missing:
    raise ValueError(f"{name}: missing required fields {missing}.")
  for key, value in values.items():
    nested = _nested_type(fields[key])
    if nested is not None and value is not None and not isinstance(value, nested):
      values[key] = build(nested, value, name=f"{name}.{key}")
    else:
      values[key] = _plain(value)
  return cls(**values)
