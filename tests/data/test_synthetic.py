"""The demo dataset: layout, determinism, caching, labels, and cues that the media really carry.

References: the official list parser written out here from PAPER_NOTES.md section 4 step 1,
the demo wheel's format.csv read with csv, OpenCV's HSV conversion and an FFT of the wav.
"""
import csv
import os
import re
import time

import cv2
import numpy as np
import pytest
import soundfile

from affect_jax.data import media
from affect_jax.data import synthetic
from configs import data as data_config


def _official_list(cell: str) -> list[str]:
  """PAPER_NOTES 4.1: strip one "[" and one "]", split on commas and quotes, strip, lowercase."""
  if cell.startswith("["):
    cell = cell[1:]
  if cell.endswith("]"):
    cell = cell[:-1]
  return [w.strip().lower() for w in re.split("[,'\"]", cell) if w.strip()]


def _small_cfg(**changes):
  c = data_config.get_data_config().synthetic
  c.splits = dict(train=6, rl=4, test=4)
  for k, v in changes.items():
    c[k] = v
  return c


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.reader(f))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  cfg = _small_cfg()
  return cfg, synthetic.ensure_demo_data(str(root), cfg)


def test_load_vocabulary_reads_blank_cells_as_repeats(tmp_path):
  path = tmp_path / "wheel.csv"
  path.write_text("level1,level2,level3\nJoy,Happy,Cheerful\n,,Delighted\n,Content,Calm\n"
                  "Fear,Scared,Terrified\n,Anxious,\n,,Worried\nAnger,Angry,Happy\n")
  vocab = synthetic.load_vocabulary(str(path), (2, 3))
  assert vocab.clusters == ("joy", "fear", "anger")
  assert vocab.words == (("happy", "cheerful", "delighted", "content", "calm"),
                         ("scared", "terrified", "anxious", "worried"), ("angry",))
  assert synthetic.load_vocabulary(str(path), (3,)).words[1] == ("terrified", "worried")
  bad = tmp_path / "bad.csv"
  bad.write_text("level1,level2,level3\n,Happy,Cheerful\n")
  with pytest.raises(ValueError, match="bad.csv row 2: level1 empty"):
    synthetic.load_vocabulary(str(bad))
  with pytest.raises(FileNotFoundError, match="missing.csv"):
    synthetic.load_vocabulary(str(tmp_path / "missing.csv"))


def test_demo_vocabulary_is_scorable():
  cfg = _small_cfg()
  vocab = synthetic.load_vocabulary(synthetic.wheel_path(cfg), cfg.word_levels)
  rows = _read_csv(os.path.join(synthetic.default_wheel_dir(), "format.csv"))
  bases = {r[0].strip().lower() for r in rows[1:]}
  assert set(vocab.all_words) <= bases
  assert len(vocab.clusters) >= 4 and len(vocab.all_words) >= 20


def test_layout_and_csvs(small):
  cfg, path = small
  assert os.path.basename(path) == f"demo_{synthetic.config_hash(cfg)}"
  for split, n in cfg.splits.items():
    folder = os.path.join(path, split)
    labels = _read_csv(os.path.join(folder, "track2_train_mercaptionplus.csv"))
    reasons = _read_csv(os.path.join(folder, "track3_train_mercaptionplus.csv"))
    subtitles = _read_csv(os.path.join(folder, "subtitle_chieng.csv"))
    assert labels[0] == ["name", "openset"] and reasons[0] == ["name", "reason"]
    assert subtitles[0] == ["name", "english", "chinese"]
    names = [r[0] for r in labels[1:]]
    assert len(names) == n and names == [r[0] for r in reasons[1:]] == [
        r[0] for r in subtitles[1:]]
    assert sorted(os.listdir(os.path.join(folder, "video"))) == sorted(f"{x}.mp4" for x in names)
    assert sorted(os.listdir(os.path.join(folder, "audio"))) == sorted(f"{x}.wav" for x in names)
    assert all(r[1] for r in reasons[1:]) and all(r[1] for r in subtitles[1:])
    rows = synthetic.read_split(path, split, cfg)
    assert [r["name"] for r in rows] == sorted(names)
  assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]


def test_media_decode_through_the_real_path(small):
  cfg, path = small
  media_cfg = data_config.get_data_config().media
  for row in synthetic.read_split(path, "test", cfg):
    frames = media.read_video_frames(row["video"], media_cfg.num_frames, 32,
                                     media_cfg.image_mean, media_cfg.image_std)
    windows = media.read_audio_windows(row["audio"], media_cfg.sample_rate,
                                       media_cfg.num_windows, media_cfg.window_seconds)
    assert frames.shape == (8, 32, 32, 3) and np.isfinite(frames).all()
    assert windows.shape == (8, 32000) and np.abs(windows).max() > 0.1


def test_ensure_is_idempotent_and_keyed_by_config(small):
  cfg, path = small
  root = os.path.dirname(path)
  stamp = os.path.getmtime(os.path.join(path, synthetic.MANIFEST))
  start = time.perf_counter()
  assert synthetic.ensure_demo_data(root, cfg) == path
  assert time.perf_counter() - start < 0.5
  assert os.path.getmtime(os.path.join(path, synthetic.MANIFEST)) == stamp
  other = _small_cfg(seed=cfg.seed + 1)
  assert synthetic.config_hash(other) != synthetic.config_hash(cfg)


def test_deterministic_across_runs(small, tmp_path):
  cfg, path = small
  again = synthetic.ensure_demo_data(str(tmp_path), _small_cfg())
  for split in cfg.splits:
    for name in ("track2_train_mercaptionplus.csv", "track3_train_mercaptionplus.csv",
                 "subtitle_chieng.csv"):
      with open(os.path.join(path, split, name), "rb") as a, open(
          os.path.join(again, split, name), "rb") as b:
        assert a.read() == b.read()
    for row_a, row_b in zip(synthetic.read_split(path, split, cfg),
                            synthetic.read_split(again, split, cfg)):
      np.testing.assert_array_equal(media.decode_video_frames(row_a["video"], 4),
                                    media.decode_video_frames(row_b["video"], 4))
      with open(row_a["audio"], "rb") as a, open(row_b["audio"], "rb") as b:
        assert a.read() == b.read()


def test_labels_follow_the_official_list_style(small):
  cfg, path = small
  vocab = synthetic.load_vocabulary(synthetic.wheel_path(cfg), cfg.word_levels)
  vocab_styles = synthetic.make_styles(len(vocab.clusters), cfg)
  for split in ("rl", "test"):
    specs = synthetic.split_specs(split, vocab, vocab_styles, cfg)
    for spec, row in zip(specs, synthetic.read_split(path, split, cfg)):
      assert row["name"] == spec.name
      assert _official_list(row["openset"]) == list(spec.emotions)
      assert 1 <= len(spec.emotions) <= cfg.max_words_primary + 1
      assert set(spec.emotions) <= set(vocab.all_words)
      assert row["reason"].endswith(", ".join(spec.emotions) + ".")


def _cluster_of(vocab, word):
  return next(c for c, group in enumerate(vocab.words) if word in group)


def test_cue_and_noise_rates_follow_the_config():
  cfg = _small_cfg()
  cfg.splits = dict(train=3000, rl=3000, test=0)
  vocab = synthetic.load_vocabulary(synthetic.wheel_path(cfg), cfg.word_levels)
  styles = synthetic.make_styles(len(vocab.clusters), cfg)
  rl = synthetic.split_specs("rl", vocab, styles, cfg)
  primary = np.array([_cluster_of(vocab, s.emotions[0]) for s in rl])
  video_ok = np.mean([s.video_cluster == p for s, p in zip(rl, primary)])
  audio_ok = np.mean([s.audio_cluster == p for s, p in zip(rl, primary)])
  assert abs(video_ok - (1 - cfg.video_mislead_prob)) < 0.03
  assert abs(audio_ok - (1 - cfg.audio_mislead_prob)) < 0.03
  text_true = np.mean([any(re.search(rf"\b{w}\b", s.subtitle) for w in s.emotions)
                       for s in rl])
  assert abs(text_true - (1 - cfg.text_neutral_prob - cfg.text_mislead_prob)) < 0.04
  second = np.mean([s.second_cluster >= 0 for s in rl])
  assert abs(second - cfg.second_cluster_prob) < 0.03
  assert all(s.labels == s.emotions for s in rl)
  # Train noise, one kind at a time: extra neighbour words, then swapped words.
  cfg.train_swap_prob = 0.0
  train = synthetic.split_specs("train", vocab, styles, cfg)
  extra = [s for s in train if len(s.labels) > len(s.emotions)]
  assert abs(len(extra) / len(train) - cfg.train_extra_prob) < 0.04
  for s in extra:
    assert s.labels[:-1] == s.emotions
    primary_cluster = _cluster_of(vocab, s.emotions[0])
    assert _cluster_of(vocab, s.labels[-1]) == styles.neighbour[primary_cluster]
  cfg.train_swap_prob, swap_prob, cfg.train_extra_prob = 0.1, 0.1, 0.0
  train = synthetic.split_specs("train", vocab, styles, cfg)
  swapped = np.mean([s.labels != s.emotions for s in train])
  assert all(len(s.labels) == len(s.emotions) for s in train)
  assert abs(swapped - swap_prob) < 0.03
  assert (styles.neighbour != np.arange(len(vocab.clusters))).all()


def _circular_diff(a, b):
  return abs((a - b + 180.0) % 360.0 - 180.0)


def test_media_carry_the_cues(small):
  cfg, path = small
  vocab = synthetic.load_vocabulary(synthetic.wheel_path(cfg), cfg.word_levels)
  styles = synthetic.make_styles(len(vocab.clusters), cfg)
  specs = synthetic.split_specs("test", vocab, styles, cfg)
  for spec, row in zip(specs, synthetic.read_split(path, "test", cfg)):
    cap = cv2.VideoCapture(row["video"])
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and n == spec.num_frames
    corner = cv2.cvtColor(frame[:6, :6], cv2.COLOR_BGR2HSV).reshape(-1, 3)
    hue = float(np.median(corner[:, 0])) * 2.0   # OpenCV hue is degrees / 2
    assert _circular_diff(hue, spec.hue) < 12.0, (spec.name, hue, spec.hue)
    wave, rate = soundfile.read(row["audio"], always_2d=True)
    assert rate == cfg.wav_sample_rate and wave.shape[1] == (2 if spec.stereo else 1)
    assert abs(wave.shape[0] / rate - spec.duration) < 1e-3
    spectrum = np.abs(np.fft.rfft(wave[:, 0]))
    freqs = np.fft.rfftfreq(wave.shape[0], 1.0 / rate)
    peak = freqs[np.argmax(spectrum)]
    assert abs(peak / spec.pitch - 1.0) < 0.05, (spec.name, peak, spec.pitch)


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="synthetic.video_mislead_prob=1.5"):
    synthetic.check_config(_small_cfg(video_mislead_prob=1.5))
  with pytest.raises(ValueError, match="synthetic.splits"):
    synthetic.check_config(_small_cfg(splits=dict(train=2, val=3)))


@pytest.mark.slow
def test_default_demo_set_has_every_split(tmp_path):
  cfg = data_config.get_data_config().synthetic
  assert dict(cfg.splits) == dict(train=240, rl=120, test=96)
  path = synthetic.ensure_demo_data(str(tmp_path), cfg)
  for split, n in cfg.splits.items():
    assert len(synthetic.read_split(path, split, cfg)) == n
