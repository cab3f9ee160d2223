"""Modality ablation of the MER-UniBench evaluation: the sets scored again with inputs masked.

  ablations = parse("audio,subtitle,audio+multi")  # (('audio',), ('subtitle',), ('multi', 'audio'))
  ucfg_a = unibench_config(ucfg, prompt_cfg, ablations[0])  # the prompt without the audio block
  result = unibench.evaluate(..., ablations=ablations)      # each set's entry gets 'ablations'
  result["ablations"] = summarize(result["sets"])           # launch.evaluate
  print(markdown(result))

What "masked" means: the official AffectGPT runs a modality subset by building the prompt
without that modality's block (datasets/datasets/base_dataset.py get_prompt_for_multimodal and
its face_or_frame options), so an ablation here is the same prompt with the masked blocks left
out (data.prompt.modalities without them). A block that is not in the prompt has no
placeholder token, so the model never reads that modality's features (fusion.splice replaces
placeholders only); a masked subtitle is absent text. Names: `multi` (the fused audio-video
token), `audio`, `video` (frames or faces), `subtitle`; `a+b` masks several in one ablation.

Official variants this reproduces word for word (tests/eval/test_ablation.py pins them), from
the full `multiface_audio_face_text` / `multiframe_audio_frame_text` prompt:
  multi                   -> `face` / `frame`            (audio, video, subtitle)
  audio+video             -> `multiface_text`            (multi, subtitle)
  multi+audio+video       -> `textonly`
  multi+video+subtitle    -> `audioonly`
  multi+audio+subtitle    -> `faceonly` / `frameonly`
Where no official variant exists, the rule these variants follow is kept: the video sentence
starts "Meanwhile, we ..." right after the audio block and "We ..." otherwise, so masking
audio while keeping video uses config.unibench.ablate_video_blocks (the official faceonly /
frameonly sentence). The official `audio_text` / `face_text` / `frame_text` (multi+video, multi+audio
masked) differ from every other variant in lacking "###Human: " (and frame_text writes "we"
lowercase); here the prompt keeps "###Human: ", as the model under test was trained with it.
The Multi token is fused from the audio and video features, so `audio` alone still lets audio
reach the model through it (the official `multiface_text` is likewise Multi without the audio
and video blocks); `audio+multi` removes audio entirely.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import ml_collections

from affect_jax.emotion import metrics

NAMES = ("multi", "audio", "video", "subtitle")   # maskable inputs, in prompt order
COMBINE = "+"                                    # 'audio+video': one ablation, both masked
FOLDER_PREFIX = "no_"                            # predictions_out/no_<name>/ per ablation


def parse(text: str, source: str = "--ablate") -> tuple[tuple[str, ...], ...]:
  """'audio,video+audio' -> (('audio',), ('audio', 'video')): one tuple of masked inputs (in
  prompt order) per ablation, duplicates dropped; '' -> ()."""
  out = []
  for item in (s.strip().lower() for s in text.split(",")):
    if not item:
      continue
    parts = [p.strip() for p in item.split(COMBINE)]
    unknown = [p for p in parts if p not in NAMES]
    if unknown:
      raise ValueError(f"{source}={text}: unknown input(s) {unknown} in '{item}'; use a comma "
                       f"list of {', '.join(NAMES)} (join with '{COMBINE}' to mask several in "
                       f"one ablation, e.g. audio{COMBINE}multi).")
    out.append(tuple(n for n in NAMES if n in parts))
  return tuple(dict.fromkeys(out))


def name(masked: Sequence[str]) -> str:
  """The ablation's name: its masked inputs joined by '+' ('audio+video')."""
  return COMBINE.join(masked)


def folder(masked: Sequence[str]) -> str:
  """The sub-folder of --predictions_out that holds the ablation's files."""
  return FOLDER_PREFIX + name(masked)


def check(ablations: Sequence[Sequence[str]], modalities: Sequence[str],
          source: str = "--ablate") -> None:
  """Every masked input must be a block of the evaluated prompt (data.prompt.modalities),
  else the ablation would equal the full model."""
  for masked in ablations:
    absent = [m for m in masked if m not in modalities]
    if absent:
      raise ValueError(f"{source}: '{name(masked)}' masks {absent}, which the prompt does not "
                       f"have (data.prompt.modalities={tuple(modalities)}); leave it out of "
                       f"{source}.")


def prompt_overrides(masked: Sequence[str], prompt_cfg: ml_collections.ConfigDict,
                     video_blocks_without_audio: Mapping[str, str]) -> dict:
  """The data.prompt fields of the ablated prompt (module doc): the modalities left, and the
  video sentence without "Meanwhile, " when audio is masked and video is not."""
  kept = tuple(m for m in prompt_cfg.modalities if m not in masked)
  out = {"modalities": kept}
  if "audio" in masked and "video" in kept:
    out["video_blocks"] = dict(video_blocks_without_audio)
  return out


def unibench_config(ucfg: ml_collections.ConfigDict, prompt_cfg: ml_collections.ConfigDict,
                    masked: Sequence[str]) -> ml_collections.ConfigDict:
  """A copy of ucfg (the unibench section) whose `prompt` overrides give the ablated prompt;
  prompt_cfg is the full model's evaluation prompt (unibench.data_config(...).prompt)."""
  out = copy.deepcopy(ucfg)
  with out.unlocked():
    if "prompt" not in out:
      out.prompt = ml_collections.ConfigDict()
    with out.prompt.unlocked():
      for key, value in prompt_overrides(masked, prompt_cfg,
                                         ucfg.ablate_video_blocks).items():
        out.prompt[key] = value
  return out


def summarize(sets: Mapping[str, dict]) -> dict:
  """Per ablation: its primary score and delta per set, the mean of its scored sets, the mean
  of its per-set deltas (ablated - full, over the sets both scored) and its failed sets.

  Args:
    sets: unibench.evaluate's result['sets'], each scored set's entry holding
      {ablation name: entry} under 'ablations'.
  """
  per_set = {k: e["ablations"] for k, e in sets.items() if "ablations" in e}
  names = list(dict.fromkeys(n for entries in per_set.values() for n in entries))
  out = {}
  for n in names:
    entries = {k: v[n] for k, v in per_set.items() if n in v}
    scored = {k: e for k, e in entries.items() if "error" not in e}
    table = metrics.unibench_table({e["dataset"]: e["score"] for e in scored.values()})
    deltas = [e["delta"] for e in scored.values()]
    out[n] = {"masked": n.split(COMBINE), "mean": table["mean"],
              "mean_delta": float(sum(deltas) / len(deltas)) if deltas else 0.0,
              "complete": table["complete"],
              "sets": {k: ({"error": e["error"]} if "error" in e else
                           {"score": e["score"], "delta": e["delta"]})
                       for k, e in entries.items()},
              "failed": [k for k, e in entries.items() if "error" in e]}
  return out


def markdown(result: dict) -> str:
  """The full model's score beside each ablation's ('score (delta)') per set, and the means."""
  ablations = result.get("ablations") or {}
  if not ablations:
    return ""
  order = {d: i for i, d in enumerate(metrics.UNIBENCH_DATASETS)}
  head = "| set | dataset | metric | full | " + " | ".join(f"no {n}" for n in ablations) + " |"
  lines = [head, "|---" * (4 + len(ablations)) + "|"]

  def cell(entry):
    if entry is None:
      return ""
    if "error" in entry:
      return "error: " + entry["error"].replace("|", "/").replace("\n", " ")
    return f"{entry['score']:.2f} ({entry['delta']:+.2f})"

  for key, r in sorted(result["sets"].items(), key=lambda kv: order[kv[1]["dataset"]]):
    full = "error" if "error" in r else f"{r['score']:.2f}"
    cells = [cell(a["sets"].get(key)) for a in ablations.values()]
    lines.append(f"| {key} | {r['dataset']} | {r['metric'].upper()} | {full} | "
                 + " | ".join(cells) + " |")
  means = [f"**{a['mean']:.2f}** ({a['mean_delta']:+.2f})" for a in ablations.values()]
  lines.append(f"| **mean** | | | **{result['mean']:.2f}** | " + " | ".join(means) + " |")
  return "\n".join(lines)


def failed(result: dict) -> list[str]:
  """'set (no name)' for every ablated set that failed on its own (the full model's failures
  are in result['failed'])."""
  return [f"{k} (no {n})" for n, a in (result.get("ablations") or {}).items()
          for k in a["failed"]]
