"""Tables that map Hugging Face tensor names to parameter paths, and the loader/exporter they drive.

A model's converter is a list of `Rule`s: one project parameter <-> one HF tensor, with a pair of
array transforms (e.g. transposing a torch Linear weight into a Flax kernel). A rule whose HF
name contains "{i}" is a per-layer tensor; the project keeps layers stacked on axis 0 (scan), so
the loader stacks layers 0..L-1 and the exporter splits them again.

Loading places every parameter straight onto its target sharding with
jax.make_array_from_callback: the host holds one HF tensor at a time and each device receives only
its own slice, so the whole model never sits on one device.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from affect_jax import sharding
from affect_jax.checkpoints.safetensors_io import CheckpointError, SafetensorsReader

Path = tuple[str, ...]


def _identity(x):
  return x


def transpose(x):
  """torch Linear weight [out, in] <-> Flax kernel [in, out]."""
  return np.swapaxes(x, -1, -2)


@dataclasses.dataclass(frozen=True)
class Rule:
  path: Path
  hf: str
  to_jax: Callable[[np.ndarray], np.ndarray] = _identity
  to_hf: Callable[[np.ndarray], np.ndarray] = _identity

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


def linear(path: Path, hf_prefix: str, bias: bool = True) -> list[Rule]:
  """Rules for a torch nn.Linear `hf_prefix` -> Flax Dense at `path` (kernel, bias)."""
  rules = [Rule(path + ("kernel",), hf_prefix + ".weight", transpose, transpose)]
  if bias:
    rules.append(Rule(path + ("bias",), hf_prefix + ".bias"))
  return rules


def norm(path: Path, hf_prefix: str, bias: bool = True) -> list[Rule]:
  """Rules for a torch LayerNorm/RMSNorm/GroupNorm (weight [, bias]) -> Flax (scale [, bias])."""
  rules = [Rule(path + ("scale",), hf_prefix + ".weight")]
  if bias:
    rules.append(Rule(path + ("bias",), hf_prefix + ".bias"))
  return rules


def get_path(tree: Mapping, path: Path):
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree: dict, path: Path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _host_value(reader: SafetensorsReader, rule: Rule, num_layers: int) -> np.ndarray:
  if not rule.per_layer:
    return np.asarray(rule.to_jax(np.asarray(reader[rule.hf])))
  names = [rule.hf.format(i=i) for i in range(num_layers)]
  layers = [np.asarray(rule.to_jax(np.asarray(reader[n]))) for n in names]
  for name, value in zip(names, layers):
    if value.shape != layers[0].shape:
      raise CheckpointError(
          f"{reader.dir}: tensor '{name}' has shape {reader.shape(name)} but '{names[0]}' has "
          f"{reader.shape(names[0])}; every layer must have the same shape.")
  return np.stack(layers)


def load(reader: SafetensorsReader, rules: Sequence[Rule], target: Mapping,
         num_layers: int, shardings: Mapping | None = None, prefix: str = "") -> dict:
  """Reads every rule's tensor into a nested dict of jax arrays.

  Args:
    reader: the checkpoint.
    rules: the model's table; every rule must name a leaf of `target`.
    target: pytree of jax.ShapeDtypeStruct (e.g. from jax.eval_shape of the model's init);
      shapes and dtypes are checked against it and the arrays are cast to its dtypes.
    num_layers: L for per-layer rules.
    shardings: same structure as target, jax.sharding.Sharding leaves (default: first device).
    prefix: prepended to HF names (e.g. "vision_model." or "model." when nested).

  Returns:
    dict with the rules' paths filled (parameters no rule names, such as LoRA, are absent).
  """
  out: dict = {}
  for rule in rules:
    rule = dataclasses.replace(rule, hf=prefix + rule.hf)
    try:
      leaf = get_path(target, rule.path)
    except (KeyError, TypeError):
      raise CheckpointError(f"converter rule for '{rule.hf}' names parameter "
                            f"{'/'.join(rule.path)}, which the model does not have.") from None
    first = rule.hf.format(i=0) if rule.per_layer else rule.hf
    if first not in reader:
      raise CheckpointError(f"{reader.dir}: tensor '{first}' is missing (needed for parameter "
                            f"{'/'.join(rule.path)}); is the checkpoint the architecture the "
                            "config says?")
    cache: dict[str, np.ndarray] = {}

    def fetch(index, rule=rule, leaf=leaf, cache=cache):
      if "v" not in cache:
        value = _host_value(reader, rule, num_layers)
        if tuple(value.shape) != tuple(leaf.shape):
          raise CheckpointError(
              f"{reader.dir}: tensor '{rule.hf}' has shape {value.shape} after conversion, but "
              f"parameter {'/'.join(rule.path)} needs {tuple(leaf.shape)}; the checkpoint does not "
              "match the model config (check hidden_size, num_*_heads, vocab_size, layers).")
        cache["v"] = value.astype(leaf.dtype)
      return cache["v"][index]

    sharding = (get_path(shardings, rule.path) if shardings is not None
                else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    set_path(out, rule.path, jax.make_array_from_callback(tuple(leaf.shape), sharding, fetch))
    cache.clear()
  return out


def export(params: Mapping, rules: Sequence[Rule], num_layers: int, prefix: str = "",
           dtype: Any = None) -> dict[str, np.ndarray]:
  """The inverse of `load`: {HF name: numpy array} for every rule (layers split again)."""
  tensors = {}
  for rule in rules:
    value = np.asarray(jax.device_get(get_path(params, rule.path)))
    if dtype is not None:
      value = value.astype(dtype)
    if rule.per_layer:
      for i in range(num_layers):
        tensors[prefix + rule.hf.format(i=i)] = np.ascontiguousarray(rule.to_hf(value[i]))
    else:
      tensors[prefix + rule.hf] = np.ascontiguousarray(rule.to_hf(value))
  return tensors


def unused_tensors(reader: SafetensorsReader, rules: Sequence[Rule], num_layers: int,
                   prefix: str = "") -> list[str]:
  """HF tensors that no rule reads (reported so a silent architecture mismatch is visible)."""
  used = set()
  for rule in rules:
    names = ([rule.hf.format(i=i) for i in range(num_layers)] if rule.per_layer else [rule.hf])
    used.update(prefix + n for n in names)
  return [k for k in reader.keys() if k not in used]


def leaf_paths(tree: Any) -> dict[Path, Any]:
  """{('a', 'b', ...): leaf} for every leaf of a nested dict."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def refuse_unread(reader: SafetensorsReader, rules: Sequence[Rule], num_layers: int, *,
                  within: str, prefix: str = "", what: str, config_hint: str) -> None:
  """Raises when tensors under `within` are read by no rule: the config.json does not describe
  the weights (e.g. more layers than num_hidden_layers), which would otherwise load silently."""
  extra = [n for n in unused_tensors(reader, rules, num_layers, prefix) if n.startswith(within)]
  if extra:
    raise CheckpointError(
        f"{reader.dir}: tensors {extra[:5]}{' ...' if len(extra) > 5 else ''} belong to the "
        f"{what} but config.json ({config_hint}) does not account for them; the config does not "
        "match the weights.")


def load_tree(reader: SafetensorsReader, rules: Sequence[Rule], boxed: Any, num_layers: int, *,
              model: str, mesh: jax.sharding.Mesh | None = None,
              sharding_rules: Sequence | None = None, prefix: str = "") -> dict:
  """Reads a whole parameter tree whose every leaf a rule names.

  Args:
    boxed: the model's boxed abstract parameters (LogicallyPartitioned ShapeDtypeStructs), which
      give the target shapes, dtypes and, with a mesh, each leaf's sharding.
    model: the model's name for errors.
    mesh / sharding_rules: place each parameter on its NamedSharding (default: first device).
  """
  target = sharding.unbox(boxed)
  placements = None
  if mesh is not None:
    placements = sharding.shardings(
        boxed, mesh, sharding.DEFAULT_RULES if sharding_rules is None else sharding_rules)
  params = load(reader, rules, target, num_layers, placements, prefix=prefix)
  missing = sorted(set(leaf_paths(target)) - set(leaf_paths(params)))
  if missing:
    raise CheckpointError(f"converter for {model} has no rule for parameters "
                          f"{['/'.join(p) for p in missing]}.")
  return params


def check_tree(params: Mapping, target: Mapping, model: str) -> None:
  """Raises unless `params` has every leaf of `target` (unboxed abstract params) in its shape."""
  want, have = leaf_paths(target), leaf_paths(params)
  missing = sorted(set(want) - set(have))
  if missing:
    raise CheckpointError(f"params lack {['/'.join(p) for p in missing]}; pass the `params` "
                          f"collection of a {model} built from this config.")
  for path, leaf in want.items():
    if tuple(have[path].shape) != tuple(leaf.shape):
      raise CheckpointError(f"parameter {'/'.join(path)} has shape {tuple(have[path].shape)} "
                            f"but the config needs {tuple(leaf.shape)}; params and config do "
                            "not match.")
