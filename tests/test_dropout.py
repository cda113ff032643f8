"""Dropout masks (`models.dropout`) and the dense layers' kernel gradient (`models.dense`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapler_jax.models import dense, dropout
from adapler_jax.train.state import create_train_state


def test_keep_mask_drops_at_the_rate_and_is_a_function_of_the_key():
  key = jax.random.key(0)
  mask = np.asarray(dropout.keep_mask(key, 0.1, (16, 4, 64, 64)))
  assert abs((1 - mask.mean()) - 0.1) < 0.003  # 262k draws: std 6e-4.
  np.testing.assert_array_equal(mask, dropout.keep_mask(key, 0.1, (16, 4, 64, 64)))
  assert (mask != np.asarray(dropout.keep_mask(jax.random.key(1), 0.1, mask.shape))).mean() > 0.1


def test_rows_do_not_depend_on_how_many_rows_there_are():
  # Hashes are counted per row, so a data-parallel shard of rows draws the same bits.
  key = jax.random.key(3)
  small, large = dropout.random_uint16(key, (4, 10)), dropout.random_uint16(key, (9, 10))
  np.testing.assert_array_equal(small, large[:4])
  assert len(np.unique(np.asarray(large))) > 80  # four draws per hash, all distinct.


def test_dropout_scales_kept_values_and_other_key_impls_work():
  x = jnp.ones((16, 33))
  y = np.asarray(dropout.dropout(jax.random.key(0), 0.25, x))
  assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
  mask = dropout.keep_mask(jax.random.key(0, impl="rbg"), 0.5, (100, 101))
  assert mask.shape == (100, 101) and 0.45 < float(mask.mean()) < 0.55
  assert float(dropout.dropout(jax.random.key(0), 1.0, x).sum()) == 0.0


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_a_train_state_keeps_its_key_implementation(impl):
  """Step keys come from the key the state was made with, whatever its implementation,
  also after a jitted step (the implementation is static)."""
  key = jax.random.key(0, impl=impl)
  state = create_train_state({"w": jnp.ones(2)}, optax.sgd(0.1), key)
  state = jax.jit(lambda s: s.replace(step=s.step + 1))(state)
  want = jax.random.fold_in(key, 1)
  assert str(jax.random.key_impl(state.step_key())) == impl
  np.testing.assert_array_equal(jax.random.key_data(state.step_key()), jax.random.key_data(want))


def test_dense_dot_general_has_the_gradients_of_lax_dot_general():
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  w = jax.random.normal(jax.random.key(1), (8, 6))
  dims = (((2,), (0,)), ((), ()))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, dims)))
  ours = jax.grad(loss(dense.dot_general), argnums=(0, 1))(x, w)
  ref = jax.grad(loss(jax.lax.dot_general), argnums=(0, 1))(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(dense.dot_general(x, w, dims), jax.lax.dot_general(x, w, dims))


@pytest.mark.parametrize("rate", [1 - 2 ** -18, 0.999999])
def test_a_rate_that_rounds_to_one_drops_everything(rate):
  mask = dropout.keep_mask(jax.random.key(0), rate, (4, 8))
  assert mask.shape == (4, 8) and not mask.any()


def test_only_the_librarys_training_gradients_take_the_cpu_layout(monkeypatch):
  """The custom JVP is a CPU layout fix for the library's own reverse-mode steps; outside
  `kernel_gradient_layout()` the dense matmul is `lax.dot_general` itself, and inside it
  forward mode goes through as well."""
  from adapler_jax.models import adapler  # pylint: disable=g-import-not-at-top
  from adapler_jax.models.bert import EncoderConfig  # pylint: disable=g-import-not-at-top
  from adapler_jax.train import adapler_step  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (4, 8))
  w = jax.random.normal(jax.random.key(1), (8, 3))
  dims = (((1,), (0,)), ((), ()))
  f = lambda w: dense.dot_general(x, w, dims).sum()
  value, tangent = jax.jvp(f, (w,), (w,))
  np.testing.assert_allclose(tangent, value, rtol=1e-5)  # f is linear in w.
  with dense.kernel_gradient_layout():
    assert "custom_jvp" in str(jax.make_jaxpr(f)(w))  # on this CPU backend.
    value, tangent = jax.jvp(f, (w,), (w,))
    np.testing.assert_allclose(tangent, value, rtol=1e-5)
    for backend, env in (("gpu", None), ("cpu", "1")):
      monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
      if env:
        monkeypatch.setenv("ADAPLER_PLAIN_DOTS", env)
      value, tangent = jax.jvp(f, (w,), (w,))
      np.testing.assert_allclose(tangent, value, rtol=1e-5)
  monkeypatch.undo()

  cfg = adapler.AdapLeRConfig(EncoderConfig.tiny(), num_labels=2)
  params = adapler.init(jax.random.key(0), cfg)
  ids = np.array([[1, 5, 7, 2]], np.int32)
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
           "attention_mask": np.ones(ids.shape, bool), "labels": np.array([1]),
           "saliency": np.full(ids.shape, 0.25, np.float32)}
  forward = lambda m: adapler.soft_forward(cfg, {**params, "model": m}, batch, 10.0)[0].sum()
  assert "custom_jvp" not in str(jax.make_jaxpr(forward)(params["model"]))
  grads = lambda p: adapler_step.adapler_grads(cfg, p, batch, 10.0, adapler_step.LossWeights(
      gamma=1.0, phi=1e-3), deterministic=True)
  assert "custom_jvp" in str(jax.make_jaxpr(grads)(params))



def test_a_function_jitted_inside_the_layout_differentiates_in_both_modes_after_it():
  """jit's cache does not key on the layout: a forward first traced inside
  `kernel_gradient_layout()` keeps it when called after the block, where a user's
  `jax.jvp` and Hessian-vector products of it must still work (a custom VJP refused them)."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  w = jax.random.normal(jax.random.key(1), (8, 3))
  dims = (((2,), (0,)), ((), ()))
  forward = jax.jit(lambda w: jnp.tanh(dense.dot_general(x, w, dims)).sum())
  plain = lambda w: jnp.tanh(jax.lax.dot_general(x, w, dims)).sum()
  with dense.kernel_gradient_layout():
    np.testing.assert_allclose(jax.grad(forward)(w), jax.grad(plain)(w), rtol=1e-5, atol=1e-6)
  _, tangent = jax.jvp(forward, (w,), (w,))
  np.testing.assert_allclose(tangent, jax.jvp(plain, (w,), (w,))[1], rtol=1e-5)
  hvp = jax.jvp(jax.grad(forward), (w,), (w,))[1]
  np.testing.assert_allclose(hvp, jax.jvp(jax.grad(plain), (w,), (w,))[1], rtol=1e-4,
                             atol=1e-5)
