"""HF Qwen2 checkpoints <-> project params: exact round trips, LoRA export, sharded loading,
and errors that name the tensor or field. References: transformers and the safetensors package."""
import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import transformers
from jax.sharding import PartitionSpec as P

from tests.testlib import qwen2 as lib
from affect_jax import sharding
from affect_jax.checkpoints import hf_qwen2
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.models import lora as lora_lib
from affect_jax.models import qwen2

TOL = 1e-4


def _tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of a folder, read with the safetensors package (independent of the project)."""
  out = {}
  for f in sorted(folder.glob("*.safetensors")):
    out.update(safetensors.numpy.load_file(f))
  return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{name: (transformers model, folder)}: untied single file, tied sharded with an index."""
  root = tmp_path_factory.mktemp("hf")
  untied = lib.hf_model(seed=11, num_key_value_heads=2, tie_word_embeddings=False)
  tied = lib.hf_model(seed=12, num_key_value_heads=4, tie_word_embeddings=True)
  out = {"untied": (untied, lib.save_hf(untied, root / "untied")),
         "tied_sharded": (tied, lib.save_hf(tied, root / "tied", max_shard_size="100KB"))}
  assert (out["tied_sharded"][1] / "model.safetensors.index.json").is_file()
  return out


@pytest.mark.parametrize("name", ["untied", "tied_sharded"])
@pytest.mark.parametrize("out_shards", [False, True])
def test_hf_project_hf_is_exact(checkpoints, tmp_path, name, out_shards):
  hf, folder = checkpoints[name]
  config, params = hf_qwen2.load(folder)
  assert config.tie_word_embeddings == (name == "tied_sharded")
  assert ("lm_head" in params) != config.tie_word_embeddings
  out = tmp_path / "out"
  hf_qwen2.save(params, config, out, max_shard_bytes=60_000 if out_shards else 2**30)
  assert (out / "model.safetensors.index.json").is_file() == out_shards
  before, after = _tensors(folder), _tensors(out)
  assert sorted(after) == sorted(before)
  for key in before:
    assert after[key].dtype == before[key].dtype, key
    assert np.array_equal(after[key], before[key]), key
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(out, attn_implementation="eager")
  tokens, mask, positions = lib.padded_batch(0, [6, 4], 6, config.vocab_size, "left")
  np.testing.assert_array_equal(lib.hf_logits(reloaded.eval(), tokens, mask, positions),
                                lib.hf_logits(hf, tokens, mask, positions))


def _randomize_lora(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x, m: jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype) if m else x,
      params, lora_lib.lora_mask(params))


@pytest.mark.parametrize("name", ["untied", "tied_sharded"])
def test_merged_lora_export_matches_transformers(checkpoints, tmp_path, name):
  hf, folder = checkpoints[name]
  lora = lora_lib.LoraConfig(rank=4, alpha=8.0)
  config, params = hf_qwen2.load(folder, lora=lora, rng=jax.random.key(5))
  assert np.all(np.asarray(params["layers"]["mlp"]["up_proj"]["lora_b"]) == 0)
  params = _randomize_lora(params, seed=7)
  tokens, mask, positions = lib.padded_batch(1, [8, 5, 2], 8, config.vocab_size, "left")
  model = qwen2.Qwen2(config)
  run = jax.jit(lambda p, use_lora: model.apply({"params": p}, tokens, positions=positions,
                                                attention_mask=mask, use_lora=use_lora)[0],
                static_argnums=1)
  with_lora, base = np.asarray(run(params, True)), np.asarray(run(params, False))
  base_diff = np.abs(base - lib.hf_logits(hf, tokens, mask, positions))[mask].max()
  hf_qwen2.save(params, config, tmp_path / "merged")
  merged = transformers.Qwen2ForCausalLM.from_pretrained(
      tmp_path / "merged", attn_implementation="eager").eval()
  merged_logits = lib.hf_logits(merged, tokens, mask, positions)
  lora_diff = np.abs(with_lora - merged_logits)[mask].max()
  effect = np.abs(with_lora - base)[mask].max()
  print(f"\n{name}: LoRA on vs transformers(merged export) max |diff| = {lora_diff:.2e}; "
        f"use_lora=False vs transformers(base) = {base_diff:.2e}; LoRA effect = {effect:.2f}")
  assert effect > 0.1
  assert lora_diff <= TOL and base_diff <= TOL
  hf_qwen2.save(params, config, tmp_path / "base", merge=False)
  base_tensors, original = _tensors(tmp_path / "base"), _tensors(folder)
  assert all(np.array_equal(base_tensors[k], original[k]) for k in original)


MESHES = {"fsdp2_tensor4": {"fsdp": 2, "tensor": 4}, "data2_fsdp4": {"data": 2, "fsdp": 4}}


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_forward_matches_single_device(checkpoints, mesh_name):
  """Params loaded straight onto a (2, 4) mesh of 8 CPU devices give the 1-device result, for
  a full forward and for a cached prefill + decode step."""
  assert len(jax.devices()) == 8, "conftest.py sets 8 fake CPU devices"
  _, folder = checkpoints["tied_sharded"]  # 8 heads, 4 kv heads: tensor=4 splits both
  lora = lora_lib.LoraConfig(rank=4, alpha=8.0)
  rules = sharding.DEFAULT_RULES
  mesh = sharding.make_mesh(MESHES[mesh_name])
  config, single = hf_qwen2.load(folder, lora=lora)
  _, sharded = hf_qwen2.load(folder, lora=lora, mesh=mesh, sharding_rules=rules)
  single = _randomize_lora(single, seed=3)
  sharded = jax.device_put(_randomize_lora(sharded, seed=3),
                           jax.tree.map(lambda x: x.sharding, sharded))
  want = sharding.shardings(qwen2.abstract_params(config), mesh, rules)
  for got, spec in zip(jax.tree.leaves(sharded), jax.tree.leaves(want)):
    assert got.sharding.is_equivalent_to(spec, got.ndim)
  q = sharded["layers"]["self_attn"]["q_proj"]
  assert q["kernel"].sharding.spec == P(None, "fsdp", "tensor")
  assert q["lora_a"].sharding.spec == P(None, "fsdp", None)
  assert len(q["kernel"].addressable_shards) == 8

  tokens, mask, positions = lib.padded_batch(5, [7, 3, 6, 2, 7, 5, 4, 1], 7,
                                             config.vocab_size, "left")
  model = qwen2.Qwen2(config)
  max_len = tokens.shape[1] + 1
  kv_mask = np.concatenate([mask, np.ones((8, 1), bool)], axis=1)  # after the decode step
  prefill_mask = np.concatenate([mask, np.zeros((8, 1), bool)], axis=1)
  step_tok, step_pos = tokens[:, -1:], positions[:, -1:] + 1

  def run(p):
    full, _ = model.apply({"params": p}, tokens, positions=positions, attention_mask=mask)
    cache = qwen2.init_cache(config, tokens.shape[0], max_len)
    _, cache = model.apply({"params": p}, tokens, positions=positions, cache=cache,
                           cache_index=0, kv_mask=prefill_mask)
    step, _ = model.apply({"params": p}, step_tok, positions=step_pos, cache=cache,
                          cache_index=max_len - 1, kv_mask=kv_mask)
    return full, step

  ref_full, ref_step = jax.jit(run)(single)
  with sharding.active(mesh, rules):
    got_full, got_step = jax.jit(run)(sharded)
  assert got_full.sharding.spec[0] is not None  # batch split on the mesh
  diff = max(float(np.abs(np.asarray(got_full) - np.asarray(ref_full))[mask].max()),
             float(np.abs(np.asarray(got_step) - np.asarray(ref_step)).max()))
  print(f"\nmesh {mesh_name}: sharded vs 1-device max |diff| = {diff:.2e}")
  assert diff <= 1e-5


# ---------------------------------------------------------------- bad input


def _copy(folder: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  shutil.copytree(folder, dest)
  return dest


def _rewrite(folder: pathlib.Path, edit) -> None:
  """Rewrites a single-file checkpoint's tensors through `edit(dict) -> None`."""
  tensors = _tensors(folder)
  edit(tensors)
  for f in folder.glob("*.safetensors"):
    f.unlink()
  safetensors.numpy.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _edit_config(folder: pathlib.Path, **changes) -> None:
  path = folder / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


def test_missing_tensor_is_named(checkpoints, tmp_path):
  folder = _copy(checkpoints["untied"][1], tmp_path / "ckpt")
  _rewrite(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
    hf_qwen2.load(folder)


def test_misshaped_tensor_is_named(checkpoints, tmp_path):
  folder = _copy(checkpoints["untied"][1], tmp_path / "ckpt")

  def edit(t):
    t["model.layers.1.self_attn.k_proj.bias"] = t["model.layers.1.self_attn.k_proj.bias"][:-1]
  _rewrite(folder, edit)
  with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias.*shape"):
    hf_qwen2.load(folder)


@pytest.mark.parametrize("change,match", [
    ({"hidden_size": 32}, r"model\.embed_tokens\.weight.*hidden_size"),
    ({"num_key_value_heads": 8}, r"k_proj.*shape"),
    ({"num_hidden_layers": 1}, r"not used by config\.json.*model\.layers\.1"),
    ({"num_hidden_layers": 3}, r"model\.layers\.2\..*missing"),
    ({"tie_word_embeddings": True}, r"lm_head\.weight"),
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
])
def test_config_that_does_not_match_the_weights(checkpoints, tmp_path, change, match):
  folder = _copy(checkpoints["untied"][1], tmp_path / "ckpt")
  _edit_config(folder, **change)
  if change == {"tie_word_embeddings": True}:
    # Tied config + lm_head tensor is tolerated (some exports keep it); drop the embedding
    # instead so the checkpoint really lacks what a tied model needs.
    _rewrite(folder, lambda t: t.pop("model.embed_tokens.weight"))
    match = r"model\.embed_tokens\.weight.*missing"
  with pytest.raises(CheckpointError, match=match):
    hf_qwen2.load(folder)


def test_pickle_checkpoint_is_refused(tmp_path, checkpoints):
  folder = tmp_path / "pickled"
  folder.mkdir()
  shutil.copy(checkpoints["untied"][1] / "config.json", folder / "config.json")
  (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*refused"):
    hf_qwen2.load(folder)


def test_failed_save_leaves_nothing(checkpoints, tmp_path, monkeypatch):
  config, params = hf_qwen2.load(checkpoints["untied"][1])
  out = tmp_path / "out"
  broken = dict(params, norm={})
  with pytest.raises(CheckpointError, match="norm/scale"):
    hf_qwen2.save(broken, config, out)
  wrong = dataclasses.replace(config, intermediate_size=config.intermediate_size + 8)
  with pytest.raises(CheckpointError, match=r"layers/mlp/gate_proj/kernel.*shape"):
    hf_qwen2.save(params, wrong, out)

  def write_then_fail(folder, tensors, config, max_shard_bytes):
    (pathlib.Path(folder) / "config.json").write_text("{}")
    raise OSError("disk full")
  monkeypatch.setattr(hf_qwen2, "write_checkpoint", write_then_fail)
  with pytest.raises(OSError, match="disk full"):
    hf_qwen2.save(params, config, out)
  assert not out.exists()
  assert list(tmp_path.iterdir()) == []
  monkeypatch.undo()
  out.mkdir()
  (out / "keep.txt").write_text("x")
  with pytest.raises(CheckpointError, match="not empty"):
    hf_qwen2.save(params, config, out)
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
