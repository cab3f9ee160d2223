"""Qwen2 decoder vs transformers' Qwen2ForCausalLM (random init, built offline, float32)."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from tests.testlib import qwen2 as lib
from affect_jax.checkpoints import hf_qwen2
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.models import lora as lora_lib
from affect_jax.models import qwen2

TOL = 1e-4
# GQA ratios 1, 2 and 4; tied and untied; one with an explicit head_dim != hidden / heads.
CASES = {
    "untied_mha": dict(num_key_value_heads=8, tie_word_embeddings=False),
    "tied_gqa2": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "untied_gqa4_headdim": dict(num_key_value_heads=2, tie_word_embeddings=False,
                                head_dim=16, rope_theta=1e6),
}
PROMPT_LENGTHS = [9, 6, 3]
PROMPT_WIDTH = 9
DECODE_STEPS = 16


class Case:
  """One config: the transformers model, the project's params and jitted entry points."""

  def __init__(self, name, hf, config, params):
    self.name, self.hf, self.config, self.params = name, hf, config, params
    model = qwen2.Qwen2(config)

    def forward(params, tokens, positions, mask):
      return model.apply({"params": params}, tokens, positions=positions,
                         attention_mask=mask)[0]

    def cached(params, tokens, positions, cache, index, kv_mask):
      return model.apply({"params": params}, tokens, positions=positions, cache=cache,
                         cache_index=index, kv_mask=kv_mask)

    self.forward = jax.jit(forward)
    self.cached = jax.jit(cached)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  hf = lib.hf_model(seed=len(request.param), **CASES[request.param])
  path = lib.save_hf(hf, tmp_path_factory.mktemp(request.param))
  config, params = hf_qwen2.load(path)
  return Case(request.param, hf, config, params)


@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_full_forward_matches_transformers(case, side):
  lengths = [PROMPT_WIDTH] * 3 if side == "none" else PROMPT_LENGTHS
  tokens, mask, positions = lib.padded_batch(1, lengths, PROMPT_WIDTH, case.config.vocab_size,
                                             "left" if side == "none" else side)
  ref = lib.hf_logits(case.hf, tokens, mask, positions)
  out = np.asarray(case.forward(case.params, tokens, positions,
                                None if side == "none" else mask))
  diff = np.abs(out - ref)[mask].max()
  print(f"\n{case.name} full forward, {side} padding: max |diff| = {diff:.2e}")
  assert diff <= TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_prefill_and_decode_match_transformers(case, side):
  """Prefill a padded batch into the static cache, then 16 greedy single-token steps; every
  step's logits equal transformers' full forward over each row's unpadded growing sequence."""
  cfg = case.config
  tokens, mask, positions = lib.padded_batch(2, PROMPT_LENGTHS, PROMPT_WIDTH, cfg.vocab_size,
                                             side)
  batch, width = tokens.shape
  max_len = width + DECODE_STEPS
  cache = qwen2.init_cache(cfg, batch, max_len)
  kv_mask = np.zeros((batch, max_len), bool)
  kv_mask[:, :width] = mask
  logits, cache = case.cached(case.params, tokens, positions, cache, 0, kv_mask)
  last = np.asarray(mask.sum(1)) - 1 if side == "right" else np.full(batch, width - 1)
  step_logits = [np.asarray(logits)[np.arange(batch), last]]
  next_pos = positions[np.arange(batch), last] + 1
  generated = []
  for j in range(DECODE_STEPS):
    token = step_logits[-1].argmax(-1).astype(np.int32)
    generated.append(token)
    kv_mask[:, width + j] = True
    logits, cache = case.cached(case.params, token[:, None], (next_pos + j)[:, None], cache,
                                width + j, kv_mask)
    step_logits.append(np.asarray(logits)[:, 0])
  step_logits = np.stack(step_logits, axis=1)  # [B, 1 + steps, V]
  generated = np.stack(generated, axis=1)
  worst = 0.0
  for b, n in enumerate(PROMPT_LENGTHS):
    row = np.concatenate([tokens[b][mask[b]], generated[b]])
    ref = lib.hf_logits(case.hf, row[None])[0, n - 1:]
    worst = max(worst, float(np.abs(step_logits[b] - ref).max()))
  print(f"\n{case.name} prefill + {DECODE_STEPS} decode steps, {side} padding: "
        f"max |diff| = {worst:.2e}")
  assert worst <= TOL


def test_embeds_and_hidden_paths(case):
  cfg = case.config
  tokens, mask, positions = lib.padded_batch(3, PROMPT_LENGTHS, PROMPT_WIDTH, cfg.vocab_size,
                                             "left")
  model = qwen2.Qwen2(cfg)

  @jax.jit
  def paths(params):
    variables = {"params": params}
    embeds = model.apply(variables, tokens, method=qwen2.Qwen2.embed)
    from_embeds, _ = model.apply(variables, embeds=embeds, positions=positions,
                                 attention_mask=mask)
    hidden, _ = model.apply(variables, tokens, positions=positions, attention_mask=mask,
                            return_hidden=True)
    return embeds, from_embeds, hidden, model.apply(variables, hidden,
                                                    method=qwen2.Qwen2.logits)

  embeds, from_embeds, hidden, from_hidden = paths(case.params)
  ref = case.hf.model.embed_tokens(torch.as_tensor(tokens, dtype=torch.long)).detach().numpy()
  np.testing.assert_array_equal(np.asarray(embeds), ref)
  assert hidden.shape == tokens.shape + (cfg.hidden_size,)
  logits = case.forward(case.params, tokens, positions, mask)
  np.testing.assert_allclose(np.asarray(from_embeds)[mask], np.asarray(logits)[mask], atol=1e-5)
  np.testing.assert_allclose(np.asarray(from_hidden), np.asarray(logits), atol=1e-5)


def _count_transformers(**kwargs) -> int:
  config = transformers.Qwen2Config(**kwargs)
  with torch.device("meta"):
    model = transformers.Qwen2ForCausalLM(config)
  return sum(p.numel() for p in model.parameters())


QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6,
                 max_position_embeddings=32768)
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
                  max_position_embeddings=32768)


@pytest.mark.parametrize("name,hf", [("Qwen2.5-7B-Instruct", QWEN25_7B),
                                     ("Qwen2.5-0.5B (tied)", QWEN25_05B)])
def test_param_count_matches_transformers(name, hf):
  config = qwen2.Qwen2Config.from_hf(dict(hf, architectures=["Qwen2ForCausalLM"],
                                          model_type="qwen2", torch_dtype="bfloat16"),
                                     lora=lora_lib.LoraConfig(rank=16, alpha=32))
  ours = qwen2.param_count(config)
  lora = qwen2.param_count(config, include_lora=True) - ours
  theirs = _count_transformers(**hf)
  print(f"\n{name}: {ours:,} parameters (transformers: {theirs:,}); LoRA r=16 on all 7 "
        f"projections adds {lora:,}")
  assert ours == theirs
  c = config
  per_layer = 16 * sum(i + o for i, o in [
      (c.hidden_size, c.num_attention_heads * c.head_dim),
      (c.hidden_size, c.num_key_value_heads * c.head_dim),
      (c.hidden_size, c.num_key_value_heads * c.head_dim),
      (c.num_attention_heads * c.head_dim, c.hidden_size),
      (c.hidden_size, c.intermediate_size), (c.hidden_size, c.intermediate_size),
      (c.intermediate_size, c.hidden_size)])
  assert lora == per_layer * c.num_hidden_layers


def _tiny(**overrides):
  values = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,
                lora=lora_lib.LoraConfig(rank=2, alpha=4.0, dropout=0.1))
  values.update(overrides)
  return qwen2.Qwen2Config(**values)


def test_remat_gives_same_values_and_gradients():
  cfg = _tiny()
  params = qwen2.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(1)  # nonzero lora_b so every LoRA leaf gets a gradient
  params = jax.tree.map(lambda x: x + np.float32(0.05) * rng.normal(size=x.shape).astype(x.dtype),
                        params)
  tokens = jax.random.randint(jax.random.key(2), (2, 5), 0, cfg.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))

  def loss(p, config):
    logits, _ = qwen2.Qwen2(config).apply({"params": p}, tokens, positions=positions)
    return jnp.mean(jax.nn.logsumexp(logits, -1))

  remat_cfg = dataclasses.replace(cfg, remat=True)
  assert "remat" in str(jax.make_jaxpr(lambda p: loss(p, remat_cfg))(params))
  assert "remat" not in str(jax.make_jaxpr(lambda p: loss(p, cfg))(params))
  plain = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg)))(params)
  remat = jax.jit(jax.value_and_grad(lambda p: loss(p, remat_cfg)))(params)
  np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1])):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_params_track_float32(case):
  cfg = dataclasses.replace(case.config, dtype="bfloat16", param_dtype="bfloat16")
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), case.params)
  tokens, mask, positions = lib.padded_batch(4, PROMPT_LENGTHS, PROMPT_WIDTH, cfg.vocab_size,
                                             "left")
  out, _ = jax.jit(lambda p: qwen2.Qwen2(cfg).apply(
      {"params": p}, tokens, positions=positions, attention_mask=mask))(params)
  assert out.dtype == jnp.float32
  ref = np.asarray(case.forward(case.params, tokens, positions, mask))
  scale = np.abs(ref[mask]).max()
  assert np.abs(np.asarray(out)[mask] - ref[mask]).max() <= 0.05 * scale


class _Abstract:
  """model.apply traced with jax.eval_shape: the argument checks run, no compute."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, *args, **kwargs):
    return jax.eval_shape(lambda v: self.model.apply(v, *args, **kwargs), variables)


def test_call_errors_name_the_argument():
  cfg = _tiny()
  model = qwen2.Qwen2(cfg)
  v = {"params": jax.eval_shape(lambda: qwen2.init_params(cfg, jax.random.key(0)))}
  model = _Abstract(model)
  tokens = jnp.zeros((2, 3), jnp.int32)
  pos = jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="exactly one of tokens"):
    model.apply(v, tokens, embeds=jnp.zeros((2, 3, 32)), positions=pos)
  with pytest.raises(ValueError, match="exactly one of tokens"):
    model.apply(v, positions=pos)
  with pytest.raises(ValueError, match="positions has shape"):
    model.apply(v, tokens, positions=pos[:, :2])
  with pytest.raises(ValueError, match="embeds has shape"):
    model.apply(v, embeds=jnp.zeros((2, 3, 16)), positions=pos)
  cache = qwen2.init_cache(cfg, 2, 8)
  with pytest.raises(ValueError, match="kv_mask"):
    model.apply(v, tokens, positions=pos, cache=cache, cache_index=0)
  with pytest.raises(ValueError, match="kv_mask has shape"):
    model.apply(v, tokens, positions=pos, cache=cache, cache_index=0,
                kv_mask=jnp.ones((2, 5), bool))
  with pytest.raises(ValueError, match="without a cache"):
    model.apply(v, tokens, positions=pos, kv_mask=jnp.ones((2, 3), bool))


HF_7B = dict(QWEN25_7B, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
             torch_dtype="bfloat16", rope_scaling=None, hidden_act="silu",
             use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)


@pytest.mark.parametrize("change,field", [
    ({"architectures": ["LlamaForCausalLM"]}, "architectures"),
    ({"model_type": "llama"}, "model_type"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"torch_dtype": "int8"}, "torch_dtype"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_from_hf_rejects_bad_config(change, field):
  with pytest.raises(CheckpointError, match=field):
    qwen2.Qwen2Config.from_hf({**HF_7B, **change})


def test_config_round_trips():
  config = qwen2.Qwen2Config.from_hf(HF_7B)
  assert (config.head_dim, config.rope_theta, config.param_dtype) == (128, 1e6, "bfloat16")
  assert qwen2.Qwen2Config.from_hf(config.to_hf()) == config
  hf = transformers.Qwen2Config(**config.to_hf())
  assert hf.rope_parameters["rope_theta"] == 1e6 and hf.num_key_value_heads == 4
  # transformers 5 style rope_parameters is understood too.
  new_style = {k: v for k, v in HF_7B.items() if k != "rope_theta"}
  new_style["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
  assert qwen2.Qwen2Config.from_hf(new_style) == config
  cd = ml_collections.ConfigDict(dict(
      vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, remat=True, lora=dict(rank=4, alpha=8.0, targets=("q_proj",))))
  from_cd = qwen2.Qwen2Config.from_dict(cd)
  assert from_cd.lora == lora_lib.LoraConfig(rank=4, alpha=8.0, targets=("q_proj",))
  assert from_cd.num_key_value_heads == 4 and from_cd.head_dim == 8 and from_cd.remat
  with pytest.raises(ValueError, match="hidden_sizes"):
    qwen2.Qwen2Config.from_dict(dict(cd.to_dict(), hidden_sizes=3))
  with pytest.raises(ValueError, match="num_key_value_heads"):
    _tiny(num_key_value_heads=3)
  with pytest.raises(ValueError, match="targets"):
    _tiny(lora=lora_lib.LoraConfig(rank=2, targets=("qkv",)))
