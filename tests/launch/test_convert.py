"""launch.convert: HF folders -> Orbax checkpoint -> HF folders, transformers loads the result."""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from affect_jax.checkpoints.safetensors_io import SafetensorsReader
from configs import demo, tiny
from launch import convert
from tests.testlib import hf as hf_testlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  hf_testlib.write_tiny_hf(root)
  return root


def test_round_trip_is_identical_and_loads_in_transformers(hf_dirs, tmp_path):
  dirs = ",".join(str(hf_dirs / n) for n in ("qwen", "clip", "hubert"))
  out = convert.to_project(dirs, str(tmp_path / "ckpt"), tiny.get_config(), "", None, 0, False)
  assert out["components"] == ["audio", "llm", "vision"]
  back = convert.to_hf(str(tmp_path / "ckpt"), str(tmp_path / "back"), False)
  for name, src in (("llm", "qwen"), ("vision", "clip"), ("audio", "hubert")):
    a, b = SafetensorsReader(hf_dirs / src), SafetensorsReader(back["written"][name])
    assert set(a.keys()) == set(b.keys()), name
    for k in a.keys():
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{name}:{k}")
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(back["written"]["llm"]).eval()
  original = transformers.Qwen2ForCausalLM.from_pretrained(hf_dirs / "qwen").eval()
  ids = torch.arange(3, 19)[None]
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(ids).logits.numpy(), original(ids).logits.numpy())
  meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
  assert meta["components"]["llm"]["lora"]["rank"] == tiny.get_config().model.llm.lora.rank


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.convert", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_unknown_architecture_is_named_and_out_stays_empty(tmp_path):
  bad = tmp_path / "bert"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({"architectures": ["BertModel"],
                                                "model_type": "bert"}))
  r = _cli(f"--hf_dir={bad}", f"--out={tmp_path / 'out'}", "--config=configs/tiny.py")
  assert r.returncode == 2
  assert "unknown architecture" in r.stderr and "BertModel" in r.stderr
  assert not (tmp_path / "out").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_pickle_checkpoint_is_refused(hf_dirs, tmp_path):
  pkl = tmp_path / "pkl"
  pkl.mkdir()
  (pkl / "config.json").write_text((hf_dirs / "qwen" / "config.json").read_text())
  (pkl / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
  r = _cli(f"--hf_dir={pkl}", f"--out={tmp_path / 'out'}", "--config=configs/tiny.py")
  assert r.returncode == 2 and "pickle" in r.stderr
  assert not (tmp_path / "out").exists()


def test_existing_output_is_never_overwritten(hf_dirs, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("user data")
  r = _cli(f"--hf_dir={hf_dirs / 'qwen'}", f"--out={out}", "--config=configs/tiny.py")
  assert r.returncode == 2 and "already exists" in r.stderr
  assert (out / "keep.txt").read_text() == "user data"


def test_mismatched_weights_name_the_tensor(hf_dirs, tmp_path):
  import shutil
  broken = tmp_path / "qwen"
  shutil.copytree(hf_dirs / "qwen", broken)
  cfg = json.loads((broken / "config.json").read_text())
  cfg["intermediate_size"] = 96
  (broken / "config.json").write_text(json.dumps(cfg))
  r = _cli(f"--hf_dir={broken}", f"--out={tmp_path / 'out'}", "--config=configs/tiny.py")
  assert r.returncode == 2 and "mlp" in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("do_normalize", [True, False, None])
def test_hubert_preprocessor_flag_is_recorded_and_followed(hf_dirs, tmp_path, do_normalize):
  from affect_jax import experiment
  folder = tmp_path / "hubert"
  shutil.copytree(hf_dirs / "hubert", folder)
  if do_normalize is not None:
    transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
  out = tmp_path / "ckpt"
  convert.to_project(str(folder), str(out), tiny.get_config(), "", None, 0, False)
  meta = json.loads((out / "meta.json").read_text())
  assert meta["components"]["audio"]["do_normalize"] is do_normalize
  config = demo.get_config()
  config.init_from = str(out)
  experiment.resolve_media(config)
  # Normalised iff the checkpoint's preprocessor_config.json says so (no file: not).
  assert config.data.media.hubert_do_normalize is bool(do_normalize)
  config.init_from = ""
  experiment.resolve_media(config)
  assert config.data.media.hubert_do_normalize is False
