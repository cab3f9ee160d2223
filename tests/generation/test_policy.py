"""completion_logps (prompt computed once per group) equals a plain forward over each
concatenated [prompt, completion] row, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.models import affectgpt, qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.generation import policy as policy_lib
from configs import tiny

G, N = 3, 5


def _naive(policy, params, batch, completion, comp_mask, use_lora=True):
  """Row by row: the repeated prompt embeddings + completion embeddings, one full forward."""
  cfg = policy.llm_config
  model = qwen2.Qwen2(cfg)
  llm = {"params": policy.llm_params(params)}
  prompt = jnp.repeat(policy.prompt_embeds(params, batch), G, axis=0)
  comp = model.apply(llm, completion, method=qwen2.Qwen2.embed)
  embeds = jnp.concatenate([prompt, comp], axis=1)
  mask = jnp.concatenate([jnp.repeat(batch["prompt_mask"], G, 0), comp_mask], axis=1)
  pos = qwen2.positions_from_mask(mask)
  logits, _ = model.apply(llm, embeds=embeds, positions=pos, attention_mask=mask,
                          use_lora=use_lora)
  p = prompt.shape[1]
  logp = jax.nn.log_softmax(logits[:, p - 1:p + N - 1], axis=-1)
  return jnp.take_along_axis(logp, completion[..., None], -1)[..., 0]


def _inputs(vocab, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.arange(7)[None] >= np.array([[0], [3]])
  comp_mask = np.arange(N)[None] < rng.integers(1, N + 1, (2 * G, 1))
  return (jnp.asarray(rng.integers(1, vocab - 8, (2, 7)), jnp.int32), jnp.asarray(mask),
          jnp.asarray(rng.integers(0, vocab, (2 * G, N)), jnp.int32), jnp.asarray(comp_mask))


@pytest.mark.parametrize("kind", ["text", "affectgpt"])
def test_shared_prefix_equals_full_rows(kind):
  if kind == "text":
    cfg = qwen2.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            lora=LoraConfig(rank=2, alpha=4.0))
    policy = policy_lib.TextPolicy(cfg)
    params = sharding.unbox(qwen2.init_params(cfg, jax.random.key(0)))
    tokens, mask, completion, comp_mask = _inputs(96)
    batch = {"prompt_tokens": tokens, "prompt_mask": mask}
  else:
    cfg = affectgpt.AffectGPTConfig.from_config(tiny.get_config().model)
    policy = policy_lib.AffectGPTPolicy(cfg)
    params = sharding.unbox(affectgpt.init(cfg, jax.random.key(0)))
    tokens, mask, completion, comp_mask = _inputs(cfg.llm.vocab_size)
    ids = cfg.placeholders
    tokens = tokens.at[:, -3:].set(jnp.array([ids["multi"], ids["audio"], ids["video"]]))
    rng = np.random.default_rng(1)
    batch = {"prompt_tokens": tokens, "prompt_mask": mask,
             "video": jnp.asarray(rng.normal(size=(2, 4, 24)), jnp.float32),
             "audio": jnp.asarray(rng.normal(size=(2, 3, 32)), jnp.float32)}
  # LoRA B non-zero so the LoRA path matters.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(path) else x, params)
  # Jitted: op-by-op dispatch of these graphs took minutes on 2 CPU cores.
  for use_lora in (True, False):
    got, _ = jax.jit(lambda p: policy_lib.completion_logps(
        policy, p, batch, completion, comp_mask, chunk=2, temperature=1.0,
        use_lora=use_lora))(params)
    want = jax.jit(lambda p: _naive(policy, p, batch, completion, comp_mask, use_lora))(params)
    np.testing.assert_allclose(np.where(comp_mask, got, 0), np.where(comp_mask, want, 0),
                               atol=2e-5)
  # Gradients w.r.t. every parameter agree too (masked sum of log-probs).
  def total(fn):
    return lambda p: jnp.sum(jnp.where(comp_mask, fn(p), 0.0))
  g1 = jax.jit(jax.grad(total(lambda p: policy_lib.completion_logps(
      policy, p, batch, completion, comp_mask, chunk=2, temperature=1.0)[0])))(params)
  g2 = jax.jit(jax.grad(total(lambda p: _naive(policy, p, batch, completion, comp_mask))))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)
