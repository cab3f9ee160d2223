"""Media decoding: video frames and face crops for CLIP, 16 kHz audio windows for HuBERT.

Real decoders only: OpenCV (FFmpeg) for video, soundfile (libsndfile) for wav/flac/ogg,
Pillow / OpenCV for the resize, scipy for polyphase resampling. Any file that is missing,
unreadable, corrupt or empty raises `MediaError` naming the file, so a data pipeline can skip
the row, count it and report it.

Rules (PAPER_NOTES.md sections 2 and 7, numbers in configs/data.py `media`):
- Frame sampling (`uniform_indices`): for a clip of n frames and F wanted,
  'official': np.arange(0, n, n / min(F, n)).astype(int) (AffectGPT's load_video / load_face,
  float arithmetic as there), padded to F by repeating its last index when n < F (n = 3:
  0, 1, 2, 2, 2, 2, 2, 2), cut to F when float rounding yields one index more (only for F
  that are not powers of two);
  'floor': index_i = floor(i * n / F), i = 0..F-1 (exact integers; equals 'official' for
  n >= F when F is a power of two, spreads repeats when n < F);
  'linspace': index_i = round_half_even(i * (n - 1) / (F - 1)) (first and last frame kept).
- Frames and face crops are resized to S x S, the aspect ratio not kept and nothing cropped
  (`resize_images`), as AffectGPT does: its video frames come out of decord at 224 x 224
  (FFmpeg's scale filter, libswscale with its default bilinear flag, antialiased when
  shrinking); 'pil_bilinear' (Pillow's bilinear, whose support widens with the shrink factor)
  is the closest filter available here. Face crops go through cv2.resize with its default
  INTER_LINEAR ('cv2_linear'), as the official load_face does, in the order they are stored
  (the official code hands them to CLIP as RGB). Then x / 255 and (x - mean) / std per
  channel (`normalize_images`): on an S x S image CLIP's processor (resize shortest side to
  S, centre crop S) changes nothing else.
- Audio: decoded to float32, channels averaged to mono, resampled to `sample_rate` with
  scipy.signal.resample_poly (polyphase FIR, Kaiser-windowed sinc, up/down = rates / gcd).
  The clip is zero-padded at the end to at least one window. Window k of K starts at
  floor(Fraction(max(n / rate - seconds, 0)) * k / max(K - 1, 1) * rate) with n / rate a
  float (`window_starts`: ImageBind's ConstantClipsPerVideoSampler and load_audio, which
  AffectGPT uses), i.e. evenly spread from the start to the end of the clip; windows overlap
  when the clip is shorter than K * W.
- HuBERT input (`hubert_input`): each window minus its own mean (AffectGPT's transform_audio
  subtracts it in place from the windows it then gives HuBERT), then, when enabled,
  Wav2Vec2FeatureExtractor's normalisation (x - mean) / sqrt(var + epsilon) over the whole
  clip's K windows at once ('clip': AffectGPT passes the [K, W] array as one input, one clip
  per call at inference) or over each window ('window').
- Audio tracks (`has_audio_track`): whether an mp4 / mov holds one is read from its boxes
  (a moov/trak/mdia/hdlr handler 'soun', ISO/IEC 14496-12); the track itself is not decoded
  (OpenCV reads only the video stream), so audio always comes from an audio file.
"""
from __future__ import annotations

import fractions
import math
import os
import struct
from typing import Sequence

import cv2
import numpy as np
import PIL.Image
import scipy.signal
import soundfile

FRAME_RULES = ("official", "floor", "linspace")
RESIZE_METHODS = ("pil_bilinear", "cv2_linear")
AUDIO_NORMALIZE = ("checkpoint", "on", "off")
NORMALIZE_SPANS = ("clip", "window")
# CLIP's image normalisation (the defaults; configs/data.py media.image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHANNEL_ORDERS = ("rgb", "bgr")


class MediaError(ValueError):
  """A media file that cannot be used; `path` names it, the message says why and what to do."""

  def __init__(self, path, message: str):
    self.path = os.fspath(path)
    super().__init__(f"{self.path}: {message}")


def uniform_indices(num_available: int, num_wanted: int, rule: str = "official") -> np.ndarray:
  """Indices of `num_wanted` frames spread uniformly over `num_available` (module doc).

  Returns:
    int64[num_wanted], non-decreasing, in [0, num_available).
  """
  if num_available < 1:
    raise ValueError(f"uniform_indices: num_available={num_available}; need at least 1 frame.")
  if num_wanted < 1:
    raise ValueError(f"uniform_indices: num_wanted={num_wanted}; must be >= 1.")
  if rule == "official":
    step = num_available / min(num_wanted, num_available)
    picked = np.arange(0, num_available, step).astype(np.int64)[:num_wanted]
    return np.concatenate([picked, np.full(num_wanted - len(picked), picked[-1], np.int64)])
  i = np.arange(num_wanted, dtype=np.int64)
  if rule == "floor":
    return (i * num_available) // num_wanted
  if rule == "linspace":
    return np.round(np.linspace(0, num_available - 1, num_wanted)).astype(np.int64)
  raise ValueError(f"frame_sampling='{rule}': expected one of {FRAME_RULES}.")


def resize_images(images: np.ndarray, image_size: int, method: str) -> np.ndarray:
  """Each image resized to image_size x image_size, aspect ratio not kept (module doc).

  Args:
    images: uint8[N, H, W, 3].
    method: 'pil_bilinear' (Pillow's antialiased bilinear) or 'cv2_linear' (cv2.resize's
      default INTER_LINEAR).
  Returns:
    uint8[N, S, S, 3].
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"resize_images: images {images.dtype}{list(images.shape)}; expected "
                     f"uint8[N, H, W, 3].")
  if method == "pil_bilinear":
    resize = lambda im: np.asarray(PIL.Image.fromarray(im).resize(
        (image_size, image_size), PIL.Image.Resampling.BILINEAR))
  elif method == "cv2_linear":
    resize = lambda im: cv2.resize(im, (image_size, image_size))
  else:
    raise ValueError(f"resize method '{method}': expected one of {RESIZE_METHODS}.")
  return np.stack([resize(np.ascontiguousarray(im)) for im in images])


def normalize_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]
                     ) -> np.ndarray:
  """uint8[..., 3] -> float32 (x / 255 - mean) / std per channel, as CLIP's processor."""
  scale = np.float32(1.0 / 255.0)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return (np.asarray(images).astype(np.float32) * scale - mean) / std


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


def decode_video_frames(path, num_frames: int, rule: str = "official") -> np.ndarray:
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


def sample_video_frames(path, num_frames: int = 8, image_size: int = 224,
                        rule: str = "official", resize: str = "pil_bilinear") -> np.ndarray:
  """Frames of a video file, uniformly sampled and resized to S x S (module doc).

  Returns:
    uint8[num_frames, S, S, 3], RGB.
  """
  return resize_images(decode_video_frames(path, num_frames, rule), image_size, resize)


def read_video_frames(path, num_frames: int = 8, image_size: int = 224,
                      mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                      rule: str = "official", resize: str = "pil_bilinear") -> np.ndarray:
  """Frames of a video file, uniformly sampled, resized and normalised (module doc).

  Args:
    path: a video file OpenCV/FFmpeg can decode (mp4, avi, ...).
    num_frames: F.
    image_size: S.
    mean, std: CLIP normalisation (configs/data.py media.image_mean / image_std).
    rule: a FRAME_RULES value (uniform_indices).
    resize: a RESIZE_METHODS value (resize_images).
  Returns:
    frames: float32[F, S, S, 3].
  Raises:
    MediaError: missing, empty, corrupt or frameless file.
  """
  return normalize_images(sample_video_frames(path, num_frames, image_size, rule, resize),
                          mean, std)


def sample_face_crops(npy_path, num_frames: int = 8, image_size: int = 224,
                      rule: str = "official", channel_order: str = "rgb",
                      resize: str = "cv2_linear") -> np.ndarray:
  """OpenFace-style face crops (openface_face/<name>/<name>.npy), sampled and resized.

  Args:
    npy_path: a .npy file holding uint8[N, H, W, 3] crops (N >= 1).
    num_frames, image_size, rule, resize: as for sample_video_frames.
    channel_order: 'rgb' (the crops are used in their stored order, as the official code
      does) or 'bgr' (reversed to RGB).
  Returns:
    uint8[F, S, S, 3].
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
  return resize_images(np.ascontiguousarray(picked), image_size, resize)


def read_face_crops(npy_path, num_frames: int = 8, image_size: int = 224,
                    mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                    rule: str = "official", channel_order: str = "rgb",
                    resize: str = "cv2_linear") -> np.ndarray:
  """Face crops sampled, resized (sample_face_crops) and normalised: float32[F, S, S, 3]."""
  return normalize_images(sample_face_crops(npy_path, num_frames, image_size, rule,
                                            channel_order, resize), mean, std)


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


# ISO base media files (mp4, mov, m4a, 3gp) start with one of these top-level boxes.
ISO_BMFF_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin")
# Boxes on the way from the file's top level to a track's handler (moov/trak/mdia/hdlr).
_TRACK_PATH = (b"moov", b"trak", b"mdia")
# The largest moov box read into memory (its tables grow with the clip's length: a few MiB
# for hours of video); a larger one is not inspected.
MAX_MOOV_BYTES = 256 * 2 ** 20


def _boxes(data: bytes, start: int, end: int):
  """(type, payload start, payload end) of the ISO BMFF boxes in data[start:end]."""
  while start + 8 <= end:
    size, kind = struct.unpack(">I4s", data[start:start + 8])
    header = 8
    if size == 1:
      if start + 16 > end:
        return
      size = struct.unpack(">Q", data[start + 8:start + 16])[0]
      header = 16
    elif size == 0:
      size = end - start
    if size < header or start + size > end:
      return
    yield kind, start + header, start + size
    start += size


def _handler_types(data: bytes, start: int, end: int, depth: int = 0) -> list[bytes]:
  """The handler types (b'vide', b'soun', ...) of the tracks under data[start:end]."""
  out = []
  for kind, lo, hi in _boxes(data, start, end):
    if depth < len(_TRACK_PATH) and kind == _TRACK_PATH[depth]:
      out += _handler_types(data, lo, hi, depth + 1)
    elif depth == len(_TRACK_PATH) and kind == b"hdlr" and hi - lo >= 12:
      out.append(data[lo + 8:lo + 12])     # after version/flags and pre_defined
  return out


def has_audio_track(path) -> bool | None:
  """Whether a video file holds an audio track: True / False for ISO base media files (mp4,
  mov: a track whose handler is 'soun'), None when the container is another one (avi, mkv,
  webm) or its moov box cannot be read. The audio itself is not decoded (OpenCV reads only
  the video stream)."""
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      offset = 0
      while offset + 8 <= size:
        f.seek(offset)
        head = f.read(16)
        box_size, kind = struct.unpack(">I4s", head[:8])
        if offset == 0 and kind not in ISO_BMFF_FIRST_BOXES:
          return None
        header = 8
        if box_size == 1 and len(head) == 16:
          box_size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif box_size == 0:
          box_size = size - offset
        if box_size < header:
          return None
        if kind == b"moov":
          if box_size > MAX_MOOV_BYTES:
            return None
          f.seek(offset)
          data = f.read(box_size)
          return b"soun" in _handler_types(data, 0, len(data))
        offset += box_size
  except (OSError, struct.error):
    return None
  return None


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


def window_starts(num_samples: int, sample_rate: int, num_windows: int,
                  window_seconds: float) -> np.ndarray:
  """Start sample of each window over a clip of max(num_samples, window) samples (module doc).

  Returns:
    int64[num_windows].
  """
  window = int(round(window_seconds * sample_rate))
  if num_windows < 1 or window < 1:
    raise ValueError(f"window_starts: num_windows={num_windows}, window={window} samples; "
                     f"both >= 1.")
  duration = max(num_samples, window) / sample_rate
  latest = fractions.Fraction(max(duration - window_seconds, 0))
  spacing = latest / max(num_windows - 1, 1)
  return np.array([int(spacing * k * sample_rate) for k in range(num_windows)], np.int64)


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
  starts = window_starts(wave.shape[0], sample_rate, num_windows, window_seconds)
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


def normalize_enabled(setting: str, checkpoint_do_normalize: bool) -> bool:
  """Whether HuBERT's input is normalised: setting 'on' / 'off', or 'checkpoint' (the
  checkpoint's preprocessor_config.json do_normalize, configs/data.py media)."""
  if setting not in AUDIO_NORMALIZE:
    raise ValueError(f"audio_normalize='{setting}': expected one of {AUDIO_NORMALIZE}.")
  return setting == "on" or (setting == "checkpoint" and bool(checkpoint_do_normalize))


def hubert_input(windows: np.ndarray, zero_mean: bool, normalize: bool, span: str,
                 epsilon: float) -> np.ndarray:
  """The K windows of one clip as HuBERT takes them (module doc).

  Args:
    windows: float[K, W].
    zero_mean: subtract each window's mean first.
    normalize: then (x - mean) / sqrt(var + epsilon) over `span`: 'clip' (all K windows
      together) or 'window' (each row), as Wav2Vec2FeatureExtractor with do_normalize.
  Returns:
    float32[K, W].
  """
  if span not in NORMALIZE_SPANS:
    raise ValueError(f"audio_normalize_span='{span}': expected one of {NORMALIZE_SPANS}.")
  x = np.asarray(windows, np.float32)
  if zero_mean:
    x = x - x.mean(axis=1, keepdims=True)
  if normalize:
    axis = None if span == "clip" else 1
    mean = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True)
    x = (x - mean) / np.sqrt(var + np.float32(epsilon))
  return x.astype(np.float32)
