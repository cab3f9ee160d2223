"""Helpers for tests that start several local jax.distributed processes."""
import socket


def free_port() -> int:
  """A localhost TCP port that is free now (for the coordinator of local processes)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
