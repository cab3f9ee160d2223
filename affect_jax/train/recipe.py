"""The AffectGPT-R1 recipe end to end: setup -> SFT -> eval -> GRPO -> eval -> summary.

  summary = run(config, workdir)        # what `python -m launch.grpo` runs (configs/demo.py)

`run` calls one function per step, in order:
1. `setup` (affect_jax/experiment.py): the mesh and the batch sizes checked against it; the
   datasets built (the synthetic demo set, real mp4 + wav in the official MER-Caption+ layout, is
   generated once), the tokenizer (the demo's byte-level BPE is trained offline on the train +
   rl texts and cached), the model from the config (vocab size and placeholder ids from the
   tokenizer) and the frozen encoders' features cached per clip; training reads cached features.
2. `run_sft`: cold-start SFT on "<think>reason</think><answer>labels</answer>" targets (train
   split, MER-Caption+-like noisy labels), then `run_eval`: held-out EW-F.
3. `run_grpo`: GRPO on the rl split with the on-device EW reward (+ format), then `run_eval`.
   Every config.grpo.eval_every GRPO steps it also runs `run_eval` (eval_grpo_step<N>.jsonl),
   and every config.grpo.samples_every steps it writes a table of sampled completions
   (samples.jsonl and TensorBoard text; `grpo_diagnostics`).
4. `write_summary`: curves.png and summary.json.
The workdir gets checkpoints/{sft,grpo}/, metrics.jsonl, tensorboard/, curves.png,
samples.jsonl (when on) and summary.json; rerunning with the same workdir resumes (finished
phases are not redone).

Every phase runs on the mesh of config.mesh (one axis may be -1 = all remaining devices) with
config.sharding_rules: the parameters are initialised (or restored) straight onto their
logical-axis shardings, the train state is placed with {sft,grpo}_step.state_shardings, the
steps are jitted with explicit in / out shardings and a donated state, and each process feeds
only its rows of every batch (distributed.global_batch). sft.batch_size,
grpo.prompts_per_step and eval.batch_size are global (all processes together);
`experiment.check_mesh` rejects ones the mesh cannot split before anything is compiled. On one
device all of this is the identity: the demo's numbers do not depend on it.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Mapping

import jax
import ml_collections
import numpy as np

from affect_jax import distributed, experiment, sharding
from affect_jax.checkpoints import manager
from affect_jax.data import pipeline
from affect_jax.data.builders import records
from affect_jax.experiment import Prepared
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib
from affect_jax.rewards import total as reward_total
from affect_jax.eval import heldout as evaluate
from affect_jax.train import loop, sft_step
from affect_jax.train import samples as samples_lib
from affect_jax.train import run_log as run_logging

TRAIN_PHASES = ("sft", "grpo")
GRPO_BATCH_KEYS = ("prompt_tokens", "prompt_mask", "gt_ids", "n_gt")
EVAL_BATCH_KEYS = ("prompt_tokens", "prompt_mask")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        phases: tuple[str, ...] = TRAIN_PHASES, *,
        mesh: jax.sharding.Mesh | None = None) -> dict:
  """The recipe (module doc) for `phases` ("sft", "grpo" or both); writes summary.json.

  With "grpo" alone, GRPO starts from the SFT checkpoint in <workdir>/checkpoints/sft, or from
  config.init_from (a launch.convert checkpoint or another run's workdir) when that is set.
  mesh: default `experiment.make_mesh(config)` over every device (tests pass one over fewer
  devices).
  """
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  prep = setup(config, workdir, phases, mesh)
  summary = setup_summary(prep, workdir, time.perf_counter() - t0)
  params = start_params(prep, workdir, phases)
  if "sft" in phases:
    sft = run_sft(prep, workdir, params)
    if sft["preempted"]:
      return {"preempted": "sft", "step": sft["step"]}
    params = sft["params"]
    scores = run_eval(prep, params, workdir, "sft", config.sft.steps)
    summary.update(sft_eval_ew_f=scores["ew_f"], sft_eval=scores, sft_steps=config.sft.steps,
                   sft_skipped=sft["skipped"])
  if "grpo" in phases:
    grpo = run_grpo(prep, workdir, params, eval_step0=config.sft.steps * ("sft" in phases))
    if grpo["preempted"]:
      return {"preempted": "grpo", "step": grpo["step"]}
    params = grpo["params"]
    scores = run_eval(prep, params, workdir, "grpo",
                      config.sft.steps * ("sft" in phases) + config.grpo.steps)
    summary.update(grpo_eval_ew_f=scores["ew_f"], grpo_eval=scores,
                   grpo_steps=config.grpo.steps)
    if "sft_eval_ew_f" in summary:
      summary["gain_ew_f"] = summary["grpo_eval_ew_f"] - summary["sft_eval_ew_f"]
  return write_summary(summary, workdir, t0)


def setup(config: ml_collections.ConfigDict, workdir: pathlib.Path, phases: tuple[str, ...],
          mesh: jax.sharding.Mesh | None) -> Prepared:
  """The phases and batch sizes checked against the mesh (before anything is built or
  compiled), then experiment.prepare."""
  unknown = [p for p in phases if p not in TRAIN_PHASES]
  if unknown or not phases:
    raise ValueError(f"phases {phases}: use 'sft', 'grpo' or both.")
  mesh = experiment.make_mesh(config) if mesh is None else mesh
  experiment.check_mesh(config, mesh, phases)
  workdir.mkdir(parents=True, exist_ok=True)
  return experiment.prepare(config, workdir, mesh)


def setup_summary(prep: Prepared, workdir: pathlib.Path, seconds: float) -> dict:
  """The summary's first fields: setup time, workdir, the evaluation set and the overlap rule's
  drops."""
  source = prep.config.data.sources.eval
  return {"prepare_s": seconds, "workdir": str(workdir), "eval_dataset": source.dataset,
          "eval_split": source.split, "eval_clips": len(prep.sources["eval"]),
          "eval_overlap_dropped": {p: len(n) for p, n in prep.eval_overlap.items()}}


def start_params(prep: Prepared, workdir: pathlib.Path, phases: tuple[str, ...]) -> dict:
  """The parameters the first phase starts from: the random init or config.init_from
  (prep.params), or for GRPO alone without init_from the SFT checkpoint in the workdir."""
  if "sft" in phases or prep.config.get("init_from", ""):
    return prep.params
  sft_dir = workdir / "checkpoints" / "sft"
  if not sft_dir.is_dir():
    raise FileNotFoundError(f"GRPO alone needs an SFT run in {sft_dir} or config.init_from; "
                            "run launch.sft first or set --config.init_from.")
  return manager.load_initial_params(sft_dir, manager.abstract(prep.params), init=prep.params)


def local_rows(rows: int) -> int:
  """The rows of a global batch of `rows` that this process reads (check_mesh checked it)."""
  part = distributed.local_rows(rows)
  return part.stop - part.start


def place_state(state: dict, state_sh: Mapping) -> dict:
  """Every state leaf on its sharding; leaves already there (the params) are not copied.

  With several processes, a leaf that only this process holds (a fresh step counter or RNG
  key, the same on every process) is assembled from its host value (distributed.put);
  jax.device_put moves the rest.
  """
  def one(x, sh):
    if isinstance(x, jax.Array) and (x.is_fully_addressable and not sh.is_fully_addressable):
      return distributed.put(x, sh)
    return jax.device_put(x, sh)

  return jax.tree.map(one, state, dict(state_sh))


def batch_sharding(prep: Prepared) -> jax.sharding.NamedSharding:
  """Rows over the 'batch' rule's mesh axes, every other axis whole: one sharding that serves
  as the prefix of every batch leaf (a PartitionSpec shorter than the rank leaves the rest
  replicated)."""
  return sharding.named(prep.mesh, ("batch",), prep.rules)


def to_mesh(prep: Prepared, keep: tuple[str, ...]):
  """This process's rows of a batch -> the model inputs (experiment.model_inputs) as global
  arrays split on the rows over (data, fsdp)."""
  return lambda batch: distributed.global_batch(
      experiment.model_inputs(batch, prep.feature_stats, keep), prep.mesh, prep.rules)


def run_sft(prep: Prepared, workdir: pathlib.Path, params: Mapping) -> dict:
  """SFT for config.sft.steps (resumed from the workdir's checkpoint); the trained params."""
  c = prep.config
  policy = policy_lib.AffectGPTPolicy(prep.model)
  opt = experiment.optimizer(c.sft, c.sft.steps)
  state_sh = sft_step.state_shardings(policy, prep.abstract, opt, prep.mesh, prep.rules)
  state = place_state(sft_step.init_state(policy, params, opt, jax.random.key(c.seed + 1)),
                      state_sh)
  skipped = []
  loader = pipeline.sft_loader(prep.sources["sft"], prep.meta, prep.tokenizer, c.data,
                               experiment.loader_config(c.data.pipeline,
                                                        local_rows(c.sft.batch_size),
                                                        c.seed, True), skipped=skipped)
  step = sft_step.make_step(policy, opt, logprob_chunk=c.sft.logprob_chunk,
                            micro_batches=c.sft.micro_batches, mesh=prep.mesh, rules=prep.rules,
                            state_sh=state_sh, batch_sh=batch_sharding(prep))
  result = loop.train(phase="sft", step_fn=step, state=state, loader=loader,
                      total_steps=c.sft.steps, workdir=workdir, config=c,
                      log_every=c.sft.log_every,
                      to_device=to_mesh(prep, sft_step.BATCH_KEYS),
                      tokens_per_step=lambda b: float(np.sum(b["attention_mask"])))
  return {"params": trained_params(result), "preempted": result.preempted,
          "step": result.step, "skipped": records.count_reasons(skipped)}


def trained_params(result: loop.LoopResult) -> dict | None:
  """The full parameters of a finished phase (None when it was preempted)."""
  if result.preempted:
    return None
  return policy_lib.merge(result.state["trainable"], result.state["frozen"])


def reward_fn_for(prep: Prepared):
  """The configured reward (config.reward's terms): (tokens, lengths, rows) -> (total,
  metrics), and the label encoder of the rows it reads."""
  # Each device scores its own rows (shard_map over the batch axes): no collective, and the
  # parsers loop only as long as the device's own longest answer.
  batch_axes = sharding.named(prep.mesh, ("batch",), prep.rules).spec
  reward = reward_total.grpo_reward(prep.config.reward, prep.tokenizer, prep.ew_tables,
                                    mesh=prep.mesh,
                                    batch_axes=batch_axes[0] if len(batch_axes) else None,
                                    label_histogram=prep.config.grpo.label_histogram)
  return reward.fn, reward.label_encoder


def run_grpo(prep: Prepared, workdir: pathlib.Path, start_params: Mapping,
             eval_step0: int = 0) -> dict:
  """GRPO for config.grpo.steps from `start_params` (resumed from the workdir's checkpoint);
  the trained params. eval_step0: the step its held-out evaluations are logged after (the
  SFT steps of the same run)."""
  c = prep.config
  policy = policy_lib.AffectGPTPolicy(prep.model)
  lcfg = losses.GrpoLossConfig.from_config(c.grpo_loss)
  scfg = grpo_step.StepConfig(experiment.sampling_config(c, prep.tokenizer), lcfg,
                              samples=c.grpo.samples_per_log if c.grpo.samples_every else 0)
  opt = experiment.optimizer(c.grpo, c.grpo.steps)
  state_sh = grpo_step.state_shardings(policy, prep.abstract, opt, prep.mesh, prep.rules)
  state = place_state(grpo_step.init_state(policy, start_params, opt,
                                           jax.random.key(c.seed + 2)), state_sh)
  reward_fn, label_encoder = reward_fn_for(prep)
  # Dynamic sampling rolls out oversample x the prompts and trains on prompts_per_step of them.
  rollout_rows = c.grpo.prompts_per_step * lcfg.oversample
  pcfg = experiment.loader_config(c.data.pipeline, local_rows(rollout_rows), c.seed + 1, True)
  loader = pipeline.prompt_loader(prep.sources["grpo"], prep.meta, prep.tokenizer, c.data, pcfg,
                                  label_encoder=label_encoder)
  step = grpo_step.make_step(policy, scfg, opt, reward_fn, mesh=prep.mesh, rules=prep.rules,
                             state_sh=state_sh, batch_sh=batch_sharding(prep))
  result = loop.train(phase="grpo", step_fn=step, state=state, loader=loader,
                      total_steps=c.grpo.steps, workdir=workdir, config=c,
                      log_every=c.grpo.log_every, to_device=to_mesh(prep, GRPO_BATCH_KEYS),
                      tokens_per_step=None,
                      show=("reward", "reward/accuracy", "kl"),
                      on_step=grpo_diagnostics(prep, workdir, eval_step0))
  return {"params": trained_params(result), "preempted": result.preempted,
          "step": result.step}


def grpo_diagnostics(prep: Prepared, workdir: pathlib.Path, eval_step0: int):
  """The GRPO loop's on_step: every config.grpo.samples_every steps the step's sampled
  completions (grpo_step.SAMPLES) decoded into samples.jsonl and a TensorBoard table; every
  config.grpo.eval_every steps before the last (which run() evaluates) the held-out EW-F of
  the current policy, logged at eval_step0 + step. Neither touches the state or its RNG."""
  g = prep.config.grpo
  first_prompt = distributed.local_rows(g.prompts_per_step).start

  def on_step(step, state, metrics, batch, log):
    if g.samples_every and step % g.samples_every == 0 and log.enabled:
      log.write_samples(step, samples_lib.completion_rows(
          metrics[grpo_step.SAMPLES], batch["names"], prep.tokenizer, first_prompt))
    if g.eval_every and step % g.eval_every == 0 and step < g.steps:
      params = policy_lib.merge(state["trainable"], state["frozen"])
      run_eval(prep, params, workdir, f"grpo_step{step}", eval_step0 + step)

  return on_step


def run_eval(prep: Prepared, params: Mapping, workdir: pathlib.Path, tag: str, step: int) -> dict:
  """Greedy generation on the held-out source, scored with the EW metric (eval/heldout.py);
  writes eval_<tag>.jsonl and logs the scores at `step`."""
  c = prep.config
  sampling = experiment.sampling_config(c, prep.tokenizer, greedy=True,
                                        max_new_tokens=c.eval.max_new_tokens)
  # Every process reads the whole held-out split (and scores all of it); each feeds its own
  # rows of every batch to the generation on the mesh.
  pcfg = experiment.loader_config(c.data.pipeline, c.eval.batch_size, c.seed, False)
  pcfg.shard_index, pcfg.shard_count = 0, 1
  loader = pipeline.prompt_loader(prep.sources["eval"], prep.meta, prep.tokenizer, c.data, pcfg)
  names, gt = [], []
  batches = []
  for batch in loader:
    real = np.asarray(batch["example_mask"])
    names += [str(n) for n, keep in zip(batch["names"], real) if keep]
    gt += [str(g) for g, keep in zip(batch["gt_text"], real) if keep]
    dev = experiment.model_inputs(batch, prep.feature_stats, EVAL_BATCH_KEYS)
    batches.append({k: v[real] for k, v in dev.items()})
  if sampling not in prep.generate_fns:     # one compiled generation for every evaluation
    prep.generate_fns[sampling] = evaluate.make_generate(prep.model, sampling, mesh=prep.mesh)
  texts = evaluate.generate(params, prep.generate_fns[sampling], batches, prep.tokenizer,
                            c.eval.batch_size, mesh=prep.mesh, rules=prep.rules)
  scores = evaluate.score_open_set(gt, texts, prep.ew_tables)
  if jax.process_index() == 0:
    with open(workdir / f"eval_{tag}.jsonl", "w", encoding="utf-8") as f:
      for name, g, t in zip(names, gt, texts):
        f.write(json.dumps({"name": name, "gt": g, "completion": t}) + "\n")
  log = run_logging.RunLog(workdir, 0, "eval", enabled=None)
  log.write(step, scores, model=tag)
  log.close()
  return scores


def write_summary(summary: dict, workdir: pathlib.Path, t0: float) -> dict:
  """The curves (curves.png) and summary.json (process 0) with the total time since t0."""
  png = run_logging.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
  summary.update(plot=str(png) if png else None, total_s=time.perf_counter() - t0)
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
