"""launch.predict on clips the test writes (real mp4 and wav files) with a small random model:
one clip, a folder and a CSV of clips; a clip without audio, a video that does not decode and
a missing subtitle are each named and the other clips go on (exit 1); inputs that would read
outside their folder stop everything (exit 2); the written CSV is what launch.score reads.

References: the ISO base media file format's box layout (ISO/IEC 14496-12: size, type, a
track's handler type 'soun' / 'vide' after version/flags and pre_defined), the official
inference's missing-audio rule (inference_sample.py + Chat.answer_sample stop on a clip
without audio), the <answer> span read with a regular expression, the emotion wheel read
from its CSV files by tests/testlib/ew.py, and launch.score's reader.
"""
import csv
import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from absl import app as absl_app

from affect_jax import experiment, sharding
from affect_jax.checkpoints import params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.data import media, pipeline
from affect_jax.data import prompts as prompts_lib
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.emotion import wheel
from affect_jax.eval import predict
from affect_jax.models import affectgpt
from configs import demo
from launch import predict as predict_launcher
from launch import score
from tests.testlib import ew as ew_ref
from tests.testlib import media as fixture_media

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A small model and short greedy answers (the same settings in-process and on the command line).
SETTINGS = {"features.standardize": False, "model.llm.num_hidden_layers": 1,
            "model.vision.num_hidden_layers": 1, "model.audio.num_hidden_layers": 1,
            "data.media.num_frames": 2, "data.media.num_windows": 2,
            "data.media.window_seconds": 0.5, "unibench.max_new_tokens": 12,
            "unibench.batch_size": 2}
WORDS = ["happy", "worried", "sad", "angry", "calm", "excited"]


def _config(tok_dir, **changes):
  c = demo.get_config()
  c.tokenizer_dir = str(tok_dir)
  for key, value in {**SETTINGS, **changes}.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _flags():
  return [f"--config.{k}={v}" for k, v in SETTINGS.items()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """The decoder's tokenizer and a launch.convert-style checkpoint of random weights."""
  root = tmp_path_factory.mktemp("predict")
  dc = demo.get_config().data
  texts = [prompts_lib.example_text(f"I feel {w} today.", [w, WORDS[i - 1]], f"The voice is {w}.",
                                    dc.prompt, dict(dc.tokenizer.special_tokens))
           for i, w in enumerate(WORDS)]
  tok = tokenizer_lib.build_from_config(texts * 3, dc.tokenizer)
  tok.save_pretrained(root / "tok")
  model = experiment.model_config(_config(root / "tok"), tok)
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(lambda k: sharding.unbox(affectgpt.init(model, k)), jax.random.key(1))
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: np.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(path)
      else (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  params_io.save(root / "ckpt", params, {"components": {}})
  return root


def _predict(model_dir, *args):
  return subprocess.run(
      [sys.executable, "-m", "launch.predict", f"--checkpoint={model_dir / 'ckpt'}",
       f"--config.tokenizer_dir={model_dir / 'tok'}", f"--cache_dir={model_dir / 'cache'}",
       *_flags(), *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _clips_folder(root):
  """good: mp4 + wav + txt; silent: an mp4 without audio track (and no wav) + txt."""
  fixture_media.write_video(root / "good.mp4", 1)
  fixture_media.write_audio(root / "good.wav", 2)
  (root / "good.txt").write_text("I feel happy today.\n", encoding="utf-8")
  fixture_media.write_video(root / "silent.mp4", 3)
  (root / "silent.txt").write_text("I feel sad today.", encoding="utf-8")


def _answer(text):
  m = re.search(r"<answer>(.*?)</answer>", text, re.S)
  return m.group(1) if m else ""


# ------------------------------------------------------------------------------------------
# Audio tracks of video files (ISO base media boxes).


def _box(kind, payload):
  return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _track(handler):
  hdlr = _box(b"hdlr", b"\0" * 4 + b"\0" * 4 + handler + b"\0" * 12 + b"name\0")
  return _box(b"trak", _box(b"tkhd", b"\0" * 84) + _box(b"mdia", _box(b"mdhd", b"\0" * 24)
                                                         + hdlr))


def test_has_audio_track(tmp_path):
  ftyp = _box(b"ftyp", b"isom\0\0\0\0isommp41")
  mdat = _box(b"mdat", b"\0" * 64)
  (tmp_path / "av.mp4").write_bytes(ftyp + mdat + _box(b"moov", _track(b"vide") +
                                                       _track(b"soun")))
  (tmp_path / "v.mp4").write_bytes(ftyp + _box(b"moov", _track(b"vide")) + mdat)
  # A 64-bit box size (size field 1, then the real size) before the moov box.
  big = struct.pack(">I4sQ", 1, b"mdat", 16 + 8) + b"\0" * 8
  (tmp_path / "big.mp4").write_bytes(ftyp + big + _box(b"moov", _track(b"soun")))
  (tmp_path / "clip.avi").write_bytes(b"RIFF\x10\0\0\0AVI LIST" + b"\0" * 16)
  fixture_media.write_video(tmp_path / "cv2.mp4", 0)     # OpenCV writes no audio stream
  assert media.has_audio_track(tmp_path / "av.mp4") is True
  assert media.has_audio_track(tmp_path / "v.mp4") is False
  assert media.has_audio_track(tmp_path / "big.mp4") is True
  assert media.has_audio_track(tmp_path / "clip.avi") is None
  assert media.has_audio_track(tmp_path / "cv2.mp4") is False


# ------------------------------------------------------------------------------------------
# Listing clips.


def test_folder_clips(tmp_path):
  d = tmp_path / "clips"
  d.mkdir()
  _clips_folder(d)
  (d / "notes.md").write_text("not a clip")
  clips = predict.clips_from_folder(d)
  assert [c.name for c in clips] == ["good", "silent"]
  good, silent = clips
  assert good.video == str(d / "good.mp4") and good.audio == str(d / "good.wav")
  assert good.subtitle == "I feel happy today."
  assert silent.audio is None and silent.subtitle == "I feel sad today."
  # A subtitle file that links out of the folder is never read.
  (tmp_path / "elsewhere.txt").write_text("a secret")
  os.remove(d / "good.txt")
  os.symlink(tmp_path / "elsewhere.txt", d / "good.txt")
  with pytest.raises(predict.InputsError, match="good.txt is a link to .*elsewhere.txt, outside"):
    predict.clips_from_folder(d)
  os.remove(d / "good.txt")
  fixture_media.write_video(d / "good.avi", 4)
  with pytest.raises(predict.InputsError, match="good.avi.*good.mp4|good.mp4.*good.avi"):
    predict.clips_from_folder(d)


def test_csv_clips_relative_paths_and_subtitles(tmp_path):
  d = tmp_path / "set"
  fixture_media.write_video(d / "v" / "a.mp4", 1)
  fixture_media.write_audio(d / "w" / "a.wav", 2)
  fixture_media.write_video(d / "b.mp4", 3)
  with open(d / "clips.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["name", "video", "audio", "subtitle"])
    w.writerow(["a", "v/a.mp4", "w/a.wav", "Well, \"fine\"."])
    w.writerow(["b", "b.mp4", "", ""])        # no audio file; an empty subtitle
    f.write("c,b.mp4\n")                      # a short row: its subtitle is missing
  a, b, c = predict.clips_from_csv(d / "clips.csv")
  assert (a.video, a.audio, a.subtitle) == (str(d / "v" / "a.mp4"), str(d / "w" / "a.wav"),
                                            'Well, "fine".')
  assert (b.audio, b.subtitle) == (None, "")
  assert (c.audio, c.subtitle) == (None, None)
  assert "row 4" in c.where


@pytest.mark.parametrize("cell", ["../outside.mp4", "/etc/passwd", "v/../../outside.mp4",
                                  "link.mp4"])
def test_csv_paths_may_not_leave_the_folder(tmp_path, cell):
  outside = tmp_path / "outside.mp4"
  fixture_media.write_video(outside, 1)
  d = tmp_path / "set"
  fixture_media.write_video(d / "ok.mp4", 2)
  os.symlink(outside, d / "link.mp4")
  fixture_media.write_csv(d / "clips.csv", ("name", "video", "audio"),
                          [("ok", "ok.mp4", ""), ("bad", "ok.mp4", cell)])
  with pytest.raises(predict.InputsError, match=r"clips.csv row 3, column audio"):
    predict.clips_from_csv(d / "clips.csv")


def test_csv_header_and_names_are_checked(tmp_path):
  fixture_media.write_csv(tmp_path / "a.csv", ("name", "audio"), [("x", "x.wav")])
  with pytest.raises(predict.InputsError, match=r"lacks the column\(s\) \['video'\]"):
    predict.clips_from_csv(tmp_path / "a.csv")
  fixture_media.write_csv(tmp_path / "b.csv", ("name", "video"), [("x", "x.mp4"),
                                                                  ("x", "y.mp4")])
  with pytest.raises(predict.InputsError, match="row 3: clip name 'x' repeats row 2"):
    predict.clips_from_csv(tmp_path / "b.csv")


# ------------------------------------------------------------------------------------------
# Clip inputs and wheel groups.


def test_clip_media_missing_audio_follows_the_official_inference(tmp_path):
  dc = _config("unused").data
  fixture_media.write_video(tmp_path / "v.mp4", 1)
  clip = predict.Clip("v", str(tmp_path / "v.mp4"))
  # The prompt has the audio and merged placeholders: the official inference stops here
  # (my_affectgpt/conversation/conversation_video.py, Chat.answer_sample: a placeholder whose
  # embeddings are None fails `assert embeds is not None, 'Some input info is missing.'`).
  with pytest.raises(predict.ClipError, match=r"clip 'v'.*holds no audio track.*"
                     r"--missing_audio=silence"):
    predict.clip_media(clip, dc, "error")
  inputs, notes = predict.clip_media(clip, dc, "silence")
  k, w = dc.media.num_windows, round(dc.media.window_seconds * dc.media.sample_rate)
  np.testing.assert_array_equal(inputs["windows"], np.zeros((k, w), np.float32))
  assert "silence" in notes[0]
  # With an audio file, the windows are the file's: the same clip as a dataset holds it.
  fixture_media.write_audio(tmp_path / "v.wav", 2)
  with_audio, notes = predict.clip_media(predict.Clip("v", clip.video, str(tmp_path / "v.wav")),
                                         dc, "error")
  want = pipeline_paths({"visual_path": clip.video, "audio_path": str(tmp_path / "v.wav")}, dc)
  np.testing.assert_allclose(with_audio["windows"], want["windows"], rtol=0, atol=0)
  np.testing.assert_allclose(with_audio["frames"], want["frames"], rtol=0, atol=0)
  assert notes == [] and np.abs(with_audio["windows"]).max() > 0


def pipeline_paths(example, dc, source="frames"):
  """A dataset clip in paths mode, as the training pipeline loads it."""
  return pipeline.load_media(dict(example, name="v"), dc.media, {"visual_source": source})


def test_no_audio_message_says_whether_the_mp4_holds_a_track(tmp_path):
  ftyp = _box(b"ftyp", b"isom\0\0\0\0isommp41")
  (tmp_path / "av.mp4").write_bytes(ftyp + _box(b"moov", _track(b"vide") + _track(b"soun")))
  (tmp_path / "clip.avi").write_bytes(b"RIFF\x10\0\0\0AVI LIST" + b"\0" * 16)
  with_track = predict.no_audio_message(predict.Clip("av", str(tmp_path / "av.mp4")))
  assert with_track.startswith("clip 'av': ") and "ffmpeg -i" in with_track
  assert "no audio track" not in with_track
  unknown = predict.no_audio_message(predict.Clip("c", str(tmp_path / "clip.avi"),
                                                  where="x.csv row 2"))
  assert unknown.startswith("clip 'c' (x.csv row 2): it has no audio: no audio file was given")


def test_face_crops_follow_the_prompts_video_sentence(tmp_path):
  fixture_media.write_faces(tmp_path / "f.npy", 1)
  fixture_media.write_audio(tmp_path / "f.wav", 2)
  clip = predict.Clip("f", str(tmp_path / "f.npy"), str(tmp_path / "f.wav"))
  with pytest.raises(predict.ClipError, match="clip 'f': .*f.npy is faces but the config's "
                     "prompt names frames .*--config.data.prompt.video_prompt=faces"):
    predict.clip_media(clip, _config("unused").data, "error")
  dc = _config("unused", **{"data.prompt.video_prompt": "faces"}).data
  inputs, _ = predict.clip_media(clip, dc, "error")
  want = pipeline_paths({"visual_path": clip.video, "audio_path": clip.audio}, dc, "faces")
  np.testing.assert_array_equal(inputs["frames"], want["frames"])


def test_clip_media_undecodable_video_names_the_clip(tmp_path):
  (tmp_path / "broken.mp4").write_bytes(b"\0\1\2 not a video" * 50)
  with pytest.raises(predict.ClipError, match=r"clip 'broken':.*broken.mp4"):
    predict.clip_media(predict.Clip("broken", str(tmp_path / "broken.mp4")),
                       _config("unused").data, "silence")


def test_level1_groups_match_the_wheel_files():
  tables = wheel.load_tables(None)
  ref = ew_ref.ReferenceWheel(wheel.DEMO_DIR)
  checked = 0
  for label in list(tables.surfaces)[::7] + ["not-an-emotion"]:
    want = tuple(ref.map(label, f"wheel{k}_level1") for k in range(1, 6))
    assert predict.level1_groups(label, tables) == want, label
    checked += any(want)
  assert checked > 5
  assert predict.level1_groups("Happy ", tables) == predict.level1_groups("happy", tables)


def test_written_csv_is_what_launch_score_reads(tmp_path):
  cells = {"a": "happy, sad", "b": "", "c": 'say "worried"', "d": "[angry, calm]"}
  results = [predict.Result(predict.Clip(n, f"{n}.mp4"), cell=c) for n, c in cells.items()]
  results.append(predict.Result(predict.Clip("e", "e.mp4"), error="clip 'e': no audio"))
  assert predict.write_predictions(tmp_path / "p.csv", results) == 4
  names, rows = score.read_rows(str(tmp_path / "p.csv"), ("name", "openset"))
  assert names == list(cells) and [r["openset"] for r in rows] == list(cells.values())
  # Ground truth equal to two predicted cells: every wheel's F is 1 (extra rows are ignored).
  fixture_media.write_csv(tmp_path / "gt.csv", ("name", "openset"),
                          [("a", "sad, happy"), ("d", "calm, angry")])
  got = score.score(str(tmp_path / "gt.csv"), str(tmp_path / "p.csv"), "ov")
  assert got["n_samples"] == 2 and got["ew_f"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# The command line.


@pytest.fixture(scope="module")
def csv_run(model_dir, tmp_path_factory):
  """--inputs=CSV: good (audio), noaudio (mp4 without audio track), broken (not a video),
  nosub (no subtitle cell)."""
  d = tmp_path_factory.mktemp("csv_clips")
  _clips_folder(d)
  (d / "broken.mp4").write_bytes(b"\0\1\2 not a video" * 50)
  with open(d / "clips.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["name", "video", "audio", "subtitle"])
    w.writerow(["good", "good.mp4", "good.wav", "I feel happy today."])
    w.writerow(["noaudio", "silent.mp4", "", "I feel sad today."])
    w.writerow(["broken", "broken.mp4", "good.wav", "Hm."])
    f.write("nosub,good.mp4,good.wav\n")
  out = d / "out"
  proc = _predict(model_dir, f"--inputs={d / 'clips.csv'}", f"--out={out / 'pred.csv'}",
                  f"--json_out={out / 'pred.json'}")
  return proc, out


def test_csv_run_names_each_failed_clip_and_predicts_the_others(csv_run):
  proc, out = csv_run
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["clips"] == 4 and summary["predicted"] == 1
  failed = summary["failed"]
  assert sorted(failed) == ["broken", "noaudio", "nosub"]
  assert "no audio track" in failed["noaudio"] and "--missing_audio=silence" in failed["noaudio"]
  assert "broken.mp4" in failed["broken"] and "OpenCV" in failed["broken"]
  assert "no subtitle" in failed["nosub"]
  for name in failed:
    assert f"launch.predict: clip failed: clip '{name}'" in proc.stderr
  records = {r["name"]: r for r in json.loads((out / "pred.json").read_text())}
  good = records["good"]
  assert "== good (" in proc.stdout and f"answer: {good['completion']}" in proc.stdout
  # Labels: the <answer> span as the official list reader splits it.
  assert good["labels"] == [x.lower() for x in ew_ref.official_list(_answer(good["completion"]))]
  names, rows = score.read_rows(str(out / "pred.csv"), ("name", "openset"))
  assert names == ["good"] and rows[0]["openset"] == good["openset"]


def test_one_clip_without_audio_track(model_dir, tmp_path):
  """--video on an mp4 without audio track: with --missing_audio=silence it is predicted
  (exit 0), and says that silence stood in for the audio."""
  _clips_folder(tmp_path)
  proc = _predict(model_dir, f"--video={tmp_path / 'silent.mp4'}", "--subtitle=I feel sad today.",
                  "--missing_audio=silence", f"--out={tmp_path / 'one.csv'}",
                  f"--json_out={tmp_path / 'one.json'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  (record,) = json.loads((tmp_path / "one.json").read_text())
  assert record["name"] == "silent" and record["audio"] is None
  assert record["notes"] == ["no audio: silence fed instead (--missing_audio=silence)"]
  assert f"== silent ({tmp_path / 'silent.mp4'}; audio: none)" in proc.stdout
  assert "note: no audio: silence fed instead" in proc.stdout
  assert record["labels"] == [x.lower() for x in
                              ew_ref.official_list(_answer(record["completion"]))]
  names, rows = score.read_rows(str(tmp_path / "one.csv"), ("name", "openset"))
  assert names == ["silent"] and rows[0]["openset"] == record["openset"]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["failed"] == {}


def test_inputs_folder_or_csv(tmp_path):
  _clips_folder(tmp_path)
  fixture_media.write_csv(tmp_path / "clips.csv", ("name", "video"), [("x", "good.mp4")])
  assert [c.name for c in predict.clips_from_inputs(str(tmp_path))] == ["good", "silent"]
  assert [c.name for c in predict.clips_from_inputs(str(tmp_path / "clips.csv"))] == ["x"]
  with pytest.raises(predict.InputsError, match="no such folder or CSV file"):
    predict.clips_from_inputs(str(tmp_path / "nothing"))


def test_inputs_leaving_their_folder_exit_2(model_dir, tmp_path):
  fixture_media.write_video(tmp_path / "x.mp4", 1)
  d = tmp_path / "set"
  d.mkdir()
  fixture_media.write_csv(d / "clips.csv", ("name", "video"), [("x", "../x.mp4")])
  proc = _predict(model_dir, f"--inputs={d / 'clips.csv'}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert re.search(r"launch.predict: error: .*clips.csv row 2, column video: '../x.mp4' leads "
                   r"outside", proc.stderr), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr


def _flag_values(**given):
  names = ("checkpoint video audio subtitle inputs protocol greedy temperature top_p top_k "
           "max_new_tokens seed batch_size extractor extractor_checkpoint ew_dir cache_dir out "
           "json_out")
  values = dict.fromkeys(names.split(), None)
  return types.SimpleNamespace(**{**values, "missing_audio": "error", **given})


@pytest.mark.parametrize("given, message", [
    ({"video": "a.mp4", "inputs": "clips.csv"}, "not both"),
    ({}, "not both"),
    ({"inputs": "d", "subtitle": "hi"}, "--audio and --subtitle go with --video"),
    ({"video": "a.mp4", "temperature": 0.5}, "add --nogreedy"),
    ({"video": "a.mp4", "greedy": False, "top_p": 0.0}, "0 < top_p <= 1"),
])
def test_flag_errors(given, message):
  """Bad flag combinations are usage errors (cli.run_main: exit 2) before the model loads."""
  config = _config("unused")
  with pytest.raises(absl_app.UsageError, match=re.escape(message)):
    predict_launcher.run(config, _flag_values(checkpoint="/nonexistent", **given))


def test_decoding_flags_override_the_protocol():
  config = _config("unused")
  ucfg = predict_launcher.decoding_section(config, _flag_values(
      greedy=False, temperature=0.7, top_p=0.9, max_new_tokens=5, batch_size=3))
  assert (ucfg.greedy, ucfg.temperature, ucfg.top_p, ucfg.max_new_tokens, ucfg.batch_size) == (
      False, 0.7, 0.9, 5, 3)
  official = predict_launcher.decoding_section(config, _flag_values(protocol="affectgpt"))
  assert (official.greedy, official.temperature, official.top_p, official.max_new_tokens) == (
      False, 1.0, 0.9, 1200)                 # inference_hybird.py answer_sample
  assert config.unibench.greedy          # the config itself is left as it was


def test_missing_checkpoint_is_a_user_error(tmp_path):
  fixture_media.write_video(tmp_path / "a.mp4", 1)
  with pytest.raises(CheckpointError, match="--checkpoint=.*nonexistent: no such folder"):
    predict_launcher.run(_config("unused"), _flag_values(
        checkpoint=str(tmp_path / "nonexistent"), video=str(tmp_path / "a.mp4")))


def test_outputs_may_not_overwrite_an_input(tmp_path):
  video, audio = tmp_path / "a.mp4", tmp_path / "a.wav"
  video.write_bytes(b"x")
  audio.write_bytes(b"y")
  clips = [predict.Clip("a", str(video), str(audio), "")]
  for given, named in (({"out": str(audio)}, "--out"), ({"json_out": str(video)}, "--json_out")):
    with pytest.raises(absl_app.UsageError, match=f"{named}=.* is the input"):
      predict_launcher.check_outputs(_flag_values(video=str(video), **given), clips)
  csv_in = tmp_path / "clips.csv"
  csv_in.write_text("name,video\na,a.mp4\n")
  with pytest.raises(absl_app.UsageError, match="is the input .*clips.csv"):
    predict_launcher.check_outputs(_flag_values(inputs=str(csv_in), out=str(csv_in)), clips)
  with pytest.raises(absl_app.UsageError, match="--json_out=.* is the input --out"):
    predict_launcher.check_outputs(_flag_values(video=str(video), out=str(tmp_path / "p.csv"),
                                                json_out=str(tmp_path / "p.csv")), clips)
  predict_launcher.check_outputs(_flag_values(video=str(video), out=str(tmp_path / "p.csv"),
                                              json_out=str(tmp_path / "p.json")), clips)
  assert video.read_bytes() == b"x" and audio.read_bytes() == b"y"
