"""MER-UniBench evaluation, set by set: build, encode, generate, extract labels, score.

  result = evaluate(em, data_dir, sets, labeler, cache_root, out_dir, ucfg)   # launch.evaluate
  print(markdown(result))

For each set (configs/unibench.py SETS; folders under data_dir matched by config.unibench.folders):
1. Build the set with the MER-UniBench builder (`unibench:NAME`, affect_jax/data/builders/mer.py
   reads every label format) into <cache>/built, split config.unibench.splits[NAME], and cache
   the frozen encoders' features beside it (experiment.feature_source).
2. Generate one completion per clip for the official zero-shot question
   (config.unibench.question, else config.data.prompt.question) with the prompt builder of
   training (affect_jax/data/prompts.py); greedy unless config.unibench.greedy is off. With
   config.unibench.stop_text a row also stops after that text's token sequences
   (`stop_sequences`) and the completion is cut as the official answer_sample cuts it
   (`cut_response`).
3. Labels: `Labeler` (the <answer> span, the rule extractor or the LLM extractor).
4. Score with the host metrics (affect_jax/emotion/metrics.py), in percent:
   OV-MERD+ EW-F (ov_scores), MER2023 / MER2024 / MELD / IEMOCAP HIT (hit_scores against the
   basic label), CMU-MOSI / CMU-MOSEI / CH-SIMS / CH-SIMS v2 WAF (sentiment_scores). Sentiment
   of a prediction: metrics.label_polarity of its labels (each label votes with the polarity of
   its level-1 clusters over the 5 wheels; a clip is positive when the sign of the sum of its
   labels' votes is +1), or the LLM's answer to the official sentiment prompt.
Protocols (`with_protocol`, config.unibench.protocols): 'r1' uses the fields as they are;
'affectgpt' overrides them with the official AffectGPT evaluation (sampling at temperature 1,
top-p 0.9, top-k 20, 1,200 new tokens, stop at "###", labels and sentiment by the LLM
extractor read as evaluation.py reads them).
A set that fails (missing folder, bad label file, no usable clip) is recorded with its error
and the others still run. With out_dir, each set writes NAME.csv (name, openset: the
predictions), NAME_gt.csv (ov: name, openset; hit: name, label; sentiment: name, valence),
NAME_sentiment.csv for sentiment sets (name, sentiment: positive / negative / neutral) and
NAME_completions.jsonl, so that `python -m launch.score` rescores them.
Ablations (`ablations`, affect_jax/eval/ablation.py): after the full model, each set is
generated and scored again once per ablation, with the masked inputs' prompt blocks left out;
each set's entry holds them under 'ablations' (scores and `delta`, ablated - full primary
score), and their files go to out_dir/no_<name>/.

On a mesh (EvalModel.mesh) the prompts of each batch are split over the data axes and, with
several processes, each process reads the media of its own rows (eval/batches.py: clips of one
prompt bucket batched together, filler rows to split the mesh, never scored); the completions
come back to every process, which all label and score the whole set alike; only process 0
writes files. Each set's entry also reports the generation's throughput and padding
(`generate_set`: clips_per_s, tokens_per_s, padding_fraction, ...).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import pathlib
import re
import time
import traceback
from typing import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from affect_jax import distributed, experiment, sharding
from affect_jax.data import pipeline
from affect_jax.data import prompts as prompts_lib
from affect_jax.data.builders import mer
from affect_jax.emotion import extract
from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import metrics
from affect_jax.generation import sampler
from affect_jax.eval import ablation as ablation_lib
from affect_jax.eval import batches as batches_lib
from affect_jax.eval import heldout as evaluate_lib
from affect_jax.eval.model import EvalModel

DISPLAY = {"mer2023": "MER2023", "mer2024": "MER2024", "meld": "MELD", "iemocapfour": "IEMOCAP",
           "cmumosi": "CMU-MOSI", "cmumosei": "CMU-MOSEI", "sims": "CH-SIMS",
           "simsv2": "CH-SIMS v2", "ovmerdplus": "OV-MERD+"}
PRIMARY = {"ov": "ew_f", "hit": "hit", "sentiment": "waf"}
SENTIMENT_WORDS = {1: "positive", -1: "negative", 0: "neutral"}
EXTRACTORS = ("answer", "rule", "llm")
SENTIMENTS = ("wheel", "llm")


def with_protocol(ucfg: ml_collections.ConfigDict, protocol: str) -> ml_collections.ConfigDict:
  """A copy of ucfg with ucfg.protocols[protocol]'s fields set over it (nested ones merged)."""
  if protocol not in ucfg.protocols:
    raise ValueError(f"--protocol={protocol}: expected one of {sorted(ucfg.protocols)} "
                     "(config.unibench.protocols).")
  out = copy.deepcopy(ucfg)
  with out.unlocked():     # a protocol may add fields to open sections (unibench.prompt)
    for key, value in ucfg.protocols[protocol].items():
      if isinstance(value, ml_collections.ConfigDict):
        out[key].update(value)
      else:
        out[key] = value
    out.protocol = protocol
  return out


def parse_sets(text: str) -> tuple[str, ...]:
  """'a,b' -> ('a', 'b'), checked against the 9 set names."""
  sets = tuple(s.strip().lower() for s in text.split(",") if s.strip())
  unknown = [s for s in sets if s not in DISPLAY]
  if unknown or not sets:
    raise ValueError(f"--sets={text}: unknown set(s) {unknown or '(none given)'}; choose from "
                     f"{','.join(DISPLAY)}.")
  return tuple(dict.fromkeys(sets))


def _folder_key(name: str) -> str:
  return re.sub(r"[^a-z0-9]", "", name.lower().replace("+", "plus"))


def find_set_dir(data_dir: str, key: str, ucfg: ml_collections.ConfigDict) -> str:
  """The sub-folder of data_dir holding set `key` (names from ucfg.folders)."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"--data_dir={data_dir}: no such folder; point it at the "
                            "MER-UniBench folder that holds one sub-folder per set.")
  wanted = {_folder_key(n) for n in ucfg.folders[key]}
  hits = sorted(d for d in os.listdir(data_dir)
                if _folder_key(d) in wanted and os.path.isdir(os.path.join(data_dir, d)))
  if not hits:
    raise FileNotFoundError(
        f"{data_dir}: no folder for {DISPLAY[key]} ('{key}'); expected a sub-folder named "
        f"{' or '.join(ucfg.folders[key])} (any case; '+', '-', '_' and spaces ignored). Add "
        f"it, or leave the set out with --sets.")
  if len(hits) > 1:
    raise ValueError(f"{data_dir}: several folders for {DISPLAY[key]}: {hits}; keep one.")
  return os.path.join(data_dir, hits[0])


class Labeler:
  """Completions -> label cells, and cells -> polarity (+1 / -1 / 0)."""

  def __init__(self, extractor: str, sentiment: str, tables, ucfg: ml_collections.ConfigDict,
               llm=None):
    if extractor not in EXTRACTORS:
      raise ValueError(f"--extractor={extractor}: expected one of {EXTRACTORS}.")
    if sentiment not in SENTIMENTS:
      raise ValueError(f"--sentiment={sentiment}: expected one of {SENTIMENTS}.")
    if llm is None and "llm" in (extractor, sentiment):
      raise ValueError(f"--extractor={extractor} --sentiment={sentiment} need the LLM: pass "
                       "--extractor_checkpoint=DIR (a Qwen2.5-Instruct folder or its "
                       "launch.convert checkpoint).")
    self.extractor, self.sentiment, self.tables, self.llm = extractor, sentiment, tables, llm
    self.rule = extract.RuleExtractor(tables, tuple(ucfg.negations), int(ucfg.negation_window))

  def cells(self, completions: Sequence[str]) -> list[str]:
    if self.extractor == "answer":
      return [extract.answer_cell(t) for t in completions]
    if self.extractor == "rule":
      return [self.rule.cell(t) for t in completions]
    return self.llm.label_cells(completions)

  def polarity(self, cells: Sequence[str]) -> np.ndarray:
    if self.sentiment == "llm":
      return self.llm.polarities(cells)
    return metrics.label_polarity(list(cells), self.tables)


@dataclasses.dataclass
class SetRows:
  """What generation gives for one set, row-aligned."""
  names: list
  completions: list
  gt_text: list          # open-set ground truth ('a, b'; '' = neutral)
  basic_label: list
  valence: list
  stats: dict = dataclasses.field(default_factory=dict)   # generation figures (generate_set)


def stop_sequences(tokenizer, stop_text: str, lead: str = "a") -> tuple[tuple[int, ...], ...]:
  """The official Chat's stop sequences for `stop_text` ("###"): the first id of stop_text
  alone, and for every split of it in two (x, y) the pair (second id of lead + x, second id
  of lead + y); for "###" these are ("#", "##") and ("##", "#"), as Chat builds them from the
  ids of 'a#' and 'a##'. A split whose text tokenizes into `lead` alone is left out."""
  if not stop_text:
    return ()
  encode = lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"])
  seqs = [(int(encode(stop_text)[0]),)]
  for i in range(1, len(stop_text)):
    x, y = encode(lead + stop_text[:i]), encode(lead + stop_text[i:])
    if len(x) > 1 and len(y) > 1:
      seqs.append((int(x[1]), int(y[1])))
  return tuple(dict.fromkeys(seqs))


def cut_response(text: str, ucfg) -> str:
  """The official answer_sample's cut: before the last stop_text, after the last
  response_after, stripped (unchanged when both are '')."""
  if not (ucfg.stop_text or ucfg.response_after):
    return text
  if ucfg.stop_text:
    text = text.rsplit(ucfg.stop_text, 1)[0]
  if ucfg.response_after:
    text = text.split(ucfg.response_after)[-1]
  return text.strip()


def sampling_config(em: EvalModel, ucfg) -> sampler.SamplingConfig:
  extra = {}
  if float(ucfg.repetition_penalty):
    extra["repetition_penalty"] = float(ucfg.repetition_penalty)
  return experiment.sampling_config(
      em.config, em.tokenizer, greedy=bool(ucfg.greedy), temperature=float(ucfg.temperature),
      top_p=float(ucfg.top_p), top_k=int(ucfg.top_k), max_new_tokens=int(ucfg.max_new_tokens),
      stop_sequences=stop_sequences(em.tokenizer, ucfg.stop_text), **extra)


def load_set(em: EvalModel, key: str, folder: str, cache_root: pathlib.Path, ucfg):
  """(feature source, metadata, build report) of one set (module doc step 1)."""
  dc = em.config.data
  split = ucfg.splits[key]
  error = None
  with distributed.main_process_first(f"build {key}"):   # the others then find it built
    try:
      report = mer.build(f"unibench:{key}", folder, str(cache_root / "built"), dc,
                         splits=(split,))
    except Exception as e:  # pylint: disable=broad-except  (raised below, after the barrier)
      error = e
  if isinstance(error, (FileNotFoundError, ValueError)):
    raise type(error)(f"{error} [set {key}, folder {folder}, split {split} "
                      f"(--config.unibench.splits.{key})]") from error
  if error is not None:
    raise error
  source, meta = experiment.feature_source(report["path"], split, em.feature_key, em.video_fn,
                                           em.audio_fn, em.config)
  return source, meta, report


def data_config(dc: ml_collections.ConfigDict, ucfg) -> ml_collections.ConfigDict:
  """The data section the prompts are built with: its question replaced by ucfg.question when
  that is set, and ucfg.prompt's fields set over data.prompt."""
  prompt = dict(ucfg.get("prompt", {}))
  if not ucfg.question and not prompt:
    return dc
  unknown = sorted(set(prompt) - set(dc.prompt))
  if unknown:
    raise ValueError(f"config.unibench.prompt: unknown data.prompt field(s) {unknown}; known: "
                     f"{sorted(dc.prompt)}.")
  dc = copy.deepcopy(dc)
  dc.prompt.update(prompt)
  if ucfg.question:
    dc.prompt.question = ucfg.question
  return dc


def generate_set(em: EvalModel, source, meta, generate_fn, ucfg) -> SetRows:
  """Module doc step 2; rows in record order, with the generation's figures in `stats`.

  The clips' prompts are read first (text only); the batches follow eval/batches.py (grouped
  by prompt bucket when ucfg.bucket_by_length, compiled with batch_size rounded up to the mesh
  and the process count); each process reads the media of its own rows of each batch only.
  The completions come back to every process (make_generate's replicated output).
  """
  dc = data_config(em.config.data, ucfg)
  pipeline.check_video_prompt(dc.prompt, meta)
  encode = pipeline.EncodePrompt(em.tokenizer, dc, meta)
  read_text = getattr(source, "text_record", source.__getitem__)
  texts = [encode.text(read_text(i)) for i in range(len(source))]
  if not texts:
    raise ValueError("the set has no clips; check its build report (skipped rows).")
  lengths = [len(t["prompt_ids"]) for t in texts]
  buckets = tuple(dc.prompt.prompt_buckets)
  batch_size = int(ucfg.batch_size)
  plan = batches_lib.plan_batches(lengths, buckets, batch_size, bool(ucfg.bucket_by_length))
  rows = batches_lib.compiled_rows(batch_size, em.mesh)
  pad_id = int(em.tokenizer.convert_tokens_to_ids(dc.tokenizer.special_tokens["pad"]))
  completions: list = [None] * len(texts)
  new_tokens = 0
  t0 = time.perf_counter()
  for b, batch in enumerate(plan):
    mine = batches_lib.local_indices(batch, rows, em.mesh)
    width = prompts_lib.bucket_length(max(lengths[i] for i in batch), buckets)
    tokens, mask = prompts_lib.pad_left([texts[i]["prompt_ids"] for i in mine], width, pad_id)
    media = [encode.media(source[int(i)]) for i in mine]
    video, audio = experiment.standardize(np.stack([m["video"] for m in media]),
                                          np.stack([m["audio"] for m in media]),
                                          em.feature_stats)
    inputs = {"prompt_tokens": tokens, "prompt_mask": mask, "video": video, "audio": audio}
    if em.mesh is not None:
      inputs = distributed.global_batch(inputs, em.mesh, em.rules)
    with sharding.active(em.mesh, em.rules):
      out = generate_fn(em.params, inputs, jax.random.key(int(ucfg.seed) + b))
    out_tokens = distributed.host_value(out.tokens)
    out_lengths = distributed.host_value(out.lengths)
    for j, i in enumerate(batch):       # the real rows lead; the filler rows are dropped
      completions[i] = em.tokenizer.decode(out_tokens[j, :out_lengths[j]],
                                           skip_special_tokens=True)
      new_tokens += int(out_lengths[j])
  seconds = time.perf_counter() - t0
  stats = dict(batches_lib.padding_stats(plan, lengths, buckets, rows), compiled_rows=rows,
               generate_s=seconds, new_tokens=new_tokens,
               clips_per_s=len(texts) / seconds, tokens_per_s=new_tokens / seconds,
               bucketed=bool(ucfg.bucket_by_length))
  return SetRows([str(t["name"]) for t in texts],
                 [cut_response(t, ucfg) for t in completions],
                 [str(t["gt_text"]) for t in texts], [str(t["basic_label"]) for t in texts],
                 [float(t["valence"]) for t in texts], stats)


def score_set(task: str, rows: SetRows, cells: Sequence[str], polarity, tables) -> dict:
  """Module doc step 4: the set's scores in percent, its primary one under 'score'."""
  if task == "ov":
    s = metrics.ov_scores(rows.gt_text, list(cells), tables)
    out = {k: 100.0 * s[k] for k in ("ew_f", "ew_precision", "ew_recall")}
    out["n_scored"] = s["n_scored"]
  elif task == "hit":
    s = metrics.hit_scores(rows.basic_label, list(cells), tables)
    out = {"hit": 100.0 * s["hit"], "n_scored": s["n_scored"]}
  else:
    s = metrics.sentiment_scores(rows.valence, np.asarray(polarity) > 0)
    out = {"waf": 100.0 * s["waf"], "acc": 100.0 * s["acc"], "n_scored": s["n_scored"]}
  out["score"] = out[PRIMARY[task]]
  return out


def _write_csv(path: pathlib.Path, header, rows) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def write_set(out_dir: pathlib.Path, key: str, task: str, rows: SetRows, cells, polarity
              ) -> dict:
  """The files of the module doc; returns {kind: path}."""
  out_dir.mkdir(parents=True, exist_ok=True)
  files = {"predictions": out_dir / f"{key}.csv", "gt": out_dir / f"{key}_gt.csv",
           "completions": out_dir / f"{key}_completions.jsonl"}
  _write_csv(files["predictions"], ("name", "openset"), zip(rows.names, cells))
  if task == "ov":
    _write_csv(files["gt"], ("name", "openset"), zip(rows.names, rows.gt_text))
  elif task == "hit":
    _write_csv(files["gt"], ("name", "label"), zip(rows.names, rows.basic_label))
  else:
    _write_csv(files["gt"], ("name", "valence"), zip(rows.names, map(repr, rows.valence)))
    files["sentiment"] = out_dir / f"{key}_sentiment.csv"
    _write_csv(files["sentiment"], ("name", "sentiment"),
               zip(rows.names, (SENTIMENT_WORDS[int(p)] for p in polarity)))
  with open(files["completions"], "w", encoding="utf-8") as f:
    for name, text, cell in zip(rows.names, rows.completions, cells):
      f.write(json.dumps({"name": name, "completion": text, "openset": cell}) + "\n")
  return {k: str(v) for k, v in files.items()}


def evaluate_ablations(em: EvalModel, key: str, source, meta, generate_fn, labeler: Labeler,
                       ucfg, full: dict, out_dir, ablations: Sequence[Sequence[str]]) -> dict:
  """One set under each ablation (module doc 'Ablations'), after its full-model entry `full`;
  returns {ablation name: entry or {error}}."""
  out = {}
  for masked in ablations:
    t0 = time.perf_counter()
    task = full["task"]
    entry = {"dataset": full["dataset"], "task": task, "metric": full["metric"],
             "masked": list(masked)}
    try:
      prompt_cfg = data_config(em.config.data, ucfg).prompt
      rows = generate_set(em, source, meta, generate_fn,
                          ablation_lib.unibench_config(ucfg, prompt_cfg, masked))
      cells = labeler.cells(rows.completions)
      polarity = labeler.polarity(cells) if task == "sentiment" else None
      entry.update(score_set(task, rows, cells, polarity, labeler.tables),
                   n_samples=len(rows.names),
                   format_rate=100.0 * float(np.mean([labels_lib.format_ok(t)
                                                      for t in rows.completions])))
      entry["delta"] = entry["score"] - full["score"]
      if out_dir and jax.process_index() == 0:
        entry["files"] = write_set(pathlib.Path(out_dir) / ablation_lib.folder(masked), key,
                                   task, rows, cells, polarity)
    except Exception as e:  # pylint: disable=broad-except  (reported; the others go on)
      logging.warning("set %s, ablation %s failed:\n%s", key, ablation_lib.name(masked),
                      traceback.format_exc())
      entry["error"] = f"{type(e).__name__}: {e}"
    entry["seconds"] = time.perf_counter() - t0
    out[ablation_lib.name(masked)] = entry
  return out


def evaluate(em: EvalModel, data_dir: str, sets: Sequence[str], labeler: Labeler,
             cache_root: str | os.PathLike, out_dir: str | os.PathLike | None,
             ucfg: ml_collections.ConfigDict, ablations: Sequence[Sequence[str]] = ()) -> dict:
  """Every set of `sets` (module doc) under ucfg (the unibench section, with_protocol's), and
  again under each of `ablations` (ablation.parse's tuples of masked inputs: each set's entry
  then holds {ablation name: entry} under 'ablations'; ablation.summarize(result['sets'])
  gathers them); returns {sets: {key: result or {error}}, table, failed}."""
  cache_root = pathlib.Path(cache_root)
  generate_fn = evaluate_lib.make_generate(em.model, sampling_config(em, ucfg), mesh=em.mesh)
  results = {}
  for key in sets:
    t0 = time.perf_counter()
    task = mer.UNIBENCH[key].task
    entry = {"dataset": DISPLAY[key], "task": task, "metric": PRIMARY[task]}
    try:
      folder = find_set_dir(data_dir, key, ucfg)
      source, meta, report = load_set(em, key, folder, cache_root, ucfg)
      rows = generate_set(em, source, meta, generate_fn, ucfg)
      cells = labeler.cells(rows.completions)
      polarity = labeler.polarity(cells) if task == "sentiment" else None
      entry.update(score_set(task, rows, cells, polarity, labeler.tables), folder=folder,
                   n_samples=len(rows.names), **rows.stats,
                   skipped=report["splits"][ucfg.splits[key]]["skipped_by_reason"],
                   format_rate=100.0 * float(np.mean([labels_lib.format_ok(t)
                                                      for t in rows.completions])))
      if out_dir and jax.process_index() == 0:
        entry["files"] = write_set(pathlib.Path(out_dir), key, task, rows, cells, polarity)
    except Exception as e:  # pylint: disable=broad-except  (reported; the other sets go on)
      logging.warning("set %s failed:\n%s", key, traceback.format_exc())
      entry["error"] = f"{type(e).__name__}: {e}"
    entry["seconds"] = time.perf_counter() - t0
    if ablations and "error" not in entry:
      entry["ablations"] = evaluate_ablations(em, key, source, meta, generate_fn, labeler,
                                              ucfg, entry, out_dir, ablations)
    results[key] = entry
  scores = {r["dataset"]: r["score"] for r in results.values() if "error" not in r}
  table = metrics.unibench_table(scores)
  failed = [k for k, r in results.items() if "error" in r]
  return {"sets": results, "table": table, "mean": table["mean"], "failed": failed,
          "protocol": ucfg.get("protocol", "r1"), "extractor": labeler.extractor,
          "sentiment": labeler.sentiment,
          "ew_dir": labeler.tables.source, "data_dir": data_dir, "checkpoint": em.checkpoint}


def markdown(result: dict) -> str:
  """The table of the paper's order (a row per requested set) and the mean, as markdown."""
  order = {d: i for i, d in enumerate(metrics.UNIBENCH_DATASETS)}
  lines = ["| set | dataset | metric | score | clips |", "|---|---|---|---|---|"]
  for key, r in sorted(result["sets"].items(), key=lambda kv: order[kv[1]["dataset"]]):
    if "error" in r:
      text = r["error"].replace("|", "/").replace("\n", " ")
      lines.append(f"| {key} | {r['dataset']} | {r['metric'].upper()} | error: {text} | |")
    else:
      lines.append(f"| {key} | {r['dataset']} | {r['metric'].upper()} | {r['score']:.2f} | "
                   f"{r['n_samples']} |")
  done = len(result["table"]["rows"])
  note = "" if done == len(result["sets"]) else f" ({done} of {len(result['sets'])} sets)"
  lines.append(f"| **mean** | | | **{result['mean']:.2f}**{note} | |")
  return "\n".join(lines)
