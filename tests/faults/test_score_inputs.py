"""launch.score on ground truth with no rows: an error naming the file, exit 2, for every task and
engine (before the fix: 0.0 for ov, an IndexError for sentiment, "max() arg is an empty sequence"
for the device engine)."""
import csv
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

GT_COLUMNS = {"ov": ["name", "openset"], "hit": ["name", "label"],
              "sentiment": ["name", "valence"]}


def _write(path, header, rows=()):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


@pytest.mark.parametrize("task,engine", [("ov", "host"), ("hit", "host"),
                                         ("sentiment", "host"), ("ov", "device")])
def test_header_only_ground_truth_is_an_error(tmp_path, task, engine):
  gt = _write(tmp_path / "gt.csv", GT_COLUMNS[task])
  pred = _write(tmp_path / "pred.csv", ["name", "openset"], [["a", "[happy]"]])
  proc = subprocess.run(
      [sys.executable, "-m", "launch.score", f"--gt={gt}", f"--pred={pred}", f"--task={task}",
       f"--engine={engine}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stderr.startswith("launch.score: error: gt.csv: no rows"), proc.stderr
  assert proc.stdout == ""
