"""Chunked token log-probs against a plain-numpy log-softmax gather."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax.generation import logprobs

B, T, H, V = 3, 10, 8, 37


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  params = dict(w=rng.normal(size=(H, V)).astype(np.float32),
                b=rng.normal(size=(V,)).astype(np.float32))
  hidden = rng.normal(size=(B, T, H)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  return params, hidden, targets


def _head(params):
  return lambda h: h @ params["w"] + params["b"]


def _np_logprobs(params, hidden, targets, temperature=1.0):
  """float64 log-softmax gather and entropy."""
  logits = (hidden.astype(np.float64) @ params["w"].astype(np.float64)
            + params["b"].astype(np.float64)) / temperature
  logits = logits - logits.max(-1, keepdims=True)
  logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  logp = np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
  entropy = -(np.exp(logp_all) * logp_all).sum(-1)
  return logp, entropy


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 10, 16])
def test_matches_numpy_for_any_chunk(setup, chunk):
  params, hidden, targets = setup
  fn = jax.jit(lambda p, h, y: logprobs.token_logprobs(h, y, _head(p), chunk, with_entropy=True))
  logp, entropy = fn(params, hidden, targets)
  ref_logp, ref_entropy = _np_logprobs(params, hidden, targets)
  assert logp.shape == entropy.shape == (B, T) and logp.dtype == jnp.float32
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(entropy, ref_entropy, rtol=1e-5, atol=1e-5)


def test_temperature_divides_logits(setup):
  params, hidden, targets = setup
  logp, entropy = logprobs.token_logprobs(hidden, targets, _head(params), 4, temperature=0.7)
  assert entropy is None
  np.testing.assert_allclose(logp, _np_logprobs(params, hidden, targets, 0.7)[0],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [3, 5])
def test_gradients_equal_unchunked(setup, chunk):
  params, hidden, targets = setup
  weights = np.random.default_rng(1).normal(size=(B, T)).astype(np.float32)

  def chunked(p, h):
    logp, entropy = logprobs.token_logprobs(h, targets, _head(p), chunk, with_entropy=True)
    return jnp.sum(logp * weights) + 0.1 * jnp.sum(entropy)

  def whole(p, h):
    logp_all = jax.nn.log_softmax(_head(p)(h), axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
    return jnp.sum(logp * weights) + 0.1 * jnp.sum(entropy)

  got = jax.jit(jax.grad(chunked, argnums=(0, 1)))(params, hidden)
  want = jax.jit(jax.grad(whole, argnums=(0, 1)))(params, hidden)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_bfloat16_hidden_gives_float32_logprobs(setup):
  _, _, targets = setup
  # Small multiples of 1/4: every product and sum is exact in bfloat16, so the logits are exact
  # and any error would come from the log-softmax (about 1e-2 if it ran in bfloat16).
  rng = np.random.default_rng(3)
  w = rng.integers(-2, 3, size=(H, V)) * 0.25
  hidden = rng.integers(-2, 3, size=(B, T, H)).astype(np.float64)
  logp, _ = logprobs.token_logprobs(jnp.asarray(hidden, jnp.bfloat16), targets,
                                    lambda c: c @ jnp.asarray(w, jnp.bfloat16), 4)
  assert logp.dtype == jnp.float32
  ref, _ = _np_logprobs(dict(w=w, b=np.zeros(V)), hidden, targets)
  np.testing.assert_allclose(logp, ref, rtol=1e-5, atol=1e-5)


def _largest_intermediate(jaxpr) -> int:
  """Element count of the largest value any equation (at any nesting depth) produces."""
  best = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      best = max(best, int(np.prod(getattr(v.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          best = max(best, _largest_intermediate(sub))
  return best


def test_gradient_never_materialises_full_logits():
  b, t, h, v, chunk = 2, 32, 4, 64, 4
  rng = np.random.default_rng(2)
  w = rng.normal(size=(h, v)).astype(np.float32)
  hidden = rng.normal(size=(b, t, h)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t)).astype(np.int32)

  def loss(w, x):
    return logprobs.token_logprobs(x, targets, lambda c: c @ w, chunk)[0].sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(w, hidden).jaxpr
  assert _largest_intermediate(jaxpr) <= b * chunk * v < b * t * v


def test_bad_inputs_name_the_problem(setup):
  params, hidden, targets = setup
  with pytest.raises(ValueError, match="targets"):
    logprobs.token_logprobs(hidden, targets[:, :-1], _head(params), 4)
  with pytest.raises(ValueError, match="logprob_chunk"):
    logprobs.token_logprobs(hidden, targets, _head(params), 0)
  with pytest.raises(ValueError, match="head_fn"):
    logprobs.token_logprobs(hidden, targets, lambda c: c.sum(-1), 4)
