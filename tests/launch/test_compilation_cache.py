"""launch.cli.use_compilation_cache: the launchers' persistent XLA cache lies in the workdir the
user named, unless JAX_COMPILATION_CACHE_DIR says otherwise."""
import jax

from launch import cli


def test_the_cache_goes_to_the_workdir(tmp_path, monkeypatch):
  monkeypatch.delenv(cli.CACHE_ENV, raising=False)
  before = jax.config.jax_compilation_cache_dir
  try:
    path = cli.use_compilation_cache(tmp_path / "run")
    assert path == str(tmp_path / "run" / "xla_cache")
    assert jax.config.jax_compilation_cache_dir == path
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_environment_wins(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
  assert cli.use_compilation_cache(tmp_path / "run") == str(tmp_path / "mine")
  monkeypatch.setenv(cli.CACHE_ENV, "")                 # empty: off
  assert cli.use_compilation_cache(tmp_path / "run") is None
  assert jax.config.jax_compilation_cache_dir == before
  assert not (tmp_path / "run").exists()
