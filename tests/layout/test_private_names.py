"""No module uses another module's private (_name) functions or values: what a module shares,
it names publicly (the setup path in affect_jax/experiment.py, for example, is public so that
training, evaluation and the benchmarks call the same functions)."""
from __future__ import annotations

import ast

import pytest

from tests.layout import test_layers as layers

ROOT = layers.ROOT


def private_uses(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
  """(line, 'module._name') of every private name of another project module the source uses:
  `from m import _f`, and `alias._f` where alias is an imported project module."""
  tree = ast.parse(source)
  package = module.split(".") if is_package else module.split(".")[:-1]
  aliases: dict[str, str] = {}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.asname:
          aliases[a.asname] = a.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      for a in node.names:
        full = f"{base}.{a.name}"
        if a.name.startswith("_") and not a.name.startswith("__") and base != module:
          out.append((node.lineno, full))
        aliases[a.asname or a.name] = full
  project = {k: v for k, v in aliases.items()
             if v.split(".")[0] in ("affect_jax", "configs", "launch") and v != module}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in project and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      out.append((node.lineno, f"{project[node.value.id]}.{node.attr}"))
  return sorted(out)


def test_no_module_uses_another_modules_private_names():
  bad = []
  for path in layers.sources():
    name = layers.module_name(path)
    for line, target in private_uses(path.read_text(), name, path.name == "__init__.py"):
      bad.append(f"{path.relative_to(ROOT)}:{line}: uses {target}; make it public (no leading "
                 "underscore) in its module, or move it where both callers can reach it.")
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from affect_jax.train import recipe\nrecipe._tokenizer(c)\n", "affect_jax.train.recipe._tokenizer"),
    ("from affect_jax.data import tokenizer as t\nt._x\n", "affect_jax.data.tokenizer._x"),
    ("from affect_jax.train.recipe import _place_state\n", "affect_jax.train.recipe._place_state"),
    ("import affect_jax.train.recipe as r\nr._y()\n", "affect_jax.train.recipe._y"),
])
def test_the_check_sees_private_uses(source, expected):
  """The parser finds both spellings (so the test above can fail)."""
  assert [t for _, t in private_uses(source, "affect_jax.eval.probe", False)] == [expected]


def test_own_and_dunder_names_are_not_private_uses():
  source = "from affect_jax.train import recipe\nrecipe.__doc__\n_own = 1\n_own\n"
  assert private_uses(source, "affect_jax.eval.probe", False) == []
