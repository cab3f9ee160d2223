"""LoRA dense layer and tree helpers vs plain numpy formulas (the PEFT definition)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.models import lora as lora_lib
from affect_jax.models import qwen2

IN, OUT, RANK, ALPHA = 24, 40, 4, 8.0


def _dense(lora=None, use_bias=True):
  lora = lora or lora_lib.LoraConfig(rank=RANK, alpha=ALPHA)
  return lora_lib.LoraDense(OUT, ("embed", "mlp"), use_bias=use_bias, lora=lora)


def _random_params(seed, shapes):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_lora_dense_matches_formula():
  layer = _dense()
  x = np.random.default_rng(0).normal(size=(2, 3, IN)).astype(np.float32)
  p = _random_params(1, {"kernel": (IN, OUT), "bias": (OUT,), "lora_a": (IN, RANK),
                         "lora_b": (RANK, OUT)})
  y = layer.apply({"params": p}, x)
  base = x @ p["kernel"] + p["bias"]
  want = base + (x @ p["lora_a"]) @ p["lora_b"] * (ALPHA / RANK)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer.apply({"params": p}, x, use_lora=False), base, rtol=1e-5,
                             atol=1e-5)


def test_init_follows_peft():
  x = jnp.zeros((1, IN))
  params = _dense().init(jax.random.key(0), x)["params"]
  params = jax.tree.map(np.asarray, sharding.unbox(params))
  assert set(params) == {"kernel", "bias", "lora_a", "lora_b"}
  assert params["lora_a"].shape == (IN, RANK) and params["lora_b"].shape == (RANK, OUT)
  np.testing.assert_array_equal(params["lora_b"], 0.0)
  bound = 1.0 / np.sqrt(IN)  # kaiming_uniform_(a=sqrt(5)) on torch's [r, in] weight
  assert np.abs(params["lora_a"]).max() <= bound
  assert np.abs(params["lora_a"]).max() > 0.8 * bound
  big = lora_lib.LoraDense(8, ("embed", "mlp"), lora=lora_lib.LoraConfig(
      rank=64, init="gaussian")).init(jax.random.key(1), jnp.zeros((1, 512)))["params"]
  std = float(np.std(sharding.unbox(big)["lora_a"]))
  assert abs(std - 1.0 / 64) < 0.1 / 64
  # A fresh adapter leaves the layer unchanged.
  x = jax.random.normal(jax.random.key(2), (3, IN))
  fresh = {"params": sharding.unbox(_dense().init(jax.random.key(0), x)["params"])}
  np.testing.assert_array_equal(_dense().apply(fresh, x), _dense().apply(fresh, x,
                                                                          use_lora=False))


def test_rank_zero_and_targets():
  none = _dense(lora_lib.LoraConfig(rank=0)).init(jax.random.key(0), jnp.zeros((1, IN)))
  assert set(none["params"]) == {"kernel", "bias"}
  assert lora_lib.for_target(lora_lib.LoraConfig(rank=2, targets=("q_proj",)), "v_proj").rank == 0
  cfg = qwen2.Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=24,
                          num_hidden_layers=2, num_attention_heads=2,
                          lora=lora_lib.LoraConfig(rank=2, targets=("q_proj", "down_proj")))
  tree = sharding.unbox(qwen2.abstract_params(cfg))
  flat = {"/".join(str(k.key) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  lora_paths = sorted(k for k in flat if "lora" in k)
  assert lora_paths == ["layers/mlp/down_proj/lora_a", "layers/mlp/down_proj/lora_b",
                        "layers/self_attn/q_proj/lora_a", "layers/self_attn/q_proj/lora_b"]
  assert flat["layers/mlp/down_proj/lora_a"] == (2, 24, 2)
  assert flat["layers/self_attn/q_proj/lora_b"] == (2, 2, 16)


def test_dropout_only_on_the_lora_input():
  rate = 0.5
  layer = _dense(lora_lib.LoraConfig(rank=IN, alpha=float(IN), dropout=rate), use_bias=False)
  x = np.random.default_rng(3).normal(size=(4, IN)).astype(np.float32) + 3.0
  eye = np.eye(IN, dtype=np.float32)
  # kernel 0, lora_a = I, lora_b = [I | 0], scale 1: the output is dropout(x) on the first IN
  # columns and 0 elsewhere.
  p = {"kernel": np.zeros((IN, OUT), np.float32), "lora_a": eye,
       "lora_b": np.concatenate([eye, np.zeros((IN, OUT - IN), np.float32)], 1)}
  y = np.asarray(layer.apply({"params": p}, x, deterministic=False,
                             rngs={"dropout": jax.random.key(0)}))[:, :IN]
  kept = y != 0
  assert 0.3 < kept.mean() < 0.7
  np.testing.assert_allclose(y[kept], (x / (1 - rate))[kept], rtol=1e-6)
  np.testing.assert_allclose(layer.apply({"params": p}, x)[:, :IN], x, rtol=1e-6)
  # The frozen path is never dropped.
  p2 = dict(p, kernel=np.random.default_rng(4).normal(size=(IN, OUT)).astype(np.float32),
            lora_b=np.zeros((IN, OUT), np.float32))
  np.testing.assert_allclose(
      layer.apply({"params": p2}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}),
      x @ p2["kernel"], rtol=1e-5, atol=1e-5)


def _tiny(rank=3):
  return qwen2.Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=40,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           lora=lora_lib.LoraConfig(rank=rank, alpha=6.0))


@pytest.fixture(scope="module")
def tiny():
  cfg = _tiny()
  params = qwen2.init_params(cfg, jax.random.key(0))
  mask = lora_lib.lora_mask(params)
  rng = np.random.default_rng(1)
  # Random adapters (as if trained) so the LoRA path matters.
  params = jax.tree.map(
      lambda x, m: jnp.asarray(0.2 * rng.normal(size=x.shape), x.dtype) if m else x,
      params, mask)
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, cfg.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(7), (2, 7))

  def run(p, use_lora):
    return qwen2.Qwen2(cfg).apply({"params": p}, tokens, positions=positions,
                                  use_lora=use_lora)[0]

  base_cfg = dataclasses.replace(cfg, lora=lora_lib.LoraConfig())
  run_base = jax.jit(lambda p: qwen2.Qwen2(base_cfg).apply({"params": p}, tokens,
                                                           positions=positions)[0])
  return dict(cfg=cfg, params=params, mask=mask,
              run=jax.jit(run, static_argnums=1), run_base=run_base)


def test_lora_mask_marks_exactly_the_adapters(tiny):
  cfg, mask = tiny["cfg"], tiny["mask"]
  flat = {"/".join(str(k.key) for k in path): m
          for path, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert all(m == k.endswith(("lora_a", "lora_b")) for k, m in flat.items())
  assert sum(flat.values()) == 2 * 7
  c = cfg
  qkvo = [(32, 32), (32, 16), (32, 16), (32, 32)]
  mlp = [(32, 40), (32, 40), (40, 32)]
  want = c.num_hidden_layers * c.lora.rank * sum(i + o for i, o in qkvo + mlp)
  assert lora_lib.count(tiny["params"], mask) == want
  boxed = lora_lib.lora_mask(qwen2.abstract_params(cfg))
  assert lora_lib.count(qwen2.abstract_params(cfg), boxed) == want


def test_merge_lora_matches_lora_forward(tiny):
  params, cfg = tiny["params"], tiny["cfg"]
  with_lora = np.asarray(tiny["run"](params, True))
  without = np.asarray(tiny["run"](params, False))
  assert np.abs(with_lora - without).max() > 1e-2  # the adapters do something
  merged = lora_lib.merge_lora(params, cfg)  # a model config (its .lora) works too
  assert lora_lib.count(merged, lora_lib.lora_mask(merged)) == 0
  np.testing.assert_allclose(tiny["run_base"](merged), with_lora, atol=1e-5)
  # use_lora=False is the base model: the same tree with the adapters stripped.
  stripped = jax.tree.map(lambda x: x, params)
  for layer in ("self_attn", "mlp"):
    for proj in stripped["layers"][layer].values():
      proj.pop("lora_a"), proj.pop("lora_b")
  np.testing.assert_array_equal(tiny["run_base"](stripped), without)
  kept = lora_lib.merge_lora(params, cfg.lora, keep_lora_leaves=True)
  np.testing.assert_allclose(tiny["run"](kept, True), with_lora, atol=1e-5)
  np.testing.assert_allclose(tiny["run"](kept, False), with_lora, atol=1e-5)


def test_merge_lora_stacked_kernel_formula(tiny):
  params, cfg = tiny["params"], tiny["cfg"]
  merged = lora_lib.merge_lora(params, cfg.lora)
  q = params["layers"]["self_attn"]["q_proj"]
  want = np.asarray(q["kernel"]) + np.einsum("lir,lro->lio", q["lora_a"], q["lora_b"]) * (
      cfg.lora.alpha / cfg.lora.rank)
  np.testing.assert_allclose(merged["layers"]["self_attn"]["q_proj"]["kernel"], want,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="lacks"):
    lora_lib.merge_lora({"proj": {"lora_a": q["lora_a"]}}, cfg.lora)


def test_lora_config_errors():
  with pytest.raises(ValueError, match="rank"):
    lora_lib.LoraConfig(rank=-1)
  with pytest.raises(ValueError, match="dropout"):
    lora_lib.LoraConfig(rank=2, dropout=1.5)
  with pytest.raises(ValueError, match="init"):
    lora_lib.LoraConfig(rank=2, init="xavier")
  with pytest.raises(ValueError, match="alphas"):
    lora_lib.LoraConfig.from_dict({"rank": 2, "alphas": 3})
