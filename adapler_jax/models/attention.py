"""Scaled dot-product attention with an additive key bias, as pure functions.

Two forms of the same maths:

* `attention_probs_and_output` returns the normalised probabilities as well, for callers
  that sow them (rationale baselines) or drop them out (training).
* `attention` returns only the output and is what inference runs. It never materialises a
  normalised (seq, seq) matrix: the row sums divide the (seq, head_dim) output instead, and
  for long inputs it walks the queries in chunks so that one chunk's logits stay in cache.

Both take q, k, v in the projection layout (..., seq, heads, head_dim) and work in the
(..., heads, seq, head_dim) layout, where every contraction is a plain batched matmul.
The additive bias is either per key, (..., seq), or per query and key, (..., seq, seq):
the second form lets one row hold several sequences that must not see each other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

QUERY_CHUNK = 128  # queries per chunk in `attention` once seq exceeds it (when it divides seq).


def _heads_first(t: Array) -> Array:
  return jnp.swapaxes(t, -3, -2)  # (..., seq, heads, d) <-> (..., heads, seq, d)


def _is_pairwise(bias: Array, q: Array) -> bool:
  """Whether `bias` is (..., q, k) rather than (..., k), for q in the projection layout."""
  return bias.ndim == q.ndim - 1


def _logits(q: Array, k: Array, bias: Array, accum_dtype) -> Array:
  """(..., h, q, d) x (..., h, k, d) -> (..., h, q, k) scaled logits plus the bias."""
  scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("...hqd,...hkd->...hqk", q * scale, k,
                      preferred_element_type=accum_dtype)
  bias = bias[..., None, :, :] if _is_pairwise(bias, q) else bias[..., None, None, :]
  return logits + bias.astype(accum_dtype)


def attention_probs_and_output(q: Array, k: Array, v: Array, bias: Array, *,
                               accum_dtype=jnp.float32, dropout=None) -> tuple[Array, Array]:
  """Softmax attention with its probabilities.

  Args:
    q, k, v: (..., seq, heads, head_dim).
    bias: (..., seq) additive bias per key, or (..., seq, seq) per query and key.
    accum_dtype: dtype of logits, softmax and output accumulation.
    dropout: optional function applied to the probabilities before they weigh v.
  Returns:
    probs (..., heads, seq, seq) before dropout, and the output (..., seq, heads, head_dim).
  """
  q, k, v = map(_heads_first, (q, k, v))
  probs = jax.nn.softmax(_logits(q, k, bias, accum_dtype), axis=-1)
  weights = probs if dropout is None else dropout(probs)
  out = jnp.einsum("...hqk,...hkd->...hqd", weights.astype(v.dtype), v,
                   preferred_element_type=accum_dtype)
  return probs, _heads_first(out.astype(v.dtype))


def _unnormalised(q: Array, k: Array, v: Array, bias: Array, accum_dtype) -> Array:
  """Heads-first attention output with the softmax division moved after the PV product."""
  logits = _logits(q, k, bias, accum_dtype)
  e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  out = jnp.einsum("...hqk,...hkd->...hqd", e.astype(v.dtype), v,
                   preferred_element_type=accum_dtype)
  return out / jnp.sum(e, axis=-1, keepdims=True)


def attention(q: Array, k: Array, v: Array, bias: Array, *, accum_dtype=jnp.float32,
              query_chunk: int | None = QUERY_CHUNK) -> Array:
  """Softmax attention output only; same maths as `attention_probs_and_output`.

  Args:
    q, k, v: (..., seq, heads, head_dim).
    bias: (..., seq) additive bias per key, or (..., seq, seq) per query and key.
    accum_dtype: dtype of logits, softmax and output accumulation.
    query_chunk: when seq is larger and a multiple of it, queries go through in chunks of
      this many (`lax.map`); None never chunks.
  Returns:
    (..., seq, heads, head_dim) in v's dtype.
  """
  pairwise = _is_pairwise(bias, q)
  q, k, v = map(_heads_first, (q, k, v))
  seq = q.shape[-2]
  if query_chunk is None or seq <= query_chunk or seq % query_chunk:
    out = _unnormalised(q, k, v, bias, accum_dtype)
  else:
    count = seq // query_chunk
    chunks = q.reshape(*q.shape[:-2], count, query_chunk, q.shape[-1])
    chunks = jnp.moveaxis(chunks, -3, 0)  # (n, ..., h, c, d)
    if pairwise:  # each query chunk takes its rows of the bias along.
      rows = jnp.moveaxis(bias.reshape(*bias.shape[:-2], count, query_chunk, seq), -3, 0)
      run = lambda c: _unnormalised(c[0], k, v, c[1], accum_dtype)
      out = jax.lax.map(run, (chunks, rows))
    else:
      out = jax.lax.map(lambda qc: _unnormalised(qc, k, v, bias, accum_dtype), chunks)
    out = jnp.moveaxis(out, 0, -3).reshape(*q.shape[:-1], v.shape[-1])
  return _heads_first(out.astype(v.dtype))
