"""The model an evaluation runs: tokenizer, model config, parameters, encoders, feature statistics.

  em = load(config, checkpoint, cache_root)      # what launch.evaluate scores

Set up as training is (affect_jax/experiment.py: the same tokenizer, model config, random init
with config.seed, config.init_from), then the parameters of `checkpoint` on top:
- a launch.convert parameter checkpoint (meta.json + params/),
- a run's workdir (its checkpoints/grpo, else checkpoints/sft: the newest readable step),
- a training checkpoint folder of numbered steps (e.g. WORKDIR/checkpoints/sft).
Leaves the checkpoint lacks keep their init / init_from values (a training checkpoint stores
only the trainable leaves; the frozen encoders come from init_from or the seed, as in
training); a parameter checkpoint holding every leaf is read alone (no random init). With
config.features.standardize the features are z-scored with the statistics of
config.data.sources.sft's split, computed as training computes them (reusing a run's cache
when `cache_root` is its <workdir>/data).

With a mesh (launch.evaluate passes config.mesh and config.sharding_rules) the parameters are
initialised and restored straight onto their logical-axis shardings
(experiment.param_shardings), so no device ever holds the whole model, and the encoders read
the towers where they lie; with several processes every process calls `load` alike. Without
one everything lies on the first device.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from affect_jax import distributed, experiment, sharding
from affect_jax.checkpoints import manager
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.data import features as features_lib
from affect_jax.models import affectgpt

RUN_PHASES = ("grpo", "sft")     # a workdir's checkpoint folders, the first present is used


@dataclasses.dataclass
class EvalModel:
  config: ml_collections.ConfigDict
  model: affectgpt.AffectGPTConfig
  params: dict
  tokenizer: Any
  checkpoint: str        # the folder the parameters were read from
  feature_key: str       # names the encoders in the feature caches
  video_fn: Callable     # frames float32[B, F, S, S, 3] -> float32[B, F, Dv]
  audio_fn: Callable     # windows float32[B, K, W] -> float32[B, K, Da]
  feature_stats: tuple   # (video mean, video std, audio mean, audio std)
  mesh: jax.sharding.Mesh | None = None   # where the params lie (None: the first device)
  rules: tuple | None = None              # the logical-axis rules of their shardings


def _has_steps(path: pathlib.Path) -> bool:
  return path.is_dir() and any(p.is_dir() and p.name.isdigit() and (p / "meta").is_dir()
                               for p in path.iterdir())


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
  """The folder holding the parameters of --checkpoint (module doc for what is accepted)."""
  p = pathlib.Path(path)
  if not p.is_dir():
    raise CheckpointError(f"--checkpoint={p}: no such folder; pass a launch.convert checkpoint "
                          "(meta.json + params/), a run's workdir or its checkpoints/<phase>.")
  if (p / "meta.json").is_file() or _has_steps(p):
    return p
  for phase in RUN_PHASES:
    if _has_steps(p / "checkpoints" / phase):
      return p / "checkpoints" / phase
  seeds = sorted(q.name for q in p.glob("seed_*")
                 if any(_has_steps(q / "checkpoints" / phase) for phase in RUN_PHASES))
  if seeds:
    raise CheckpointError(
        f"--checkpoint={p}: a multi-seed run (config.seeds) with one run per seed "
        f"({', '.join(seeds)}); pass one of them, e.g. --checkpoint={p / seeds[0]}.")
  raise CheckpointError(
      f"--checkpoint={p}: neither a launch.convert checkpoint (meta.json + params/) nor a run "
      f"(checkpoints/{{{','.join(RUN_PHASES)}}}/<step>) nor a folder of numbered steps; check "
      "the path.")


def _holds_every_leaf(path: pathlib.Path, abstract: dict) -> bool:
  """True when `path` is a parameter checkpoint with every leaf of `abstract`."""
  if not (path / "meta.json").is_file():
    return False
  stored = ocp.PyTreeCheckpointer().metadata(path.absolute() / "params").item_metadata.tree
  have = set(flax.traverse_util.flatten_dict(dict(stored)))
  return set(flax.traverse_util.flatten_dict(dict(abstract))) <= have


def _load_params(path, params: dict, what: str, init: bool = True) -> dict:
  try:
    return manager.load_initial_params(path, manager.abstract(params),
                                       init=params if init else None)
  except ValueError as e:      # CheckpointError, and shape mismatches
    raise CheckpointError(
        f"{what}={path}: {e} Evaluate with the config the checkpoint was made with "
        "(--config=configs/X.py and the same --config.model.* overrides; the tokenizer, "
        "config.tokenizer_dir, sets the vocabulary size).") from e


def _same_fn(a, b):
  return jnp.all(jnp.stack([jnp.array_equal(x, y) for x, y in
                            zip(jax.tree.leaves(a), jax.tree.leaves(b))]))


def _same(a, b, mesh) -> bool:
  """True when the trees are equal leaf by leaf (on a mesh: every process gets the answer)."""
  if mesh is None:
    return bool(jax.jit(_same_fn)(a, b))
  out = jax.jit(_same_fn, out_shardings=sharding.replicated(mesh))(a, b)
  return bool(distributed.host_value(out))


def load(config: ml_collections.ConfigDict, checkpoint: str, cache_root: str | os.PathLike,
         mesh: jax.sharding.Mesh | None = None, rules: tuple | None = None) -> EvalModel:
  """The model of `checkpoint` under `config` (module doc); caches under cache_root.
  mesh / rules: where the parameters go (None: the first device)."""
  root = pathlib.Path(cache_root)
  folder = resolve_checkpoint(checkpoint)
  experiment.resolve_media(config)
  with distributed.main_process_first("tokenizer"):
    tok = experiment.make_tokenizer(config, root)
  model = experiment.model_config(config, tok)
  init = experiment.init_fn(model)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            jax.eval_shape(init, jax.random.key(config.seed)))
  else:
    rules = tuple(rules) if rules is not None else sharding.DEFAULT_RULES
    shardings, boxed = experiment.param_shardings(model, mesh, rules)
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            sharding.unbox(boxed), shardings)
  key = experiment.feature_key(config, model)
  own_key = features_lib.checkpoint_key(key, str(folder.resolve()),
                                        str(os.stat(folder).st_mtime_ns))
  if _holds_every_leaf(folder, abstract):
    params = _load_params(folder, abstract, "--checkpoint", init=False)
    key = own_key            # the checkpoint's own encoders
  else:
    if mesh is None:
      params = jax.jit(init)(jax.random.key(config.seed))
    else:
      params = experiment.init_params(model, config.seed, mesh, rules)[0]
    if config.get("init_from", ""):
      params = _load_params(config.init_from, params, "config.init_from")
    base_encoders = {k: params[k] for k in ("vision", "audio")}
    params = _load_params(folder, params, "--checkpoint")
    if not _same(base_encoders, {k: params[k] for k in ("vision", "audio")}, mesh):
      key = own_key          # the checkpoint brings its own encoders
  video_fn, audio_fn = experiment.encoders(params, model, mesh)
  stats = experiment.IDENTITY_STATS
  if config.features.standardize:
    with distributed.main_process_first("datasets"):
      path, split = experiment.build_datasets(config.data, root)["sft"]
    source, _ = experiment.feature_source(path, split, key, video_fn, audio_fn, config)
    stats = experiment.feature_stats(source, True)
  return EvalModel(config, model, params, tok, str(folder), key, video_fn, audio_fn, stats,
                   mesh, rules)
