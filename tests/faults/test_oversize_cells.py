"""A table cell longer than csv's default limit (131,072 characters) no longer aborts
launch.prepare: that row is skipped as oversize_cell, counted and named, and the other rows are
built; builder.max_cell_chars sets the limit (before the fix: `_csv.Error: field larger than
field limit` for the whole build)."""
import pathlib
import subprocess
import sys

import pytest

from affect_jax.data import builders
from configs import data as data_config
from tests.testlib import data as data_testlib
from tests.testlib import media as media_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cfg():
  return data_testlib.small_data_config()


@pytest.fixture
def folder(tmp_path):
  d = tmp_path / "data"
  names = ["a", "b", "long_subtitle", "long_label"]
  media_lib.write_media(d, names)
  media_lib.write_csv(d / "track2_train_mercaptionplus.csv", ("name", "openset"),
          [("a", "[happy]"), ("b", "[sad]"), ("long_subtitle", "[calm]"),
           ("long_label", "[" + "x" * 200_000 + "]")])
  media_lib.write_csv(d / "subtitle_chieng.csv", ("name", "english", "chinese"),
          [("a", "hi", ""), ("b", "ho", ""), ("long_subtitle", "y" * 140_000, ""),
           ("long_label", "ok", "")])
  return d


def test_oversize_cells_skip_their_rows(folder, tmp_path):
  report = builders.build("mercaptionplus", str(folder), str(tmp_path / "out"), _cfg(),
                          data_config.builder_config(), ("train",))
  info = report["splits"]["train"]
  assert info["kept"] == 2
  assert info["skipped_by_reason"] == {"missing_subtitle": 1, "oversize_cell": 1}
  by_name = {s["name"]: s for s in info["skipped_rows"]}
  assert "'openset' has 200,002 characters" in by_name["long_label"]["detail"]
  other = {(s["name"], s["reason"]) for s in info["other_tables_skipped"]}
  assert other == {("long_subtitle", "oversize_cell")}


def test_the_limit_is_a_config_field(folder, tmp_path):
  b = data_config.builder_config()
  b.max_cell_chars = 300_000
  report = builders.build("mercaptionplus", str(folder), str(tmp_path / "out"), _cfg(), b,
                          ("train",))
  assert report["splits"]["train"]["kept"] == 4


def test_prepare_cli_builds_the_rest(folder, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "launch.prepare", "--dataset=mercaptionplus",
       f"--data_dir={folder}", f"--out_dir={tmp_path / 'out'}", "--config.media.num_frames=2",
       "--config.media.image_size=16"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "oversize_cell" in proc.stderr + proc.stdout
