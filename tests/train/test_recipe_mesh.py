"""The recipe on the configured mesh: SFT + GRPO on 8 fake CPU devices equal 1 device, the state
lies on the shardings the rules give, and a batch the mesh cannot split fails before compiling;
the same recipe as 2 processes x 2 devices (jax.distributed, gloo) runs through, agrees with
1 device where the data order cannot matter, and leaves a checkpoint one process restores.

The runs are subprocesses (recipe_mesh_worker.py), started together so they share the CPUs:
one with 1 device (what `python -m launch.grpo` runs by default), one with
XLA_FLAGS=--xla_force_host_platform_device_count=8 and config.mesh = (2, 2, 2), and two
processes of 2 fake devices each with config.mesh = (1, 4, 1).
"""
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from affect_jax import experiment, sharding
from affect_jax.train import recipe
from tests.testlib import process as process_testlib
from tests.train import recipe_mesh_worker as worker

HERE = pathlib.Path(__file__).resolve().parent

MESH = (2, 2, 2)
# 8 devices sum in other orders than 1 device (sharded matmuls, all-reduces): float32 noise.
RTOL, ATOL = 1e-5, 1e-6
PARAM_ATOL = 5e-5     # observed 5e-6; AdamW can turn float noise in ~0 gradients into lr steps


def _spec(*axes):
  return [list(a) if isinstance(a, tuple) else a for a in axes]


MP_MESH = (1, 4, 1)      # over 2 processes x 2 devices


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: (result.json, output folder)} of the 1-device, (2, 2, 2) and 2-process runs."""
  tmp = tmp_path_factory.mktemp("recipe_mesh")
  mesh_text = lambda m: ",".join(map(str, m))
  port = str(process_testlib.free_port())
  commands = {"one": [tmp / "one", "1,1,1"], "mesh": [tmp / "mesh", mesh_text(MESH)],
              **{f"process{i}": [tmp / "processes", mesh_text(MP_MESH), port, str(i), "2"]
                 for i in range(2)}}
  procs = {}
  for name, args in commands.items():
    args[0].mkdir(exist_ok=True)
    procs[name] = subprocess.Popen([sys.executable, "-m", "tests.train.recipe_mesh_worker"]
                                   + [str(a) for a in args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   cwd=HERE.parents[1])
  logs = {name: p.communicate(timeout=1200)[0] for name, p in procs.items()}
  for name, p in procs.items():
    assert p.returncode == 0, f"{name} run failed:\n{logs[name][-4000:]}"
  folders = {"one": tmp / "one", "mesh": tmp / "mesh", "processes": tmp / "processes"}
  return {n: (json.loads((o / "result.json").read_text()), o) for n, o in folders.items()}


# The rules (sharding.DEFAULT_RULES): vocab -> tensor, embed -> fsdp, mlp / heads -> tensor,
# layers / lora replicated (trailing replicated axes dropped).
WANT_SPECS = {
    "trainable/llm/layers/mlp/gate_proj/lora_a": _spec(None, "fsdp"),            # embed, lora
    "trainable/llm/layers/mlp/gate_proj/lora_b": _spec(None, None, "tensor"),    # lora, mlp
    "trainable/llm/layers/mlp/down_proj/lora_b": _spec(None, None, "fsdp"),      # lora, embed
    "trainable/llm/layers/self_attn/o_proj/lora_a": _spec(None, "tensor"),       # heads, lora
    "trainable/fusion/video/proj/kernel": _spec(None, "fsdp"),
    "rng": [],
}


@pytest.mark.slow
def test_recipe_on_a_mesh_and_on_two_processes(runs):
  # One test for both, so that pytest-xdist runs the four subprocesses once (a module fixture
  # is set up again on every worker that runs a test of the module).
  _mesh_2x2x2_matches_one_device_and_shards_the_state(runs)
  _two_processes_run_the_recipe(runs)


def _mesh_2x2x2_matches_one_device_and_shards_the_state(runs):
  one, multi = runs["one"][0], runs["mesh"][0]
  params = {n: dict(np.load(runs[n][1] / "params.npz")) for n in ("one", "mesh")}
  assert one["devices"] == 1 and multi["devices"] == 8
  assert multi["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}

  # Every logged record: same phases and steps, same numbers to float32 noise.
  assert [(r["phase"], r["step"]) for r in one["records"]] == \
      [(r["phase"], r["step"]) for r in multi["records"]]
  assert [r["phase"] for r in one["records"]] == ["sft"] * 2 + ["eval"] + ["grpo"] * 2 + ["eval"]
  worst = 0.0
  for a, b in zip(one["records"], multi["records"]):
    assert a.keys() == b.keys(), (a, b)
    for k, v in a.items():
      if isinstance(v, float):
        np.testing.assert_allclose(b[k], v, rtol=RTOL, atol=ATOL, err_msg=f"{a['phase']} "
                                   f"step {a['step']} {k}")
        worst = max(worst, abs(b[k] - v))
      else:
        assert b[k] == v, (a["phase"], a["step"], k)
  assert one["summary"] == multi["summary"]
  print(f"largest |metric difference| 1 device vs {MESH}: {worst:.2e}")

  # The final GRPO parameters.
  assert params["one"].keys() == params["mesh"].keys()
  diffs = {k: float(np.max(np.abs(params["one"][k] - params["mesh"][k]))) for k in params["one"]}
  print(f"largest |param difference|: {max(diffs.values()):.2e} ({max(diffs, key=diffs.get)})")
  assert max(diffs.values()) <= PARAM_ATOL, diffs

  # The state as the training loop saved it and as restored onto the mesh.
  assert multi["saved_specs"] == WANT_SPECS
  assert multi["restored_specs"] == WANT_SPECS


def _two_processes_run_the_recipe(runs):
  """2 processes x 2 devices: every phase runs and the checkpoint restores in one process.

  Each process reads its own shard of the records and shuffles it, so the rows of a batch come in
  another order than on one process. SFT (the whole split in one batch, a mean loss) and the
  greedy evaluation do not depend on the order and equal 1 device; GRPO samples a different
  stream per row, so its numbers are only checked to be finite.
  """
  one, mp = runs["one"][0], runs["processes"][0]
  assert mp["processes"] == 2 and mp["devices"] == 4
  assert mp["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert [(r["phase"], r["step"]) for r in one["records"]] == \
      [(r["phase"], r["step"]) for r in mp["records"]]
  for a, b in zip(one["records"], mp["records"]):
    assert a.keys() == b.keys(), (a, b)
    for k, v in a.items():
      if not isinstance(v, float):
        continue
      assert math.isfinite(b[k]), (b["phase"], b["step"], k)
      if a["phase"] in ("sft", "eval"):
        np.testing.assert_allclose(b[k], v, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{a['phase']} step {a['step']} {k}")
  assert one["summary"] == mp["summary"]
  assert mp["restored_specs"] == WANT_SPECS       # every process restored its shards
  # The checkpoint the two processes wrote, read back here by one process.
  folder = runs["processes"][1] / "run"
  assert worker.saved_specs(folder) == WANT_SPECS
  trained = worker.final_trainable(folder)
  reference = dict(np.load(runs["one"][1] / "params.npz"))
  assert trained.keys() == reference.keys()
  for k, v in trained.items():
    assert v.shape == reference[k].shape and np.all(np.isfinite(v)), k


def test_a_batch_the_mesh_cannot_split_fails_before_compiling(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes them)")
  c = worker.tiny_config((2, 4, 1))
  c.sft.batch_size = 12
  with pytest.raises(ValueError, match=r"config\.sft\.batch_size=12.*data x fsdp = 8.*"
                                       r"--config\.sft\.batch_size to a multiple of 8"):
    recipe.run(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()       # nothing built, nothing compiled
  c = worker.tiny_config((2, 4, 1))
  c.grpo_loss.micro_batches = 2                # 8 prompts -> micro-batches of 4 over 8 devices
  with pytest.raises(ValueError, match=r"config\.grpo\.prompts_per_step=8: its micro-batches "
                                       r"of 4 rows.*multiple of 16"):
    experiment.check_mesh(c, experiment.make_mesh(c))
  c = worker.tiny_config((2, 4, 1))
  c.eval.batch_size = 4
  with pytest.raises(ValueError, match=r"config\.eval\.batch_size=4"):
    experiment.check_mesh(c, experiment.make_mesh(c), phases=("sft",))
  c = worker.tiny_config((3, 1, 1))
  with pytest.raises(ValueError, match=r"config\.mesh=.*-1"):
    experiment.make_mesh(c)


def test_a_parameter_the_mesh_cannot_split_names_the_rule():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes them)")
  from affect_jax.models import qwen2
  from affect_jax.models.lora import LoraConfig
  cfg = qwen2.Qwen2Config(vocab_size=651, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, lora=LoraConfig(rank=0))
  abstract = qwen2.abstract_params(cfg)           # boxed: logical axis names kept
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(ValueError, match=r"embed_tokens.*'vocab', size 651\) over tensor = 2.*"
                                       r"\[\"vocab\", null\]"):
    sharding.check_divisible(abstract, mesh, sharding.DEFAULT_RULES)
  sharding.check_divisible(abstract, sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}),
                           sharding.DEFAULT_RULES)


def test_state_placement_follows_the_rules_and_keeps_placed_params():
  """recipe.place_state on (2, 2, 2): params initialised on their shardings stay where they are
  (same buffers), the optimizer state follows its parameter, step and rng are replicated."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes them)")
  import optax
  from affect_jax.models import qwen2
  from affect_jax.models.lora import LoraConfig
  from affect_jax.rl import grpo_step
  from affect_jax.generation import policy as policy_lib
  from affect_jax.train import sft_step
  cfg = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, lora=LoraConfig(rank=0))
  policy = policy_lib.TextPolicy(cfg)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  abstract = qwen2.abstract_params(cfg)           # boxed: logical axis names kept
  params = jax.device_put(qwen2.init_params(cfg, jax.random.key(0)),
                          sharding.shardings(abstract, mesh, rules))
  opt = optax.adamw(1e-3)
  for steps, init in ((sft_step, sft_step.init_state), (grpo_step, grpo_step.init_state)):
    state_sh = steps.state_shardings(policy, abstract, opt, mesh, rules)
    state = recipe.place_state(init(policy, params, opt, jax.random.key(1)), state_sh)
    assert ("reference" in state) == (steps is grpo_step)
    emb = state["trainable"]["embed_tokens"]["embedding"]
    assert emb is params["embed_tokens"]["embedding"]                 # not copied
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    gate = state["trainable"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    mu = state["opt_state"][0].mu["layers"]["mlp"]["gate_proj"]["kernel"]
    assert mu.sharding.spec == gate.sharding.spec
    assert state["rng"].sharding.spec == jax.sharding.PartitionSpec()
    assert state["step"].sharding.is_fully_replicated and len(state["step"].sharding.device_set) == 8
