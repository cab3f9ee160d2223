"""RunLog writes JSONL + TensorBoard events; plot_curves writes a PNG."""
import json

import numpy as np

from affect_jax.train import run_log as run_logging


def test_jsonl_tensorboard_and_plot(tmp_path):
  log = run_logging.RunLog(tmp_path, total_steps=5, phase="grpo", show=("reward",), enabled=True)
  for step in range(1, 6):
    log.write(step, {"reward": np.float32(step / 10), "nan": float("nan")}, tokens=100)
  log.close()
  rows = run_logging.read_metrics(tmp_path / "metrics.jsonl")
  np.testing.assert_allclose([r["reward"] for r in rows], [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
  assert all("nan" not in r and r["tokens_per_s"] > 0 for r in rows[1:])
  assert list((tmp_path / "tensorboard" / "grpo").glob("events.out.tfevents.*"))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"phase": "eval", "step": 5, "ew_f": 40.0}\n{"cut by a cra')
  png = run_logging.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
  assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["phase"] == "grpo"
