"""Errors shared across layers (the bottom layer, so models/ and checkpoints/ can both raise
them)."""


class CheckpointError(ValueError):
  """A checkpoint folder or tensor is missing, malformed or does not match the config."""
