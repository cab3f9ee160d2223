"""launch.evaluate on MER-UniBench-format folders the test writes (all 9 label formats, real mp4
and wav files) with a small random model: the table's scores equal `launch.score` on the
written predictions; bad inputs are clear errors, a failing set does not stop the others.

References: launch.score rescoring the written CSVs (ov, hit, sentiment), the fixture's own
label values (MELD and IEMOCAP ids mapped by hand in the official readers' orders; IEMOCAP's
test set is session 5, official iemocap.py), and plain means.
"""
import csv
import json
import os
import pathlib
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
import soundfile

from affect_jax import sharding
from affect_jax.checkpoints import params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.data import prompts as prompts_lib
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.models import affectgpt
from affect_jax.eval import model as eval_model, unibench
from affect_jax import experiment
from configs import demo
from launch import score

ROOT = pathlib.Path(__file__).resolve().parents[2]
FRAME, RATE = 24, 8000
# A small model and short generations (the same settings in-process and on the command line).
SETTINGS = {"features.standardize": False, "model.llm.num_hidden_layers": 2,
            "model.vision.num_hidden_layers": 1, "model.audio.num_hidden_layers": 1,
            "data.media.num_frames": 2, "data.media.num_windows": 2,
            "data.media.window_seconds": 0.5, "unibench.max_new_tokens": 24,
            "unibench.batch_size": 4, "unibench.greedy": False}
WORDS = ["happy", "worried", "sad", "angry", "calm", "excited", "surprise", "tense", "joy"]
# (folder, label file, corpus, entries): every MER-UniBench label format.
BASIC = [("MER2023", "label-6way.npz", "test1_corpus", ["happy", "worried", "neutral"]),
         ("mer2024", "label-6way.npz", "test1_corpus", ["angry", "sad", "surprise"]),
         ("MELD", "label.npz", "test_corpus", [1, 2, 0]),
         ("IEMOCAPFour", "label_4way.npz", "whole_corpus", [1, 0, 3])]
VALENCE = [("CMU-MOSI", [-1.5, 2.0, 0.0]), ("CMU-MOSEI", [0.5, -0.4, 1.0]),
           ("SIMS", [-0.8, 0.6, -0.2]), ("SIMSv2", [0.2, 0.0, -1.0])]
OV = {"ov1": "[happy, excited]", "ov2": "sad,worried", "ov3": ""}
MELD_WORDS = {0: "anger", 1: "joy", 2: "sadness"}     # PAPER_NOTES.md section 6
IEMOCAP_WORDS = {0: "happy", 1: "sad", 2: "neutral", 3: "anger"}   # official iemocap.py
# IEMOCAP keeps every clip in whole_corpus: the session-5 clips (BASIC's entries) are the test
# set; these session 1-4 clips are training clips and must not be scored.
IEMOCAP_TEST = ["Ses05F_impro01_F000", "Ses05M_script02_1_M011", "Ses05F_impro03_F002"]
IEMOCAP_TRAIN = {"Ses01F_impro01_F000": 1, "Ses04M_impro02_M001": 0}


def _csv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _clips(folder, names, seed):
  for i, name in enumerate(names):
    rng = np.random.default_rng(seed + i)
    os.makedirs(folder / "video", exist_ok=True)
    os.makedirs(folder / "audio", exist_ok=True)
    w = cv2.VideoWriter(str(folder / "video" / f"{name}.mp4"),
                        cv2.VideoWriter_fourcc(*"mp4v"), 5, (FRAME, FRAME))
    for _ in range(4):
      w.write(rng.integers(0, 255, (FRAME, FRAME, 3), dtype=np.uint8))
    w.release()
    soundfile.write(str(folder / "audio" / f"{name}.wav"),
                    0.3 * rng.standard_normal(RATE // 2), RATE, subtype="PCM_16")


def _subtitles(folder, names):
  _csv(folder / "transcription-engchi-polish.csv", ("name", "chinese", "english"),
       [(n, "中文", f"I feel {WORDS[i]} today.") for i, n in enumerate(names)])


def _write_unibench(root: pathlib.Path):
  d = root / "OV-MERD+"
  d.mkdir(parents=True)
  _clips(d, list(OV), 0)
  _csv(d / "ovlabel.csv", ("name", "openset"), OV.items())
  _csv(d / "subtitle_eng.csv", ("name", "sentence"), [(n, f"Subtitle of {n}.") for n in OV])
  for k, (folder, file, corpus, emos) in enumerate(BASIC):
    d = root / folder
    d.mkdir()
    names = [f"{folder.lower()}_{i}" for i in range(3)]
    corpora = {corpus: {n: {"emo": e} for n, e in zip(names, emos)},
               "train_corpus": {"other": {"emo": emos[0]}}}
    if corpus == "whole_corpus":     # IEMOCAP's official format (val -10: none)
      corpora = {corpus: {n: {"emo": e, "val": -10} for n, e in
                          [*zip(IEMOCAP_TEST, emos), *IEMOCAP_TRAIN.items()]}}
      names = list(corpora[corpus])
    _clips(d, names, 10 * (k + 1))
    _subtitles(d, names)
    np.savez(d / file, **corpora)
  for k, (folder, vals) in enumerate(VALENCE):
    d = root / folder
    d.mkdir()
    names = [f"{folder.lower()}_{i}" for i in range(3)]
    _clips(d, names, 100 + 10 * k)
    _subtitles(d, names)
    np.savez(d / "label.npz", test_corpus={n: {"val": v} for n, v in zip(names, vals)})


def _config(tok_dir, **changes):
  c = demo.get_config()
  c.tokenizer_dir = str(tok_dir)
  for key, value in {**SETTINGS, **changes}.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _flags(**changes):
  return [f"--config.{k}={v}" for k, v in {**SETTINGS, **changes}.items()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  """UniBench folder, the decoder's tokenizer and a launch.convert-style checkpoint."""
  return make_bench(tmp_path_factory.mktemp("unibench"))


def make_bench(root: pathlib.Path, **changes) -> pathlib.Path:
  """The `bench` fixture's folder under root, the model of _config(tok, **changes)."""
  _write_unibench(root / "data")
  dc = demo.get_config().data
  texts = [prompts_lib.example_text(f"I feel {w} today.", [w, WORDS[i - 1]], f"The voice is {w}.",
                                    dc.prompt, dict(dc.tokenizer.special_tokens))
           for i, w in enumerate(WORDS)]
  tok = tokenizer_lib.build_from_config(texts * 3, dc.tokenizer)
  tok.save_pretrained(root / "tok")
  model = experiment.model_config(_config(root / "tok", **changes), tok)
  # Random weights of the model's shapes (norm scales 1), without compiling the initialiser.
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(lambda k: sharding.unbox(affectgpt.init(model, k)), jax.random.key(1))
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: np.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(path)
      else (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  params_io.save(root / "ckpt", params, {"components": {}})
  return root


def _evaluate(bench, *args):
  """launch.evaluate on one CPU device (config.mesh over every device: the one)."""
  return subprocess.run(
      [sys.executable, "-m", "launch.evaluate", f"--checkpoint={bench / 'ckpt'}",
       f"--config.tokenizer_dir={bench / 'tok'}", f"--cache_dir={bench / 'cache'}", *_flags(),
       *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))


@pytest.fixture(scope="module")
def full_run(bench):
  out = bench / "full"
  proc = _evaluate(bench, f"--data_dir={bench / 'data'}", "--extractor=rule",
                   f"--json_out={out / 'result.json'}", f"--predictions_out={out / 'preds'}")
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc, json.loads((out / "result.json").read_text()), out / "preds"


def _rescore(preds, key, task):
  """launch.score on the written files: (its score of the set's primary metric, its JSON)."""
  result = score.score(str(preds / f"{key}_gt.csv"), str(preds / f"{key}.csv"), task)
  return result[{"ov": "ew_f", "hit": "hit", "sentiment": "waf"}[task]], result


def test_table_scores_equal_launch_score(full_run):
  proc, result, preds = full_run
  table = proc.stdout[proc.stdout.index("| set |"):].splitlines()
  rows = [line for line in table if line.startswith("| ") and "---" not in line]
  assert [r.split("|")[2].strip() for r in rows[1:-1]] == [
      "MER2023", "MER2024", "MELD", "IEMOCAP", "CMU-MOSI", "CMU-MOSEI", "CH-SIMS",
      "CH-SIMS v2", "OV-MERD+"]
  assert rows[-1].startswith("| **mean**")
  expected = {}
  for key, entry in result["sets"].items():
    assert "error" not in entry, entry
    assert entry["n_samples"] == 3
    value, rescored = _rescore(preds, key, entry["task"])
    assert entry["score"] == pytest.approx(value, abs=1e-3), key
    expected[entry["dataset"]] = value
    if entry["task"] == "sentiment":
      assert entry["acc"] == pytest.approx(rescored["acc"], abs=1e-3)
      # The written sentiment words give the same WAF as the labels they came from.
      words = score.score(str(preds / f"{key}_gt.csv"), str(preds / f"{key}_sentiment.csv"),
                          "sentiment")
      assert words["waf"] == pytest.approx(value, abs=1e-3)
    if entry["task"] == "ov":
      assert entry["ew_precision"] == pytest.approx(rescored["ew_precision"], abs=1e-3)
      assert entry["ew_recall"] == pytest.approx(rescored["ew_recall"], abs=1e-3)
  assert result["mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-3)
  assert result["table"]["complete"] and not result["failed"]
  assert any(v > 0 for v in expected.values())      # the comparison is not all zeros
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["mean"] == pytest.approx(result["mean"]) and summary["failed"] == {}
  assert f"{result['mean']:.2f}" in rows[-1]


def test_written_ground_truth_is_the_fixture_labels(full_run):
  _, _, preds = full_run
  def read(key):
    with open(preds / f"{key}_gt.csv", encoding="utf-8") as f:
      return {r[0]: r[1] for r in list(csv.reader(f))[1:]}
  assert read("meld") == {f"meld_{i}": MELD_WORDS[e] for i, e in enumerate(BASIC[2][3])}
  assert read("iemocapfour") == {n: IEMOCAP_WORDS[e] for n, e in zip(IEMOCAP_TEST, BASIC[3][3])}
  assert {k: float(v) for k, v in read("sims").items()} == pytest.approx(
      {f"sims_{i}": v for i, v in enumerate(VALENCE[2][1])})
  assert read("ovmerdplus") == {"ov1": "happy, excited", "ov2": "sad, worried", "ov3": ""}


def test_launch_score_cli_agrees(full_run):
  _, result, preds = full_run
  for key, task in (("ovmerdplus", "ov"), ("mer2023", "hit"), ("cmumosi", "sentiment")):
    proc = subprocess.run([sys.executable, "-m", "launch.score", f"--gt={preds / f'{key}_gt.csv'}",
                           f"--pred={preds / f'{key}.csv'}", f"--task={task}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    metric = {"ov": "ew_f", "hit": "hit", "sentiment": "waf"}[task]
    assert out[metric] == pytest.approx(result["sets"][key]["score"], abs=1e-3)


def test_failing_sets_are_reported_and_the_others_run(bench, full_run):
  bad = bench / "bad"
  bad.mkdir()
  os.symlink(bench / "data" / "MELD", bad / "meld")
  (bad / "ovmerdplus").mkdir()                       # labels file of the wrong format
  _csv(bad / "ovmerdplus" / "ovlabel.csv", ("name", "label"), [("ov1", "happy")])
  (bad / "mer2023").mkdir()                           # an .npz without corpora
  np.savez(bad / "mer2023" / "label-6way.npz", labels=np.array([1, 2]))
  proc = _evaluate(bench, f"--data_dir={bad}", "--extractor=rule",
                   "--sets=meld,ovmerdplus,sims,mer2023", f"--json_out={bad / 'r.json'}")
  assert proc.returncode == 1, proc.stderr[-3000:]
  result = json.loads((bad / "r.json").read_text())
  assert sorted(result["failed"]) == ["mer2023", "ovmerdplus", "sims"]
  errors = {k: result["sets"][k]["error"] for k in result["failed"]}
  assert "ovlabel.csv" in errors["ovmerdplus"] and "openset" in errors["ovmerdplus"]
  assert "label-6way.npz" in errors["mer2023"] and "_corpus" in errors["mer2023"]
  assert str(bad) in errors["sims"] and "--sets" in errors["sims"]
  # MELD is still scored, as in the full run (same model, clips and seed).
  assert result["sets"]["meld"]["score"] == pytest.approx(
      full_run[1]["sets"]["meld"]["score"], abs=1e-6)
  assert proc.stdout.count("error:") == 3 and "(1 of 4 sets)" in proc.stdout


def test_checkpoint_of_another_architecture_is_a_clear_error(bench, tmp_path):
  config = _config(bench / "tok", **{"model.llm.hidden_size": 64, "model.fusion.llm_dim": 64})
  with pytest.raises(CheckpointError, match=r"--checkpoint=.*ckpt.*shapes differ.*--config="):
    eval_model.load(config, str(bench / "ckpt"), tmp_path / "cache")
  with pytest.raises(CheckpointError, match="neither a launch.convert checkpoint"):
    eval_model.load(_config(bench / "tok"), str(tmp_path), tmp_path / "cache")
  proc = _evaluate(bench, f"--data_dir={bench / 'data'}", "--config.model.llm.num_hidden_layers=3",
                   "--sets=meld")
  assert proc.returncode == 2 and "launch.evaluate: error:" in proc.stderr
  assert str(bench / "ckpt") in proc.stderr and "--config=" in proc.stderr


def test_checkpoint_forms(tmp_path):
  run = tmp_path / "run"
  for phase in ("sft", "grpo"):
    (run / "checkpoints" / phase / "10" / "meta").mkdir(parents=True)
  assert eval_model.resolve_checkpoint(run) == run / "checkpoints" / "grpo"
  assert eval_model.resolve_checkpoint(run / "checkpoints" / "sft") == run / "checkpoints" / "sft"
  with pytest.raises(CheckpointError, match="no such folder"):
    eval_model.resolve_checkpoint(tmp_path / "missing")
  multi = tmp_path / "demo"                        # launch.grpo with config.seeds
  for seed in (0, 1):
    (multi / f"seed_{seed}" / "checkpoints" / "grpo" / "10" / "meta").mkdir(parents=True)
  with pytest.raises(CheckpointError, match=r"multi-seed run .*\(seed_0, seed_1\).*"
                                            r"--checkpoint=.*seed_0"):
    eval_model.resolve_checkpoint(multi)
  assert eval_model.resolve_checkpoint(multi / "seed_1") == multi / "seed_1/checkpoints/grpo"


def test_set_names_and_folders(tmp_path):
  ucfg = demo.get_config().unibench
  assert unibench.parse_sets("MELD, sims,meld") == ("meld", "sims")
  with pytest.raises(ValueError, match="unknown set.*mosi2"):
    unibench.parse_sets("mosi2")
  for name in ("OV-MERD+", "CH-SIMS v2", "cmu_mosei"):
    (tmp_path / name).mkdir()
  assert unibench.find_set_dir(str(tmp_path), "ovmerdplus", ucfg).endswith("OV-MERD+")
  assert unibench.find_set_dir(str(tmp_path), "simsv2", ucfg).endswith("CH-SIMS v2")
  assert unibench.find_set_dir(str(tmp_path), "cmumosei", ucfg).endswith("cmu_mosei")
  with pytest.raises(FileNotFoundError, match="no folder for MELD"):
    unibench.find_set_dir(str(tmp_path), "meld", ucfg)


def _official_stops(tok):
  """inference_hybird.py's Chat: the first id of '###', and the ids of 'a##' / 'a#' after 'a'
  in both orders."""
  ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]
  two, one = ids("a##")[1], ids("a#")[1]
  return {(ids("###")[0],), (one, two), (two, one)}


def test_protocols_set_the_official_generation(bench):
  config = _config(bench / "tok", **{"data.prompt.question": "What now?"})
  tok = tokenizer_lib.load_tokenizer(str(bench / "tok"))
  em = type("Em", (), {"config": config, "tokenizer": tok})
  base = config.unibench
  assert base.protocol == "r1"
  r1 = unibench.with_protocol(base, "r1")
  assert r1 == unibench.with_protocol(base, "r1") and r1.extractor == "answer"
  s = unibench.sampling_config(em, r1)
  assert (s.greedy, s.max_new_tokens, s.stop_sequences, s.top_k) == (False, 24, (), 0)
  assert unibench.cut_response("  a ### b ", r1) == "  a ### b "
  dc = unibench.data_config(config.data, r1)
  assert dc.prompt.question == "What now?"
  # affectgpt: inference_hybird.py answer_sample (sampling, temperature 1, top-p 0.9, 1,200
  # new tokens, stop at '###'; top-k 20 from Qwen2.5-Instruct's generation_config.json).
  ag = unibench.with_protocol(base, "affectgpt")
  s = unibench.sampling_config(em, ag)
  assert (s.greedy, s.temperature, s.top_p, s.top_k, s.max_new_tokens,
          s.repetition_penalty) == (False, 1.0, 0.9, 20, 1200, 1.0)
  assert set(s.stop_sequences) == _official_stops(tok)
  assert (ag.extractor, ag.sentiment, ag.llm.parsing) == ("llm", "llm", "official")
  assert base.extractor == "answer" and base.llm.parsing == "lenient"     # base unchanged
  # answer_sample: text before the last '###', after the last 'Assistant:', stripped.
  assert unibench.cut_response(" x ### Assistant: happy ### y", ag) == "happy"
  assert unibench.cut_response(" He is sad.\n", ag) == "He is sad."
  dc = unibench.data_config(config.data, ag)
  specials = dict(dc.tokenizer.special_tokens)
  text = prompts_lib.prompt_text("I am fine.", dc.prompt, specials)
  assert text.endswith("Please recognize all possible emotional states of the character."
                       + dc.prompt.assistant)
  assert config.data.prompt.question == "What now?"                      # config unchanged
  # answer_sample sends "###Human: ..." with no <bos>; r1 keeps the data config's <bos>.
  bos = tok.convert_tokens_to_ids(specials["bos"])
  body = tok(text, add_special_tokens=False)["input_ids"]
  assert prompts_lib.encode_prompt(tok, "I am fine.", dc.prompt, specials) == body
  r1_prompt = unibench.data_config(config.data, r1).prompt
  assert r1_prompt.generation_bos and config.data.prompt.generation_bos
  assert prompts_lib.encode_prompt(tok, "I am fine.", r1_prompt, specials)[0] == bos
  misspelt = unibench.with_protocol(base, "r1")
  misspelt.prompt.bso = False
  with pytest.raises(ValueError, match=r"unknown data.prompt field\(s\) \['bso'\]"):
    unibench.data_config(config.data, misspelt)
  with pytest.raises(ValueError, match="--protocol=r2"):
    unibench.with_protocol(base, "r2")


def test_official_sentiment_reading_counts_other_answers_as_wrong():
  """evaluation.py maps an answer that is not exactly a candidate to 0 and scores
  y_hat = pred > 0 on every sample with a non-zero valence (none dropped)."""
  from affect_jax.eval import llm_extract
  answers = ["positive", "Positive.", "positive, negative", "negative", "Negative"]
  valence = [1.0, 2.0, 0.5, -1.0, 0.0]
  polarity = [llm_extract.official_polarity(a, ("positive", "negative", "neutral"))
              for a in answers]
  rows = unibench.SetRows(["a", "b", "c", "d", "e"], answers, [""] * 5, [""] * 5, valence)
  out = unibench.score_set("sentiment", rows, [""] * 5, np.asarray(polarity), None)
  # y = [1, 1, 1, 0], y_hat = [1, 0, 0, 0]: class 1 F1 = 2*1*(1/3)/(4/3) = 0.5 (support 3),
  # class 0 F1 = 2*(1/3)*1/(4/3) = 0.5 (support 1) -> weighted 0.5; accuracy 2 / 4.
  assert out["n_scored"] == 4
  assert out["waf"] == pytest.approx(50.0) and out["acc"] == pytest.approx(50.0)


def test_protocol_flag(bench, full_run):
  assert full_run[1]["protocol"] == "r1"
  proc = _evaluate(bench, f"--data_dir={bench / 'data'}", "--protocol=affectgpt", "--sets=meld")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "launch.evaluate: error:" in proc.stderr and "--extractor_checkpoint" in proc.stderr
  out = bench / "affectgpt"
  proc = _evaluate(bench, f"--data_dir={bench / 'data'}", "--protocol=affectgpt",
                   "--extractor=rule", "--sentiment=wheel", "--sets=ovmerdplus",
                   "--config.unibench.protocols.affectgpt.max_new_tokens=24",
                   f"--json_out={out / 'r.json'}", f"--predictions_out={out / 'preds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "r.json").read_text())
  assert result["protocol"] == "affectgpt" and result["extractor"] == "rule"
  value, _ = _rescore(out / "preds", "ovmerdplus", "ov")
  assert result["sets"]["ovmerdplus"]["score"] == pytest.approx(value, abs=1e-3)
  with open(out / "preds" / "ovmerdplus_completions.jsonl", encoding="utf-8") as f:
    texts = [json.loads(line)["completion"] for line in f]
  assert len(texts) == 3 and all(t == t.strip() and "###" not in t for t in texts)


def test_a_config_without_unibench_section_gets_its_defaults_at_loading():
  """launch.evaluate fills in configs/unibench.py's section (the library takes it as given)."""
  from configs import unibench as unibench_config
  from launch import evaluate
  c = demo.get_config()
  del c["unibench"]
  assert evaluate.unibench_section(c).to_dict() == unibench_config.get_unibench_config().to_dict()
  assert evaluate.unibench_section(demo.get_config()).batch_size == 32     # demo's own section


ABLATED_SETS = ("mer2023", "cmumosi", "ovmerdplus")    # one set of each task


def test_ablation_scores_each_masked_prompt_beside_the_full_model(bench, full_run):
  """--ablate=audio,subtitle: the full model as in the full run, then each set again with that
  input's prompt block left out; every ablated score equals launch.score on its sub-folder's
  files, and its delta is that score minus the full model's."""
  out = bench / "ablate"
  proc = _evaluate(bench, f"--data_dir={bench / 'data'}", "--extractor=rule",
                   f"--sets={','.join(ABLATED_SETS)}", "--ablate=audio,subtitle",
                   f"--json_out={out / 'r.json'}", f"--predictions_out={out / 'preds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "r.json").read_text())
  full = {k: result["sets"][k]["score"] for k in ABLATED_SETS}
  # The full model's scores are the full run's (same model, clips and seed).
  assert full == pytest.approx({k: full_run[1]["sets"][k]["score"] for k in ABLATED_SETS},
                               abs=1e-6)
  assert list(result["ablations"]) == ["audio", "subtitle"]
  changed = 0
  for name in ("audio", "subtitle"):
    summary = result["ablations"][name]
    values = {}
    for key in ABLATED_SETS:
      task = result["sets"][key]["task"]
      values[key], _ = _rescore(out / "preds" / f"no_{name}", key, task)
      entry = result["sets"][key]["ablations"][name]
      assert entry["score"] == pytest.approx(values[key], abs=1e-3)
      assert summary["sets"][key]["delta"] == pytest.approx(values[key] - full[key], abs=1e-3)
      read = lambda p: [json.loads(line)["completion"] for line in open(p, encoding="utf-8")]
      changed += read(out / "preds" / f"no_{name}" / f"{key}_completions.jsonl") != read(
          out / "preds" / f"{key}_completions.jsonl")
    assert summary["mean"] == pytest.approx(np.mean(list(values.values())), abs=1e-3)
    assert summary["mean_delta"] == pytest.approx(summary["mean"] - result["mean"], abs=1e-3)
    assert summary["failed"] == [] and summary["complete"] is False
  assert changed > 0                     # the masked prompts gave other completions
  table = proc.stdout[proc.stdout.index("| set | dataset | metric | full |"):].splitlines()
  assert table[0] == "| set | dataset | metric | full | no audio | no subtitle |"
  mer = result["sets"]["mer2023"]
  delta = mer["ablations"]["audio"]["delta"]
  assert table[2].startswith(f"| mer2023 | MER2023 | HIT | {mer['score']:.2f} | "
                             f"{mer['ablations']['audio']['score']:.2f} ({delta:+.2f}) |")
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["ablations"]["subtitle"]["mean"] == pytest.approx(
      result["ablations"]["subtitle"]["mean"])
  # An unknown input is one clear error, before any work.
  proc = _evaluate(bench, f"--data_dir={bench / 'data'}", "--ablate=audio,face")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "launch.evaluate: error: --ablate=audio,face: unknown input(s) ['face']" in proc.stderr


def test_cache_root_of_a_seed_run_is_the_shared_data(tmp_path):
  """launch.evaluate / launch.predict on runs/demo/seed_0 reuse the data the seeds share
  (runs/demo/data) instead of building the sets again in the seed's folder."""
  from launch import evaluate as evaluate_cli
  config = demo.get_config()
  seed = tmp_path / "demo" / "seed_0"
  (seed / "checkpoints").mkdir(parents=True)
  assert evaluate_cli.cache_root(config, str(seed), None) == seed / "data"   # no shared data yet
  (tmp_path / "demo" / "data").mkdir()
  assert evaluate_cli.cache_root(config, str(seed), None) == tmp_path / "demo" / "data"
  assert evaluate_cli.cache_root(config, str(seed), "/x") == pathlib.Path("/x")
  single = tmp_path / "run"                      # a one-seed run keeps its own data folder
  (single / "checkpoints").mkdir(parents=True)
  assert evaluate_cli.cache_root(config, str(single), None) == single / "data"
