"""Media decoding: video frames and face crops with CLIP preprocessing, 16 kHz audio windows.

Real decoders only: OpenCV (FFmpeg) for video, soundfile (libsndfile) for wav/flac/ogg,
Pillow for the bicubic resize, scipy for polyphase resampling. Any file that is missing,
unreadable, corrupt or empty raises `MediaError` naming the file, so a data pipeline can skip
the row, count it and report it.

Rules (PAPER_NOTES.md section 2, numbers in configs/data.py `media`):
- Frame sampling (`uniform_indices`): for a clip of n frames and F wanted,
  'floor': index_i = floor(i * n / F), i = 0..F-1 (AffectGPT's uniform sampler, inherited
  from Video-LLaMA: np.arange(0, n, n / F).astype(int), here in exact integer arithmetic);
  'linspace': index_i = round_half_even(i * (n - 1) / (F - 1)) (first and last frame kept).
  Both repeat frames when n < F.
- CLIP preprocessing (`clip_preprocess`), as CLIPImageProcessor does it: resize so the shortest
  side is S (the other side int(S * long / short)) with Pillow's bicubic filter on uint8 RGB
  (antialiased when shrinking), centre crop S x S at top = (h - S) // 2, left = (w - S) // 2,
  x / 255, then (x - mean) / std per channel.
- Audio: decoded to float32, channels averaged to mono, resampled to `sample_rate` with
  scipy.signal.resample_poly (polyphase FIR, Kaiser-windowed sinc, up/down = rates / gcd).
  The clip is zero-padded at the end to at least one window; with n samples and window W,
  window k of K starts at floor(k * (n - W) / (K - 1)) (K = 1: at 0), i.e. evenly spread from
  the start to the end of the clip (the ConstantClipsPerVideoSampler rule of ImageBind,
  which AffectGPT uses). Windows overlap when the clip is shorter than K * W.
"""
from __future__ import annotations

import math
import os
import struct
from typing import Sequence

import cv2
import numpy as np
import PIL.Image
import scipy.signal
import soundfile

FRAME_RULES = ("floor", "linspace")
# CLIP's image normalisation (the defaults; configs/data.py media.image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHANNEL_ORDERS = ("rgb", "bgr")


class MediaError(ValueError):
  """A media file that cannot be used; `path` names it, the message says why and what to do."""

  def __init__(self, path, message: str):
    self.path = os.fspath(path)
    super().__init__(f"{self.path}: {message}")


def uniform_indices(num_available: int, num_wanted: int, rule: str = "floor") -> np.ndarray:
  """Indices of `num_wanted` frames spread uniformly over `num_available` (module doc).

  Returns:
    int64[num_wanted], non-decreasing, in [0, num_available).
  """
  if num_available < 1:
    raise ValueError(f"uniform_indices: num_available={num_available}; need at least 1 frame.")
  if num_wanted < 1:
    raise ValueError(f"uniform_indices: num_wanted={num_wanted}; must be >= 1.")
  i = np.arange(num_wanted, dtype=np.int64)
  if rule == "floor":
    return (i * num_available) // num_wanted
  if rule == "linspace":
    return np.round(np.linspace(0, num_available - 1, num_wanted)).astype(np.int64)
  raise ValueError(f"frame_sampling='{rule}': expected one of {FRAME_RULES}.")


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
  """(height, width) with the shortest side = size, the other int(size * long / short)."""
  if width <= height:
    return int(size * height / width), size
  return size, int(size * width / height)


def clip_preprocess(frames: np.ndarray, image_size: int, mean: Sequence[float],
                    std: Sequence[float]) -> np.ndarray:
  """CLIP preprocessing of RGB frames (module doc).

  Args:
    frames: uint8[F, H, W, 3], RGB.
    image_size: S, the output side.
    mean, std: per-channel normalisation (3 floats each).
  Returns:
    float32[F, S, S, 3].
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"clip_preprocess: frames {frames.dtype}{list(frames.shape)}; expected "
                     f"uint8[F, H, W, 3] RGB.")
  out = np.empty((frames.shape[0], image_size, image_size, 3), np.float32)
  for f, frame in enumerate(frames):
    h, w = frame.shape[:2]
    new_h, new_w = _resized_size(h, w, image_size)
    img = PIL.Image.fromarray(frame).resize((new_w, new_h), PIL.Image.Resampling.BICUBIC)
    resized = np.asarray(img)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    out[f] = resized[top:top + image_size, left:left + image_size]
  scale = np.float32(1.0 / 255.0)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return (out * scale - mean) / std


def _open_video(path) -> cv2.VideoCapture:
  if not os.path.isfile(path):
    raise MediaError(path, "no such video file; check the data folder's video/ directory.")
  if os.path.getsize(path) == 0:
    raise MediaError(path, "empty video file (0 bytes); re-extract or re-download the clip.")
  cap = cv2.VideoCapture(os.fspath(path))
  if not cap.isOpened():
    cap.release()
    raise MediaError(path, "OpenCV/FFmpeg cannot open this video (corrupt, truncated or an "
                     "unsupported codec); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4.")
  return cap


def _decode_pass(path, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
  """One sequential decode of the whole stream; keeps the frames at `wanted` (RGB).

  Returns:
    ({index: uint8[H, W, 3]}, number of frames the stream really holds).
  """
  cap = _open_video(path)
  keep = set(int(i) for i in wanted)
  kept, n = {}, 0
  try:
    while cap.grab():
      if n in keep:
        ok, frame = cap.retrieve()
        if not ok or frame is None:
          raise MediaError(path, f"frame {n} decodes to nothing (corrupt stream); re-encode it.")
        kept[n] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
      n += 1
  finally:
    cap.release()
  return kept, n


def decode_video_frames(path, num_frames: int, rule: str = "floor") -> np.ndarray:
  """Decodes `num_frames` uniformly sampled frames of a video (module doc).

  The stream is decoded once to its end (the container's frame count is only an estimate); a
  second pass runs only when that estimate was wrong.

  Returns:
    uint8[num_frames, H, W, 3], RGB.
  """
  cap = _open_video(path)
  estimate = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
  cap.release()
  wanted = uniform_indices(estimate, num_frames, rule) if estimate > 0 else np.zeros(0, int)
  kept, n = _decode_pass(path, wanted)
  if n == 0:
    raise MediaError(path, "the video holds no decodable frame; re-encode or drop the clip.")
  if n != estimate:
    wanted = uniform_indices(n, num_frames, rule)
    kept, n = _decode_pass(path, wanted)
    if any(int(i) not in kept for i in wanted):
      raise MediaError(path, "the stream decodes to a different number of frames on each pass "
                       "(corrupt); re-encode it.")
  return np.stack([kept[int(i)] for i in wanted])


def read_video_frames(path, num_frames: int = 8, image_size: int = 224,
                      mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                      rule: str = "floor") -> np.ndarray:
  """Frames of a video file, uniformly sampled and CLIP-preprocessed (module doc).

  Args:
    path: a video file OpenCV/FFmpeg can decode (mp4, avi, ...).
    num_frames: F.
    image_size: S.
    mean, std: CLIP normalisation (configs/data.py media.image_mean / image_std).
    rule: 'floor' or 'linspace' (uniform_indices).
  Returns:
    frames: float32[F, S, S, 3].
  Raises:
    MediaError: missing, empty, corrupt or frameless file.
  """
  return clip_preprocess(decode_video_frames(path, num_frames, rule), image_size, mean, std)


def read_face_crops(npy_path, num_frames: int = 8, image_size: int = 224,
                    mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                    rule: str = "floor", channel_order: str = "rgb") -> np.ndarray:
  """OpenFace-style face crops (openface_face/<name>/<name>.npy), sampled and preprocessed.

  Args:
    npy_path: a .npy file holding uint8[N, H, W, 3] crops (N >= 1).
    num_frames, image_size, mean, std, rule: as for read_video_frames.
    channel_order: 'rgb' or 'bgr', the order the crops were stored in.
  Returns:
    faces: float32[F, S, S, 3].
  Raises:
    MediaError: missing, unreadable or mis-shaped file, or no crop in it.
  """
  if channel_order not in CHANNEL_ORDERS:
    raise ValueError(f"face_channel_order='{channel_order}': expected one of {CHANNEL_ORDERS}.")
  if not os.path.isfile(npy_path):
    raise MediaError(npy_path, "no such face-crop file; expected openface_face/<name>/<name>.npy.")
  try:
    crops = np.load(npy_path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise MediaError(npy_path, f"not a readable .npy array ({e}); re-run the face extraction."
                     ) from e
  if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
    raise MediaError(npy_path, f"holds {crops.dtype}{list(crops.shape)}; expected uint8[N, H, "
                     f"W, 3] face crops.")
  if crops.shape[0] == 0 or crops.shape[1] == 0 or crops.shape[2] == 0:
    raise MediaError(npy_path, f"holds no face crop (shape {list(crops.shape)}); drop the clip "
                     f"or use its video frames instead.")
  picked = crops[uniform_indices(crops.shape[0], num_frames, rule)]
  if channel_order == "bgr":
    picked = picked[..., ::-1]
  return clip_preprocess(np.ascontiguousarray(picked), image_size, mean, std)


def _check_wav_complete(path) -> None:
  """Raises MediaError when a RIFF/WAVE file's data chunk is shorter than its header says."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return
    offset = 12
    while offset + 8 <= size:
      f.seek(offset)
      chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
      if chunk_id == b"data":
        available = size - offset - 8
        # 0 and 0xFFFFFFFF mark an unknown length (streamed writers).
        if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
          raise MediaError(path, f"truncated wav: the header declares {chunk_size} bytes of "
                           f"audio, the file holds {available}; re-extract the audio.")
        return
      offset += 8 + chunk_size + (chunk_size & 1)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Polyphase resampling of a mono signal (scipy.signal.resample_poly, Kaiser window).

  Args:
    wave: float[T] at rate_in Hz.
  Returns:
    float32[ceil(T * rate_out / rate_in)].
  """
  if rate_in == rate_out:
    return np.asarray(wave, np.float32)
  g = math.gcd(int(rate_in), int(rate_out))
  out = scipy.signal.resample_poly(np.asarray(wave, np.float64), rate_out // g, rate_in // g)
  return out.astype(np.float32)


def read_audio(path, sample_rate: int = 16000) -> np.ndarray:
  """Decodes an audio file to mono float32 at `sample_rate` (module doc).

  Returns:
    wave: float32[T], T >= 1.
  Raises:
    MediaError: missing, empty, corrupt, truncated or unsupported file.
  """
  if not os.path.isfile(path):
    raise MediaError(path, "no such audio file; check the data folder's audio/ directory.")
  if os.path.getsize(path) == 0:
    raise MediaError(path, "empty audio file (0 bytes); re-extract the audio.")
  _check_wav_complete(path)
  try:
    data, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
    raise MediaError(path, f"soundfile cannot decode it ({e}); convert it to wav, e.g. "
                     f"ffmpeg -i IN -ac 1 -ar {sample_rate} OUT.wav.") from e
  if data.shape[0] == 0:
    raise MediaError(path, "the audio holds no samples; re-extract it or drop the clip.")
  if not np.all(np.isfinite(data)):
    raise MediaError(path, "the audio holds NaN or infinite samples; re-extract it.")
  return resample(data.mean(axis=1), int(rate), int(sample_rate))


def window_starts(num_samples: int, window: int, num_windows: int) -> np.ndarray:
  """Start sample of each window over a clip of max(num_samples, window) samples (module doc).

  Returns:
    int64[num_windows].
  """
  if num_windows < 1 or window < 1:
    raise ValueError(f"window_starts: num_windows={num_windows}, window={window}; both >= 1.")
  span = max(num_samples, window) - window
  k = np.arange(num_windows, dtype=np.int64)
  return (k * span) // max(num_windows - 1, 1)


def audio_windows(wave: np.ndarray, sample_rate: int, num_windows: int,
                  window_seconds: float) -> np.ndarray:
  """K evenly spread windows of a mono clip, zero-padded to one window (module doc).

  Args:
    wave: float[T] at sample_rate Hz.
  Returns:
    windows: float32[K, W], W = round(window_seconds * sample_rate).
  """
  window = int(round(window_seconds * sample_rate))
  wave = np.asarray(wave, np.float32)
  if wave.shape[0] < window:
    wave = np.pad(wave, (0, window - wave.shape[0]))
  starts = window_starts(wave.shape[0], window, num_windows)
  return np.stack([wave[s:s + window] for s in starts])


def read_audio_windows(path, sample_rate: int = 16000, num_windows: int = 8,
                       window_seconds: float = 2.0) -> np.ndarray:
  """Audio of a clip as K windows for HuBERT (module doc).

  Args:
    path: wav (or flac / ogg) file, any rate, mono or multi-channel.
    sample_rate: output rate (Hz).
    num_windows: K.
    window_seconds: window length in seconds.
  Returns:
    windows: float32[K, round(window_seconds * sample_rate)].
  Raises:
    MediaError: missing, empty, corrupt, truncated or unsupported file.
  """
  return audio_windows(read_audio(path, sample_rate), sample_rate, num_windows, window_seconds)
