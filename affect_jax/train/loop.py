"""The training loop shared by SFT and GRPO: steps, logs, checkpoints, preemption, resume.

  result = train(phase="grpo", step_fn=step, state=state, loader=loader, total_steps=N,
                 workdir=W, config=c, to_device=fn, tokens_per_step=T)

On entry the newest readable checkpoint in W/checkpoints/<phase> (if any) is restored onto the
state's shardings, together with the data iterator's position, so a restarted run continues
exactly; a run that already finished returns at once. Every `checkpoint.save_every_steps`
steps (and at the end) a checkpoint is written in the background. SIGTERM makes the loop save
and stop cleanly (result.preempted). A save on a full disk stops the loop with one
manager.CheckpointNoSpace; the steps saved before it stay. Metrics go to W/metrics.jsonl,
TensorBoard and a progress bar every `log_every` steps. `on_step(step, state, metrics, batch,
log)`, if given, runs after every step (and its checkpoint save) on every process, before the
next step takes the state: the recipe's held-out evaluation and sampled-completions table.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Iterable, Mapping

import jax

from affect_jax.checkpoints import manager
from affect_jax.train import run_log as run_logging
from affect_jax.train import preemption


@dataclasses.dataclass
class LoopResult:
  state: dict
  step: int
  preempted: bool
  last_metrics: dict


def _frozen_free(state: Mapping) -> dict:
  return {k: v for k, v in state.items() if k not in manager.FROZEN_KEYS}


def train(*, phase: str, step_fn: Callable, state: dict, loader: Iterable,
          total_steps: int, workdir: str | os.PathLike, config, log_every: int,
          to_device: Callable[[Mapping], Mapping] = lambda b: b,
          tokens_per_step: Callable[[Mapping], float] | None = None,
          show: tuple[str, ...] = ("loss",),
          on_step: Callable[..., None] | None = None) -> LoopResult:
  """Runs `step_fn(state, batch) -> (state, metrics)` up to `total_steps` (see module doc)."""
  workdir = pathlib.Path(workdir)
  ckpt = manager.Checkpointer(workdir / "checkpoints" / phase, config.checkpoint, config=config)
  iterator = iter(loader)
  data_arg = iterator if hasattr(iterator, "get_state") else None
  start = 0
  restored = ckpt.restore_latest(manager.abstract(_frozen_free(state)), data_iterator=data_arg)
  if restored is not None:
    state = {**state, **restored.state}
    start = int(restored.meta["step"])
    if data_arg is None and restored.data is not None and hasattr(iterator, "set_state"):
      iterator.set_state(restored.data)
  log = run_logging.RunLog(workdir, total_steps, phase, show=show, start_step=start)
  metrics: dict = {}
  step = start
  preempted = False
  try:
    with preemption.Preemption(config.checkpoint) as stop:
      while step < total_steps:
        batch = next(iterator)
        state, metrics = step_fn(state, to_device(batch))
        step += 1
        if step % log_every == 0 or step == total_steps:
          tokens = tokens_per_step(batch) if tokens_per_step else None
          log.write(step, metrics, tokens=tokens)
        ckpt.save(step, _frozen_free(state), data=data_arg,
                  metrics=run_logging.scalars(metrics), force=step == total_steps)
        if on_step is not None:
          on_step(step, state, metrics, batch, log)
        if stop.should_stop(step) and step < total_steps:
          ckpt.save(step, _frozen_free(state), data=data_arg,
                    metrics=run_logging.scalars(metrics), force=True, wait=True)
          preempted = True
          break
  finally:
    try:
      log.close()
    finally:
      ckpt.close()     # waits for the last save; a full disk it already raised is not raised again
  host = {k: float(jax.device_get(v)) for k, v in run_logging.scalars(metrics).items()}
  return LoopResult(state=state, step=step, preempted=preempted, last_metrics=host)
