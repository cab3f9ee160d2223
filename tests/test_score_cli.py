"""launch.score: official semantics for rows in any order and any cell style; host == device;
clear errors for bad CSVs."""
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from tests.testlib import ew as ew_testlib
from affect_jax.emotion import wheel  # noqa: E402
from launch import score  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _csv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def _style(labels, k):
  styles = ("[{}]".format(", ".join(labels)), ",".join(labels), ", ".join(labels),
            "['" + "', '".join(labels) + "']" if labels else "")
  return styles[k % len(styles)]


def _expected_ov(ref, gt, pred, variants=tuple(f"wheel{k}_level1" for k in range(1, 6))):
  """EW-F / P / R (percent) by the reference reading of the spec."""
  fs, ps, rs = [], [], []
  for variant in variants:
    p_list, r_list = [], []
    for g_cell, p_cell in zip(gt, pred):
      g = {c for c in (ref.map(x.lower().strip(), variant)
                       for x in ew_testlib.official_list(g_cell)) if c}
      p = {c for c in (ref.map(x.lower().strip(), variant)
                       for x in ew_testlib.official_list(p_cell)) if c}
      if g:
        p_list.append(len(g & p) / len(p) if p else 0.0)
        r_list.append(len(g & p) / len(g) if p else 0.0)
    p, r = np.mean(p_list), np.mean(r_list)
    ps.append(p)
    rs.append(r)
    fs.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
  return 100 * np.mean(fs), 100 * np.mean(ps), 100 * np.mean(rs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  tables = wheel.load_tables(None)
  rng = np.random.default_rng(7)
  surfaces = list(tables.surfaces) + ["neutral", "xyzzy"]
  names = [f"clip{i:03d}" for i in range(60)]
  gt = [list(rng.choice(surfaces, size=int(rng.integers(0, 4)), replace=False)) for _ in names]
  pred = [list(rng.choice(surfaces, size=int(rng.integers(0, 4)), replace=False))
          for _ in names]
  d = tmp_path_factory.mktemp("score")
  gt_path = _csv(d / "gt.csv", ["name", "openset"],
                 [(n, _style(g, i)) for i, (n, g) in enumerate(zip(names, gt))])
  order = rng.permutation(len(names))                 # prediction rows shuffled
  pred_path = _csv(d / "pred.csv", ["name", "openset"],
                   [(names[i], _style(pred[i], i + 1)) for i in order] + [("extra", "happy")])
  return dict(dir=d, names=names, gt=gt, pred=pred, gt_path=gt_path, pred_path=pred_path)


def test_ov_equals_reference_any_order_and_style(data):
  ref = ew_testlib.ReferenceWheel(wheel.DEMO_DIR)
  out = score.score(data["gt_path"], data["pred_path"], "ov",
                    per_sample_out=str(data["dir"] / "ps.csv"))
  gt = [", ".join(g) for g in data["gt"]]
  pred = [", ".join(p) for p in data["pred"]]
  f, p, r = _expected_ov(ref, gt, pred)
  assert out["ew_f"] == pytest.approx(f, abs=1e-3)
  assert out["ew_precision"] == pytest.approx(p, abs=1e-3)
  assert out["ew_recall"] == pytest.approx(r, abs=1e-3)
  assert out["n_samples"] == 60 and len(out["variants"]) == 12
  f2, _, _ = _expected_ov(ref, gt, pred, ("case1",))
  assert out["variants"]["case1"]["f"] == pytest.approx(f2, abs=1e-3)
  with open(data["dir"] / "ps.csv") as fh:
    rows = list(csv.DictReader(fh))
  assert [row["name"] for row in rows] == data["names"]
  expected = [ref.sample_f(g, p) for g, p in zip(gt, pred)]
  np.testing.assert_allclose([float(row["reward"]) for row in rows], expected, atol=1e-6)


def test_official_wheel_paper_example(official_ew_dir, tmp_path):
  gt = _csv(tmp_path / "gt.csv", ["name", "openset"],
            [("b", "neutral"), ("a", "[happy, excited]")])
  pred = _csv(tmp_path / "pred.csv", ["name", "openset"],
              [("a", "joyful,surprised"), ("b", "['happy']")])
  out = score.score(gt, pred, "ov", ew_dir=str(official_ew_dir))
  pr = [(1, 1), (.5, 1), (.5, 1), (.5, .5), (1, .5)]     # PAPER_NOTES.md section 4
  assert out["n_scored"] == 1
  assert out["ew_f"] == pytest.approx(100 * np.mean([2 * p * r / (p + r) for p, r in pr]),
                                      abs=1e-3)
  assert out["ew_precision"] == pytest.approx(100 * np.mean([p for p, _ in pr]), abs=1e-3)


def test_device_engine_equals_host(data, tmp_path, monkeypatch):
  monkeypatch.setenv("AFFECT_JAX_CACHE", str(tmp_path / "cache"))
  host = score.score(data["gt_path"], data["pred_path"], "ov",
                     per_sample_out=str(tmp_path / "host.csv"))
  device = score.score(data["gt_path"], data["pred_path"], "ov", engine="device",
                       per_sample_out=str(tmp_path / "device.csv"))
  for key in ("ew_f", "ew_precision", "ew_recall", "n_scored"):
    assert device[key] == pytest.approx(host[key], abs=1e-3)
  read = lambda p: [float(r["reward"]) for r in csv.DictReader(open(p))]
  np.testing.assert_allclose(read(tmp_path / "device.csv"), read(tmp_path / "host.csv"),
                             atol=1e-6)


def test_hit_task(tmp_path):
  gt = _csv(tmp_path / "gt.csv", ["name", "label"],
            [("a", "happy"), ("b", "sad"), ("c", "neutral"), ("d", "angry")])
  pred = _csv(tmp_path / "pred.csv", ["name", "openset"],
              [("d", "calm"), ("c", "sad"), ("b", "[gloomy, happy]"), ("a", "cheerful")])
  out = score.score(gt, pred, "hit")
  ref = ew_testlib.ReferenceWheel(wheel.DEMO_DIR)
  rows = {"a": ("happy", "cheerful"), "b": ("sad", "gloomy, happy"), "d": ("angry", "calm")}
  per_wheel = []
  for k in range(1, 6):
    hits = []
    for g, p in rows.values():
      gs = {ref.map(g, f"wheel{k}_level1")} - {""}
      ps = {ref.map(x.strip(), f"wheel{k}_level1") for x in p.split(",")} - {""}
      if gs:
        hits.append(len(gs & ps))
    per_wheel.append(np.mean(hits))
  assert out["hit"] == pytest.approx(100 * np.mean(per_wheel), abs=1e-3)
  device = score.score(gt, pred, "hit", engine="device")
  assert device["hit"] == pytest.approx(out["hit"], abs=1e-3)


def test_sentiment_task(tmp_path):
  gt = _csv(tmp_path / "gt.csv", ["name", "valence"],
            [("a", "1.5"), ("b", "-2"), ("c", "0"), ("d", "0.4")])
  pred = _csv(tmp_path / "pred.csv", ["name", "openset"],
              [("a", "happy"), ("b", "sad"), ("c", "happy"), ("d", "gloomy")])
  out = score.score(gt, pred, "sentiment")
  # kept a, b, d: y = [1, 0, 1], y_hat = [1, 0, 0]; F1(pos) = 2/3, F1(neg) = 2/3.
  assert out["n_scored"] == 3
  assert out["acc"] == pytest.approx(100 * 2 / 3, abs=1e-3)
  assert out["waf"] == pytest.approx(100 * (2 * (2 / 3) + 1 * (2 / 3)) / 3, abs=1e-3)
  words = _csv(tmp_path / "words.csv", ["name", "sentiment"],
               [("a", "Positive"), ("b", "negative"), ("c", "neutral"), ("d", "positive")])
  assert score.score(gt, words, "sentiment")["acc"] == pytest.approx(100.0)


@pytest.mark.parametrize("gt_rows, pred_rows, message", [
    ([("a", "happy"), ("", "sad")], [("a", "happy")], "gt.csv row 3: name empty"),
    ([("a", "happy"), ("a", "sad")], [("a", "happy")], "gt.csv row 3: name 'a' repeats row 2"),
    ([("a", "happy"), ("b", "sad")], [("a", "happy")], "pred.csv: no row for name 'b'"),
])
def test_bad_csvs_name_file_and_row(tmp_path, gt_rows, pred_rows, message):
  gt = _csv(tmp_path / "gt.csv", ["name", "openset"], gt_rows)
  pred = _csv(tmp_path / "pred.csv", ["name", "openset"], pred_rows)
  with pytest.raises(score.ScoreInputError, match=message):
    score.score(gt, pred, "ov")


def test_bad_columns_and_cells(tmp_path):
  gt = _csv(tmp_path / "gt.csv", ["name", "labels"], [("a", "happy")])
  pred = _csv(tmp_path / "pred.csv", ["name", "openset"], [("a", "happy")])
  with pytest.raises(score.ScoreInputError, match="gt.csv: header .* lacks the columns"):
    score.score(gt, pred, "ov")
  gt = _csv(tmp_path / "val.csv", ["name", "valence"], [("a", "1.0"), ("b", "high")])
  pred = _csv(tmp_path / "p2.csv", ["name", "openset"], [("a", "happy"), ("b", "sad")])
  with pytest.raises(score.ScoreInputError, match="val.csv row 3: valence 'high'"):
    score.score(gt, pred, "sentiment")
  good = _csv(tmp_path / "good.csv", ["name", "valence"], [("a", "1.0"), ("b", "-1")])
  words = _csv(tmp_path / "w.csv", ["name", "sentiment"], [("a", "good"), ("b", "bad")])
  with pytest.raises(score.ScoreInputError, match="w.csv row 2: sentiment 'good'"):
    score.score(good, words, "sentiment")
  with pytest.raises(score.ScoreInputError, match="--engine=device scores --task=ov"):
    score.score(good, pred, "sentiment", engine="device")


def test_cli_prints_one_json_object(data, tmp_path):
  out = tmp_path / "out.json"
  proc = subprocess.run(
      [sys.executable, "-m", "launch.score", f"--gt={data['gt_path']}",
       f"--pred={data['pred_path']}", f"--json_out={out}"],
      cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == json.loads(out.read_text())
  assert {"ew_f", "ew_precision", "ew_recall", "n_scored", "variants"} <= set(result)
  bad = subprocess.run([sys.executable, "-m", "launch.score", f"--gt={data['gt_path']}",
                        "--pred=/nonexistent.csv"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 2 and "no such file" in bad.stderr
