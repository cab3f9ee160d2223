"""launch.prepare: the CLI builds the demo and prints a JSON summary; errors exit 2."""
import json
import os
import pathlib
import subprocess
import sys

from affect_jax.data import builders
from affect_jax.data import pipeline
from configs import data as data_config
from launch import prepare

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = ["--config.synthetic.splits.train=4", "--config.synthetic.splits.rl=2",
         "--config.synthetic.splits.test=2", "--config.media.num_frames=2",
         "--config.media.image_size=16"]


def _run(*args):
  return subprocess.run([sys.executable, "-m", "launch.prepare", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_builds_the_demo_and_prints_a_json_summary(tmp_path):
  out = tmp_path / "out"
  proc = _run(f"--out_dir={out}", "--dataset=demo", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["dataset"] == "demo" and summary["media"] == "raw" and not summary["reused"]
  assert {s: v["kept"] for s, v in summary["splits"].items()} == dict(train=4, rl=2, test=2)
  assert all(v["skipped"] == 0 and v["skipped_rows"] == [] for v in summary["splits"].values())
  source, meta = builders.load_source(summary["path"], "rl")
  assert len(source) == 2 and meta["num_frames"] == 2 and meta["image_size"] == 16
  assert pipeline.decode_example(source[0])["frames"].shape == (2, 16, 16, 3)
  assert (out / "source").is_dir()            # the generated demo

  # Break two clips of the train split: both are skipped, counted and named (decoded by two
  # worker processes this time).
  demo_dir = next((out / "source").glob("demo_*"))
  os.remove(demo_dir / "train" / "video" / "train_00001.mp4")
  (demo_dir / "train" / "audio" / "train_00002.wav").write_bytes(b"RIFF junk")
  proc = _run(f"--out_dir={out}", f"--data_dir={demo_dir}", "--split=train", "--media=paths",
              "--show_skipped=1", "--overwrite", "--workers=2", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])["splits"]["train"]
  assert info["kept"] == 2 and info["rows_read"] == 4
  assert info["skipped_by_reason"] == {"corrupt_media": 1, "missing_media": 1}
  assert len(info["skipped_rows"]) == 1 and info["skipped_rows"][0]["name"] == "train_00001"
  assert "train_00002" in proc.stderr and "row 4" in proc.stderr   # logged with its row


def test_cli_errors_name_the_folder(tmp_path):
  proc = _run(f"--out_dir={tmp_path / 'out'}", "--dataset=ovmerd", f"--data_dir={tmp_path}")
  assert proc.returncode == 2
  assert "prepare: error:" in proc.stderr and str(tmp_path) in proc.stderr
  assert "track2_train_ovmerd.csv" in proc.stderr


def test_prepare_function_applies_flag_overrides(tmp_path):
  cfg = data_config.get_data_config()
  cfg.synthetic.splits = dict(train=2, rl=1, test=1)
  cfg.media.num_frames = 2
  cfg.media.image_size = 16
  report = prepare.prepare("demo", "", str(tmp_path), cfg, ("test",), media="paths")
  assert report["media"] == "paths" and list(report["splits"]) == ["test"]
  short = prepare.summary(dict(report, splits={"test": dict(
      report["splits"]["test"], skipped_rows=[{"name": str(i)} for i in range(5)])}), 2)
  assert len(short["splits"]["test"]["skipped_rows"]) == 2
