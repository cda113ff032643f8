"""Which XLA:CPU dot kernels a program compiles with, picked per call by its input grid.

XLA:CPU hands dots to YNNPACK by default. On the few-row matmuls of small inputs, batch 1
and the narrow grids left after dropping, XLA's own kernels are 2x faster (8 x 384 @ 384 x
1536: 0.27 ms against 0.60, one core); from about 256 rows on, YNNPACK is as fast or up to
10 % faster (`bench/cpu_dots.py`). So each engine program is jitted both ways and every call
takes XLA's kernels when its input grid holds fewer than `SMALL_GRID_TOKENS` token slots.
The choice is a per-program compiler option (nothing global changes) and only applies on
CPU; both variants compute the same function.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

SMALL_GRID_TOKENS = 256
XLA_DOTS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # no dot goes to YNNPACK.


def on_cpu(x) -> bool:
  """Whether `x` (a placed `jax.Array`, or host data bound for the default device) runs on
  a CPU."""
  if isinstance(x, jax.Array):
    return all(d.platform == "cpu" for d in x.devices())
  return jax.default_backend() == "cpu"


class ByGridSize:
  """`fn` jitted twice, with XLA:CPU's default dot kernels and with its own ones (`XLA_DOTS`);
  a call takes the second when argument `grid_arg` (the input ids, rows x width) has fewer
  than `SMALL_GRID_TOKENS` elements and runs on a CPU."""

  def __init__(self, fn: Callable[..., Any], *, grid_arg: int, **jit_kwargs):
    self.default = jax.jit(fn, **jit_kwargs)
    self.small = jax.jit(fn, compiler_options=XLA_DOTS, **jit_kwargs)
    self.grid_arg = grid_arg

  def pick(self, ids) -> Callable[..., Any]:
    small = ids.size < SMALL_GRID_TOKENS and on_cpu(ids)
    return self.small if small else self.default

  def __call__(self, *args, **kwargs):
    return self.pick(args[self.grid_arg])(*args, **kwargs)
