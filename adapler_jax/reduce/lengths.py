"""Length configurations of the Length-Adaptive Transformer, LengthDrop and LayerDrop.

A length configuration is one length per layer, non-increasing, on a base length T (the
padded maximum length). Layer i keeps l_i tokens after its attention sub-layer. How a
config applies to an example of n real tokens depends on the base:

* ``"padded"`` (the LAT authors'): l_i counts padding too, so padding goes first and an
  example keeps min(l_i, what it has) real tokens;
* ``"actual"`` (per-example lengths): the config is a ratio of each example's own length,
  k_i = ceil(n * l_i / T).

`keep_counts` is the one formula both execution paths (masked and gather) and the cost
model use. Ratios are exact fractions, so `shrink(64, 0.2)` is ceil(51.2) = 52 on every
platform.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.errors import UserError

BASES = ("padded", "actual")


def _fraction(ratio: float) -> Fraction:
  """`ratio` as an exact fraction; it is static (a Python or NumPy number), not traced."""
  if isinstance(ratio, jax.core.Tracer):
    raise UserError("a length ratio is static: pass a Python float, not a traced value "
                    "(mark it static under jit, or loop over the ratios outside it)")
  return Fraction(str(float(ratio))).limit_denominator(10_000)


def shrink(length, ratio: float):
  """ceil(length * (1 - ratio)) in exact integer arithmetic (ints, numpy or jax arrays)."""
  keep = 1 - _fraction(ratio)
  return -((-length * keep.numerator) // keep.denominator)


def constant_ratio_config(base: int, num_layers: int, ratio: float, min_length: int = 1
                          ) -> tuple[int, ...]:
  """l_i = ceil((1 - ratio) l_{i-1}) from l_{-1} = base, floored at `min_length`.

  ratio 0.2 is LAT's smallest sub-model: 64 -> (52, 42, 34, 28, 23, 19) for 6 layers.
  """
  out, length = [], base
  for _ in range(num_layers):
    length = max(int(shrink(length, ratio)), min_length)
    out.append(length)
  return tuple(out)


def example_config(base: int, num_layers: int) -> str:
  """The ratio-0.2 config of a model, as a flag takes it: what error messages suggest."""
  return ",".join(map(str, constant_ratio_config(base, num_layers, 0.2)))


def validate_config(config: Sequence[int], base: int, num_layers: int, *,
                    keep_cls: bool = True, name: str = "length config") -> tuple[int, ...]:
  """The config as a tuple of ints, or a one-line `UserError` naming it as `name` (the flag
  or field it came from) with an example: one entry per layer, 1 <= l_i <= base (>= 2 when
  [CLS] is forced: it leaves room for a token), non-increasing."""
  hint = f"e.g. {example_config(base, num_layers)} (ratio 0.2 per layer)"
  try:
    config = tuple(int(v) for v in config)
  except (TypeError, ValueError):
    raise UserError(f"{name} {config!r} is not a list of ints; pass {hint}")
  floor = 2 if keep_cls else 1
  if len(config) != num_layers:
    raise UserError(f"{name} {config} has {len(config)} entries; the model has {num_layers} "
                    f"layers: give one length per layer, {hint}")
  if any(not floor <= v <= base for v in config):
    raise UserError(f"{name} {config} must stay within [{floor}, {base}] (the max length is "
                    f"{base}), {hint}")
  if any(b > a for a, b in zip(config, config[1:])):
    raise UserError(f"{name} {config} must be non-increasing layer by layer, {hint}")
  return config


def parse_config(text: str, name: str = "--length-config", *,
                 base: int = 64, num_layers: int = 6) -> tuple[int, ...]:
  """'52,42,34' or '(52, 42, 34)' -> ints (never `eval`); `name` is what errors call it,
  with an example config for a model of `num_layers` layers at max length `base`."""
  parts = [p for p in text.replace("(", "").replace(")", "").replace(" ", "").split(",") if p]
  try:
    return tuple(int(p) for p in parts)
  except ValueError:
    raise UserError(f"{name} {text!r} is not a comma-separated list of ints, "
                    f"e.g. {example_config(base, num_layers)}") from None


def keep_counts(config, n, base: int, length_base: str):
  """Tokens each example may keep at each layer: (L, E) from config (L,) and lengths (E,).

  "padded": l_i, applied to the tokens present (padding included, and dropped first);
  "actual": ceil(n * l_i / base), at least 1. Works on numpy and jax arrays.
  """
  if length_base not in BASES:
    raise UserError(f"length_base {length_base!r} is not one of {', '.join(BASES)}")
  xp = jnp if isinstance(config, jax.Array) or isinstance(n, jax.Array) else np
  config = xp.asarray(config)[:, None]
  n = xp.asarray(n)[None, :]
  if length_base == "padded":
    return xp.broadcast_to(config, (config.shape[0], n.shape[1]))
  return xp.maximum(-((-n * config) // base), 1)


def real_counts(config, n, base: int, length_base: str) -> np.ndarray:
  """Real tokens each example keeps at each layer, (E, L) (`kept_of` its `keep_counts`)."""
  return kept_of(keep_counts(np.asarray(config), np.asarray(n), base, length_base), n)


def kept_of(counts, n) -> np.ndarray:
  """(L, E) counts per layer -> (E, L) real tokens kept: padding goes first, so an example
  keeps min(k_i, what it still has)."""
  counts = np.minimum(np.asarray(counts), np.asarray(n)[None, :])
  return np.minimum.accumulate(counts, axis=0).T


# ----------------------------------------------------------------------------- sampling


def layer_drop(key: jax.Array, num_layers: int, p: float) -> jax.Array:
  """(L,) bool: layer i runs unless a uniform draw falls below p (LayerDrop)."""
  return jax.random.uniform(key, (num_layers,)) >= p


def sample_config(key: jax.Array | None, base: int, layer_on: jax.Array, *, ratio: float,
                  min_length: int = 2) -> jax.Array:
  """A length config (L,) int32 on the device, from l_{-1} = base.

  With a key, LengthDrop: l_i ~ U[ceil((1 - ratio) l_{i-1}), l_{i-1}] (integers, both ends);
  without, the constant-ratio config ceil((1 - ratio) l_{i-1}). Layers with `layer_on`
  False keep the previous length; every entry is floored at `min_length`.
  """
  num_layers = layer_on.shape[0]
  keys = (None,) * num_layers if key is None else tuple(jax.random.split(key, num_layers))
  length = jnp.asarray(base, jnp.int32)
  out = []
  for i in range(num_layers):
    low = shrink(length, ratio)
    new = low if keys[i] is None else jax.random.randint(keys[i], (), low, length + 1)
    length = jnp.maximum(jnp.where(layer_on[i], new, length), min_length).astype(jnp.int32)
    out.append(length)
  return jnp.stack(out)
