"""Which XLA:CPU dot kernels a program compiles with, picked per call by its layers' grids.

XLA:CPU hands dots to YNNPACK by default. On the few-row matmuls of small grids, batch 1
and the narrow grids left after dropping, XLA's own kernels are up to 2x faster (8 x 384 @
384 x 1536: 0.27 ms against 0.60, one core); from about 256 rows on, YNNPACK is as fast or
up to 10 % faster (`bench/cpu_dots.py`). A layer's dense matmuls have one row per token
slot of its grid, so each engine program is jitted both ways and a call takes XLA's
kernels when most of its layers run on grids under `SMALL_GRID_TOKENS` token slots
(`small_dots`). The full model's layers all run on the input grid; the
engines that drop tokens say which grids their layers run on (`ByGridSize.__call__`'s
`small`). The choice is a per-program compiler option (nothing global changes) and only
applies on CPU. Both variants compute the same function up to rounding (about 1e-7 on
the scores), which can still move a token that sits at its cutoff, so an engine run decides
the variant from its own batches only (`AdaptiveEngine.run`). A jaxlib that predates the
option (0.7, whose dots are XLA's own anyway) compiles the one variant (`xla_dots_options`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

SMALL_GRID_TOKENS = 256
XLA_DOTS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # no dot goes to YNNPACK.


@functools.cache
def xla_dots_options() -> dict[str, str]:
  """`XLA_DOTS` where this jaxlib knows its option, else {}: an unknown compiler option fails
  every compile (`No such compile option`), and a jaxlib without it has no YNNPACK dots to
  turn off. Probed once per process, on a trivial program."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=XLA_DOTS).lower(np.float32(0)).compile()
  except Exception as e:  # pylint: disable=broad-except  (jaxlib's XlaRuntimeError)
    if "No such compile option" not in str(e):
      raise
    return {}
  return dict(XLA_DOTS)


def on_cpu(x) -> bool:
  """Whether `x` (a placed `jax.Array`, or host data bound for the default device) runs on
  a CPU."""
  if isinstance(x, jax.Array):
    return all(d.platform == "cpu" for d in x.devices())
  return jax.default_backend() == "cpu"


def small_dots(layer_slots) -> bool:
  """Whether a program whose layers compute `layer_slots` token slots (one grid each, or
  one count for them all) suits XLA's own dots: at least half of its layers run on grids
  under `SMALL_GRID_TOKENS`. (XLA's kernels win up to 2x on a small grid and lose at most
  about 7 % on a large one, so a small grid counts as much as a large one.)"""
  # Plain Python on a handful of ints: at batch 1 this runs once a batch, a few us.
  slots = layer_slots if isinstance(layer_slots, list) else np.ravel(layer_slots).tolist()
  return 2 * sum(s < SMALL_GRID_TOKENS for s in slots) >= len(slots)


class ByGridSize:
  """`fn` jitted twice, with XLA:CPU's default dot kernels and with its own ones (`XLA_DOTS`;
  once where jaxlib has only its own: `xla_dots_options`).

  A call takes the second when `small` says so (the caller, which knows its device, has
  checked it is a CPU), or, when `small` is None, when argument `grid_arg` (the input ids,
  rows x width: the grid every layer runs on when none drops tokens) has fewer than
  `SMALL_GRID_TOKENS` elements and lives on a CPU (host data: the default backend is one).
  Otherwise it takes the first.
  """

  def __init__(self, fn: Callable[..., Any], *, grid_arg: int, **jit_kwargs):
    self.default = jax.jit(fn, **jit_kwargs)
    self.grid_arg = grid_arg
    self._fn, self._jit_kwargs, self._small = fn, jit_kwargs, None

  @property
  def small(self) -> Callable[..., Any]:
    """`fn` jitted with XLA's own dot kernels; `default` itself where jaxlib has no others.
    Built on first use: the engines' instances are made at import, before any backend."""
    if self._small is None:
      options = xla_dots_options()
      self._small = (jax.jit(self._fn, compiler_options=options, **self._jit_kwargs)
                     if options else self.default)
    return self._small

  def pick(self, ids, small: bool | None = None) -> Callable[..., Any]:
    if small is None:
      small = small_dots(np.size(ids)) and on_cpu(ids)
    return self.small if small else self.default

  def __call__(self, *args, small: bool | None = None, **kwargs):
    return self.pick(args[self.grid_arg], small)(*args, **kwargs)
