"""GRPO diagnostics in one tiny recipe run (README "Diagnostics"): every step metric as a
TensorBoard scalar, the label-count histogram, the sampled-completions table (samples.jsonl and
TensorBoard text), held-out EW-F every grpo.eval_every steps, and training metrics bit-identical
to a run with every diagnostic off."""
import json

import jax
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.train import recipe
from affect_jax.train import run_log as run_logging
from configs import demo
from tests.testlib.tensorboard import summaries
from tests.train import recipe_mesh_worker as worker

GRPO_STEPS, EVERY = 4, 2
PROMPTS, G = 8, 2
ROWS = PROMPTS * G
TIMING = ("elapsed_s", "tokens_per_s")


def diagnostics_config(on: bool):
  c = worker.tiny_config((1, 1, 1))
  c.grpo_loss.beta = demo.get_config().grpo_loss.beta     # the KL term on: kl is logged
  c.grpo.steps = GRPO_STEPS
  c.grpo.label_histogram = on
  c.grpo.samples_every = EVERY if on else 0
  c.grpo.samples_per_log = ROWS                            # every row: means are checkable
  c.grpo.eval_every = EVERY if on else 0
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """SFT + GRPO with the diagnostics on, then GRPO alone from that SFT checkpoint with them
  off; returns both workdirs."""
  tmp = tmp_path_factory.mktemp("diag")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  on = diagnostics_config(True)
  on.data.cache_dir = str(tmp / "data")
  recipe.run(on, tmp / "on", mesh=mesh)
  off = diagnostics_config(False)
  off.data.cache_dir = str(tmp / "data")
  off.init_from = str(tmp / "on" / "checkpoints" / "sft")
  recipe.run(off, tmp / "off", phases=("grpo",), mesh=mesh)
  return tmp / "on", tmp / "off"


def grpo_records(workdir):
  return [r for r in run_logging.read_metrics(workdir / "metrics.jsonl") if r["phase"] == "grpo"]


@pytest.mark.slow
def test_training_metrics_equal_with_diagnostics_off(runs):
  on, off = map(grpo_records, runs)
  assert [r["step"] for r in on] == [r["step"] for r in off] == list(range(1, GRPO_STEPS + 1))
  for a, b in zip(on, off):
    assert set(a) - set(b) == {"reward/n_pred_hist"}
    assert {k: v for k, v in a.items() if k not in TIMING and k in b} == \
        {k: v for k, v in b.items() if k not in TIMING}


@pytest.mark.slow
def test_every_metric_is_a_tensorboard_scalar_and_the_label_histogram(runs):
  records = grpo_records(runs[0])
  tb = summaries(runs[0] / "tensorboard" / "grpo")
  for name in ("reward/accuracy", "reward/format", "reward/penalty",
               "advantage/frac_zero_std_groups", "entropy", "kl", "clip_frac",
               "clip_frac_low", "clip_frac_high"):
    steps = [s for s, _ in tb[f"grpo/{name}"]]
    assert steps == list(range(1, GRPO_STEPS + 1)), name
    np.testing.assert_allclose([v.simple_value for _, v in tb[f"grpo/{name}"]],
                               [r[name] for r in records], rtol=1e-6)
  for r, (step, v) in zip(records, tb["grpo/reward/n_pred_hist"]):
    counts = np.asarray(r["reward/n_pred_hist"])
    # Bins 0..reward.ew.max_labels and one for more; every completion counted once; the
    # histogram's mean is the mean label count reward/n_pred.
    assert len(counts) == demo.get_config().reward.ew.max_labels + 2
    assert counts.sum() == ROWS and step == r["step"]
    np.testing.assert_allclose(np.arange(len(counts)) @ counts / ROWS, r["reward/n_pred"],
                               rtol=1e-6)
    assert list(v.histo.bucket) == counts.tolist() and v.histo.num == ROWS


@pytest.mark.slow
def test_sampled_completions_table(runs):
  by_step = {r["step"]: r for r in grpo_records(runs[0])}
  rows = [json.loads(l) for l in (runs[0] / "samples.jsonl").read_text().splitlines()]
  steps = sorted({r["step"] for r in rows})
  assert steps == list(range(EVERY, GRPO_STEPS + 1, EVERY))
  cfg = demo.get_config().grpo_loss
  for step in steps:
    table = [r for r in rows if r["step"] == step]
    assert len(table) == ROWS
    # Whole groups in batch order: rows 2p, 2p + 1 are prompt p's completions.
    assert [r["prompt_index"] for r in table] == [i // G for i in range(ROWS)]
    assert all(r["name"] and isinstance(r["completion"], str) for r in table)
    assert len({r["name"] for r in table}) == PROMPTS
    for term in ("accuracy", "format", "alignment", "dual", "penalty", "n_pred"):
      np.testing.assert_allclose(np.mean([r["terms"][term] for r in table]),
                                 by_step[step][f"reward/{term}"], rtol=1e-6, atol=1e-7)
    reward = np.array([r["reward"] for r in table])
    np.testing.assert_allclose(reward, [r["terms"]["total"] for r in table])
    np.testing.assert_allclose(reward.mean(), by_step[step]["reward"], rtol=1e-6, atol=1e-7)
    # GRPO's group advantage (r - mean_g) / (std_g + eps), std with ddof 1, in numpy.
    r = reward.reshape(PROMPTS, G)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=cfg.std_ddof, keepdims=True)
                                             + cfg.advantage_eps)
    np.testing.assert_allclose([x["advantage"] for x in table], want.ravel(), rtol=1e-5,
                               atol=1e-6)
  text = summaries(runs[0] / "tensorboard" / "grpo")["grpo/samples/text_summary"]
  assert [s for s, _ in text] == steps
  table = text[0][1].tensor.string_val[0].decode()
  assert table.splitlines()[0].startswith("| name | completion | accuracy |")
  assert len(table.splitlines()) == ROWS + 2


@pytest.mark.slow
def test_heldout_ew_f_every_eval_every_steps(runs):
  on = runs[0]
  sft = worker.tiny_config((1, 1, 1)).sft.steps
  evals = [r for r in run_logging.read_metrics(on / "metrics.jsonl") if r["phase"] == "eval"]
  assert [(r["step"], r["model"]) for r in evals] == [
      (sft, "sft"), (sft + EVERY, f"grpo_step{EVERY}"), (sft + GRPO_STEPS, "grpo")]
  assert (on / f"eval_grpo_step{EVERY}.jsonl").is_file()
  tb = summaries(on / "tensorboard" / "eval")["eval/ew_f"]
  assert sorted(s for s, _ in tb) == [r["step"] for r in evals]
  assert (on / "curves.png").is_file()
  off = [r for r in run_logging.read_metrics(runs[1] / "metrics.jsonl") if r["phase"] == "eval"]
  assert [r["model"] for r in off] == ["grpo"]
  assert not (runs[1] / "samples.jsonl").exists()
