"""The demo dataset: synthetic multimodal emotion clips, generated deterministically from a seed.

Each clip has a latent emotion set: 1..max_words_primary words of one cluster, plus with
probability second_cluster_prob one word of another cluster. Vocabulary and clusters come from
one wheel file of the project's demo wheel (clusters = level-1 groups, words = the level-2 and
level-3 cells, lowercased), read here with `csv`; the model never sees this structure, only the
media and text written to disk. Every cluster gets a style drawn from the seed (hue, shape,
motion speed, pitch, tempo, a confusable neighbour cluster); the words of a cluster shift the
hue and the pitch a little. Each modality is imperfect:
- video (mp4): a noisy background of the cue cluster's hue (shifted by the cue word), its
  shape moving at its speed, a smaller shape of the second cluster if any; with
  video_mislead_prob the cue cluster is a random other one;
- audio (wav): a harmonic tone at the cue cluster's pitch, amplitude-modulated at its tempo,
  a quieter tone of the second cluster, white noise; misleading with audio_mislead_prob;
- subtitle: a template with one latent word, or a neutral sentence (text_neutral_prob), or a
  word of another cluster (text_mislead_prob).
Labels: rl and test hold the latent set. The SFT split (train) is noisier, as MER-Caption+'s
automatic labels are: with train_extra_prob a word of the primary cluster's neighbour is
added, with train_swap_prob one word is replaced by a random one. Its reasons (the SFT <think>
text) describe the cues the clip shows and end with its labels.

Layout (official MER-Caption+ names, PAPER_NOTES.md section 6), under ensure_demo_data's path:
  manifest.json
  <split>/video/<name>.mp4, <split>/audio/<name>.wav,
  <split>/track2_train_mercaptionplus.csv (name, openset),
  <split>/track3_train_mercaptionplus.csv (name, reason),
  <split>/subtitle_chieng.csv (name, english, chinese)      for split in train, rl, test.
Numbers and strings: configs/data.py `synthetic`.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping

import cv2
import ml_collections
import numpy as np
import soundfile

from affect_jax import diskspace

# Bump when the generator's output changes for the same config (invalidates the cache).
GENERATOR_VERSION = 1
SPLITS = ("train", "rl", "test")
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """clusters[c]: the level-1 name; words[c]: its level-2 and level-3 words (lowercase)."""
  clusters: tuple[str, ...]
  words: tuple[tuple[str, ...], ...]

  @property
  def all_words(self) -> tuple[str, ...]:
    return tuple(w for group in self.words for w in group)


@dataclasses.dataclass(frozen=True)
class Styles:
  """Per-cluster rendering parameters, drawn from the seed (one entry per cluster)."""
  hue: np.ndarray          # float[C], degrees
  shape: tuple[str, ...]
  speed: np.ndarray        # float[C], pixels per frame
  pitch: np.ndarray        # float[C], Hz
  tempo: np.ndarray        # float[C], Hz
  neighbour: np.ndarray    # int[C], a confusable other cluster


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything about one clip: its emotions, its cues and its texts."""
  name: str
  emotions: tuple[str, ...]   # the latent set
  labels: tuple[str, ...]     # as written to the labels CSV (noisy on train)
  openset: str                # the labels CSV cell
  subtitle: str
  reason: str
  # Video: cue cluster and the cue word's offset, second cluster (-1: none).
  video_cluster: int
  hue: float                  # degrees
  radius: float               # fraction of frame_size
  speed: float                # pixels per frame
  direction: float            # radians
  start: tuple[float, float]  # fraction of frame_size (x, y)
  second_cluster: int
  num_frames: int
  # Audio: cue cluster, pitch and tempo.
  audio_cluster: int
  pitch: float
  tempo: float
  duration: float
  stereo: bool
  noise_seed: int


def default_wheel_dir() -> str:
  """The project's demo wheel folder (affect_jax/emotion/demo_wheel)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "emotion",
                      "demo_wheel")


def wheel_path(cfg: ml_collections.ConfigDict) -> str:
  return os.path.join(cfg.wheel_dir or default_wheel_dir(), cfg.wheel_file)


def load_vocabulary(path: str, levels=(2, 3)) -> Vocabulary:
  """Reads a wheel CSV (level1, level2, level3; a blank cell repeats the cell above).

  Returns:
    The level-1 clusters in file order and, per cluster, its words at `levels` (lowercased,
    first occurrence kept, a word listed under two clusters kept under the first).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such wheel file; set synthetic.wheel_dir / wheel_file "
                            f"to a wheel CSV with columns level1, level2, level3.")
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  header = [h.strip().lower() for h in rows[0]] if rows else []
  if header[:3] != ["level1", "level2", "level3"]:
    raise ValueError(f"{path}: header {rows[0] if rows else '(empty file)'}; expected "
                     f"level1, level2, level3.")
  if any(level not in (1, 2, 3) for level in levels):
    raise ValueError(f"synthetic.word_levels={tuple(levels)}: levels are 1, 2 and 3.")
  clusters, words, seen = [], [], set()
  current = ["", "", ""]
  for line, row in enumerate(rows[1:], start=2):
    cells = [(row[i].strip() if i < len(row) else "") for i in range(3)]
    for i, cell in enumerate(cells):
      if cell:
        current[i] = cell
        current[i + 1:] = [""] * (2 - i)
    if not current[0]:
      raise ValueError(f"{path} row {line}: level1 empty with no cell above to repeat.")
    name = current[0].lower()
    if name not in clusters:
      clusters.append(name)
      words.append([])
    group = words[clusters.index(name)]
    for level in levels:
      word = current[level - 1].lower()
      if word and word not in seen:
        seen.add(word)
        group.append(word)
  empty = [c for c, group in zip(clusters, words) if not group]
  if len(clusters) < 2 or empty:
    raise ValueError(f"{path}: need >= 2 level-1 clusters, each with words at levels "
                     f"{tuple(levels)}; clusters without words: {empty}.")
  return Vocabulary(tuple(clusters), tuple(tuple(g) for g in words))


def make_styles(num_clusters: int, cfg: ml_collections.ConfigDict) -> Styles:
  """Per-cluster styles: hues evenly spread, pitches log-spaced, all permuted by the seed."""
  rng = np.random.default_rng([cfg.seed, 0])
  c = num_clusters
  hue = (np.arange(c) * 360.0 / c)[rng.permutation(c)]
  shapes = tuple(cfg.shapes[i % len(cfg.shapes)] for i in rng.permutation(c))
  speed = np.linspace(*cfg.speed_range, c)[rng.permutation(c)]
  pitch = np.geomspace(*cfg.pitch_range, c)[rng.permutation(c)]
  tempo = np.linspace(*cfg.tempo_range, c)[rng.permutation(c)]
  order = rng.permutation(c)
  neighbour = np.empty(c, np.int64)
  neighbour[order] = np.roll(order, 1)   # a cycle: never a cluster's own neighbour
  return Styles(hue, shapes, speed, pitch, tempo, neighbour)


def _other(rng, num: int, exclude: int) -> int:
  k = int(rng.integers(num - 1))
  return k + (k >= exclude)


def _offset(index: int, count: int) -> float:
  """Centred position of word `index` of `count` (0 for a lone word)."""
  return index - (count - 1) / 2.0


def format_openset(labels, style: str) -> str:
  """An openset CSV cell in one of the official list styles (configs/data.py)."""
  return style.format(items=", ".join(labels), items_nospace=",".join(labels),
                      items_quoted="', '".join(labels))


def describe(fields: Mapping[str, Any], styles: Styles, cfg: ml_collections.ConfigDict,
             subtitle_word: str, labels) -> str:
  """The reason text: colour (hue bins of 360 / len(color_names) degrees centred on 0), shape,
  speed / pitch / tempo (above or below the middle of their ranges), subtitle word, labels."""
  names = cfg.color_names
  color = names[int(((fields["hue"] + 180.0 / len(names)) % 360.0) // (360.0 / len(names)))]
  speed = cfg.speed_names[int(fields["speed"] > np.mean(cfg.speed_range))]
  pitch = cfg.pitch_names[int(fields["pitch"] > math.sqrt(np.prod(cfg.pitch_range)))]
  tempo = cfg.tempo_names[int(fields["tempo"] > np.mean(cfg.tempo_range))]
  words = (cfg.reason_words_template.format(word=subtitle_word) if subtitle_word
           else cfg.reason_no_words)
  return cfg.reason_template.format(
      color=color, shape=styles.shape[fields["video_cluster"]], speed=speed, pitch=pitch,
      tempo=tempo, words=words, labels=", ".join(labels))


def sample_clip(name: str, split: str, rng: np.random.Generator, vocab: Vocabulary,
                styles: Styles, cfg: ml_collections.ConfigDict) -> ClipSpec:
  """Draws one clip's emotions, cues and texts (no media yet)."""
  num = len(vocab.clusters)
  primary = int(rng.integers(num))
  group = vocab.words[primary]
  count = int(rng.integers(1, min(cfg.max_words_primary, len(group)) + 1))
  picked = [int(i) for i in rng.choice(len(group), count, replace=False)]
  emotions = [group[i] for i in picked]
  second = -1
  if rng.random() < cfg.second_cluster_prob:
    second = _other(rng, num, primary)
    emotions.append(str(rng.choice(vocab.words[second])))

  def cue(mislead_prob):
    if rng.random() < mislead_prob:
      cluster = _other(rng, num, primary)
      word = int(rng.integers(len(vocab.words[cluster])))
      return cluster, _offset(word, len(vocab.words[cluster]))
    return primary, _offset(picked[0], len(group))

  video_cluster, video_offset = cue(cfg.video_mislead_prob)
  audio_cluster, audio_offset = cue(cfg.audio_mislead_prob)
  hue = (styles.hue[video_cluster] + cfg.word_hue_offset * video_offset
         + rng.normal(0.0, cfg.hue_jitter)) % 360.0
  pitch = (styles.pitch[audio_cluster] * (1.0 + cfg.word_pitch_step * audio_offset)
           * (1.0 + rng.normal(0.0, cfg.pitch_jitter)))
  draw = rng.random()
  if draw < cfg.text_neutral_prob:
    subtitle_word = ""
    subtitle = str(rng.choice(cfg.neutral_templates))
  else:
    if draw < cfg.text_neutral_prob + cfg.text_mislead_prob:
      subtitle_word = str(rng.choice(vocab.words[_other(rng, num, primary)]))
    else:
      subtitle_word = str(rng.choice(emotions))
    subtitle = str(rng.choice(cfg.subtitle_templates)).format(word=subtitle_word)

  labels = list(emotions)
  if split == "train":
    if rng.random() < cfg.train_extra_prob:
      extra = str(rng.choice(vocab.words[styles.neighbour[primary]]))
      if extra not in labels:
        labels.append(extra)
    if rng.random() < cfg.train_swap_prob:
      swap = str(rng.choice(vocab.all_words))
      if swap not in labels:
        labels[int(rng.integers(len(labels)))] = swap
  fields = dict(
      hue=float(hue), video_cluster=video_cluster,
      radius=float(rng.uniform(*cfg.shape_radius_range)),
      speed=float(styles.speed[video_cluster]
                  * (1.0 + rng.uniform(-cfg.speed_jitter, cfg.speed_jitter))),
      direction=float(rng.uniform(0.0, 2.0 * math.pi)),
      start=(float(rng.uniform(*cfg.start_range)), float(rng.uniform(*cfg.start_range))),
      second_cluster=second,
      num_frames=int(rng.integers(cfg.num_frames_range[0], cfg.num_frames_range[1] + 1)),
      audio_cluster=audio_cluster, pitch=float(pitch),
      tempo=float(styles.tempo[audio_cluster]
                  * (1.0 + rng.uniform(-cfg.tempo_jitter, cfg.tempo_jitter))),
      duration=float(rng.uniform(*cfg.duration_range)),
      stereo=bool(rng.random() < cfg.stereo_prob),
      noise_seed=int(rng.integers(2**31)))
  reason = describe(fields, styles, cfg, subtitle_word, labels)
  style = str(rng.choice(cfg.openset_styles))
  return ClipSpec(name=name, emotions=tuple(emotions), labels=tuple(labels),
                  openset=format_openset(labels, style), subtitle=subtitle, reason=reason,
                  **fields)


def _hsv_to_bgr(hue: float, saturation: int, value: int) -> tuple[int, int, int]:
  pixel = np.array([[[int(round(hue / 2.0)) % 180, saturation, value]]], np.uint8)
  return tuple(int(v) for v in cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0])


def _draw_shape(frame: np.ndarray, shape: str, center, radius: float, color) -> None:
  x, y, r = int(round(center[0])), int(round(center[1])), max(int(round(radius)), 2)
  if shape == "circle":
    cv2.circle(frame, (x, y), r, color, -1)
  elif shape == "ring":
    cv2.circle(frame, (x, y), r, color, max(r // 3, 1))
  elif shape == "square":
    cv2.rectangle(frame, (x - r, y - r), (x + r, y + r), color, -1)
  elif shape == "cross":
    t = max(r // 3, 1)
    cv2.rectangle(frame, (x - r, y - t), (x + r, y + t), color, -1)
    cv2.rectangle(frame, (x - t, y - r), (x + t, y + r), color, -1)
  elif shape == "triangle":
    pts = np.array([(x, y - r), (x - r, y + r), (x + r, y + r)], np.int32)
    cv2.fillPoly(frame, [pts], color)
  elif shape == "diamond":
    pts = np.array([(x, y - r), (x - r, y), (x, y + r), (x + r, y)], np.int32)
    cv2.fillPoly(frame, [pts], color)
  else:
    raise ValueError(f"synthetic.shapes: unknown shape '{shape}'; known: circle, ring, square, "
                     f"cross, triangle, diamond.")


def render_frames(spec: ClipSpec, styles: Styles, cfg: ml_collections.ConfigDict) -> np.ndarray:
  """The clip's video.

  Returns:
    uint8[spec.num_frames, frame_size, frame_size, 3], BGR (OpenCV order, ready to write).
  """
  size = cfg.frame_size
  rng = np.random.default_rng([spec.noise_seed, 1])
  background = _hsv_to_bgr(spec.hue, cfg.saturation, cfg.value)
  foreground = _hsv_to_bgr((spec.hue + 180.0) % 360.0, cfg.saturation, cfg.value)
  radius = spec.radius * size
  dx, dy = spec.speed * math.cos(spec.direction), spec.speed * math.sin(spec.direction)
  lo, hi = radius, size - radius
  x, y = lo + spec.start[0] * (hi - lo), lo + spec.start[1] * (hi - lo)
  frames = np.empty((spec.num_frames, size, size, 3), np.uint8)
  for f in range(spec.num_frames):
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = background
    _draw_shape(frame, styles.shape[spec.video_cluster], (x, y), radius, foreground)
    if spec.second_cluster >= 0:
      color = _hsv_to_bgr(styles.hue[spec.second_cluster], cfg.saturation, cfg.value)
      _draw_shape(frame, styles.shape[spec.second_cluster], (size - x, size - y),
                  radius * cfg.second_shape_scale, color)
    noise = rng.normal(0.0, cfg.pixel_noise, frame.shape)
    frames[f] = np.clip(frame + noise, 0, 255).astype(np.uint8)
    x, y = x + dx, y + dy
    if not lo <= x <= hi:
      dx, x = -dx, min(max(x, lo), hi)
    if not lo <= y <= hi:
      dy, y = -dy, min(max(y, lo), hi)
  return frames


def render_audio(spec: ClipSpec, styles: Styles, cfg: ml_collections.ConfigDict) -> np.ndarray:
  """The clip's audio at cfg.wav_sample_rate.

  Returns:
    float32[T] (mono) or float32[T, 2] (stereo), peak cfg.peak.
  """
  rate = cfg.wav_sample_rate
  rng = np.random.default_rng([spec.noise_seed, 2])
  t = np.arange(int(round(spec.duration * rate))) / rate

  def tone(freq):
    return sum(np.sin(2 * np.pi * h * freq * t + rng.uniform(0, 2 * np.pi)) / h
               for h in range(1, cfg.num_harmonics + 1))

  envelope = 0.5 * (1.0 + np.sin(2 * np.pi * spec.tempo * t + rng.uniform(0, 2 * np.pi)))
  wave = envelope * tone(spec.pitch)
  if spec.second_cluster >= 0:
    wave = wave + cfg.second_tone_gain * tone(styles.pitch[spec.second_cluster])
  wave = wave + cfg.noise_gain * rng.normal(0.0, 1.0, t.shape)
  wave = cfg.peak * wave / max(np.abs(wave).max(), 1e-6)
  if spec.stereo:
    other = wave + cfg.noise_gain * rng.normal(0.0, 1.0, t.shape)
    wave = np.stack([wave, cfg.peak * other / max(np.abs(other).max(), 1e-6)], axis=1)
  return wave.astype(np.float32)


def _no_space(path: str) -> OSError:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _write_video(path: str, frames_bgr: np.ndarray, cfg: ml_collections.ConfigDict) -> None:
  """Writes and reads back the clip: OpenCV's writer reports no write errors (on a full disk it
  does not open, or leaves a file without its index), so a file that does not read back whole
  is an error: OSError(ENOSPC) when the disk has no room for the raw frames, else RuntimeError."""
  height, width = frames_bgr.shape[1:3]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*cfg.fourcc), cfg.fps, (width, height))
  if not writer.isOpened():
    if not diskspace.has_room(os.path.dirname(path), frames_bgr.nbytes):
      raise _no_space(path)
    raise RuntimeError(f"{path}: OpenCV cannot write fourcc '{cfg.fourcc}'; set "
                       f"synthetic.fourcc to one this OpenCV build supports (e.g. mp4v).")
  for frame in frames_bgr:
    writer.write(frame)
  writer.release()
  reader = cv2.VideoCapture(path)
  frames = int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) if reader.isOpened() else -1
  reader.release()
  if frames != len(frames_bgr):
    if not diskspace.has_room(os.path.dirname(path), frames_bgr.nbytes):
      raise _no_space(path)
    raise RuntimeError(f"{path}: OpenCV wrote a video that reads back with {frames} of "
                       f"{len(frames_bgr)} frames (fourcc '{cfg.fourcc}'); set synthetic.fourcc "
                       "to one this OpenCV build writes correctly (e.g. mp4v).")


def _write_audio(path: str, wave: np.ndarray, cfg: ml_collections.ConfigDict) -> None:
  """The wav is encoded in memory and written by Python, whose errors name the file and the
  cause (libsndfile writing to disk says only 'System error.')."""
  buffer = io.BytesIO()
  soundfile.write(buffer, wave, cfg.wav_sample_rate, subtype="PCM_16", format="WAV")
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


def _write_csv(path: str, header, rows) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def split_specs(split: str, vocab: Vocabulary, styles: Styles,
                cfg: ml_collections.ConfigDict) -> list[ClipSpec]:
  """All clips of one split; clip i draws from its own stream (seed, split, i)."""
  split_id = SPLITS.index(split)
  return [sample_clip(f"{split}_{i:05d}", split, np.random.default_rng([cfg.seed, 1 + split_id, i]),
                      vocab, styles, cfg)
          for i in range(int(cfg.splits[split]))]


def write_split(folder: str, specs: list[ClipSpec], styles: Styles,
                cfg: ml_collections.ConfigDict) -> None:
  """Renders and writes one split's media and CSVs into `folder`."""
  os.makedirs(os.path.join(folder, cfg.video_dir))
  os.makedirs(os.path.join(folder, cfg.audio_dir))
  for spec in specs:
    _write_video(os.path.join(folder, cfg.video_dir, spec.name + ".mp4"),
                 render_frames(spec, styles, cfg), cfg)
    _write_audio(os.path.join(folder, cfg.audio_dir, spec.name + ".wav"),
                 render_audio(spec, styles, cfg), cfg)
  _write_csv(os.path.join(folder, cfg.labels_file), ("name", "openset"),
             [(s.name, s.openset) for s in specs])
  _write_csv(os.path.join(folder, cfg.reasons_file), ("name", "reason"),
             [(s.name, s.reason) for s in specs])
  _write_csv(os.path.join(folder, cfg.subtitles_file), ("name", "english", "chinese"),
             [(s.name, s.subtitle, "") for s in specs])


def config_hash(cfg: ml_collections.ConfigDict) -> str:
  """Hash of the synthetic config, the wheel file's bytes and GENERATOR_VERSION."""
  with open(wheel_path(cfg), "rb") as f:
    wheel_bytes = f.read()
  blob = json.dumps(dict(cfg=cfg.to_dict(), version=GENERATOR_VERSION), sort_keys=True,
                    default=list).encode() + wheel_bytes
  return hashlib.sha256(blob).hexdigest()[:cfg.hash_length]


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of the synthetic config."""
  unknown = sorted(set(cfg.splits) - set(SPLITS))
  if unknown or any(int(n) < 0 for n in cfg.splits.values()):
    raise ValueError(f"synthetic.splits={dict(cfg.splits)}: keys must be among {SPLITS}, "
                     f"sizes >= 0.")
  for name in ("video_mislead_prob", "audio_mislead_prob", "text_mislead_prob",
               "text_neutral_prob", "second_cluster_prob", "train_extra_prob",
               "train_swap_prob", "stereo_prob"):
    if not 0.0 <= cfg[name] <= 1.0:
      raise ValueError(f"synthetic.{name}={cfg[name]}: must be a probability in [0, 1].")
  if cfg.text_mislead_prob + cfg.text_neutral_prob > 1.0:
    raise ValueError("synthetic.text_mislead_prob + text_neutral_prob must be <= 1.")
  if cfg.max_words_primary < 1 or cfg.num_frames_range[0] < 1:
    raise ValueError("synthetic.max_words_primary and num_frames_range[0] must be >= 1.")


def generate(folder: str, cfg: ml_collections.ConfigDict) -> dict:
  """Writes the whole dataset into `folder` (created; must not exist). Returns the manifest."""
  check_config(cfg)
  start = time.perf_counter()
  vocab = load_vocabulary(wheel_path(cfg), cfg.word_levels)
  styles = make_styles(len(vocab.clusters), cfg)
  os.makedirs(folder)
  counts = {}
  for split in SPLITS:
    specs = split_specs(split, vocab, styles, cfg) if split in cfg.splits else []
    write_split(os.path.join(folder, split), specs, styles, cfg)
    counts[split] = len(specs)
  manifest = dict(version=GENERATOR_VERSION, config_hash=config_hash(cfg), splits=counts,
                  files=dict(labels=cfg.labels_file, reasons=cfg.reasons_file,
                             subtitles=cfg.subtitles_file, video=cfg.video_dir,
                             audio=cfg.audio_dir),
                  seconds=round(time.perf_counter() - start, 3), config=cfg.to_dict())
  with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True, default=list)
  return manifest


def ensure_demo_data(root: str, cfg: ml_collections.ConfigDict) -> str:
  """The demo dataset's folder under `root`, generated on first use, then reused.

  The folder is `root/demo_<hash>` (hash of the config, the wheel file and the generator
  version), written to a temporary folder beside it and renamed into place, so a crash or a
  concurrent run never leaves a half-written dataset behind. A full disk raises one
  diskspace.DiskFullError naming `root`; the temporary folder is removed.

  Returns:
    The dataset folder (holding manifest.json and one folder per split).
  """
  path = os.path.join(root, f"demo_{config_hash(cfg)}")
  if os.path.isfile(os.path.join(path, MANIFEST)):
    return path
  os.makedirs(root, exist_ok=True)
  tmp = None
  try:
    tmp = tempfile.mkdtemp(prefix=f".tmp_demo_{config_hash(cfg)}_", dir=root)
    generate(os.path.join(tmp, "data"), cfg)
    try:
      os.rename(os.path.join(tmp, "data"), path)
    except OSError:
      if not os.path.isfile(os.path.join(path, MANIFEST)):   # not a concurrent winner
        raise
  except OSError as e:
    if not diskspace.is_disk_full(e):
      raise
    raise diskspace.DiskFullError(
        f"{root}: no space left on device while generating the demo data "
        f"({diskspace.first_line(diskspace.disk_full_cause(e))}); nothing was kept, and a "
        "rerun generates it afresh. Free space there, or generate it on another disk "
        "(config.data.cache_dir).") from e
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def read_split(path: str, split: str, cfg: ml_collections.ConfigDict) -> list[dict]:
  """Rows of one split of a generated dataset, in name order.

  Returns:
    [{name, openset, reason, english, chinese, video, audio}] with media paths absolute.
  """
  folder = os.path.join(path, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such split; splits are {SPLITS} "
                            f"(run ensure_demo_data first).")

  def table(name):
    with open(os.path.join(folder, name), newline="", encoding="utf-8") as f:
      return {row["name"]: row for row in csv.DictReader(f)}

  labels, reasons, subtitles = (table(cfg.labels_file), table(cfg.reasons_file),
                                table(cfg.subtitles_file))
  return [dict(name=name, openset=labels[name]["openset"], reason=reasons[name]["reason"],
               english=subtitles[name]["english"], chinese=subtitles[name]["chinese"],
               video=os.path.join(folder, cfg.video_dir, name + ".mp4"),
               audio=os.path.join(folder, cfg.audio_dir, name + ".wav"))
          for name in sorted(labels)]
