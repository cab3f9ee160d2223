"""launch.evaluate on a mesh and on several processes equals one device.

Three runs of `python -m launch.evaluate` on the MER-UniBench folders of test_evaluate.py (the
open-set OV-MERD+ and the HIT set MELD, 3 clips each; MELD's subtitles of three lengths),
started together so they share the CPUs:
- one: 1 CPU device, batches in set order (--config.unibench.bucket_by_length=false);
- mesh: 8 fake devices, config.mesh = (2, 2, 2), batches grouped by prompt bucket;
- processes: 2 jax.distributed processes x 2 devices (gloo), config.mesh = (1, 2, 2), bucketed.
A batch of 2 clips (unibench.batch_size) divides neither the sets (3 clips: batches of 2 and 1)
nor the 8-device mesh (data x fsdp = 4: 2 or 3 filler rows per batch). Greedy decoding, so
the completions do not depend on which clips share a batch; the prompt buckets are one per
prompt length, so grouping by bucket reorders the batches (checked). References: the 1-device
run's written files and scores; the filler-row count from the plan's own arithmetic
(batches x compiled rows - clips).
"""
import csv
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from affect_jax.data import prompts as prompts_lib
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.eval import batches
from configs import demo
from tests.launch import test_evaluate as base
from tests.testlib import process as process_testlib

pytestmark = pytest.mark.slow    # three evaluations (one of 2 processes) side by side

SETS = ("ovmerdplus", "meld")
# MELD's subtitles rewritten to prompts of different lengths (a long one first).
MELD_SUBTITLES = ("I feel happy today, tomorrow and every single day after that one.",
                  "Worried.", "Sad.")
BATCH = 2
VOCAB = 1024       # >= the test tokenizer; a multiple of tensor = 2
RUNS = {"one": (1, 1, 1), "mesh": (2, 2, 2), "processes": (1, 2, 2)}
PROCESSES = 2
NEW_TOKENS = 12


def _subtitles(root):
  """{set: {clip name: subtitle}}."""
  with open(root / "data" / "OV-MERD+" / "subtitle_eng.csv", encoding="utf-8") as f:
    ov = dict(list(csv.reader(f))[1:])
  return {"ovmerdplus": ov, "meld": {f"meld_{i}": t for i, t in enumerate(MELD_SUBTITLES)}}


def _prompt_lengths(root, names):
  """{set: prompt lengths in the order of names[set]}, as the evaluation builds them (the
  subtitles through the data config's prompt)."""
  tok = tokenizer_lib.load_tokenizer(str(root / "tok"))
  dc = demo.get_config().data
  specials = dict(dc.tokenizer.special_tokens)
  return {k: [len(prompts_lib.encode_prompt(tok, v[n], dc.prompt, specials)) for n in names[k]]
          for k, v in _subtitles(root).items()}


def _command(root, name, buckets, mesh):
  out = root / name
  return [sys.executable, "-m", "launch.evaluate", f"--checkpoint={root / 'ckpt'}",
          f"--config.tokenizer_dir={root / 'tok'}", f"--cache_dir={out / 'cache'}",
          *base._flags(), f"--data_dir={root / 'data'}", "--extractor=rule",
          f"--sets={','.join(SETS)}", f"--config.unibench.batch_size={BATCH}",
          "--config.unibench.greedy=true", f"--config.unibench.max_new_tokens={NEW_TOKENS}", f"--config.model.llm.vocab_size={VOCAB}",
          f"--config.data.prompt.prompt_buckets={buckets}",
          f"--config.unibench.bucket_by_length={str(name != 'one').lower()}",
          f"--config.mesh.data={mesh[0]}", f"--config.mesh.fsdp={mesh[1]}",
          f"--config.mesh.tensor={mesh[2]}",
          f"--json_out={out / 'result.json'}", f"--predictions_out={out / 'preds'}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = base.make_bench(tmp_path_factory.mktemp("unibench_mesh"),
                         **{"model.llm.vocab_size": VOCAB})
  base._csv(root / "data" / "MELD" / "transcription-engchi-polish.csv",
            ("name", "chinese", "english"),
            [(f"meld_{i}", "中文", text) for i, text in enumerate(MELD_SUBTITLES)])
  buckets = sorted({n for v in _prompt_lengths(root, {k: sorted(v) for k, v in
                                                       _subtitles(root).items()}).values()
                     for n in v}) + [255]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR="")
  port = process_testlib.free_port()
  procs = {}
  for name, mesh in RUNS.items():
    command = _command(root, name, ",".join(map(str, buckets)), mesh)
    devices = math.prod(mesh) // (PROCESSES if name == "processes" else 1)
    flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    for i in range(PROCESSES if name == "processes" else 1):
      extra = ({"AFFECT_JAX_COORDINATOR": f"localhost:{port}",
                "AFFECT_JAX_NUM_PROCESSES": str(PROCESSES), "AFFECT_JAX_PROCESS_ID": str(i)}
               if name == "processes" else {})
      procs[f"{name}{i}"] = subprocess.Popen(
          command, cwd=base.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          env=dict(env, XLA_FLAGS=flags, **extra))
  t0 = time.perf_counter()
  logs = {}
  for name, p in procs.items():
    logs[name] = p.communicate(timeout=900)[0]
    print(f"{name}: done after {time.perf_counter() - t0:.0f} s")
  for name, p in procs.items():
    assert p.returncode == 0, f"{name} failed:\n{logs[name][-4000:]}"
  return root, buckets, logs


def _files(folder, key):
  out = {}
  for path in sorted(folder.glob(f"{key}*")):
    out[path.name] = path.read_text(encoding="utf-8")
  return out


def test_mesh_and_processes_equal_one_device(runs):
  root, buckets, logs = runs
  results = {n: json.loads((root / n / "result.json").read_text()) for n in RUNS}
  one = results["one"]
  # The set's order: the built records' (the 1-device run batches them in that order).
  order = {}
  for key in SETS:
    with open(root / "one" / "preds" / f"{key}.csv", encoding="utf-8") as f:
      order[key] = [r[0] for r in list(csv.reader(f))[1:]]
    assert sorted(order[key]) == sorted(_subtitles(root)[key]), key
  lengths = _prompt_lengths(root, order)
  # Grouping by bucket reorders some set's batches (the comparison is not in set order alone).
  assert any(not np.array_equal(np.concatenate(batches.plan_batches(v, buckets, BATCH, True)),
                                np.arange(3)) for v in lengths.values())
  for name in ("mesh", "processes"):
    assert not results[name]["failed"], results[name]["failed"]
    assert results[name]["mean"] == one["mean"]
    for key in SETS:
      a, b = one["sets"][key], results[name]["sets"][key]
      for field in ("score", "n_samples", "n_scored", "format_rate"):
        assert b[field] == a[field], (name, key, field)
      assert b["new_tokens"] == a["new_tokens"], (name, key)
      assert _files(root / name / "preds", key) == _files(root / "one" / "preds", key), key
  # Padding rows never reach a score or a file: the 3 clips of each set once each, in the
  # set's order (the files are the 1-device run's, compared above).
  for name, result in results.items():
    for key in SETS:
      entry = result["sets"][key]
      assert entry["n_samples"] == 3
      rows = {"one": BATCH, "mesh": 4, "processes": 2}[name]
      assert entry["compiled_rows"] == rows
      assert entry["filler_rows"] == entry["batches"] * rows - 3
      assert entry["batches"] == len(batches.plan_batches(lengths[key], buckets, BATCH,
                                                          name != "one"))
      assert 0.0 <= entry["padding_fraction"] < 1.0
      assert entry["clips_per_s"] > 0 and entry["tokens_per_s"] > 0
      print(f"{name} {key}: {entry['clips_per_s']:.2f} clips/s, {entry['tokens_per_s']:.1f} "
            f"tokens/s, padding {entry['padding_fraction']:.3f}, {entry['batches']} batches "
            f"of {rows} rows, {entry['generate_s']:.1f} s")
  # Process 1 neither prints the table nor writes (one result.json, from process 0).
  assert "| **mean**" in logs["processes0"] and "| **mean**" not in logs["processes1"]
