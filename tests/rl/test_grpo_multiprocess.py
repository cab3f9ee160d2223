"""2 local processes x 2 CPU devices with jax.distributed give the same GRPO steps as 1 device."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from affect_jax import sharding
from tests.testlib import process as process_testlib

pytestmark = pytest.mark.slow   # minutes: started first (conftest)

HERE = pathlib.Path(__file__).resolve().parent


def test_two_processes_match_one_device(tmp_path):
  from tests.rl import grpo_multiprocess_common as common
  port, out = process_testlib.free_port(), tmp_path / "mp.json"
  # No persistent compilation cache: a cache hit in one process and a compile in the other
  # put them out of step by more than the collectives' timeout on a loaded machine.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.rl.grpo_multiprocess_worker", str(port),
                             str(i), str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=HERE.parents[1], env=env) for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
  result = json.loads(out.read_text())
  assert result["devices"] == 4 and result["processes"] == 2
  ref_hist, ref_params = common.run(sharding.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  for a, b in zip(ref_hist, result["history"]):
    assert a["reward"] == b["reward"]
    for k in ("loss", "kl", "grad_norm", "entropy"):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)
  np.testing.assert_allclose(ref_params, result["params"], rtol=1e-5)
