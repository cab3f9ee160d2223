"""The restricted unpickler: legit label .npz files load, crafted ones are refused unharmed."""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from affect_jax import safe_pickle


class _Exploit:
  """Unpickling this calls os.system (it is never unpickled with the real pickle here)."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"echo pwned > {self.target}",))


def test_legit_label_npz_round_trips(tmp_path):
  six = {"a": {"emo": "happy"}, "b": {"emo": "worried"}}
  meld = {"m1": {"emo": 3}, "m2": {"emo": np.int64(6)}}
  mosi = {"s1": {"val": -1.5}, "s2": {"val": np.float64(2.25)}}
  np.savez(tmp_path / "label-6way.npz", train_corpus=six, test1_corpus={"t": {"emo": "sad"}})
  np.savez_compressed(tmp_path / "label.npz", train_corpus=meld, test_corpus=mosi,
                      plain=np.arange(6, dtype=np.int16).reshape(2, 3))
  got = safe_pickle.load_label_npz(tmp_path / "label-6way.npz")
  assert got == {"train_corpus": six, "test1_corpus": {"t": {"emo": "sad"}}}
  got = safe_pickle.load_label_npz(tmp_path / "label.npz")
  assert got["train_corpus"] == meld and got["test_corpus"] == mosi
  assert type(got["train_corpus"]["m2"]["emo"]) is np.int64
  np.testing.assert_array_equal(got["plain"], np.arange(6, dtype=np.int16).reshape(2, 3))
  # Equal to numpy's own (unsafe) loader on the same trusted file.
  with np.load(tmp_path / "label.npz", allow_pickle=True) as ref:
    assert ref["test_corpus"].item() == got["test_corpus"]


def test_other_containers_and_protocols(tmp_path):
  value = {"s": {1, 2}, "t": (1.5, None, True), "b": b"\x00\xff", "l": [complex(1, 2)]}
  arr = np.empty((), object)
  arr[()] = value
  for protocol in (2, 3, 4, 5):
    assert safe_pickle.loads(pickle.dumps(arr, protocol=protocol)).item() == value
  np.save(tmp_path / "single.npy", np.array([{"emo": "x"}, "y"], dtype=object))
  got = safe_pickle.load_npz(tmp_path / "single.npy")[""]
  assert list(got) == [{"emo": "x"}, "y"]


def test_malicious_npz_is_refused_without_side_effect(tmp_path):
  target = tmp_path / "pwned.txt"
  corpus = {"clip": {"emo": _Exploit(str(target))}}
  path = tmp_path / "label.npz"
  np.savez(path, train_corpus=corpus)
  with pytest.raises(safe_pickle.UnsafePickleError) as err:
    safe_pickle.load_label_npz(path)
  assert err.value.global_name in ("posix.system", "nt.system", "os.system")
  assert str(path) in str(err.value) and "train_corpus" in str(err.value)
  assert not target.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(_Exploit("never")),
    pickle.dumps(print),
    pickle.dumps(zipfile.ZipFile),
])
def test_any_other_global_is_refused(payload):
  with pytest.raises(safe_pickle.UnsafePickleError, match="refused to unpickle"):
    safe_pickle.loads(payload, "crafted.pkl")


def test_bad_files_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    safe_pickle.load_npz(tmp_path / "missing.npz")
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not numpy at all")
  with pytest.raises(ValueError, match="junk.npz"):
    safe_pickle.load_npz(junk)
  # An object-dtype header whose payload is not an array.
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, dict(descr="|O", fortran_order=False, shape=()))
  bad = tmp_path / "bad.npy"
  bad.write_bytes(buf.getvalue() + pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not an array"):
    safe_pickle.load_npz(bad)
