"""launch.prepare: the CLI builds the demo and prints a JSON summary; errors exit 2.

--rows_out references: the demo's own tables (synthetic.read_split) with the official list rule
written out here, and label .npz files written here (IEMOCAP ids in the order of the official
iemocap.py: happy, sad, neutral, anger; test = session 5).
"""
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from affect_jax.data import builders
from affect_jax.data import pipeline
from affect_jax.data import synthetic
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


def _official(cell: str) -> list[str]:
  cell = cell[1:] if cell.startswith("[") else cell
  cell = cell[:-1] if cell.endswith("]") else cell
  return [w.strip().lower() for w in re.split("[,'\"]", cell) if w.strip()]


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


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
  rows_out = tmp_path / "rows" / "train.csv"
  proc = _run(f"--out_dir={out}", f"--data_dir={demo_dir}", "--split=train", "--media=paths",
              "--show_skipped=1", "--overwrite", "--workers=2", f"--rows_out={rows_out}", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])["splits"]["train"]
  assert info["kept"] == 2 and info["rows_read"] == 4
  assert info["skipped_by_reason"] == {"corrupt_media": 1, "missing_media": 1}
  assert len(info["skipped_rows"]) == 1 and info["skipped_rows"][0]["name"] == "train_00001"
  assert "train_00002" in proc.stderr and "row 4" in proc.stderr   # logged with its row
  # --rows_out: the kept clips only, one row each, from the demo's own tables.
  cfg = data_config.get_data_config()
  want = [r for r in synthetic.read_split(str(demo_dir), "train", cfg.synthetic)
          if r["name"] not in ("train_00001", "train_00002")]
  header, rows = _read_csv(rows_out)
  assert header == ["name", "split", "task", "labels", "valence", "subtitle"]
  assert [r["name"] for r in rows] == [r["name"] for r in want] and len(rows) == 2
  for got, ref in zip(rows, want):
    assert got == dict(name=ref["name"], split="train", task="ov",
                       labels="[" + ", ".join(_official(ref["openset"])) + "]", valence="",
                       subtitle=ref["english"].strip())


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


def _touch_media(folder, names):
  for sub, ext in (("subvideo", ".mp4"), ("subaudio", ".wav")):
    (folder / sub).mkdir(parents=True, exist_ok=True)
    for n in names:
      (folder / sub / f"{n}{ext}").write_bytes(b"")


def test_rows_out_writes_class_words_and_valences(tmp_path):
  cfg = data_config.get_data_config()
  cfg.builder.validate = "exists"      # the media files below are empty
  iemocap = tmp_path / "iemocap"
  corpus = {"Ses05F_impro01_F000": 3, "Ses05M_impro02_M001": 0, "Ses01F_impro01_F000": 1}
  _touch_media(iemocap, corpus)
  np.savez(iemocap / "label_4way.npz",
           whole_corpus={n: {"emo": e, "val": -10} for n, e in corpus.items()})
  out = tmp_path / "iemocap_rows.csv"
  report = prepare.prepare("unibench:iemocapfour", str(iemocap), str(tmp_path / "out"), cfg,
                           ("test",), media="paths", rows_out=str(out))
  assert report["rows_written"] == 2 and report["rows_out"] == str(out)
  _, rows = _read_csv(out)
  assert [(r["name"], r["split"], r["task"], r["labels"], r["subtitle"]) for r in rows] == [
      ("Ses05F_impro01_F000", "test", "hit", "anger", ""),
      ("Ses05M_impro02_M001", "test", "hit", "happy", "")]

  mosi = tmp_path / "mosi"
  _touch_media(mosi, ["v1", "v2"])
  np.savez(mosi / "label.npz", test_corpus={"v1": {"val": -1.5}, "v2": {"val": 0.6}})
  out = tmp_path / "mosi_rows.csv"
  prepare.prepare("unibench:cmumosi", str(mosi), str(tmp_path / "out"), cfg, ("test",),
                  media="paths", rows_out=str(out))
  _, rows = _read_csv(out)
  assert [(r["name"], r["task"], r["labels"], float(r["valence"])) for r in rows] == [
      ("v1", "sentiment", "", -1.5), ("v2", "sentiment", "", pytest.approx(0.6, abs=1e-6))]


def test_rows_out_is_atomic_and_a_folder_is_refused(tmp_path):
  from affect_jax.data.builders import kept_rows
  out = tmp_path / "rows.csv"
  out.write_text("earlier file\n")
  good = dict(name="a", split="test", task="ov", labels="[sad]", valence="", subtitle="hi")
  with pytest.raises(ValueError):       # the second row has a column the file has not
    kept_rows.write_csv([good, dict(good, extra="x")], str(out))
  assert out.read_text() == "earlier file\n"            # untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]   # no temporary left
  assert kept_rows.write_csv([good], str(out)) == 1
  assert _read_csv(out)[1] == [good]

  cfg = data_config.get_data_config()
  with pytest.raises(ValueError, match="is a folder; give a file path"):
    prepare.prepare("demo", "", str(tmp_path / "built"), cfg, rows_out=str(tmp_path))
  assert not (tmp_path / "built").exists()              # refused before building
