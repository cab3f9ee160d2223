"""RunLog writes JSONL + TensorBoard events; plot_curves writes a PNG."""
import json

import numpy as np

from affect_jax.train import run_log as run_logging
from tests.testlib.tensorboard import summaries


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


def test_histograms_and_sampled_completions(tmp_path):
  log = run_logging.RunLog(tmp_path, total_steps=2, phase="grpo", enabled=True)
  counts = np.array([3, 0, 4, 1], np.int32)          # values 0, 2, 2, 2, 2, 3, 0, 0
  log.write(2, {"reward": np.float32(0.5), "hist/labels": counts,
                "samples": {"tokens": np.zeros((1, 2), np.int32)}})
  rows = [dict(name="clip|1", completion="a|b\nc", terms={"accuracy": 0.5, "n_pred": 2},
               reward=0.25, advantage=-1.0)]
  log.write_samples(2, rows)
  log.close()
  record = run_logging.read_metrics(tmp_path / "metrics.jsonl")[0]
  assert record["hist/labels"] == [3, 0, 4, 1] and "samples" not in record
  tb = summaries(tmp_path / "tensorboard" / "grpo")
  h = tb["grpo/hist/labels"][0][1].histo
  values = np.array([0, 0, 0, 2, 2, 2, 2, 3])
  assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (0, 3, 8, values.sum(),
                                                         (values ** 2).sum())
  assert list(h.bucket) == [3, 0, 4, 1] and list(h.bucket_limit) == [0.5, 1.5, 2.5, 3.5]
  (line,) = (tmp_path / "samples.jsonl").read_text().splitlines()
  assert json.loads(line) == {"phase": "grpo", "step": 2, **rows[0]}
  table = tb["grpo/samples/text_summary"][0][1].tensor.string_val[0].decode().splitlines()
  assert table == ["| name | completion | accuracy | n_pred | reward | advantage |",
                   "|---|---|---|---|---|---|",
                   "| clip\\|1 | a\\|b c | 0.5 | 2 | 0.25 | -1 |"]
