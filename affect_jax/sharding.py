"""Device mesh and logical-axis sharding.

Parameters and the main activations carry logical axis names (`LOGICAL_AXES` lists them); a rules
table, held in the config, maps each name to mesh axes of the (data, fsdp, tensor) mesh. The same
model code therefore runs on 1 device, on 8 fake CPU devices and on a pod slice: only the mesh
and the rules change.

Inside model code, call `constrain(x, ("batch", "length", "embed"))`. It is a no-op unless a mesh
and rules are active (`with sharding.active(mesh, rules):` around tracing).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Every logical axis name the models use, with what it means.
LOGICAL_AXES = {
    "batch": "examples (rows) of a batch",
    "length": "sequence positions",
    "kv_length": "KV-cache slots",
    "embed": "model width (hidden size) of the decoder or an encoder",
    "mlp": "feed-forward inner width",
    "heads": "query attention heads",
    "kv_heads": "key/value attention heads",
    "head_dim": "per-head width",
    "vocab": "vocabulary",
    "layers": "stacked (scanned) layers",
    "lora": "LoRA rank",
    "frames": "video frames / audio windows of a clip",
    "conv_in": "input channels of a convolution kernel",
    "conv_out": "output channels of a convolution kernel",
    "kernel": "spatial or temporal taps of a convolution kernel",
    "norm": "normalisation scales and biases",
}

# FSDP on the width, tensor parallelism on heads / mlp / vocab; activations split on batch.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("kv_length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("lora", None),
    ("frames", None),
    ("conv_in", None),
    ("conv_out", None),
    ("kernel", None),
    ("norm", None),
)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Normalises a rules table from a config (list of [name, axis | [axes] | None]) to tuples."""
  out = []
  for entry in rules:
    if len(entry) != 2:
      raise ValueError(f"sharding rule {entry!r}: expected [logical_name, mesh_axes].")
    name, axes = entry
    if name not in LOGICAL_AXES:
      raise ValueError(f"sharding rule for '{name}': unknown logical axis; known: "
                       f"{sorted(LOGICAL_AXES)}.")
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
      bad = [a for a in axes if a not in MESH_AXES]
    else:
      bad = [axes] if axes is not None and axes not in MESH_AXES else []
    if bad:
      raise ValueError(f"sharding rule for '{name}': unknown mesh axes {bad}; use {MESH_AXES}.")
    out.append((name, axes))
  return tuple(out)


def mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves one -1 entry of {data, fsdp, tensor} so the product equals num_devices."""
  unknown = [k for k in shape if k not in MESH_AXES]
  if unknown:
    raise ValueError(f"mesh axes {unknown} are unknown; use {MESH_AXES}.")
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {dict(shape)}: {num_devices} devices are not divisible by {fixed}.")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {dict(shape)} has {math.prod(sizes.values())} devices but "
                     f"{num_devices} are available; make the sizes multiply to {num_devices} "
                     "or set one axis to -1.")
  return sizes


def make_mesh(shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(shape or {"fsdp": -1}, len(devices))
  dims = tuple(sizes[a] for a in MESH_AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(dims, MESH_AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(dims), MESH_AXES, axis_types=auto)


def parse_mesh_flag(text: str) -> dict[str, int]:
  """'data=2,fsdp=4' or '2,4,1' -> {data: 2, fsdp: 4, tensor: 1}."""
  text = text.strip()
  if not text:
    return {"fsdp": -1}
  parts = [p.strip() for p in text.split(",") if p.strip()]
  if all("=" in p for p in parts):
    return {k.strip(): int(v) for k, v in (p.split("=", 1) for p in parts)}
  try:
    values = [int(p) for p in parts]
  except ValueError:
    raise ValueError(f"--mesh={text!r}: use 'data=2,fsdp=4,tensor=1' or '2,4,1'.") from None
  if len(values) > len(MESH_AXES):
    raise ValueError(f"--mesh={text!r}: at most {len(MESH_AXES)} sizes ({MESH_AXES}).")
  return dict(zip(MESH_AXES, values))


def logical_specs(boxed_tree: Any) -> Any:
  """PartitionSpecs of logical names for a tree from `init` (or its eval_shape)."""
  return nn.get_partition_spec(boxed_tree)


def shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence) -> Any:
  """NamedShardings on `mesh` for every leaf of a boxed (LogicallyPartitioned) tree."""
  return nn.logical_to_mesh_sharding(logical_specs(boxed_tree), mesh, tuple(rules))


def check_divisible(boxed_tree: Any, mesh: Mesh, rules: Sequence, *,
                    where: str = "config.sharding_rules") -> None:
  """Raises before compiling when a leaf's dimension cannot be split evenly over the mesh axes
  its logical name maps to (e.g. vocab 1001 over tensor=2), naming the leaf, the rule and the fix.

  Args:
    boxed_tree: a tree from `init` or its eval_shape (LogicallyPartitioned leaves).
  """
  rules = tuple(rules)
  names = logical_specs(boxed_tree)
  flat_names = jax.tree_util.tree_flatten_with_path(
      names, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
  flat_shapes = jax.tree.leaves(unbox(boxed_tree))
  bad, logical_bad = [], []
  for (path, spec), leaf in zip(flat_names, flat_shapes):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) or PartitionSpec()
    for dim, (logical, axes) in enumerate(zip(spec, mesh_spec)):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      ways = math.prod(mesh.shape[a] for a in axes)
      if leaf.shape[dim] % ways:
        bad.append(f"{jax.tree_util.keystr(path)} dim {dim} ('{logical}', size "
                   f"{leaf.shape[dim]}) over {'x'.join(axes)} = {ways}")
        logical_bad.append(logical)
  if bad:
    raise ValueError(
        f"{len(bad)} parameter dimension(s) cannot be split evenly over the mesh "
        f"{dict(mesh.shape)}: {'; '.join(bad[:4])}. Choose mesh sizes that divide them "
        f"(config.mesh), make the model dimension a multiple (model.llm.vocab_size may "
        f"exceed the tokenizer's size), or replicate that logical axis in {where} "
        f"(e.g. [\"{logical_bad[0]}\", null]).")


def check_batch_divisible(rows: int, mesh: Mesh | None = None, *, what: str, fix: str,
                          micro: int = 1, micro_what: str = "micro_batches", unit: str = "rows",
                          mesh_what: str = "the mesh", processes: int = 1) -> None:
  """Errors before anything is compiled when a global batch of `rows` cannot be split into equal
  parts: `micro` micro-batches, each over the mesh's data x fsdp devices (the 'batch' axes), and
  the whole over `processes` (each feeds its own rows).

  what: the batch in the messages ('config.sft.batch_size=12'); fix: the words before "a
  multiple of N" ('set --config.sft.batch_size to'); micro_what: what sets `micro`
  ('config.sft.micro_batches'); unit: what a row is; mesh_what: what sets the mesh.
  """
  if micro < 1 or rows % micro:
    raise ValueError(f"{what} is not a multiple of {micro_what}={micro}; use a multiple of "
                     f"{micro} or another number of micro-batches.")
  part = rows // micro
  if mesh is not None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if part % shards:
      mesh_text = ", ".join(f"{a}={n}" for a, n in mesh.shape.items())
      it = f"its micro-batches of {part} {unit} (/ {micro_what}={micro})" if micro > 1 else "it"
      raise ValueError(
          f"{what}: {it} cannot be split over the mesh's data x fsdp = {shards} devices "
          f"({mesh_text}); {fix} a multiple of {shards * micro}, or change {mesh_what} so that "
          f"data x fsdp divides {part}.")
  if rows % processes:
    raise ValueError(f"{what} cannot be split over the {processes} processes (each feeds its "
                     f"own rows); use a multiple of {processes}.")


def named(mesh: Mesh, logical: Sequence[str | None], rules: Sequence) -> NamedSharding:
  """NamedSharding for one array whose axes have the given logical names."""
  spec = nn.logical_to_mesh_axes(tuple(logical), tuple(rules))
  return NamedSharding(mesh, spec if spec is not None else PartitionSpec())


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def active(mesh: Mesh | None, rules: Sequence | None) -> Iterator[None]:
  """Makes `constrain` effective while tracing inside the block."""
  if mesh is None or rules is None:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical axis names; a no-op outside `active(...)`."""
  return nn.with_logical_constraint(x, tuple(logical))


def unbox(tree: Any) -> Any:
  """Strips LogicallyPartitioned boxes, leaving plain arrays."""
  return nn.meta.unbox(tree)


def param_bytes(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(unbox(tree)))


def jit_train_step(step, *, mesh: Mesh | None = None, rules: Sequence | None = None,
                   state_sh: Any = None, batch_sh: Any = None, check=None):
  """jax.jit of `step(state, batch) -> (state, metrics)` with the state donated and, on a mesh,
  explicit in/out shardings (metrics replicated). The returned callable runs `check(state,
  batch)` first (shape errors before compiling) and traces inside `active(mesh, rules)`; it
  also exposes `.jitted` and `.lower(state, batch)`."""
  kwargs = {"donate_argnums": (0,)}
  if mesh is not None and state_sh is not None:
    kwargs["in_shardings"] = (state_sh, batch_sh)
    kwargs["out_shardings"] = (state_sh, replicated(mesh))
  jitted = jax.jit(step, **kwargs)

  def run(state, batch):
    if check is not None:
      check(state, batch)
    with active(mesh, rules):
      return jitted(state, batch)

  def lower(state, batch):
    with active(mesh, rules):
      return jitted.lower(state, batch)

  run.jitted = jitted
  run.lower = lower
  return run
