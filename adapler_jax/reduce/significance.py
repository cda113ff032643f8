"""Attention-significance selection (PoWER-BERT, Length-Adaptive Transformer) as a policy.

After layer i's attention sub-layer (post-LN) and before its feed-forward block, each token
is scored by the attention it receives, summed over heads and over the query rows of the
tokens present, and the top k_i stay; the feed-forward block runs on them only. [CLS] is
forced for classification. Ties go to the lower position.

Two forms share `significance` and the keep rule (`top_tokens`, `keep_top`):

* `MaskedSelection`: fixed shapes, a `present` mask and traced lengths; a dropped token
  keeps its previous layer's output (drop-and-restore for free). For training and evaluating
  many configs without recompiling.
* `GatherSelection`: the kept tokens are gathered to the front of each row and the rest is
  cut off at a static width, so later layers really run on fewer tokens. For inference.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from adapler_jax.errors import InputError
from adapler_jax.models.bert import NEG_INF
from adapler_jax.models.walk import Policy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SelectionFlags:
  """The choices the LAT authors' code made implicitly (their values in parentheses).

  keep_cls: force [CLS] (classification True, span QA False).
  include_pad_queries: padded query rows add to the scores (True upstream; their mass then
    dominates). False sums over the kept, real query rows only.
  include_diagonal: a token's attention to itself counts (True upstream).
  score_from_dropout_probs: score the probabilities after attention dropout, as HF v3
    returned them in training (True upstream); False uses the clean probabilities.
  length_base: "padded" lengths on the padded length (upstream) or "actual" per-example
    ratios of each example's own length (`reduce.lengths`).
  """

  keep_cls: bool = True
  include_pad_queries: bool = False
  include_diagonal: bool = True
  score_from_dropout_probs: bool = False
  length_base: str = "padded"

  def __post_init__(self):
    if self.include_pad_queries and self.length_base == "actual":
      raise InputError("SelectionFlags(include_pad_queries=True) counts padded query rows, but "
                       "length_base='actual' never puts padding in play, so it would change "
                       "nothing; use length_base='padded' or include_pad_queries=False")


def significance(probs: Array, query_rows: Array, include_diagonal: bool = True) -> Array:
  """Attention received by each key: (B, H, Tq, Tk) probs, (B, Tq) bool rows -> (B, Tk).

  Sums over heads and over the query rows marked in `query_rows`.
  """
  weights = query_rows.astype(probs.dtype)[:, None, :, None]
  if not include_diagonal:
    probs = probs * (1.0 - jnp.eye(probs.shape[-1], dtype=probs.dtype))
  return jnp.sum(probs * weights, axis=(1, 2))


def top_tokens(scores: Array, present: Array, forced: Array | None, width: int,
               positions: Array | None = None) -> Array:
  """The selection order: slots of the `width` best-scoring present tokens of each row, best
  first, `forced` tokens before all, ties to the lower original position. (B, T) ->
  (B, width) int. `positions` (B, T): each slot's original position, where slots are not
  in position order (after a gather); None: slot t holds position t."""
  key = jnp.where(present, scores, -jnp.inf)
  if forced is not None:
    key = jnp.where(forced & present, jnp.inf, key)
  if positions is None:
    return jax.lax.top_k(key, width)[1]  # equal keys come out lower index first.
  slots = jnp.broadcast_to(jnp.arange(key.shape[-1], dtype=jnp.int32), key.shape)
  _, _, order = jax.lax.sort((-key, positions, slots), dimension=-1, num_keys=2)
  return order[..., :width]


def keep_top(scores: Array, present: Array, k: Array, forced: Array | None = None) -> Array:
  """The keep rule: the first k[b] tokens of each row's `top_tokens` order, as a mask.
  scores/present/forced (B, T), k (B,) -> (B, T) bool."""
  width = scores.shape[-1]
  order = top_tokens(scores, present, forced, width)
  rows = jnp.arange(scores.shape[0])[:, None]
  kept = jnp.zeros(scores.shape, bool).at[rows, order].set(jnp.arange(width) < k[:, None])
  return kept & present


def _query_rows(present: Array, valid: Array, include_pad_queries: bool) -> Array:
  return present if include_pad_queries else present & valid


class MaskedSelection(Policy):
  """Fixed-shape selection; `ctx` is `present` (B, T) bool, the tokens still in play.

  Args:
    valid: (B, T) bool real tokens.
    counts: (L, B) int tokens to keep at each layer (`lengths.keep_counts`).
    flags: `SelectionFlags`.
  Records per layer: `significance` (B, T), `kept` (B, T) bool, `lengths` (B,) real
  tokens the feed-forward block ran on.
  """

  wants_probs = True

  def __init__(self, valid: Array, counts: Array, flags: SelectionFlags):
    self.valid, self.counts, self.flags = valid, counts, flags
    if flags.score_from_dropout_probs:
      self.wants_probs = "after_dropout"

  def initial(self) -> Array:
    """Padded base: every slot is present (padding scores 0 and goes first); actual: the
    real tokens."""
    if self.flags.length_base == "padded":
      return jnp.ones_like(self.valid)
    return self.valid

  def bias(self, present):
    return jnp.where(present & self.valid, 0.0, NEG_INF).astype(jnp.float32)

  def after_attention(self, l, a, probs, present):
    f = self.flags
    scores = significance(probs, _query_rows(present, self.valid, f.include_pad_queries),
                          f.include_diagonal)
    forced = (jnp.arange(present.shape[-1]) == 0)[None] if f.keep_cls else None
    kept = keep_top(scores, present, self.counts[l], forced)
    return a, kept, {"significance": scores, "kept": kept,
                     "lengths": jnp.sum(kept & self.valid, axis=-1)}

  def after_layer(self, l, x, y, kept):
    return jnp.where(kept[..., None], y, x), kept


class GatherSelection(Policy):
  """Selection with real shrinking; `ctx` is `(present, positions)`, each (B, w): the real
  tokens in each slot and their original positions (-1 on empty slots).

  Args:
    counts: (L, B) int tokens to keep at each layer.
    widths: static width of each layer's feed-forward block and of the next layer; must
      hold the largest count (`lengths.real_counts`).
    flags: `SelectionFlags` (include_pad_queries must be False: there are no pads here).
    selects: static, whether layer l drops any token of the batch; a layer that keeps every
      token skips scoring and gathering (default: every layer selects).
  Kept tokens take the front slots in decreasing significance ([CLS] first when forced), in
  each row that drops a token (a row that keeps all keeps its order);
  attention does not depend on the order; `walk(..., restore=True)` scatters them back to
  their positions (`positions`). Records per layer: `lengths` (B,) tokens kept
  and `positions` (B, w_l) their original positions.
  """

  wants_probs = True

  def __init__(self, counts: Array, widths: Sequence[int], flags: SelectionFlags,
               selects: Sequence[bool] | None = None):
    if flags.include_pad_queries:
      raise ValueError("the gather path drops padding first; include_pad_queries=True "
                       "needs the masked path")
    self.counts, self.widths, self.flags = counts, tuple(widths), flags
    self.selects = tuple(selects) if selects is not None else (True,) * len(self.widths)

  @staticmethod
  def initial(valid: Array):
    positions = jnp.where(valid, jnp.arange(valid.shape[-1], dtype=jnp.int32), -1)
    return valid, positions

  def needs_probs(self, l):
    return self.selects[l]

  def positions(self, ctx):
    return ctx[1]

  def bias(self, ctx):
    return jnp.where(ctx[0], 0.0, NEG_INF).astype(jnp.float32)

  def after_attention(self, l, a, probs, ctx):
    present, positions = ctx
    if not self.selects[l]:
      return a, ctx, {"lengths": jnp.sum(present, axis=-1), "positions": positions}
    f = self.flags
    scores = significance(probs, present, f.include_diagonal)
    forced = (positions == 0) if f.keep_cls else None
    # `keep_top`'s rule, gathered: the best `width` slots in order, each row keeping k. A
    # row that keeps every token keeps its slots' order (real tokens are at the front), as
    # it does in a batch where no row drops: its order never depends on its neighbours.
    order = top_tokens(scores, present, forced, self.widths[l], positions)
    keeps_all = self.counts[l] >= jnp.sum(present, axis=-1)
    order = jnp.where(keeps_all[:, None], jnp.arange(self.widths[l]), order)
    take = lambda t: jnp.take_along_axis(t, order, axis=1)
    rank = jnp.arange(self.widths[l])
    present = take(present) & (rank < self.counts[l][:, None])
    positions = jnp.where(present, take(positions), -1)
    a = jnp.take_along_axis(a, order[..., None], axis=1)
    return a, (present, positions), {"lengths": jnp.sum(present, axis=-1),
                                     "positions": positions}
