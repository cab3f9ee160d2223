"""Emotion-wheel files -> tables: the official semantics, checked against an independent
reading of the spec (ew_testlib.ReferenceWheel) and hand-checked cases."""
import os
import pathlib

import numpy as np
import pytest

from tests.testlib import ew as ew_testlib
from affect_jax.emotion import wheel


@pytest.fixture(scope="module")
def mer2026_dir(shared_dir):
  d = shared_dir / "emotion_wheel" / "mer2026"
  if not d.is_dir():
    pytest.skip("MER2026 emotion-wheel files are not present in ../shared")
  return d


def _assert_equals_reference(tables, folder):
  ref = ew_testlib.ReferenceWheel(folder)
  assert set(tables.surfaces) == set(ref.formats)
  for j, variant in enumerate(wheel.VARIANTS):
    names = tables.cluster_names[j]
    for i, surface in enumerate(tables.surfaces):
      c = tables.clusters[i, j]
      got = names[c] if c >= 0 else ""
      assert got == ref.map(surface, variant), (surface, variant)


def test_demo_wheel_equals_reference():
  tables = wheel.load_tables(None, cache=False)
  _assert_equals_reference(tables, wheel.DEMO_DIR)
  files = wheel.read_files(None)
  assert len(files.format_rows) >= 40
  # Every wheel word is reachable through the synonym file.
  maps = wheel.official_maps(files)
  for rows in files.wheels:
    for row in rows:
      for word in row:
        assert word in maps.synonym_map and word in maps.format_map


def test_official_tables_equal_reference(official_ew_dir):
  tables = wheel.load_tables(official_ew_dir, cache=False)
  assert len(tables.surfaces) == 7386
  _assert_equals_reference(tables, official_ew_dir)


def test_mer2026_tables_equal_reference(mer2026_dir):
  _assert_equals_reference(wheel.load_tables(mer2026_dir, cache=False), mer2026_dir)


def _level1(tables, label):
  index = tables.surface_ids()[label]
  out = []
  for v in wheel.LEVEL1:
    j = tables.variant_index(v)
    c = tables.clusters[index, j]
    out.append(tables.cluster_names[j][c] if c >= 0 else "")
  return out


def test_worked_example_paper_notes(official_ew_dir):
  tables = wheel.load_tables(official_ew_dir)
  assert _level1(tables, "worried") == ["scared", "fearful", "scared", "fear", "scared"]
  assert _level1(tables, "happy") == ["happy", "happy", "joyful", "joy", "powerful"]
  assert _level1(tables, "surprise") == ["surprised", "surprised", "powerful", "fear", ""]
  assert "neutral" not in tables.surface_ids()


def test_fear_differs_between_format_versions(official_ew_dir, mer2026_dir):
  # AffectGPT-era format.csv lists "fear" as an inflection of "fearless" (a quirk).
  old = wheel.load_tables(official_ew_dir)
  new = wheel.load_tables(mer2026_dir)
  assert _level1(old, "fear") == ["scared", "happy", "joyful", "genius", "joyful"]
  assert _level1(new, "fear") == ["scared", "fearful", "scared", "fear", "scared"]


def test_xlsx_reads_like_csv(official_ew_dir, tmp_path):
  for name in ["wheel1", "wheel2", "wheel3", "wheel4", "wheel5", "synonym"]:
    os.symlink(official_ew_dir / f"{name}.xlsx", tmp_path / f"{name}.xlsx")
  os.symlink(official_ew_dir / "format.csv", tmp_path / "format.csv")
  from_xlsx = wheel.load_tables(tmp_path, cache=False)
  from_csv = wheel.load_tables(official_ew_dir, cache=False)
  assert from_xlsx.surfaces == from_csv.surfaces
  assert from_xlsx.cluster_names == from_csv.cluster_names
  np.testing.assert_array_equal(from_xlsx.clusters, from_csv.clusters)


# ------------------------------------------------------------------------------------------
# A tiny authored wheel for the semantics the official files may not exercise.


def _write(folder: pathlib.Path, files: dict):
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (folder / name).write_text(text, encoding="utf-8")
  return folder


def _tiny(**overrides):
  wheels = {f"wheel{k}.csv": "level1,level2,level3\nGlad,Content,Calm\n,,Easy\n,Proud,Tall\n"
                              "Low,Sad,Blue\n,,Calm\n" for k in range(1, 6)}
  files = dict(wheels)
  files["synonym.csv"] = ("word_run1,synonym_run1,word_run2,synonym_run2\n"
                          "Calm,\"serene, still\",calm,quiet\n"
                          "Blue,\"down, still\",blue,\n"
                          "glad,,glad,\n" "low,,low,\n" "content,,content,\n" "proud,,proud,\n"
                          "sad,,sad,\n" "easy,,easy,\n" "tall,,tall,\n")
  files["format.csv"] = ("name,format\ncalm,\"calm,calmly\"\nserene,serenely\nstill,stilled\n"
                         "blue,\"blue,bluer\"\ndown,downs\nquiet,quietly\nglad,gladly\nlow,lower\n"
                         "content,contented\nproud,proudly\nsad,sadly\neasy,easily\ntall,taller\n")
  files.update(overrides)
  return files


def test_tiny_wheel_semantics(tmp_path):
  tables = wheel.load_tables(_write(tmp_path / "w", _tiny()), cache=False)
  ids = tables.surface_ids()

  def name(label, variant):
    j = tables.variant_index(variant)
    c = tables.clusters[ids[label], j]
    return tables.cluster_names[j][c] if c >= 0 else ""

  # "calm" occurs under Glad and (later row) under Low: the later row wins.
  assert name("calm", "wheel1_level1") == "low"
  assert name("calm", "wheel1_level2") == "sad"
  # A level-1 word at level 2 maps to its alphabetically first level-2 child.
  assert name("glad", "wheel1_level2") == "content"
  assert name("tall", "wheel1_level2") == "proud"
  # "still" is a synonym of calm and of blue: candidates sorted, first in the wheel wins.
  assert name("stilled", "wheel1_level1") == "low"
  assert name("stilled", "case1") == "still"
  assert name("stilled", "case2") == "blue"
  # Synonyms of every run count ("quiet" is only in run 2).
  assert name("quietly", "wheel1_level1") == "low"
  assert name("sadly", "case1") == "sad"


@pytest.mark.parametrize("bad, message", [
    ({"wheel3.csv": "level1,level3\nA,B\n"}, "wheel3.csv: missing column(s) ['level2']"),
    ({"wheel2.csv": "level1,level2,level3\n,Content,Calm\n"},
     "wheel2.csv row 2: level1 empty and no row above"),
    ({"wheel1.csv": "level1,level2,level2,level3\nA,B,B,C\n"},
     "wheel1.csv: column 'level2' appears twice"),
    ({"format.csv": "name,format\ncalm,calmly\n,sadly\n"}, "format.csv row 3: name empty"),
    ({"synonym.csv": "word_run1,synonym_run1\nnothere,x\n"},
     "synonym.csv row 2: word_run1 'nothere' is not a word of any wheel"),
    ({"synonym.csv": "word_run1,synonym_run1,word_run2\ncalm,x,calm\n"},
     "synonym.csv: column 'synonym_run2' missing"),
    ({"format.csv": b"name,format\ncalm,\xff\n"}, "format.csv: not UTF-8"),
    ({"wheel4.csv": ""}, "wheel4.csv: empty file"),
])
def test_bad_wheel_files_name_file_and_row(tmp_path, bad, message):
  files = _tiny()
  for k, v in bad.items():
    files[k] = v
  folder = tmp_path / "w"
  folder.mkdir()
  for k, v in files.items():
    (folder / k).write_bytes(v if isinstance(v, bytes) else v.encode())
  with pytest.raises(wheel.WheelFileError, match=__import__("re").escape(message)):
    wheel.load_tables(folder, cache=False)


def test_missing_file_and_folder(tmp_path):
  files = _tiny()
  del files["wheel5.csv"]
  with pytest.raises(wheel.WheelFileError, match="no wheel5.csv or wheel5.xlsx"):
    wheel.load_tables(_write(tmp_path / "w", files), cache=False)
  with pytest.raises(wheel.WheelFileError, match="not a folder"):
    wheel.load_tables(tmp_path / "nope", cache=False)


def test_cache_keyed_by_content(tmp_path, monkeypatch):
  monkeypatch.setenv("AFFECT_JAX_CACHE", str(tmp_path / "cache"))
  folder = _write(tmp_path / "w", _tiny())
  first = wheel.load_tables(folder)
  cached = list((tmp_path / "cache" / "emotion_wheel").glob("*.npz"))
  assert len(cached) == 1 and cached[0].stem == first.digest
  again = wheel.load_tables(folder)
  assert again.surfaces == first.surfaces and again.cluster_names == first.cluster_names
  np.testing.assert_array_equal(again.clusters, first.clusters)
  cached[0].write_bytes(b"damaged")                     # a broken entry is rebuilt
  assert wheel.load_tables(folder).surfaces == first.surfaces
  (folder / "format.csv").write_text((folder / "format.csv").read_text() + "tall2,taller2\n")
  changed = wheel.load_tables(folder)
  assert changed.digest != first.digest and "tall2" in changed.surfaces
