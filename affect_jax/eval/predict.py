"""What a model says about clips outside any dataset: the answer, its labels, their wheel groups.

  clips = [Clip(name, video, audio, subtitle)]  # or clips_from_folder(dir), clips_from_csv(f)
  results = predict(em, clips, ucfg, labeler, missing_audio="error")   # launch.predict
  write_predictions(path, results)              # name, openset: what launch.score --pred reads

Inputs (`launch.predict --inputs=`):
- a folder: every file directly in it whose suffix is a video one (mer.VIDEO_EXTENSIONS) is a
  clip named by its stem; its audio is <stem>.wav (or .flac / .ogg, mer.AUDIO_EXTENSIONS) and
  its subtitle the text of <stem>.txt (UTF-8, stripped), both beside it and optional. A file
  among them that resolves (symlinks followed) outside the folder is an `InputsError`.
- a CSV (UTF-8, header row): columns name and video, optionally audio and subtitle; one clip a
  row. video and audio are paths relative to the CSV's folder; a path that is absolute, leaves
  the folder through '..' or resolves (symlinks followed) outside it is an `InputsError`
  naming the row, and nothing is read. An empty audio cell: the clip has no audio file. The
  subtitle cell is the subtitle as it is ('' = a clip without speech); without a subtitle
  column (or a row too short to reach it) the clip's subtitle is missing.
A video whose suffix is .npy is OpenFace face crops (uint8[N, H, W, 3], as a dataset's
openface_face/<name>/<name>.npy), the visual input of configs whose data.prompt.video_prompt
is 'faces'; any other file is decoded as a video (frames).

Each clip as training and evaluation see one (affect_jax/data/pipeline.py load_media, the
config's data.media): frames sampled and resized, audio in K windows for HuBERT, both through
the frozen encoders, z-scored with the model's feature statistics; the prompt of
affect_jax/data/prompts.py for the question of evaluation (unibench.data_config); generation
with the sampling settings of config.unibench (unibench.sampling_config) and the official
answer cut (unibench.cut_response); labels by `unibench.Labeler`; each label's level-1 group
in each of the 5 wheels (`level1_groups`).

A clip without audio. The official pipeline reads each clip's audio from a wav extracted
beforehand (toolkit/utils/functions.py func_split_audio_from_video_16k: ffmpeg -ar 16000 -ac 1);
its inference (inference_sample.py; Chat.answer_sample in
my_affectgpt/conversation/conversation_video.py) then stops on a clip without one
("Some input info is missing") when the prompt holds the audio or the merged placeholder.
So, when data.prompt.modalities holds 'audio' or 'multi', a clip without an audio file fails
with a message naming it (`missing_audio='error'`, the default), or is given silence, a zero
waveform, when `missing_audio='silence'` (not what the official code does: the model never saw
silence in training). When the prompt holds neither, the audio is not read and silence stands
in. Audio is never decoded from inside a video file (OpenCV reads only the video stream); for
an mp4 / mov the message says whether the file holds an audio track to extract.

A clip that cannot be used (no audio where the prompt needs it, a video that does not decode,
a missing subtitle where the prompt has one, a subtitle holding a placeholder token, a prompt
longer than the largest prompt bucket) becomes a failed `Result` whose `error` names the clip
and the fix; the other clips go on.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
from typing import Sequence

import ml_collections
import numpy as np

from affect_jax import experiment
from affect_jax.data import media, pipeline
from affect_jax.data import prompts as prompts_lib
from affect_jax.data.builders import mer
from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import wheel as wheel_lib
from affect_jax.eval import heldout, unibench
from affect_jax.eval.model import EvalModel

FACE_SUFFIX = ".npy"
SUBTITLE_SUFFIX = ".txt"
CSV_COLUMNS = ("name", "video")            # required; audio and subtitle are optional
AUDIO_MODALITIES = ("audio", "multi")      # prompt blocks that carry the audio features
MISSING_AUDIO = ("error", "silence")


class InputsError(ValueError):
  """A clips folder or CSV that cannot be read as a whole; the message names the row."""


class ClipError(ValueError):
  """One clip that cannot be used; the message names the clip and the fix."""


@dataclasses.dataclass(frozen=True)
class Clip:
  name: str
  video: str                   # video file, or face crops (.npy)
  audio: str | None = None     # audio file; None: the clip has none
  subtitle: str | None = None  # None: missing
  where: str = ""              # where the clip was listed (for messages)


@dataclasses.dataclass
class Result:
  clip: Clip
  completion: str = ""
  cell: str = ""               # the labels as a launch.score cell
  labels: list = dataclasses.field(default_factory=list)
  groups: list = dataclasses.field(default_factory=list)   # per label, 5 level-1 groups
  notes: list = dataclasses.field(default_factory=list)    # e.g. audio replaced by silence
  error: str = ""

  @property
  def ok(self) -> bool:
    return not self.error

  def to_json(self) -> dict:
    out = {"name": self.clip.name, "video": self.clip.video, "audio": self.clip.audio,
           "subtitle": self.clip.subtitle}
    if self.error:
      return dict(out, error=self.error)
    return dict(out, completion=self.completion, openset=self.cell, labels=self.labels,
                level1_groups=[dict(zip(wheel_lib.LEVEL1, g)) for g in self.groups],
                notes=self.notes)


# ------------------------------------------------------------------------------------------
# Listing clips.


def _inside(root: str, path: str) -> bool:
  real = os.path.realpath(path)
  return os.path.commonpath([root, real]) == root


def clips_from_folder(folder: str | os.PathLike) -> list[Clip]:
  """The clips of a folder (module doc), in name order."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise InputsError(f"--inputs={folder}: no such folder or CSV file.")
  root = os.path.realpath(folder)
  suffixes = tuple(mer.VIDEO_EXTENSIONS) + (FACE_SUFFIX,)
  files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in suffixes
                 and os.path.isfile(os.path.join(folder, f)))
  clips, seen = [], {}
  for file in files:
    stem = os.path.splitext(file)[0]
    if stem in seen:
      raise InputsError(f"--inputs={folder}: {seen[stem]} and {file} are both clip '{stem}'; "
                        "keep one video per name.")
    seen[stem] = file
    audio = next((os.path.join(folder, stem + ext) for ext in mer.AUDIO_EXTENSIONS
                  if os.path.isfile(os.path.join(folder, stem + ext))), None)
    text = os.path.join(folder, stem + SUBTITLE_SUFFIX)
    text = text if os.path.isfile(text) else None
    for path in (os.path.join(folder, file), audio, text):
      if path is not None and not _inside(root, path):
        raise InputsError(f"--inputs={folder}: {os.path.basename(path)} is a link to "
                          f"{os.path.realpath(path)}, outside the folder; place the file in "
                          "the folder instead.")
    subtitle = None
    if text is not None:
      subtitle = pathlib.Path(text).read_text(encoding="utf-8", errors="replace").strip()
    clips.append(Clip(stem, os.path.join(folder, file), audio, subtitle, f"{folder}/{file}"))
  if not clips:
    raise InputsError(f"--inputs={folder}: no video file ({', '.join(suffixes)}) in the "
                      "folder.")
  return clips


def _relative(csv_path: str, root: str, row: int, column: str, cell: str) -> str:
  """The path of a CSV cell, relative to the CSV's folder; InputsError when it leads out."""
  where = f"{csv_path} row {row}, column {column}"
  if os.path.isabs(cell) or pathlib.PureWindowsPath(cell).drive:
    raise InputsError(f"{where}: '{cell}' is an absolute path; paths are relative to the "
                      f"CSV's folder {root} and must stay inside it.")
  path = os.path.join(os.path.dirname(csv_path), cell)
  if not _inside(root, path):
    raise InputsError(f"{where}: '{cell}' leads outside the CSV's folder {root} ('..' or a "
                      "symlink); place the media inside that folder.")
  return path


def clips_from_csv(path: str | os.PathLike) -> list[Clip]:
  """The clips of a CSV (module doc), in row order."""
  path = os.fspath(path)
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise InputsError(f"{path}: not a readable UTF-8 CSV ({e}).") from e
  if not rows:
    raise InputsError(f"{path}: empty; expected a header with the columns name,video "
                      "(and optionally audio, subtitle).")
  header = [h.strip() for h in rows[0]]
  missing = [c for c in CSV_COLUMNS if c not in header]
  if missing:
    raise InputsError(f"{path}: header {header} lacks the column(s) {missing}; expected "
                      "name,video[,audio][,subtitle].")
  col = {c: header.index(c) for c in ("name", "video", "audio", "subtitle") if c in header}
  root = os.path.realpath(os.path.dirname(path) or ".")
  clips, seen = [], {}
  for number, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    cell = lambda c: row[col[c]] if c in col and col[c] < len(row) else None
    name, video = (cell("name") or "").strip(), (cell("video") or "").strip()
    if not name or not video:
      raise InputsError(f"{path} row {number}: name and video must not be empty.")
    if name in seen:
      raise InputsError(f"{path} row {number}: clip name '{name}' repeats row {seen[name]}.")
    seen[name] = number
    audio = (cell("audio") or "").strip()
    clips.append(Clip(name, _relative(path, root, number, "video", video),
                      _relative(path, root, number, "audio", audio) if audio else None,
                      cell("subtitle"), f"{path} row {number}"))
  if not clips:
    raise InputsError(f"{path}: no rows under the header; list one clip a row.")
  return clips


def clips_from_inputs(inputs: str) -> list[Clip]:
  """--inputs: a CSV file or a folder."""
  if os.path.isfile(inputs):
    return clips_from_csv(inputs)
  return clips_from_folder(inputs)


# ------------------------------------------------------------------------------------------
# One clip -> model inputs.


def needs_audio(prompt_cfg: ml_collections.ConfigDict) -> bool:
  return any(m in prompt_cfg.modalities for m in AUDIO_MODALITIES)


def _label(clip: Clip) -> str:
  """How messages name a clip: its name, and where it was listed (a CSV row, a folder file)."""
  return f"clip '{clip.name}'" + (f" ({clip.where})" if clip.where else "")


def no_audio_message(clip: Clip) -> str:
  """Why a clip without an audio file cannot be predicted, and the fixes."""
  track = media.has_audio_track(clip.video) if os.path.isfile(clip.video) else None
  if track:
    why = ("no audio file was given and the video's own audio track is not decoded here; "
           f"extract it (ffmpeg -i {clip.video} -vn -ac 1 -ar 16000 {clip.name}.wav) and ")
  else:
    why = ("it has no audio: " + ("the video holds no audio track and " if track is False
                                  else "") + "no audio file was given; ")
  return (f"{_label(clip)}: {why}the model's prompt has audio (data.prompt.modalities), "
          "so give one (--audio, the CSV's audio column or <name>.wav beside the video), or "
          "pass --missing_audio=silence to feed silence instead.")


def clip_media(clip: Clip, dc: ml_collections.ConfigDict, missing_audio: str
               ) -> tuple[dict, list]:
  """({'frames': float32[F, S, S, 3], 'windows': float32[K, W]}, notes) of one clip, as
  pipeline.load_media prepares a dataset's clip; raises ClipError (module doc)."""
  if missing_audio not in MISSING_AUDIO:
    raise ValueError(f"--missing_audio={missing_audio}: expected one of {MISSING_AUDIO}.")
  m, notes = dc.media, []
  faces = clip.video.lower().endswith(FACE_SUFFIX)
  source = "faces" if faces else "frames"
  if source != dc.prompt.video_prompt:
    raise ClipError(f"{_label(clip)}: {clip.video} is {source} but the config's prompt "
                    f"names {dc.prompt.video_prompt} (data.prompt.video_prompt); pass "
                    + ("face crops (.npy)" if dc.prompt.video_prompt == "faces" else
                       "a video file") + f" or --config.data.prompt.video_prompt={source}.")
  try:
    if faces:
      frames = media.sample_face_crops(clip.video, m.num_frames, m.image_size,
                                       m.frame_sampling, m.face_channel_order, m.face_resize)
    else:
      frames = media.sample_video_frames(clip.video, m.num_frames, m.image_size,
                                         m.frame_sampling, m.frame_resize)
    window = int(round(m.window_seconds * m.sample_rate))
    if clip.audio is not None and needs_audio(dc.prompt):
      wave = media.read_audio(clip.audio, m.sample_rate)
    elif needs_audio(dc.prompt) and missing_audio == "error":
      raise ClipError(no_audio_message(clip))
    else:
      wave = np.zeros(window, np.float32)
      if needs_audio(dc.prompt):
        notes.append("no audio: silence fed instead (--missing_audio=silence)")
  except media.MediaError as e:
    raise ClipError(f"{_label(clip)}: {e}") from e
  out = pipeline.load_media({"name": clip.name, "frames": frames, "audio": wave}, m,
                            {"visual_source": source})
  return out, notes


def clip_prompt(clip: Clip, tokenizer, dc: ml_collections.ConfigDict) -> list[int]:
  """The evaluation prompt's ids of one clip (prompts.encode_prompt); raises ClipError."""
  specials = dict(dc.tokenizer.special_tokens)
  subtitle = clip.subtitle
  if "subtitle" in dc.prompt.modalities:
    if subtitle is None:
      raise ClipError(f"{_label(clip)}: no subtitle; the model's prompt has one "
                      "(data.prompt.modalities). Give it (--subtitle=TEXT, the CSV's subtitle "
                      "column or <name>.txt beside the video); an empty one (--subtitle=) "
                      "marks a clip without speech.")
    inside = sorted({t for t in specials.values() if t and t in subtitle})
    if inside:
      raise ClipError(f"{_label(clip)}: the subtitle holds the tokenizer's special "
                      f"token(s) {inside}; remove them from the text.")
  ids = prompts_lib.encode_prompt(tokenizer, subtitle or "", dc.prompt, specials)
  longest = max(dc.prompt.prompt_buckets)
  if len(ids) > longest:
    raise ClipError(f"{_label(clip)}: its prompt has {len(ids)} tokens, more than the "
                    f"largest prompt bucket {longest} (data.prompt.prompt_buckets); shorten "
                    "the subtitle or add a larger bucket.")
  return ids


# ------------------------------------------------------------------------------------------
# Labels -> wheel groups.


def level1_groups(label: str, tables: wheel_lib.EwTables) -> tuple[str, ...]:
  """The level-1 group of `label` in each of the 5 wheels ('' where the wheel lacks it), as
  the metric maps it (wheel.map_label through the compiled tables)."""
  i = tables.surface_ids().get(label.lower().strip(), -1)
  out = []
  for variant in wheel_lib.LEVEL1:
    v = tables.variant_index(variant)
    c = int(tables.clusters[i, v]) if i >= 0 else -1
    out.append(tables.cluster_names[v][c] if c >= 0 else "")
  return tuple(out)


# ------------------------------------------------------------------------------------------
# Clips -> results.


def predict(em: EvalModel, clips: Sequence[Clip], ucfg: ml_collections.ConfigDict,
            labeler: unibench.Labeler, missing_audio: str = "error") -> list[Result]:
  """One Result per clip, in order (module doc); ucfg: the unibench section (with_protocol's
  and the decoding overrides applied), its batch_size and seed drive generation."""
  dc = unibench.data_config(em.config.data, ucfg)
  results = [Result(clip) for clip in clips]
  ready = []         # (result, prompt ids, video features, audio features)
  for r in results:
    try:
      ids = clip_prompt(r.clip, em.tokenizer, dc)
      inputs, r.notes = clip_media(r.clip, dc, missing_audio)
    except ClipError as e:
      r.error = str(e)
      continue
    video = np.asarray(em.video_fn(inputs["frames"][None]), np.float32)
    audio = np.asarray(em.audio_fn(inputs["windows"][None]), np.float32)
    video, audio = experiment.standardize(video, audio, em.feature_stats)
    ready.append((r, ids, video[0], audio[0]))
  if not ready:
    return results
  size = int(ucfg.batch_size)
  pad = int(em.tokenizer.convert_tokens_to_ids(dc.tokenizer.special_tokens["pad"]))
  batches = []
  for start in range(0, len(ready), size):
    chunk = ready[start:start + size]
    tokens, mask = prompts_lib.prompt_batch([c[1] for c in chunk], dc.prompt, pad)
    batches.append({"prompt_tokens": tokens, "prompt_mask": mask,
                    "video": np.stack([c[2] for c in chunk]),
                    "audio": np.stack([c[3] for c in chunk])})
  generate_fn = heldout.make_generate(em.model, unibench.sampling_config(em, ucfg))
  texts = heldout.generate(em.params, generate_fn, batches, em.tokenizer, size,
                           seed=int(ucfg.seed))
  completions = [unibench.cut_response(t, ucfg) for t in texts]
  cells = labeler.cells(completions)
  for (r, *_), text, cell in zip(ready, completions, cells):
    r.completion, r.cell = text, cell
    r.labels = labels_lib.parse_labels(cell)
    r.groups = [level1_groups(label, labeler.tables) for label in r.labels]
  return results


def write_predictions(path: str | os.PathLike, results: Sequence[Result]) -> int:
  """name, openset of every clip that was predicted (failed ones are left out: an empty cell
  would read as the model predicting no emotion); returns the number of rows."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = [(r.clip.name, r.cell) for r in results if r.ok]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(("name", "openset"))
    writer.writerows(rows)
  return len(rows)


def write_json(path: str | os.PathLike, results: Sequence[Result]) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps([r.to_json() for r in results], indent=1, ensure_ascii=False)
                  + "\n", encoding="utf-8")


def describe(result: Result) -> str:
  """The lines launch.predict prints for one clip."""
  c = result.clip
  head = f"== {c.name} ({c.video}; audio: {c.audio or 'none'})"
  if not result.ok:
    return f"{head}\nerror: {result.error}"
  lines = [head, f"answer: {result.completion}",
           f"labels: {', '.join(result.labels) if result.labels else '(none)'}"]
  for label, groups in zip(result.labels, result.groups):
    named = [f"{w.split('_')[0]}={g}" for w, g in zip(wheel_lib.LEVEL1, groups) if g]
    lines.append(f"  {label}: {', '.join(named) if named else 'in no wheel'}")
  lines += [f"note: {n}" for n in result.notes]
  return "\n".join(lines)
