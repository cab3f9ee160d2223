"""The recipe over several seeds, and their spread: what `python -m launch.grpo` runs for the demo.

  summary = run(config, workdir, seeds=(0, 1, 2))

One run of a small model on a small evaluation set says little: its held-out EW-F moves by
several points with the seed alone. So the demo trains several seeds and reports each one
beside the mean and the spread.

Seed s runs the whole recipe (`recipe.run`: SFT, eval, GRPO, eval) with config.seed = s, which
draws the model's random init (the frozen encoders included, so each seed encodes the clips
with its own random towers), the data order and the rollouts' samples, in <workdir>/seed_<s>.
The seeds share the generated data and the tokenizer (config.data.cache_dir, default
<workdir>/data). Each seed's folder is a complete run (checkpoints, metrics.jsonl, eval files,
summary.json), so `launch.evaluate --checkpoint=<workdir>/seed_<s>` reads it. Rerunning with
the same workdir resumes every seed where it stopped.

<workdir>/summary.json holds `per_seed` (each seed's SFT and GRPO EW-F and gain), the means as
`sft_eval_ew_f`, `grpo_eval_ew_f` and `gain_ew_f`, and their spread (`*_std`: the sample
standard deviation over seeds, `*_min`, `*_max`). <workdir>/curves.png draws every seed's
curves in one figure.
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import time
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from affect_jax.train import recipe
from affect_jax.train import run_log

SCORES = ("sft_eval_ew_f", "grpo_eval_ew_f", "gain_ew_f")


def check_seeds(seeds: Sequence) -> tuple[int, ...]:
  """The seeds as a tuple of distinct non-negative ints, or one error naming config.seeds."""
  try:
    out = tuple(seeds)
  except TypeError:
    out = None
  if (not out or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
                     for s in out) or len(set(out)) != len(out)):
    raise ValueError(f"config.seeds={seeds!r}: use a non-empty tuple of distinct non-negative "
                     "ints, e.g. --config.seeds='(0, 1, 2)'.")
  return tuple(int(s) for s in out)


def seed_dir(workdir: str | os.PathLike, seed: int) -> pathlib.Path:
  return pathlib.Path(workdir) / f"seed_{seed}"


def seed_config(config: ml_collections.ConfigDict, seed: int,
                workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """config with seed = `seed` and the data cache shared by the seeds (<workdir>/data unless
  config.data.cache_dir names one)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = seed
    if not c.data.get("cache_dir", ""):
      c.data.cache_dir = str(workdir / "data")
  return c


def spread(values: Sequence[float]) -> dict:
  """Mean, sample standard deviation (0 for one value), min and max."""
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max())}


def aggregate(per_seed: Sequence[Mapping]) -> dict:
  """The summary fields of several seeds' summaries (module doc)."""
  out: dict = {"seeds": [int(s["seed"]) for s in per_seed], "per_seed": list(per_seed)}
  if per_seed and "eval_clips" in per_seed[0]:
    out["eval_clips"] = per_seed[0]["eval_clips"]     # the seeds share the evaluation set
  for key in SCORES:
    if all(key in s for s in per_seed):
      stats = spread([s[key] for s in per_seed])
      out[key] = stats["mean"]
      out.update({f"{key}_{k}": v for k, v in stats.items() if k != "mean"})
  if "gain_ew_f" in out:
    out["grpo_above_sft_every_seed"] = all(s["gain_ew_f"] > 0 for s in per_seed)
  return out


def per_seed_row(seed: int, summary: Mapping) -> dict:
  keep = ("workdir", "eval_clips", "sft_steps", "grpo_steps", "total_s") + SCORES
  return {"seed": seed, **{k: summary[k] for k in keep if k in summary}}


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, seeds: Sequence[int],
        phases: tuple[str, ...] = recipe.TRAIN_PHASES, *,
        mesh: jax.sharding.Mesh | None = None) -> dict:
  """recipe.run for each seed (module doc); writes <workdir>/summary.json and curves.png.
  A preempted seed stops the loop and returns recipe.run's {"preempted": ...} with the seed."""
  t0 = time.perf_counter()
  seeds = check_seeds(seeds)
  workdir = pathlib.Path(workdir)
  rows = []
  for seed in seeds:
    summary = recipe.run(seed_config(config, seed, workdir), seed_dir(workdir, seed), phases,
                         mesh=mesh)
    if "preempted" in summary:
      return {**summary, "seed": seed}
    rows.append(per_seed_row(seed, summary))
  out = {"workdir": str(workdir), **aggregate(rows)}
  png = plot_seeds({s: seed_dir(workdir, s) / "metrics.jsonl" for s in seeds},
                   workdir / "curves.png")
  out.update(plot=str(png) if png else None, total_s=time.perf_counter() - t0)
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(out, indent=2))
  return out


def plot_seeds(metrics: Mapping[int, str | os.PathLike], out_png: str | os.PathLike
               ) -> pathlib.Path | None:
  """Every seed's curves in one figure (run_log.plot_curves, one line per seed); held-out EW-F
  is drawn against the global step, so each seed's line joins its evaluations after SFT,
  every grpo.eval_every GRPO steps and at the end."""
  return run_log.plot_curves({f"seed {s}": path for s, path in metrics.items()}, out_png)
