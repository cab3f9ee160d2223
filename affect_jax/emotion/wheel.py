"""Emotion-wheel files -> lookup tables with the official evaluation's semantics.

A folder holds wheel1..wheel5 (columns level1, level2, level3; a blank cell repeats the cell
above), synonym (word_run1, synonym_run1, ..., word_runK, synonym_runK; comma-separated
synonyms) and format (name, format: comma-joined inflections of each base word), each as .csv
or .xlsx (.csv preferred when both exist). Both the AffectGPT-era and the MER2026 format.csv
read the same way. `load_tables(None)` uses the project's own demo wheel (demo_wheel/).

Semantics (PAPER_NOTES.md section 4), reproduced literally from the official code's data flow:
- format map: every inflection -> list of base names, and every base -> itself.
- synonym map: every word_runK (lowercased, stripped) -> itself, every synonym -> the word;
  union over the runs.
- wheel map per wheel and level, built by iterating the nested {level1: {level2: [level3]}}
  dict in insertion order, so a word occurring twice in one wheel keeps its later entry;
  level1: every word -> its level-1 ancestor; level2: level-3 word -> its level-2 parent,
  level-2 word -> itself, level-1 word -> its alphabetically first level-2 child.
- a label maps (wheel variant) to wheel_map[c] for the alphabetically first candidate c, among
  all synonym-map values of its format-map bases, that the wheel contains; else it is dropped.
  case1: the alphabetically first base; case2: the alphabetically first synonym-map value of
  that base.

Compiled tables (`EwTables`): the sorted surface forms (format-map keys) and, per surface and
per variant (case1, case2, wheelK_levelL), a cluster id (-1 = dropped). Compilation is cached
as .npz under the user cache dir (AFFECT_JAX_CACHE or ~/.cache/affect_jax), keyed by a hash of
the files' bytes.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pathlib

import numpy as np

from affect_jax.emotion import labels as labels_lib

NUM_WHEELS = 5
LEVELS = (1, 2)
WHEEL_VARIANTS = tuple(f"wheel{k}_level{level}" for k in range(1, NUM_WHEELS + 1)
                       for level in LEVELS)
VARIANTS = ("case1", "case2") + WHEEL_VARIANTS
LEVEL1 = tuple(f"wheel{k}_level1" for k in range(1, NUM_WHEELS + 1))
DEMO_DIR = pathlib.Path(__file__).resolve().parent / "demo_wheel"
_CACHE_VERSION = "ew-tables-v1"
_WHEEL_COLUMNS = ("level1", "level2", "level3")


class WheelFileError(ValueError):
  """A wheel, synonym or format file that cannot be read; the message names file and row."""


# ------------------------------------------------------------------------------------------
# Reading files.


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for suffix in (".csv", ".xlsx"):
    path = folder / f"{stem}{suffix}"
    if path.is_file():
      return path
  raise WheelFileError(f"{folder}: no {stem}.csv or {stem}.xlsx; an emotion-wheel folder needs "
                       f"wheel1..wheel5, synonym and format files.")


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value)


def _read_rows(path: pathlib.Path) -> list[tuple[int, list[str]]]:
  """Non-blank rows of a .csv or of an .xlsx's first sheet: (spreadsheet row number, cells)."""
  if path.suffix == ".xlsx":
    try:
      import openpyxl
      book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises several types for a broken file.
      raise WheelFileError(f"{path.name}: not a readable .xlsx file ({e}).") from e
    rows = [[_cell(v) for v in row] for row in book.worksheets[0].iter_rows(values_only=True)]
    book.close()
  else:
    try:
      text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
      raise WheelFileError(f"{path.name}: not UTF-8 text ({e}); save the file as UTF-8.") from e
    try:
      rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
      raise WheelFileError(f"{path.name}: not a readable CSV ({e}).") from e
  # Blank lines and all-empty rows carry nothing (in a wheel they would repeat the row above).
  return [(i, row) for i, row in enumerate(rows, start=1) if any(c.strip() for c in row)]


def _table(path: pathlib.Path, required: tuple[str, ...]) -> tuple[dict[str, int], list]:
  """Header -> column index (checked) and the data rows, each with its spreadsheet row number."""
  rows = _read_rows(path)
  if not rows:
    raise WheelFileError(f"{path.name}: empty file; expected a header row {list(required)}.")
  header = [h.strip() for h in rows[0][1]]
  columns = {}
  for j, name in enumerate(header):
    if not name:
      continue
    if name in columns:
      raise WheelFileError(f"{path.name}: column '{name}' appears twice in the header; keep one.")
    columns[name] = j
  missing = [name for name in required if name not in columns]
  if missing:
    raise WheelFileError(f"{path.name}: missing column(s) {missing} (header: {header}); "
                         f"the file needs {list(required)}.")
  data = [(i, {name: (row[j] if j < len(row) else "") for name, j in columns.items()})
          for i, row in rows[1:]]
  return columns, data


@dataclasses.dataclass(frozen=True)
class WheelFiles:
  """The parsed contents of one emotion-wheel folder.

  format_rows: (name, inflections) per format row, file order (inflections as the official
    list parser returns them).
  synonym_runs: per run K, the rows (word_runK lowercased and stripped, its synonyms).
  wheels: per wheel, the rows after filling blank cells, (level1, level2, level3) lowercased
    and stripped.
  digest: sha256 over the files' bytes (and the compiler version).
  """
  folder: str
  format_rows: tuple
  synonym_runs: tuple
  wheels: tuple
  digest: str


def _read_wheel(path: pathlib.Path) -> tuple:
  _, rows = _table(path, _WHEEL_COLUMNS)
  filled, current = [], [None, None, None]
  for row_number, row in rows:
    for j, name in enumerate(_WHEEL_COLUMNS):
      value = row[name]
      if value.strip():
        current[j] = value
      elif current[j] is None:
        raise WheelFileError(f"{path.name} row {row_number}: {name} empty and no row above to "
                             f"repeat; fill the first row of every column.")
    filled.append(tuple(v.lower().strip() for v in current))
  if not filled:
    raise WheelFileError(f"{path.name}: no data rows under the header.")
  return tuple(filled)


def _read_synonyms(path: pathlib.Path, wheel_words: set[str]) -> tuple:
  columns, rows = _table(path, ("word_run1", "synonym_run1"))
  runs = []
  k = 1
  while f"word_run{k}" in columns or f"synonym_run{k}" in columns:
    for name in (f"word_run{k}", f"synonym_run{k}"):
      if name not in columns:
        raise WheelFileError(f"{path.name}: column '{name}' missing; word_runK and synonym_runK "
                             f"come in pairs.")
    run = []
    for row_number, row in rows:
      word = row[f"word_run{k}"].strip().lower()
      if not word:
        raise WheelFileError(f"{path.name} row {row_number}: word_run{k} empty.")
      if word not in wheel_words:
        raise WheelFileError(f"{path.name} row {row_number}: word_run{k} '{word}' is not a word "
                             f"of any wheel; every word_run cell must be a wheel word.")
      synonyms = tuple(s.strip().lower() for s in labels_lib.string_to_list(
          row[f"synonym_run{k}"]))
      run.append((word, synonyms))
    runs.append(tuple(run))
    k += 1
  return tuple(runs)


def _read_format(path: pathlib.Path) -> tuple:
  _, rows = _table(path, ("name", "format"))
  out = []
  for row_number, row in rows:
    name = row["name"]
    if not name.strip():
      raise WheelFileError(f"{path.name} row {row_number}: name empty; every row needs its base "
                           f"word.")
    out.append((name, tuple(labels_lib.string_to_list(row["format"]))))
  if not out:
    raise WheelFileError(f"{path.name}: no data rows under the header.")
  return tuple(out)


def read_files(folder=None) -> WheelFiles:
  """Reads and checks one emotion-wheel folder (None: the project's demo wheel)."""
  folder = pathlib.Path(folder) if folder is not None else DEMO_DIR
  if not folder.is_dir():
    raise WheelFileError(f"{folder}: not a folder; --ew_dir must name a folder holding "
                         f"wheel1..wheel5, synonym and format files.")
  paths = [_find(folder, f"wheel{k}") for k in range(1, NUM_WHEELS + 1)]
  paths += [_find(folder, "synonym"), _find(folder, "format")]
  digest = hashlib.sha256(_CACHE_VERSION.encode())
  for path in paths:
    digest.update(path.name.encode() + b"\0" + path.read_bytes())
  wheels = tuple(_read_wheel(p) for p in paths[:NUM_WHEELS])
  wheel_words = {w for wheel in wheels for row in wheel for w in row}
  return WheelFiles(folder=str(folder), format_rows=_read_format(paths[-1]),
                    synonym_runs=_read_synonyms(paths[-2], wheel_words), wheels=wheels,
                    digest=digest.hexdigest())


# ------------------------------------------------------------------------------------------
# The official maps (plain dicts; also the data of the plain-Python reference metric).


@dataclasses.dataclass(frozen=True)
class OfficialMaps:
  """format_map: surface -> [base, ...]; synonym_map: word -> {wheel word, ...};
  wheel_maps[(k, level)]: word -> cluster word, k in 1..5, level in (1, 2)."""
  format_map: dict
  synonym_map: dict
  wheel_maps: dict


def _nested(rows: tuple) -> dict:
  tree = {}
  for level1, level2, level3 in rows:
    tree.setdefault(level1, {}).setdefault(level2, []).append(level3)
  return tree


def _wheel_map(rows: tuple, level: int) -> dict:
  tree, out = _nested(rows), {}
  for level1, children in tree.items():
    out[level1] = level1 if level == 1 else sorted(children)[0]
    for level2, leaves in children.items():
      out[level2] = level1 if level == 1 else level2
      for level3 in leaves:
        out[level3] = level1 if level == 1 else level2
  return out


def official_maps(files: WheelFiles) -> OfficialMaps:
  format_map = {}
  for name, forms in files.format_rows:
    for form in forms:
      format_map.setdefault(form, []).append(name)
    format_map.setdefault(name, []).append(name)
  synonym_map = {}
  for run in files.synonym_runs:
    for word, synonyms in run:
      synonym_map.setdefault(word, set()).add(word)
      for synonym in synonyms:
        synonym_map.setdefault(synonym, set()).add(word)
  wheel_maps = {(k + 1, level): _wheel_map(rows, level)
                for k, rows in enumerate(files.wheels) for level in LEVELS}
  return OfficialMaps(format_map=format_map, synonym_map=synonym_map, wheel_maps=wheel_maps)


def map_label(label: str, maps: OfficialMaps, variant: str) -> str:
  """One (already lowercased and stripped) label -> its cluster word under `variant`, or ""."""
  bases = maps.format_map.get(label)
  if not bases:
    return ""
  if variant == "case1":
    return sorted(bases)[0]
  if variant == "case2":
    values = maps.synonym_map.get(sorted(bases)[0])
    return sorted(values)[0] if values else ""
  k, level = _parse_variant(variant)
  wheel = maps.wheel_maps[(k, level)]
  candidates = sorted(c for base in bases for c in maps.synonym_map.get(base, ()))
  for candidate in candidates:
    if candidate in wheel:
      return wheel[candidate]
  return ""


def _parse_variant(variant: str) -> tuple[int, int]:
  if variant not in WHEEL_VARIANTS:
    raise ValueError(f"variant '{variant}': expected one of {VARIANTS}.")
  wheel_part, level_part = variant.split("_")
  return int(wheel_part[len("wheel"):]), int(level_part[len("level"):])


# ------------------------------------------------------------------------------------------
# Compiled tables.


@dataclasses.dataclass(frozen=True)
class EwTables:
  """Every surface form -> cluster id per variant.

  surfaces: the S surface forms (format-map keys), sorted.
  clusters: int32[S, len(VARIANTS)], -1 where the surface is dropped under that variant.
  cluster_names: per variant, the cluster words (sorted; ids index this tuple).
  word_chars: the characters of the surface forms other than the space (think-word rule).
  digest: hash of the source files.
  """
  surfaces: tuple
  clusters: np.ndarray
  cluster_names: tuple
  word_chars: frozenset
  digest: str
  source: str

  @property
  def variants(self) -> tuple:
    return VARIANTS

  def variant_index(self, variant: str) -> int:
    if variant not in VARIANTS:
      raise ValueError(f"variant '{variant}': expected one of {VARIANTS}.")
    return VARIANTS.index(variant)

  def surface_ids(self) -> dict:
    return {s: i for i, s in enumerate(self.surfaces)}

  def num_clusters(self, variant: str) -> int:
    return len(self.cluster_names[self.variant_index(variant)])


def compile_tables(files: WheelFiles) -> EwTables:
  """Runs `map_label` for every surface form and variant (the official mapping, once)."""
  maps = official_maps(files)
  surfaces = tuple(sorted(maps.format_map))
  words = np.empty((len(surfaces), len(VARIANTS)), dtype=object)
  for i, surface in enumerate(surfaces):
    for j, variant in enumerate(VARIANTS):
      words[i, j] = map_label(surface, maps, variant)
  clusters = np.full(words.shape, -1, np.int32)
  names = []
  for j in range(len(VARIANTS)):
    column = sorted({w for w in words[:, j] if w})
    index = {w: c for c, w in enumerate(column)}
    clusters[:, j] = [index.get(w, -1) for w in words[:, j]]
    names.append(tuple(column))
  word_chars = frozenset(ch for s in surfaces for ch in s if ch != " ")
  return EwTables(surfaces=surfaces, clusters=clusters, cluster_names=tuple(names),
                  word_chars=word_chars, digest=files.digest, source=files.folder)


def cache_dir() -> pathlib.Path:
  root = os.environ.get("AFFECT_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "affect_jax")
  return pathlib.Path(root)


def _save(path: pathlib.Path, tables: EwTables) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, surfaces=np.array(tables.surfaces, dtype=str), clusters=tables.clusters,
           cluster_names=np.array(["\n".join(n) for n in tables.cluster_names], dtype=str),
           word_chars=np.array("".join(sorted(tables.word_chars)), dtype=str),
           digest=np.array(tables.digest), source=np.array(tables.source))
  os.replace(tmp, path)


def _load(path: pathlib.Path) -> EwTables:
  with np.load(path, allow_pickle=False) as z:
    names = tuple(tuple(n.split("\n")) if n else () for n in z["cluster_names"].tolist())
    return EwTables(surfaces=tuple(z["surfaces"].tolist()), clusters=z["clusters"],
                    cluster_names=names, word_chars=frozenset(str(z["word_chars"])),
                    digest=str(z["digest"]), source=str(z["source"]))


def load_tables(folder=None, cache: bool = True) -> EwTables:
  """Compiled tables for an emotion-wheel folder (None: demo wheel), cached by content hash."""
  files = read_files(folder)
  path = cache_dir() / "emotion_wheel" / f"{files.digest}.npz"
  if cache and path.is_file():
    try:
      return dataclasses.replace(_load(path), source=files.folder)
    except (OSError, ValueError, KeyError):
      pass  # A damaged cache entry is rebuilt below.
  tables = compile_tables(files)
  if cache:
    try:
      _save(path, tables)
    except OSError:
      pass  # A read-only cache only costs the compile time.
  return tables
