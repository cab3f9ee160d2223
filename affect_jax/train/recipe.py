"""The AffectGPT-R1 recipe end to end: data -> features -> SFT -> eval -> GRPO -> eval.

  summary = run(config, workdir)        # what `python -m launch.grpo` runs (configs/demo.py)

1. Data: the synthetic demo set (real mp4 + wav, official MER-Caption+ layout) is generated
   once, built into array_record files (TFDS builder), and read through grain.
2. Tokenizer: byte-level BPE trained offline on the train + rl texts (cached).
3. Model: AffectGPT from the config; vocab size and placeholder ids from the tokenizer. The
   frozen encoders run once per clip (feature cache); training reads cached features.
4. Cold-start SFT on "<think>reason</think><answer>labels</answer>" targets (train split,
   MER-Caption+-like noisy labels), then held-out EW-F.
5. GRPO on the rl split with the on-device EW reward (+ format), then held-out EW-F.
The workdir gets checkpoints/{sft,grpo}/, metrics.jsonl, tensorboard/, curves.png and
summary.json; rerunning with the same workdir resumes (finished phases are not redone).

Every phase runs on the mesh of config.mesh (one axis may be -1 = all remaining devices) with
config.sharding_rules: the parameters are initialised (or restored) straight onto their
logical-axis shardings, the train state is placed with {sft,grpo}_step.state_shardings, the
steps are jitted with explicit in / out shardings and a donated state, and each process feeds
only its rows of every batch (distributed.global_batch). sft.batch_size,
grpo.prompts_per_step and eval.batch_size are global (all processes together); `check_mesh`
rejects ones the mesh cannot split before anything is compiled. On one device all of this is
the identity: the demo's numbers do not depend on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from affect_jax import distributed, sharding
from affect_jax.checkpoints import manager, params_io
from affect_jax.data import features as features_lib
from affect_jax.data import overlap, pipeline, synthetic
from affect_jax.data import prompts as prompts_lib
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.data.builders import mer, records
from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import wheel as wheel_lib
from affect_jax.models import affectgpt
from affect_jax.rl import grpo_step, losses
from affect_jax.generation import policy as policy_lib, sampler
from affect_jax.rewards import total as reward_total
from affect_jax.eval import heldout as evaluate
from affect_jax.train import loop, sft_step
from affect_jax.train import run_log as run_logging



def optimizer(section: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay (when end_learning_rate is set) and clipping."""
  warmup = int(section.get("warmup_steps", 0))
  end = section.get("end_learning_rate", None)
  if end is None:
    lr = section.learning_rate
  else:
    lr = optax.warmup_cosine_decay_schedule(0.0, section.learning_rate, max(warmup, 1),
                                            max(steps, warmup + 1), end)
  return optax.chain(optax.clip_by_global_norm(section.grad_clip),
                     optax.adamw(lr, weight_decay=section.weight_decay))


PHASES = ("sft", "grpo", "eval")


@dataclasses.dataclass
class Prepared:
  """Everything the phases share."""
  config: ml_collections.ConfigDict
  model: affectgpt.AffectGPTConfig
  params: dict
  tokenizer: Any
  sources: dict          # phase (sft / grpo / eval) -> FeatureSource of its split
  meta: dict
  feature_stats: tuple   # (video mean, video std, audio mean, audio std)
  ew_tables: Any
  mesh: jax.sharding.Mesh
  rules: tuple           # config.sharding_rules, normalised
  abstract: Any          # the params' ShapeDtypeStructs, boxed with their logical axis names
  generate_fns: dict = dataclasses.field(default_factory=dict)   # sampling -> jitted generate
  eval_overlap: dict = dataclasses.field(default_factory=dict)   # sft / grpo -> dropped names


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh of config.mesh over `devices` (default: every device of
  every process)."""
  shape = dict(config.mesh)
  try:
    return sharding.make_mesh(shape, devices)
  except ValueError as e:
    n = jax.device_count() if devices is None else len(devices)
    raise ValueError(f"config.mesh={shape}: {e} Set the sizes (--config.mesh.data=, "
                     f"--config.mesh.fsdp=, --config.mesh.tensor=) to multiply to the {n} "
                     "devices, or one of them to -1 (all remaining devices).") from None


def check_mesh(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               phases: tuple[str, ...] = ("sft", "grpo")) -> None:
  """Errors before anything is compiled: a phase's global batch (or micro-batch) that the
  mesh's data x fsdp devices, or the processes, cannot split into equal parts."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  procs = jax.process_count()
  mesh_text = ", ".join(f"{a}={n}" for a, n in mesh.shape.items())
  batches = [("eval.batch_size", int(config.eval.batch_size), None, 1)]
  if "sft" in phases:
    batches.append(("sft.batch_size", int(config.sft.batch_size), "sft.micro_batches",
                    int(config.sft.micro_batches)))
  if "grpo" in phases:
    batches.append(("grpo.prompts_per_step", int(config.grpo.prompts_per_step),
                    "grpo_loss.micro_batches", int(config.grpo_loss.micro_batches)))
  for name, rows, micro_name, micro in batches:
    if micro < 1 or rows % micro:
      raise ValueError(f"config.{name}={rows} is not a multiple of config.{micro_name}={micro}; "
                       f"use a multiple of {micro} or another number of micro-batches.")
    part = rows // micro
    if part % shards:
      what = (f"its micro-batches of {part} rows (/ config.{micro_name}={micro})"
              if micro > 1 else "it")
      raise ValueError(
          f"config.{name}={rows}: {what} cannot be split over the mesh's data x fsdp = {shards} "
          f"devices ({mesh_text}); set --config.{name} to a multiple of {shards * micro}, or "
          f"change config.mesh so that data x fsdp divides {part}.")
    if rows % procs:
      raise ValueError(f"config.{name}={rows} cannot be split over the {procs} processes (each "
                       f"feeds its own rows); use a multiple of {procs}.")


def _build_datasets(dc: ml_collections.ConfigDict, root: pathlib.Path) -> dict:
  """phase -> (built dataset path, split); the demo set is generated on first use."""
  groups: dict[tuple[str, str], set] = {}
  for phase in PHASES:
    spec = dc.sources[phase]
    data_dir = spec.data_dir
    if spec.dataset == "demo" and not data_dir:
      data_dir = synthetic.ensure_demo_data(str(root), dc.synthetic)
    if not data_dir:
      raise ValueError(f"config.data.sources.{phase}.data_dir is empty; point it at the "
                       f"{spec.dataset} folder (see PAPER_NOTES section 6 for the layouts).")
    groups.setdefault((spec.dataset, data_dir), set()).add(spec.split)
  built = {}
  for (dataset, data_dir), splits in groups.items():
    report = mer.build(dataset, data_dir, str(root / "built"), dc, splits=tuple(sorted(splits)))
    logging.info("dataset %s from %s (reused=%s): %s", dataset, data_dir, report["reused"],
                 {s: v["kept"] for s, v in report["splits"].items()})
    built[(dataset, data_dir)] = report["path"]
  out = {}
  for phase in PHASES:
    spec = dc.sources[phase]
    data_dir = spec.data_dir or (synthetic.ensure_demo_data(str(root), dc.synthetic)
                                 if spec.dataset == "demo" else "")
    out[phase] = (built[(spec.dataset, data_dir)], spec.split)
  return out


def _tokenizer(config: ml_collections.ConfigDict, root: pathlib.Path):
  """The config's tokenizer folder (special tokens added if missing), or the demo's BPE."""
  dc = config.data
  specials = dict(dc.tokenizer.special_tokens)
  if config.tokenizer_dir:
    tok = tokenizer_lib.load_tokenizer(config.tokenizer_dir)
    missing = [t for t in specials.values() if t not in tok.get_vocab()]
    if missing:
      tok.add_special_tokens({"additional_special_tokens": missing})
    return tok
  if not all(dc.sources[p].dataset == "demo" for p in PHASES):
    raise ValueError("config.tokenizer_dir is empty but the data is not the demo set; point it "
                     "at the decoder's tokenizer folder (e.g. Qwen2.5-7B-Instruct).")
  raw = synthetic.ensure_demo_data(str(root), dc.synthetic)
  texts = [prompts_lib.example_text(r["english"], labels_lib.parse_labels(r["openset"]),
                                    r["reason"], dc.prompt, specials)
           for split in ("train", "rl") for r in synthetic.read_split(raw, split, dc.synthetic)]
  return tokenizer_lib.ensure_demo_tokenizer(str(root), texts, dc.tokenizer)


def _model_config(config: ml_collections.ConfigDict, tok) -> affectgpt.AffectGPTConfig:
  """The model section with -1 fields (vocab size, placeholder ids) taken from the tokenizer;
  explicit ones must agree with it."""
  mc = ml_collections.ConfigDict(config.model.to_dict())
  specials = dict(config.data.tokenizer.special_tokens)
  ids = tokenizer_lib.placeholder_ids(tok, specials)
  if mc.llm.vocab_size == -1:
    mc.llm.vocab_size = len(tok)
  elif len(tok) > mc.llm.vocab_size:
    raise ValueError(f"the tokenizer has {len(tok)} tokens but model.llm.vocab_size is "
                     f"{mc.llm.vocab_size}; use the decoder's own tokenizer (config.tokenizer_dir).")
  for name in config.model.placeholder_ids:
    want = int(config.model.placeholder_ids[name])
    if want not in (-1, int(ids[name])):
      raise ValueError(f"model.placeholder_ids.{name}={want} but the tokenizer gives "
                       f"{specials[name]} id {ids[name]}; set it to {ids[name]} (or -1).")
    mc.placeholder_ids[name] = int(ids[name])
  return affectgpt.AffectGPTConfig.from_config(mc)


def hubert_do_normalize(init_from: str, warn: bool = True) -> bool:
  """Whether the HuBERT checkpoint's preprocessor normalises its input: the do_normalize that
  launch.convert recorded in init_from's meta.json (from preprocessor_config.json). False
  without init_from, for a training directory, or when the conversion recorded none (logged
  when `warn`)."""
  path = pathlib.Path(init_from) if init_from else None
  if path is None or not (path / "meta.json").is_file():
    return False
  audio = params_io.read_meta(path).get("components", {}).get("audio", {})
  if audio.get("do_normalize") is None:
    if audio and warn:
      logging.warning("%s: records no HuBERT preprocessor (do_normalize); its input is not "
                      "normalised. Re-run launch.convert on a folder with "
                      "preprocessor_config.json, or set --config.data.media.audio_normalize="
                      "on|off.", init_from)
    return False
  return bool(audio["do_normalize"])


def resolve_media(config: ml_collections.ConfigDict) -> None:
  """Fills config.data.media.hubert_do_normalize from config.init_from (in place)."""
  m = config.data.media
  m.hubert_do_normalize = hubert_do_normalize(config.get("init_from", ""),
                                              warn=m.audio_normalize == "checkpoint")


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path,
            mesh: jax.sharding.Mesh | None = None) -> Prepared:
  """Datasets built, tokenizer, model config and parameters on the mesh (random init, then
  config.init_from when set, restored onto the params' shardings), and the frozen encoders'
  features cached per split; the SFT and GRPO sources without the evaluation source's clips
  (data/overlap.py). Fills config.data.media.hubert_do_normalize (resolve_media).
  mesh: default `make_mesh(config)`."""
  mesh = make_mesh(config) if mesh is None else mesh
  rules = sharding.rules_from_config(config.sharding_rules)
  resolve_media(config)
  dc = config.data
  root = pathlib.Path(dc.cache_dir or workdir / "data")
  with distributed.main_process_first("datasets and tokenizer"):
    datasets = _build_datasets(dc, root)
    tok = _tokenizer(config, root)
  model = _model_config(config, tok)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(lambda k: affectgpt.init(model, k), rng)
  sharding.check_divisible(abstract, mesh, rules)
  param_sh = sharding.shardings(abstract, mesh, rules)
  params = jax.jit(lambda k: sharding.unbox(affectgpt.init(model, k)),
                   out_shardings=param_sh)(rng)
  init_from = config.get("init_from", "")
  if init_from:
    params = manager.load_initial_params(init_from, manager.abstract(params), init=params)
  key = features_lib.checkpoint_key(init_from or f"seed={config.seed}",
                                    json.dumps(model.vision.__dict__, sort_keys=True, default=str),
                                    json.dumps(model.audio.__dict__, sort_keys=True, default=str))
  # The encoders read the frozen towers where they lie; every process feeds the same clips and
  # gets all features back (the parameters are arguments: they may span other processes).
  rep = sharding.replicated(mesh)
  video_jit = jax.jit(lambda p, f: affectgpt.encode_video(p, model, f), out_shardings=rep)
  audio_jit = jax.jit(lambda p, w: affectgpt.encode_audio(p, model, w), out_shardings=rep)
  video_fn = lambda f: distributed.host_value(video_jit(params, distributed.put(f, rep)))
  audio_fn = lambda w: distributed.host_value(audio_jit(params, distributed.put(w, rep)))
  sources, meta = {}, {}
  for phase, (path, split) in datasets.items():
    source, meta = mer.load_source(path, split)
    cache = features_lib.build_feature_cache(source, meta, path, split, key, video_fn, audio_fn,
                                             dc, batch_size=config.features.batch_size)
    base, meta = mer.load_source(path, split, skip_media=True)
    sources[phase] = features_lib.FeatureSource(base, cache)
  dropped = {}
  for phase in ("sft", "grpo"):     # the overlap rule (data/overlap.py)
    sources[phase], dropped[phase] = overlap.drop_eval_clips(
        sources[phase], sources[phase].names, sources["eval"].names,
        what=_source_text(dc, phase), eval_what=_source_text(dc, "eval"))
  stats = _feature_stats(sources["sft"], config.features.standardize)
  tables = wheel_lib.load_tables(config.ew_dir or None)
  return Prepared(config, model, params, tok, sources, meta, stats, tables, mesh, rules,
                  abstract, eval_overlap=dropped)


def _source_text(dc: ml_collections.ConfigDict, phase: str) -> str:
  """config.data.sources.<phase> as the user configured it, for messages."""
  spec = dc.sources[phase]
  return (f"config.data.sources.{phase} ({spec.dataset} split '{spec.split}' in "
          f"{spec.data_dir or 'the generated demo set'})")


def _feature_stats(source, standardize: bool) -> tuple:
  """Per-dimension mean / std of the train features (identity when standardize is off)."""
  v = np.stack([source[i]["video_features"] for i in range(len(source))])
  a = np.stack([source[i]["audio_features"] for i in range(len(source))])
  if not standardize:
    return (0.0, 1.0, 0.0, 1.0)
  return (v.mean((0, 1)), v.std((0, 1)) + 1e-6, a.mean((0, 1)), a.std((0, 1)) + 1e-6)


def _to_device(prep: Prepared, keep: tuple[str, ...]):
  """This process's rows of a batch -> the model inputs (standardised features), numpy."""
  vm, vs, am, as_ = prep.feature_stats

  def fn(batch: Mapping) -> dict:
    out = {k: v for k, v in pipeline.device_arrays(batch).items() if k in keep}
    out["video"] = ((batch["video"] - vm) / vs).astype(np.float32)
    out["audio"] = ((batch["audio"] - am) / as_).astype(np.float32)
    return out

  return fn


def _to_mesh(prep: Prepared, keep: tuple[str, ...]):
  """This process's rows of a batch -> global arrays split on the rows over (data, fsdp)."""
  host = _to_device(prep, keep)
  return lambda batch: distributed.global_batch(host(batch), prep.mesh, prep.rules)


def _local_rows(rows: int) -> int:
  """The rows of a global batch of `rows` that this process reads (check_mesh checked it)."""
  part = distributed.local_rows(rows)
  return part.stop - part.start


def _place_state(state: dict, state_sh: Mapping) -> dict:
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


def _batch_sharding(prep: Prepared) -> jax.sharding.NamedSharding:
  """Rows over the 'batch' rule's mesh axes, every other axis whole: one sharding that serves
  as the prefix of every batch leaf (a PartitionSpec shorter than the rank leaves the rest
  replicated)."""
  return sharding.named(prep.mesh, ("batch",), prep.rules)


def _pipeline_cfg(base: ml_collections.ConfigDict, batch_size: int, seed: int, train: bool
                  ) -> ml_collections.ConfigDict:
  """The config's pipeline section with one phase's batch size, seed and epoch settings."""
  p = ml_collections.ConfigDict(base.to_dict())
  p.batch_size = batch_size
  p.seed = seed
  p.shuffle = train
  p.num_epochs = 0 if train else 1
  p.drop_remainder = train
  return p


def run_sft(prep: Prepared, workdir: pathlib.Path, params: Mapping) -> dict:
  c = prep.config
  policy = policy_lib.AffectGPTPolicy(prep.model)
  opt = optimizer(c.sft, c.sft.steps)
  state_sh = sft_step.state_shardings(policy, prep.abstract, opt, prep.mesh, prep.rules)
  state = _place_state(sft_step.init_state(policy, params, opt, jax.random.key(c.seed + 1)),
                       state_sh)
  skipped = []
  loader = pipeline.sft_loader(prep.sources["sft"], prep.meta, prep.tokenizer, c.data,
                               _pipeline_cfg(c.data.pipeline, _local_rows(c.sft.batch_size),
                                             c.seed, True), skipped=skipped)
  step = sft_step.make_step(policy, opt, logprob_chunk=c.sft.logprob_chunk,
                            micro_batches=c.sft.micro_batches, mesh=prep.mesh, rules=prep.rules,
                            state_sh=state_sh, batch_sh=_batch_sharding(prep))
  result = loop.train(phase="sft", step_fn=step, state=state, loader=loader,
                      total_steps=c.sft.steps, workdir=workdir, config=c,
                      log_every=c.sft.log_every,
                      to_device=_to_mesh(prep, sft_step.BATCH_KEYS),
                      tokens_per_step=lambda b: float(np.sum(b["attention_mask"])))
  return {"state": result.state, "preempted": result.preempted, "step": result.step,
          "skipped": records.count_reasons(skipped)}


def reward_fn_for(prep: Prepared):
  """The configured reward (config.reward's terms): (tokens, lengths, rows) -> (total,
  metrics), and the label encoder of the rows it reads."""
  # Each device scores its own rows (shard_map over the batch axes): no collective, and the
  # parsers loop only as long as the device's own longest answer.
  batch_axes = sharding.named(prep.mesh, ("batch",), prep.rules).spec
  reward = reward_total.grpo_reward(prep.config.reward, prep.tokenizer, prep.ew_tables,
                                    mesh=prep.mesh,
                                    batch_axes=batch_axes[0] if len(batch_axes) else None)
  return reward.fn, reward.label_encoder


def run_grpo(prep: Prepared, workdir: pathlib.Path, start_params: Mapping) -> dict:
  c = prep.config
  policy = policy_lib.AffectGPTPolicy(prep.model)
  lcfg = losses.GrpoLossConfig.from_config(c.grpo_loss)
  specials = tokenizer_lib.special_token_ids(prep.tokenizer, dict(c.data.tokenizer.special_tokens))
  sampling = sampler.SamplingConfig.from_dict(dict(
      c.sampling, eos_ids=(specials["eos"],), pad_id=specials["pad"]))
  scfg = grpo_step.StepConfig(sampling, lcfg)
  opt = optimizer(c.grpo, c.grpo.steps)
  state_sh = grpo_step.state_shardings(policy, prep.abstract, opt, prep.mesh, prep.rules)
  state = _place_state(grpo_step.init_state(policy, start_params, opt,
                                            jax.random.key(c.seed + 2)), state_sh)
  reward_fn, label_encoder = reward_fn_for(prep)
  pcfg = _pipeline_cfg(c.data.pipeline, _local_rows(c.grpo.prompts_per_step), c.seed + 1, True)
  loader = pipeline.prompt_loader(prep.sources["grpo"], prep.meta, prep.tokenizer, c.data, pcfg,
                                  label_encoder=label_encoder)
  step = grpo_step.make_step(policy, scfg, opt, reward_fn, mesh=prep.mesh, rules=prep.rules,
                             state_sh=state_sh, batch_sh=_batch_sharding(prep))
  keys = ("prompt_tokens", "prompt_mask", "gt_ids", "n_gt")
  result = loop.train(phase="grpo", step_fn=step, state=state, loader=loader,
                      total_steps=c.grpo.steps, workdir=workdir, config=c,
                      log_every=c.grpo.log_every, to_device=_to_mesh(prep, keys),
                      tokens_per_step=None,
                      show=("reward", "reward/accuracy", "kl"))
  return {"state": result.state, "preempted": result.preempted, "step": result.step}


def run_eval(prep: Prepared, params: Mapping, workdir: pathlib.Path, tag: str, step: int) -> dict:
  c = prep.config
  specials = tokenizer_lib.special_token_ids(prep.tokenizer, dict(c.data.tokenizer.special_tokens))
  sampling = sampler.SamplingConfig.from_dict(dict(
      c.sampling, greedy=True, max_new_tokens=c.eval.max_new_tokens, eos_ids=(specials["eos"],),
      pad_id=specials["pad"]))
  # Every process reads the whole held-out split (and scores all of it); each feeds its own
  # rows of every batch to the generation on the mesh.
  pcfg = _pipeline_cfg(c.data.pipeline, c.eval.batch_size, c.seed, False)
  pcfg.shard_index, pcfg.shard_count = 0, 1
  loader = pipeline.prompt_loader(prep.sources["eval"], prep.meta, prep.tokenizer, c.data, pcfg)
  to_dev = _to_device(prep, ("prompt_tokens", "prompt_mask"))
  names, gt = [], []
  batches = []
  for batch in loader:
    real = np.asarray(batch["example_mask"])
    names += [str(n) for n, keep in zip(batch["names"], real) if keep]
    gt += [str(g) for g, keep in zip(batch["gt_text"], real) if keep]
    dev = to_dev(batch)
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


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        phases: tuple[str, ...] = ("sft", "grpo"), *,
        mesh: jax.sharding.Mesh | None = None) -> dict:
  """The recipe (module doc) for `phases` ("sft", "grpo" or both); writes summary.json.

  With "grpo" alone, GRPO starts from the SFT checkpoint in <workdir>/checkpoints/sft, or from
  config.init_from (a launch.convert checkpoint or another run's workdir) when that is set.
  mesh: default `make_mesh(config)` over every device (tests pass one over fewer devices).
  """
  unknown = [p for p in phases if p not in ("sft", "grpo")]
  if unknown or not phases:
    raise ValueError(f"phases {phases}: use 'sft', 'grpo' or both.")
  t0 = time.perf_counter()
  mesh = make_mesh(config) if mesh is None else mesh
  check_mesh(config, mesh, phases)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  prep = prepare(config, workdir, mesh)
  summary = {"prepare_s": time.perf_counter() - t0, "workdir": str(workdir),
             "eval_dataset": config.data.sources.eval.dataset,
             "eval_split": config.data.sources.eval.split, "eval_clips": len(prep.sources["eval"]),
             "eval_overlap_dropped": {p: len(n) for p, n in prep.eval_overlap.items()}}
  params = prep.params                 # random init, or config.init_from
  init_from = config.get("init_from", "")
  if "sft" in phases:
    sft = run_sft(prep, workdir, params)
    if sft["preempted"]:
      return {"preempted": "sft", "step": sft["step"]}
    params = policy_lib.merge(sft["state"]["trainable"], sft["state"]["frozen"])
    sft_scores = run_eval(prep, params, workdir, "sft", config.sft.steps)
    summary.update(sft_eval_ew_f=sft_scores["ew_f"], sft_eval=sft_scores,
                   sft_steps=config.sft.steps, sft_skipped=sft["skipped"])
  elif not init_from:
    sft_dir = workdir / "checkpoints" / "sft"
    if not sft_dir.is_dir():
      raise FileNotFoundError(f"GRPO alone needs an SFT run in {sft_dir} or config.init_from; "
                              "run launch.sft first or set --config.init_from.")
    params = manager.load_initial_params(sft_dir, manager.abstract(params), init=params)
  if "grpo" in phases:
    grpo = run_grpo(prep, workdir, params)
    if grpo["preempted"]:
      return {"preempted": "grpo", "step": grpo["step"]}
    params = policy_lib.merge(grpo["state"]["trainable"], grpo["state"]["frozen"])
    grpo_scores = run_eval(prep, params, workdir, "grpo",
                           config.sft.steps * ("sft" in phases) + config.grpo.steps)
    summary.update(grpo_eval_ew_f=grpo_scores["ew_f"], grpo_eval=grpo_scores,
                   grpo_steps=config.grpo.steps)
    if "sft_eval_ew_f" in summary:
      summary["gain_ew_f"] = summary["grpo_eval_ew_f"] - summary["sft_eval_ew_f"]
  png = run_logging.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
  summary.update(plot=str(png) if png else None, total_s=time.perf_counter() - t0)
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
