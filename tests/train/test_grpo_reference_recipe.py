"""The recipe's GRPO starts at its reference (LoRA on, the tiny demo): the first GRPO step logs
kl = 0 after SFT in the same run, and with --phases=grpo from that SFT run (config.init_from)."""
import json
import pathlib

import jax
import pytest

from affect_jax import sharding
from affect_jax.train import recipe
from configs import demo
from tests.train import recipe_mesh_worker as worker

HERE = pathlib.Path(__file__).resolve().parent

KL_ZERO = 1e-6          # k3 of equal log-probs is exactly 0; this is float rounding


def _first_grpo_kl(workdir: pathlib.Path) -> float:
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["phase"] == "grpo" and r["step"] == 1:
      return r["kl"]
  raise AssertionError(f"no GRPO step 1 in {workdir}/metrics.jsonl")


@pytest.mark.slow
def test_first_grpo_step_kl_is_zero_after_sft_and_from_init_from(tmp_path):
  c = worker.tiny_config((1, 1, 1))
  c.grpo_loss.beta = demo.get_config().grpo_loss.beta      # the KL term on, as in the demo
  assert c.grpo_loss.beta > 0
  c.data.cache_dir = str(tmp_path / "data")
  c.grpo.steps = 1
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  recipe.run(c, tmp_path / "sft_grpo", mesh=mesh)
  same_run = _first_grpo_kl(tmp_path / "sft_grpo")
  c.init_from = str(tmp_path / "sft_grpo" / "checkpoints" / "sft")
  recipe.run(c, tmp_path / "grpo", phases=("grpo",), mesh=mesh)
  from_sft = _first_grpo_kl(tmp_path / "grpo")
  print(f"first GRPO kl: after SFT {same_run:.3e}, --phases=grpo from the SFT run {from_sft:.3e}")
  assert abs(same_run) <= KL_ZERO and abs(from_sft) <= KL_ZERO
