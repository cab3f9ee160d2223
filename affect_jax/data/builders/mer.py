"""TFDS builders for the official emotion datasets, written as array_record (no TensorFlow).

Input: a folder in one of the official layouts (PAPER_NOTES.md section 6), chosen by
`dataset` (the --dataset flag of launch/prepare.py):
  demo            the synthetic set (configs/data.py `synthetic` file names), splits = folders
  mercaptionplus  track2_train_mercaptionplus.csv (name, openset), track3_... (name, reason)
  ovmerd          track2_train_ovmerd.csv, track3_train_ovmerd.csv
  ovmerdplus      ovlabel.csv (name, openset), subtitle_eng.csv (name, sentence)
  mer2025ov       track2_test.csv (name, openset) in the MER2025 release folder
  unibench:NAME   MER-UniBench: mer2023 / mer2024 (label-6way.npz), iemocapfour
                  (label_4way.npz, ids), meld (label.npz, ids), cmumosi / cmumosei / sims /
                  simsv2 (label.npz, valence), ovmerdplus (as above); label_ids.py holds each
                  .npz's id order and the official reader it follows
plus subtitles (subtitle_chieng.csv `english`, subtitle_eng.csv `sentence`, or the
transcription-*.csv files of MER-UniBench: `english`, but `chinese` for MER2024, as the
official readers; Layout.subtitle_columns, builder.subtitle_column overrides), media in video/
(or subvideo*, video_new), audio/ (or subaudio/), openface_face/<name>/<name>.npy
(visual_source 'faces'; a dataset without that folder is built from its videos,
`faces_or_frames`). A folder that holds the label file is one split (named by --split, default
'train'); otherwise each sub-folder holding it is a split (the demo's train / rl / test). For
.npz labels the splits are the corpora (train_corpus -> 'train', test1_corpus -> 'test1', ...;
'test' also finds test1_corpus), except IEMOCAP: its whole_corpus splits by the session in each
name (label_ids.SESSION_SPLITS: 'test' = session 5, 'train' = sessions 1-4).

Output: OUT/<builder>/<config>/1.0.0/ (TFDS layout: dataset_info.json, features.json,
metadata.json, <builder>-<split>.array_record-*), plus report.json (rows kept / skipped with
reasons, see records.py; skipped rows of the subtitle / reason tables listed apart).
<config> = <dataset>_<media>_<hash of the build settings and the tables' sizes and times>,
so a change of settings or labels builds anew; media edits do not change the hash (use
overwrite=True).

Stored example (every dataset; records.py module doc for the media choice):
  name: str, subtitle: str (the official reader's column), labels: list[str] (open-set,
  lowercase; [] = neutral; a basic-label dataset stores [its class word]), reason: str
  ('' when absent), basic_label: str ('' when absent), valence: float32 (NaN when absent),
  task: 'ov' | 'hit' | 'sentiment';
  media 'raw':   frames uint8[F, S, S, 3], audio float32[T] (mono, media.sample_rate)
  media 'paths': visual_path str, audio_path str (absolute; decoded by the input pipeline).
Text features come back as bytes from the TFDS data source (pipeline.decode_example turns
them into str). Build settings are in the dataset's metadata.json (load with `load_source`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from affect_jax import diskspace
from affect_jax.data.builders import label_ids
from affect_jax.data.builders import records

FORMAT_VERSION = "1.0.0"
SUBTITLE_FILES = ("subtitle_chieng.csv", "subtitle_eng.csv", "transcription-engchi-polish.csv",
                  "transcription_merge.csv")
SUBTITLE_COLUMNS = ("english", "sentence")
# Every text column of the subtitle tables; those a layout does not read are ignored quietly.
TEXT_COLUMNS = ("english", "sentence", "chinese")
# MER-UniBench's subtitle file (official config.py PATH_TO_TRANSCRIPTIONS), tried first.
UNIBENCH_SUBTITLES = ("transcription-engchi-polish.csv",
                      *(f for f in SUBTITLE_FILES if f != "transcription-engchi-polish.csv"))
VIDEO_DIRS = ("video", "subvideo", "subvideo-tgt", "subvideo_new", "video_new")
AUDIO_DIRS = ("audio", "subaudio")
FACE_DIRS = ("openface_face",)
FACES_FALLBACKS = ("frames", "error")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
CORPUS_ALIASES = {"test": ("test_corpus", "test1_corpus")}
REPORT = "report.json"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one dataset keeps its tables (file names are tried in order)."""
  key: str
  labels: tuple[str, ...]
  task: str = "ov"
  reasons: tuple[str, ...] = ()
  subtitles: tuple[str, ...] = SUBTITLE_FILES
  # Subtitle columns tried in order (the official reader's first).
  subtitle_columns: tuple[str, ...] = SUBTITLE_COLUMNS

  @property
  def npz(self) -> bool:
    return self.labels[0].endswith(".npz")


_OVMERDPLUS = Layout("ovmerdplus", ("ovlabel.csv",),
                     subtitles=("subtitle_eng.csv", "subtitle_chieng.csv"),
                     subtitle_columns=("sentence", "english"))
LAYOUTS = {
    "mercaptionplus": Layout("mercaptionplus", ("track2_train_mercaptionplus.csv",),
                             reasons=("track3_train_mercaptionplus.csv",)),
    "ovmerd": Layout("ovmerd", ("track2_train_ovmerd.csv",), reasons=("track3_train_ovmerd.csv",)),
    "ovmerdplus": _OVMERDPLUS,
    "mer2025ov": Layout("mer2025ov", ("track2_test.csv",)),
}
# Subtitles as the official readers (my_affectgpt/datasets/datasets/*.py) read them: column
# 'english' of transcription-engchi-polish.csv, but MER2024 (mer2024.py) 'chinese' of
# transcription_merge.csv and OV-MERD+ (ovmerdplus_dataset.py) 'sentence' of subtitle_eng.csv.
UNIBENCH = {
    "mer2023": Layout("mer2023", ("label-6way.npz",), "hit", subtitles=UNIBENCH_SUBTITLES),
    "mer2024": Layout("mer2024", ("label-6way.npz",), "hit",
                      subtitles=("transcription_merge.csv", *SUBTITLE_FILES),
                      subtitle_columns=("chinese",)),
    "meld": Layout("meld", ("label.npz",), "hit", subtitles=UNIBENCH_SUBTITLES),
    "iemocapfour": Layout("iemocapfour", ("label_4way.npz",), "hit",
                          subtitles=UNIBENCH_SUBTITLES),
    "cmumosi": Layout("cmumosi", ("label.npz",), "sentiment", subtitles=UNIBENCH_SUBTITLES),
    "cmumosei": Layout("cmumosei", ("label.npz",), "sentiment", subtitles=UNIBENCH_SUBTITLES),
    "sims": Layout("sims", ("label.npz",), "sentiment", subtitles=UNIBENCH_SUBTITLES),
    "simsv2": Layout("simsv2", ("label.npz",), "sentiment", subtitles=UNIBENCH_SUBTITLES),
    "ovmerdplus": _OVMERDPLUS,
}
DATASETS = ("demo", *LAYOUTS, *(f"unibench:{k}" for k in UNIBENCH))


def layout_for(dataset: str, cfg: ml_collections.ConfigDict) -> Layout:
  """The Layout of a --dataset value (the demo's names come from cfg.synthetic)."""
  if dataset == "demo":
    s = cfg.synthetic
    return Layout("demo", (s.labels_file,), reasons=(s.reasons_file,),
                  subtitles=(s.subtitles_file,))
  if dataset.startswith("unibench:"):
    name = dataset.split(":", 1)[1].lower()
    if name not in UNIBENCH:
      raise ValueError(f"--dataset={dataset}: unknown MER-UniBench set; known: "
                       f"{sorted(UNIBENCH)}.")
    return UNIBENCH[name]
  if dataset not in LAYOUTS:
    raise ValueError(f"--dataset={dataset}: expected one of {DATASETS}.")
  return LAYOUTS[dataset]


def _split_name(corpus: str) -> str:
  return corpus[:-len("_corpus")] if corpus.endswith("_corpus") else corpus


def find_splits(data_dir: str, layout: Layout, splits: Sequence[str],
                labels_file: str = "") -> dict[str, tuple[str, str]]:
  """split -> (label file path, corpus or ''), following the rules in the module doc."""
  data_dir = os.path.abspath(data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"{data_dir}: no such data folder; point --data_dir at the "
                            f"dataset's folder.")
  names = (labels_file,) if labels_file else layout.labels
  direct = records.first_existing(data_dir, names)
  if layout.npz:
    if direct is None:
      raise FileNotFoundError(f"{data_dir}: no label file {list(names)} for {layout.key}.")
    corpora = records.corpus_names(direct)
    if not corpora:
      raise ValueError(f"{direct}: no '*_corpus' entry; expected e.g. train_corpus, "
                       f"test_corpus.")
    by_session = label_ids.SESSION_SPLITS.get(layout.key)
    if by_session is not None:
      if by_session.corpus not in corpora:
        raise ValueError(f"{direct}: no '{by_session.corpus}'; it has {corpora}. "
                         f"{layout.key} keeps every clip there ({by_session.source}).")
      wrong = [s for s in splits if s not in by_session.split_names()]
      if wrong:
        raise ValueError(f"{direct}: no split {wrong} for {layout.key}; its splits come from "
                         f"the clip names' sessions (--split="
                         f"{','.join(by_session.split_names())}; {by_session.source}).")
      return {s: (direct, by_session.corpus) for s in (splits or by_session.split_names())}
    available = {_split_name(c): c for c in corpora}
    out = {}
    for split in splits or available:
      hits = [c for c in CORPUS_ALIASES.get(split, ()) if c in corpora]
      corpus = available.get(split) or (hits[0] if hits else None)
      if corpus is None:
        raise ValueError(f"{direct}: no corpus for split '{split}'; it has {corpora} "
                         f"(--split={','.join(available)}).")
      out[split] = (direct, corpus)
    return out
  if direct is not None:
    if len(splits) > 1:
      raise ValueError(f"{data_dir} holds one split ({os.path.basename(direct)}), but "
                       f"--split asks for {list(splits)}; name one split.")
    return {(splits[0] if splits else "train"): (direct, "")}
  found = {}
  for sub in sorted(os.listdir(data_dir)):
    path = records.first_existing(os.path.join(data_dir, sub), names)
    if path is not None:
      found[sub] = (path, "")
  if not found:
    raise FileNotFoundError(f"{data_dir}: no {list(names)} in it or in its sub-folders; is "
                            f"this a {layout.key} folder? (--dataset picks the layout)")
  missing = [s for s in splits if s not in found]
  if missing:
    raise ValueError(f"{data_dir}: no split folder {missing}; it has {sorted(found)}.")
  return {s: found[s] for s in (splits or found)}


def read_rows(layout: Layout, label_path: str, corpus: str, split: str = "",
              subtitle_column: str = "", max_cell_chars: int = records.MAX_CELL_CHARS
              ) -> tuple[list[records.Row], list[records.Skip], list[records.Skip]]:
  """One split's rows from its tables (no media yet).

  subtitle_column: read this column instead of the layout's (builder.subtitle_column).
  max_cell_chars: rows with a longer cell are skipped (builder.max_cell_chars).

  Returns:
    (rows, skipped label rows, skipped rows of the subtitle / reason tables; a clip whose
    subtitle row was skipped is itself skipped as missing_subtitle, one whose reason row was
    skipped gets reason '').
  """
  folder = os.path.dirname(label_path)
  other: list[records.Skip] = []
  subtitles, column = None, ""
  sub_path = records.first_existing(folder, layout.subtitles)
  if sub_path is None:
    logging.warning("%s: no subtitle file %s; subtitles are left empty.", folder,
                    list(layout.subtitles))
  else:
    columns = (subtitle_column,) if subtitle_column else layout.subtitle_columns
    subtitles = records.read_subtitles(sub_path, columns, unused=TEXT_COLUMNS,
                                       max_cell_chars=max_cell_chars)
    column = records.text_column(subtitles, columns)
    other += subtitles.skipped
  if layout.npz:
    rows, skipped = records.npz_rows(label_path, corpus, layout.task, subtitles, column,
                                     dataset=layout.key, split=split)
    return rows, skipped, other
  labels = records.read_csv_table(label_path, ("openset",), max_cell_chars=max_cell_chars)
  reasons = None
  reason_path = records.first_existing(folder, layout.reasons) if layout.reasons else None
  if reason_path is not None:
    reasons = records.read_csv_table(reason_path, ("reason",), max_cell_chars=max_cell_chars)
    other += reasons.skipped
  rows, skipped = records.openset_rows(labels, subtitles, column, reasons, "reason")
  return rows, list(labels.skipped) + skipped, other


def _asdict(x) -> dict | None:
  return None if x is None else dataclasses.asdict(x)


def _fingerprint(paths: Sequence[str], root: str) -> list:
  """[path relative to root, size, sha256] of each table: the build's identity follows the
  tables' content, not where the folder lies, so a moved or copied folder reuses its build."""
  out = []
  for p in sorted(set(paths)):
    h = hashlib.sha256()
    with open(p, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    out.append([os.path.relpath(p, root), os.path.getsize(p), h.hexdigest()])
  return out


@dataclasses.dataclass(eq=False)
class ClipConfig(tfds.core.BuilderConfig):
  """One build: the dataset, its folder, the splits and how media are stored."""
  dataset: str = ""
  layout: Layout | None = None
  splits: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
  settings: records.MediaSettings = dataclasses.field(default_factory=records.MediaSettings)
  compression: str = "zlib"
  num_workers: int = 0
  jobs_per_worker: int = 4
  subtitle_column: str = ""
  max_cell_chars: int = records.MAX_CELL_CHARS


class _ClipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder; the subclasses only name the output folder."""

  VERSION = tfds.core.Version(FORMAT_VERSION)
  RELEASE_NOTES = {FORMAT_VERSION: "Clips with labels, texts and raw or path media."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. (TFDS's own lookup imports `importlib_resources`, which TFDS only installs
    on Python < 3.9, and fails without it for builders that live in a package.)"""
    return epath.Path(__file__)

  def __init__(self, *, config: ClipConfig, data_dir: str):
    self.skipped: dict[str, list[records.Skip]] = {}
    self.other_skipped: dict[str, list[records.Skip]] = {}
    self.kept: dict[str, int] = {}
    super().__init__(config=config, data_dir=data_dir, file_format="array_record")

  def _info(self) -> tfds.core.DatasetInfo:
    c: ClipConfig = self.builder_config
    s = c.settings
    encoding = {"zlib": tfds.features.Encoding.ZLIB, "none": tfds.features.Encoding.NONE}
    if c.compression not in encoding:
      raise ValueError(f"builder.compression='{c.compression}': expected 'zlib' or 'none'.")
    features = dict(
        name=tfds.features.Text(), subtitle=tfds.features.Text(),
        labels=tfds.features.Sequence(tfds.features.Text()), reason=tfds.features.Text(),
        basic_label=tfds.features.Text(), valence=np.float32, task=tfds.features.Text())
    if s.mode == "raw":
      features["frames"] = tfds.features.Tensor(
          shape=(s.num_frames, s.image_size, s.image_size, 3), dtype=np.uint8,
          encoding=encoding[c.compression])
      features["audio"] = tfds.features.Tensor(shape=(None,), dtype=np.float32,
                                               encoding=encoding[c.compression])
    else:
      features["visual_path"] = tfds.features.Text()
      features["audio_path"] = tfds.features.Text()
    meta = dict(dataclasses.asdict(s), dataset=c.dataset, task=c.layout.task,
                format_version=FORMAT_VERSION,
                splits={k: _split_meta(c.layout, k, *v) for k, v in c.splits.items()})
    return tfds.core.DatasetInfo(
        builder=self, description=f"{c.dataset} clips ({s.mode} media) for affect_jax.",
        features=tfds.features.FeaturesDict(features), metadata=tfds.core.MetadataDict(meta))

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    del dl_manager
    c: ClipConfig = self.builder_config
    out = {}
    for split, (label_path, corpus) in c.splits.items():
      rows, skipped, other = read_rows(c.layout, label_path, corpus, split,
                                       c.subtitle_column, c.max_cell_chars)
      self.skipped[split] = list(skipped)
      self.other_skipped[split] = list(other)
      if not rows:
        raise ValueError(_nothing_usable(label_path, corpus, self.skipped[split]))
      out[split] = self._generate_examples(split, rows, label_path, corpus)
    return out

  def _media_jobs(self, split: str, folder: str, rows: Sequence[records.Row]):
    """(row, (visual, audio, settings)) for rows whose media exist; the others skipped."""
    s = self.builder_config.settings
    for row in rows:
      try:
        if s.visual_source == "faces":
          visual = records.find_media(folder, row.name, FACE_DIRS, (".npy",), nested=True)
          visual_what = f"face crops {FACE_DIRS[0]}/NAME/NAME.npy"
        else:
          visual = records.find_media(folder, row.name, VIDEO_DIRS, VIDEO_EXTENSIONS)
          visual_what = (f"video in {list(VIDEO_DIRS)} with an extension in "
                         f"{list(VIDEO_EXTENSIONS)}")
        audio = records.find_media(folder, row.name, AUDIO_DIRS, AUDIO_EXTENSIONS)
      except records.OutsideDataDir as e:
        self.skipped[split].append(records.log_skip(records.Skip(
            row.file, row.row, row.name, "outside_data_dir", str(e))))
        continue
      if visual is None or audio is None:
        what = visual_what if visual is None else (
            f"audio in {list(AUDIO_DIRS)} with an extension in {list(AUDIO_EXTENSIONS)}")
        self.skipped[split].append(records.log_skip(records.Skip(
            row.file, row.row, row.name, "missing_media", f"no {what} under {folder}")))
        continue
      yield row, (visual, audio, s)

  def _decoded(self, split: str, folder: str, rows: Sequence[records.Row]):
    """(row, media fields) in row order, decoding in worker processes when configured."""
    jobs = list(self._media_jobs(split, folder, rows))
    workers = self.builder_config.num_workers
    if workers > 0 and len(jobs) > 1:
      # At most `ahead` clips in flight, so decoded media never pile up in memory.
      ahead = workers * self.builder_config.jobs_per_worker
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending = collections.deque()
        for row, job in jobs:
          pending.append((row, pool.submit(records.load_media_safe, job)))
          if len(pending) >= ahead:
            row0, future = pending.popleft()
            yield row0, future.result()
        while pending:
          row0, future = pending.popleft()
          yield row0, future.result()
    else:
      for row, job in jobs:
        yield row, records.load_media_safe(job)

  def _generate_examples(self, split: str, rows: Sequence[records.Row], label_path: str,
                         corpus: str) -> Iterator[tuple[str, dict[str, Any]]]:
    kept = 0
    for row, (status, value) in self._decoded(split, os.path.dirname(label_path), rows):
      if status == "error":
        _, message = value
        self.skipped[split].append(records.log_skip(records.Skip(
            row.file, row.row, row.name, "corrupt_media", message)))
        continue
      kept += 1
      yield row.name, dict(
          name=row.name, subtitle=row.subtitle, labels=list(row.labels), reason=row.reason,
          basic_label=row.basic_label, valence=np.float32(row.valence), task=row.task, **value)
    self.kept[split] = kept
    if not kept:
      raise ValueError(_nothing_usable(label_path, corpus, self.skipped[split]))


def _split_meta(layout: Layout, split: str, label_path: str, corpus: str) -> dict[str, Any]:
  """metadata.json's entry of one split: its label file, corpus and (IEMOCAP) sessions."""
  out: dict[str, Any] = {"labels": label_path, "corpus": corpus}
  by_session = label_ids.SESSION_SPLITS.get(layout.key)
  if by_session is not None:
    out["sessions"] = list(by_session.sessions_of(split))
  return out


def _nothing_usable(label_path: str, corpus: str, skipped: Sequence[records.Skip]) -> str:
  where = f"{label_path}:{corpus}" if corpus else label_path
  return (f"{os.path.dirname(label_path)}: no usable clip in {where}; skipped "
          f"{records.count_reasons(skipped)} (see the warnings above for each row). Check the "
          f"folder's media and tables.")


class Demo(_ClipBuilder, skip_registration=True):
  name = "demo"


class MerCaptionPlus(_ClipBuilder, skip_registration=True):
  name = "mercaptionplus"


class OvMerd(_ClipBuilder, skip_registration=True):
  name = "ovmerd"


class OvMerdPlus(_ClipBuilder, skip_registration=True):
  name = "ovmerdplus"


class Mer2025Ov(_ClipBuilder, skip_registration=True):
  name = "mer2025ov"


class UniBench(_ClipBuilder, skip_registration=True):
  name = "unibench"


BUILDERS = {"demo": Demo, "mercaptionplus": MerCaptionPlus, "ovmerd": OvMerd,
            "ovmerdplus": OvMerdPlus, "mer2025ov": Mer2025Ov, "unibench": UniBench}


def media_settings(cfg: ml_collections.ConfigDict, bcfg: ml_collections.ConfigDict
                   ) -> records.MediaSettings:
  m = cfg.media
  return records.MediaSettings(
      mode=bcfg.media, visual_source=bcfg.visual_source, num_frames=int(m.num_frames),
      image_size=int(m.image_size), frame_sampling=m.frame_sampling,
      frame_resize=m.frame_resize, face_resize=m.face_resize,
      face_channel_order=m.face_channel_order, sample_rate=int(m.sample_rate),
      validate=bcfg.validate)


def faces_or_frames(settings: records.MediaSettings, found: Mapping[str, tuple[str, str]],
                    fallback: str) -> records.MediaSettings:
  """The settings to build with: visual_source 'faces' stays when a split folder has an
  openface_face/ folder (a clip without its crops is then skipped, missing_media). When none
  has one, fallback 'frames' builds from the videos (logged; the dataset's metadata says
  visual_source 'frames', which the pipeline and prompts follow) and 'error' refuses."""
  if settings.visual_source != "faces":
    return settings
  folders = sorted({os.path.dirname(label_path) for label_path, _ in found.values()})
  if any(os.path.isdir(os.path.join(f, d)) for f in folders for d in FACE_DIRS):
    return settings
  if fallback == "frames":
    logging.warning("%s: no %s/ folder of face crops; building from the videos instead "
                    "(visual_source 'frames'; builder.faces_fallback='error' refuses).",
                    ", ".join(folders), FACE_DIRS[0])
    return dataclasses.replace(settings, visual_source="frames")
  if fallback == "error":
    raise FileNotFoundError(
        f"{', '.join(folders)}: no {FACE_DIRS[0]}/<name>/<name>.npy face crops but "
        f"visual_source is 'faces'; extract the faces (OpenFace), set "
        f"builder.visual_source='frames', or builder.faces_fallback='frames'.")
  raise ValueError(f"builder.faces_fallback='{fallback}': expected one of {FACES_FALLBACKS}.")


def make_builder(dataset: str, data_dir: str, out_dir: str, cfg: ml_collections.ConfigDict,
                 bcfg: ml_collections.ConfigDict | None = None, splits: Sequence[str] = ()
                 ) -> _ClipBuilder:
  """The TFDS builder of one build (nothing written yet; call build() or download_and_prepare).

  Args:
    dataset: a DATASETS value ('demo', 'mercaptionplus', ..., 'unibench:meld').
    data_dir: the dataset's folder in its official layout.
    out_dir: where TFDS writes (OUT/<builder>/<config>/<version>).
    cfg: configs/data.py (its `media` and, for the demo, `synthetic` sections).
    bcfg: builder settings (default cfg.builder; configs/data.py builder_config()).
    splits: split names; () = every split found.
  """
  if bcfg is None:
    if "builder" not in cfg:
      raise ValueError("the data config has no `builder` section; add it (configs/data.py "
                       "builder_config()) or pass the builder settings (bcfg).")
    bcfg = cfg.builder
  layout = layout_for(dataset, cfg)
  found = find_splits(data_dir, layout, tuple(splits), bcfg.labels_file)
  settings = faces_or_frames(media_settings(cfg, bcfg), found, bcfg.faces_fallback)
  tables = []
  for label_path, _ in found.values():
    folder = os.path.dirname(label_path)
    tables.append(label_path)
    for names in (layout.subtitles, layout.reasons):
      p = records.first_existing(folder, names)
      if p:
        tables.append(p)
  subtitle_column = str(bcfg.get("subtitle_column", ""))
  max_cell_chars = int(bcfg.get("max_cell_chars", records.MAX_CELL_CHARS))
  if max_cell_chars < 1:
    raise ValueError(f"builder.max_cell_chars={max_cell_chars}: must be >= 1.")
  # The layout (subtitle columns), the label-id table and the session rule are part of the
  # build: a change of any rebuilds. Paths enter relative to data_dir (a moved folder keeps its
  # build), except in 'paths' mode, whose records hold the media's absolute paths.
  where = os.path.abspath(data_dir) if settings.mode == "paths" else ""
  key = json.dumps(dict(dataset=dataset, settings=dataclasses.asdict(settings),
                        splits={s: [os.path.relpath(p, data_dir), c]
                                for s, (p, c) in found.items()},
                        data_dir=where,
                        compression=bcfg.compression, tables=_fingerprint(tables, data_dir),
                        version=FORMAT_VERSION, layout=dataclasses.asdict(layout),
                        subtitle_column=subtitle_column, max_cell_chars=max_cell_chars,
                        ids=_asdict(label_ids.NPZ_LABELS.get(layout.key)),
                        sessions=_asdict(label_ids.SESSION_SPLITS.get(layout.key))),
                   sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:10]
  short = dataset.split(":", 1)[-1]
  config = ClipConfig(name=f"{short}_{settings.mode}_{digest}", dataset=dataset, layout=layout,
                      splits=found, settings=settings, compression=bcfg.compression,
                      num_workers=int(bcfg.num_workers),
                      jobs_per_worker=int(bcfg.jobs_per_worker), subtitle_column=subtitle_column,
                      max_cell_chars=max_cell_chars)
  cls = BUILDERS["unibench" if dataset.startswith("unibench:") else dataset]
  return cls(config=config, data_dir=out_dir)


def build(dataset: str, data_dir: str, out_dir: str, cfg: ml_collections.ConfigDict,
          bcfg: ml_collections.ConfigDict | None = None, splits: Sequence[str] = (),
          overwrite: bool = False) -> dict[str, Any]:
  """Builds (or reuses) the array_record dataset; returns the report (also in report.json).

  Returns:
    {dataset, path, media, reused, splits: {split: {rows_read (= kept + skipped), kept,
    skipped, skipped_by_reason, skipped_rows: [{file, row, name, reason, detail}],
    other_tables_skipped: the same for rows of the subtitle / reason tables}}}.
  Raises:
    FileNotFoundError / ValueError naming the folder or file when nothing usable is found;
    diskspace.DiskFullError naming out_dir when the disk fills (nothing of the build is kept).
  """
  builder = make_builder(dataset, data_dir, out_dir, cfg, bcfg, splits)
  report_path = os.path.join(builder.data_dir, REPORT)
  if overwrite and os.path.isdir(builder.data_dir):
    shutil.rmtree(builder.data_dir)
  if os.path.isfile(report_path):
    with open(report_path, encoding="utf-8") as f:   # path: where the build lies now
      return dict(json.load(f), path=builder.data_dir, reused=True)
  os.makedirs(out_dir, exist_ok=True)
  download_dir = tempfile.mkdtemp(prefix=".tfds_downloads_", dir=out_dir)
  try:
    builder.download_and_prepare(download_dir=download_dir)
  except BaseException as e:
    # TFDS removes its incomplete folder; remove the config folders it leaves empty.
    for folder in (os.path.dirname(builder.data_dir),
                   os.path.dirname(os.path.dirname(builder.data_dir))):
      if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
    if diskspace.is_disk_full(e):
      raise _no_space(out_dir, dataset, e) from e
    raise
  finally:
    shutil.rmtree(download_dir, ignore_errors=True)
  report = dict(dataset=dataset, path=builder.data_dir,
                media=builder.builder_config.settings.mode, splits={})
  for split, skipped in builder.skipped.items():
    kept = builder.kept[split]
    report["splits"][split] = dict(
        rows_read=kept + len(skipped), kept=kept, skipped=len(skipped),
        skipped_by_reason=records.count_reasons(skipped),
        skipped_rows=[dataclasses.asdict(s) for s in skipped],
        other_tables_skipped=[dataclasses.asdict(s) for s in builder.other_skipped[split]])
  tmp = report_path + ".tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, sort_keys=True)
    os.replace(tmp, report_path)
  except OSError as e:
    if not diskspace.is_disk_full(e):
      raise
    shutil.rmtree(builder.data_dir, ignore_errors=True)   # a build without its report is not reused
    raise _no_space(out_dir, dataset, e) from e
  return dict(report, reused=False)


def _no_space(out_dir: str, dataset: str, error: BaseException) -> diskspace.DiskFullError:
  return diskspace.DiskFullError(
      f"{out_dir}: no space left on device while building the {dataset} dataset "
      f"({diskspace.first_line(diskspace.disk_full_cause(error))[:200]}); nothing was kept, and "
      "a rerun builds it afresh. Free space there and run again.")


def load_source(path: str, split: str, skip_media: bool = False):
  """(random-access data source of one split, metadata dict) of a built dataset folder.

  Args:
    path: the folder build() reported (OUT/<builder>/<config>/<version>).
    split: a split it holds.
    skip_media: leave raw frames / audio undecoded (bytes), for readers that do not use them
      (the feature cache).
  Returns:
    (tfds ArrayRecordDataSource: len() and [i] -> dict of numpy values / bytes, metadata).
  """
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"{path}: not a built dataset (no dataset_info.json); run "
                            f"python -m launch.prepare first and pass the 'path' it prints.")
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise ValueError(f"{path}: no split '{split}'; it has {sorted(builder.info.splits)}.")
  decoders = None
  if skip_media and "frames" in builder.info.features:
    decoders = {k: tfds.decode.SkipDecoding() for k in ("frames", "audio")}
  return (builder.as_data_source(split=split, decoders=decoders),
          dict(builder.info.metadata or {}))
