"""affect_jax/bench/flops.py against independent counts.

* XLA's own FLOP count (HLO cost analysis of the lowered program, jit(f).lower(...)
  .cost_analysis(); the compiled program's count agrees within 0.1% here and takes a compile) of
  a jitted forward / gradient of a tiny Qwen2, CLIP tower, HuBERT and fusion. XLA counts a while-loop body once, so the models here
  have ONE layer (the layer scan then runs its body once), and the attention mask is full: XLA
  counts the masked half of causal attention, so the analytic count is taken with attended = T.
  XLA also counts elementwise work (norms, softmax, activations), which the analytic count leaves
  out: tolerance 3% (the widths are chosen so that matmuls dominate, as they do at real sizes).
* A direct sum over the parameter shapes (every kernel, LoRA adapters included): exact.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax.bench import flops
from affect_jax.models import clip_vision, fusion, hubert, qwen2
from affect_jax.models.lora import LoraConfig

TOL = 0.03
CFG = qwen2.Qwen2Config(vocab_size=2048, hidden_size=256, intermediate_size=704,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def _inputs(b=2, t=64):
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (b, t)), jnp.int32)
  return tokens, jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def test_forward_and_training_match_xla_cost_analysis():
  params = jax.eval_shape(lambda: qwen2.init_params(CFG, jax.random.key(0)))
  tokens, positions = _inputs()
  n = tokens.size
  fwd = lambda p: qwen2.Qwen2(CFG).apply({"params": p}, tokens, positions=positions)[0]
  want = flops.forward_flops(CFG, n, tokens.shape[1], n)
  got = _xla_flops(fwd, params)
  print(f"forward: analytic {want['total']:.4g}, XLA {got:.4g}")
  assert abs(got / want["total"] - 1) < TOL
  # Training: a loss non-linear in the logits (a linear one lets XLA drop the lm_head forward).
  weights = jax.random.normal(jax.random.key(1), (*tokens.shape, CFG.vocab_size))
  grad = lambda p, w: jax.grad(lambda q: jnp.sum(jax.nn.log_softmax(fwd(q)) * w))(p)
  train = flops.train_flops(want, lora=False)
  got = _xla_flops(grad, params, weights)
  print(f"train: analytic {train['total']:.4g}, XLA {got:.4g}")
  assert abs(got / train["total"] - 1) < TOL


def test_lora_training_counts_frozen_matmuls_twice():
  """Gradients for the adapters and the input embeddings (as the trainable fusion's modality
  tokens need in the multimodal policy), so every frozen matmul's input gradient is live."""
  cfg = dataclasses.replace(CFG, lora=LoraConfig(rank=8, alpha=16.0))
  params = jax.eval_shape(lambda: qwen2.init_params(cfg, jax.random.key(0)))
  is_lora = lambda path: path[-1].key in ("lora_a", "lora_b")
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  lora = {jax.tree_util.keystr(k): v for k, v in flat if is_lora(k)}
  base = {jax.tree_util.keystr(k): v for k, v in flat if not is_lora(k)}
  tokens, positions = _inputs()
  n = tokens.size
  embeds = jax.random.normal(jax.random.key(2), (*tokens.shape, cfg.hidden_size))
  weights = jax.random.normal(jax.random.key(1), (*tokens.shape, cfg.vocab_size))

  def loss(adapters, e, frozen, w):
    leaves = [(adapters if is_lora(k) else frozen)[jax.tree_util.keystr(k)] for k, _ in flat]
    p = jax.tree_util.tree_unflatten(treedef, leaves)
    logits = qwen2.Qwen2(cfg).apply({"params": p}, embeds=e, positions=positions)[0]
    return jnp.sum(jax.nn.log_softmax(logits) * w)

  want = flops.train_flops(flops.forward_flops(cfg, n, tokens.shape[1], n), lora=True)
  got = _xla_flops(jax.grad(loss, argnums=(0, 1)), lora, embeds, base, weights)
  print(f"LoRA train: analytic {want['total']:.4g}, XLA {got:.4g}")
  assert abs(got / want["total"] - 1) < TOL


def test_per_token_matmuls_equal_the_sum_over_parameter_shapes():
  cfg = dataclasses.replace(CFG, num_hidden_layers=3, lora=LoraConfig(rank=4, alpha=8.0))
  params = jax.eval_shape(lambda: qwen2.init_params(cfg, jax.random.key(0)))
  f = flops.forward_flops(cfg, 1, 0, 1)
  assert f["layers"] + f["lora"] + f["lm_head"] == flops.param_matmul_flops_per_token(params)


def test_rollout_closed_form_equals_the_sum_over_decode_steps():
  p, n, b, g = 16, 9, 3, 4
  got = flops.rollout(CFG, b, g, p, n)
  steps = sum(flops.decode_step_flops(CFG, b * g, p + j + 1)["total"] for j in range(n - 1))
  prefill = flops.forward_flops(CFG, b * p, (p + 1) / 2, b)["total"]
  assert got["decode_steps"] == n - 1
  np.testing.assert_allclose(got["total_flops"], prefill + steps, rtol=1e-12)


def test_grpo_step_phases_add_up():
  out = flops.grpo_step(CFG, 2, 4, 16, 8, lora_rank=0, num_iterations=2)
  assert out["old"] > 0 and out["reference"] > 0
  np.testing.assert_allclose(out["total"], out["rollout"] + out["reference"] + out["old"]
                             + out["update"], rtol=1e-12)
  assert flops.grpo_step(CFG, 2, 4, 16, 8, beta=0.0)["reference"] == 0.0


def test_encoders_and_fusion_match_xla_cost_analysis():
  v = clip_vision.ClipVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=1,
                                   num_attention_heads=4, image_size=64, patch_size=8,
                                   projection_dim=128)
  model = clip_vision.ClipVision(v)
  pixels = jnp.zeros((2, 64, 64, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), pixels)
  got = _xla_flops(lambda p, x: model.apply(p, x), params, pixels)
  want = flops.clip_flops(v, 2)
  print(f"CLIP: analytic {want:.4g}, XLA {got:.4g}")
  assert abs(got / want - 1) < TOL

  a = hubert.HubertConfig(hidden_size=256, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=1024, conv_dim=(64, 64), conv_stride=(5, 4),
                          conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=4)
  model = hubert.Hubert(a)
  wave = jnp.zeros((2, 4000))
  params = jax.eval_shape(model.init, jax.random.key(0), wave)
  got = _xla_flops(lambda p, x: model.apply(p, x), params, wave)
  want = flops.hubert_flops(a, 2, 4000)
  print(f"HuBERT: analytic {want:.4g}, XLA {got:.4g}")
  assert abs(got / want - 1) < 0.06     # layer / group norms and GELU over narrow conv channels

  f = fusion.FusionConfig(video_dim=128, audio_dim=256, multi_dim=256, llm_dim=512)
  model = fusion.Fusion(f)
  video, audio = jnp.ones((4, 8, 128)), jnp.ones((4, 8, 256))
  params = jax.eval_shape(model.init, jax.random.key(0), video, audio)
  got = _xla_flops(lambda p, x, y: model.apply(p, x, y), params, video, audio)
  want = flops.fusion_flops(f, 4, 8, 8)
  print(f"fusion: analytic {want:.4g}, XLA {got:.4g}")
  assert abs(got / want - 1) < 0.1      # tiny matmuls: the time means and sums weigh more


@pytest.mark.parametrize("kind,key", [
    ("TPU v4", "tpu_v4"), ("TPU v5 lite", "tpu_v5e"), ("TPU v5e", "tpu_v5e"), ("TPU v5", "tpu_v5p"),
    ("TPU v5p", "tpu_v5p"), ("TPU v6 lite", "tpu_v6e"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA H100 80GB HBM3", "h100_sxm"), ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA H200", "h200"), ("Some new chip", None)])
def test_chip_table(kind, key):
  assert flops.chip_key(kind) == key
  if key is not None:
    value, source = flops.PEAK_BF16[key]
    assert value > 1e14 and "TFLOP/s" in source


def test_cpu_peak_is_measured_and_mfu_uses_it():
  m = flops.measure_cpu_peak(sizes=(256, 512), reps=1)
  assert m["flops_per_s"] > 0
  # per_size_gflops is the same figure divided by 1e9: equal up to float rounding.
  assert m["flops_per_s"] == pytest.approx(max(m["per_size_gflops"].values()) * 1e9, rel=1e-12)
  u = flops.utilisation(m["flops_per_s"], 2.0, m)
  assert u["mfu"] == pytest.approx(0.5)
  assert flops.utilisation(1.0, 1.0, {"flops_per_s": None})["mfu"] is None
