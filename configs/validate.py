"""Checks a whole config before a launcher does any work: value ranges, enums and cross-field
rules, every error found at once, each naming the field (as --config.<path>) and the fix.

  problems = validate.errors(config)              # [] when the config is usable
  validate.check(config, training=True)           # raises ConfigError listing all of them
  validate.check_mesh(config, phases)             # after distributed.initialize()

RULES holds the per-field rules as (pattern, rule) pairs; a pattern (fnmatch, over the dotted
path from the experiment config's root) applies to every field it matches, in whatever section
and config the field appears; fields a config lacks are not checked. A launcher whose config is
one section of the experiment config (launch.prepare reads configs/data.py) passes root='data'.
The sections with a validating dataclass in the library (grpo_loss, reward, sampling) are also
passed through it, so its own checks (enums, shapes) run here too, before any work.
"""
from __future__ import annotations

import difflib
import fnmatch
import math
from typing import Any, Callable, Iterable

import ml_collections


class ConfigError(ValueError):
  """A config a user wrote that cannot run; the message lists every problem found."""


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


# Rules: value -> None when fine, else what is wrong and what to set.
Rule = Callable[[Any], "str | None"]


def above(low: float) -> Rule:
  return lambda v: None if _number(v) and v > low else f"must be a number > {low}"


def at_least(low: int) -> Rule:
  return lambda v: None if _integer(v) and v >= low else f"must be an integer >= {low}"


def within(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
  def rule(v):
    ok = _number(v) and (v > low if low_open else v >= low) and (v < high if high_open else
                                                                   v <= high)
    return None if ok else (f"must be a number in {'(' if low_open else '['}{low}, {high}"
                            f"{')' if high_open else ']'}")
  return rule


def finite() -> Rule:
  return lambda v: None if _number(v) else "must be a finite number"


def one_of(*choices) -> Rule:
  return lambda v: None if v in choices else f"must be one of {list(choices)}"


def increasing(low: int = 1) -> Rule:
  """A non-empty, strictly increasing sequence of integers >= low (bucket lengths)."""
  def rule(v):
    items = list(v) if isinstance(v, (tuple, list)) else None
    ok = (items and all(_integer(x) and x >= low for x in items)
          and all(b > a for a, b in zip(items, items[1:])))
    return None if ok else f"must be strictly increasing integers >= {low}, e.g. (64, 128)"
  return rule


def seed_list() -> Rule:
  def rule(v):
    ok = (isinstance(v, (tuple, list)) and all(_integer(s) and s >= 0 for s in v)
          and len(set(v)) == len(v))
    return None if ok else ("must be a tuple of distinct integers >= 0, e.g. '(0, 1, 2)' ('()': "
                            "one run with config.seed in the workdir itself)")
  return rule


def mesh_axis() -> Rule:
  return lambda v: None if _integer(v) and (v >= 1 or v == -1) else (
      "must be a positive integer or -1 (all remaining devices)")


def vocab() -> Rule:
  return lambda v: None if _integer(v) and (v >= 1 or v == -1) else (
      "must be a positive integer or -1 (taken from the tokenizer)")


# (fnmatch pattern over the full dotted path, rule). Every field a pattern matches is checked.
RULES: tuple[tuple[str, Rule], ...] = (
    ("seed", at_least(0)),
    ("seeds", seed_list()),
    # Optimisation (sft, grpo).
    # (The first pattern that matches a field is its rule: end_learning_rate before the rest.)
    ("*.end_learning_rate", within(0, math.inf, high_open=True)),
    ("*learning_rate", above(0)),
    ("sft.steps", at_least(0)),
    ("grpo.steps", at_least(0)),
    ("*.warmup_steps", at_least(0)),
    ("*.weight_decay", within(0, math.inf, high_open=True)),
    ("*.grad_clip", above(0)),
    ("*.log_every", at_least(1)),
    ("*micro_batches", at_least(1)),
    ("*logprob_chunk", at_least(1)),
    # Batch sizes (global rows; the mesh check below splits them).
    ("*batch_size", at_least(1)),
    ("grpo.prompts_per_step", at_least(1)),
    # GRPO diagnostics (configs/demo.py).
    ("grpo.samples_every", at_least(0)),
    ("grpo.samples_per_log", at_least(1)),
    ("grpo.eval_every", at_least(0)),
    # GRPO objective (configs/grpo_loss.py).
    ("grpo_loss.num_generations", at_least(2)),
    ("grpo_loss.beta", within(0, math.inf, high_open=True)),
    ("grpo_loss.epsilon_low", within(0, 1, high_open=True)),
    ("grpo_loss.epsilon_high", within(0, math.inf, high_open=True)),
    ("grpo_loss.advantage_eps", within(0, math.inf, high_open=True)),
    ("grpo_loss.std_ddof", one_of(0, 1)),
    ("grpo_loss.normalizer_constant", above(0)),
    ("grpo_loss.num_iterations", at_least(1)),
    ("grpo_loss.overlong_buffer", at_least(0)),
    ("grpo_loss.overlong_penalty", within(0, math.inf, high_open=True)),
    ("grpo_loss.oversample", at_least(1)),
    # Generation (sampling, eval, unibench and its LLM extractor).
    ("*max_new_tokens", at_least(1)),
    ("*temperature", above(0)),
    ("*top_p", within(0, 1, low_open=True)),
    ("*top_k", at_least(0)),
    ("sampling.repetition_penalty", above(0)),
    ("unibench.llm.repetition_penalty", above(0)),
    ("unibench.repetition_penalty", within(0, math.inf, high_open=True)),
    ("sampling.buckets", increasing()),
    ("unibench.llm.buckets", increasing()),
    ("unibench.extractor", one_of("answer", "rule", "llm")),
    ("unibench.sentiment", one_of("wheel", "llm")),
    ("unibench.negation_window", at_least(0)),
    ("unibench.llm.parsing", one_of("lenient", "official")),
    ("unibench.llm.dtype", one_of("", "bfloat16", "float32")),
    # Reward (configs/reward.py).
    ("reward.terms.*.weight", finite()),
    ("reward.terms.*.normalize", one_of("none", "batch")),
    ("reward.normalize_eps", above(0)),
    ("reward.ew.max_labels", at_least(1)),
    ("reward.ew.max_gt_labels", at_least(1)),
    ("reward.ew.max_answer_tokens", at_least(0)),
    ("reward.ew.max_think_tokens", at_least(0)),
    ("reward.penalty", one_of("none", "p1", "p2", "p3")),
    ("reward.p3_form", one_of("shifted", "raw")),
    # Checkpoints (configs/checkpoint.py).
    ("checkpoint.save_every_steps", at_least(1)),
    ("checkpoint.keep", at_least(0)),
    ("checkpoint.keep_period", at_least(0)),
    ("checkpoint.preemption_sync_every_steps", at_least(1)),
    # Mesh and model.
    ("mesh.*", mesh_axis()),
    ("model.llm.vocab_size", vocab()),
    ("model.*.hidden_size", at_least(1)),
    ("model.*.intermediate_size", at_least(1)),
    ("model.*.num_hidden_layers", at_least(1)),
    ("model.*.num_attention_heads", at_least(1)),
    ("model.llm.num_key_value_heads", at_least(1)),
    ("model.llm.attention_impl", one_of("auto", "reference", "xla", "cudnn", "cpu_tuned")),
    ("model.llm.lora.rank", at_least(0)),
    ("model.llm.lora.alpha", within(0, math.inf, high_open=True)),
    ("model.llm.lora.dropout", within(0, 1, high_open=True)),
    ("model.audio_layers_avg", at_least(1)),
    ("model.*dtype", one_of("float32", "bfloat16", "float16")),
    # Data (configs/data.py).
    ("data.media.num_frames", at_least(1)),
    ("data.media.image_size", at_least(1)),
    ("data.media.sample_rate", at_least(1)),
    ("data.media.num_windows", at_least(1)),
    ("data.media.window_seconds", above(0)),
    ("data.media.audio_normalize_epsilon", above(0)),
    ("data.media.frame_resize", one_of("pil_bilinear", "cv2_linear")),
    ("data.media.face_resize", one_of("pil_bilinear", "cv2_linear")),
    ("data.media.frame_sampling", one_of("official", "floor", "linspace")),
    ("data.media.face_channel_order", one_of("rgb", "bgr")),
    ("data.media.audio_normalize", one_of("checkpoint", "on", "off")),
    ("data.media.audio_normalize_span", one_of("clip", "window")),
    ("data.synthetic.*_prob", within(0, 1)),
    ("data.synthetic.splits.*", at_least(0)),
    ("data.synthetic.max_words_primary", at_least(1)),
    ("data.synthetic.frame_size", at_least(1)),
    ("data.synthetic.fps", at_least(1)),
    ("data.synthetic.wav_sample_rate", at_least(1)),
    ("data.synthetic.hash_length", at_least(1)),
    ("data.tokenizer.vocab_size", at_least(1)),
    ("data.tokenizer.min_frequency", at_least(1)),
    ("data.tokenizer.model_max_length", at_least(1)),
    ("data.prompt.tokens_per_block", at_least(1)),
    ("data.prompt.max_length", at_least(1)),
    ("data.prompt.video_prompt", one_of("faces", "frames")),
    ("data.prompt.target_format", one_of("think_answer", "answer", "labels")),
    ("data.prompt.prompt_buckets", increasing()),
    ("data.prompt.sequence_buckets", increasing()),
    ("data.builder.media", one_of("raw", "paths")),
    ("data.builder.visual_source", one_of("frames", "faces")),
    ("data.builder.faces_fallback", one_of("frames", "error")),
    ("data.builder.validate", one_of("decode", "exists")),
    ("data.builder.compression", one_of("zlib", "none")),
    ("data.builder.num_workers", at_least(0)),
    ("data.builder.jobs_per_worker", at_least(1)),
    ("data.builder.max_cell_chars", at_least(1)),
    ("data.pipeline.seed", at_least(0)),
    ("data.pipeline.num_epochs", at_least(0)),
    ("data.pipeline.worker_count", at_least(0)),
    ("data.pipeline.worker_buffer_size", at_least(1)),
    ("data.pipeline.read_threads", at_least(1)),
    ("data.pipeline.read_buffer", at_least(1)),
)


def flatten(config, prefix: str = "") -> dict[str, Any]:
  """Dotted path -> value of every leaf of a ConfigDict (dict fields are ConfigDicts too)."""
  out = {}
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and len(value):
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def field_paths(config) -> list[str]:
  """Every field a --config.<path> override can name: the leaves and the sections."""
  paths = set()
  for leaf in flatten(config):
    parts = leaf.split(".")
    paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
  return sorted(paths)


def suggest(path: str, known: Iterable[str]) -> str:
  """'; did you mean 'x.y'?' for the closest known path, or ''."""
  match = difflib.get_close_matches(path, list(known), n=1, cutoff=0.6)
  return f"; did you mean '{match[0]}'?" if match else ""


def _section(config, path: str):
  node = config
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return None
    node = node[part]
  return node


def _field_errors(config, root: str) -> list[tuple[str, str]]:
  """(section, message) of every rule a field breaks."""
  full = f"{root}." if root else ""
  out = []
  for path, value in flatten(config).items():
    for pattern, rule in RULES:
      if fnmatch.fnmatchcase(full + path, pattern):
        why = rule(value)
        if why:
          out.append((path.split(".")[0], f"config.{path}={value!r}: {why}; set "
                                          f"--config.{path}=..."))
        break
  return out


def _library_errors(config, done: set[str]) -> list[str]:
  """The library's own checks of the sections it validates (skipped for a section whose
  fields already broke a rule, so one mistake is reported once)."""
  out = []

  def run(section: str, fn):
    if section in config and section not in done:
      try:
        fn(config[section])
      except (ValueError, TypeError) as e:
        out.append(f"config.{str(e).removeprefix('config.')}")

  from affect_jax.rl import losses
  from affect_jax.rewards import total as reward_total
  from affect_jax.generation import sampler
  run("grpo_loss", losses.GrpoLossConfig.from_config)
  run("reward", reward_total.RewardConfig.from_config)
  run("sampling", lambda s: sampler.SamplingConfig.from_dict(s.to_dict()))
  return out


def _cross_errors(config, root: str, training: bool) -> list[str]:
  """Rules between fields."""
  out = []
  mesh = _section(config, "mesh")
  if mesh is not None:
    sizes = {k: mesh[k] for k in mesh.keys()}
    if sum(1 for v in sizes.values() if v == -1) > 1:
      out.append(f"config.mesh={sizes}: at most one axis may be -1 (all remaining devices); "
                 "give the others their sizes.")
  llm = _section(config, "model.llm")
  if llm is not None and all(_integer(llm.get(k)) and llm.get(k) > 0 for k in
                             ("hidden_size", "num_attention_heads", "num_key_value_heads")):
    if llm.hidden_size % llm.num_attention_heads:
      out.append(f"config.model.llm.hidden_size={llm.hidden_size} is not a multiple of "
                 f"config.model.llm.num_attention_heads={llm.num_attention_heads}.")
    if llm.num_attention_heads % llm.num_key_value_heads:
      out.append(f"config.model.llm.num_attention_heads={llm.num_attention_heads} is not a "
                 f"multiple of config.model.llm.num_key_value_heads={llm.num_key_value_heads}.")
  grpo, loss = _section(config, "grpo"), _section(config, "grpo_loss")
  if grpo is not None and loss is not None and all(
      _integer(v) and v >= 1 for v in (grpo.get("prompts_per_step"), loss.get("oversample"),
                                       loss.get("micro_batches"))):
    if grpo.prompts_per_step % loss.micro_batches:
      out.append(f"config.grpo.prompts_per_step={grpo.prompts_per_step}: the step trains on "
                 f"these prompts in config.grpo_loss.micro_batches={loss.micro_batches} equal "
                 f"micro-batches; use a multiple of {loss.micro_batches}.")
  prompt = _section(config, "prompt" if root == "data" else "data.prompt")
  if training and prompt is not None and _integer(prompt.get("max_length")):
    at = "prompt" if root == "data" else "data.prompt"
    for name, extra, what in (("prompt_buckets", 1, "<bos> + prompt"),
                              ("sequence_buckets", 2, "<bos> + prompt + target + <eos>")):
      buckets = prompt.get(name)
      if (isinstance(buckets, (tuple, list)) and buckets and all(_integer(b) for b in buckets)
          and max(buckets) < prompt.max_length + extra):
        out.append(f"config.{at}.{name}={tuple(buckets)}: the largest must hold "
                   f"max_length + {extra} = {prompt.max_length + extra} tokens ({what}); add a "
                   f"bucket >= {prompt.max_length + extra} or lower config.{at}.max_length.")
  sources = _section(config, "data.sources")
  if sources is not None and root != "data":
    from affect_jax.data.builders import mer
    for phase in sources.keys():
      dataset = _section(sources, f"{phase}.dataset")
      if dataset is not None and dataset not in mer.DATASETS:
        out.append(f"config.data.sources.{phase}.dataset={dataset!r}: unknown; use one of "
                   f"{list(mer.DATASETS)}{suggest(str(dataset), mer.DATASETS)}")
      elif training and dataset != "demo" and not _section(sources, f"{phase}.data_dir"):
        out.append(f"config.data.sources.{phase}.data_dir is empty; set "
                   f"--config.data.sources.{phase}.data_dir to the {dataset} folder.")
    datasets = {_section(sources, f"{p}.dataset") for p in sources.keys()}
    if training and datasets - {"demo"} and not config.get("tokenizer_dir", ""):
      out.append("config.tokenizer_dir is empty but the data is not the demo set; set "
                 "--config.tokenizer_dir to the decoder's tokenizer folder (e.g. "
                 "Qwen2.5-7B-Instruct).")
  return out


def errors(config, root: str = "", training: bool = False) -> list[str]:
  """Every problem of `config` (module doc); [] when it is usable.

  root: where `config` sits in the experiment config ('data' for configs/data.py).
  training: also the rules only training needs (buckets holding max_length).
  """
  fields = _field_errors(config, root)
  out = [m for _, m in fields]
  if not root:
    out += _library_errors(config, {s for s, _ in fields})
  return out + _cross_errors(config, root, training)


def check(config, root: str = "", training: bool = False) -> None:
  """Raises ConfigError listing every problem of `config` (see `errors`)."""
  problems = errors(config, root, training)
  if len(problems) == 1:
    raise ConfigError(problems[0])
  if problems:
    raise ConfigError(f"the config has {len(problems)} errors:\n  " + "\n  ".join(problems))


def check_mesh(config, phases: tuple[str, ...] = ("sft", "grpo")) -> None:
  """The batch sizes against the mesh over this run's devices (experiment.make_mesh and
  experiment.check_mesh); call it after distributed.initialize(), before any data or compile."""
  from affect_jax import experiment
  try:
    experiment.check_mesh(config, experiment.make_mesh(config), phases)
  except ValueError as e:
    raise ConfigError(str(e)) from None
