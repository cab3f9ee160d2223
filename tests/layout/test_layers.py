"""The dependency order of the code, bottom to top (README, "What is where").

A module may import modules of its own layer or of layers below it, never above; `configs/` is
imported only by `launch/` and `tests/` (library functions take config sections or dataclasses
as arguments). Every import counts: top-level, inside functions, and `importlib` strings are not
used to get round it (launch/benchmark.py's table names bench modules, which sit below launch).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Bottom to top. A module's layer is that of the longest prefix listed here.
LAYERS = (
    ("affect_jax.errors", "affect_jax.config_dataclass", "affect_jax.sharding", "affect_jax.diskspace",
     "affect_jax.safe_pickle", "affect_jax.emotion"),
    ("affect_jax.distributed",),
    ("affect_jax.models",),
    ("affect_jax.checkpoints",),
    ("affect_jax.data",),
    ("affect_jax.generation",),
    ("affect_jax.optim",),
    ("affect_jax.rewards",),
    ("affect_jax.rl",),
    ("affect_jax.experiment",),
    ("affect_jax.train", "affect_jax.eval"),
    ("affect_jax.bench",),
    ("configs",),
    ("launch",),
)


def layer_of(module: str) -> int | None:
  if module == "affect_jax":          # the package's __init__, empty
    return 0
  best, rank = -1, None
  for i, prefixes in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > best:
        best, rank = len(p), i
  return rank


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, module) of every import of a project module in the file, relative ones resolved."""
  return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
  tree = ast.parse(source)
  package = module.split(".")
  if not is_package:
    package = package[:-1]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      for a in node.names:   # `from pkg import module` imports pkg.module
        sub = f"{base}.{a.name}"
        is_module = (ROOT / (sub.replace(".", "/") + ".py")).exists() or \
            (ROOT / sub.replace(".", "/") / "__init__.py").exists()
        out.append((node.lineno, sub if is_module else base))
  return [(n, m) for n, m in out if m.split(".")[0] in ("affect_jax", "configs", "launch")]


def sources():
  for top in ("affect_jax", "configs", "launch"):
    yield from sorted((ROOT / top).rglob("*.py"))


def violations() -> list[str]:
  bad = []
  for path in sources():
    mine = module_name(path)
    rank = layer_of(mine)
    if rank is None:
      bad.append(f"{path.relative_to(ROOT)}: module {mine} is in no layer; add it to LAYERS "
                 "and to README's 'What is where'.")
      continue
    for line, target in imports(path):
      theirs = layer_of(target)
      if theirs is None:
        bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}, which is in no layer.")
      elif target.split(".")[0] == "configs" and mine.split(".")[0] != "launch" \
          and not mine.startswith("configs"):
        bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}; only launch/ and tests/ "
                   "import configs/ (pass the config section in instead).")
      elif theirs > rank:
        bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} (layer {rank}: {LAYERS[rank][0]}) "
                   f"imports {target} (layer {theirs}: {LAYERS[theirs][0]}), a layer above it.")
  return bad


def test_no_module_imports_a_layer_above_it():
  bad = violations()
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from affect_jax.train import recipe\n", "affect_jax.train.recipe"),
    ("from configs import data as data_config\n", "configs.data"),
    ("def f():\n  from affect_jax.rl import grpo_step\n", "affect_jax.rl.grpo_step"),
    ("import affect_jax.bench.flops\n", "affect_jax.bench.flops"),
    ("from ..train import recipe\n", "affect_jax.train.recipe"),
])
def test_the_check_sees_every_kind_of_import(source, expected):
  """The parser finds top-level, nested and relative imports (so the test above can fail)."""
  found = [m for _, m in imports_in(source, "affect_jax.models.probe", is_package=False)]
  assert found == [expected]
