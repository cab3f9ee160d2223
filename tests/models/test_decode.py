"""models/decode.py is Qwen2.__call__'s twin: the same cached forward (prefill, then single-token
steps) layer by layer, in either cache layout; and the rotary positions of padded batches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.models import attention, decode, qwen2
from affect_jax.models.lora import LoraConfig

TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
  cfg = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48,
                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                          lora=LoraConfig(rank=2, alpha=4.0))
  params = sharding.unbox(qwen2.init_params(cfg, jax.random.key(0)))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))       # LoRA b != 0 too
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  return cfg, params


@pytest.mark.parametrize("layout", attention.CACHE_LAYOUTS)
@pytest.mark.parametrize("use_lora", [True, False])
def test_decode_forward_equals_qwen2_with_a_cache(setup, layout, use_lora):
  cfg, params = setup
  b, p, steps = 3, 6, 4
  s = p + steps
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (b, p)), jnp.int32)
  prompt_mask = jnp.asarray(np.arange(p)[None] >= np.array([[0], [2], [5]]))
  positions = qwen2.positions_from_mask(prompt_mask)
  kv_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, steps), bool)], axis=1)
  model = qwen2.Qwen2(cfg)
  twin = jax.jit(lambda lp, t, q, c, i, m: decode.decode_forward(
      cfg, params, lp, t, positions=q, caches=c, cache_index=i, kv_mask=m, use_lora=use_lora,
      layout=layout))
  main = jax.jit(lambda t, q, c, i, m: model.apply(
      {"params": params}, t, positions=q, cache=c, cache_index=i, kv_mask=m, use_lora=use_lora))
  layer_params = decode.unstack_layers(params)
  cache = qwen2.init_cache(cfg, b, s)
  caches = decode.split_cache(cache, layout)
  got, caches = twin(layer_params, tokens, positions, caches, jnp.int32(0), kv_mask)
  want, cache = main(tokens, positions, cache, jnp.int32(0), kv_mask)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
  pos = qwen2.continuation_positions(positions, steps)
  for j in range(steps):
    token = jnp.argmax(want[:, -1], -1).astype(jnp.int32)[:, None]
    kv_mask = kv_mask.at[:, p + j].set(True)
    got, caches = twin(layer_params, token, pos[:, j:j + 1], caches, jnp.int32(p + j), kv_mask)
    want, cache = main(token, pos[:, j:j + 1], cache, jnp.int32(p + j), kv_mask)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
  stacked = decode.stack_cache(caches, layout)
  for name in ("k", "v"):
    np.testing.assert_allclose(stacked[name], cache[name], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("layout", attention.CACHE_LAYOUTS)
def test_split_and_stack_cache_round_trip(layout):
  rng = np.random.default_rng(1)
  cache = {name: jnp.asarray(rng.normal(size=(3, 2, 5, 2, 4)), jnp.float32) for name in "kv"}
  caches = decode.split_cache(cache, layout)
  want = {"bskd": {"k": (2, 5, 2, 4), "v": (2, 5, 2, 4)},
          "decode": {"k": (2, 2, 4, 5), "v": (2, 2, 5, 4)}}[layout]
  assert {name: caches[0][name].shape for name in "kv"} == want
  np.testing.assert_array_equal(np.asarray(caches[1]["k"]).reshape(-1),
                                np.asarray(attention.to_layout("k", cache["k"][1], layout))
                                .reshape(-1))
  back = decode.stack_cache(caches, layout)
  for name in "kv":
    np.testing.assert_array_equal(back[name], cache[name])


def test_positions_of_padded_rows():
  mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  want = [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]   # real tokens count from 0
  got = qwen2.positions_from_mask(jnp.asarray(mask))
  assert got.dtype == jnp.int32 and np.asarray(got).tolist() == want
  left = qwen2.positions_from_mask(jnp.asarray(mask[[0, 2]]))
  np.testing.assert_array_equal(qwen2.continuation_positions(left, 3), [[3, 4, 5], [5, 6, 7]])
