"""One process of the 2-process x 2-device GRPO check (run by test_grpo_multiprocess.py).

argv: coordinator port, process id, output JSON path (written by process 0).
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

from affect_jax import distributed, sharding  # noqa: E402


def main():
  port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  assert distributed.initialize(f"localhost:{port}", 2, pid)
  from tests.rl import grpo_multiprocess_common as common
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
  history, params = common.run(mesh, distributed)
  if pid == 0:
    with open(out, "w") as f:
      json.dump({"history": history, "params": params, "devices": jax.device_count(),
                 "processes": jax.process_count()}, f)


if __name__ == "__main__":
  main()
