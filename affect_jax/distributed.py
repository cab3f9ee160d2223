"""Several hosts: jax.distributed start-up and per-host batches.

On a TPU pod slice or under SLURM / Open MPI, `initialize()` with no arguments lets JAX detect
the cluster. Elsewhere (several GPU hosts, or several CPU processes on one machine for tests)
pass the coordinator explicitly, by flags or by the environment variables
  AFFECT_JAX_COORDINATOR=host:port  AFFECT_JAX_NUM_PROCESSES=N  AFFECT_JAX_PROCESS_ID=i
Each process then feeds only its own rows: `global_batch` assembles the global arrays with
jax.make_array_from_process_local_data, so no host ever holds the whole batch.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import jax
import numpy as np

from affect_jax import sharding

_ENV = ("AFFECT_JAX_COORDINATOR", "AFFECT_JAX_NUM_PROCESSES", "AFFECT_JAX_PROCESS_ID")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str = "gloo") -> bool:
  """Starts jax.distributed when more than one process is configured; returns True if it did.

  Arguments default to the AFFECT_JAX_* environment variables. With none set and no cluster
  environment JAX recognises, this is a single-process run and nothing happens.
  """
  coordinator = coordinator or os.environ.get(_ENV[0])
  if num_processes is None and os.environ.get(_ENV[1]):
    num_processes = int(os.environ[_ENV[1]])
  if process_id is None and os.environ.get(_ENV[2]):
    process_id = int(os.environ[_ENV[2]])
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError("distributed: give all of coordinator, num_processes and process_id "
                     f"(flags or {', '.join(_ENV)}), or none of them.")
  if not any(given):
    cluster = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                            "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS"))
    if not cluster:
      return False
    jax.distributed.initialize()
    return True
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"distributed: process_id={process_id} must be in [0, {num_processes}).")
  if num_processes == 1:
    return False
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return True


def local_rows(global_rows: int) -> slice:
  """The slice of a global batch this process feeds (processes own equal consecutive blocks)."""
  n, i = jax.process_count(), jax.process_index()
  if global_rows % n:
    raise ValueError(f"a global batch of {global_rows} rows cannot be split over {n} processes; "
                     f"use a multiple of {n}.")
  per = global_rows // n
  return slice(i * per, (i + 1) * per)


def global_batch(local: Mapping[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
  """Global arrays split on the batch axis, from this process's rows only.

  Args:
    local: {name: array[B_local, ...]}; every process passes the same names and trailing shapes.
  """
  out = {}
  for name, x in local.items():
    x = np.asarray(x)
    sh = sharding.named(mesh, ("batch",) + (None,) * (x.ndim - 1), rules)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    out[name] = jax.make_array_from_process_local_data(sh, x, global_shape)
  return out


def put(tree, shardings):
  """Places host values that every process holds identically (e.g. freshly initialised or
  restored parameters) onto global shardings; works with one process or many.

  jax.device_put only accepts shardings whose devices this process can address; this builds each
  global array from the local shards instead. PRNG key leaves are carried as their key data.
  """
  def one(x, sh):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      data = one(np.asarray(jax.random.key_data(x)), sh)
      return jax.random.wrap_key_data(data, impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sh, lambda index: host[index])
  return jax.tree.map(one, tree, shardings)


def sync(name: str) -> None:
  """A barrier: returns once every process has reached `sync(name)` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Runs the block on process 0 first, then on the others.

  For host-side work that writes files the others may read (building a dataset, training a
  tokenizer): on storage every host sees, the others then find it done; on per-host disks each
  builds its own copy. The block must not run computations that span processes.
  """
  if jax.process_count() == 1:
    yield
    return
  if jax.process_index() != 0:
    sync(f"{name}: process 0 done")
  yield
  if jax.process_index() == 0:
    sync(f"{name}: process 0 done")


def all_processes(flag: bool) -> bool:
  """True when `flag` is true on every process (for decisions that every process must make the
  same way, e.g. skipping work that runs collectives)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def host_value(x) -> np.ndarray:
  """A replicated global array as a host numpy array, with one process or many (np.asarray
  refuses arrays that span other processes' devices; a replicated one is whole on each)."""
  if not x.is_fully_replicated:
    raise ValueError(f"host_value: the array (sharding {x.sharding}) is not replicated; "
                     "gather it first (out_shardings=replicated).")
  return np.asarray(x.addressable_data(0))
