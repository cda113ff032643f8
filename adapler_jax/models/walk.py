"""The encoder's one layer-wise walk, with token reduction as a pluggable policy.

Every forward of the library goes through `walk`: the plain encoder, AdapLeR's soft
(training) and hard (inference) removal, the batched engines, the rationale baselines and
the Length-Adaptive Transformer. A layer is split where the two methods decide::

    x, ctx = policy.before_layer(l, x, ctx)             # AdapLeR: contribution scores, keep
    a, probs = layer.attend(x, policy.bias(ctx))        # attention sub-layer (post-LN)
    a, ctx = policy.after_attention(l, a, probs, ctx)   # LAT: attention significance, keep
    y = layer.feed_forward(a)
    x, ctx = policy.after_layer(l, x, y, ctx)           # e.g. masked: dropped keep x

Drop-and-restore (`walk(..., restore=True)`, for heads that read every position): a token
dropped before layer i keeps its layer i-1 output (the embedding output if i = 0) and takes
it back to its original position in the final (..., T, H) sequence; dropped vectors pass
through no later layer. A policy whose hidden states keep every position in place (masked
selection, soft removal) is its own restore; one that removes tokens names the original
position of each slot (`Policy.positions`) and `walk` scatters each layer's output back.

A policy is a plain Python object (static under jit); its per-walk state `ctx` is a pytree
(keep weights, masks, positions, lengths: whatever the policy needs). Each hook returns,
besides its outputs, a dict of per-layer records; `walk` stacks them into one trace dict
`{name: (L, ...)}`, the single convention for intermediates (scores, keep weights, lengths,
attention received).

A `layer` is anything with `attend(x, bias, *, deterministic, return_probs)` and
`feed_forward(x, *, deterministic)`: a `Layer` bound inside a Flax module (training), or a
`ParamLayer` that applies a `Layer` to its params (pure inference functions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Records = dict[str, Array]


class Policy:
  """No reduction: every token runs every layer. Subclasses override the hooks they need.

  `ctx` here is the additive attention bias itself, (B, N) or (B, N, N).
  """

  wants_probs: bool | str = False  # whether `after_attention` reads attention probabilities.

  def needs_probs(self, l: int) -> bool | str:
    """Whether layer l's attention returns its probabilities (see `Layer.attend`)."""
    return self.wants_probs

  def bias(self, ctx) -> Array:
    return ctx

  def before_layer(self, l: int, x: Array, ctx) -> tuple[Array, Any, Records]:
    return x, ctx, {}

  def after_attention(self, l: int, a: Array, probs: Array | None, ctx
                      ) -> tuple[Array, Any, Records]:
    return a, ctx, {}

  def after_layer(self, l: int, x: Array, y: Array, ctx) -> tuple[Array, Any]:
    return y, ctx

  def positions(self, ctx) -> Array | None:
    """The original position of each slot of the hidden states, (B, w) int, -1 on empty
    slots; None when the hidden states keep every token at its own position (a dropped
    token's slot holds its last vector), so that they are their own restore."""
    return None


FULL = Policy()


def layer_step(layer, l: int, x: Array, ctx, policy: Policy = FULL, *,
               deterministic: bool = True, layer_on: Array | None = None
               ) -> tuple[Array, Any, Records]:
  """One layer of the walk: the policy's decisions around attention and feed-forward.

  `layer_on` (a traced bool) skips the layer (LayerDrop): hidden states and the policy's
  state pass through unchanged, and the layer reduces nothing (its records still describe
  the computation that was discarded).
  """
  x_in, ctx_in = x, ctx
  x, ctx, records = policy.before_layer(l, x, ctx)
  a, probs = layer.attend(x, policy.bias(ctx), deterministic=deterministic,
                          return_probs=policy.needs_probs(l))
  a, ctx, more = policy.after_attention(l, a, probs, ctx)
  y = layer.feed_forward(a, deterministic=deterministic)
  x, ctx = policy.after_layer(l, x, y, ctx)
  if layer_on is not None:
    x, ctx = jax.tree.map(lambda new, old: jnp.where(layer_on, new, old), (x, ctx),
                          (x_in, ctx_in))
  return x, ctx, {**records, **more}


def restore_step(restored: Array, x: Array, positions: Array | None,
                 examples: Array | None = None) -> Array:
  """Drop-and-restore after a layer: x's slots (R, w, H) written into the restored
  sequences (E, T, H) at their original `positions` (R, w), -1 writing nothing.

  `examples` (R, w): the sequence each slot belongs to (default: slot row r is sequence r;
  packed grids hold several). `positions` None (x keeps every position in place): x itself.
  """
  if positions is None:
    return x
  if examples is None:
    examples = jnp.broadcast_to(jnp.arange(positions.shape[0])[:, None], positions.shape)
  real = positions >= 0
  rows = jnp.where(real, examples, restored.shape[0])
  slots = jnp.where(real, positions, 0)
  return restored.at[rows, slots].set(x.astype(restored.dtype), mode="drop")


def walk(layers: Sequence, x: Array, ctx, policy: Policy = FULL, *,
         deterministic: bool = True, layer_on: Array | None = None,
         hidden_states: bool = False, restore: bool = False) -> tuple[Array, Any, Records]:
  """Runs `layers` in order over x (..., N, H) under `policy`: the library's layer loop.

  Args:
    layers: the encoder's layers (see the module docstring).
    x: the embedding output h^0.
    ctx: the policy's initial state (for `FULL`, the attention bias).
    policy: the reduction policy.
    deterministic: False enables dropout.
    layer_on: optional (L,) bool; False skips layer l (LayerDrop).
    hidden_states: also record every layer's output as `hidden_states` (h^1..h^L).
    restore: drop-and-restore (module docstring): return the final sequence at the input's
      positions, each dropped token holding the output of the last layer it ran.
  Returns:
    The last hidden states (with `restore`, the restored (..., T, H) sequence), the
    policy's final state, and the trace: each record stacked over layers on axis 0.
  """
  trace: list[Records] = []
  restored = x
  for l, layer in enumerate(layers):
    on = None if layer_on is None else layer_on[l]
    x, ctx, records = layer_step(layer, l, x, ctx, policy, deterministic=deterministic,
                                 layer_on=on)
    if restore:
      restored = restore_step(restored, x, policy.positions(ctx))
    if hidden_states:
      records = {**records, "hidden_states": x}
    trace.append(records)
  return (restored if restore else x), ctx, stack(trace)


def stack(trace: list[Records]) -> Records:
  """Per-layer record dicts -> one dict of arrays stacked on axis 0 (lists if ragged)."""
  if not trace or not trace[0]:
    return {}
  out = {}
  for name in trace[0]:
    values = [r[name] for r in trace]
    same = all(getattr(v, "shape", None) == getattr(values[0], "shape", None) for v in values)
    out[name] = jnp.stack(values) if same else values
  return out


@dataclasses.dataclass(frozen=True)
class ParamLayer:
  """A `Layer` applied to its params: the layer interface for pure functions at inference
  (no dropout; training walks the Flax modules).

  `chunk_rows` runs the feed-forward block that many token rows at a time (it is
  position-wise, so values do not change). On CPU that keeps the (rows, intermediate)
  activation in cache: at 32 x 128 tokens of MiniLM the block runs about 1.4x faster in
  chunks of 512 rows than whole (`bench/attention.py --ffn`).
  """

  cfg: Any  # EncoderConfig
  params: Any
  chunk_rows: int | None = None

  def _apply(self, *args, method, **kwargs):
    from adapler_jax.models.bert import Layer  # pylint: disable=g-import-not-at-top
    return Layer(self.cfg).apply({"params": self.params}, *args, method=method, **kwargs)

  def attend(self, x: Array, bias: Array, *, deterministic: bool = True,
             return_probs: bool = False):
    from adapler_jax.models.bert import Layer  # pylint: disable=g-import-not-at-top
    return self._apply(x, bias, deterministic=deterministic, return_probs=return_probs,
                       method=Layer.attend)

  def feed_forward(self, x: Array, *, deterministic: bool = True) -> Array:
    from adapler_jax.models.bert import Layer  # pylint: disable=g-import-not-at-top
    apply = lambda t: self._apply(t, deterministic=deterministic, method=Layer.feed_forward)
    total = x.shape[0] * x.shape[1] if x.ndim > 2 else x.shape[0]
    count = (1 if self.chunk_rows is None or total <= self.chunk_rows
             else row_chunks(total, self.chunk_rows))
    if count == 1:
      return apply(x)
    chunks = x.reshape(count, total // count, x.shape[-1])
    return jax.lax.map(apply, chunks).reshape(x.shape)


def row_chunks(total: int, rows: int) -> int:
  """How many equal chunks of about `rows` (never under half) split `total` rows; 1: none."""
  for count in range(-(-total // rows), total // max(1, rows // 2) + 1):
    if total % count == 0:
      return count
  return 1


def param_layers(cfg, bert_params, *, chunk_rows: int | None = None) -> list[ParamLayer]:
  """The layers of a `Bert` params tree, in order, as `ParamLayer`s."""
  from adapler_jax.models.bert import encoder_layer_params  # pylint: disable=g-import-not-at-top
  return [ParamLayer(cfg, p, chunk_rows) for p in encoder_layer_params(cfg, bert_params)]
