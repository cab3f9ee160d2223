"""launch.convert --to_hf of a training run: a GRPO run that started from an SFT run, which
started from a launch.convert checkpoint, exports its trained model (base + the GRPO state's
adapters merged): transformers gives the logits our decoder gives with the GRPO params."""
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
import transformers

from affect_jax import sharding
from affect_jax.checkpoints import manager, params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.models import affectgpt, qwen2
from affect_jax.rl import grpo_step
from affect_jax.generation import policy as policy_lib
from configs import tiny
from launch import convert

pytestmark = pytest.mark.slow   # minutes: started first (conftest)

CKPT = ml_collections.ConfigDict(dict(save_every_steps=1, keep=0, keep_period=0,
                                      async_save=False, save_frozen=False,
                                      verify_checksums=True))


def _moved(tree, seed):
  """Every leaf plus noise (a trained adapter: lora_a and lora_b both away from their init)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                      for x, k in zip(leaves, keys)])


def _save_run(workdir: pathlib.Path, phase: str, state: dict, init_from: str) -> None:
  """The state as the training loop saves it, with the run's config (LoRA, init_from)."""
  c = tiny.get_config()
  c.init_from = init_from
  with manager.Checkpointer(workdir / "checkpoints" / phase, CKPT, config=c) as ckpt:
    ckpt.save(3, state, force=True, wait=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("trained")
  mc = tiny.get_config().model
  llm_hf = {k: v for k, v in mc.llm.items() if k not in ("dtype", "param_dtype", "remat", "lora")}
  torch.manual_seed(0)
  hf_model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llm_hf))
  with torch.no_grad():
    for p in hf_model.parameters():
      p.copy_(0.1 * torch.randn_like(p))
  hf_model.save_pretrained(root / "qwen")
  convert.to_project(str(root / "qwen"), str(root / "base"), tiny.get_config(), "", None, 0,
                     False)
  base, _ = params_io.load(root / "base")

  cfg = affectgpt.AffectGPTConfig.from_config(mc)
  policy = policy_lib.AffectGPTPolicy(cfg)
  params = dict(sharding.unbox(affectgpt.init(cfg, jax.random.key(0))), llm=base["llm"])
  opt = optax.adam(1e-3)
  # SFT from the base, then GRPO from the SFT run: each moves every trainable leaf.
  sft = grpo_step.init_state(policy, params, opt, jax.random.key(1))
  sft["trainable"] = _moved(sft["trainable"], 2)
  _save_run(root / "sft", "sft", sft, str(root / "base"))
  start = policy_lib.merge(sft["trainable"], sft["frozen"])
  grpo = grpo_step.init_state(policy, start, opt, jax.random.key(3))
  grpo["trainable"] = _moved(grpo["trainable"], 4)
  _save_run(root / "grpo", "grpo", grpo, str(root / "sft" / "checkpoints" / "sft"))
  return root, cfg, policy_lib.merge(grpo["trainable"], grpo["frozen"])


def test_grpo_run_exports_its_trained_model(runs):
  root, cfg, params = runs
  out = convert.to_hf(str(root / "grpo"), str(root / "export"), False)
  assert out["written"] == {"llm": str(root / "export")}
  exported = transformers.Qwen2ForCausalLM.from_pretrained(root / "export").eval()
  ids = np.arange(3, 19)[None]
  with torch.no_grad():
    want = exported(torch.as_tensor(ids)).logits.numpy()
  got, _ = qwen2.Qwen2(cfg.llm).apply({"params": params["llm"]}, jnp.asarray(ids),
                                      positions=jnp.arange(ids.shape[1])[None])
  base_only, _ = qwen2.Qwen2(cfg.llm).apply({"params": params["llm"]}, jnp.asarray(ids),
                                            positions=jnp.arange(ids.shape[1])[None],
                                            use_lora=False)
  assert float(np.max(np.abs(np.asarray(base_only) - want))) > 1e-2   # the adapters matter
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=1e-4)


def test_a_run_from_random_init_cannot_be_exported(runs, tmp_path):
  root, _, _ = runs
  c = tiny.get_config()
  state = {"step": jnp.zeros((), jnp.int32), "trainable": {"x": jnp.ones(3)}}
  with manager.Checkpointer(tmp_path / "checkpoints" / "grpo", CKPT, config=c) as ckpt:
    ckpt.save(1, state, force=True, wait=True)
  with pytest.raises(CheckpointError, match=r"config\.init_from is empty.*--config\.init_from"):
    convert.to_hf(str(tmp_path), str(tmp_path / "out"), False)
  assert not (tmp_path / "out").exists()
