"""config_dataclass.build: the one way from a config section to a frozen dataclass."""
import dataclasses

import ml_collections
import pytest

from affect_jax import config_dataclass


@dataclasses.dataclass(frozen=True)
class Inner:
  rank: int = 0
  targets: tuple = ("q",)


@dataclasses.dataclass(frozen=True)
class Outer:
  size: int
  ids: tuple = ()
  inner: Inner = Inner()


def test_config_dict_with_lists_and_a_nested_section_builds_a_hashable_dataclass():
  c = ml_collections.ConfigDict({"size": 3, "ids": [[1, 2], [3]],
                                 "inner": {"rank": 4, "targets": ["q", "v"]}})
  out = config_dataclass.build(Outer, c, name="model")
  assert out == Outer(size=3, ids=((1, 2), (3,)), inner=Inner(rank=4, targets=("q", "v")))
  hash(out)


def test_an_instance_is_returned_as_is_and_a_nested_instance_kept():
  inner = Inner(rank=2)
  assert config_dataclass.build(Outer, {"size": 1, "inner": inner}, name="m").inner is inner
  o = Outer(size=1)
  assert config_dataclass.build(Outer, o, name="m") is o


def test_unknown_and_missing_fields_are_named():
  with pytest.raises(ValueError, match=r"model: unknown fields \['sise'\]; known: "):
    config_dataclass.build(Outer, {"sise": 1}, name="model")
  with pytest.raises(ValueError, match=r"model.inner: unknown fields \['rnk'\]"):
    config_dataclass.build(Outer, {"size": 1, "inner": {"rnk": 1}}, name="model")
  with pytest.raises(ValueError, match=r"model: missing required fields \['size'\]"):
    config_dataclass.build(Outer, {}, name="model", required=("size",))


def test_not_a_section_is_a_type_error():
  with pytest.raises(TypeError, match="config section"):
    config_dataclass.build(Outer, 3, name="model")
