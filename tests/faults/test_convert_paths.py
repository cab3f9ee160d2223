"""launch.convert never writes over its inputs: --out equal to, inside or holding --hf_dir (or
--checkpoint with --to_hf) is refused with exit 2 before anything is written, even with
--overwrite (before the fix --overwrite with --out=--hf_dir deleted the source weights); and a
killed conversion's temporary folder is removed by the next run."""
import pathlib
import subprocess
import sys

import pytest

from tests.testlib import hf as hf_testlib
from affect_jax.checkpoints import safetensors_io

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def qwen(tmp_path):
  return hf_testlib.write_tiny_hf(tmp_path / "models", names=("qwen",))["qwen"]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.convert", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _snapshot(folder):
  return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_out_overlapping_the_input_is_refused_even_with_overwrite(qwen, where):
  before = _snapshot(qwen.parent)
  out = {"same": qwen, "inside": qwen / "converted", "parent": qwen.parent}[where]
  r = _cli(f"--hf_dir={qwen}", f"--out={out}", "--config=configs/tiny.py", "--overwrite")
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.startswith("convert: error: --out=") and "overlap" in r.stderr
  assert "Traceback" not in r.stderr
  assert _snapshot(qwen.parent) == before


def test_to_hf_out_inside_the_checkpoint_is_refused(tmp_path):
  ckpt = tmp_path / "ckpt"
  (ckpt / "params").mkdir(parents=True)
  (ckpt / "meta.json").write_text("{}")
  r = _cli("--to_hf", f"--checkpoint={ckpt}", f"--out={ckpt / 'hf'}", "--overwrite")
  assert r.returncode == 2 and "overlap" in r.stderr
  assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "params"]


def test_a_killed_conversions_temporary_folder_is_removed(tmp_path):
  out = tmp_path / "out"
  stale = tmp_path / ".out.tmp-abc123"       # what a conversion killed mid-write leaves
  (stale / "params").mkdir(parents=True)
  (stale / "params" / "half").write_bytes(b"x" * 100)
  other = tmp_path / ".other.tmp-abc123"       # another output's folder is left alone
  other.mkdir()
  with safetensors_io.atomic_output_dir(out) as tmp:
    (tmp / "done").write_text("ok")
  assert not stale.exists() and other.exists()
  assert (out / "done").read_text() == "ok"
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")] == []
