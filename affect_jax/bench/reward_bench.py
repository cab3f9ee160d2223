"""`launch.benchmark --bench=reward`: samples/s of the on-device EW reward vs the host metric.

Completions are generated deterministically in the R1 format,
"<think>{a sentence with 2-3 emotion words}</think><answer>{1-4 labels}</answer>", from the
wheel's surface forms (lower case, Capitalized or Title Case), with 1-3 ground-truth labels
that partly overlap the answer. They are tokenized once (default: the byte-level BPE tokenizer
built from the wheel vocabulary, reward_tables.wheel_tokenizer) and padded to the longest.

- device_samples_per_s: batch / median steady-state seconds of the jitted reward (the same
  `total.row_local_rewards` the GRPO step calls, jitted on its own with the compiler options
  launch.benchmark passes, as launch.score does; listed in compiler_options), compile time
  reported apart (compile_s); with several devices the rows are split over them and each
  device scores its own (launch.benchmark gives the reward bench one host CPU device per core
  unless --cpu_devices says otherwise; `devices` is the number used). 200 calls by default:
  one call takes a few ms, and on a shared 2-core machine the median of 10 moved by up to 2x
  between runs.
- host_samples_per_s: the plain-Python per-sample implementation of the official metric
  (metrics.official_completion_reward: parse <answer>, map every label through the format /
  synonym / wheel dicts with sorted candidates, as the official code does) on the same
  completions as text; host_decode_samples_per_s adds tokenizer.decode of the token ids.
- speedup = device / host (medians); speedup_best from the fastest runs of each;
  max_abs_diff: device accuracy vs the host metric on the timed rows.
"""
from __future__ import annotations

import time

import numpy as np

from affect_jax.bench import timing
from affect_jax.emotion import metrics, wheel

_TEMPLATES = (
    "The speaker's voice is {a} and a bit {b}; the face looks {c}.",
    "She frowns, sounds {a}, then smiles; maybe {b} underneath.",
    "His tone is low and {a}. The words suggest he feels {b} and {c}.",
    "Subtitle and audio agree: {a}, with hints of {b}.",
)


def make_completions(tables: wheel.EwTables, batch: int, seed: int = 0):
  """(completions, ground-truth cells): deterministic R1-style texts (module doc)."""
  rng = np.random.default_rng(seed)
  surfaces = list(tables.surfaces)
  styles = (str, str.capitalize, str, str.title)
  texts, gts = [], []
  for _ in range(batch):
    gt = list(rng.choice(surfaces, size=int(rng.integers(1, 4)), replace=False))
    keep = [g for g in gt if rng.random() < 0.6]
    extra = list(rng.choice(surfaces, size=int(rng.integers(0, 3)), replace=False))
    answer = (keep + extra) or [str(rng.choice(surfaces))]
    pick = lambda: str(rng.choice(answer + list(rng.choice(surfaces, 2))))
    think = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(a=pick(), b=pick(), c=pick())
    style = styles[int(rng.integers(len(styles)))]
    texts.append(f"<think>{think}</think><answer>{', '.join(style(a) for a in answer)}</answer>")
    gts.append(", ".join(gt))
  return texts, gts


def _pad(encoded, multiple: int = 8):
  n = max(len(e) for e in encoded)
  n = -(-n // multiple) * multiple
  ids = np.zeros((len(encoded), n), np.int32)
  for i, e in enumerate(encoded):
    ids[i, :len(e)] = e
  return ids, np.array([len(e) for e in encoded], np.int32)


def run(*, reward_config, tokenizer_config, compiler_options=None, batch: int = 4096,
        ew_dir: str | None = None, seed: int = 0, runs: int = 200, host_samples: int = 2000,
        host_runs: int = 3, tokenizer_dir: str | None = None, **_) -> dict:
  """Runs the reward benchmark; returns the JSON-ready result (module doc).

  reward_config: the reward section (configs/reward.py); tokenizer_config: the data.tokenizer
  section the wheel tokenizer is built with (when tokenizer_dir is not given);
  compiler_options: XLA options of the jitted reward (launch.benchmark chooses them).
  """
  import jax
  from affect_jax.rewards import ew_tables as reward_tables, registry, total
  from affect_jax.rewards.terms import emotion_wheel as ew_term
  if batch < 1 or host_samples < 1:
    raise ValueError(f"batch={batch}, host_samples={host_samples}: both must be >= 1.")
  cfg = total.RewardConfig.from_config(reward_config)
  tables = wheel.load_tables(ew_dir)
  if tokenizer_dir:
    from transformers import PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
  else:
    tokenizer = reward_tables.wheel_tokenizer(tables, tokenizer_config)
  texts, gts = make_completions(tables, batch, seed)
  encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
  ids, lengths = _pad(encoded)
  gt_ids, n_gt = ew_term.gt_arrays(gts, tables, cfg.analysis("ew").max_gt_labels)

  start = time.perf_counter()
  device_tables = total.setup(cfg, registry.Context(tokenizer, tables))
  table_build_s = time.perf_counter() - start
  args = [ids, lengths, {"gt_ids": gt_ids, "n_gt": n_gt}]
  devices = jax.devices()
  if len(devices) > 1 and batch % len(devices) == 0:
    # Rows split over the devices, each scoring its own (total.row_local_rewards), as in
    # the GRPO step.
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    args = [jax.device_put(a, rows) for a in args]
    device_tables = jax.device_put(device_tables, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
  else:
    mesh = None
    args = [jax.device_put(a) for a in args]
  fn = jax.jit(lambda t, i, l, r: total.row_local_rewards(i, l, r, t, cfg, mesh=mesh),
               compiler_options=compiler_options)
  device_timing, out = timing.time_jitted(fn, device_tables, *args, runs=runs)
  accuracy = np.asarray(out["accuracy"])

  maps = wheel.official_maps(wheel.read_files(ew_dir))
  count = min(host_samples, batch)
  host_values = []
  host_timing = timing.time_host(
      lambda: host_values.append([metrics.official_completion_reward(gts[i], texts[i], maps)
                                  for i in range(count)]), runs=host_runs)
  decode_timing = timing.time_host(
      lambda: [metrics.official_completion_reward(
          gts[i], reward_tables.decode(tokenizer, ids[i, :lengths[i]]), maps)
               for i in range(count)], runs=host_runs)
  host = np.array(host_values[-1])
  device_rate = batch / device_timing.median_s
  host_rate = count / host_timing.median_s
  return {
      "bench": "reward", "batch": batch, "seq_len": int(ids.shape[1]),
      "mean_tokens": float(lengths.mean()), "devices": mesh.size if mesh else 1,
      "device_samples_per_s": round(device_rate, 1),
      "device_step_s": device_timing.median_s, "device_step_min_s": device_timing.min_s,
      "compile_s": round(device_timing.compile_s, 3), "table_build_s": round(table_build_s, 3),
      "host_samples_per_s": round(host_rate, 1),
      "host_decode_samples_per_s": round(count / decode_timing.median_s, 1),
      "host_samples": count, "speedup": round(device_rate / host_rate, 2),
      "speedup_best": round((batch / device_timing.min_s) / (count / host_timing.min_s), 2),
      "max_abs_diff": float(np.max(np.abs(accuracy[:count] - host))),
      "ew_dir": tables.source, "runs": runs, "compiler_options": compiler_options,
  }
