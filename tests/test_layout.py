"""Host-side grid planning of the adaptive engine (`adapler_jax.infer.layout`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax.infer import layout

WIDTHS = (8, 16, 24, 32, 64)
MINILM = dict(hidden=384, intermediate=1536)


def test_first_fit_decreasing_places_largest_first_and_never_splits_an_example():
  counts = np.array([3, 7, 2, 5, 4])
  grid = layout.first_fit_decreasing(counts, rows=3, width=8)
  # 7 -> row 0; 5 -> row 1; 4 -> row 2; 3 -> row 1 (after 5); 2 -> row 2 (after 4).
  np.testing.assert_array_equal(grid.row, [1, 0, 2, 1, 2])
  np.testing.assert_array_equal(grid.offset, [5, 0, 4, 0, 0])
  assert layout.first_fit_decreasing(counts, rows=2, width=8) is None  # 21 > 16 slots.
  assert layout.first_fit_decreasing(np.array([5, 5, 5]), rows=2, width=8) is None


def test_plan_packs_many_short_examples_and_keeps_long_ones_unpacked():
  few = np.array([3, 2, 4, 3, 7, 2, 3, 3])  # padded: 8 rows x 8 = 64 slots for 27 tokens.
  grid = layout.plan(few, WIDTHS, (2,), **MINILM)
  assert grid.packed and (grid.rows, grid.width) == (2, 16)
  long = np.array([30, 28, 31, 29, 27, 30, 32, 26])  # nothing to gain from packing.
  grid = layout.plan(long, WIDTHS, (2,), **MINILM)
  assert not grid.packed and (grid.rows, grid.width) == (8, 32)
  np.testing.assert_array_equal(grid.row, np.arange(8))


def test_plan_weighs_attention_over_wider_rows():
  """Packing 4 examples of 60 into 1 row of 256 saves no slots, and attention over 256
  tokens costs more than over 64: the unpacked grid wins (and no width of 256 exists)."""
  counts = np.array([60, 61, 62, 63])
  assert not layout.plan(counts, WIDTHS + (256,), (1,), **MINILM).packed
  assert (layout.layer_cost(1, 256, **MINILM) > layout.layer_cost(4, 64, **MINILM))


def test_every_planned_grid_holds_every_token_once():
  rng = np.random.default_rng(0)
  for _ in range(50):
    counts = rng.integers(1, 33, rng.integers(1, 17))
    grid = layout.plan(counts, WIDTHS, (max(1, len(counts) // 4),), **MINILM)
    starts = rng.permutation(len(counts)) * 40  # any distinct buffer places
    idx, seg = layout.gather_indices(grid, counts, starts, sentinel=10_000)
    for e, c in enumerate(counts):
      r, o = grid.row[e], grid.offset[e]
      np.testing.assert_array_equal(idx[r, o:o + c], starts[e] + np.arange(c))
      assert (seg[r, o:o + c] == e).all()
    assert (seg >= 0).sum() == counts.sum() and (idx[seg < 0] == 10_000).all()


def test_smallest_width_names_the_problem():
  assert layout.smallest_width(9, WIDTHS) == 16
  with pytest.raises(ValueError, match="65 tokens do not fit"):
    layout.smallest_width(65, WIDTHS)


def test_the_device_planner_picks_the_host_planners_grid():
  """`program.choose` (on the device, inside the adaptive program) and `layout.plan` (on the
  host, for the full-length engine) are one rule written twice: the same grid, and where it
  packs the same first-fit-decreasing placement, for random batches."""
  from adapler_jax.infer import program  # pylint: disable=g-import-not-at-top
  rng, num, width, row_counts = np.random.default_rng(0), 8, 64, (1, 2, 4)
  options = program.grids(num, width, WIDTHS, row_counts, **MINILM)
  costs = np.asarray([layout.layer_cost(g.rows, g.width, **MINILM) for g in options],
                     np.float32)
  choose = jax.jit(lambda c: program.choose(c, options, costs))
  packed = 0
  for _ in range(200):
    counts = rng.integers(1, rng.choice([8, 24, 64]) + 1, num)
    host = layout.plan(counts, WIDTHS, row_counts, **MINILM)
    place = choose(jnp.asarray(counts, jnp.int32))
    assert options[int(place.index)] == (host.rows, host.width), counts
    np.testing.assert_array_equal(place.row, host.row)
    np.testing.assert_array_equal(place.off, host.offset)
    packed += host.packed
  assert 20 < packed < 180  # both kinds of grid were chosen.
