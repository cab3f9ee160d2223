"""SFT loss equals transformers' masked cross-entropy; micro-batching is exact; it learns."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from tests.testlib import qwen2 as lib
from affect_jax.checkpoints import hf_qwen2
from affect_jax.rl import grpo_step
from affect_jax.generation import policy as policy_lib
from affect_jax.train import sft_step


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  hf = lib.hf_model(seed=5, num_key_value_heads=2)
  config, params = hf_qwen2.load(lib.save_hf(hf, tmp_path_factory.mktemp("sft")))
  return hf, config, params


def _batch(seed=0, b=4, length=12):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 256, (b, length)).astype(np.int32)
  pads = rng.integers(0, 4, b)
  attn = np.arange(length)[None] >= pads[:, None]
  target_start = length - rng.integers(2, 6, b)
  loss = np.arange(length)[None] >= target_start[:, None]
  tokens[~attn] = 0
  return {"tokens": tokens, "attention_mask": attn, "loss_mask": loss & attn}


def test_loss_equals_transformers_cross_entropy(model):
  hf, config, params = model
  batch = _batch()
  got = float(sft_step.make_eval_loss(policy_lib.TextPolicy(config), 5)(params, batch))
  labels = np.where(batch["loss_mask"], batch["tokens"], -100)
  pos = np.maximum(np.cumsum(batch["attention_mask"], 1) - 1, 0)
  with torch.no_grad():
    want = hf(input_ids=torch.as_tensor(batch["tokens"], dtype=torch.long),
              attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
              position_ids=torch.as_tensor(pos, dtype=torch.long),
              labels=torch.as_tensor(labels, dtype=torch.long)).loss.item()
  assert abs(got - want) < 1e-5, (got, want)


def test_micro_batches_are_exact_and_it_learns(model):
  _, config, params = model
  policy = policy_lib.TextPolicy(config)
  batch = _batch(seed=1)
  results = {}
  for micro in (1, 2):
    opt = optax.sgd(0.5)
    state = grpo_step.init_state(policy, jax.tree.map(jnp.copy, params), opt, jax.random.key(0))
    state = {k: v for k, v in state.items() if k != "reference"}
    step = sft_step.make_step(policy, opt, logprob_chunk=4, micro_batches=micro)
    losses = []
    for _ in range(15):
      state, m = step(state, batch)
      losses.append(float(m["loss"]))
    results[micro] = (losses, jax.device_get(state["trainable"]))
  np.testing.assert_allclose(results[1][0], results[2][0], rtol=1e-4)
  assert results[1][0][-1] < 0.5 * results[1][0][0], results[1][0]


def test_bad_batch_is_a_clear_error(model):
  _, config, _ = model
  policy = policy_lib.TextPolicy(config)
  with pytest.raises(ValueError, match="loss_mask"):
    sft_step.check_batch(policy, {"tokens": np.zeros((2, 4)), "attention_mask": np.ones((2, 4))},
                         1)
  with pytest.raises(ValueError, match="micro_batches"):
    sft_step.check_batch(policy, _batch(b=3), 2)
