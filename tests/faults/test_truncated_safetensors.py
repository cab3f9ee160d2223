"""A truncated safetensors file: the error names the file and the tensor (before the fix, numpy's
"mmap length is greater than file size" with no path)."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from affect_jax.checkpoints import safetensors_io


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_error_names_the_file(tmp_path, keep):
  path = tmp_path / "model.safetensors"
  save_file({"a": np.ones((64, 64), np.float32), "b": np.arange(10, dtype=np.float32)},
            str(path))
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(safetensors_io.CheckpointError) as e:
    reader = safetensors_io.SafetensorsReader(tmp_path)
    for k in reader.keys():
      np.asarray(reader[k]).sum()
  assert str(path) in str(e.value) and "truncated" in str(e.value)


def test_whole_file_still_reads(tmp_path):
  tensors = {"a": np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)}
  save_file(tensors, str(tmp_path / "model.safetensors"))
  reader = safetensors_io.SafetensorsReader(tmp_path)
  np.testing.assert_array_equal(reader["a"], tensors["a"])
