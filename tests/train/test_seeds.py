"""The multi-seed demo (affect_jax/train/seeds.py): one recipe run per seed in its own folder,
sharing the data cache, and a summary of the per-seed scores with their mean and spread, checked
against plain numpy. recipe.run is replaced by a stand-in that writes what a run writes."""
import json
import pathlib

import numpy as np
import pytest

from configs import demo
from configs import validate
from affect_jax.train import recipe, seeds

SCORES = {0: (60.0, 66.5), 1: (55.25, 63.0), 2: (61.0, 60.0)}    # seed -> (sft, grpo) EW-F


def _fake_run(calls):
  def run(config, workdir, phases=recipe.TRAIN_PHASES, *, mesh=None):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True)
    calls.append((config.seed, workdir, config.data.cache_dir, phases))
    sft, grpo = SCORES[config.seed]
    with open(workdir / "metrics.jsonl", "w") as f:
      for step in range(1, 4):
        f.write(json.dumps({"phase": "grpo", "step": step, "reward": step * 0.1}) + "\n")
      f.write(json.dumps({"phase": "eval", "step": 3, "ew_f": grpo}) + "\n")
    return {"workdir": str(workdir), "eval_clips": 96, "sft_eval_ew_f": sft,
            "grpo_eval_ew_f": grpo, "gain_ew_f": grpo - sft, "sft_steps": 5, "grpo_steps": 3,
            "total_s": 1.0}
  return run


def test_each_seed_runs_in_its_folder_and_the_summary_has_mean_and_spread(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(recipe, "run", _fake_run(calls))
  config = demo.get_config()
  out = seeds.run(config, tmp_path, (0, 1, 2))
  assert [(s, w) for s, w, _, _ in calls] == [(s, tmp_path / f"seed_{s}") for s in (0, 1, 2)]
  assert {c for _, _, c, _ in calls} == {str(tmp_path / "data")}     # the seeds share the data
  assert config.seed == 0 and config.data.cache_dir == ""           # the caller's config unchanged
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["seeds"] == [0, 1, 2] and saved["eval_clips"] == 96
  assert [r["seed"] for r in saved["per_seed"]] == [0, 1, 2]
  sft = np.array([SCORES[s][0] for s in (0, 1, 2)])
  grpo = np.array([SCORES[s][1] for s in (0, 1, 2)])
  for key, v in (("sft_eval_ew_f", sft), ("grpo_eval_ew_f", grpo), ("gain_ew_f", grpo - sft)):
    np.testing.assert_allclose(saved[key], v.mean())
    np.testing.assert_allclose(saved[f"{key}_std"], v.std(ddof=1))
    assert saved[f"{key}_min"] == v.min() and saved[f"{key}_max"] == v.max()
  assert saved["grpo_above_sft_every_seed"] is False           # seed 2 lost a point
  assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_preempted_seed_stops_the_loop(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(recipe, "run", lambda c, w, p=recipe.TRAIN_PHASES, *, mesh=None:
                      calls.append(c.seed) or ({"preempted": "grpo", "step": 2}
                                               if c.seed == 1 else {"sft_eval_ew_f": 1.0}))
  out = seeds.run(demo.get_config(), tmp_path, (0, 1, 2))
  assert calls == [0, 1] and out == {"preempted": "grpo", "step": 2, "seed": 1}
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("bad", [(0, 0), (-1,), (0.5,), (True,)])
def test_bad_seeds_are_one_clear_error(bad):
  c = demo.get_config()
  c.seeds = bad
  problems = validate.errors(c, training=True)
  assert len(problems) == 1 and problems[0].startswith(f"config.seeds={bad!r}"), problems
  with pytest.raises(ValueError, match="config.seeds"):
    seeds.check_seeds(bad)


def test_no_seeds_is_one_run_in_the_workdir():
  c = demo.get_config()
  c.seeds = ()
  assert validate.errors(c, training=True) == []
