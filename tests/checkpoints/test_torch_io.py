"""The restricted torch.save reader: equal arrays to torch's own, and code in a pickle refused
before it runs. Reference: torch (the files are written by torch.save, values read back from
the torch tensors themselves)."""
import collections
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from affect_jax.checkpoints import torch_io
from affect_jax.checkpoints.safetensors_io import CheckpointError


def _reference(t: torch.Tensor) -> np.ndarray:
  t = t.detach()
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_state_dict_arrays_equal_torch(tmp_path):
  torch.manual_seed(0)
  shared = torch.randn(12)
  sd = collections.OrderedDict(
      fp32=torch.randn(3, 5),
      bf16_transposed=torch.randn(4, 3).to(torch.bfloat16).t(),   # non-contiguous strides
      fp16=torch.randn(2, 7).half(),
      view_with_offset=shared[2:8].view(2, 3),                     # storage offset 2
      shared=shared,                                               # same storage
      strided=torch.arange(12).reshape(3, 4)[:, ::2],              # int64, stride 2
      scalar=torch.tensor(3.5),
      empty=torch.zeros(0, 4),
      param=torch.nn.Parameter(torch.randn(3)),
  )
  optimizer = torch.optim.AdamW([sd["param"]]).state_dict()
  path = tmp_path / "ckpt.pth"
  torch.save({"model": sd, "optimizer": optimizer, "config": {"run": {"lr": 1e-5}},
              "scaler": None, "epoch": 3}, path)
  got = torch_io.load(path)
  assert list(got["model"]) == list(sd)
  want_dtypes = {"bf16_transposed": "bfloat16", "fp16": "float16", "strided": "int64"}
  for name, tensor in sd.items():
    value = got["model"][name]
    assert value.shape == tuple(tensor.shape), name
    assert value.dtype.name == want_dtypes.get(name, "float32"), name
    np.testing.assert_array_equal(np.asarray(value, _reference(tensor).dtype),
                                  _reference(tensor), err_msg=name)
  assert got["epoch"] == 3 and got["scaler"] is None and got["config"]["run"]["lr"] == 1e-5
  assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"model": {"w": torch.ones(2)}, "extra": _RunsCode(marker)}, path)
  with pytest.raises(torch_io.UnsafeTorchPickleError) as err:
    torch_io.TorchCheckpoint(path)
  assert str(path) in str(err.value) and "system" in err.value.global_name
  assert not marker.exists()
  # The same payload under plain pickle does run: the test would notice a reader that executes.
  pickle.loads(pickle.dumps(_RunsCode(marker)))
  assert marker.exists()


def test_pickled_module_is_refused(tmp_path):
  path = tmp_path / "module.pth"
  torch.save({"model": torch.nn.Linear(2, 2)}, path)
  with pytest.raises(torch_io.UnsafeTorchPickleError, match="torch.nn.modules.linear.Linear"):
    torch_io.TorchCheckpoint(path)


def test_not_a_zip_and_truncated_storage_are_named(tmp_path):
  legacy = tmp_path / "legacy.pth"
  torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
  with pytest.raises(CheckpointError, match="legacy.pth: not a torch zip checkpoint"):
    torch_io.TorchCheckpoint(legacy)
  good = tmp_path / "good.pth"
  torch.save({"w": torch.ones(4)}, good)
  cut = tmp_path / "cut.pth"
  with zipfile.ZipFile(good) as src, zipfile.ZipFile(cut, "w") as dst:
    for item in src.infolist():
      data = src.read(item)
      dst.writestr(item, data[:8] if item.filename.endswith("data/0") else data)
  ckpt = torch_io.TorchCheckpoint(cut)
  with pytest.raises(CheckpointError, match="'w'.*reaches past its storage"):
    ckpt.tensor(ckpt.obj["w"], "w")
