"""launch.convert --affectgpt_ckpt: an official-format AffectGPT checkpoint (written here with
torch.save under the official parameter names) + the three HF folders -> one checkpoint that
training starts from. References: the official formulas (my_affectgpt/models/affectgpt.py:
encode_video_attention, encode_audio_attention, encode_multi_attention, placeholder splicing;
peft's LoRA W x + B A x * lora_alpha / r) written in torch over transformers' Qwen2."""
import collections
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from affect_jax import sharding
from affect_jax.checkpoints import manager
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.models import affectgpt
from configs import tiny
from launch import convert
from tests.testlib import hf as hf_testlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_ALPHA = 32.0          # affectgpt.py: LoraConfig(r=lora_r, lora_alpha=32, ...)
LORA = "llama_model.base_model.model.model.layers.{i}.{group}.{name}.lora_{ab}.default.weight"
PROJ_GROUPS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
               ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"),
               ("mlp", "down_proj"))


def _config(rank=4, alpha=OFFICIAL_ALPHA):
  c = tiny.get_config()
  c.model.llm["lora"] = dict(c.model.llm["lora"], rank=rank, alpha=alpha)
  return c


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  hf_testlib.write_tiny_hf(root, seeds=(0, 1, 2))
  return ",".join(str(root / n) for n in ("qwen", "clip", "hubert"))


def _proj_shapes(llm) -> dict:
  """(out, in) of each LoRA-adapted projection of transformers' Qwen2 at the tiny sizes."""
  h, inter = llm["hidden_size"], llm["intermediate_size"]
  kv = h // llm["num_attention_heads"] * llm["num_key_value_heads"]
  return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
          "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}


def official_state_dict(config, seed=3) -> "collections.OrderedDict[str, torch.Tensor]":
  """The trainable entries the official trainer saves, under the official names, tiny sizes."""
  g = torch.Generator().manual_seed(seed)
  rnd = lambda *shape: 0.1 * torch.randn(*shape, generator=g)
  f, llm = config.model.fusion, config.model.llm
  dv, da, m, h = f["video_dim"], f["audio_dim"], f["multi_dim"], f["llm_dim"]
  r = llm["lora"]["rank"]
  sd = collections.OrderedDict()
  shapes = _proj_shapes(llm)
  for i in range(llm["num_hidden_layers"]):
    for group, name in PROJ_GROUPS:
      out, inp = shapes[name]
      sd[LORA.format(i=i, group=group, name=name, ab="A")] = rnd(r, inp)
      sd[LORA.format(i=i, group=group, name=name, ab="B")] = rnd(out, r)
  linears = {"image_llama_proj": (h, dv), "video_attention_mlp": (1, dv),
             "affectgpt_proj": (h, dv), "audio_attention_mlp": (1, da),
             "audio_llama_proj": (h, da), "multi_audio_embs": (m, da),
             "multi_video_embs": (m, dv), "attention_mlp": (m, 2 * m), "fc_att": (2, m),
             "multi_llama_proj": (h, m)}
  for name, (out, inp) in linears.items():
    sd[f"{name}.weight"] = rnd(out, inp)
    sd[f"{name}.bias"] = rnd(out)
  # A frozen model's buffer, which transformers versions that persist it leave in the file.
  sd["visual_encoder.model.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
  return sd


def save_official(sd, path):
  """As runner_base._save_checkpoint does: {"model": state dict, "optimizer", "config", ...}."""
  torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]},
              "config": {"model": {"arch": "affectgpt", "lora_r": 4}}, "scaler": None,
              "epoch": 2}, path)
  return path


def official_logits(hf_qwen: str, sd, config, tokens, video, audio) -> np.ndarray:
  """The official forward: attention fusion, placeholder splicing, LoRA-merged Qwen2 (torch)."""
  lin = lambda name, x: F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])
  video, audio = torch.as_tensor(video), torch.as_tensor(audio)

  def attention_pool(h, mlp, proj):          # encode_{video,audio}_attention
    attention = lin(mlp, h)                                          # [b, t, 1]
    fused = torch.matmul(h.permute(0, 2, 1), attention).squeeze(2)  # [b, h]
    return lin(proj, fused)

  v = lin("multi_video_embs", video.mean(1))                         # encode_multi_attention
  a = lin("multi_audio_embs", audio.mean(1))
  attention = lin("fc_att", lin("attention_mlp", torch.cat([v, a], dim=1))).unsqueeze(2)
  multi = torch.matmul(torch.stack([v, a], dim=2), attention).squeeze(2)
  modality = {"multi": lin("multi_llama_proj", multi),
              "audio": attention_pool(audio, "audio_attention_mlp", "audio_llama_proj"),
              "video": attention_pool(video, "video_attention_mlp", "affectgpt_proj")}

  model = transformers.Qwen2ForCausalLM.from_pretrained(hf_qwen, attn_implementation="eager")
  model = model.float().eval()
  r = config.model.llm["lora"]["rank"]
  with torch.no_grad():
    for i, layer in enumerate(model.model.layers):
      for group, name in PROJ_GROUPS:
        lin_mod = getattr(getattr(layer, group), name)
        a_ = sd[LORA.format(i=i, group=group, name=name, ab="A")]
        b_ = sd[LORA.format(i=i, group=group, name=name, ab="B")]
        lin_mod.weight += b_ @ a_ * (OFFICIAL_ALPHA / r)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    placeholders = config.model.placeholder_ids
    clean = ids.clone()
    for pid in placeholders.values():
      clean[clean == pid] = 0
    embeds = model.model.embed_tokens(clean)
    for name, pid in placeholders.items():
      rows = ids == pid
      embeds[rows] = modality[name].to(embeds.dtype).repeat_interleave(rows.sum(1), dim=0)
    return model(inputs_embeds=embeds).logits.numpy()


def _inputs(config, batch=2, length=12, frames=3, windows=4, seed=5):
  rng = np.random.default_rng(seed)
  ids = config.model.placeholder_ids
  tokens = rng.integers(1, min(ids.values()), (batch, length)).astype(np.int32)
  tokens[:, 1], tokens[:, 3], tokens[:, 5] = ids["multi"], ids["audio"], ids["video"]
  video = rng.normal(size=(batch, frames, config.model.fusion["video_dim"])).astype(np.float32)
  audio = rng.normal(size=(batch, windows, config.model.fusion["audio_dim"])).astype(np.float32)
  return tokens, video, audio


def test_official_checkpoint_converts_to_equal_tensors_and_logits(hf_dirs, tmp_path):
  config = _config()
  sd = official_state_dict(config)
  ckpt = save_official(sd, tmp_path / "affectgpt.pth")
  out = tmp_path / "ckpt"
  result = convert.to_project(hf_dirs, str(out), config, "", None, 0, False,
                              affectgpt_ckpt=str(ckpt))
  assert result["components"] == ["audio", "fusion", "llm", "vision"]
  assert result["skipped"] == ["image_llama_proj.bias", "image_llama_proj.weight",
                               "visual_encoder.model.vision_model.embeddings.position_ids"]

  # Training's start-from path (config.init_from): every parameter comes from the checkpoint.
  cfg = affectgpt.AffectGPTConfig.from_config(config.model)
  first = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=first),
                        sharding.unbox(affectgpt.abstract_params(cfg)))
  params = manager.load_initial_params(out, target)

  np_ = lambda x: np.asarray(jax.device_get(x))
  t = lambda name: sd[name].numpy().T
  fusion = params["fusion"]
  for mod, layer, name in (("video", "score", "video_attention_mlp"),
                           ("video", "proj", "affectgpt_proj"),
                           ("audio", "score", "audio_attention_mlp"),
                           ("audio", "proj", "audio_llama_proj"),
                           ("multi", "video_in", "multi_video_embs"),
                           ("multi", "audio_in", "multi_audio_embs"),
                           ("multi", "mix", "attention_mlp"), ("multi", "weights", "fc_att"),
                           ("multi", "proj", "multi_llama_proj")):
    np.testing.assert_array_equal(np_(fusion[mod][layer]["kernel"]), t(f"{name}.weight"))
    np.testing.assert_array_equal(np_(fusion[mod][layer]["bias"]), sd[f"{name}.bias"].numpy())
  layers = params["llm"]["layers"]
  for i in range(config.model.llm["num_hidden_layers"]):
    for group, name in PROJ_GROUPS:
      np.testing.assert_array_equal(np_(layers[group][name]["lora_a"][i]),
                                    t(LORA.format(i=i, group=group, name=name, ab="A")))
      np.testing.assert_array_equal(np_(layers[group][name]["lora_b"][i]),
                                    t(LORA.format(i=i, group=group, name=name, ab="B")))

  tokens, video, audio = _inputs(config)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  forward = jax.jit(affectgpt.forward, static_argnums=1)
  ours = forward(params, cfg, tokens, video, audio, positions=positions)
  want = official_logits(hf_dirs.split(",")[0], sd, config, tokens, video, audio)
  assert np.abs(want).max() > 0.1    # the logits are not trivially small
  np.testing.assert_allclose(np.asarray(ours), want, atol=2e-4, rtol=2e-4)
  meta = json.loads((out / "meta.json").read_text())
  assert meta["components"]["fusion"]["source"] == str(ckpt)


def _broken(tmp_path, edit):
  config = _config()
  sd = official_state_dict(config)
  edit(sd)
  return config, save_official(sd, tmp_path / "broken.pth")


@pytest.mark.parametrize("edit,rank,alpha,match", [
    (lambda sd: sd.pop(LORA.format(i=1, group="mlp", name="up_proj", ab="B")), 4, OFFICIAL_ALPHA,
     r"official tensor 'llama_model\.base_model\.model\.model\.layers\.1\.mlp\.up_proj\.lora_B"
     r"\.default\.weight' is missing .*llm/layers/mlp/up_proj/lora_b, shape \(128, 4\)"),
    (lambda sd: sd.update({"video_Qformer.bert.encoder.layer.0.output.dense.weight":
                           torch.zeros(2, 2)}), 4, OFFICIAL_ALPHA,
     r"1 official tensors have no place in this model \(video_Qformer\.bert\.encoder"),
    (lambda sd: None, 8, OFFICIAL_ALPHA,
     r"official tensor '.*lora_A\.default\.weight' has shape \(4, 64\) but the config implies "
     r"\(8, 64\).*config\.model\.llm\.lora\.rank"),
    (lambda sd: sd.update({"fc_att.weight": torch.zeros(3, 32)}), 4, OFFICIAL_ALPHA,
     r"'fc_att\.weight' has shape \(3, 32\) but the config implies \(2, 32\)"),
    (lambda sd: None, 4, 8.0, r"lora\.alpha=8\.0 but the official model .*lora_alpha=32"),
], ids=["missing_lora_b", "unknown_qformer", "rank_mismatch", "fusion_shape", "alpha"])
def test_mismatches_name_the_tensor_and_leave_nothing(hf_dirs, tmp_path, edit, rank, alpha,
                                                       match):
  _, path = _broken(tmp_path, edit)
  out = tmp_path / "out"
  with pytest.raises(CheckpointError, match=match) as err:
    convert.to_project(hf_dirs, str(out), _config(rank, alpha), "", None, 0, False,
                       affectgpt_ckpt=str(path))
  if "alpha" not in match:
    assert str(path) in str(err.value)
  assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_non_tensor_entries_are_refused(hf_dirs, tmp_path):
  path = tmp_path / "strings.pth"
  torch.save({"model": {"fc_att.weight": "not a tensor"}}, path)
  with pytest.raises(CheckpointError, match=r"strings\.pth\['model'\]: entries \['fc_att\.weight"
                     r"'\] are not tensors"):
    convert.to_project(hf_dirs, str(tmp_path / "out"), _config(), "", None, 0, False,
                       affectgpt_ckpt=str(path))
  assert not (tmp_path / "out").exists()


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_cli_refuses_code_in_the_checkpoint(hf_dirs, tmp_path):
  marker = tmp_path / "pwned"
  config = _config()
  path = tmp_path / "evil.pth"
  torch.save({"model": official_state_dict(config), "config": _RunsCode(marker)}, path)
  r = subprocess.run(
      [sys.executable, "-m", "launch.convert", f"--hf_dir={hf_dirs}", f"--affectgpt_ckpt={path}",
       f"--out={tmp_path / 'out'}", "--config=configs/tiny.py",
       f"--config.model.llm.lora.alpha={OFFICIAL_ALPHA}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.startswith("convert: error:") or "\nconvert: error:" in r.stderr
  assert str(path) in r.stderr and "system" in r.stderr and "Traceback" not in r.stderr
  assert not marker.exists()
  assert not (tmp_path / "out").exists()
