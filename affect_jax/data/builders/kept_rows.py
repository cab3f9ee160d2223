"""The rows a build kept, one per clip, as a CSV (launch.prepare --rows_out).

Columns (COLUMNS): name, split, task, labels, valence, subtitle.
  labels   the open-set list "[a, b]" ("[]" = neutral) for task 'ov', the class word for
           'hit', '' for 'sentiment' rows without one
  valence  the stored valence, '' when absent (NaN)
Rows come from the built records (split by split in the report's order, names sorted within a
split), so a reused build writes the same file. The file is written to a temporary name in
its folder and renamed: an error leaves no partial file (and an earlier file untouched).
"""
from __future__ import annotations

import csv
import math
import os
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

COLUMNS = ("name", "split", "task", "labels", "valence", "subtitle")
FILE_MODE = 0o644   # the written file's permissions (a temporary file starts at 0o600)


def labels_cell(example: Mapping[str, Any]) -> str:
  """The labels column of one decoded example (module doc)."""
  if example["task"] == "ov":
    return "[" + ", ".join(example["labels"]) + "]"
  return example.get("basic_label", "")


def valence_cell(value: Any) -> str:
  v = float(value)
  return "" if math.isnan(v) else str(np.float32(v))


def row_of(split: str, example: Mapping[str, Any]) -> dict[str, str]:
  """One CSV row of a decoded example (pipeline.decode_example)."""
  return dict(name=example["name"], split=split, task=example["task"],
              labels=labels_cell(example), valence=valence_cell(example["valence"]),
              subtitle=example["subtitle"])


def read_kept(report: Mapping[str, Any]) -> list[dict[str, str]]:
  """The rows of every split of a build report (builders.build)."""
  from affect_jax.data import pipeline
  from affect_jax.data.builders import mer

  rows = []
  for split in report["splits"]:
    source, _ = mer.load_source(report["path"], split, skip_media=True)
    examples = (pipeline.decode_example(source[i]) for i in range(len(source)))
    rows += sorted((row_of(split, ex) for ex in examples), key=lambda r: r["name"])
  return rows


def check_path(path: str) -> None:
  """Raises ValueError when `path` cannot be the output file (checked before building)."""
  if os.path.isdir(path):
    raise ValueError(f"--rows_out={path} is a folder; give a file path such as "
                     f"{os.path.join(path, 'rows.csv')}.")


def write_csv(rows: Iterable[Mapping[str, Any]], path: str) -> int:
  """Writes `rows` (COLUMNS) to path atomically; returns the number of rows written."""
  check_path(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
  count = 0
  try:
    os.chmod(tmp, FILE_MODE)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="raise")
      writer.writeheader()
      for row in rows:
        writer.writerow(row)
        count += 1
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return count
