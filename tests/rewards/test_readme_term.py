"""README's worked example of a new reward term (affect_jax/rewards/terms/brevity.py plus one
config line) works in a tiny demo GRPO run: it is in the total and in metrics.jsonl."""
import json
import pathlib
import re

import jax
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.train import recipe
from tests.train import recipe_mesh_worker as worker

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _readme_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_shows_the_term_module_verbatim():
  module = (ROOT / "affect_jax" / "rewards" / "terms" / "brevity.py").read_text()
  assert module in _readme_blocks()


@pytest.mark.slow
def test_readme_term_in_a_tiny_grpo_run(tmp_path):
  line = next(b for b in _readme_blocks() if b.startswith("c.reward.terms.brevity"))
  c = worker.tiny_config((1, 1, 1))
  c.data.cache_dir = str(tmp_path / "data")
  c.sft.steps, c.grpo.steps = 1, 2
  # Dynamic sampling in the same run: roll out 2 x 8 prompts, train on 8 of them.
  c.grpo_loss.oversample = 2
  exec(line, {"c": c})                                 # the README's one config line
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  recipe.run(c, tmp_path / "run", mesh=mesh)
  grpo = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
          if json.loads(l)["phase"] == "grpo"]
  assert [r["step"] for r in grpo] == [1, 2]
  for r in grpo:
    assert r["dynamic_sampling/groups_rolled_out"] == 2 * c.grpo.prompts_per_step
    assert (r["dynamic_sampling/groups_kept"] + r["dynamic_sampling/groups_short"]
            == c.grpo.prompts_per_step)
    assert 0.0 <= r["reward/brevity"] <= 1.0
    # total = accuracy + 0.1 format + 0.05 brevity (alignment, dual off; no penalty).
    want = r["reward/accuracy"] + 0.1 * r["reward/format"] + 0.05 * r["reward/brevity"]
    np.testing.assert_allclose(r["reward"], want, rtol=1e-5, atol=1e-6)
  # 8 new tokens at most, target 48: every completion is short.
  assert grpo[0]["reward/brevity"] == 1.0
