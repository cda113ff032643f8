"""Dropout with cheap keep masks: four 16-bit draws per Threefry hash.

`flax.linen.Dropout` draws a float32 uniform per element, and under
`jax_threefry_partitionable` (the default) each element costs one Threefry-2x32 hash whose
two output words are xor-ed into one: 64 random bits hashed, 32 used, for one Bernoulli draw.
A BERT training step draws tens of millions of them (attention probabilities and three hidden
states per layer), and on CPU the hashes take a sixth of the step.

Here each hash yields four 16-bit draws, and an element is kept when its draw is at least
`round(rate * 2**16)`: the drop probability is `rate` to within 2**-17. Hashes are counted
along the last axis only (one per four elements, per leading index), so rows stay independent
and a data-parallel step generates only its own rows' bits, as with partitionable Threefry.
Keys of other implementations (`rbg`, `unsafe_rbg`) draw 32-bit words with
`jax.random.bits` and split each into two 16-bit draws.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_BITS = 16
_PER_HASH = 4  # 16-bit draws per Threefry-2x32 hash (two 32-bit words).


def _flat_iota(shape: tuple[int, ...]) -> Array:
  """uint32 row-major index of every position of `shape` (fewer than 2**32 of them)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return index


def _draws_per_word(words: Array, n: int) -> Array:
  """(..., m, w) uint32 -> (..., n) uint16: each word split into two draws, cut to n."""
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # (..., m, w, 2)
  return halves.reshape(*words.shape[:-2], -1)[..., :n]


def random_uint16(key: Array, shape: tuple[int, ...]) -> Array:
  """Uniform uint16 draws of `shape`, row-independent along the leading axes."""
  *lead, n = shape
  if str(jax.random.key_impl(key)) == "threefry2x32":
    m = -(-n // _PER_HASH)
    k1, k2 = jax.random.key_data(key)
    if np.prod(lead, dtype=np.int64) * m >= 2 ** 32:
      raise ValueError(f"dropout on {shape} needs more than 2**32 hashes")
    count = _flat_iota((*lead, m))
    b1, b2 = jax_random.threefry2x32_p.bind(k1, k2, jnp.zeros_like(count), count)
    return _draws_per_word(jnp.stack([b1, b2], -1), n)
  words = jax.random.bits(key, (*lead, -(-n // 2), 1), jnp.uint32)
  return _draws_per_word(words, n)


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
  """Bool mask of `shape`, each element False with probability `rate` (to 2**-17)."""
  threshold = int(round(rate * 2 ** _BITS))
  if threshold >= 2 ** _BITS:  # rate within 2**-17 of 1: every draw falls below it.
    return jnp.zeros(shape, bool)
  return random_uint16(key, shape) >= jnp.uint16(threshold)


def dropout(key: Array, rate: float, x: Array) -> Array:
  """Inverted dropout: `x / (1 - rate)` where kept, 0 elsewhere."""
  if rate >= 1.0:
    return jnp.zeros_like(x)
  keep = keep_mask(key, rate, x.shape)
  return jax.lax.select(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
  """`flax.linen.Dropout` with the masks of `keep_mask` (rng collection `dropout`)."""

  rate: float

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    return dropout(self.make_rng("dropout"), self.rate, x)
