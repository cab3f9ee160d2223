"""LoRA: a dense layer with a frozen kernel plus a trainable low-rank update, and tree helpers.

A `LoraDense` computes `y = x @ kernel (+ bias) + dropout(x) @ lora_a @ lora_b * alpha / rank`
(the HF PEFT formulation). `lora_a` starts like PEFT's (kaiming-uniform, or normal with std
1/rank) and `lora_b` at zero, so a fresh adapter leaves the base model unchanged. Calling with
`use_lora=False` skips the update and runs the base model on the same parameters.

Public API:
  LoraConfig(rank=0, alpha=16.0, dropout=0.0, targets=DEFAULT_TARGETS, init='kaiming_uniform')
  LoraDense(features, kernel_axes, use_bias, lora, dtype, param_dtype, kernel_init)
      __call__(x: float[..., in], *, use_lora=True, deterministic=True) -> float[..., features]
  for_target(lora, name) -> LoraConfig           the config a named projection gets (rank 0 if
                                                 not targeted)
  lora_mask(params) -> pytree of bool            True on lora_a / lora_b leaves (trainable set)
  merge_lora(params, config, *, keep_lora_leaves=False) -> params
                                                 kernels += lora_a @ lora_b * scale; LoRA leaves
                                                 removed (or kept with lora_b zeroed); config is
                                                 a LoraConfig or a model config with .lora
  count(params, mask=None) -> int                number of scalars (where mask is True)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affect_jax import config_dataclass
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_LEAVES = ("lora_a", "lora_b")
_INITS = ("kaiming_uniform", "gaussian")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """LoRA hyper-parameters; rank 0 means no LoRA parameters at all.

  Attributes:
    rank: r, the inner width of the update (0 = disabled).
    alpha: the update is scaled by alpha / rank.
    dropout: dropout rate on the LoRA input path (training only, rng 'dropout').
    targets: names of the projections that get an adapter.
    init: 'kaiming_uniform' (PEFT default: U(-1/sqrt(in), 1/sqrt(in))) or 'gaussian'
      (N(0, 1/rank)) for lora_a; lora_b always starts at zero.
  """
  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = DEFAULT_TARGETS
  init: str = "kaiming_uniform"

  def __post_init__(self):
    if self.rank < 0:
      raise ValueError(f"LoraConfig.rank={self.rank}: must be >= 0 (0 disables LoRA).")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoraConfig.dropout={self.dropout}: must be in [0, 1).")
    if self.init not in _INITS:
      raise ValueError(f"LoraConfig.init={self.init!r}: use one of {_INITS}.")
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank if self.rank else 0.0

  @classmethod
  def from_dict(cls, mapping: Mapping[str, Any] | None) -> "LoraConfig":
    """From a plain dict or ml_collections ConfigDict; unknown keys are an error."""
    return cls() if mapping is None else config_dataclass.build(cls, mapping, name="lora config")


def for_target(lora: LoraConfig, name: str) -> LoraConfig:
  """The LoRA config of projection `name`: `lora` if targeted, else rank 0."""
  return lora if lora.rank and name in lora.targets else LoraConfig(rank=0)


def _lora_a_init(lora: LoraConfig) -> Callable:
  if lora.init == "gaussian":
    return nn.initializers.normal(stddev=1.0 / lora.rank)
  # kaiming_uniform_(a=sqrt(5)) on torch's [r, in] weight: bound = 1 / sqrt(in).
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class LoraDense(nn.Module):
  """Dense layer `x @ kernel (+ bias)` with an optional LoRA update.

  Parameters (logical names from `kernel_axes = (in_name, out_name)`):
    kernel: [in, features] (in_name, out_name)
    bias:   [features]     (out_name,)            if use_bias
    lora_a: [in, rank]     (in_name, 'lora')      if lora.rank > 0
    lora_b: [rank, features] ('lora', out_name)   if lora.rank > 0
  """
  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = False
  lora: LoraConfig = LoraConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, *, use_lora: bool = True,
               deterministic: bool = True) -> jax.Array:
    """x: float[..., in] -> float[..., features] in `dtype`."""
    in_name, out_name = self.kernel_axes
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), self.param_dtype)
    x = x.astype(self.dtype)
    y = jnp.dot(x, kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (out_name,)),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.lora.rank:
      # Created whatever use_lora says, so the parameter tree never depends on the call.
      lora_a = self.param("lora_a", nn.with_logical_partitioning(
          _lora_a_init(self.lora), (in_name, "lora")), (x.shape[-1], self.lora.rank),
                          self.param_dtype)
      lora_b = self.param("lora_b", nn.with_logical_partitioning(
          nn.initializers.zeros, ("lora", out_name)), (self.lora.rank, self.features),
                          self.param_dtype)
      if use_lora:
        h = nn.Dropout(rate=self.lora.dropout)(x, deterministic=deterministic)
        h = jnp.dot(jnp.dot(h, lora_a.astype(self.dtype)), lora_b.astype(self.dtype))
        y = y + h * jnp.asarray(self.lora.scale, self.dtype)
    return y


def _key_name(entry) -> str | None:
  return getattr(entry, "key", None)


def lora_mask(params: Any) -> Any:
  """A tree like `params` with True on lora_a / lora_b leaves and False elsewhere.

  Works on plain or boxed (LogicallyPartitioned) trees; use it as the trainable mask for
  optax (e.g. optax.masked) or to split a tree into trainable and frozen parts.
  """
  def is_lora(path, _):
    return any(_key_name(p) in LORA_LEAVES for p in path)
  return jax.tree_util.tree_map_with_path(is_lora, params)


def merge_lora(params: Mapping, config: Any, *, keep_lora_leaves: bool = False) -> dict:
  """Folds every adapter into its kernel: kernel += lora_a @ lora_b * alpha / rank.

  Args:
    params: plain (unboxed) parameter tree; stacked layers (leading 'layers' axis) are fine.
    config: the LoraConfig the adapters were trained with (for the scale), or a model config
      holding it as `.lora` (e.g. Qwen2Config).
    keep_lora_leaves: keep lora_a and set lora_b to zero, so the tree still fits a model with
      the same LoRA config (and gives the merged result with use_lora on or off); by default
      the LoRA leaves are removed, so the tree fits the model with LoRA rank 0.

  Returns:
    a new tree; the merge is computed in float32 and cast back to each kernel's dtype.
  """
  lora = getattr(config, "lora", config)
  if not isinstance(lora, LoraConfig):
    raise TypeError(f"merge_lora: config is {type(config).__name__}; pass a LoraConfig or a "
                    "model config with a .lora field.")

  def merge(node):
    if not isinstance(node, Mapping):
      return node
    node = {k: merge(v) for k, v in node.items()}
    if "lora_a" not in node and "lora_b" not in node:
      return node
    missing = [k for k in ("kernel", "lora_a", "lora_b") if k not in node]
    if missing:
      raise ValueError(f"merge_lora: a LoRA layer lacks {missing} (keys present: "
                       f"{sorted(node)}); pass the full parameter tree, unboxed.")
    kernel, a, b = node["kernel"], node["lora_a"], node["lora_b"]
    delta = jnp.einsum("...ir,...ro->...io", jnp.asarray(a, jnp.float32),
                       jnp.asarray(b, jnp.float32)) * lora.scale
    node["kernel"] = (jnp.asarray(kernel, jnp.float32) + delta).astype(kernel.dtype)
    if keep_lora_leaves:
      node["lora_b"] = jnp.zeros_like(b)
    else:
      del node["lora_a"], node["lora_b"]
    return node

  if lora.rank == 0:
    return jax.tree.map(lambda x: x, dict(params))
  return merge(params)


def count(params: Any, mask: Any | None = None) -> int:
  """Number of scalars in `params` (only where `mask` is True, if given)."""
  leaves = jax.tree.leaves(nn.meta.unbox(params))
  if mask is None:
    return int(sum(np.prod(x.shape) for x in leaves))
  flags = jax.tree.leaves(nn.meta.unbox(mask))
  return int(sum(np.prod(x.shape) for x, m in zip(leaves, flags) if m))

