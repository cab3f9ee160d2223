"""The checkpoint section of a config: what `affect_jax/checkpoints/manager.py` and
`affect_jax/train/preemption.py` read.

Other configs attach it: `c.checkpoint = checkpoint.get_checkpoint_config()`; the training loop
passes it to `manager.Checkpointer(workdir / "checkpoints", c.checkpoint, config=c)`.
Defaults: save every 100 steps in the background, keep the 3 latest steps, verify a checksum of
every array on restore, save and stop cleanly on SIGTERM (what schedulers send before killing).
"""
import ml_collections

from configs import overrides as overrides_lib


def get_checkpoint_config(**overrides) -> ml_collections.ConfigDict:
  """The checkpoint section; keyword arguments override fields (e.g. `keep=5`)."""
  c = ml_collections.ConfigDict()
  # Save when step % save_every_steps == 0 (and on demand: preemption, end of training).
  c.save_every_steps = 100
  # Keep the `keep` most recent steps (orbax max_to_keep); 0 keeps every step.
  c.keep = 3
  # Also keep every step divisible by keep_period, beyond the `keep` latest; 0 = off.
  c.keep_period = 0
  # Write in a background thread (orbax async); the loop waits only for the device->host copy.
  # (Named async_save because `async` is a Python keyword: `c.async` would not parse.)
  c.async_save = True
  # Save the frozen weights ('frozen', and GRPO's 'reference': the trainable leaves it started
  # from) too. Off: they come back from the converted base checkpoint and the run's starting
  # parameters, so each save holds only what training changes.
  c.save_frozen = False
  # Store a position-weighted 32-bit checksum of every array and compare it on restore, so a
  # damaged file makes restore fall back to an earlier step instead of returning wrong numbers.
  c.verify_checksums = True
  # Signals that ask the loop to save and stop (names from the `signal` module).
  c.preemption_signals = ("SIGTERM",)
  # Several processes agree on stopping every this many steps (one tiny all-gather each time).
  c.preemption_sync_every_steps = 1
  return overrides_lib.apply(c, overrides, "get_checkpoint_config")


def get_config() -> ml_collections.ConfigDict:
  return get_checkpoint_config()
