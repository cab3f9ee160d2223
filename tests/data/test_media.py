"""Media decoding against independent references.

Frames: transformers' CLIPImageProcessorPil on the frames OpenCV decodes; the frame indices
against the written frames (each frame carries its index); audio windows against numpy
formulas; resampling against an analytic sine; corrupt files raise MediaError naming the file.
"""
import math
import os

import cv2
import numpy as np
import pytest
import soundfile
from transformers import CLIPImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from affect_jax.data import media
from configs import data as data_config

FPS = 8


def _index_frame(i: int, height: int, width: int) -> np.ndarray:
  """A BGR frame whose flat grey level encodes i (robust to mp4v compression)."""
  frame = np.full((height, width, 3), 8 + 16 * i, np.uint8)
  return frame


def _write_video(path, frames_bgr) -> None:
  height, width = frames_bgr[0].shape[:2]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
  assert writer.isOpened()
  for frame in frames_bgr:
    writer.write(frame)
  writer.release()


def _textured_frames(n: int, height: int, width: int, seed: int) -> list:
  """Smooth random colour fields (BGR) so resizing has something to do."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    small = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    out.append(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR
                          ).clip(0, 255).astype(np.uint8))
  return out


def _decode_all_rgb(path) -> np.ndarray:
  cap = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame[..., ::-1])
  cap.release()
  return np.stack(frames)


def test_config_normalisation_is_clips():
  cfg = data_config.get_data_config().media
  np.testing.assert_allclose(cfg.image_mean, OPENAI_CLIP_MEAN, rtol=0, atol=0)
  np.testing.assert_allclose(cfg.image_std, OPENAI_CLIP_STD, rtol=0, atol=0)
  assert tuple(media.CLIP_MEAN) == tuple(cfg.image_mean)
  assert tuple(media.CLIP_STD) == tuple(cfg.image_std)


@pytest.mark.parametrize("n,k", [(12, 8), (8, 8), (5, 8), (1, 8), (100, 3), (7, 1)])
def test_uniform_indices_formulas(n, k):
  floor = media.uniform_indices(n, k, "floor")
  expected = [int(math.floor(i * n / k)) for i in range(k)]
  assert floor.tolist() == expected
  # Video-LLaMA's sampler where float arange gives exactly k items.
  arange = np.arange(0, n, n / k).astype(int)
  if len(arange) == k:
    assert floor.tolist() == arange.tolist()
  lin = media.uniform_indices(n, k, "linspace")
  expected = [int(np.round(i * (n - 1) / (k - 1))) if k > 1 else 0 for i in range(k)]
  assert lin.tolist() == expected
  assert lin.min() >= 0 and lin.max() < n and floor.max() < n


def test_uniform_indices_errors():
  with pytest.raises(ValueError, match="num_available=0"):
    media.uniform_indices(0, 8)
  with pytest.raises(ValueError, match="frame_sampling='middle'"):
    media.uniform_indices(8, 8, "middle")


@pytest.mark.parametrize("size", [(48, 80), (96, 64), (64, 64), (300, 260)])
@pytest.mark.parametrize("image_size", [32, 56])
def test_clip_preprocess_matches_transformers(size, image_size):
  frames = np.stack([f[..., ::-1] for f in _textured_frames(3, *size, seed=sum(size))])
  got = media.clip_preprocess(frames, image_size, media.CLIP_MEAN, media.CLIP_STD)
  proc = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                               crop_size={"height": image_size, "width": image_size})
  ref = np.stack([proc(images=f, return_tensors="np")["pixel_values"][0] for f in frames])
  ref = ref.transpose(0, 2, 3, 1)   # [F, 3, S, S] -> [F, S, S, 3]
  assert got.shape == ref.shape == (3, image_size, image_size, 3)
  assert got.dtype == np.float32
  # Same resize (Pillow bicubic on uint8), same crop and float32 arithmetic: only float
  # rounding can differ.
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_read_video_frames_matches_processor_on_decoded_frames(tmp_path):
  path = tmp_path / "clip.mp4"
  _write_video(path, _textured_frames(11, 48, 80, seed=3))
  decoded = _decode_all_rgb(path)
  assert decoded.shape[0] == 11
  got = media.read_video_frames(path, num_frames=4, image_size=32)
  picked = decoded[[0, 2, 5, 8]]         # floor(i * 11 / 4)
  proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  ref = proc(images=list(picked), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rule", ["floor", "linspace"])
@pytest.mark.parametrize("n", [13, 8, 3])
def test_read_video_frames_samples_uniformly_and_repeats(tmp_path, rule, n):
  path = tmp_path / f"idx{n}.mp4"
  _write_video(path, [_index_frame(i, 32, 32) for i in range(n)])
  raw = media.decode_video_frames(path, 8, rule)
  assert raw.shape == (8, 32, 32, 3) and raw.dtype == np.uint8
  levels = raw.reshape(8, -1).mean(axis=1)
  got = np.round((levels - 8) / 16).astype(int)
  expected = (np.arange(8) * n) // 8 if rule == "floor" else np.round(np.linspace(0, n - 1, 8))
  assert got.tolist() == np.asarray(expected, int).tolist()


def _write_truncated(path, source):
  data = source.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def test_corrupt_video_raises_media_error(tmp_path):
  good = tmp_path / "good.mp4"
  _write_video(good, [_index_frame(i, 32, 32) for i in range(6)])
  cases = {
      "missing.mp4": None,
      "empty.mp4": b"",
      "random.mp4": np.random.default_rng(0).bytes(4096),
  }
  for name, data in cases.items():
    if data is not None:
      (tmp_path / name).write_bytes(data)
  _write_truncated(tmp_path / "truncated.mp4", good)
  for name in list(cases) + ["truncated.mp4"]:
    path = tmp_path / name
    with pytest.raises(media.MediaError, match=name) as info:
      media.read_video_frames(path, num_frames=4, image_size=32)
    assert info.value.path == str(path)


def test_read_face_crops(tmp_path):
  rng = np.random.default_rng(1)
  crops = rng.integers(0, 256, (5, 40, 36, 3), dtype=np.uint8)
  path = tmp_path / "sample" / "sample.npy"
  path.parent.mkdir()
  np.save(path, crops)
  got = media.read_face_crops(path, num_frames=8, image_size=32)
  proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  picked = crops[[0, 0, 1, 1, 2, 3, 3, 4]]   # floor(i * 5 / 8): repeats
  ref = proc(images=list(picked), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
  bgr = media.read_face_crops(path, num_frames=8, image_size=32, channel_order="bgr")
  ref_bgr = proc(images=list(picked[..., ::-1]), return_tensors="np")["pixel_values"]
  np.testing.assert_allclose(bgr, ref_bgr.transpose(0, 2, 3, 1), rtol=0, atol=1e-5)


def test_bad_face_crops(tmp_path):
  bad = {
      "float.npy": np.zeros((2, 8, 8, 3), np.float32),
      "gray.npy": np.zeros((2, 8, 8), np.uint8),
      "none.npy": np.zeros((0, 8, 8, 3), np.uint8),
  }
  for name, arr in bad.items():
    np.save(tmp_path / name, arr)
  (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
  for name in list(bad) + ["junk.npy", "missing.npy"]:
    with pytest.raises(media.MediaError, match=name):
      media.read_face_crops(tmp_path / name, num_frames=4, image_size=16)


def _sine(freq, rate, seconds, phase=0.0):
  t = np.arange(int(round(rate * seconds))) / rate
  return np.sin(2 * np.pi * freq * t + phase)


@pytest.mark.parametrize("rate_in", [22050, 44100, 8000, 48000])
def test_resample_sine_matches_analytic(rate_in):
  freq, seconds = 440.0, 1.0
  out = media.resample(_sine(freq, rate_in, seconds), rate_in, 16000)
  assert out.shape == (int(math.ceil(rate_in * seconds * 16000 / rate_in)),)
  ref = _sine(freq, 16000, seconds)
  edge = 200   # the FIR's edge transients (zero padding outside the clip)
  np.testing.assert_allclose(out[edge:-edge], ref[edge:-edge], atol=2e-3)


def test_resample_removes_content_above_new_nyquist():
  # 11 kHz cannot exist at 16 kHz: a proper anti-alias filter removes it (no 5 kHz alias).
  out = media.resample(_sine(11000.0, 44100, 1.0), 44100, 16000)
  assert np.sqrt(np.mean(out[200:-200] ** 2)) < 1e-2


def test_read_audio_windows_stereo_resampled(tmp_path):
  rate, seconds = 22050, 5.0
  left = 0.5 * _sine(300.0, rate, seconds)
  right = 0.3 * _sine(300.0, rate, seconds, phase=1.0)
  path = tmp_path / "stereo.wav"
  soundfile.write(path, np.stack([left, right], 1), rate, subtype="FLOAT")
  got = media.read_audio_windows(path, sample_rate=16000, num_windows=4, window_seconds=2.0)
  assert got.shape == (4, 32000) and got.dtype == np.float32
  mono = 0.5 * (0.5 * _sine(300.0, 16000, seconds) + 0.3 * _sine(300.0, 16000, seconds, 1.0))
  n, w = 80000, 32000
  for k in range(4):
    start = (k * (n - w)) // 3
    ref = mono[start:start + w]
    inner = slice(300, w - 300) if k in (0, 3) else slice(None)
    np.testing.assert_allclose(got[k][inner], ref[inner], atol=2e-3)


def test_short_clip_zero_padded_windows(tmp_path):
  rate = 16000
  wave = np.linspace(-0.5, 0.5, 12000).astype(np.float32)   # 0.75 s, no resampling
  path = tmp_path / "short.wav"
  soundfile.write(path, wave, rate, subtype="FLOAT")
  got = media.read_audio_windows(path, sample_rate=rate, num_windows=8, window_seconds=2.0)
  padded = np.concatenate([wave, np.zeros(32000 - 12000, np.float32)])
  assert got.shape == (8, 32000)
  for k in range(8):
    np.testing.assert_array_equal(got[k], padded)


def test_window_starts_formula():
  # 3.3 s at 16 kHz, 2 s windows, 8 of them: evenly from 0 to n - W.
  n, w, k = 52800, 32000, 8
  starts = media.window_starts(n, w, k)
  assert starts[0] == 0 and starts[-1] == n - w
  assert starts.tolist() == [int(math.floor(i * (n - w) / (k - 1))) for i in range(k)]
  assert media.window_starts(n, w, 1).tolist() == [0]


def test_corrupt_audio_raises_media_error(tmp_path):
  good = tmp_path / "good.wav"
  soundfile.write(good, np.zeros(8000, np.float32), 16000)
  (tmp_path / "empty.wav").write_bytes(b"")
  (tmp_path / "random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
  _write_truncated(tmp_path / "truncated.wav", good)
  header_only = good.read_bytes()[:44]
  (tmp_path / "header_only.wav").write_bytes(header_only)
  soundfile.write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), 16000, subtype="FLOAT")
  for name in ["missing.wav", "empty.wav", "random.wav", "truncated.wav", "header_only.wav",
               "nan.wav"]:
    path = tmp_path / name
    with pytest.raises(media.MediaError, match=name) as info:
      media.read_audio_windows(path)
    assert info.value.path == os.fspath(path)
