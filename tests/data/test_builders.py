"""Dataset builders on small folders in each official layout, with bad rows of every kind.

References: media.py's decoders read the same files directly; the official label rule is
written out here (PAPER_NOTES.md section 4 step 1); label .npz files are made by np.savez.
"""
import json
import logging
import os
import re

import cv2
import numpy as np
import pytest

from affect_jax.data import builders
from affect_jax.data.builders import records
from affect_jax.data import media
from affect_jax.data import pipeline
from affect_jax.data import synthetic
from configs import data as data_config
from tests.testlib import media as media_lib


def _official(cell: str) -> list[str]:
  if cell.startswith("["):
    cell = cell[1:]
  if cell.endswith("]"):
    cell = cell[:-1]
  return [w.strip().lower() for w in re.split("[,'\"]", cell) if w.strip()]


def test_label_rule_is_the_official_one():
  cells = ["[Happy, excited]", "shocked,care,serious", "", "['worried', \"sad\"]", "[]",
           " [calm] ", "[let down]", "a,,b,", "[[x]]"]
  for cell in cells:
    assert records.parse_labels(cell) == records.parse_labels_fallback(cell) == _official(cell)


@pytest.fixture(scope="module")
def cfg():
  c = data_config.get_data_config()
  c.media.num_frames = 3
  c.media.image_size = 16
  c.media.num_windows = 2
  c.media.window_seconds = 0.25
  c.synthetic.splits = dict(train=4, rl=2, test=2)
  return c


def _build(dataset, folder, out, cfg, splits=(), **changes):
  b = data_config.builder_config()
  for k, v in changes.items():
    b[k] = v
  return builders.build(dataset, str(folder), str(out), cfg, b, splits)


def _records(report, split):
  source, meta = builders.load_source(report["path"], split)
  return {ex["name"]: ex for ex in map(pipeline.decode_example, (source[i] for i in
                                                                 range(len(source))))}, meta


@pytest.fixture(scope="module")
def mercaption(tmp_path_factory):
  """MER-Caption+ folder with good rows and one bad row of every kind."""
  d = tmp_path_factory.mktemp("mercaptionplus")
  good = ["clip_a", "clip_b", "clip_neutral", "clip_quoted"]
  media_lib.write_media(d, good + ["bad_video", "bad_audio", "no_subtitle", "dup"])
  (d / "video" / "bad_video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
  with open(d / "audio" / "bad_audio.wav", "r+b") as f:   # header says more data than present
    f.truncate(60)
  media_lib.write_audio(d / "audio" / "no_video.wav", 7)
  rows = [("clip_a", "[Happy, excited]"), ("clip_b", "shocked,care,serious"),
          ("clip_neutral", ""), ("clip_quoted", "['worried', \"sad\"]"),
          ("no_video", "[calm]"), ("bad_video", "[calm]"), ("bad_audio", "[calm]"),
          ("", "[calm]"), ("extra", "calm", "what is this"), ("short",),
          ("no_subtitle", "angry"), ("dup", "joy"), ("dup", "sad")]
  media_lib.write_csv(d / "track2_train_mercaptionplus.csv", ("name", "openset"), rows)
  with open(d / "track2_train_mercaptionplus.csv", "ab") as f:
    f.write(b"bad_bytes,[caf\xe9]\n")                    # latin-1, not UTF-8
  names = [r[0] for r in rows if r and r[0]] + ["bad_bytes"]
  media_lib.write_csv(d / "track3_train_mercaptionplus.csv", ("name", "reason", "comment"),
       [(n, f"Reason of {n}.", "x") for n in names if n != "clip_b"])
  media_lib.write_csv(d / "subtitle_chieng.csv", ("name", "english", "chinese"),
       [(n, f"Subtitle of {n}.", "字幕") for n in names if n != "no_subtitle"])
  return d


def test_mercaptionplus_raw_keeps_good_rows_and_names_bad_ones(mercaption, cfg, tmp_path,
                                                               caplog):
  caplog.set_level(logging.WARNING)
  report = _build("mercaptionplus", mercaption, tmp_path, cfg, ("train",))
  info = report["splits"]["train"]
  assert info["kept"] == 5 and report["media"] == "raw"
  assert info["skipped_by_reason"] == {
      "corrupt_media": 2, "duplicate_name": 1, "empty_name": 1, "extra_cells": 1,
      "missing_cells": 1, "missing_media": 1, "missing_subtitle": 1, "non_utf8": 1}
  # The second 'dup' rows of the subtitle and reason tables are listed apart.
  assert [(os.path.basename(s["file"]), s["row"], s["reason"])
          for s in info["other_tables_skipped"]] == [
              ("subtitle_chieng.csv", 12, "duplicate_name"),
              ("track3_train_mercaptionplus.csv", 12, "duplicate_name")]
  labels_csv = str(mercaption / "track2_train_mercaptionplus.csv")
  by_name = {(s["name"], s["reason"]): s for s in info["skipped_rows"]}
  assert by_name[("no_video", "missing_media")]["row"] == 6
  assert by_name[("bad_video", "corrupt_media")]["file"] == labels_csv
  assert "bad_audio.wav" in by_name[("bad_audio", "corrupt_media")]["detail"]
  assert by_name[("", "empty_name")]["row"] == 9
  assert by_name[("dup", "duplicate_name")]["row"] == 14
  assert by_name[("bad_bytes", "non_utf8")]["row"] == 15
  assert info["rows_read"] == 14 == info["kept"] + info["skipped"]
  # Every skipped row is in the log with its file and row number.
  log = caplog.text
  assert f"{labels_csv} row 10 (name 'extra'): skipped (extra_cells)" in log
  assert f"{labels_csv} row 11 (name 'short'): skipped (missing_cells)" in log
  # The written report equals the returned one.
  with open(os.path.join(report["path"], "report.json"), encoding="utf-8") as f:
    assert json.load(f)["splits"] == report["splits"]

  recs, meta = _records(report, "train")
  assert sorted(recs) == ["clip_a", "clip_b", "clip_neutral", "clip_quoted", "dup"]
  assert recs["dup"]["labels"] == ["joy"]                 # the first of the two rows
  assert recs["clip_a"]["labels"] == ["happy", "excited"] == _official("[Happy, excited]")
  assert recs["clip_b"]["labels"] == _official("shocked,care,serious")
  assert recs["clip_neutral"]["labels"] == []            # empty cell = neutral, kept
  assert recs["clip_quoted"]["labels"] == ["worried", "sad"]
  assert recs["clip_a"]["reason"] == "Reason of clip_a." and recs["clip_b"]["reason"] == ""
  assert recs["clip_a"]["subtitle"] == "Subtitle of clip_a."
  assert recs["clip_a"]["task"] == "ov" and np.isnan(recs["clip_a"]["valence"])
  assert meta["mode"] == "raw" and meta["num_frames"] == 3
  # Stored media: uint8 frames that normalise to exactly what media.py decodes; the wave.
  m = cfg.media
  frames = recs["clip_a"]["frames"]
  assert frames.dtype == np.uint8 and frames.shape == (3, 16, 16, 3)
  want = media.read_video_frames(mercaption / "video" / "clip_a.mp4", 3, 16, m.image_mean,
                                 m.image_std, m.frame_sampling)
  got = pipeline.load_media(recs["clip_a"], m, meta)
  np.testing.assert_allclose(got["frames"], want, rtol=0, atol=1e-6)
  wave = media.read_audio(mercaption / "audio" / "clip_a.wav", m.sample_rate)
  np.testing.assert_array_equal(recs["clip_a"]["audio"], wave)
  windows = media.read_audio_windows(mercaption / "audio" / "clip_a.wav", m.sample_rate,
                                     m.num_windows, m.window_seconds)
  # HuBERT's input: each window minus its mean (no checkpoint asks for normalisation here).
  np.testing.assert_allclose(got["windows"], windows - windows.mean(1, keepdims=True),
                             rtol=0, atol=1e-6)


def test_rebuild_is_reused_and_label_edits_rebuild(mercaption, cfg, tmp_path):
  first = _build("mercaptionplus", mercaption, tmp_path, cfg, ("train",), media="paths")
  again = _build("mercaptionplus", mercaption, tmp_path, cfg, ("train",), media="paths")
  assert again["reused"] and again["path"] == first["path"]
  assert again["splits"] == first["splits"]
  recs, meta = _records(first, "train")
  assert meta["mode"] == "paths" and "frames" not in recs["clip_a"]
  assert recs["clip_a"]["visual_path"] == str(mercaption / "video" / "clip_a.mp4")
  # A different media setting builds elsewhere.
  cfg2 = cfg.copy_and_resolve_references()
  cfg2.media.num_frames = 2
  other = _build("mercaptionplus", mercaption, tmp_path, cfg2, ("train",), media="paths")
  assert other["path"] != first["path"] and not other["reused"]


def test_ovmerd_paths_mode(tmp_path, cfg):
  d = tmp_path / "ovmerd"
  d.mkdir()
  media_lib.write_media(d, ["s1", "s2"])
  media_lib.write_csv(d / "track2_train_ovmerd.csv", ("name", "openset"), [("s1", "[anxious]"),
                                                             ("s2", "joyful, proud")])
  media_lib.write_csv(d / "track3_train_ovmerd.csv", ("name", "reason"), [("s1", "r1"), ("s2", "r2")])
  media_lib.write_csv(d / "subtitle_chieng.csv", ("name", "english", "chinese"), [("s1", "a"), ("s2", "b")])
  report = _build("ovmerd", d, tmp_path / "out", cfg, media="paths", validate="exists")
  assert list(report["splits"]) == ["train"] and report["splits"]["train"]["kept"] == 2
  recs, _ = _records(report, "train")
  assert recs["s2"]["labels"] == ["joyful", "proud"] and recs["s2"]["reason"] == "r2"
  assert recs["s1"]["audio_path"].endswith(os.path.join("audio", "s1.wav"))


def test_ovmerdplus_faces_and_sentence_subtitles(tmp_path, cfg):
  d = tmp_path / "ovmerdplus"
  d.mkdir()
  media_lib.write_media(d, ["p1", "p2", "p3"], faces=True)
  os.remove(d / "openface_face" / "p3" / "p3.npy")
  media_lib.write_csv(d / "ovlabel.csv", ("name", "openset"), [("p1", "[sad]"), ("p2", "[]"), ("p3", "x")])
  media_lib.write_csv(d / "subtitle_eng.csv", ("name", "sentence"), [("p1", "one"), ("p2", "two"),
                                                      ("p3", "three")])
  report = _build("ovmerdplus", d, tmp_path / "out", cfg, ("test",), visual_source="faces")
  info = report["splits"]["test"]
  assert info["kept"] == 2 and info["skipped_by_reason"] == {"missing_media": 1}
  assert "face crops" in info["skipped_rows"][0]["detail"]
  recs, meta = _records(report, "test")
  assert recs["p1"]["subtitle"] == "one" and recs["p2"]["labels"] == []
  assert meta["visual_source"] == "faces"
  m = cfg.media
  want = media.read_face_crops(d / "openface_face" / "p1" / "p1.npy", 3, 16, m.image_mean,
                               m.image_std, m.frame_sampling, m.face_channel_order)
  np.testing.assert_allclose(pipeline.load_media(recs["p1"], m, meta)["frames"], want,
                             rtol=0, atol=1e-6)


def test_mer2025ov_layout(tmp_path, cfg):
  d = tmp_path / "mer2025"
  d.mkdir()
  media_lib.write_media(d, ["m1", "m2"])
  media_lib.write_csv(d / "track2_test.csv", ("name", "openset"), [("m1", "[surprised, happy]"), ("m2", "")])
  media_lib.write_csv(d / "track2_train_mercaptionplus.csv", ("name", "openset"), [("other", "x")])
  media_lib.write_csv(d / "subtitle_chieng.csv", ("name", "english", "chinese"), [("m1", "Oh!", ""),
                                                                   ("m2", "", "")])
  report = _build("mer2025ov", d, tmp_path / "out", cfg, ("rl",), media="paths")
  recs, _ = _records(report, "rl")
  assert recs["m1"]["labels"] == ["surprised", "happy"] and recs["m2"]["subtitle"] == ""
  assert os.path.basename(report["path"].rstrip("/")) == "1.0.0"
  assert "/mer2025ov/" in report["path"]


def _unibench_folder(tmp_path, label_file, corpora, names):
  d = tmp_path / label_file.replace(".npz", "")
  d.mkdir()
  media_lib.write_media(d, names, video_dir="subvideo", audio_dir="subaudio")
  np.savez(d / label_file, **corpora)
  media_lib.write_csv(d / "transcription-engchi-polish.csv", ("name", "chinese", "english"),
       [(n, "中文", f"text {n}") for n in names])
  return d


def test_unibench_label_formats(tmp_path, cfg):
  six = _unibench_folder(tmp_path, "label-6way.npz", dict(
      train_corpus={"a": {"emo": "happy", "val": 1.0}},
      test1_corpus={"b": {"emo": "Worried"}, "c": {"emo": ""}}), ["a", "b", "c"])
  report = _build("unibench:mer2023", six, tmp_path / "out", cfg, ("test",), media="paths")
  info = report["splits"]["test"]
  assert info["kept"] == 1 and info["skipped_by_reason"] == {"bad_label": 1}
  assert info["skipped_rows"][0]["file"].endswith("label-6way.npz:test1_corpus")
  recs, meta = _records(report, "test")
  assert recs["b"]["basic_label"] == "worried" and recs["b"]["labels"] == ["worried"]
  assert recs["b"]["task"] == "hit" and meta["task"] == "hit"
  assert recs["b"]["subtitle"] == "text b"

  meld = _unibench_folder(tmp_path, "label.npz", dict(
      test_corpus={"m0": {"emo": 0}, "m6": {"emo": np.int64(6)}, "m9": {"emo": 9}},
      train_corpus={"m0": {"emo": 1}}), ["m0", "m6", "m9"])
  report = _build("unibench:meld", meld, tmp_path / "out", cfg, (), media="paths")
  assert sorted(report["splits"]) == ["test", "train"]
  assert report["splits"]["test"]["skipped_by_reason"] == {"bad_label": 1}
  recs, _ = _records(report, "test")
  assert {n: r["basic_label"] for n, r in recs.items()} == {"m0": "anger", "m6": "surprise"}

  mosi = tmp_path / "mosi"
  mosi.mkdir()
  media_lib.write_media(mosi, ["v1", "v2", "v3"], video_dir="subvideo", audio_dir="subaudio")
  np.savez(mosi / "label.npz", test_corpus={"v1": {"val": -1.5}, "v2": {"val": 2.0},
                                            "v3": {"val": float("nan")}})
  report = _build("unibench:cmumosi", mosi, tmp_path / "out", cfg, ("test",), media="paths")
  assert report["splits"]["test"]["skipped_by_reason"] == {"bad_label": 1}
  recs, _ = _records(report, "test")
  assert recs["v1"]["valence"] == pytest.approx(-1.5) and recs["v1"]["task"] == "sentiment"
  assert recs["v1"]["labels"] == [] and recs["v1"]["subtitle"] == ""   # no subtitle file

  # IEMOCAP: ids happy, sad, neutral, anger; test = session 5 (tests/data/test_label_ids.py).
  iemocap = _unibench_folder(tmp_path, "label_4way.npz", dict(whole_corpus={
      "Ses05F_impro01_F000": {"emo": 3, "val": -10}, "Ses01M_impro01_M000": {"emo": 0}}),
      ["Ses05F_impro01_F000"])
  with pytest.raises(ValueError, match=r"no split \['whole'\]"):
    _build("unibench:iemocapfour", iemocap, tmp_path / "out", cfg, ("whole",))
  report = _build("unibench:iemocapfour", iemocap, tmp_path / "out", cfg, ("test",))
  assert report["splits"]["test"]["kept"] == 1
  recs, _ = _records(report, "test")
  assert recs["Ses05F_impro01_F000"]["basic_label"] == "anger"


def test_malicious_label_npz_is_refused(tmp_path, cfg):
  class Exploit:
    def __reduce__(self):
      return (os.system, (f"touch {tmp_path / 'pwned'}",))

  d = _unibench_folder(tmp_path, "label.npz", dict(test_corpus={"x": {"emo": Exploit()}}),
                       ["x"])
  with pytest.raises(ValueError, match="refused to unpickle"):
    _build("unibench:meld", d, tmp_path / "out", cfg, ("test",))
  assert not (tmp_path / "pwned").exists()


def test_demo_builds_every_split(tmp_path, cfg):
  root = synthetic.ensure_demo_data(str(tmp_path / "demo"), cfg.synthetic)
  report = _build("demo", root, tmp_path / "out", cfg)
  assert {s: v["kept"] for s, v in report["splits"].items()} == dict(train=4, rl=2, test=2)
  recs, _ = _records(report, "rl")
  rows = {r["name"]: r for r in synthetic.read_split(root, "rl", cfg.synthetic)}
  assert sorted(recs) == sorted(rows)
  for name, rec in recs.items():
    assert rec["labels"] == _official(rows[name]["openset"])
    assert rec["subtitle"] == rows[name]["english"] and rec["reason"] == rows[name]["reason"]


def test_nothing_usable_and_wrong_layouts_are_clear(tmp_path, cfg):
  d = tmp_path / "empty_media"
  d.mkdir()
  media_lib.write_csv(d / "ovlabel.csv", ("name", "openset"), [("a", "x"), ("b", "y")])
  with pytest.raises(ValueError, match=rf"{re.escape(str(d))}: no usable clip.*missing_media"):
    _build("ovmerdplus", d, tmp_path / "out", cfg)
  assert not [p for p in (tmp_path / "out").rglob("*") if p.name != "out"]   # nothing left
  bad = tmp_path / "bad_rows"
  bad.mkdir()
  media_lib.write_csv(bad / "ovlabel.csv", ("name", "openset"), [("", "x"), ("a", "b", "c")])
  with pytest.raises(ValueError, match="no usable clip"):
    _build("ovmerdplus", bad, tmp_path / "out", cfg)
  cols = tmp_path / "wrong_columns"
  cols.mkdir()
  media_lib.write_csv(cols / "ovlabel.csv", ("name", "label"), [("a", "x")])
  with pytest.raises(ValueError, match=r"ovlabel.csv: no column \['openset'\]; the header is"):
    _build("ovmerdplus", cols, tmp_path / "out", cfg)
  with pytest.raises(FileNotFoundError, match="track2_train_ovmerd.csv"):
    _build("ovmerd", cols, tmp_path / "out", cfg)
  with pytest.raises(FileNotFoundError, match="no such data folder"):
    _build("ovmerd", tmp_path / "nowhere", tmp_path / "out", cfg)
  with pytest.raises(ValueError, match="unknown MER-UniBench set"):
    _build("unibench:nope", cols, tmp_path / "out", cfg)


def test_faces_stored_raw_as_the_official_load_face(tmp_path, cfg):
  d = tmp_path / "ovmerdplus"
  d.mkdir()
  media_lib.write_media(d, ["p1"], faces=True)
  media_lib.write_csv(d / "ovlabel.csv", ("name", "openset"), [("p1", "[sad]")])
  media_lib.write_csv(d / "subtitle_eng.csv", ("name", "sentence"), [("p1", "one")])
  report = _build("ovmerdplus", d, tmp_path / "out", cfg, ("test",), visual_source="faces")
  recs, meta = _records(report, "test")
  assert meta["visual_source"] == "faces"
  crops = np.load(d / "openface_face" / "p1" / "p1.npy")      # 4 crops, 3 wanted
  picked = np.arange(0, 4, 4 / 3).astype(int)                  # load_face's indices
  want = np.stack([cv2.resize(f, (16, 16)) for f in crops])[picked]
  np.testing.assert_array_equal(recs["p1"]["frames"], want)


def test_faces_without_an_openface_folder_fall_back_to_frames(tmp_path, cfg, caplog):
  d = tmp_path / "mer2025"
  d.mkdir()
  media_lib.write_media(d, ["m1", "m2"])                                      # videos only, no faces
  media_lib.write_csv(d / "track2_test.csv", ("name", "openset"), [("m1", "[happy]"), ("m2", "")])
  media_lib.write_csv(d / "subtitle_chieng.csv", ("name", "english", "chinese"), [("m1", "a", ""),
                                                                   ("m2", "b", "")])
  with caplog.at_level(logging.WARNING):
    report = _build("mer2025ov", d, tmp_path / "out", cfg, visual_source="faces")
  assert report["splits"]["train"]["kept"] == 2
  assert any("openface_face" in r.getMessage() for r in caplog.records)
  recs, meta = _records(report, "train")
  assert meta["visual_source"] == "frames"
  want = media.sample_video_frames(d / "video" / "m1.mp4", 3, 16)
  np.testing.assert_array_equal(recs["m1"]["frames"], want)
  with pytest.raises(FileNotFoundError, match="openface_face"):
    _build("mer2025ov", d, tmp_path / "out2", cfg, visual_source="faces",
           faces_fallback="error")


def test_7b_config_uses_the_official_media_setting():
  from configs import affectgpt_r1_7b
  c = affectgpt_r1_7b.get_config().data
  assert c.builder.visual_source == "faces" and c.builder.faces_fallback == "frames"
  m = c.media
  assert (m.num_frames, m.image_size, m.frame_sampling) == (8, 224, "official")
  assert (m.frame_resize, m.face_resize, m.face_channel_order) == ("pil_bilinear",
                                                                   "cv2_linear", "rgb")
  assert (m.sample_rate, m.num_windows, m.window_seconds) == (16000, 8, 2.0)
  assert m.window_zero_mean and m.audio_normalize == "checkpoint"
