"""The one setup path: a config -> mesh, tokenizer, model config, parameters, the phases' sources
with their feature caches, and the feature statistics.

  prep = experiment.prepare(config, workdir, mesh)      # training (affect_jax/train/recipe.py)

Held-out evaluation (recipe.run_eval), MER-UniBench evaluation (affect_jax/eval/model.py,
affect_jax/eval/unibench.py) and the benchmarks (affect_jax/bench/) build what they need from the
same steps:
- `make_mesh` / `check_mesh`: the (data, fsdp, tensor) mesh of config.mesh and the phases'
  global batches against it (sharding.check_batch_divisible);
- `resolve_media`: config.data.media.hubert_do_normalize from config.init_from;
- `build_datasets`: each phase's dataset built (the demo set generated on first use);
- `make_tokenizer` / `model_config`: the tokenizer, and the model section with the fields it
  leaves to the tokenizer (-1) filled in (`fixed_model_config` without a tokenizer, for
  --bench=plan; `text_model`: a HF Qwen2 checkpoint, for the other model benchmarks);
- `param_shardings`, `init_params` and `encoders`: the params' shardings, parameters on them,
  and the frozen encoders as functions of clips; `feature_key` names those encoders in the
  feature caches;
- `feature_source`: one split's records with its cached features (data/features.py);
- `feature_stats` / `standardize`: the train features' per-dimension mean and std, and a
  batch's features z-scored with them;
- `optimizer`, `loader_config` / `sampling_config`: AdamW of a phase's section, the pipeline
  section for one loader, and the sampling section with the tokenizer's EOS and PAD.
Every function takes the config (or a section of it) as an argument; nothing here reads
configs/.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from affect_jax import distributed, sharding
from affect_jax.checkpoints import hf_qwen2, manager, params_io
from affect_jax.data import features as features_lib
from affect_jax.data import overlap, pipeline, synthetic
from affect_jax.data import prompts as prompts_lib
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.data.builders import mer
from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import wheel as wheel_lib
from affect_jax.generation import sampler
from affect_jax.models import affectgpt, qwen2
from affect_jax.models.lora import LoraConfig

PHASES = ("sft", "grpo", "eval")
# Added to the train features' std so that a constant dimension does not divide by zero.
FEATURE_STD_EPS = 1e-6
# The benchmarks' LoRA scale: alpha = LORA_ALPHA_PER_RANK x rank (the peers' setting).
LORA_ALPHA_PER_RANK = 2.0
# Feature statistics that leave the features as they are (config.features.standardize off).
IDENTITY_STATS = (0.0, 1.0, 0.0, 1.0)


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


@dataclasses.dataclass
class Prepared:
  """Everything the training phases share (`prepare`)."""
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
  batches = [("eval.batch_size", int(config.eval.batch_size), None, 1)]
  if "sft" in phases:
    batches.append(("sft.batch_size", int(config.sft.batch_size), "sft.micro_batches",
                    int(config.sft.micro_batches)))
  if "grpo" in phases:
    batches.append(("grpo.prompts_per_step", int(config.grpo.prompts_per_step),
                    "grpo_loss.micro_batches", int(config.grpo_loss.micro_batches)))
  for name, rows, micro_name, micro in batches:
    sharding.check_batch_divisible(
        rows, mesh, what=f"config.{name}={rows}", fix=f"set --config.{name} to",
        micro=micro, micro_what=f"config.{micro_name or 'micro_batches'}",
        mesh_what="config.mesh",
        processes=jax.process_count())


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


def data_root(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """Where built datasets, the demo set and the tokenizer go: config.data.cache_dir, else
  <workdir>/data."""
  return pathlib.Path(config.data.cache_dir or workdir / "data")


def build_datasets(dc: ml_collections.ConfigDict, root: pathlib.Path) -> dict:
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


def make_tokenizer(config: ml_collections.ConfigDict, root: pathlib.Path):
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


def model_config(config: ml_collections.ConfigDict, tok) -> affectgpt.AffectGPTConfig:
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


def text_model(hf_dir: str, dtype: str | None = None, lora_rank: int = 0
               ) -> tuple[qwen2.Qwen2Config, dict]:
  """(config, params) of a HF Qwen2 checkpoint (the benchmarks' text-only decoder): `dtype`
  overrides the checkpoint's; lora_rank > 0 adds LoRA adapters of that rank (alpha
  LORA_ALPHA_PER_RANK x rank), 0 none."""
  lora = LoraConfig(rank=lora_rank, alpha=LORA_ALPHA_PER_RANK * lora_rank) if lora_rank else None
  return hf_qwen2.load(hf_dir, dtype=dtype, lora=lora)


def fixed_model_config(config: ml_collections.ConfigDict, what: str
                       ) -> affectgpt.AffectGPTConfig:
  """The model section as it is, for work without a tokenizer (`what` names it in the error):
  every field the tokenizer would fill in (-1) must be set."""
  llm = config.model.llm
  unset = [f"model.llm.{k}" for k in ("vocab_size",) if int(llm[k]) < 0]
  unset += [f"model.placeholder_ids.{k}" for k, v in config.model.placeholder_ids.items()
            if int(v) < 0]
  if unset:
    raise ValueError(f"{what}: the config leaves {unset} to the tokenizer (-1); set them "
                     f"with --config.{unset[0]}=... or use a config that fixes them "
                     "(configs/affectgpt_r1_7b.py).")
  return affectgpt.AffectGPTConfig.from_config(config.model)


def init_fn(model: affectgpt.AffectGPTConfig) -> Callable:
  """rng -> the model's randomly initialised parameters (plain arrays)."""
  return lambda k: sharding.unbox(affectgpt.init(model, k))


def param_shardings(model: affectgpt.AffectGPTConfig, mesh: jax.sharding.Mesh, rules: tuple
                    ) -> tuple[Any, Any]:
  """(shardings, abstract): the params' NamedShardings on `mesh` under `rules` and their boxed
  ShapeDtypeStructs; a parameter the mesh cannot split is an error (nothing is allocated)."""
  abstract = jax.eval_shape(lambda k: affectgpt.init(model, k), jax.random.key(0))
  sharding.check_divisible(abstract, mesh, rules)
  return sharding.shardings(abstract, mesh, rules), abstract


def init_params(model: affectgpt.AffectGPTConfig, seed: int, mesh: jax.sharding.Mesh,
                rules: tuple) -> tuple[dict, Any]:
  """(params, abstract): the random init of `seed` made straight onto the params' logical-axis
  shardings, and their boxed ShapeDtypeStructs; a parameter the mesh cannot split is an error
  before anything is allocated."""
  param_sh, abstract = param_shardings(model, mesh, rules)
  return jax.jit(init_fn(model), out_shardings=param_sh)(jax.random.key(seed)), abstract


def feature_key(config: ml_collections.ConfigDict, model: affectgpt.AffectGPTConfig) -> str:
  """Names the frozen encoders in the feature caches: those of config.init_from, else of the
  random init of config.seed, with the encoders' settings."""
  return features_lib.checkpoint_key(
      config.get("init_from", "") or f"seed={config.seed}",
      json.dumps(model.vision.__dict__, sort_keys=True, default=str),
      json.dumps(model.audio.__dict__, sort_keys=True, default=str))


def encoders(params: Mapping, model: affectgpt.AffectGPTConfig,
             mesh: jax.sharding.Mesh | None = None) -> tuple[Callable, Callable]:
  """(video_fn, audio_fn): frames float32[B, F, S, S, 3] -> float32[B, F, Dv] and windows
  float32[B, K, W] -> float32[B, K, Da], numpy in and out.

  With a mesh the encoders read the frozen towers where they lie: every process feeds the same
  clips and gets all features back (the parameters are arguments: they may span other
  processes). Without one the parameters are bound into one device's programs.
  """
  if mesh is None:
    video = jax.jit(lambda f: affectgpt.encode_video(params, model, f))
    audio = jax.jit(lambda w: affectgpt.encode_audio(params, model, w))
    return video, audio
  rep = sharding.replicated(mesh)
  video_jit = jax.jit(lambda p, f: affectgpt.encode_video(p, model, f), out_shardings=rep)
  audio_jit = jax.jit(lambda p, w: affectgpt.encode_audio(p, model, w), out_shardings=rep)
  video_fn = lambda f: distributed.host_value(video_jit(params, distributed.put(f, rep)))
  audio_fn = lambda w: distributed.host_value(audio_jit(params, distributed.put(w, rep)))
  return video_fn, audio_fn


def feature_source(path: str, split: str, key: str, video_fn: Callable, audio_fn: Callable,
                   config: ml_collections.ConfigDict) -> tuple[features_lib.FeatureSource, dict]:
  """(source, metadata) of one built split whose media the cached encoder features replace
  (the cache is built on first use, config.features.batch_size clips per call)."""
  source, meta = mer.load_source(path, split)
  cache = features_lib.build_feature_cache(source, meta, path, split, key, video_fn, audio_fn,
                                           config.data, batch_size=config.features.batch_size)
  base, meta = mer.load_source(path, split, skip_media=True)
  return features_lib.FeatureSource(base, cache), meta


def source_text(dc: ml_collections.ConfigDict, phase: str) -> str:
  """config.data.sources.<phase> as the user configured it, for messages."""
  spec = dc.sources[phase]
  return (f"config.data.sources.{phase} ({spec.dataset} split '{spec.split}' in "
          f"{spec.data_dir or 'the generated demo set'})")


def feature_stats(source, standardize: bool) -> tuple:
  """Per-dimension mean / std of the train features (identity when standardize is off)."""
  v = np.stack([source[i]["video_features"] for i in range(len(source))])
  a = np.stack([source[i]["audio_features"] for i in range(len(source))])
  if not standardize:
    return IDENTITY_STATS
  return (v.mean((0, 1)), v.std((0, 1)) + FEATURE_STD_EPS,
          a.mean((0, 1)), a.std((0, 1)) + FEATURE_STD_EPS)


def standardize(video: np.ndarray, audio: np.ndarray, stats: tuple
                ) -> tuple[np.ndarray, np.ndarray]:
  """A batch's features z-scored with `feature_stats`, float32."""
  vm, vs, am, as_ = stats
  return ((video - vm) / vs).astype(np.float32), ((audio - am) / as_).astype(np.float32)


def loader_config(base: ml_collections.ConfigDict, batch_size: int, seed: int, train: bool
                  ) -> ml_collections.ConfigDict:
  """The pipeline section `base` with one loader's batch size and seed: training loaders
  shuffle, repeat and drop the last partial batch; the others read each record once, in order,
  the last batch padded."""
  p = ml_collections.ConfigDict(base.to_dict())
  p.batch_size = batch_size
  p.seed = seed
  p.shuffle = train
  p.num_epochs = 0 if train else 1
  p.drop_remainder = train
  return p


def sampling_config(config: ml_collections.ConfigDict, tok, **fields) -> sampler.SamplingConfig:
  """config.sampling with `fields` set over it, stopping at the tokenizer's EOS and padding
  with its PAD."""
  specials = tokenizer_lib.special_token_ids(tok, dict(config.data.tokenizer.special_tokens))
  return sampler.SamplingConfig.from_dict(dict(
      config.sampling, **fields, eos_ids=(specials["eos"],), pad_id=specials["pad"]))


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
  root = data_root(config, workdir)
  with distributed.main_process_first("datasets and tokenizer"):
    datasets = build_datasets(dc, root)
    tok = make_tokenizer(config, root)
  model = model_config(config, tok)
  params, abstract = init_params(model, config.seed, mesh, rules)
  init_from = config.get("init_from", "")
  if init_from:
    params = manager.load_initial_params(init_from, manager.abstract(params), init=params)
  key = feature_key(config, model)
  video_fn, audio_fn = encoders(params, model, mesh)
  sources, meta = {}, {}
  for phase, (path, split) in datasets.items():
    sources[phase], meta = feature_source(path, split, key, video_fn, audio_fn, config)
  dropped = {}
  for phase in ("sft", "grpo"):     # the overlap rule (data/overlap.py)
    sources[phase], dropped[phase] = overlap.drop_eval_clips(
        sources[phase], sources[phase].names, sources["eval"].names,
        what=source_text(dc, phase), eval_what=source_text(dc, "eval"))
  stats = feature_stats(sources["sft"], config.features.standardize)
  tables = wheel_lib.load_tables(config.ew_dir or None)
  return Prepared(config, model, params, tok, sources, meta, stats, tables, mesh, rules,
                  abstract, eval_overlap=dropped)


def model_inputs(batch: Mapping, stats: tuple, keep: tuple[str, ...]) -> dict:
  """A loader's batch -> the model's inputs: its arrays named in `keep` and the features
  standardised (`standardize`), numpy."""
  out = {k: v for k, v in pipeline.device_arrays(batch).items() if k in keep}
  out["video"], out["audio"] = standardize(batch["video"], batch["audio"], stats)
  return out
