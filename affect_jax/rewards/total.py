"""The reward: the configured terms (affect_jax/rewards/registry.py), their weighted sum and the
length penalty, jittable, per completion.

  cfg = total.RewardConfig.from_config(config.reward)
  resources = total.setup(cfg, registry.Context(tokenizer, wheel_tables))    # host, once
  out = total.completion_rewards(ids, lengths, rows, resources, cfg)
  # out: every term [R], penalty [R], total [R], and the analyses' outputs (EW: n_pred, bad,
  # precision, recall, scored, hits)

total = sum over reward.terms (in registration order) of weight * term, a term standardised
over the batch first when its normalize is 'batch', and multiplied by the length penalty
(affect_jax/rewards/penalty.py) when it is in reward.penalty_terms. The penalty compares the
answer's item count (the EW analysis' n_pred) with the ground truth's (rows n_gt).
`metric_names(cfg)` lists what the GRPO step logs: every term, the penalty and the analyses'
stats.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax import config_dataclass
from affect_jax.rewards import penalty as penalty_lib
from affect_jax.rewards import registry

# The analysis the length penalty reads n_pred from (the answer's item count).
PENALTY_ANALYSIS = "ew"
PENALTY_ROWS = ("n_gt",)
DEFAULT_TERMS = (("accuracy", 1.0), ("format", 0.1), ("alignment", 0.0), ("dual", 0.0))


def _default_terms():
  return tuple((name, registry.get(name).config(weight=w)) for name, w in DEFAULT_TERMS)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Validated reward settings (configs/reward.py). terms: ((name, its TermConfig), ...) in
  registration order (from_config sorts them); analyses: ((name, its config), ...) of every
  analysis the terms or the penalty read (defaults filled in)."""
  terms: tuple = dataclasses.field(default_factory=_default_terms)
  analyses: tuple = ()
  penalty: str = "none"
  penalty_terms: tuple = ("accuracy",)
  p3_form: str = "shifted"
  normalize_eps: float = 1e-6

  def __post_init__(self):
    names = [n for n, _ in self.terms]
    if not names:
      raise ValueError("reward.terms: no term; configure at least one (e.g. accuracy).")
    for name in names:
      registry.get(name)
    if self.penalty not in penalty_lib.PENALTIES:
      raise ValueError(f"reward.penalty='{self.penalty}': expected one of "
                       f"{penalty_lib.PENALTIES}.")
    # With a penalty on, it must multiply configured terms; off, registered names suffice.
    known = names if self.penalty != "none" else list(registry.TERMS)
    unknown = [t for t in self.penalty_terms if t not in known]
    if unknown:
      raise ValueError(f"reward.penalty_terms: unknown {unknown}; terms are {tuple(known)}.")
    if self.p3_form not in penalty_lib.P3_FORMS:
      raise ValueError(f"reward.p3_form='{self.p3_form}': expected one of "
                       f"{penalty_lib.P3_FORMS}.")
    if not (math.isfinite(self.normalize_eps) and self.normalize_eps > 0):
      raise ValueError(f"reward.normalize_eps={self.normalize_eps}: must be > 0.")
    # Every analysis a term (or the penalty) reads gets its config, default when not given.
    have = dict(self.analyses)
    for name in self.needed_analyses():
      if name not in have:
        have[name] = registry.ANALYSES[name].config()
    object.__setattr__(self, "analyses", tuple(sorted(have.items())))

  def needed_analyses(self) -> tuple:
    names = [registry.get(n).analysis for n, _ in self.terms]
    if self.penalty != "none":
      names.append(PENALTY_ANALYSIS)
    return tuple(sorted({n for n in names if n}))

  def term(self, name: str):
    return dict(self.terms)[name]

  def analysis(self, name: str):
    return dict(self.analyses)[name]

  def weight(self, name: str) -> float:
    return self.term(name).weight

  @classmethod
  def from_config(cls, section) -> "RewardConfig":
    """From the reward config section (a ConfigDict or mapping; module doc of
    configs/reward.py): terms and analyses built with their registered dataclasses."""
    if isinstance(section, cls):
      return section
    values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    registry.load()
    plain = {f.name for f in dataclasses.fields(cls)} - {"terms", "analyses"}
    unknown = sorted(set(values) - plain - {"terms"} - set(registry.ANALYSES))
    if unknown:
      raise ValueError(f"reward: unknown fields {unknown}; known: "
                       f"{sorted(plain | {'terms'} | set(registry.ANALYSES))}.")
    kwargs = {k: values[k] for k in plain if k in values}
    terms = kwargs.get("penalty_terms")
    if isinstance(terms, str):
      kwargs["penalty_terms"] = tuple(t.strip() for t in terms.split(",") if t.strip())
    elif terms is not None:
      kwargs["penalty_terms"] = tuple(terms)
    if "terms" in values:
      # Registration order (config sections do not keep theirs): the sum's order, and the
      # order of the logged metrics, do not depend on how the config was written.
      order = {name: i for i, name in enumerate(registry.TERMS)}
      for name in values["terms"]:
        registry.get(name)
      built = []
      for name, term_section in sorted(values["terms"].items(), key=lambda kv: order[kv[0]]):
        spec = registry.get(name)
        try:
          built.append((name, config_dataclass.build(spec.config, term_section or {},
                                                     name=f"reward.terms.{name}")))
        except (TypeError, ValueError) as e:
          message = str(e)
          if not message.startswith("reward."):
            message = f"reward.terms.{name}: {message}"
          raise ValueError(message) from None
      kwargs["terms"] = tuple(built)
    analyses = []
    for name in registry.ANALYSES:
      if name in values:
        analyses.append((name, config_dataclass.build(registry.ANALYSES[name].config,
                                                      values[name], name=f"reward.{name}")))
    kwargs["analyses"] = tuple(analyses)
    return cls(**kwargs)


def metric_names(cfg: RewardConfig) -> tuple:
  """What the GRPO step logs as reward/<name> (means over the batch): every configured term,
  the penalty factor, then the stats of the analyses that run."""
  stats = [s for name in cfg.needed_analyses() for s in registry.ANALYSES[name].stats]
  return tuple(n for n, _ in cfg.terms) + ("penalty",) + tuple(stats)


def row_keys(cfg: RewardConfig) -> tuple:
  """The batch rows the reward reads."""
  keys = list(PENALTY_ROWS)
  for name, _ in cfg.terms:
    keys += registry.get(name).row_keys
  for name in cfg.needed_analyses():
    keys += registry.ANALYSES[name].row_keys
  return tuple(dict.fromkeys(keys))


def setup(cfg: RewardConfig, context: registry.Context) -> dict:
  """Host, once: the resources of every analysis and term that has a setup (device tables),
  keyed by name; pass them to completion_rewards (closed over or as jit arguments)."""
  out = {}
  for name in cfg.needed_analyses():
    a = registry.ANALYSES[name]
    if a.setup is not None:
      out[f"analysis/{name}"] = a.setup(context, cfg.analysis(name))
  for name, tcfg in cfg.terms:
    t = registry.get(name)
    if t.setup is not None:
      out[name] = t.setup(context, tcfg)
  return out


def term_values(ids, lengths, rows, resources: dict, cfg: RewardConfig) -> dict:
  """Per completion: every term [R] and the analyses' outputs, before the total (jittable;
  row by row, so it runs on any split of the rows)."""
  ids = jnp.asarray(ids, jnp.int32)
  lengths = jnp.asarray(lengths, jnp.int32)
  shared, out = {}, {}
  for name in cfg.needed_analyses():
    a = registry.ANALYSES[name]
    wanted = frozenset(t for t, tcfg in cfg.terms if registry.get(t).analysis == name
                       and tcfg.weight != 0)
    shared[name] = a.fn(ids, lengths, rows, cfg=cfg.analysis(name),
                        resources=resources.get(f"analysis/{name}"), wanted=wanted)
  for name, tcfg in cfg.terms:
    t = registry.get(name)
    out[name] = jnp.asarray(t.fn(ids, lengths, rows, cfg=tcfg, resources=resources.get(name),
                                 shared=shared.get(t.analysis)), jnp.float32)
  for name in cfg.needed_analyses():     # outputs that are not terms (EW: n_pred, bad, ...)
    for key, value in shared[name].items():
      if key not in registry.TERMS:
        out[key] = value
  return out


def add_total(values: dict, rows, cfg: RewardConfig) -> dict:
  """values (term_values) + penalty [R] and total [R] (batch normalisation, if configured,
  over all rows given)."""
  n_pred = values["n_pred"] if PENALTY_ANALYSIS in cfg.needed_analyses() else jnp.zeros_like(
      rows["n_gt"])
  factor = penalty_lib.penalty_factor(n_pred, rows["n_gt"], cfg, xp=jnp)
  total = penalty_lib.combine(values, factor, cfg, xp=jnp)
  terms = {n: values[n] for n, _ in cfg.terms}
  rest = {k: v for k, v in values.items() if k not in terms}
  return dict(terms, penalty=factor, total=jnp.asarray(total, jnp.float32), **rest)


def _select_rows(rows, cfg: RewardConfig) -> dict:
  missing = [k for k in row_keys(cfg) if k not in rows]
  if missing:
    raise ValueError(f"reward: the batch rows lack {missing}, which the configured terms read "
                     f"(rows have {sorted(rows)}).")
  return {k: jnp.asarray(rows[k]) for k in row_keys(cfg)}


def completion_rewards(ids, lengths, rows, resources: dict, cfg: RewardConfig) -> dict:
  """Every term, the penalty, the total and the analyses' outputs of a batch of completions
  (jittable; `resources` from setup, `cfg` static).

  ids int32[R, N] (anything past `lengths` is ignored), lengths int32[R], rows: a mapping
  holding at least row_keys(cfg) (gt_ids int32[R, G] and n_gt int32[R] for the EW terms).
  """
  rows = _select_rows(rows, cfg)
  return add_total(term_values(ids, lengths, rows, resources, cfg), rows, cfg)


def row_local_rewards(ids, lengths, rows, resources: dict, cfg: RewardConfig, *, mesh=None,
                      batch_axes=None) -> dict:
  """`completion_rewards` with every device computing the terms of its own rows (jittable).

  The terms are per row, so under a mesh they run inside `jax.shard_map` over the batch: no
  collective, and each device's loops run as long as its own longest content (not the
  batch's). batch_axes: the mesh axes the rows are split over (a name, a tuple of names, or
  None for all of the mesh's axes); the row count must be a multiple of their size. The
  resources are replicated. The total is then formed over all rows. Without a mesh (or on
  one device) this is `completion_rewards` itself.
  """
  if mesh is None or mesh.size == 1:
    return completion_rewards(ids, lengths, rows, resources, cfg)
  rows = _select_rows(rows, cfg)
  if batch_axes is None:
    batch_axes = tuple(mesh.axis_names)
  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  if ids.shape[0] % shards:
    raise ValueError(f"reward batch of {ids.shape[0]} rows cannot be split over mesh axes "
                     f"{axes} ({shards} devices); use a multiple of {shards} rows.")
  spec = jax.sharding.PartitionSpec(axes if len(axes) > 1 else axes[0])
  local = jax.shard_map(
      lambda i, l, r, res: term_values(i, l, r, res, cfg), mesh=mesh,
      in_specs=(spec, spec, spec, jax.sharding.PartitionSpec()), out_specs=spec,
      check_vma=False)
  return add_total(local(ids, lengths, rows, resources), rows, cfg)


def make_reward_fn(resources: dict, cfg: RewardConfig, compiler_options: dict | None = None):
  """A jitted fn(ids, lengths, rows) -> completion_rewards(...), resources closed over.
  compiler_options: XLA options for this jit (the launcher chooses them per backend)."""
  return jax.jit(lambda ids, lengths, rows: completion_rewards(ids, lengths, rows, resources,
                                                               cfg),
                 compiler_options=compiler_options)


# The key of the GRPO reward's metrics that holds per-completion values (every term, the
# penalty, the total and n_pred, each [R]) rather than a logged mean; the GRPO step reads it
# for its sampled-completions table and logs nothing under it.
PER_ROW = "per_row"
# The metric holding the label-count histogram (grpo_reward's label_histogram).
LABEL_HISTOGRAM = "n_pred_hist"


def label_counts(n_pred, max_labels: int) -> jax.Array:
  """int32[max_labels + 2]: how many completions predict 0, 1, ..., max_labels answer items;
  the last bin counts those over max_labels (which score 0 on every EW term)."""
  bins = jnp.clip(jnp.asarray(n_pred, jnp.int32), 0, max_labels + 1)
  return jnp.sum(jax.nn.one_hot(bins, max_labels + 2, dtype=jnp.int32), axis=0)


@dataclasses.dataclass(frozen=True)
class GrpoReward:
  """The reward as the GRPO step takes it: fn(tokens, lengths, rows) -> (total, metrics);
  label_encoder(labels) -> the rows' gt_ids / n_gt of one clip; metrics: the logged names."""
  fn: object
  label_encoder: object
  metrics: tuple


def grpo_reward(section, tokenizer, wheel, *, mesh=None, batch_axes=None,
                label_histogram: bool = False) -> GrpoReward:
  """The reward of config section `section` for the fused GRPO step: each device scores its
  own rows (shard_map over batch_axes of mesh), metrics = metric_names, means over the
  batch, plus metrics[PER_ROW]: the per-completion values behind them (terms, penalty, total
  and the analyses' stats). label_histogram: also metrics[LABEL_HISTOGRAM], the
  label_counts of n_pred over reward.ew.max_labels (when the EW analysis runs)."""
  from affect_jax.rewards.terms import emotion_wheel as ew_term
  cfg = RewardConfig.from_config(section)
  resources = setup(cfg, registry.Context(tokenizer, wheel))
  names = metric_names(cfg)
  ew_cfg = dict(cfg.analyses).get("ew", ew_term.EwConfig())
  max_gt = ew_cfg.max_gt_labels
  histogram = label_histogram and "n_pred" in names

  def fn(tokens, lengths, rows):
    out = row_local_rewards(tokens, lengths, rows, resources, cfg,
                            mesh=mesh if batch_axes else None, batch_axes=batch_axes)
    metrics = {k: jnp.mean(out[k].astype(jnp.float32)) for k in names}
    if histogram:
      metrics[LABEL_HISTOGRAM] = label_counts(out["n_pred"], ew_cfg.max_labels)
    metrics[PER_ROW] = {k: out[k] for k in names + ("total",)}
    return out["total"], metrics

  def label_encoder(labels):
    ids, n = ew_term.gt_arrays([", ".join(labels)], wheel, max_gt)
    return {"gt_ids": ids[0], "n_gt": n[0]}

  return GrpoReward(fn, label_encoder, names)
