"""The Length-Adaptive Transformer's forward of a batch as one compiled program per (rows,
input width): the layer widths are data, not shapes.

`models.lat.gather_forward` takes each layer's width as a static argument, so every new
length config, and every batch whose lengths plan other widths, compiles a new program.
Here the hidden states keep the input's shape (E, W, H), kept tokens at the front of each
row, and each layer runs two `lax.switch`es over the static candidate widths `widths`::

  attention at the width entering the layer (scoring, and the significance order, only
  where the layer selects) -> feed-forward at the width the layer keeps

`plan` (L,) names each layer's width (an index into `widths`) and `selects` (L,) whether
it drops any token; both come from the lengths alone (`LengthEngine.plan`), and go in
beside `counts` as arrays. A selecting layer orders every present token by significance
and keeps the first `counts[l]` of them: the rule of `GatherSelection`, whose top-k over
the kept width takes the same prefix. Slots past a layer's width hold no token.
Drop-and-restore (span heads) writes each layer's slots back to their original positions
(`walk.restore_step`), as `walk` does for the static path.
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


def _attend_branch(enc: EncoderConfig, flags: SelectionFlags, width: int, select: bool,
                   chunk_rows: int | None):
  """Attention over the first `width` slots; with `select`, the significance order and
  the keep counts (the rest of the row stays empty)."""

  def run(x, present, positions, layer_params, count):
    full = x.shape[1]
    layer = walk.ParamLayer(enc, layer_params, chunk_rows)
    ctx = (present[:, :width], positions[:, :width])
    policy = GatherSelection(count[None], (width,), flags, (select,))
    a, probs = layer.attend(x[:, :width], policy.bias(ctx), return_probs=select)
    a, (present, positions), _ = policy.after_attention(0, a, probs, ctx)
    return _pad_to(a, full, 0), _pad_to(present, full, False), _pad_to(positions, full, -1)

  return run


def _feed_forward_branch(enc: EncoderConfig, width: int, chunk_rows: int | None):
  """The feed-forward block over the first `width` slots, written over them."""

  def run(a, layer_params):
    y = walk.ParamLayer(enc, layer_params, chunk_rows).feed_forward(a[:, :width])
    return jax.lax.dynamic_update_slice(a, y.astype(a.dtype), (0, 0, 0))

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
      a layer drops nothing (it then skips scoring).
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
  attend = [_attend_branch(enc, flags, w, s, chunk_rows) for w in widths for s in (False, True)]
  feed_forward = [_feed_forward_branch(enc, w, chunk_rows) for w in widths]
  layer_params = encoder_layer_params(enc, bert)
  restored = x if head.restore else None
  entering = jnp.int32(len(widths) - 1)
  trace = []
  for l, lp in enumerate(layer_params):
    branch = 2 * entering + selects[l].astype(jnp.int32)
    a, present, positions = jax.lax.switch(branch, attend, x, present, positions, lp,
                                           counts[l])
    x = jax.lax.switch(plan[l], feed_forward, a, lp)
    if restored is not None:
      restored = walk.restore_step(restored, x, positions)
    trace.append(positions)
    entering = plan[l]
  logits = head.module(enc).apply({"params": params["head"]},
                                  x if restored is None else restored)
  return logits, {"positions": jnp.stack(trace)}
