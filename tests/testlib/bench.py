"""Runs `python -m launch.benchmark` in a subprocess (fresh JAX, its own device count) and
reads the one JSON object it prints last."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args, devices=None) -> subprocess.CompletedProcess:
  """The benchmark CLI with `args`; devices: fake CPU devices (XLA_FLAGS) when given."""
  env = dict(os.environ)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, "-m", "launch.benchmark", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def last_json(r: subprocess.CompletedProcess) -> dict:
  """The JSON object of a successful run (its stderr tail in the failure message)."""
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])
