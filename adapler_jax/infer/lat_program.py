"""The Length-Adaptive Transformer's forward of a batch as one compiled program per (rows,
input width): the layer widths are data, not shapes.

`models.lat.gather_forward` takes each layer's width as a static argument, so every new
length config, and every batch whose lengths plan other widths, compiles a new program.
Here the hidden states keep the input's shape (E, W, H), kept tokens at the front of each
row. The width layer l keeps is the width layer l + 1 attends at, so after layer 0's
attention (at W) each layer is one `lax.switch` over the static candidate `widths`::

  layer l's feed-forward block, then layer l + 1's attention and selection, both at the
  width layer l keeps                              (the last layer: its feed-forward only)

`plan` (L,) names each layer's width (an index into `widths`) and `selects` (L,) whether
it drops any token; both come from the lengths alone (`LengthEngine.plan`), and go in
beside `counts` as arrays. A selecting layer orders every present token by significance
and keeps the first `counts[l]` of them: the rule of `GatherSelection`, whose top-k over
the kept width takes the same prefix, and a row it drops nothing from keeps its order; a
layer that drops nothing leaves its slots as they are. So a row's order never depends on its
batch. Slots past a layer's width hold no token. Drop-and-restore (span heads) writes each
layer's slots back to their original positions (`walk.restore_step`), as `walk` does for
the static path.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from adapler_jax.models import walk
from adapler_jax.models.bert import EncoderConfig, embed, encoder_layer_params
from adapler_jax.models.heads import Head
from adapler_jax.models.lat import check_flags
from adapler_jax.reduce.significance import GatherSelection, SelectionFlags

Array = jax.Array


def _pad_to(a: Array, width: int, fill) -> Array:
  """(E, w, ...) -> (E, width, ...), `fill` in the new slots."""
  pad = [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
  return jnp.pad(a, pad, constant_values=fill)


def _attend(enc: EncoderConfig, flags: SelectionFlags, chunk_rows: int | None, x, present,
            positions, layer_params, count, select):
  """Attention over all of x's slots (E, w, H); where `select` (a traced bool), the kept
  tokens in significance order at the front (`GatherSelection`'s rule: a row that keeps
  every token keeps its order), else the slots as they were."""
  layer = walk.ParamLayer(enc, layer_params, chunk_rows)
  ctx = (present, positions)
  policy = GatherSelection(count[None], (x.shape[1],), flags)
  a, probs = layer.attend(x, policy.bias(ctx), return_probs=True)
  chosen, (kept, kept_positions), _ = policy.after_attention(0, a, probs, ctx)
  pick = lambda new, old: jnp.where(select, new, old)
  return pick(chosen, a), pick(kept, present), pick(kept_positions, positions)


def _step_branch(enc: EncoderConfig, flags: SelectionFlags, width: int, restore: bool,
                 chunk_rows: int | None):
  """Layer l's feed-forward block, then layer l + 1's attention, both over the first
  `width` slots (the width layer l keeps is the width layer l + 1 enters at)."""

  def run(a, present, positions, restored, ffn_params, attend_params, count, select):
    full = a.shape[1]
    y = walk.ParamLayer(enc, ffn_params, chunk_rows).feed_forward(a[:, :width])
    present, positions = present[:, :width], positions[:, :width]
    if restore:
      restored = walk.restore_step(restored, y, positions)
    a, present, positions = _attend(enc, flags, chunk_rows, y, present, positions,
                                    attend_params, count, select)
    return (_pad_to(a, full, 0), _pad_to(present, full, False), _pad_to(positions, full, -1),
            restored)

  return run


def _last_branch(enc: EncoderConfig, width: int, restore: bool, chunk_rows: int | None):
  """The last layer's feed-forward block over the first `width` slots."""

  def run(a, positions, restored, ffn_params):
    y = walk.ParamLayer(enc, ffn_params, chunk_rows).feed_forward(a[:, :width])
    if restore:
      restored = walk.restore_step(restored, y, positions[:, :width])
    return _pad_to(y, a.shape[1], 0), restored

  return run


def forward(enc: EncoderConfig, head: Head, widths: tuple[int, ...], params: dict,
            input_ids: Array, token_type_ids: Array, n: Array, counts: Array, plan: Array,
            selects: Array, *, flags: SelectionFlags = SelectionFlags(),
            chunk_rows: int | None = None):
  """LAT with real token dropping over a padded batch (E, W), `n` (E,) real tokens first.

  Args:
    widths: ascending static candidate widths, the last one W.
    params: the classifier `{"bert", "head"}`.
    counts: (L, E) int tokens kept per layer; plan: (L,) int index into `widths` of each
      layer's width (it must hold the largest real count); selects: (L,) bool, False where
      a layer drops nothing (its slots then stay in order).
  Returns:
    logits (E, C), or (E, W, 2) over the restored sequence for a span head, and the trace
    `positions` (L, E, W): the original position of each slot after layer l's selection,
    -1 on empty slots.
  """
  check_flags(head, flags)
  width = input_ids.shape[1]
  if widths[-1] != width:
    raise ValueError(f"the last candidate width must be the input's {width}, got {widths}")
  bert = params["bert"]
  x = embed(enc, bert["embeddings"], input_ids, token_type_ids)
  present, positions = GatherSelection.initial(jnp.arange(width) < n[:, None])
  layer_params = encoder_layer_params(enc, bert)
  restored = x if head.restore else None
  # Layer 0 attends at the input width; then one switch per layer, on the width it keeps.
  a, present, positions = _attend(enc, flags, chunk_rows, x, present, positions,
                                  layer_params[0], counts[0], selects[0])
  trace = [positions]
  steps = [_step_branch(enc, flags, w, head.restore, chunk_rows) for w in widths]
  for l in range(len(layer_params) - 1):
    a, present, positions, restored = jax.lax.switch(
        plan[l], steps, a, present, positions, restored, layer_params[l], layer_params[l + 1],
        counts[l + 1], selects[l + 1])
    trace.append(positions)
  lasts = [_last_branch(enc, w, head.restore, chunk_rows) for w in widths]
  x, restored = jax.lax.switch(plan[-1], lasts, a, positions, restored, layer_params[-1])
  logits = head.module(enc).apply({"params": params["head"]},
                                  x if restored is None else restored)
  return logits, {"positions": jnp.stack(trace)}
