"""Media decoding against independent references.

Frames: a numpy antialiased-bilinear (triangle filter) resize of the frames OpenCV decodes,
to S x S without cropping; CLIP's normalisation against transformers' CLIPImageProcessorPil;
face crops against cv2.resize; frame indices against AffectGPT's load_video formula re-typed
and against the written frames (each frame carries its index); audio windows against
ImageBind's clip sampler re-typed; HuBERT's input against transformers'
Wav2Vec2FeatureExtractor; resampling against an analytic sine; corrupt files raise
MediaError naming the file.
"""
from fractions import Fraction
import math
import os

import cv2
import numpy as np
import pytest
import soundfile
import torch
from transformers import CLIPImageProcessorPil, Wav2Vec2FeatureExtractor
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


def _official_indices(vlen: int, n_frms: int) -> list:
  """AffectGPT's load_video / load_face 'uniform' indices, re-typed."""
  n_frms_update = min(n_frms, vlen)
  indices = np.arange(0, vlen, vlen / n_frms_update).astype(int).tolist()
  while len(indices) < n_frms:
    indices.append(indices[-1])
  return indices


@pytest.mark.parametrize("vlen", range(1, 21))
def test_frame_indices_follow_the_official_formula(vlen):
  assert media.uniform_indices(vlen, 8).tolist() == _official_indices(vlen, 8)
  assert media.uniform_indices(vlen, 8, "official").tolist() == _official_indices(vlen, 8)
  cfg = data_config.get_data_config().media
  assert media.uniform_indices(vlen, cfg.num_frames, cfg.frame_sampling).tolist() == \
      _official_indices(vlen, 8)


def test_official_indices_keep_f_items_where_float_arange_gives_more():
  # np.arange(0, 17, 17 / 7) has 8 items (float rounding); the model takes F = 7.
  assert len(np.arange(0, 17, 17 / 7)) == 8
  assert media.uniform_indices(17, 7, "official").tolist() == _official_indices(17, 7)[:7]


@pytest.mark.parametrize("n,k", [(12, 8), (8, 8), (5, 8), (1, 8), (100, 3), (7, 1)])
def test_uniform_indices_formulas(n, k):
  floor = media.uniform_indices(n, k, "floor")
  expected = [int(math.floor(i * n / k)) for i in range(k)]
  assert floor.tolist() == expected
  lin = media.uniform_indices(n, k, "linspace")
  expected = [int(np.round(i * (n - 1) / (k - 1))) if k > 1 else 0 for i in range(k)]
  assert lin.tolist() == expected
  assert lin.min() >= 0 and lin.max() < n and floor.max() < n


def test_uniform_indices_errors():
  with pytest.raises(ValueError, match="num_available=0"):
    media.uniform_indices(0, 8)
  with pytest.raises(ValueError, match="frame_sampling='middle'"):
    media.uniform_indices(8, 8, "middle")


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of an antialiased bilinear resize: a triangle filter whose support
  widens with the shrink factor, centred on each output pixel's centre."""
  scale = n_in / n_out
  width = max(scale, 1.0)
  centres = (np.arange(n_out) + 0.5) * scale
  taps = np.arange(n_in) + 0.5
  w = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / width)
  return w / w.sum(axis=1, keepdims=True)


def _stretch_reference(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8[N, H, W, 3] -> float[N, S, S, 3], both sides to S (no crop), in float64."""
  wy = _triangle_weights(frames.shape[1], size)
  wx = _triangle_weights(frames.shape[2], size)
  return np.einsum("yh,nhwc,xw->nyxc", wy, frames.astype(np.float64), wx)


@pytest.mark.parametrize("size", [(48, 80), (96, 64), (30, 20)])
@pytest.mark.parametrize("image_size", [32, 40])
def test_resize_images_stretches_with_antialiased_bilinear(size, image_size):
  frames = np.stack([f[..., ::-1] for f in _textured_frames(3, *size, seed=sum(size))])
  got = media.resize_images(frames, image_size, "pil_bilinear")
  assert got.shape == (3, image_size, image_size, 3) and got.dtype == np.uint8
  ref = _stretch_reference(frames, image_size)
  # Pillow rounds to uint8 between its two passes and at the end: at most 1 level apart.
  err = np.abs(got.astype(np.float64) - ref)
  assert err.max() <= 1.0 + 1e-9 and err.mean() < 0.5


@pytest.mark.parametrize("image_size", [32, 56])
def test_normalize_images_matches_clip_processor_on_square_images(image_size):
  frames = np.stack([f[..., ::-1] for f in _textured_frames(3, image_size, image_size, 7)])
  got = media.normalize_images(frames, media.CLIP_MEAN, media.CLIP_STD)
  proc = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                               crop_size={"height": image_size, "width": image_size})
  ref = proc(images=list(frames), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_read_video_frames_resizes_a_non_square_video_without_cropping(tmp_path):
  path = tmp_path / "clip.mp4"
  _write_video(path, _textured_frames(11, 48, 80, seed=3))
  decoded = _decode_all_rgb(path)
  assert decoded.shape[0] == 11
  picked = decoded[_official_indices(11, 4)]
  ref = _stretch_reference(picked, 32)
  got = media.read_video_frames(path, num_frames=4, image_size=32)
  mean, std = np.asarray(OPENAI_CLIP_MEAN), np.asarray(OPENAI_CLIP_STD)
  np.testing.assert_allclose(got, (ref / 255 - mean) / std, rtol=0, atol=1.0 / 255 / 0.26 + 1e-5)
  raw = media.sample_video_frames(path, num_frames=4, image_size=32)
  assert raw.shape == (4, 32, 32, 3) and raw.dtype == np.uint8
  assert np.abs(raw.astype(np.float64) - ref).max() <= 1.0 + 1e-9


@pytest.mark.parametrize("rule", ["official", "floor", "linspace"])
@pytest.mark.parametrize("n", [13, 8, 3])
def test_read_video_frames_samples_uniformly_and_repeats(tmp_path, rule, n):
  path = tmp_path / f"idx{n}.mp4"
  _write_video(path, [_index_frame(i, 32, 32) for i in range(n)])
  raw = media.decode_video_frames(path, 8, rule)
  assert raw.shape == (8, 32, 32, 3) and raw.dtype == np.uint8
  levels = raw.reshape(8, -1).mean(axis=1)
  got = np.round((levels - 8) / 16).astype(int)
  expected = {"official": _official_indices(n, 8), "floor": (np.arange(8) * n) // 8,
              "linspace": np.round(np.linspace(0, n - 1, 8))}[rule]
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


def test_read_face_crops_resized_with_cv2_as_official(tmp_path):
  rng = np.random.default_rng(1)
  crops = rng.integers(0, 256, (5, 40, 36, 3), dtype=np.uint8)
  path = tmp_path / "sample" / "sample.npy"
  path.parent.mkdir()
  np.save(path, crops)
  # load_face: cv2.resize(face, (width, height)) on every crop, then the uniform indices;
  # the crops keep their stored channel order.
  ref = np.stack([cv2.resize(face, (32, 32)) for face in crops])[_official_indices(5, 8)]
  got = media.read_face_crops(path, num_frames=8, image_size=32)
  mean, std = np.asarray(OPENAI_CLIP_MEAN), np.asarray(OPENAI_CLIP_STD)
  np.testing.assert_allclose(got, (ref / 255.0 - mean) / std, rtol=0, atol=1e-5)
  raw = media.sample_face_crops(path, num_frames=8, image_size=32)
  np.testing.assert_array_equal(raw, ref)
  bgr = media.read_face_crops(path, num_frames=8, image_size=32, channel_order="bgr")
  np.testing.assert_allclose(bgr, (ref[..., ::-1] / 255.0 - mean) / std, rtol=0, atol=1e-5)


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


def _imagebind_starts(num_samples: int, sample_rate: int, clips: int, seconds: int) -> list:
  """ImageBind's load_audio windows (ConstantClipsPerVideoSampler), re-typed: the clip is
  zero-padded to `seconds`, then window k starts at int(k * Fraction(max(duration - seconds,
  0)) / (clips - 1) * sample_rate) with duration = samples / rate as a float."""
  duration = max(num_samples, seconds * sample_rate) / sample_rate
  latest = Fraction(max(duration - seconds, 0))
  spacing = Fraction(latest, max(clips - 1, 1))
  return [int(spacing * k * sample_rate) for k in range(clips)]


def test_window_starts_match_imagebind_clip_sampler():
  rng = np.random.default_rng(0)
  lengths = list(range(31990, 32100)) + list(rng.integers(32000, 16000 * 30, 300))
  for n in lengths:
    got = media.window_starts(int(n), 16000, 8, 2.0).tolist()
    assert got == _imagebind_starts(int(n), 16000, 8, 2), n
  assert media.window_starts(52800, 16000, 1, 2.0).tolist() == [0]


@pytest.mark.parametrize("n", [32007, 52800, 80007])
def test_audio_windows_are_eight_two_second_slices(n):
  rate = 16000
  wave = np.random.default_rng(2).standard_normal(n).astype(np.float32)
  got = media.audio_windows(wave, rate, 8, 2.0)
  assert got.shape == (8, 32000)
  for k, start in enumerate(_imagebind_starts(n, rate, 8, 2)):
    np.testing.assert_array_equal(got[k], wave[start:start + 32000])


def _clip_windows(seed: int) -> np.ndarray:
  """Eight 2 s windows of different offsets and loudness."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((8, 32000)) * rng.uniform(0.01, 0.5, (8, 1)) + rng.uniform(-0.2, 0.2,
                                                                                     (8, 1))
  return x.astype(np.float32)


@pytest.mark.parametrize("do_normalize", [True, False])
def test_hubert_input_matches_wav2vec2_feature_extractor(do_normalize):
  windows = _clip_windows(3)
  extractor = Wav2Vec2FeatureExtractor(do_normalize=do_normalize)
  # AffectGPT: transform_audio subtracts each window's mean in place from the windows it then
  # gives the extractor as one [K, W] tensor.
  centred = torch.from_numpy(windows.copy())
  centred -= centred.mean(dim=1, keepdim=True)
  ref = extractor(centred, sampling_rate=16000, return_tensors="np").input_values[0]
  got = media.hubert_input(windows, True, do_normalize, "clip", 1e-7)
  assert got.shape == (8, 32000) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)
  # 'window': each window a separate input of the extractor.
  ref_w = np.stack(extractor(list(centred.numpy()), sampling_rate=16000,
                             return_tensors="np").input_values)
  got_w = media.hubert_input(windows, True, do_normalize, "window", 1e-7)
  np.testing.assert_allclose(got_w, ref_w, rtol=0, atol=2e-5)
  if do_normalize:
    assert abs(got_w[0].std() - 1) < 1e-3 and abs(got[0].std() - 1) > 0.05


def test_hubert_input_settings():
  assert media.normalize_enabled("on", False) and not media.normalize_enabled("off", True)
  assert media.normalize_enabled("checkpoint", True)
  assert not media.normalize_enabled("checkpoint", False)
  with pytest.raises(ValueError, match="audio_normalize='yes'"):
    media.normalize_enabled("yes", True)
  with pytest.raises(ValueError, match="audio_normalize_span='batch'"):
    media.hubert_input(_clip_windows(0), True, True, "batch", 1e-7)


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
