"""The AdapLeR forward of a batch as one compiled program: decisions on the device.

The batch's tokens live in one flat buffer (N, H), N = rows x input width, laid out as the
current grid: (R, w) slots row-major in its first R * w rows, the rest unused. Beside it,
per slot: `seg` (the example, -1 on padding and dropped tokens) and `pos` (the original
position, -1 likewise). Per example: `row`, `off` (where its slots start) and `span` (how
many slots it holds, dropped ones included). Each layer::

  decision l (scores, keep, counts: in the previous layer's branch, or after embedding)
  -> plan: the cheapest grid holding the survivors (`choose`: the cost model
     `flops.grid_cost` over (row counts x widths), packing first-fit decreasing)
  -> move: the survivors' labels to that grid, in order (`seg`, `pos`, and `src`, the
     buffer row each new slot takes: integer work over all N slots)
  -> `lax.switch` on the grid: gather its R * w rows from the buffer (`src`), layer l on
     them, written back to the first R * w buffer rows, then decision l + 1 on its output.

Every branch returns the buffer's shape, so one program per (rows, input width) serves
any data; the work of each layer still shrinks with its grid. Nothing reaches the host
until the outputs. The grids are static: `grids` lists them (widths up to the input's,
plus the fine ones at few rows); `choose` takes the cheapest, padded on ties, as the host's
`layout.plan` does for the full-length engine over its own candidates.

Drop-and-restore (span heads, `head.restore`): beside the buffer, each example's sequence
(E, W, H) at its original positions starts as the embeddings; after every layer the
vectors of the slots it ran are written there (`walk.restore_step`), so a token dropped
before layer l keeps its layer l-1 output, and the head reads every position. [CLS] then
stays only on its score (`cfg.keep_cls`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.infer import flops, packing
from adapler_jax.models import bert as bert_lib
from adapler_jax.models import walk
from adapler_jax.models.adapler import AdapLeRConfig
from adapler_jax.models.bert import attention_bias_from_mask

Array = jax.Array


class Grid(NamedTuple):
  rows: int
  width: int


def grids(num: int, width: int, widths: Sequence[int], row_counts: Sequence[int],
          hidden: int, intermediate: int) -> tuple[Grid, ...]:
  """The grids a batch of `num` examples at input `width` may run on: padded (`num`
  rows) at each of `widths` below `width` and at `width`, then packed (fewer rows) where cheaper than the
  padded input grid, which always holds every example."""
  ws = [w for w in widths if w < width] + [width]
  cost = lambda g: flops.grid_cost(g.rows, g.width, hidden, intermediate)
  top = cost(Grid(num, width))
  packed = [Grid(r, w) for r in row_counts if r < num for w in ws
            if cost(Grid(r, w)) < top]
  return tuple(Grid(num, w) for w in ws) + tuple(packed)


class Placement(NamedTuple):
  """A grid (index into `grids`) and where each example's slots start in it."""

  index: Array
  row: Array
  off: Array


def first_fit_decreasing(counts: Array, packed: Sequence[Grid]) -> tuple[Array, Array, Array]:
  """`layout.first_fit_decreasing` into every grid of `packed` at once: fits (P,) bool,
  row and offset (P, E) of each example."""
  num = counts.shape[0]
  rows = jnp.asarray([g.rows for g in packed])
  widths = jnp.asarray([g.width for g in packed])
  space = jnp.where(jnp.arange(max(g.rows for g in packed)) < rows[:, None], widths[:, None], -1)
  order = jnp.argsort(-counts, stable=True)
  grid = jnp.arange(len(packed))

  def place(space, e):
    fits = space >= counts[e]
    r = jnp.argmax(fits, axis=1)
    ok = jnp.any(fits, axis=1)
    off = widths - space[grid, r]
    return space.at[grid, r].add(jnp.where(ok, -counts[e], 0)), (r, off, ok)

  _, (r, off, ok) = jax.lax.scan(place, space, order)
  row = jnp.zeros((len(packed), num), jnp.int32).at[:, order].set(r.T.astype(jnp.int32))
  off = jnp.zeros((len(packed), num), jnp.int32).at[:, order].set(off.T.astype(jnp.int32))
  return jnp.all(ok, axis=0), row, off


def choose(counts: Array, options: Sequence[Grid], costs: np.ndarray) -> Placement:
  """The cheapest grid of `options` holding examples of `counts` tokens (first on ties)."""
  num = counts.shape[0]
  padded = [g for g in options if g.rows == num]
  packed = options[len(padded):]
  fits = jnp.asarray([g.width for g in padded]) >= jnp.max(counts)
  row, off = jnp.arange(num, dtype=jnp.int32), jnp.zeros((num,), jnp.int32)
  if packed:
    packed_fits, packed_row, packed_off = first_fit_decreasing(counts, packed)
    fits = jnp.concatenate([fits, packed_fits])
  index = jnp.argmin(jnp.where(fits, jnp.asarray(costs), jnp.inf)).astype(jnp.int32)
  if packed:
    p = jnp.clip(index - len(padded), 0, len(packed) - 1)
    row = jnp.where(index < len(padded), row, packed_row[p])
    off = jnp.where(index < len(padded), off, packed_off[p])
  return Placement(index, row, off)


class Tokens(NamedTuple):
  """The token buffer and the grid it is laid out in (see the module docstring)."""

  buffer: Array  # (N, H)
  seg: Array  # (N,) int32
  pos: Array  # (N,) int32
  place: Placement
  span: Array  # (E,) int32

  def starts(self, widths: Array) -> Array:
    """(E,) flat slot of each example's first token ([CLS])."""
    return self.place.row * widths[self.place.index] + self.place.off


def move(tokens: Tokens, keep: Array, counts: Array, place: Placement,
         widths: Array) -> tuple[Tokens, Array]:
  """The kept slots (keep (N,)) relabelled for grid `place`, each example's in order.

  Only the per-slot labels move here (int32, all N slots). The buffer stays as it is;
  `src` (N,) names, for each slot of the new layout, the buffer row it takes (N: none),
  and the layer's branch gathers just its grid's first rows x width of them.
  """
  size = tokens.seg.shape[0]
  e = jnp.maximum(tokens.seg, 0)
  before = jnp.cumsum(keep, dtype=jnp.int32) - keep  # kept slots before each slot.
  rank = before - before[tokens.starts(widths)][e]
  dest = place.row[e] * widths[place.index] + place.off[e] + rank
  dest = jnp.where(keep, dest, size)  # out of range: dropped.
  src = jnp.full((size,), size, jnp.int32).at[dest].set(jnp.arange(size, dtype=jnp.int32),
                                                        mode="drop")
  take = lambda a: jnp.take(a, src, mode="fill", fill_value=-1)
  return Tokens(tokens.buffer, take(tokens.seg), take(tokens.pos), place, counts), src


def per_example(tokens: Tokens, flat: Array, widths: Array, width: int, fill) -> Array:
  """A per-slot array (N,) as (E, width): each example's slots in order, `fill` past
  its span."""
  j = jnp.arange(width)
  idx = tokens.starts(widths)[:, None] + j
  return jnp.where(j < tokens.span[:, None], jnp.take(flat, idx, mode="fill", fill_value=fill),
                   fill)


def _layer_branch(cfg: AdapLeRConfig, grid: Grid, num: int, chunk_rows: int | None):
  """Layer l on grid `grid` (the first rows x width slots), then decision l + 1."""

  def run(buffer, src, seg, pos, layer_params, cp_params, eta):
    size, hidden = grid.rows * grid.width, buffer.shape[1]
    x = jnp.take(buffer, src[:size], axis=0, mode="fill", fill_value=0)
    x = x.reshape(grid.rows, grid.width, hidden)
    s = seg[:size].reshape(grid.rows, grid.width)
    bias = packing.packed_bias(s) if grid.rows < num else attention_bias_from_mask(s >= 0)
    x = packing.run_layer(cfg.encoder, layer_params, x, bias, chunk_rows)
    buffer = jax.lax.dynamic_update_slice(buffer, x.reshape(size, hidden).astype(buffer.dtype),
                                          (0, 0))
    p = pos[:size].reshape(grid.rows, grid.width)
    scores, keep, counts = packing.decide(cfg, cp_params, eta, x, s, p, num)
    pad = lambda a: jnp.pad(a.reshape(-1), (0, seg.shape[0] - size))
    return buffer, pad(scores), pad(keep), counts

  return run


def stack_layers(layers: list) -> dict:
  """Per-layer param trees [L] -> one tree of (L, ...) arrays, as `lax.scan` takes them."""
  return jax.tree.map(lambda *a: jnp.stack(a), *layers)


def forward(cfg: AdapLeRConfig, row_counts: tuple[int, ...], widths: tuple[int, ...],
            params: dict, input_ids: Array, token_type_ids: Array, n: Array, *,
            rationales: bool = False, chunk_rows: int | None = None,
            scan_layers: bool = False) -> dict[str, Array]:
  """Hard removal over a padded batch (E, W) with `n` (E,) real tokens per row.

  Args:
    cfg: the model shape. row_counts: the grids' row counts (E first, then packed ones).
    widths: ascending grid widths (those below W are used, and W). rationales: also return
      the per-layer scores, keep decisions and positions.
    chunk_rows: see `walk.ParamLayer`.
    scan_layers: run the layers as a `lax.scan` over stacked params: the program holds
      each grid's layer once (compiles faster) but slices every layer's weights out of
      the stack at run time: on the demo model as fast at batch 1, 0.89x at batch 32,
      compiling in 0.7-0.8x the time (docs/engine.md); by default the layers are unrolled.
    params: {"embeddings", "layers": [L], "predictors": [L], "head", "eta": (L,)};
      with `scan_layers`, "layers" may also come stacked (one tree of (L, ...) arrays,
      `stack_layers`), so that no call copies the weights into a stack.
  Returns:
    logits (E, C), or (E, W, 2) start/end logits for a span head (every position, padding
    included); kept (E, L) tokens each layer ran on; slots (L,) grid slots each layer
    computed; packed (L,) bool, several examples per row; with `rationales`, per layer
    l (L, E, W): `scores` S~ of decision l, `keep`, `positions` (original positions of
    the slots entering decision l, -1 where none).
  """
  num, width = input_ids.shape
  enc, layers = cfg.encoder, cfg.num_layers
  options = grids(num, width, widths, row_counts, enc.hidden_size, enc.intermediate_size)
  costs = np.asarray([flops.grid_cost(g.rows, g.width, enc.hidden_size,
                                      enc.intermediate_size) for g in options], np.float32)
  grid_widths = jnp.asarray([g.width for g in options], jnp.int32)
  grid_slots = jnp.asarray([g.rows * g.width for g in options], jnp.int32)
  grid_packed = jnp.asarray([g.rows < num for g in options])

  # Decision 0, on the embedded input grid (padded, E x W: the last padded option).
  x = bert_lib.embed(enc, params["embeddings"], input_ids, token_type_ids)
  real = packing.valid_positions(n, width)
  seg = jnp.where(real, jnp.arange(num, dtype=jnp.int32)[:, None], -1)
  pos = jnp.where(real, jnp.arange(width, dtype=jnp.int32), -1)
  scores, keep, counts = packing.decide(cfg, params["predictors"][0], params["eta"][0], x, seg,
                                        pos, num)
  start = Placement(jnp.int32(options.index(Grid(num, width))),
                    jnp.arange(num, dtype=jnp.int32), jnp.zeros((num,), jnp.int32))
  tokens = Tokens(x.reshape(num * width, -1), seg.reshape(-1), pos.reshape(-1), start, n)
  head = cfg.task_head
  restored = x if head.restore else None
  scores, keep = scores.reshape(-1), keep.reshape(-1)

  # Decision l + 1 follows layer l; after the last layer, cutoff 0 keeps every token.
  layer_params = params["layers"]
  next_cp = params["predictors"][1:] + params["predictors"][:1]
  next_eta = jnp.concatenate([params["eta"][1:], jnp.zeros((1,), jnp.float32)])
  branches = [_layer_branch(cfg, g, num, chunk_rows) for g in options]

  def layer(carry, xs):
    tokens, scores, keep, counts, restored = carry
    layer_params, cp, eta = xs
    ys = {"kept": counts}
    if rationales:
      ys["scores"] = per_example(tokens, scores, grid_widths, width, 0.0)
      ys["keep"] = per_example(tokens, keep, grid_widths, width, False)
      ys["positions"] = per_example(tokens, tokens.pos, grid_widths, width, -1)
    place = choose(counts, options, costs)
    tokens, src = move(tokens, keep, counts, place, grid_widths)
    ys["slots"], ys["packed"] = grid_slots[place.index], grid_packed[place.index]
    buffer, scores, keep, counts = jax.lax.switch(place.index, branches, tokens.buffer, src,
                                                  tokens.seg, tokens.pos, layer_params, cp, eta)
    if restored is not None:
      restored = walk.restore_step(restored, buffer[:, None], tokens.pos[:, None],
                                   tokens.seg[:, None])
    return (tokens._replace(buffer=buffer), scores, keep, counts, restored), ys

  carry = (tokens, scores, keep, counts, restored)
  if scan_layers:
    stacked = stack_layers(layer_params) if isinstance(layer_params, list) else layer_params
    carry, ys = jax.lax.scan(layer, carry, (stacked, stack_layers(next_cp), next_eta))
  else:
    trace = []
    for l in range(layers):
      carry, y = layer(carry, (layer_params[l], next_cp[l], next_eta[l]))
      trace.append(y)
    ys = jax.tree.map(lambda *a: jnp.stack(a), *trace)
  tokens, restored = carry[0], carry[-1]
  if head.restore:
    x = restored
  else:  # [CLS], each example's first slot.
    x = jnp.take(tokens.buffer, tokens.starts(grid_widths), axis=0)[:, None, :]
  logits = head.module(enc).apply({"params": params["head"]}, x)
  return {**ys, "logits": logits, "kept": ys["kept"].T}
