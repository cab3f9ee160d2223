"""The training state both steps share, so one checkpoint format serves SFT and GRPO.

  state = init_state(policy, params, optimizer, rng, reference=True)   # GRPO; False for SFT
  {'step', 'trainable', 'frozen', 'opt_state', 'rng'} (+ 'reference')

The policy's trainable mask splits the params; 'reference' (GRPO only) is a frozen copy of the
trainable leaves at the start, the KL term's reference policy.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from affect_jax import sharding
from affect_jax.generation import policy as policy_lib


def init_state(policy: policy_lib.Policy, params: Mapping, optimizer: optax.GradientTransformation,
               rng: jax.Array, *, reference: bool) -> dict:
  """{'step', 'trainable', 'frozen', 'opt_state', 'rng'} from full params, plus 'reference' (a
  copy of the trainable leaves) when `reference`; the optimizer state starts fresh."""
  trainable, frozen = policy_lib.split(params, policy.trainable_mask(params))
  state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "frozen": frozen,
           "opt_state": optimizer.init(trainable), "rng": rng}
  if reference:
    state["reference"] = jax.tree.map(jnp.copy, trainable)
  return state


def state_shardings(policy: policy_lib.Policy, abstract_params: Mapping,
                    optimizer: optax.GradientTransformation, mesh, rules, *,
                    reference: bool) -> dict:
  """NamedShardings for every leaf of `init_state`'s state, from the params' logical axis
  names."""
  param_sh = sharding.shardings(abstract_params, mesh, rules)
  plain = sharding.unbox(abstract_params)
  mask = policy.trainable_mask(plain)
  train_sh, frozen_sh = policy_lib.split(param_sh, mask)
  train_abs, _ = policy_lib.split(plain, mask)
  opt_abs = jax.eval_shape(optimizer.init, train_abs)
  rep = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, opt_abs, train_sh,
                                 transform_non_params=lambda _: rep,
                                 is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  out = {"step": rep, "trainable": train_sh, "frozen": frozen_sh, "opt_state": opt_sh, "rng": rep}
  if reference:
    out["reference"] = train_sh
  return out
