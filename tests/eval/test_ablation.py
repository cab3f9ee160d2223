"""Modality ablation (affect_jax/eval/ablation.py): parsing, the ablated prompts against the
official AffectGPT variants, and that a masked input no longer reaches the model.

References: the official get_prompt_for_multimodal (datasets/datasets/base_dataset.py) re-typed
below for every face_or_frame option an ablation maps onto; plain arithmetic for the summary.
"""
import jax
import numpy as np
import pytest

from affect_jax import sharding
from affect_jax.data import prompts
from affect_jax.eval import ablation, unibench
from affect_jax.models import affectgpt
from configs import affectgpt_r1_7b, demo, tiny

QUESTION = "Please recognize all possible emotional states of the character."
SUBTITLE = "I told you not to come."
HUMAN = "###Human: "


def official_prompt(face_or_frame: str, subtitle: str, user_message: str) -> str:
  """base_dataset.py get_prompt_for_multimodal, re-typed for the variants used here (its
  placeholders once each: num_*_query_token = 1)."""
  audio = "The audio content is as follows: <Audio><AudioHere></Audio>. "
  multi = "The audio and video merged info is: <Multi><MultiHere></Multi>. "
  face = ("Meanwhile, we uniformly sample raw frames from the video and extract faces from "
          "these frames: <Video><FaceHere></Video>. ")
  frame = "Meanwhile, we uniformly sample raw frames from the video: <Video><FrameHere></Video>. "
  text = f"The subtitle of this video is: <Subtitle>{subtitle}</Subtitle>. "
  end = f"Now, please answer my question based on all the provided information. {user_message} " \
        "###Assistant: "
  return {
      "multiface_audio_face_text": HUMAN + multi + audio + face + text + end,
      "multiframe_audio_frame_text": HUMAN + multi + audio + frame + text + end,
      "face": HUMAN + audio + face + text + end,
      "frame": HUMAN + audio + frame + text + end,
      "multiface_text": HUMAN + multi + text + end,
      "audioonly": HUMAN + audio + end,
      "textonly": HUMAN + text + end,
      "faceonly": HUMAN + "We uniformly sample raw frames from the video and extract faces from "
                  "these frames: <Video><FaceHere></Video>. " + end,
      "frameonly": HUMAN + "We uniformly sample raw frames from the video: "
                   "<Video><FrameHere></Video>. " + end,
      # The 'fair comparison' variants carry no "###Human: " (frame_text: a lowercase "we").
      "audio_text": audio + text + end,
      "face_text": "We uniformly sample raw frames from the video and extract faces from these "
                   "frames: <Video><FaceHere></Video>. " + text + end,
      "frame_text": "we uniformly sample raw frames from the video: <Video><FrameHere></Video>. "
                    + text + end,
  }[face_or_frame]


# Ablation (masked inputs) -> the official variant it reproduces, for (faces, frames) prompts.
EXACT = {"multi": ("face", "frame"),
         "audio+video": ("multiface_text", "multiface_text"),
         "multi+audio+video": ("textonly", "textonly"),
         "multi+video+subtitle": ("audioonly", "audioonly"),
         "multi+audio+subtitle": ("faceonly", "frameonly")}


def _ablated_text(config, masked, protocol="r1", subtitle=SUBTITLE):
  ucfg = unibench.with_protocol(config.unibench, protocol)
  prompt_cfg = unibench.data_config(config.data, ucfg).prompt
  dc = unibench.data_config(config.data, ablation.unibench_config(ucfg, prompt_cfg, masked))
  return prompts.prompt_text(subtitle, dc.prompt, dict(dc.tokenizer.special_tokens)), dc


@pytest.fixture(scope="module")
def configs():
  """(faces config: the 7B one, frames config: the demo one)."""
  return affectgpt_r1_7b.get_config(), demo.get_config()


def test_parse_names_and_combinations():
  assert ablation.parse("") == () and ablation.parse(" , ") == ()
  assert ablation.parse("audio,video,subtitle,multi") == (
      ("audio",), ("video",), ("subtitle",), ("multi",))
  # '+' joins inputs into one ablation, kept in prompt order; repeats are dropped.
  assert ablation.parse(" Audio , video+AUDIO, audio,audio+video") == (
      ("audio",), ("audio", "video"))
  assert ablation.parse("subtitle+multi+audio") == (("multi", "audio", "subtitle"),)
  assert ablation.name(("audio", "video")) == "audio+video"
  assert ablation.folder(("audio", "video")) == "no_audio+video"
  with pytest.raises(ValueError, match=r"--ablate=audio,face: unknown input\(s\) \['face'\]"):
    ablation.parse("audio,face")
  with pytest.raises(ValueError, match=r"--config.unibench.ablate=text.*multi, audio, video, "
                                       r"subtitle"):
    ablation.parse("text", "--config.unibench.ablate")
  with pytest.raises(ValueError, match=r"unknown input\(s\) \[''\]"):
    ablation.parse("audio+")


def test_check_refuses_an_input_the_prompt_lacks():
  ablation.check((("audio",), ("multi", "video")), ("multi", "audio", "video", "subtitle"))
  with pytest.raises(ValueError, match=r"'multi\+audio' masks \['multi'\].*modalities="
                                       r"\('audio', 'video', 'subtitle'\)"):
    ablation.check((("multi", "audio"),), ("audio", "video", "subtitle"))


@pytest.mark.parametrize("masked_name", sorted(EXACT))
def test_ablated_prompts_are_the_official_variants(configs, masked_name):
  masked = ablation.parse(masked_name)[0]
  for config, variant in zip(configs, EXACT[masked_name]):
    for protocol in ("r1", "affectgpt"):
      text, _ = _ablated_text(config, masked, protocol)
      assert text == official_prompt(variant, SUBTITLE, QUESTION), (variant, protocol)


def test_full_prompts_and_the_config_are_unchanged(configs):
  faces, frames = configs
  assert _ablated_text(faces, ())[0] == official_prompt("multiface_audio_face_text", SUBTITLE,
                                                        QUESTION)
  assert _ablated_text(frames, ())[0] == official_prompt("multiframe_audio_frame_text", SUBTITLE,
                                                         QUESTION)
  _ablated_text(frames, ("multi", "audio"))
  assert frames.data.prompt.modalities == ("multi", "audio", "video", "subtitle")
  assert frames.data.prompt.video_blocks.frames.startswith("Meanwhile, we")
  assert "modalities" not in frames.unibench.prompt
  # The protocol's own prompt fields stay under an ablation (affectgpt: no <bos>).
  _, dc = _ablated_text(frames, ("audio",), "affectgpt")
  assert dc.prompt.generation_bos is False
  assert _ablated_text(frames, ("audio",), "r1")[1].prompt.generation_bos is True


def test_combinations_without_an_exact_official_variant(configs):
  """The rule of the official variants: the video sentence says "Meanwhile, we" right after
  the audio block, "We" otherwise; the other blocks are left out as they are."""
  faces, frames = configs
  # multi+audio = the official face_text / audio_text / frame_text with "###Human: " kept.
  text, _ = _ablated_text(faces, ("multi", "audio"))
  assert text == HUMAN + official_prompt("face_text", SUBTITLE, QUESTION)
  text, _ = _ablated_text(faces, ("multi", "video"))
  assert text == HUMAN + official_prompt("audio_text", SUBTITLE, QUESTION)
  text, _ = _ablated_text(frames, ("multi", "audio"))
  official = official_prompt("frame_text", SUBTITLE, QUESTION)
  assert text == HUMAN + official[0].upper() + official[1:]
  full = official_prompt("multiface_audio_face_text", SUBTITLE, QUESTION)
  audio = "The audio content is as follows: <Audio><AudioHere></Audio>. "
  subtitle = f"The subtitle of this video is: <Subtitle>{SUBTITLE}</Subtitle>. "
  assert _ablated_text(faces, ("audio",))[0] == full.replace(audio, "").replace(
      "Meanwhile, we", "We")
  face = ("Meanwhile, we uniformly sample raw frames from the video and extract faces from "
          "these frames: <Video><FaceHere></Video>. ")
  assert _ablated_text(faces, ("video",))[0] == full.replace(face, "")
  assert _ablated_text(faces, ("subtitle",))[0] == full.replace(subtitle, "")
  everything = ablation.parse("multi+audio+video+subtitle")[0]
  assert _ablated_text(faces, everything)[0] == HUMAN + full.split(subtitle)[1]


def _encode(text, specials, placeholder_ids):
  """A test encoding: each placeholder string -> its id, other characters -> byte values."""
  by_token = {specials[m]: i for m, i in placeholder_ids.items()}
  ids, rest = [], text
  while rest:
    hit = next((t for t in by_token if rest.startswith(t)), None)
    ids.append(by_token[hit] if hit else ord(rest[0]) % 256)
    rest = rest[len(hit):] if hit else rest[1:]
  return np.asarray([ids], np.int32)


@pytest.fixture(scope="module")
def tiny_model():
  config = demo.get_config()
  config.model = tiny.get_config().model
  model = affectgpt.AffectGPTConfig.from_config(config.model)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda k: sharding.unbox(affectgpt.init(model, k)), jax.random.key(0))
  params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  return config, model, params


@pytest.mark.parametrize("masked, sees_audio, sees_video", [
    ((), True, True),
    (("audio",), True, True),           # the Multi token is fused from audio and video
    (("multi", "audio"), False, True),
    (("multi", "video"), True, False),
    (("multi",), True, True),
    (("multi", "audio", "video"), False, False),
])
def test_a_masked_input_does_not_reach_the_model(tiny_model, masked, sees_audio, sees_video):
  """prompt_embeds of the ablated prompt: changing a masked modality's features changes
  nothing, changing a kept one changes the embeddings."""
  config, model, params = tiny_model
  text, dc = _ablated_text(config, masked)
  tokens = _encode(text, dict(dc.tokenizer.special_tokens), model.placeholders)
  rng = np.random.default_rng(1)
  video = rng.standard_normal((1, 3, model.fusion.video_dim)).astype(np.float32)
  audio = rng.standard_normal((1, 3, model.fusion.audio_dim)).astype(np.float32)
  base = np.asarray(affectgpt.prompt_embeds(params, model, tokens, video, audio))
  new_audio = np.asarray(affectgpt.prompt_embeds(params, model, tokens, video, audio + 1.0))
  new_video = np.asarray(affectgpt.prompt_embeds(params, model, tokens, video + 1.0, audio))
  assert (not np.allclose(base, new_audio)) == sees_audio
  assert (not np.allclose(base, new_video)) == sees_video
  present = {m for m, i in model.placeholders.items() if i in tokens}
  assert present == {"multi", "audio", "video"} - set(masked)


def _set(dataset, score, **ablated):
  return {"dataset": dataset, "task": "hit", "metric": "hit", "score": score,
          "ablations": {n: ({"error": "boom"} if s is None else
                            {"dataset": dataset, "score": s, "delta": s - score})
                        for n, s in ablated.items()}}


def test_summary_and_markdown():
  sets = {"mer2023": _set("MER2023", 60.0, audio=50.0, subtitle=62.0),
          "meld": _set("MELD", 40.0, audio=None, subtitle=30.0),
          "sims": {"dataset": "CH-SIMS", "task": "sentiment", "metric": "waf",
                   "error": "FileNotFoundError: x"}}
  out = ablation.summarize(sets)
  assert list(out) == ["audio", "subtitle"]
  assert out["audio"]["mean"] == pytest.approx(50.0)
  assert out["audio"]["mean_delta"] == pytest.approx(-10.0)
  assert out["audio"]["failed"] == ["meld"] and out["audio"]["masked"] == ["audio"]
  assert out["subtitle"]["mean"] == pytest.approx((62.0 + 30.0) / 2)
  assert out["subtitle"]["mean_delta"] == pytest.approx((2.0 - 10.0) / 2)
  assert out["subtitle"]["sets"]["meld"] == {"score": 30.0, "delta": -10.0}
  assert out["audio"]["sets"]["meld"] == {"error": "boom"}
  result = {"sets": sets, "mean": 50.0, "ablations": out}
  assert ablation.failed(result) == ["meld (no audio)"]
  lines = ablation.markdown(result).splitlines()
  assert lines[0] == "| set | dataset | metric | full | no audio | no subtitle |"
  assert lines[2] == "| mer2023 | MER2023 | HIT | 60.00 | 50.00 (-10.00) | 62.00 (+2.00) |"
  assert lines[3] == "| meld | MELD | HIT | 40.00 | error: boom | 30.00 (-10.00) |"
  assert lines[4] == "| sims | CH-SIMS | WAF | error |  |  |"
  assert lines[5] == "| **mean** | | | **50.00** | **50.00** (-10.00) | **46.00** (-4.00) |"
  assert ablation.markdown({"sets": sets, "mean": 50.0}) == ""
