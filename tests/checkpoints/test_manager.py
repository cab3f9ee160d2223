"""Training checkpoints: resharding restore, retention, damaged steps, data position, preemption."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import SingleDeviceSharding

from affect_jax import distributed, sharding
from affect_jax.checkpoints import manager, params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.models import qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.rl import grpo_step
from affect_jax.generation import policy as policy_lib
from affect_jax.train import preemption
from configs.checkpoint import get_checkpoint_config

WORKER = "tests.checkpoints.preemption_worker"
ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = sharding.DEFAULT_RULES


def _cfg(**overrides):
  return get_checkpoint_config(**{"save_every_steps": 1, "async_save": False, **overrides})


def _mesh(data, fsdp):
  return sharding.make_mesh({"data": data, "fsdp": fsdp, "tensor": 1},
                            jax.devices()[:data * fsdp])


TINY = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, lora=LoraConfig(rank=4, alpha=8.0))


@pytest.fixture(scope="module")
def real_state():
  """A GRPO train state of a tiny LoRA Qwen2 (random values in the real parameter tree) after
  one Adam update, so no leaf is zero."""
  policy = policy_lib.TextPolicy(TINY)
  opt = optax.adam(1e-2)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype),
                        sharding.unbox(qwen2.abstract_params(TINY)))
  state = grpo_step.init_state(policy, params, opt, jax.random.key(3))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), state["trainable"])
  updates, state["opt_state"] = opt.update(grads, state["opt_state"], state["trainable"])
  state["trainable"] = optax.apply_updates(state["trainable"], updates)
  state["step"] = jnp.int32(5)
  shardings_on = lambda mesh: grpo_step.state_shardings(policy, qwen2.abstract_params(TINY),
                                                        opt, mesh, RULES)
  return jax.device_get(state), shardings_on, params


def _target(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if manager._is_key(b):
      assert a.dtype == b.dtype
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_save_on_2x4_restores_on_4x2_and_one_device(tmp_path, real_state):
  host, shardings_on, _ = real_state
  sh24 = shardings_on(_mesh(2, 4))
  state = distributed.put(host, sh24)
  assert state["trainable"]["layers"]["self_attn"]["q_proj"]["lora_a"].sharding.spec != ()
  with manager.Checkpointer(tmp_path, _cfg(save_frozen=True), config={"lr": 1e-2}) as ckpt:
    assert ckpt.save(5, state, metrics={"loss": jnp.float32(0.25)})

  one = SingleDeviceSharding(jax.devices()[0])
  for target_sh in (shardings_on(_mesh(4, 2)), jax.tree.map(lambda _: one, sh24)):
    restored = manager.Checkpointer(tmp_path, _cfg()).restore_latest(_target(host, target_sh))
    state2, data, meta = restored
    _assert_same(state2, host)
    for x, s in zip(jax.tree.leaves(state2), jax.tree.leaves(target_sh)):
      assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert data is None
    assert meta["step"] == 5 and meta["metrics"] == {"loss": 0.25}
    assert meta["config"] == {"lr": 1e-2}
  # The next PRNG draw is the same as from the saved key.
  np.testing.assert_array_equal(jax.random.normal(state2["rng"], (3,)),
                                jax.random.normal(host["rng"], (3,)))


def test_frozen_weights_are_saved_only_when_asked(tmp_path, real_state):
  host, shardings_on, _ = real_state
  target = _target(host, shardings_on(_mesh(1, 1)))
  with manager.Checkpointer(tmp_path, _cfg()) as ckpt:
    ckpt.save(1, host)
    ckpt.save(2, host, with_frozen=True)
    assert sorted(ckpt.restore(1, target).state) == ["opt_state", "rng", "step", "trainable"]
    assert "frozen" in ckpt.restore(2, target).state
  assert not (tmp_path / "1" / "frozen").exists()


def _small_state(value=0.0):
  params = {"w": jnp.arange(24, dtype=jnp.float32).reshape(4, 6) + value,
            "b": jnp.full((6,), value, jnp.bfloat16)}
  opt = optax.adam(0.1)
  return {"step": jnp.int32(value), "trainable": params, "opt_state": opt.init(params),
          "rng": jax.random.key(int(value))}


def test_keeps_the_latest_k_async_and_numbers_steps(tmp_path):
  cfg = _cfg(save_every_steps=2, keep=2, async_save=True)
  with manager.Checkpointer(tmp_path, cfg) as ckpt:
    saved = [step for step in range(1, 10) if ckpt.save(step, _small_state(step))]
    assert saved == [2, 4, 6, 8]
    assert ckpt.save(9, _small_state(9), force=True)
    assert not ckpt.save(9, _small_state(9), force=True)     # already there
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [8, 9]
  ckpt = manager.Checkpointer(tmp_path, cfg)
  assert ckpt.all_steps() == [8, 9]
  restored = ckpt.restore_latest(manager.abstract(_small_state()))
  assert restored.meta["step"] == 9
  _assert_same(restored.state, _small_state(9))

  period = tmp_path / "period"
  with manager.Checkpointer(period, _cfg(save_every_steps=2, keep=1, keep_period=4)) as ckpt:
    for step in range(1, 10):
      ckpt.save(step, _small_state(step))
    assert ckpt.all_steps() == [4, 8]


def test_empty_directory_restores_none(tmp_path):
  assert manager.Checkpointer(tmp_path, _cfg()).restore_latest(
      manager.abstract(_small_state())) is None


def _three_steps(directory):
  with manager.Checkpointer(directory, _cfg()) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _small_state(step))


def _largest_file(step_dir):
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _delete(step_dir):
  (step_dir / "state" / "manifest.ocdbt").unlink()


def _wrong_checksum(step_dir):
  path = step_dir / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["checksums"]["state"] = {k: v ^ 1 for k, v in meta["checksums"]["state"].items()}
  path.write_text(json.dumps(meta))


def _unfinished(step_dir):
  # A save cut short: Orbax writes into STEP.orbax-checkpoint-tmp-* and renames at the end.
  step_dir.rename(step_dir.with_name(f"{step_dir.name}.orbax-checkpoint-tmp-1234"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax, failed read
@pytest.mark.parametrize("damage,reason", [
    (_truncate, "unreadable"), (_delete, "unreadable"), (_wrong_checksum, "checksum mismatch"),
    (_unfinished, "never finished")])
def test_damaged_latest_step_falls_back_with_a_warning(tmp_path, caplog, damage, reason):
  _three_steps(tmp_path)
  damage(tmp_path / "3")
  with caplog.at_level(logging.WARNING):
    restored = manager.Checkpointer(tmp_path, _cfg()).restore_latest(
        manager.abstract(_small_state()))
  assert restored.meta["step"] == 2
  _assert_same(restored.state, _small_state(2))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 3" in w and reason in w for w in warnings), warnings


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_step_damaged_is_a_clear_error(tmp_path):
  _three_steps(tmp_path)
  for step in (1, 2, 3):
    _truncate(tmp_path / str(step))
  with pytest.raises(CheckpointError, match=f"{tmp_path}: no readable checkpoint.*step 1"):
    manager.Checkpointer(tmp_path, _cfg()).restore_latest(manager.abstract(_small_state()))


def test_wrong_target_is_reported_without_trying_older_steps(tmp_path):
  _three_steps(tmp_path)
  target = manager.abstract(_small_state())
  del target["opt_state"]
  with pytest.raises(ValueError, match="has keys .*opt_state"):
    manager.Checkpointer(tmp_path, _cfg()).restore_latest(target)
  with pytest.raises(ValueError, match="no sharding"):
    manager.Checkpointer(tmp_path, _cfg()).restore_latest(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _small_state()))


def test_json_data_state_round_trip(tmp_path):
  data = {"epoch": 3, "index": 17, "seed": 0}
  with manager.Checkpointer(tmp_path, _cfg()) as ckpt:
    ckpt.save(4, _small_state(4), data=data)
  restored = manager.Checkpointer(tmp_path, _cfg()).restore_latest(
      manager.abstract(_small_state()))
  assert restored.data == data


def _dataset_iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=0).to_iter_dataset())


def _data_loader_iterator():
  loader = grain.DataLoader(
      data_source=grain.sources.RangeDataSource(0, 100, 1),
      sampler=grain.samplers.IndexSampler(100, shuffle=True, seed=0, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding()),
      worker_count=0)
  return iter(loader)


@pytest.mark.parametrize("make", [_dataset_iterator, _data_loader_iterator])
def test_grain_iterator_resumes_where_it_stopped(tmp_path, make):
  reference = [int(x) for x, _ in zip(make(), range(30))]
  assert sorted(reference) != reference                     # shuffled
  it = make()
  seen = [int(next(it)) for _ in range(10)]
  with manager.Checkpointer(tmp_path, _cfg(async_save=True)) as ckpt:
    ckpt.save(10, _small_state(), data=it)
    seen.append(int(next(it)))                              # moving on does not change the save
  fresh = make()
  restored = manager.Checkpointer(tmp_path, _cfg()).restore_latest(
      manager.abstract(_small_state()), data_iterator=fresh)
  assert restored.data is fresh
  assert seen[:10] + [int(next(fresh)) for _ in range(20)] == reference
  with pytest.raises(ValueError, match="data_iterator="):
    manager.Checkpointer(tmp_path, _cfg()).restore_latest(manager.abstract(_small_state()))
  assert manager.Checkpointer(tmp_path, _cfg()).restore_latest(
      manager.abstract(_small_state()), restore_data=False).data is None


def test_load_initial_params_from_a_converted_checkpoint(tmp_path, real_state):
  host, shardings_on, params = real_state
  params_io.save(tmp_path / "base", {"llm": params}, {"components": {}})
  mesh = _mesh(4, 2)
  llm_sh = sharding.shardings(qwen2.abstract_params(TINY), mesh, RULES)
  fusion = {"proj": {"kernel": jnp.ones((3, 2))}}
  target = {"llm": _target(params, llm_sh), "fusion": manager.abstract(fusion)}
  with pytest.raises(CheckpointError, match="init="):
    manager.load_initial_params(tmp_path / "base", target)
  got = manager.load_initial_params(tmp_path / "base", target, init={"fusion": fusion})
  _assert_same(got, {"llm": params, "fusion": fusion})
  q = got["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.is_equivalent_to(llm_sh["layers"]["self_attn"]["q_proj"]["kernel"], 2)


def test_load_initial_params_from_a_training_run(tmp_path, real_state):
  host, shardings_on, params = real_state
  workdir = tmp_path / "sft"
  with manager.Checkpointer(workdir / "checkpoints", _cfg()) as ckpt:
    ckpt.save(5, host)
    ckpt.save(6, dict(host, trainable=jax.tree.map(lambda x: x + 1, host["trainable"])))
  _wrong_checksum(workdir / "checkpoints" / "6")             # damaged: step 5 is used
  target = manager.abstract(jax.device_put(params, jax.devices()[0]))
  got = manager.load_initial_params(workdir, target, init=params)
  _assert_same(got, policy_lib.merge(host["trainable"], params))
  assert not np.array_equal(got["layers"]["self_attn"]["q_proj"]["lora_b"],
                            params["layers"]["self_attn"]["q_proj"]["lora_b"])
  with pytest.raises(CheckpointError, match=f"{tmp_path / 'nothing'}: neither"):
    manager.load_initial_params(tmp_path / "nothing", target)


def test_load_initial_params_from_a_run_workdir(tmp_path, real_state):
  """A workdir as the training loop lays it out (checkpoints/<phase>/<step>): SFT alone gives
  the SFT params (GRPO's init_from = an SFT workdir); once GRPO saved, its params."""
  host, _, params = real_state
  sft = dict(host, trainable=jax.tree.map(lambda x: x + 1, host["trainable"]))
  grpo = dict(host, trainable=jax.tree.map(lambda x: x + 2, host["trainable"]))
  with manager.Checkpointer(tmp_path / "checkpoints" / "sft", _cfg()) as ckpt:
    ckpt.save(3, sft)
  target = manager.abstract(jax.device_put(params, jax.devices()[0]))
  got = manager.load_initial_params(tmp_path, target, init=params)
  _assert_same(got, policy_lib.merge(sft["trainable"], params))
  with manager.Checkpointer(tmp_path / "checkpoints" / "grpo", _cfg()) as ckpt:
    ckpt.save(1, grpo)
  got = manager.load_initial_params(tmp_path, target, init=params)
  _assert_same(got, policy_lib.merge(grpo["trainable"], params))


def test_load_initial_params_from_a_relative_run_workdir(tmp_path, real_state, monkeypatch):
  """`--checkpoint=runs/demo` / `init_from=runs/sft` as typed: a path relative to the working
  directory reads the same params as the absolute one."""
  host, _, params = real_state
  sft = dict(host, trainable=jax.tree.map(lambda x: x + 1, host["trainable"]))
  with manager.Checkpointer(tmp_path / "runs" / "x" / "checkpoints" / "sft", _cfg()) as ckpt:
    ckpt.save(2, sft)
  monkeypatch.chdir(tmp_path)
  target = manager.abstract(jax.device_put(params, jax.devices()[0]))
  got = manager.load_initial_params(pathlib.Path("runs") / "x", target, init=params)
  _assert_same(got, policy_lib.merge(sft["trainable"], params))


def test_preemption_flag_second_signal_and_handler_restore():
  before = signal.getsignal(signal.SIGINT)
  with preemption.Preemption(signals=("SIGTERM", "SIGINT")) as stop:
    assert not stop.should_stop(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested and stop.signal_name == "SIGINT" and stop.should_stop(2)
    with pytest.raises(KeyboardInterrupt):                  # a second Ctrl-C acts as usual
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before
  with pytest.raises(ValueError, match="SIGNOPE"):
    preemption.Preemption(signals=("SIGNOPE",))


# -- preemption: a real training loop in a subprocess ----------------------------------------

def _start(workdir, *flags, devices=8):
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-m", WORKER, f"--workdir={workdir}", "--steps=24", *flags],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def _wait_for_step(proc, step, lines):
  deadline = time.time() + 60
  for line in proc.stdout:
    lines.append(line.split())
    if line.startswith("step ") and int(line.split()[1]) >= step:
      return
    assert time.time() < deadline, lines
  raise AssertionError(f"worker ended before step {step}: {lines}")


def _finish(proc, lines):
  out, _ = proc.communicate(timeout=120)
  lines.extend(line.split() for line in out.splitlines())
  return proc.returncode


def _checksums(lines):
  return {int(words[1]): words[2] for words in lines if words and words[0] == "step"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """Starts the uninterrupted run; calling the fixture's value waits for (final state as npz,
  {step: checksum}). Tests start their own worker first, so the two run side by side."""
  workdir = tmp_path_factory.mktemp("reference")
  proc, lines, result = _start(workdir), [], []

  def wait():
    if not result:
      assert _finish(proc, lines) == 0
      result.append((np.load(workdir / "final.npz"), _checksums(lines)))
    return result[0]
  yield wait
  proc.kill()
  proc.communicate()


def _assert_final_equal(workdir, reference):
  got = np.load(workdir / "final.npz")
  assert int(got["step"]) == 24
  for name in reference.files:
    np.testing.assert_array_equal(got[name], reference[name], err_msg=name)


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, uninterrupted):
  proc, lines = _start(tmp_path, "--step_seconds=0.2"), []
  _wait_for_step(proc, 4, lines)
  proc.send_signal(signal.SIGTERM)
  assert _finish(proc, lines) == 0
  preempted = [w for w in lines if w and w[0] == "preempted"]
  assert preempted and preempted[0][2] == "SIGTERM", lines
  stopped = int(preempted[0][1])
  assert stopped < 24 and stopped in manager.Checkpointer(
      tmp_path / "checkpoints", _cfg()).all_steps()
  # Resume; every later step's state equals the uninterrupted run's, bit for bit. (The same
  # mesh: XLA:CPU's update on a (4, 2) mesh differs from (2, 4) in the last bits from step 1
  # on, with or without a resume. Restoring onto another mesh is checked above and below.)
  proc, resumed = _start(tmp_path), []
  assert _finish(proc, resumed) == 0
  reference, ref_sums = uninterrupted()
  assert ["start", str(stopped)] in resumed
  sums = _checksums(resumed)
  assert sorted(sums) == list(range(stopped + 1, 25))
  assert sums == {s: ref_sums[s] for s in sums}
  _assert_final_equal(tmp_path, reference)


def test_kill_9_mid_run_resumes_from_the_last_good_step(tmp_path, uninterrupted):
  proc, lines = _start(tmp_path, "--step_seconds=0.05", "--save_every=2"), []
  _wait_for_step(proc, 9, lines)
  proc.send_signal(signal.SIGKILL)
  assert _finish(proc, lines) == -signal.SIGKILL
  proc, resumed = _start(tmp_path), []
  assert _finish(proc, resumed) == 0
  start = int(next(w for w in resumed if w[0] == "start")[1])
  last_printed = max(_checksums(lines))
  assert 2 <= start <= last_printed and start % 2 == 0, (lines, resumed)
  reference, ref_sums = uninterrupted()
  sums = _checksums(resumed)
  assert sums == {s: ref_sums[s] for s in range(start + 1, 25)}
  _assert_final_equal(tmp_path, reference)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path, uninterrupted):
  from tests.checkpoints import preemption_worker as worker
  from tests.testlib import process as process_testlib
  port = process_testlib.free_port()
  # 2 processes x 4 devices: the uninterrupted run's (2, 4) mesh, so the steps match bitwise.
  procs = [_start(tmp_path, "--num_processes=2", f"--process_id={i}", f"--port={port}",
                  "--mesh=data=2,fsdp=4", "--step_seconds=0.2", devices=4) for i in range(2)]
  logs = [[], []]
  _wait_for_step(procs[0], 3, logs[0])
  procs[1].send_signal(signal.SIGTERM)
  assert [_finish(p, log) for p, log in zip(procs, logs)] == [0, 0], logs
  stops = [[w for w in log if w and w[0] == "preempted"] for log in logs]
  assert stops[0][0][1] == stops[1][0][1], stops             # the same step on both
  assert stops[1][0][2] == "SIGTERM" and stops[0][0][2] == "None"
  assert _checksums(logs[0]) == _checksums(logs[1])
  stopped = int(stops[0][0][1])
  _, ref_sums = uninterrupted()
  assert _checksums(logs[0]) == {s: ref_sums[s] for s in range(1, stopped + 1)}
  # The saved step restores here, on one process and another mesh, to the reference's state;
  # each process saved its own grain iterator position.
  step_dir = tmp_path / "checkpoints" / str(stopped)
  assert sorted(p.name for p in (step_dir / "data_iterator").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  _, state, _ = worker.init(_mesh(4, 2))
  restored = manager.Checkpointer(tmp_path / "checkpoints", _cfg()).restore_latest(
      manager.abstract(state), restore_data=False)
  assert restored.meta["step"] == stopped
  assert str(worker.fingerprint(restored.state)) == ref_sums[stopped]
