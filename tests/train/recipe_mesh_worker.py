"""One tiny recipe run, on 1 device or on a mesh of 8 fake CPU devices (for test_recipe_mesh.py).

argv: output folder, mesh sizes 'data,fsdp,tensor' (e.g. 2,2,2; '1,1,1' = one device, as
`python -m launch.grpo` runs by default), and optionally 'port process_id num_processes': one of
several local processes started with jax.distributed (the mesh's devices split evenly over
them; every process writes into the same folder, process 0 writes the results).
Runs SFT + eval + GRPO + eval through recipe.run in <output>/run (data in <output>/data) and
writes <output>/result.json (every logged record, the summary's EW-F, the shardings of a few
state leaves as Orbax saved them and as restored onto the mesh) and <output>/params.npz (the
final GRPO checkpoint's trainable parameters).
"""
import json
import os
import pathlib
import sys

if __name__ == "__main__":     # before jax is imported (the test imports only tiny_config)
  _sizes = [int(x) for x in sys.argv[2].split(",")]
  _procs = int(sys.argv[5]) if len(sys.argv) > 5 else 1
  _devices = _sizes[0] * _sizes[1] * _sizes[2] // _procs
  os.environ["XLA_FLAGS"] = ("" if _devices == 1 else
                             f"--xla_force_host_platform_device_count={_devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from absl import logging  # noqa: E402

from affect_jax import distributed, experiment, sharding  # noqa: E402
from affect_jax.checkpoints import manager  # noqa: E402
from affect_jax.models import affectgpt  # noqa: E402
from affect_jax.rl import grpo_step  # noqa: E402
from affect_jax.generation import policy as policy_lib
from affect_jax.train import recipe  # noqa: E402
from configs import base, demo  # noqa: E402

# Leaves whose shardings are reported (state key, parameter path).
LEAVES = (
    ("trainable", "llm/layers/mlp/gate_proj/lora_a"),
    ("trainable", "llm/layers/mlp/gate_proj/lora_b"),
    ("trainable", "llm/layers/mlp/down_proj/lora_b"),
    ("trainable", "llm/layers/self_attn/o_proj/lora_a"),
    ("trainable", "fusion/video/proj/kernel"),
)


def tiny_config(mesh: tuple[int, int, int]):
  """The demo at toy sizes: 2 SFT and 2 GRPO steps, one length bucket each (one compile).

  LoRA as in the paper's recipe (adapters, fusion and projectors trained in both phases).
  """
  c = demo.get_config()
  c.data.synthetic.splits = dict(train=8, rl=8, test=8)
  c.data.prompt.prompt_buckets = (128,)
  c.data.prompt.sequence_buckets = (256,)
  c.model.llm.vocab_size = 1024      # >= the demo tokenizer; even, so tensor=2 splits it
  c.model.llm.lora = base.lora_config(4, 8.0, 0.0)
  c.features.batch_size = 8
  c.sft.steps, c.sft.batch_size, c.sft.log_every = 2, 8, 1
  c.sft.end_learning_rate = None      # constant rate: both steps update (no warmup)
  c.grpo.steps, c.grpo.prompts_per_step, c.grpo.log_every = 2, 8, 1
  c.grpo.learning_rate = 1e-3
  c.grpo_loss.num_generations = 2
  # A random model earns no reward and GRPO starts at its reference, so the true gradient is
  # 0. Without the KL term it is exactly 0 on every mesh; with it, 8 devices get float noise
  # from the reference and policy forwards (bitwise equal on 1 device) that AdamW turns into
  # lr-sized steps. (tests/rl/test_grpo_step.py compares updates with a real gradient.)
  c.grpo_loss.beta = 0.0
  c.sampling.max_new_tokens = 8
  c.eval.max_new_tokens, c.eval.batch_size = 8, 8
  c.checkpoint.save_every_steps = 100   # the final step only (always saved)
  c.checkpoint.verify_checksums = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def records(workdir: pathlib.Path) -> list[dict]:
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    out.append({k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s", "time")})
  return out


def _last_step(workdir: pathlib.Path) -> pathlib.Path:
  ckpt = workdir / "checkpoints" / "grpo"
  return ckpt / str(max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()))


def final_trainable(workdir: pathlib.Path) -> dict:
  """{path: numpy} of the trainable params in the newest GRPO checkpoint, read onto this
  process's first device (whatever devices and processes wrote it)."""
  path = _last_step(workdir) / "state"
  ckptr = ocp.PyTreeCheckpointer()
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=one),
                      ckptr.metadata(path).item_metadata.tree,
                      is_leaf=lambda x: hasattr(x, "shape"))
  tree = ckptr.restore(path, restore_args=args)
  return {"/".join(k): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(tree["trainable"]).items()}


def spec_text(spec) -> list | None:
  """A PartitionSpec as JSON, trailing Nones dropped (None for a single-device sharding)."""
  if spec is None:
    return None
  out = [list(a) if isinstance(a, tuple) else a for a in spec]
  while out and out[-1] is None:
    out.pop()
  return out


def saved_specs(workdir: pathlib.Path) -> dict:
  """The partition specs Orbax recorded for the run's final GRPO state."""
  meta = ocp.PyTreeCheckpointer().metadata(_last_step(workdir) / "state").item_metadata.tree
  out = {}
  for key, path in LEAVES:
    leaf = meta[key]
    for part in path.split("/"):
      leaf = leaf[part]
    out[f"{key}/{path}"] = spec_text(getattr(leaf.sharding, "partition_spec", None))
  out["rng"] = spec_text(getattr(meta["rng"].sharding, "partition_spec", None))
  return out


def restored_specs(config, workdir: pathlib.Path) -> dict:
  """The mesh run's final GRPO checkpoint restored onto the mesh as the loop does on resume."""
  mesh = experiment.make_mesh(config)
  rules = sharding.rules_from_config(config.sharding_rules)
  tok = experiment.make_tokenizer(config, pathlib.Path(config.data.cache_dir))
  model = experiment.model_config(config, tok)
  policy = policy_lib.AffectGPTPolicy(model)
  opt = experiment.optimizer(config.grpo, config.grpo.steps)
  abstract = affectgpt.abstract_params(model)
  state_sh = grpo_step.state_shardings(policy, abstract, opt, mesh, rules)
  state_abs = jax.eval_shape(lambda p: grpo_step.init_state(policy, p, opt, jax.random.key(0)),
                             sharding.unbox(abstract))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        {k: v for k, v in state_abs.items() if k not in manager.FROZEN_KEYS},
                        {k: v for k, v in state_sh.items() if k not in manager.FROZEN_KEYS})
  ckpt = manager.Checkpointer(workdir / "checkpoints" / "grpo", config.checkpoint,
                              read_only=True)
  restored = ckpt.restore_latest(target, restore_data=False)
  ckpt.close()
  out = {}
  for key, path in LEAVES:
    leaf = restored.state[key]
    for part in path.split("/"):
      leaf = leaf[part]
    out[f"{key}/{path}"] = spec_text(leaf.sharding.spec)
  out["rng"] = spec_text(restored.state["rng"].sharding.spec)
  return out


def main():
  out = pathlib.Path(sys.argv[1])
  if len(sys.argv) > 5:
    distributed.initialize(f"localhost:{sys.argv[3]}", int(sys.argv[5]), int(sys.argv[4]))
  logging.set_verbosity(logging.WARNING)
  config = tiny_config(tuple(int(x) for x in sys.argv[2].split(",")))
  config.data.cache_dir = str(out / "data")
  summary = recipe.run(config, out / "run")
  restored = restored_specs(config, out / "run")     # every process restores its shards
  if jax.process_index() != 0:
    return
  result = {
      "devices": jax.device_count(), "processes": jax.process_count(),
      "mesh": dict(experiment.make_mesh(config).shape),
      "summary": {k: v for k, v in summary.items() if k.endswith("ew_f")},
      "records": records(out / "run"),
      "restored_specs": restored,
  }
  if jax.process_count() == 1:   # Orbax reads from one process of several would wait for the others
    np.savez(out / "params.npz", **final_trainable(out / "run"))
    result["saved_specs"] = saved_specs(out / "run")
  (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
