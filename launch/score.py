r"""Scores predictions against ground truth with the official emotion-wheel semantics.

  python -m launch.score --gt=GT.csv --pred=PRED.csv [--task=ov|hit|sentiment] \
      [--ew_dir=DIR] [--engine=host|device] [--per_sample_out=F.csv] [--tokenizer=DIR]

Prints one JSON object (scores in percent, as the papers print them):
- ov: GT and PRED have columns name, openset -> ew_f, ew_precision, ew_recall, n_scored and
  variants (the 12 OV-MER metrics: case1, case2, wheelK_levelL).
- hit: GT columns name, label; PRED name, openset -> hit, n_scored.
- sentiment: GT columns name, valence; PRED name, openset (or name, sentiment with
  positive / negative / neutral) -> waf, acc, n_scored.
Rows are matched by name (any order); every GT name needs a PRED row, extra PRED rows are
ignored. Cells are read as the official evaluation reads them ("[a, b]", "a,b", "a, b", quoted
items; an empty cell is no label). --ew_dir: a folder with the official wheel1..5, synonym and
format files (.csv or .xlsx); default: the project's demo wheel.
--engine=device computes the level-1 EW scores (ov, hit) and the per-sample rewards with the
jitted on-device reward (affect_jax/rewards/terms/emotion_wheel.py) on completions
"<answer>CELL</answer>" tokenized by --tokenizer (a save_pretrained folder; default: a
byte-level BPE tokenizer built once from the wheel's vocabulary and cached), compiled with the
XLA options of --reward_compiler for the backend; the 12 variants always come from the host
tables.
--per_sample_out writes name, reward: the per-sample F averaged over the 5 level-1 wheels.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import sys

from absl import app, flags

from launch import xla_options


def define_flags():
  """The CLI flags (defined only when run as a program, so that importing this module next
  to other launchers never clashes)."""
  flags.DEFINE_string("gt", None, "Ground-truth CSV.")
  flags.DEFINE_string("pred", None, "Prediction CSV.")
  flags.DEFINE_enum("task", "ov", ["ov", "hit", "sentiment"], "What to score.")
  flags.DEFINE_string("ew_dir", None, "Emotion-wheel folder (default: demo wheel).")
  flags.DEFINE_enum("engine", "host", ["host", "device"], "Host numpy or on-device.")
  flags.DEFINE_string("per_sample_out", None, "CSV of name, reward.")
  flags.DEFINE_string("tokenizer", None, "Tokenizer folder for --engine=device.")
  flags.DEFINE_string("json_out", None, "Also write the JSON object here.")
  flags.DEFINE_enum("reward_compiler", "tuned", sorted(xla_options.REWARD),
                    "XLA options of the jitted reward (--engine=device), per backend "
                    "(launch/xla_options.py).")

SENTIMENTS = {"positive": 1, "negative": -1, "neutral": 0}


class ScoreInputError(ValueError):
  """A CSV that cannot be scored; the message names the file and row."""


def read_rows(path: str, required: tuple[str, ...], alternatives=()) -> tuple[list, list]:
  """(names, rows as dicts) of a CSV with a header; checks columns, names and duplicates.

  alternatives: other accepted column sets (the first one that is present is used).
  """
  name = os.path.basename(path)
  if not os.path.isfile(path):
    raise ScoreInputError(f"{path}: no such file.")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise ScoreInputError(f"{name}: not a readable UTF-8 CSV ({e}).") from e
  if not rows:
    raise ScoreInputError(f"{name}: empty file; expected a header {list(required)}.")
  header = [h.strip() for h in rows[0]]
  duplicated = sorted({h for h in header if h and header.count(h) > 1})
  if duplicated:
    raise ScoreInputError(f"{name}: column(s) {duplicated} appear twice in the header.")
  for columns in (required,) + tuple(alternatives):
    if all(c in header for c in columns):
      break
  else:
    options = " or ".join(str(list(c)) for c in (required,) + tuple(alternatives))
    raise ScoreInputError(f"{name}: header {header} lacks the columns {options}.")
  index = {c: header.index(c) for c in columns}
  names, out, seen = [], [], {}
  for row_number, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    cells = {c: (row[j] if j < len(row) else "") for c, j in index.items()}
    key = cells["name"].strip()
    if not key:
      raise ScoreInputError(f"{name} row {row_number}: name empty; every row needs a name.")
    if key in seen:
      raise ScoreInputError(f"{name} row {row_number}: name '{key}' repeats row {seen[key]}.")
    seen[key] = row_number
    cells["_row"] = row_number
    names.append(key)
    out.append(cells)
  return names, out


def align(gt_names, pred_names, pred_rows, gt_rows, pred_path: str) -> list:
  """PRED rows in GT order; raises for a GT name without a prediction."""
  by_name = dict(zip(pred_names, pred_rows))
  out = []
  for key, gt in zip(gt_names, gt_rows):
    if key not in by_name:
      raise ScoreInputError(f"{os.path.basename(pred_path)}: no row for name '{key}' (ground "
                            f"truth row {gt['_row']}); every ground-truth name needs one.")
    out.append(by_name[key])
  return out


def _percent(x: float) -> float:
  return round(100.0 * float(x), 4)


def device_scores(gt_cells, pred_cells, tables, tokenizer_dir: str | None,
                  reward_compiler: str = "tuned"):
  """Per-sample precision, recall, scored, hits [B, 5] and rewards [B] from the on-device
  reward, on completions "<answer>CELL</answer>"."""
  import jax
  import numpy as np
  from affect_jax.emotion import labels as labels_lib
  from affect_jax.rewards import ew_tables as reward_tables, registry, total
  from affect_jax.rewards.terms import emotion_wheel as ew_term
  from configs import data as data_config
  if tokenizer_dir:
    from transformers import PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
  else:
    tokenizer = reward_tables.wheel_tokenizer(tables, data_config.tokenizer_config())
  for i, cell in enumerate(pred_cells):
    if "</answer>" in cell:
      raise ScoreInputError(f"prediction row {i + 1}: the cell contains '</answer>'; score it "
                            f"with --engine=host.")
  texts = [f"<answer>{cell}</answer>" for cell in pred_cells]
  encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
  n = max(1, max(len(e) for e in encoded))
  ids = np.zeros((len(texts), n), np.int32)
  for i, e in enumerate(encoded):
    ids[i, :len(e)] = e
  lengths = np.array([len(e) for e in encoded], np.int32)
  max_items = max([len(labels_lib.parse_labels(c)) for c in pred_cells] + [1])
  max_gt = max([len(labels_lib.parse_labels(c)) for c in gt_cells] + [1])
  cfg = total.RewardConfig.from_config(dict(ew=dict(
      max_labels=max_items, max_answer_tokens=n, max_gt_labels=max_gt)))
  gt_ids, n_gt = ew_term.gt_arrays(gt_cells, tables, max_gt)
  resources = total.setup(cfg, registry.Context(tokenizer, tables))
  fn = total.make_reward_fn(resources, cfg, compiler_options=xla_options.reward(
      reward_compiler, jax.default_backend()))
  out = fn(ids, lengths, {"gt_ids": gt_ids, "n_gt": n_gt})
  return {k: np.asarray(v) for k, v in out.items()}


def score(gt_path: str, pred_path: str, task: str, ew_dir=None, engine: str = "host",
          per_sample_out=None, tokenizer_dir=None, reward_compiler: str = "tuned") -> dict:
  """The JSON object of launch.score (see the module doc)."""
  import numpy as np
  from affect_jax.emotion import metrics, wheel
  tables = wheel.load_tables(ew_dir)
  gt_columns = {"ov": ("name", "openset"), "hit": ("name", "label"),
                "sentiment": ("name", "valence")}[task]
  gt_names, gt_rows = read_rows(gt_path, gt_columns)
  if not gt_rows:
    raise ScoreInputError(f"{os.path.basename(gt_path)}: no rows under the header "
                          f"{list(gt_columns)}; there is nothing to score. Point --gt at the "
                          f"ground truth with one row per clip.")
  alternatives = (("name", "sentiment"),) if task == "sentiment" else ()
  pred_names, pred_rows = read_rows(pred_path, ("name", "openset"), alternatives)
  preds = align(gt_names, pred_names, pred_rows, gt_rows, pred_path)
  result = {"task": task, "engine": engine, "n_samples": len(gt_names),
            "ew_dir": tables.source}
  if task == "sentiment":
    if engine == "device":
      raise ScoreInputError("--engine=device scores --task=ov and --task=hit (the sentiment "
                            "mapping runs on the host); use --engine=host.")
    if per_sample_out:
      raise ScoreInputError("--per_sample_out writes EW rewards; use it with --task=ov or hit.")
    valence = []
    for row in gt_rows:
      try:
        value = float(row["valence"])
      except ValueError:
        raise ScoreInputError(f"{os.path.basename(gt_path)} row {row['_row']}: valence "
                              f"'{row['valence']}' is not a number.") from None
      if not math.isfinite(value):
        raise ScoreInputError(f"{os.path.basename(gt_path)} row {row['_row']}: valence "
                              f"'{row['valence']}' is not finite.")
      valence.append(value)
    if "openset" in preds[0]:
      polarity = metrics.label_polarity([p["openset"] for p in preds], tables)
    else:
      polarity = []
      for p in preds:
        word = p["sentiment"].strip().lower()
        if word not in SENTIMENTS:
          raise ScoreInputError(f"{os.path.basename(pred_path)} row {p['_row']}: sentiment "
                                f"'{p['sentiment']}'; expected one of {sorted(SENTIMENTS)}.")
        polarity.append(SENTIMENTS[word])
    s = metrics.sentiment_scores(valence, np.asarray(polarity) > 0)
    result.update(waf=_percent(s["waf"]), acc=_percent(s["acc"]), n_scored=s["n_scored"])
    return result

  gt_cells = [row["openset" if task == "ov" else "label"] for row in gt_rows]
  pred_cells = [p["openset"] for p in preds]
  if engine == "device":
    d = device_scores(gt_cells, pred_cells, tables, tokenizer_dir, reward_compiler)
    rewards_per_sample = d["accuracy"]
    scored = d["scored"]                                   # [B, 5]
    n_scored = scored.sum(axis=0)
    if task == "ov":
      p = np.where(n_scored > 0, (d["precision"] * scored).sum(0) / np.maximum(n_scored, 1), 0)
      r = np.where(n_scored > 0, (d["recall"] * scored).sum(0) / np.maximum(n_scored, 1), 0)
      f = [metrics.f_score(a, b) for a, b in zip(p, r)]
      host = metrics.ov_scores(gt_cells, pred_cells, tables)
      result.update(ew_f=_percent(np.mean(f)), ew_precision=_percent(np.mean(p)),
                    ew_recall=_percent(np.mean(r)), n_scored=int(n_scored[0]))
      result["variants"] = _variants(host)
    else:
      hits = np.where(n_scored > 0, (d["hits"] * scored).sum(0) / np.maximum(n_scored, 1), 0)
      result.update(hit=_percent(np.mean(hits)), n_scored=int(n_scored[0]))
  else:
    rewards_per_sample = metrics.per_sample_rewards(gt_cells, pred_cells, tables)
    if task == "ov":
      s = metrics.ov_scores(gt_cells, pred_cells, tables)
      result.update(ew_f=_percent(s["ew_f"]), ew_precision=_percent(s["ew_precision"]),
                    ew_recall=_percent(s["ew_recall"]), n_scored=s["n_scored"],
                    variants=_variants(s))
    else:
      s = metrics.hit_scores(gt_cells, pred_cells, tables)
      result.update(hit=_percent(s["hit"]), n_scored=s["n_scored"])
  if per_sample_out:
    path = pathlib.Path(per_sample_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["name", "reward"])
      for key, value in zip(gt_names, rewards_per_sample):
        writer.writerow([key, f"{float(value):.6f}"])
  return result


def _variants(s: dict) -> dict:
  return {name: {"f": _percent(v["f"]), "precision": _percent(v["precision"]),
                 "recall": _percent(v["recall"]), "n_scored": v["n_scored"]}
          for name, v in s["variants"].items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.gt or not f.pred:
    raise app.UsageError("--gt and --pred are required.")
  try:
    result = score(f.gt, f.pred, f.task, f.ew_dir, f.engine, f.per_sample_out, f.tokenizer,
                   f.reward_compiler)
  except ValueError as e:   # ScoreInputError, WheelFileError, TokenizerError
    print(f"launch.score: error: {e}", file=sys.stderr)
    sys.exit(2)
  text = json.dumps(result, sort_keys=True)
  print(text)
  if f.json_out:
    pathlib.Path(f.json_out).write_text(text + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
