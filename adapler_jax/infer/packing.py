"""Pure, jittable pieces of bucketed inference (docs/engine.md).

A grid (rows, width) holds one example per row (unpacked, rows == examples) or several
(packed, fewer rows): `seg` names each slot's example (-1 on padding and dropped
tokens), attention then runs within examples only (`packed_bias`), and the contribution
scores are normalised per example (`decide`). `adapler_jax.infer.program` runs AdapLeR's
layers on such grids; `full_forward` and `packed_full_forward` are the full-length model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adapler_jax.models import bert as bert_lib
from adapler_jax.models import walk
from adapler_jax.models.adapler import AdapLeRConfig, ContributionPredictor
from adapler_jax.models.bert import NEG_INF, EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import ClassificationHead, Head, as_head
from adapler_jax.reduce.adapler import PAD_LOG_KEEP, keep_rule, masked_log_scores

Array = jax.Array


def valid_positions(n: Array, width: int) -> Array:
  """(B, width) bool: True on the first `n[b]` slots of row b."""
  return jnp.arange(width) < n[:, None]


def same_example(seg: Array) -> Array:
  """(rows, width) example ids (-1 padding) -> (rows, width, width) bool: both slots hold
  tokens of one example."""
  return (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0)


def packed_bias(seg: Array) -> Array:
  """Attention bias (rows, width, width) that keeps each example of a packed grid to itself."""
  return jnp.where(same_example(seg), 0.0, NEG_INF).astype(jnp.float32)


def _packed_log_scores(logits: Array, same: Array) -> Array:
  """log S~ per example of a packed grid: `masked_log_scores` over each example's slots."""
  real = jnp.any(same, axis=-1)
  top = jnp.max(jnp.where(same, logits[:, None, :], -jnp.inf), axis=-1)
  shifted = logits - jnp.where(real, top, 0.0)
  total = jnp.sum(jnp.where(same, jnp.exp(shifted)[:, None, :], 0.0), axis=-1)
  log_s = shifted - jnp.log(jnp.where(real, total, 1.0))
  # The renormalisation of `masked_log_scores` (theta_d = 1), for the same rounding.
  denom = jnp.sum(jnp.where(same, jnp.exp(log_s)[:, None, :], 0.0), axis=-1)
  return log_s - jnp.log(jnp.where(real, denom, 1.0))


def decide(cfg: AdapLeRConfig, cp_params, eta: Array, x: Array, seg: Array,
           slot_positions: Array, num_examples: int) -> tuple[Array, Array, Array]:
  """Scores the tokens of a grid and decides which stay: S~ >= eta / n_example, [CLS]
  (original position 0) always when `cfg.keep_cls`. Unpacked, example r is row r; its
  tokens may have gaps (`seg` -1), as packed examples may.

  Returns scores (rows, width), keep (rows, width) bool and counts (E,) int32.
  """
  logits = ContributionPredictor(cfg.cp_hidden, cfg.encoder.compute_dtype).apply(
      {"params": cp_params}, x)
  real = seg >= 0
  if seg.shape[0] == num_examples:  # unpacked: example r is row r.
    n = jnp.sum(real, axis=1, keepdims=True).astype(jnp.float32)
    scores = jnp.exp(masked_log_scores(logits, jnp.where(real, 0.0, PAD_LOG_KEEP)))
    keep = keep_rule(scores, eta, n, (slot_positions == 0) & cfg.keep_cls, real)
    return scores, keep, jnp.sum(keep, axis=1, dtype=jnp.int32)
  same = same_example(seg)
  n = jnp.sum(same, axis=-1).astype(jnp.float32)
  scores = jnp.where(real, jnp.exp(_packed_log_scores(logits, same)), 0.0)
  keep = keep_rule(scores, eta, jnp.maximum(n, 1.0), (slot_positions == 0) & cfg.keep_cls,
                   real)
  example = jnp.where(real, seg, num_examples).reshape(-1)
  counts = jax.ops.segment_sum(keep.reshape(-1).astype(jnp.int32), example,
                               num_segments=num_examples + 1)[:num_examples]
  return scores, keep, counts


def run_layer(enc: EncoderConfig, layer_params, x: Array, bias: Array,
              chunk_rows: int | None = None) -> Array:
  """One encoder layer; `bias` per key (B, W) or per query and key (B, W, W).

  `chunk_rows`: see `walk.ParamLayer`.
  """
  layer = walk.ParamLayer(enc, layer_params, chunk_rows)
  return walk.layer_step(layer, 0, x, bias)[0]


def _encode(enc: EncoderConfig, bert_params, x: Array, bias: Array,
            chunk_rows: int | None) -> Array:
  """Every encoder layer on x under one attention bias."""
  return walk.walk(walk.param_layers(enc, bert_params, chunk_rows=chunk_rows), x, bias)[0]
def full_forward(enc: EncoderConfig, head: int | Head, params, input_ids: Array,
                 token_type_ids: Array, n: Array, *, chunk_rows: int | None = None) -> Array:
  """Full-length model: every layer on all `n[b]` real tokens -> logits (B, C), or span
  logits (B, W, 2) for a span head (`head`: a label count or a `models.heads` head).

  The same maths as `SequenceClassifier` (params `{"bert", "head"}`), layer by layer so
  that the feed-forward blocks can run in `chunk_rows` chunks (see `walk.ParamLayer`).
  """
  bert = params["bert"]
  x = bert_lib.embed(enc, bert["embeddings"], input_ids, token_type_ids)
  bias = attention_bias_from_mask(valid_positions(n, x.shape[1]))
  x = _encode(enc, bert, x, bias, chunk_rows)
  return as_head(head).module(enc).apply({"params": params["head"]}, x)


def packed_full_forward(enc: EncoderConfig, num_labels: int, params, input_ids: Array,
                        token_type_ids: Array, position_ids: Array, seg: Array,
                        cls_slots: Array, *, chunk_rows: int | None = None) -> Array:
  """Full-length classifier on a packed grid: several examples per row, each attending
  only to itself (`seg`), with its own position ids -> logits (E, C).

  Args:
    input_ids, token_type_ids, position_ids, seg: (rows, width) int32, seg -1 on padding.
    cls_slots: (E,) int32 flat slot (row * width + column) of each example's [CLS].
  """
  bert = params["bert"]
  x = bert_lib.embed(enc, bert["embeddings"], input_ids, token_type_ids, position_ids)
  x = _encode(enc, bert, x, packed_bias(seg), chunk_rows)
  cls = jnp.take(x.reshape(-1, x.shape[-1]), cls_slots, axis=0)[:, None, :]
  return ClassificationHead(enc, num_labels).apply({"params": params["head"]}, cls)
