"""MER-UniBench label .npz files read as the official readers read them.

References (the official AffectGPT readers, my_affectgpt/datasets/datasets/*.py, re-derived here
by hand): iemocap.py maps label_4way.npz's whole_corpus ids with
['happy', 'sad', 'neutral', 'anger'] and tests on session 5 (int(name[4]) == 5), training on
sessions 1-4; meld.py maps ids with ['anger', 'joy', 'sadness', 'neutral', 'disgust', 'fear',
'surprise']; mer2024.py reads the subtitle column 'chinese', the other sets 'english', and
ovmerdplus_dataset.py 'sentence'. The fixtures are written here with np.savez and csv.
"""
import csv

import numpy as np
import pytest

from affect_jax.data import builders
from affect_jax.data import pipeline
from configs import data as data_config
from configs import unibench

IEMOCAP_WORDS = {0: "happy", 1: "sad", 2: "neutral", 3: "anger"}   # iemocap.py `emos`
MELD_WORDS = {0: "anger", 1: "joy", 2: "sadness", 3: "neutral", 4: "disgust", 5: "fear",
              6: "surprise"}                                       # meld.py `emos`


@pytest.fixture(scope="module")
def cfg():
  c = data_config.get_data_config()
  c.media.num_frames = 2
  c.media.image_size = 16
  return c


def _csv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _touch_media(folder, names):
  """Empty media files: the builds below check that they exist (validate='exists')."""
  for sub, ext in (("subvideo", ".mp4"), ("subaudio", ".wav")):
    (folder / sub).mkdir(exist_ok=True)
    for n in names:
      (folder / sub / f"{n}{ext}").write_bytes(b"")


def _build(dataset, folder, out, cfg, splits=(), **changes):
  b = data_config.builder_config()
  b.media, b.validate = "paths", "exists"
  for k, v in changes.items():
    b[k] = v
  return builders.build(dataset, str(folder), str(out), cfg, b, splits)


def _records(report, split):
  source, meta = builders.load_source(report["path"], split, skip_media=True)
  return {ex["name"]: ex for ex in (pipeline.decode_example(source[i])
                                    for i in range(len(source)))}, meta


# The official label_4way.npz format: whole_corpus {name: {"emo": int id, "val": -10}}.
IEMOCAP = {
    "Ses01F_impro01_F000": 0, "Ses01M_script02_1_M011": 3, "Ses02F_impro03_F002": 1,
    "Ses03M_impro04_M003": 2, "Ses04F_script01_3_F020": 0,
    "Ses05F_impro01_F000": 0, "Ses05M_impro02_M001": 1, "Ses05F_script03_1_F033": 2,
    "Ses05M_impro05_M010": 3,
}
BAD_NAMES = ["Ses0", "Ses07F_impro01_F000", "SesXF_impro01_F000"]   # no session 1-5 at [4]
BAD_ID = "Ses05F_impro06_F004"                                       # id 4: outside the table


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
  d = tmp_path_factory.mktemp("iemocap")
  corpus = {n: {"emo": e, "val": -10} for n, e in IEMOCAP.items()}
  corpus.update({n: {"emo": 1, "val": -10} for n in BAD_NAMES})
  corpus[BAD_ID] = {"emo": 4, "val": -10}
  np.savez(d / "label_4way.npz", whole_corpus=corpus)
  names = list(corpus)
  _touch_media(d, names)
  _csv(d / "transcription-engchi-polish.csv", ("name", "chinese", "english"),
       [(n, "中文", f"english {n}") for n in names])
  return d


def test_iemocap_ids_follow_happy_sad_neutral_anger_and_test_is_session_5(iemocap, cfg,
                                                                          tmp_path):
  report = _build("unibench:iemocapfour", iemocap, tmp_path / "out", cfg, ("test", "train"))
  test, meta = _records(report, "test")
  train, _ = _records(report, "train")
  assert sorted(test) == sorted(n for n in IEMOCAP if n[4] == "5")
  assert sorted(train) == sorted(n for n in IEMOCAP if n[4] in "1234")
  for recs in (test, train):
    for name, rec in recs.items():
      assert rec["basic_label"] == IEMOCAP_WORDS[IEMOCAP[name]], name
      assert rec["labels"] == [IEMOCAP_WORDS[IEMOCAP[name]]] and rec["task"] == "hit"
      assert rec["subtitle"] == f"english {name}"
  assert meta["splits"]["test"]["sessions"] == [5]
  assert meta["splits"]["train"]["sessions"] == [1, 2, 3, 4]

  for split in ("test", "train"):
    info = report["splits"][split]
    # Names without a session are in no split: counted and named in each split built.
    assert info["skipped_by_reason"] == ({"bad_label": 1, "bad_name": 3} if split == "test"
                                         else {"bad_name": 3})
    bad = {r["name"]: r for r in info["skipped_rows"]}
    assert {n for n, r in bad.items() if r["reason"] == "bad_name"} == set(BAD_NAMES)
    assert all("session" in r["detail"] for r in bad.values() if r["reason"] == "bad_name")
    assert info["rows_read"] == info["kept"] + info["skipped"]
  detail = {r["name"]: r for r in report["splits"]["test"]["skipped_rows"]}[BAD_ID]["detail"]
  assert "id 4" in detail and "iemocapfour" in detail and "iemocap.py" in detail
  assert "'happy', 'sad', 'neutral', 'anger'" in detail


def test_iemocap_default_splits_and_unknown_split(iemocap, cfg, tmp_path):
  report = _build("unibench:iemocapfour", iemocap, tmp_path / "out", cfg)
  assert sorted(report["splits"]) == ["test", "train"]
  assert report["splits"]["test"]["kept"] == 4 and report["splits"]["train"]["kept"] == 5
  with pytest.raises(ValueError, match=r"no split \['whole'\].*--split=train,test"):
    _build("unibench:iemocapfour", iemocap, tmp_path / "out", cfg, ("whole",))


def test_unibench_config_scores_iemocap_session_5():
  assert unibench.get_unibench_config().splits["iemocapfour"] == "test"


def test_meld_ids_keep_meld_order_and_out_of_table_ids_are_named(tmp_path, cfg):
  d = tmp_path / "meld"
  d.mkdir()
  names = [f"dia{i}_utt0" for i in range(9)]
  np.savez(d / "label.npz", test_corpus={n: {"emo": i, "val": -10} for i, n in enumerate(names)})
  _touch_media(d, names)
  report = _build("unibench:meld", d, tmp_path / "out", cfg, ("test",))
  recs, _ = _records(report, "test")
  assert {n: r["basic_label"] for n, r in recs.items()} == {
      names[i]: MELD_WORDS[i] for i in range(7)}
  info = report["splits"]["test"]
  assert info["skipped_by_reason"] == {"bad_label": 2}
  assert all("meld id table" in r["detail"] and "meld.py" in r["detail"]
             for r in info["skipped_rows"])


def test_an_id_where_the_table_has_none_is_a_bad_label(tmp_path, cfg):
  d = tmp_path / "mer2023"
  d.mkdir()
  np.savez(d / "label-6way.npz", test1_corpus={"a": {"emo": "Happy"}, "b": {"emo": 2}})
  _touch_media(d, ["a", "b"])
  report = _build("unibench:mer2023", d, tmp_path / "out", cfg, ("test",))
  info = report["splits"]["test"]
  assert info["kept"] == 1 and info["skipped_by_reason"] == {"bad_label": 1}
  assert "mer2023 table has no ids" in info["skipped_rows"][0]["detail"]


def _subtitle_folder(tmp_path, name, label_file, corpora, names, subtitle_file, header):
  d = tmp_path / name
  d.mkdir()
  np.savez(d / label_file, **corpora)
  _touch_media(d, names)
  _csv(d / subtitle_file, header,
       [(n, *(f"{col} {n}" for col in header[1:])) for n in names])
  return d


def test_subtitle_columns_are_the_official_readers(tmp_path, cfg):
  both = ("name", "english", "chinese")
  mer2024 = _subtitle_folder(tmp_path, "mer2024", "label-6way.npz",
                             {"test1_corpus": {"s1": {"emo": "sad"}}}, ["s1"],
                             "transcription_merge.csv", both)
  recs, _ = _records(_build("unibench:mer2024", mer2024, tmp_path / "out", cfg, ("test",)),
                     "test")
  assert recs["s1"]["subtitle"] == "chinese s1"                   # mer2024.py
  recs, _ = _records(_build("unibench:mer2024", mer2024, tmp_path / "out", cfg, ("test",),
                            subtitle_column="english"), "test")
  assert recs["s1"]["subtitle"] == "english s1"                   # the override
  for key, corpora in (("mer2023", {"test1_corpus": {"s1": {"emo": "sad"}}}),
                       ("cmumosi", {"test_corpus": {"s1": {"val": 1.0}}})):
    d = _subtitle_folder(tmp_path, key, "label-6way.npz" if key == "mer2023" else "label.npz",
                         corpora, ["s1"], "transcription-engchi-polish.csv", both)
    recs, _ = _records(_build(f"unibench:{key}", d, tmp_path / "out", cfg, ("test",)), "test")
    assert recs["s1"]["subtitle"] == "english s1", key            # mer2023.py, cmumosi.py
  d = tmp_path / "ovmerdplus"
  d.mkdir()
  _csv(d / "ovlabel.csv", ("name", "openset"), [("s1", "[sad]")])
  _touch_media(d, ["s1"])
  for sub in ("subvideo", "subaudio"):
    (d / sub).rename(d / {"subvideo": "video", "subaudio": "audio"}[sub])
  _csv(d / "subtitle_eng.csv", ("name", "english", "sentence"), [("s1", "english s1",
                                                                   "sentence s1")])
  recs, _ = _records(_build("unibench:ovmerdplus", d, tmp_path / "out", cfg, ("test",)), "test")
  assert recs["s1"]["subtitle"] == "sentence s1"                  # ovmerdplus_dataset.py
