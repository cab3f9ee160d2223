"""A tiny training loop with checkpoints and preemption handling, run as a subprocess by
test_manager.py (SIGTERM and kill -9 mid-run, then resume).

  python -m tests.checkpoints.preemption_worker --workdir=D --steps=30 --mesh=data=2,fsdp=4
  (several processes: add --num_processes=2 --process_id=I --port=P, one command per process)

Each step: next batch of a shuffled grain dataset -> target t; rng-dependent noise; one Adam step
on the quadratic 0.5 * |w * scale - t|^2 + noise . w. Every `--save_every` steps it saves
(async); on SIGTERM it saves synchronously and exits with preemption.EXIT_CODE. It prints
`step K CHECKSUM` after each step (CHECKSUM: bitwise fingerprint of trainable, opt_state, rng)
and (process 0) writes the final state to WORKDIR/final.npz.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import time  # noqa: E402

import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from affect_jax import distributed, sharding  # noqa: E402
from affect_jax.checkpoints import manager  # noqa: E402
from affect_jax.train import preemption  # noqa: E402
from configs.checkpoint import get_checkpoint_config  # noqa: E402

BATCH = 4
RULES = (("batch", None), ("embed", "fsdp"), ("mlp", "data"), ("norm", None))


def define_flags() -> None:
  """Flags of the command line (defined only when run as a script, so importing this module
  from the tests adds no global flags)."""
  flags.DEFINE_string("workdir", None, "Run folder (checkpoints/, final.npz).", required=True)
  flags.DEFINE_integer("steps", 30, "Total steps.")
  flags.DEFINE_integer("save_every", 3, "Checkpoint interval in steps.")
  flags.DEFINE_float("step_seconds", 0.0, "Sleep after each step.")
  flags.DEFINE_string("mesh", "data=2,fsdp=4", "Mesh sizes.")
  flags.DEFINE_integer("num_processes", 1, "Processes (jax.distributed).")
  flags.DEFINE_integer("process_id", 0, "This process's index.")
  flags.DEFINE_integer("port", 0, "Coordinator port on localhost (several processes).")


def dataset():
  return (grain.MapDataset.range(100).shuffle(seed=0).repeat().batch(BATCH)
          .to_iter_dataset())


def init(mesh):
  """The state dict (grpo_step's layout) and its shardings on `mesh`."""
  opt = optax.adam(0.1)
  trainable = {"w": jnp.linspace(-1.0, 1.0, 8 * 16, dtype=jnp.float32).reshape(8, 16)}
  state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
           "frozen": {"scale": jnp.linspace(0.5, 1.5, 16, dtype=jnp.float32)},
           "opt_state": opt.init(trainable), "rng": jax.random.key(7)}
  w_sh = sharding.named(mesh, ("mlp", "embed"), RULES)
  rep = sharding.replicated(mesh)
  state_sh = {"step": rep, "trainable": {"w": w_sh}, "frozen": {"scale": rep},
              "opt_state": optax.tree_map_params(opt, lambda _: w_sh, state["opt_state"],
                                                 transform_non_params=lambda _: rep),
              "rng": rep}
  return opt, distributed.put(state, state_sh), state_sh


def make_update(opt, state_sh):
  def update(state, batch):
    rng, noise_key = jax.random.split(state["rng"])
    w = state["trainable"]["w"]
    target = jnp.mean(batch.astype(jnp.float32)) / 100.0
    noise = 0.1 * jax.random.normal(noise_key, w.shape)
    grad = (w * state["frozen"]["scale"] - target) * state["frozen"]["scale"] + noise
    updates, opt_state = opt.update({"w": grad}, state["opt_state"], state["trainable"])
    return dict(state, step=state["step"] + 1, rng=rng, opt_state=opt_state,
                trainable=optax.apply_updates(state["trainable"], updates))
  return jax.jit(update, out_shardings=state_sh, donate_argnums=0)


def fingerprint(state) -> int:
  tree = {"trainable": state["trainable"], "opt_state": state["opt_state"],
          "rng": jax.random.key_data(state["rng"])}
  return sum(manager.checksums(tree).values()) % 2**32


def host(x) -> np.ndarray:
  """The full value of a global array on this host (several processes: all-gathered)."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def main(argv):
  del argv
  opts = flags.FLAGS
  workdir = pathlib.Path(opts.workdir)
  if opts.num_processes > 1:
    distributed.initialize(f"localhost:{opts.port}", opts.num_processes, opts.process_id)
  mesh = sharding.make_mesh(sharding.parse_mesh_flag(opts.mesh))
  cfg = get_checkpoint_config(save_every_steps=opts.save_every, keep=2, async_save=True)
  opt, state, state_sh = init(mesh)
  update = make_update(opt, state_sh)
  it = iter(dataset())
  ckpt = manager.Checkpointer(workdir / "checkpoints", cfg, config={"steps": opts.steps})
  start = 0
  restored = ckpt.restore_latest(manager.abstract(state), data_iterator=it)
  if restored is not None:
    state = {**state, **restored.state}
    start = restored.meta["step"]
  print(f"start {start}", flush=True)
  with preemption.Preemption(cfg) as stop:
    for step in range(start, opts.steps):
      batch = distributed.put(np.asarray(next(it)), sharding.replicated(mesh))
      state = update(state, batch)
      done = step + 1
      ckpt.save(done, state, data=it)
      print(f"step {done} {fingerprint(state)}", flush=True)
      if stop.should_stop(done):
        ckpt.save(done, state, data=it, force=True, wait=True)
        ckpt.close()
        print(f"preempted {done} {stop.signal_name}", flush=True)
        sys.exit(preemption.EXIT_CODE)
      time.sleep(opts.step_seconds)
  ckpt.close()
  adam = state["opt_state"][0]
  final = dict(step=host(state["step"]), w=host(state["trainable"]["w"]), mu=host(adam.mu["w"]),
               nu=host(adam.nu["w"]), count=host(adam.count),
               rng=host(jax.random.key_data(state["rng"])))
  if jax.process_index() == 0:
    np.savez(workdir / "final.npz", **final)
  print("done", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
