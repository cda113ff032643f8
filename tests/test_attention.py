"""The attention core: both forms equal a plain softmax reference, chunked or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax.models import attention
from adapler_jax.models.bert import NEG_INF


def _reference(q, k, v, bias):
  """Textbook softmax(q k^T / sqrt(d) + bias) v in float64 numpy, (b, s, h, d) layout;
  bias (b, k) per key or (b, q, k) per query and key."""
  q, k, v, bias = (np.asarray(t, np.float64) for t in (q, k, v, bias))
  bias = bias[:, None, :, :] if bias.ndim == 3 else bias[:, None, None, :]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + bias
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p, np.einsum("bhqk,bkhd->bqhd", p, v)


def _inputs(batch, seq, heads=3, dim=8, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q, k, v = (jax.random.normal(kk, (batch, seq, heads, dim)) for kk in keys[:3])
  lengths = jax.random.randint(keys[3], (batch,), 1, seq + 1)
  bias = jnp.where(jnp.arange(seq)[None] < lengths[:, None], 0.0, NEG_INF)
  bias = bias.at[:, 0].add(-2.5)  # a soft-removal edit on top of the padding
  return q, k, v, bias


@pytest.mark.parametrize("seq,chunk", [(16, None), (16, 128), (32, 8), (24, 16)])
def test_output_only_form_matches_reference(seq, chunk):
  q, k, v, bias = _inputs(2, seq)
  _, want = _reference(q, k, v, bias)
  got = jax.jit(lambda *a: attention.attention(*a, query_chunk=chunk))(q, k, v, bias)
  assert got.shape == q.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


@pytest.mark.parametrize("chunk", [None, 8])
def test_pairwise_bias_keeps_packed_sequences_apart(chunk):
  """Two sequences packed in one row (segments 0 and 1, then padding) attend only within
  themselves: each equals its own sequence run alone."""
  q, k, v, _ = _inputs(1, 16)
  seg = np.array([0] * 5 + [1] * 7 + [-1] * 4)
  pair = np.where((seg[:, None] == seg[None, :]) & (seg[None, :] >= 0), 0.0, NEG_INF)
  pair[3, 1] -= 1.5  # a per-pair edit, which a key bias cannot express
  _, want = _reference(q, k, v, pair[None])
  got = jax.jit(lambda *a: attention.attention(*a, query_chunk=chunk))(
      q, k, v, jnp.asarray(pair[None], jnp.float32))
  real = slice(0, 12)  # padding queries see only padding: any finite output will do.
  np.testing.assert_allclose(np.asarray(got)[:, real], want[:, real], atol=2e-6)
  for lo, hi in ((0, 5), (5, 12)):
    _, alone = _reference(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], pair[None, lo:hi, lo:hi])
    np.testing.assert_allclose(np.asarray(got)[:, lo:hi], alone, atol=2e-6)
  probs, out = attention.attention_probs_and_output(q, k, v, jnp.asarray(pair[None]))
  np.testing.assert_allclose(np.asarray(out)[:, real], want[:, real], atol=2e-6)
  assert float(np.asarray(probs)[0, :, :5, 5:].max()) == 0.0


def test_chunking_runs_when_it_divides_and_not_otherwise():
  q, k, v, bias = _inputs(1, 32)
  text = jax.jit(lambda *a: attention.attention(*a, query_chunk=8)).lower(
      q, k, v, bias).as_text()
  assert "while" in text  # lax.map over 4 query chunks
  text = jax.jit(lambda *a: attention.attention(*a, query_chunk=12)).lower(
      q, k, v, bias).as_text()
  assert "while" not in text  # 12 does not divide 32: one block


def test_probs_form_matches_reference_and_applies_dropout_to_weights_only():
  q, k, v, bias = _inputs(2, 12)
  want_p, want = _reference(q, k, v, bias)
  probs, out = attention.attention_probs_and_output(q, k, v, bias)
  np.testing.assert_allclose(np.asarray(probs), want_p, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out), want, atol=2e-6)
  probs2, zero = attention.attention_probs_and_output(q, k, v, bias, dropout=jnp.zeros_like)
  np.testing.assert_array_equal(np.asarray(probs2), np.asarray(probs))
  assert not np.asarray(zero).any()


@pytest.mark.parametrize("form", ["output", "probs"])
def test_bfloat16_inputs_accumulate_in_float32(form):
  """Logits of a few hundred, where bfloat16 keeps about 3 digits: accumulated in float32
  the output stays within 2e-2 of float64 on the same rounded inputs; in bfloat16 it is
  off by about 0.14."""
  q, k, v, bias = _inputs(2, 16)
  low = [t.astype(jnp.bfloat16) for t in (q * 12.0, k * 4.0, v)]
  scaled = low[0] * jnp.asarray(8 ** -0.5, jnp.bfloat16)  # as `_logits` scales q.
  _, want = _reference(np.asarray(scaled, np.float32) * np.sqrt(8.0),
                       *(np.asarray(t, np.float32) for t in low[1:]), bias)
  run = (attention.attention if form == "output"
         else lambda *a: attention.attention_probs_and_output(*a)[1])
  got = run(*low, bias)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2)
