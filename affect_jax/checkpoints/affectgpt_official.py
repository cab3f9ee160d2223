"""The official AffectGPT checkpoint (torch.save) -> this project's fusion and LoRA parameters.

The official trainer saves {"model": the trainable entries of the state dict, "optimizer": ...,
"config": ..., "scaler": ..., "epoch": ...} (runner_base.py `_save_checkpoint`). With the
released settings (attention fusion for video, audio and the Multi token; LoRA via peft on
q/k/v/o/gate/up/down of every decoder layer, lora_alpha 32; affectgpt.py) its names map as:

  official (torch Linear: weight [out, in], bias [out])   project parameter
  video_attention_mlp   Linear(Dv, 1)                      fusion/video/score
  affectgpt_proj        Linear(Dv, H)                      fusion/video/proj
  audio_attention_mlp   Linear(Da, 1)                      fusion/audio/score
  audio_llama_proj      Linear(Da, H)                      fusion/audio/proj
  multi_video_embs      Linear(Dv, M)                      fusion/multi/video_in
  multi_audio_embs      Linear(Da, M)                      fusion/multi/audio_in
  attention_mlp         Linear(2M, M)                      fusion/multi/mix
  fc_att                Linear(M, 2)                       fusion/multi/weights
  multi_llama_proj      Linear(M, H)                       fusion/multi/proj
  llama_model.base_model.model.model.layers.N.{self_attn,mlp}.P.lora_A.default.weight [r, in]
                                                           llm/layers/{self_attn,mlp}/P/lora_a[N]
  ....lora_B.default.weight [out, r]                       llm/layers/{self_attn,mlp}/P/lora_b[N]
  image_llama_proj      the single-image branch            skipped (this model has no image input)
  frozen models' buffers (*.position_ids, *.inv_freq)      skipped (recomputed)

Kernels are the transposed torch weights. peft scales the LoRA update by lora_alpha / r, as
LoraDense does with config.model.llm.lora (alpha, rank), so equal tensors give equal outputs when
the config's alpha is the official one (checked).

Public API:
  state_dict(ckpt) -> StateDictReader            the checkpoint's "model" entry
  check(reader, llm, fusion, official_alpha)     every name, shape and the LoRA scale, before
                                                 anything is read; returns the skipped names
  load(reader, llm, fusion, *, llm_shardings=None, fusion_shardings=None) -> (lora, fusion)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from affect_jax import sharding
from affect_jax.checkpoints import hf_mapping
from affect_jax.checkpoints.hf_mapping import Rule, transpose
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.checkpoints.torch_io import LazyTensor, StateDictReader, TorchCheckpoint
from affect_jax.models import fusion as fusion_lib
from affect_jax.models import qwen2

_LORA_LAYER = "llama_model.base_model.model.model.layers.{i}."
_GROUP = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
          "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# Official trainable entries of a branch this model does not have (single images).
SKIPPED = ("image_llama_proj.weight", "image_llama_proj.bias")
# The trainer keeps every state-dict entry that is not a frozen parameter, so the buffers some
# transformers versions persist (CLIP position ids, rotary inverse frequencies) of the frozen
# models may be in the file; the model recomputes them.
_FROZEN_MODELS = ("visual_encoder.", "acoustic_encoder.", "llama_model.")
_BUFFER_SUFFIXES = (".position_ids", ".inv_freq")


def _skipped(name: str) -> bool:
  return name in SKIPPED or (name.startswith(_FROZEN_MODELS) and name.endswith(_BUFFER_SUFFIXES))
_FUSION_HINT = "config.model.fusion (video_dim, audio_dim, multi_dim, llm_dim)"
_LORA_HINT = ("config.model.llm.lora.rank (the official lora_r, the first dimension of "
              "lora_A) and the Qwen2 folder's hidden_size / intermediate_size")


def fusion_rules() -> list[Rule]:
  """Official fusion modules -> fusion parameters (module doc)."""
  table = (("video", "score", "video_attention_mlp"), ("video", "proj", "affectgpt_proj"),
           ("audio", "score", "audio_attention_mlp"), ("audio", "proj", "audio_llama_proj"),
           ("multi", "video_in", "multi_video_embs"), ("multi", "audio_in", "multi_audio_embs"),
           ("multi", "mix", "attention_mlp"), ("multi", "weights", "fc_att"),
           ("multi", "proj", "multi_llama_proj"))
  return [r for mod, layer, name in table for r in hf_mapping.linear((mod, layer), name)]


def lora_rules(llm: qwen2.Qwen2Config) -> list[Rule]:
  """peft's LoRA tensors of every targeted projection -> the decoder's stacked lora_a / lora_b."""
  out = []
  for name in llm.lora.targets:
    group = _GROUP[name]
    for leaf, peft in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
      out.append(Rule(("layers", group, name, leaf),
                      f"{_LORA_LAYER}{group}.{name}.{peft}.default.weight", transpose, transpose))
  return out


def state_dict(ckpt: TorchCheckpoint) -> StateDictReader:
  """The trainable state dict of an official checkpoint (its "model" entry)."""
  obj = ckpt.obj
  if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
    return StateDictReader(ckpt, obj["model"], f"{ckpt.path}['model']")
  if isinstance(obj, Mapping) and obj and all(isinstance(v, LazyTensor) for v in obj.values()):
    return StateDictReader(ckpt, obj, str(ckpt.path))
  keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
  raise CheckpointError(f"{ckpt.path}: not an AffectGPT checkpoint: expected a dict with a "
                        f"'model' state dict (as the official trainer saves), found {keys}.")


def abstract_fusion(fusion: fusion_lib.FusionConfig) -> Any:
  """The fusion's boxed abstract parameters (nothing allocated)."""
  video = jnp.zeros((1, 2, fusion.video_dim))
  audio = jnp.zeros((1, 2, fusion.audio_dim))
  return jax.eval_shape(
      lambda: fusion_lib.Fusion(fusion).init(jax.random.key(0), video, audio))["params"]


def _expected(rule: Rule, target: Mapping) -> tuple[int, ...]:
  leaf = hf_mapping.get_path(target, rule.path)
  shape = tuple(leaf.shape[1:] if rule.per_layer else leaf.shape)
  return tuple(rule.to_hf(np.broadcast_to(np.zeros((), np.float32), shape)).shape)


def _check_rules(reader: StateDictReader, rules: Sequence[Rule], target: Mapping,
                 num_layers: int, hint: str, where: str) -> set[str]:
  used = set()
  for rule in rules:
    want = _expected(rule, target)
    names = [rule.hf.format(i=i) for i in range(num_layers)] if rule.per_layer else [rule.hf]
    for name in names:
      path = f"{where}/{'/'.join(rule.path)}"
      if name not in reader:
        raise CheckpointError(f"{reader.dir}: official tensor '{name}' is missing (needed for "
                              f"parameter {path}, shape {want}); is it an AffectGPT checkpoint "
                              "with attention fusion and LoRA, trained for this decoder?")
      if tuple(reader.shape(name)) != want:
        raise CheckpointError(f"{reader.dir}: official tensor '{name}' has shape "
                              f"{tuple(reader.shape(name))} but the config implies {want} "
                              f"(parameter {path}); check {hint}.")
      used.add(name)
  return used


def check(reader: StateDictReader, llm: qwen2.Qwen2Config, fusion: fusion_lib.FusionConfig,
          official_alpha: float) -> list[str]:
  """Validates the whole checkpoint against the configs before anything is read.

  Raises CheckpointError naming the tensor, the file and what was expected: a missing or
  mis-shaped tensor, a tensor the model has no place for, or a LoRA scale that differs.
  Returns:
    the official names skipped on purpose (the image branch, frozen models' buffers).
  """
  if fusion.llm_dim != llm.hidden_size:
    raise CheckpointError(f"config.model.fusion.llm_dim={fusion.llm_dim} but the Qwen2 folder's "
                          f"hidden_size is {llm.hidden_size}; they must match.")
  if not llm.lora.rank:
    raise CheckpointError(f"{reader.dir}: the official model has LoRA but config.model.llm.lora."
                          "rank is 0; set it to the official lora_r (16 in the released model).")
  if float(llm.lora.alpha) != float(official_alpha):
    raise CheckpointError(
        f"config.model.llm.lora.alpha={llm.lora.alpha} but the official model scales its LoRA by "
        f"lora_alpha={official_alpha} / r; set --config.model.llm.lora.alpha={official_alpha} "
        "so the converted model computes what the official one does.")
  used = _check_rules(reader, fusion_rules(), sharding.unbox(abstract_fusion(fusion)), 0,
                      _FUSION_HINT, "fusion")
  used |= _check_rules(reader, lora_rules(llm), sharding.unbox(qwen2.abstract_params(llm)),
                       llm.num_hidden_layers, _LORA_HINT, "llm")
  skipped = [k for k in reader.keys() if k not in used and _skipped(k)]
  unknown = [k for k in reader.keys() if k not in used and not _skipped(k)]
  if unknown:
    shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    raise CheckpointError(
        f"{reader.dir}: {len(unknown)} official tensors have no place in this model ({shown}); "
        "it implements attention fusion and LoRA on "
        f"{list(llm.lora.targets)} of {llm.num_hidden_layers} layers (config.model.llm.lora."
        "targets, the Qwen2 folder's num_hidden_layers); a checkpoint with Q-Former fusion or "
        "another LoRA layout is not supported.")
  return skipped


def load(reader: StateDictReader, llm: qwen2.Qwen2Config, fusion: fusion_lib.FusionConfig, *,
         llm_shardings: Mapping | None = None, fusion_shardings: Mapping | None = None
         ) -> tuple[dict, dict]:
  """(LoRA sub-tree of the decoder's params, fusion params), cast to the configs' dtypes.

  Run `check` first. Shardings: trees like the decoder's / fusion's params (default: the first
  device).
  """
  lora = hf_mapping.load(reader, lora_rules(llm), sharding.unbox(qwen2.abstract_params(llm)),
                         llm.num_hidden_layers, llm_shardings)
  fused = hf_mapping.load(reader, fusion_rules(), sharding.unbox(abstract_fusion(fusion)), 0,
                          fusion_shardings)
  return lora, fused
