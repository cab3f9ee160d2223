"""Backend compiler flags are the launcher's business: the model core (affect_jax/models/) and
generation (affect_jax/generation/) set none (no XLA flags, compiler options or jax.config
updates), so the same library code runs tuned for whatever backend the launcher chose."""
from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("affect_jax/models", "affect_jax/generation")
# What setting a compiler flag looks like in source: XLA flag names, jit/compile options,
# jax.config updates and the XLA_FLAGS environment variable.
PATTERN = re.compile(r"--xla_|\bxla_[a-z]+_[a-z_]+|compiler_options|jax\.config\.update|"
                     r"XLA_FLAGS")


def offending_lines(source: str) -> list[tuple[int, str]]:
  return [(i, line.strip()) for i, line in enumerate(source.splitlines(), 1)
          if PATTERN.search(line)]


def test_the_pattern_catches_each_way_of_setting_a_flag():
  for line in ('jax.jit(f, compiler_options={"xla_cpu_copy_insertion_use_region_analysis": 1})',
               'os.environ["XLA_FLAGS"] = "--xla_cpu_enable_fast_math=false"',
               'jax.config.update("jax_default_matmul_precision", "highest")'):
    assert offending_lines(line), line
  assert not offending_lines("out = attention.attend(q, k, v, mask, impl=impl)")


@pytest.mark.parametrize("package", PACKAGES)
def test_library_code_sets_no_backend_flags(package):
  found = [f"{path.relative_to(ROOT)}:{i}: {line}"
           for path in sorted((ROOT / package).rglob("*.py"))
           for i, line in offending_lines(path.read_text())]
  assert not found, "backend flags belong in launch/:\n" + "\n".join(found)
