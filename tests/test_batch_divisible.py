"""sharding.check_batch_divisible, the one check of a global batch against micro-batches, the
mesh's data x fsdp devices and the processes (used by experiment.check_mesh and the GRPO and SFT
steps), against the plain arithmetic it stands for."""
import itertools
import re
import types

import pytest

from affect_jax import sharding


def _mesh(data, fsdp, tensor=1):
  return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


def _check(rows, mesh, micro, processes):
  sharding.check_batch_divisible(rows, mesh, what=f"config.b={rows}", fix="set --config.b to",
                                 micro=micro, micro_what="config.m", processes=processes)


@pytest.mark.parametrize("data, fsdp, micro, processes",
                         list(itertools.product((1, 2), (1, 2, 4), (1, 2, 3), (1, 2))))
def test_error_exactly_when_the_arithmetic_fails(data, fsdp, micro, processes):
  mesh = _mesh(data, fsdp, tensor=2)
  for rows in range(1, 49):
    ok = rows % micro == 0 and (rows // micro) % (data * fsdp) == 0 and rows % processes == 0
    if ok:
      _check(rows, mesh, micro, processes)
      continue
    with pytest.raises(ValueError) as e:
      _check(rows, mesh, micro, processes)
    message = str(e.value)
    assert message.startswith(f"config.b={rows}")
    # The multiple a message asks for passes the mesh and micro-batch checks.
    wanted = re.search(r"a multiple of (\d+)", message)
    assert wanted, message
    n = int(wanted.group(1))
    if "cannot be split over the mesh" in message:
      assert n == data * fsdp * micro and (n // micro) % (data * fsdp) == 0
      assert f"data x fsdp = {data * fsdp} devices (data={data}, fsdp={fsdp}, tensor=2)" in message
    elif "processes" in message:
      assert n == processes
    else:
      assert n == micro and "config.m=" in message


def test_no_mesh_checks_only_the_micro_batches():
  sharding.check_batch_divisible(7, None, what="b", fix="use")
  with pytest.raises(ValueError, match=r"b is not a multiple of m=2"):
    sharding.check_batch_divisible(7, None, what="b", fix="use", micro=2, micro_what="m")
  with pytest.raises(ValueError, match="m=0"):
    sharding.check_batch_divisible(4, None, what="b", fix="use", micro=0, micro_what="m")


def test_micro_batch_message_names_the_part_and_the_count():
  with pytest.raises(ValueError, match=r"config\.b=8: its micro-batches of 4 prompts "
                                       r"\(/ config\.m=2\) cannot be split over the mesh's "
                                       r"data x fsdp = 8 devices.*set --config\.b to a multiple "
                                       r"of 16, or change the mesh so that data x fsdp divides 4"):
    sharding.check_batch_divisible(8, _mesh(2, 4), what="config.b=8", fix="set --config.b to",
                                   micro=2, micro_what="config.m", unit="prompts")
