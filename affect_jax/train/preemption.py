"""Stopping cleanly when the scheduler asks: a signal sets a flag, the loop saves and exits.

  with preemption.Preemption(cfg.checkpoint) as stop:
    for step in range(start, total):
      state, metrics = step_fn(state, batch)
      ckpt.save(step + 1, state, data=it)
      if stop.should_stop(step + 1):
        ckpt.save(step + 1, state, data=it, force=True, wait=True)
        return preemption.EXIT_CODE           # 0: the run ended cleanly; resume to continue

TPU and cluster schedulers send SIGTERM some time before killing a job. The handler only sets a
flag (nothing unsafe runs inside a signal handler); the loop polls `should_stop` between steps.
A second signal of the same kind acts as it would without the handler (e.g. Ctrl-C twice raises
KeyboardInterrupt), so a stuck job can still be stopped.

With several processes, each may see the signal at a different step; `should_stop` all-gathers
the flags every `preemption_sync_every_steps` steps so every process stops at the same step
(which the collective save needs). One process polls its flag without communication.
"""
from __future__ import annotations

import signal
import threading
from typing import Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# Exit status of a run that saved and stopped on a signal: a clean exit, so the scheduler's
# restart (or the user) resumes from the checkpoint just written.
EXIT_CODE = 0


class Preemption:
  """Installs signal handlers on enter, restores the previous ones on exit.

  Args:
    cfg: the checkpoint config section (preemption_signals, preemption_sync_every_steps), or
      None for the defaults (SIGTERM, agree every step).
    signals: overrides cfg.preemption_signals, e.g. ("SIGTERM", "SIGINT").
  """

  def __init__(self, cfg=None, signals: Sequence[str] | None = None):
    names = signals or (tuple(cfg.preemption_signals) if cfg is not None else ("SIGTERM",))
    unknown = [n for n in names if not isinstance(getattr(signal, str(n), None), signal.Signals)]
    if unknown:
      raise ValueError(f"preemption signals {unknown}: use names of the signal module, e.g. "
                       "'SIGTERM', 'SIGINT'.")
    self._signals = [getattr(signal, n) for n in names]
    self._every = int(cfg.preemption_sync_every_steps) if cfg is not None else 1
    if self._every < 1:
      raise ValueError(f"checkpoint.preemption_sync_every_steps={self._every}: must be >= 1.")
    self._previous = {}
    self._received: int | None = None

  @property
  def requested(self) -> bool:
    """Whether this process received a signal (no communication)."""
    return self._received is not None

  @property
  def signal_name(self) -> str | None:
    return signal.Signals(self._received).name if self._received is not None else None

  def request(self) -> None:
    """Asks for a stop from code (as the signal would)."""
    self._received = self._received or signal.SIGTERM

  def _handle(self, signum, frame) -> None:
    del frame
    self._received = signum
    # A second signal gets the previous behaviour (e.g. KeyboardInterrupt on Ctrl-C twice).
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __enter__(self) -> Preemption:
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("Preemption must be entered on the main thread (Python delivers "
                         "signals there).")
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    """True when the loop should save and stop after `step`; the same on every process.

    Every process must call it after the same steps (as the training loop does).
    """
    if jax.process_count() == 1:
      stop = self.requested
    elif step % self._every:
      return False
    else:
      flags = multihost_utils.process_allgather(np.asarray(self.requested))
      stop = bool(np.any(flags))
    if stop:
      logging.warning("stopping after step %d: %s received; saving a checkpoint.", step,
                      self.signal_name or "a signal on another process")
    return stop
