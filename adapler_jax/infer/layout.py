"""Host-side planning of a batch's grid from one count per example: the full-length
engine's choice between a padded and a packed batch (`FullLengthEngine`). The AdapLeR
engine makes the same kind of choice per layer on the device (`program.choose`). The
candidates:

* unpacked: one example per row (`rows` = examples), `width` the smallest bucket holding
  the largest count: what a padded batch does;
* packed: several examples per row, `rows` = examples / fold, placed first-fit
  decreasing. When most examples keep a few tokens and one keeps many, this computes a
  fraction of the padded slots (an example never spans two rows).

The plan with the lower estimated layer cost (dense work per slot plus attention over the
row's width) wins. The grids are drawn from (row counts x bucket widths), so the compiled
shapes stay bounded whatever the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from adapler_jax.infer import flops


@dataclasses.dataclass(frozen=True)
class Layout:
  """A (rows, width) grid and each example's place in it.

  row, offset: (E,) int, the row of example e and the slot its first token takes; its
  `counts[e]` tokens follow in order. With `rows == E` (unpacked) example e is row e.
  """

  rows: int
  width: int
  row: np.ndarray
  offset: np.ndarray

  @property
  def slots(self) -> int:
    return self.rows * self.width

  @property
  def packed(self) -> bool:
    return self.rows < len(self.row)


def unpacked(counts: np.ndarray, widths: Sequence[int]) -> Layout:
  """One example per row, padded to the smallest width holding the largest count."""
  num = len(counts)
  width = smallest_width(int(counts.max()), widths)
  return Layout(num, width, np.arange(num), np.zeros(num, np.int64))


def smallest_width(count: int, widths: Sequence[int]) -> int:
  """The smallest of the ascending `widths` that is >= `count`."""
  i = int(np.searchsorted(widths, count))
  if i == len(widths):
    raise ValueError(f"{count} tokens do not fit the widths {tuple(widths)}")
  return widths[i]


def first_fit_decreasing(counts: np.ndarray, rows: int, width: int) -> Layout | None:
  """Packs the examples into `rows` rows of `width` slots, largest first; None if they
  do not fit."""
  space = np.full(rows, width, np.int64)
  row = np.zeros(len(counts), np.int64)
  offset = np.zeros(len(counts), np.int64)
  for e in np.argsort(-counts, kind="stable"):
    fits = np.flatnonzero(space >= counts[e])
    if not len(fits):
      return None
    r = fits[0]
    row[e], offset[e] = r, width - space[r]
    space[r] -= counts[e]
  return Layout(rows, width, row, offset)


layer_cost = flops.grid_cost  # the one cost model: dense work per slot + attention per row.


def plan(counts: np.ndarray, widths: Sequence[int], row_counts: Sequence[int], hidden: int,
         intermediate: int) -> Layout:
  """The cheapest grid for examples with `counts` tokens each.

  Args:
    counts: (E,) tokens per example (>= 1).
    widths: ascending bucket widths.
    row_counts: row counts below E to try packing into (E itself is always available).
    hidden, intermediate: the encoder's sizes, for `layer_cost`.
  """
  counts = np.asarray(counts, np.int64)
  best = unpacked(counts, widths)
  cost = lambda lay: layer_cost(lay.rows, lay.width, hidden, intermediate)
  total, longest = int(counts.sum()), int(counts.max())
  for rows in row_counts:
    if rows >= len(counts):
      continue
    for width in widths:
      if width < longest or rows * width < total:
        continue
      if layer_cost(rows, width, hidden, intermediate) >= cost(best):
        break  # wider grids of these rows cost more still.
      packed = first_fit_decreasing(counts, rows, width)
      if packed is not None:
        best = packed
        break
  return best


def gather_indices(layout: Layout, counts: np.ndarray, starts: np.ndarray,
                   sentinel: int) -> tuple[np.ndarray, np.ndarray]:
  """Where each slot of the grid reads its token from, and whose token it is.

  Args:
    layout: the grid.
    counts: (E,) tokens per example; example e's tokens are rows `starts[e] + j` of the
      token buffer, j < counts[e], in order.
    sentinel: the index padding slots read (one past the buffer: they read zeros).
  Returns:
    idx (rows, width) int32 buffer rows, `sentinel` on padding; seg (rows, width) int32
    example of each slot, -1 on padding.
  """
  counts = np.asarray(counts, np.int64)
  idx = np.full((layout.rows, layout.width), sentinel, np.int32)
  seg = np.full((layout.rows, layout.width), -1, np.int32)
  example = np.repeat(np.arange(len(counts)), counts)
  j = np.arange(len(example)) - np.repeat(np.cumsum(counts) - counts, counts)
  r, c = layout.row[example], layout.offset[example] + j
  idx[r, c] = starts[example] + j
  seg[r, c] = example
  return idx, seg
