"""Micro-batched gradients: value_and_grad summed over micro-batches by lax.scan, shared by the
SFT and GRPO steps."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from affect_jax import sharding

Array = jax.Array

def accumulate_grads(loss_fn: Callable[[Any, Any], tuple[Array, dict[str, Array]]], params: Any,
                     batch: Any, num_micro: int) -> tuple[Array, Any, dict[str, Array]]:
  """Sum of value_and_grad(loss_fn) over `num_micro` micro-batches, by lax.scan.

  The contract that makes the sums equal the full-batch loss and gradient: `loss_fn(params,
  micro_batch) -> (loss, metrics)` returns its micro-batch's ADDITIVE share of the full-batch
  loss and metrics. For grpo_loss that means computing `norm = loss_normalizer(full_mask, cfg)`
  on the full batch first and calling `grpo_loss(..., normalizer=norm)` inside loss_fn (norm
  closed over); then every aggregation mode is exact. Metrics are summed likewise.

  Micro-batch k holds rows k, k + num_micro, k + 2 * num_micro, ... of every leaf (a strided
  split, so that each micro-batch spans all data shards of a batch sharded on its leading axis).
  Gradients are accumulated in float32 and returned in the dtypes of `params`.

  Args:
    loss_fn: (params, batch) -> (loss scalar, dict of scalars).
    params: pytree of parameters (the gradient's structure).
    batch: pytree whose leaves all have the leading batch axis B.
    num_micro: micro-batches (grpo_loss.micro_batches), dividing B.

  Returns:
    (loss, grads, metrics), summed over micro-batches.
  """
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError("accumulate_grads: batch has no arrays.")
  size = leaves[0].shape[0] if leaves[0].ndim else None
  if size is None or any(x.ndim == 0 or x.shape[0] != size for x in leaves):
    raise ValueError("accumulate_grads: every leaf of batch needs the same leading batch axis; "
                     f"got shapes {[x.shape for x in leaves]}.")
  if isinstance(num_micro, bool) or not isinstance(num_micro, int) or num_micro < 1 \
      or size % num_micro:
    raise ValueError(f"grpo_loss.micro_batches={num_micro!r} must be a positive int dividing "
                     f"the batch of {size} rows.")
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_micro == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, grads, metrics

  def split(x):
    x = x.reshape(size // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

  micro = jax.tree.map(split, batch)
  first = jax.tree.map(lambda x: x[0], micro)
  out_shape = jax.eval_shape(grad_fn, params, first)
  acc_dtype = lambda s: jnp.float32 if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, acc_dtype(s)), out_shape)

  def body(acc, mb):
    mb = jax.tree.map(lambda x: sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1)), mb)
    out = grad_fn(params, mb)
    return jax.tree.map(lambda a, o: a + o.astype(a.dtype), acc, out), None

  ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  return loss, grads, metrics
