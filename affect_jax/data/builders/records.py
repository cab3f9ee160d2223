"""Rows of the official tables, validated and joined; media located and decoded for storage.

Shared by the dataset builders (mer.py). Every bad row is skipped, counted and named, never
fatal: `Skip(file, row, name, reason, detail)`, logged with absl logging.warning as
"FILE row N (name 'X'): skipped (reason): detail". Row numbers are spreadsheet rows of the CSV
(the header is row 1; a quoted cell spanning lines still counts as one row), or the 1-based
position of an entry in an .npz corpus.

Skip reasons (REASONS):
  empty_name      the name cell is empty
  duplicate_name  the name occurs again in the same table (the first row is kept)
  non_utf8        a cell of the row is not valid UTF-8
  extra_cells     the row has non-empty cells beyond the header's columns (cells of no column)
  missing_cells   the row ends before a column the builder needs (unlike an EMPTY openset
                  cell, which is a valid label: neutral)
  bad_label       a basic label that is empty, an int id outside the dataset's id table
                  (label_ids.py NPZ_LABELS, named in the detail), a valence that is not a
                  finite number, an .npz entry that is not a dict
  bad_name        a name whose session digit is unreadable, for a dataset split by session
                  (label_ids.py SESSION_SPLITS: IEMOCAP); counted in every split built
  missing_subtitle the name has no (readable) row in the subtitle table
  missing_media   no video / face / audio file for the name
  corrupt_media   the file exists but cannot be decoded (media.MediaError)
  oversize_cell   a cell longer than builder.max_cell_chars characters (the rest of the table
                  is still read)
  outside_data_dir the name is a path (holds a separator, is '.' / '..' or absolute), or its
                  media file resolves (symlinks followed) outside the dataset folder: never read
  too_long        prompt + target exceed prompt.max_length tokens (found by the SFT input
                  pipeline, pipeline.drop_too_long, not by the builder)
A table without a needed column is a whole-file error naming the columns it has; unknown
columns are ignored with one warning per file.

Labels: openset cells are parsed by the official rule (affect_jax/emotion/labels.py
`parse_labels`: strip one "[" and one "]", split on commas and quotes, strip, drop empties,
lowercase); an empty cell gives [] = neutral.

Stored media (`load_media`, the builder's 'raw' mode), chosen to keep files small and exact:
  frames: uint8[F, S, S, 3]: the F sampled frames (or face crops) resized to S x S
          (media.sample_video_frames / sample_face_crops), BEFORE normalisation (1 byte a
          value instead of 4). The pipeline's media.normalize_images gives exactly
          media.read_video_frames / read_face_crops.
  audio:  float32[T]: the whole clip, mono, resampled to media.sample_rate; the K windows
          are cut at load time (media.audio_windows), so T = duration * rate values instead
          of K * W (16 s of windows by default), and the window settings can change later.
'paths' mode stores the absolute media paths only and decodes them in the input pipeline.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import numpy as np

from affect_jax.data import media
from affect_jax import safe_pickle
from affect_jax.data.builders import label_ids


def parse_labels_fallback(cell) -> list[str]:
  """The official list rule (strip one "[" and "]", split on , ' ", strip, drop empties,
  lowercase), for checkouts without affect_jax/emotion/labels.py."""
  text = "" if cell is None else str(cell)
  text = text[1:] if text[:1] == "[" else text
  text = text[:-1] if text[-1:] == "]" else text
  return [w.strip().lower() for w in re.split("['\",]", text) if w.strip()]


try:
  from affect_jax.emotion.labels import parse_labels
except ImportError:
  parse_labels = parse_labels_fallback


REASONS = ("empty_name", "duplicate_name", "non_utf8", "extra_cells", "missing_cells",
           "bad_label", "bad_name", "missing_subtitle", "missing_media", "corrupt_media",
           "too_long", "outside_data_dir", "oversize_cell")
TASKS = ("ov", "hit", "sentiment")
MAX_CELL_CHARS = 131_072   # longest cell by default (csv's own limit); builder.max_cell_chars
_CSV_NO_LIMIT = 2**31 - 1   # the largest limit csv accepts on every platform (a C long)
NAME_SHOWN = 80            # characters of an oversize row's name shown in its skip message
MEDIA_MODES = ("raw", "paths")
VISUAL_SOURCES = ("frames", "faces")


@dataclasses.dataclass(frozen=True)
class Skip:
  """One skipped row: where it is, which clip, why."""
  file: str
  row: int
  name: str
  reason: str
  detail: str

  def message(self) -> str:
    return (f"{self.file} row {self.row} (name {self.name!r}): skipped ({self.reason}): "
            f"{self.detail}")


def log_skip(skip: Skip) -> Skip:
  logging.warning("%s", skip.message())
  return skip


@dataclasses.dataclass(frozen=True)
class Table:
  """A keyed table: name -> (row number, {column: cell or None when the row is short})."""
  path: str
  columns: tuple[str, ...]
  rows: Mapping[str, tuple[int, Mapping[str, str | None]]]
  skipped: tuple[Skip, ...]


@dataclasses.dataclass(frozen=True)
class Row:
  """One clip's labels and texts (media not yet read)."""
  name: str
  file: str          # the label table it comes from
  row: int
  subtitle: str
  labels: tuple[str, ...]   # open-set labels, lowercase; () = neutral
  reason: str = ""
  basic_label: str = ""     # MER/MELD/IEMOCAP class word, '' when absent
  valence: float = float("nan")   # sentiment datasets, NaN when absent
  task: str = "ov"


def _has_bad_bytes(text: str) -> bool:
  """True when text (decoded with surrogateescape) held bytes that are not UTF-8."""
  return any("\udc80" <= ch <= "\udcff" for ch in text)


@contextlib.contextmanager
def _csv_cells_unlimited():
  """csv's per-cell limit lifted while reading (csv.Error otherwise aborts the whole table at
  its default of 131,072 characters; the table is in memory already, so a long cell costs
  nothing more); restored afterwards. Long cells are then skipped row by row."""
  old = csv.field_size_limit()
  csv.field_size_limit(_CSV_NO_LIMIT)
  try:
    yield
  finally:
    csv.field_size_limit(old)


def read_csv_table(path: str, required: Sequence[str], optional: Sequence[str] = (),
                   key: str = "name", unused: Sequence[str] = (),
                   max_cell_chars: int = MAX_CELL_CHARS) -> Table:
  """Reads a CSV keyed by `key`, row by row (module doc for what is skipped).

  Args:
    path: the CSV file (UTF-8, optional BOM).
    required: columns the builder needs (besides `key`); missing -> ValueError naming them.
    optional: columns read when present.
    unused: known columns that are not read (no unknown-column warning, no UTF-8 check).
    max_cell_chars: a row with a longer cell is skipped (oversize_cell).
  Returns:
    Table with rows in file order.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such table.")
  with open(path, "rb") as f:
    raw = f.read()
  if raw.startswith(b"\xef\xbb\xbf"):
    raw = raw[3:]
  with _csv_cells_unlimited():
    reader = iter(list(csv.reader(io.StringIO(raw.decode("utf-8", errors="surrogateescape"),
                                              newline=""))))
  header = next(reader, None)
  if not header:
    raise ValueError(f"{path}: empty file; expected a header row with {key}, "
                     f"{', '.join(required)}.")
  header = [h.strip() for h in header]
  if any(_has_bad_bytes(h) for h in header):
    raise ValueError(f"{path}: the header is not UTF-8; re-save the file as UTF-8.")
  missing = [c for c in (key, *required) if c not in header]
  if missing:
    raise ValueError(f"{path}: no column {missing}; the header is {header}; expected "
                     f"{[key, *required]} (optional {list(optional)}). Check that this is "
                     f"the right file for the --dataset layout.")
  unknown = [c for c in header if c not in (key, *required, *optional, *unused)]
  if unknown:
    logging.warning("%s: ignoring unknown columns %s.", path, unknown)
  index = {c: header.index(c) for c in (key, *required, *optional) if c in header}
  rows, skipped = {}, []
  for number, cells in enumerate(reader, start=2):
    if not cells or all(not c.strip() for c in cells):
      continue
    name = cells[index[key]].strip() if len(cells) > index[key] else ""
    oversize = [(c, len(cells[i])) for c, i in index.items()
                if i < len(cells) and len(cells[i]) > max_cell_chars]
    if oversize:
      name = name[:NAME_SHOWN] + ("..." if len(name) > NAME_SHOWN else "")

    def skip(reason, detail, name=name, number=number):
      skipped.append(log_skip(Skip(path, number, name, reason, detail)))

    if oversize:
      column, n = oversize[0]
      skip("oversize_cell", f"column {column!r} has {n:,} characters, over the limit of "
                            f"{max_cell_chars:,} (builder.max_cell_chars)")
      continue

    if _has_bad_bytes(name):
      skip("non_utf8", f"the {key} cell is not UTF-8")
      continue
    if not name:
      skip("empty_name", f"the {key} cell is empty")
      continue
    extra = [c for c in cells[len(header):] if c.strip()]
    if extra:
      skip("extra_cells", f"{len(cells)} cells for {len(header)} columns {header}; "
                          f"the extra cells belong to no column")
      continue
    bad = [c for c, i in index.items() if i < len(cells) and _has_bad_bytes(cells[i])]
    if bad:
      skip("non_utf8", f"column(s) {bad} are not UTF-8")
      continue
    short = [c for c in required if index[c] >= len(cells)]
    if short:
      skip("missing_cells", f"the row ends before column(s) {short}")
      continue
    if name in rows:
      skip("duplicate_name", f"{key} already on row {rows[name][0]}; that row is kept")
      continue
    rows[name] = (number, {c: (cells[i] if i < len(cells) else None) for c, i in index.items()})
  return Table(path, tuple(header), rows, tuple(skipped))


def first_existing(folder: str, candidates: Sequence[str]) -> str | None:
  """The first of `candidates` (file names) that exists in folder, as a path."""
  for c in candidates:
    if os.path.isfile(os.path.join(folder, c)):
      return os.path.join(folder, c)
  return None


def text_column(table: Table, candidates: Sequence[str]) -> str:
  """The first of `candidates` that is a column of the table."""
  for c in candidates:
    if c in table.columns:
      return c
  raise ValueError(f"{table.path}: none of the text columns {list(candidates)}; the header is "
                   f"{list(table.columns)}.")


def read_subtitles(path: str, columns: Sequence[str], unused: Sequence[str] = ("chinese",),
                   max_cell_chars: int = MAX_CELL_CHARS) -> Table:
  """A subtitle table: name + the first of `columns` present (e.g. english, sentence)."""
  with open(path, "rb") as f:
    head = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
  header = [h.strip() for h in next(csv.reader([head]), [])]
  column = next((c for c in columns if c in header), None)
  if column is None:
    raise ValueError(f"{path}: no subtitle column among {list(columns)}; the header is "
                     f"{header}.")
  return read_csv_table(path, (column,), unused=[c for c in (*columns, *unused) if c != column],
                        max_cell_chars=max_cell_chars)


def openset_rows(labels: Table, subtitles: Table | None, subtitle_column: str,
                 reasons: Table | None, reason_column: str) -> tuple[list[Row], list[Skip]]:
  """Joins an open-set label table with the subtitle and reason tables.

  An empty openset cell is neutral (labels ()); a reason row may be absent (reason '');
  a subtitle row must be present when a subtitle table is (missing_subtitle otherwise).
  """
  rows, skipped = [], []
  for name, (number, cells) in labels.rows.items():
    if subtitles is not None and name not in subtitles.rows:
      skipped.append(log_skip(Skip(labels.path, number, name, "missing_subtitle",
                                   f"no usable row for it in {subtitles.path}")))
      continue
    subtitle = (subtitles.rows[name][1][subtitle_column] or "") if subtitles is not None else ""
    reason = ""
    if reasons is not None and name in reasons.rows:
      reason = reasons.rows[name][1][reason_column] or ""
    rows.append(Row(name=name, file=labels.path, row=number, subtitle=subtitle.strip(),
                    labels=tuple(parse_labels(cells["openset"])), reason=reason.strip(),
                    task="ov"))
  return rows, skipped


def corpus_names(path: str) -> list[str]:
  """The corpora ('train_corpus', ...) of an official label .npz."""
  return sorted(k for k in safe_pickle.load_label_npz(path) if k.endswith("_corpus"))


def _basic_label(emo: Any, ids: label_ids.NpzLabels, dataset: str) -> tuple[str | None, str]:
  """An 'emo' entry -> (class word, '') or (None, why it is unusable)."""
  if isinstance(emo, (bool, np.bool_)):
    return None, f"'emo' is {emo!r}; expected a class word or an id"
  if isinstance(emo, (int, np.integer)):
    word = ids.word(int(emo))
    if word is None:
      return None, f"'emo' id {int(emo)} is outside {ids.describe(dataset)}"
    return word, ""
  if isinstance(emo, bytes):
    emo = emo.decode("utf-8", errors="replace")
  if isinstance(emo, (str, np.str_)) and str(emo).strip():
    return str(emo).strip().lower(), ""
  return None, f"'emo' is {emo!r}; expected a class word or an id of {ids.describe(dataset)}"


def npz_rows(path: str, corpus: str, task: str, subtitles: Table | None,
             subtitle_column: str, dataset: str = "", split: str = ""
             ) -> tuple[list[Row], list[Skip]]:
  """Rows of one corpus of an official label .npz ({name: {'emo': str|int, 'val': float}}).

  task 'hit' needs 'emo' (a class word, or an id of the dataset's row in label_ids.NPZ_LABELS),
  'sentiment' needs 'val'; the other key is kept when present. A hit row's open-set labels are
  (its class word,). For a dataset in label_ids.SESSION_SPLITS, only the clips of `split`'s
  sessions are read (the others belong to the other split); a name without a valid session
  digit is skipped as bad_name.
  """
  if task not in ("hit", "sentiment"):
    raise ValueError(f"npz_rows: task '{task}'; expected 'hit' or 'sentiment'.")
  ids = label_ids.NPZ_LABELS.get(dataset, label_ids.NpzLabels("emo", (), "no table"))
  by_session = label_ids.SESSION_SPLITS.get(dataset)
  if by_session is not None and split not in by_session.split_names():
    raise ValueError(f"{path}: no split '{split}' for {dataset}; its splits come from the "
                     f"clip names' sessions: {list(by_session.split_names())} "
                     f"({by_session.source}).")
  data = safe_pickle.load_label_npz(path)
  if corpus not in data:
    raise ValueError(f"{path}: no corpus '{corpus}'; it has {sorted(data)}. Choose the split "
                     f"with --split (e.g. --split=test for test_corpus / test1_corpus).")
  entries = data[corpus]
  if not isinstance(entries, Mapping):
    raise ValueError(f"{path}: '{corpus}' is a {type(entries).__name__}, not a dict of "
                     f"{{name: {{'emo': ..., 'val': ...}}}}.")
  rows, skipped = [], []
  where = f"{path}:{corpus}"
  for number, (name, entry) in enumerate(entries.items(), start=1):
    name = str(name).strip()

    def skip(reason, detail, name=name, number=number):
      skipped.append(log_skip(Skip(where, number, name, reason, detail)))

    if not name:
      skip("empty_name", "the entry's name is empty")
      continue
    if by_session is not None:
      session = by_session.session(name)
      if session is None:
        skip("bad_name", f"no session digit {list(by_session.sessions)} at position "
                         f"{by_session.position} of the name, so it is in no split "
                         f"({by_session.source})")
        continue
      if session not in by_session.sessions_of(split):
        continue
    if not isinstance(entry, Mapping):
      skip("bad_label", f"entry is a {type(entry).__name__}, expected a dict")
      continue
    basic, why = _basic_label(entry["emo"], ids, dataset) if "emo" in entry else (
        None, "no 'emo' key")
    valence = float("nan")
    if "val" in entry:
      try:
        valence = float(entry["val"])
      except (TypeError, ValueError):
        valence = float("nan")
    if task == "hit" and basic is None:
      skip("bad_label", why)
      continue
    if task == "sentiment" and not math.isfinite(valence):
      skip("bad_label", f"'val' is {entry.get('val', '(absent)')!r}; expected a finite number")
      continue
    if subtitles is not None and name not in subtitles.rows:
      skip("missing_subtitle", f"no usable row for it in {subtitles.path}")
      continue
    subtitle = (subtitles.rows[name][1][subtitle_column] or "") if subtitles is not None else ""
    rows.append(Row(name=name, file=where, row=number, subtitle=subtitle.strip(),
                    labels=(basic,) if basic else (), basic_label=basic or "",
                    valence=valence, task=task))
  return rows, skipped


class OutsideDataDir(ValueError):
  """A clip name that would make a media path leave the dataset folder (module doc)."""


def _is_plain_name(name: str) -> bool:
  seps = {os.sep, "/", "\\"} | ({os.altsep} if os.altsep else set())
  return (bool(name) and name not in (".", "..") and not any(c in name for c in seps)
          and "\0" not in name and not os.path.isabs(name))


def find_media(folder: str, name: str, dirs: Sequence[str], extensions: Sequence[str],
               nested: bool = False) -> str | None:
  """The first `folder/dir/name.ext` (or `folder/dir/name/name.ext` when nested) that exists,
  as its resolved path (symlinks followed).

  Raises OutsideDataDir when `name` is not a plain file name, or when the file it finds
  resolves outside `folder` (a symlink that points out of the dataset): such a file is never
  returned, so it is never read.
  """
  if not _is_plain_name(name):
    raise OutsideDataDir(f"the name {name!r} is a path, not a clip name; media are looked up "
                         f"only inside {folder}")
  root = os.path.realpath(folder)
  for d in dirs:
    for ext in extensions:
      candidates = [os.path.join(folder, d, name + ext)]
      if nested:
        candidates.insert(0, os.path.join(folder, d, name, name + ext))
      for c in candidates:
        if os.path.isfile(c):
          real = os.path.realpath(c)
          if os.path.commonpath([root, real]) != root:
            raise OutsideDataDir(f"{c} resolves to {real}, outside the dataset folder {root}; "
                                 "place the media inside the folder instead of linking out")
          return real
  return None


@dataclasses.dataclass(frozen=True)
class MediaSettings:
  """What the builder decodes (from configs/data.py `media` and the builder settings)."""
  mode: str = "raw"               # 'raw' | 'paths'
  visual_source: str = "frames"   # 'frames' (video/) | 'faces' (openface_face/)
  num_frames: int = 8
  image_size: int = 224
  frame_sampling: str = "official"
  frame_resize: str = "pil_bilinear"
  face_resize: str = "cv2_linear"
  face_channel_order: str = "rgb"
  sample_rate: int = 16000
  validate: str = "decode"        # paths mode: 'decode' each file once, or only check 'exists'

  def __post_init__(self):
    if self.mode not in MEDIA_MODES:
      raise ValueError(f"media mode '{self.mode}': expected one of {MEDIA_MODES}.")
    if self.visual_source not in VISUAL_SOURCES:
      raise ValueError(f"visual_source '{self.visual_source}': expected one of "
                       f"{VISUAL_SOURCES}.")
    for field in ("frame_resize", "face_resize"):
      if getattr(self, field) not in media.RESIZE_METHODS:
        raise ValueError(f"{field} '{getattr(self, field)}': expected one of "
                         f"{media.RESIZE_METHODS}.")
    if self.validate not in ("decode", "exists"):
      raise ValueError(f"validate '{self.validate}': expected 'decode' or 'exists'.")


def decode_visual(path: str, s: MediaSettings) -> np.ndarray:
  """Sampled frames or face crops resized to S x S, not normalised: uint8[F, S, S, 3]."""
  if s.visual_source == "faces":
    return media.sample_face_crops(path, s.num_frames, s.image_size, s.frame_sampling,
                                   s.face_channel_order, s.face_resize)
  return media.sample_video_frames(path, s.num_frames, s.image_size, s.frame_sampling,
                                   s.frame_resize)


def load_media(visual_path: str, audio_path: str, s: MediaSettings) -> dict[str, Any]:
  """The stored media fields of one clip (module doc). Raises media.MediaError."""
  if s.mode == "paths":
    if s.validate == "decode":
      decode_visual(visual_path, s)
      media.read_audio(audio_path, s.sample_rate)
    return {"visual_path": visual_path, "audio_path": audio_path}
  return {"frames": decode_visual(visual_path, s),
          "audio": media.read_audio(audio_path, s.sample_rate)}


def load_media_safe(args: tuple[str, str, MediaSettings]) -> tuple[str, Any]:
  """load_media for a worker process: ('ok', fields) or ('error', (path, message))."""
  try:
    return "ok", load_media(*args)
  except media.MediaError as e:
    return "error", (e.path, str(e))


def count_reasons(skips: Iterable[Skip]) -> dict[str, int]:
  out: dict[str, int] = {}
  for s in skips:
    out[s.reason] = out.get(s.reason, 0) + 1
  return dict(sorted(out.items()))
