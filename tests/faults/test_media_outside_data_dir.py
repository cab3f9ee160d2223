"""Clip names from a label table never make launch.prepare read media outside the dataset folder:
names that are paths ('../x/secret', absolute paths) and media files that are symlinks pointing
out of the folder are skipped as outside_data_dir, counted and named, and nothing of theirs is
stored (before the fix the outside files were decoded into the dataset)."""
import logging
import os

import pytest

from affect_jax.data import builders, pipeline
from affect_jax.data.builders import records
from configs import data as data_config
from tests.testlib import data as data_testlib
from tests.testlib import media as media_lib


def _cfg():
  return data_testlib.small_data_config()


@pytest.fixture
def layout(tmp_path):
  """tmp/secret/{video,audio}/s.* outside; tmp/data a MER-Caption+ folder whose label table
  points at them by '../', by an absolute path and through symlinks."""
  outside = tmp_path / "secret"
  media_lib.write_media(outside, ["s"])
  data = tmp_path / "data"
  media_lib.write_media(data, ["good"])
  os.makedirs(data / "x" / "video")
  (data / "video" / "linked.mp4").symlink_to(outside / "video" / "s.mp4")
  (data / "audio" / "linked.wav").symlink_to(outside / "audio" / "s.wav")
  (data / "audio" / "half.wav").symlink_to(outside / "audio" / "s.wav")
  media_lib.write_video(data / "video" / "half.mp4", 3)
  # a link that stays inside the folder is a normal file of the dataset
  (data / "video" / "inner.mp4").symlink_to(data / "video" / "good.mp4")
  (data / "audio" / "inner.wav").symlink_to(data / "audio" / "good.wav")
  names = {"good": "[happy]", "../secret/s": "[sad]", "../../secret/s": "[sad]",
           str(outside / "s"): "[sad]", "linked": "[sad]", "half": "[sad]", "inner": "[calm]"}
  media_lib.write_csv(data / "track2_train_mercaptionplus.csv", ("name", "openset"), names.items())
  media_lib.write_csv(data / "subtitle_chieng.csv", ("name", "english", "chinese"),
          [(n, "hello", "") for n in names])
  return data, outside


def test_names_and_links_leaving_the_folder_are_skipped(layout, tmp_path, caplog):
  data, outside = layout
  caplog.set_level(logging.WARNING)
  report = builders.build("mercaptionplus", str(data), str(tmp_path / "out"), _cfg(),
                          data_config.builder_config(), ("train",))
  info = report["splits"]["train"]
  assert info["kept"] == 2
  assert info["skipped_by_reason"] == {"outside_data_dir": 5}
  skipped = {s["name"] for s in info["skipped_rows"]}
  assert skipped == {"../secret/s", "../../secret/s", str(outside / "s"), "linked", "half"}
  for name in skipped:
    assert f"(name {name!r}): skipped (outside_data_dir)" in caplog.text
  source, _ = builders.load_source(report["path"], "train")
  kept = {pipeline.decode_example(source[i])["name"] for i in range(len(source))}
  assert kept == {"good", "inner"}


def test_find_media_never_returns_a_path_outside(layout):
  data, outside = layout
  assert records.find_media(str(data), "good", ("video",), (".mp4",)) == os.path.realpath(
      data / "video" / "good.mp4")
  for name in ("../secret/s", "..", ".", "/etc/passwd", "a/b", "a\\b", ""):
    with pytest.raises(records.OutsideDataDir, match="is a path"):
      records.find_media(str(data), name, ("video",), (".mp4",))
  with pytest.raises(records.OutsideDataDir, match="outside the dataset folder"):
    records.find_media(str(data), "linked", ("video",), (".mp4",))
