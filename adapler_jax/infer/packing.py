"""Pure, jittable pieces of bucketed hard removal (README, "Batched inference engine").

The batch's tokens live in one flat buffer (N, H), N = batch size x max length, that every
call takes and returns (donated, so updates happen in place). A layer call reads its
tokens into a (rows, width) grid through an index array, runs the layer, decides which
tokens stay, and compacts the survivors to the front of the buffer in slot order. The
host then reads one count per example, plans the next grid (`adapler_jax.infer.layout`)
and builds its indices.

Because the buffer's shape never changes, each function is keyed by its grid shape alone:
(examples, width) for `start`, (rows, width) for `step`, whatever grid came before. A
grid holds one example per row (unpacked, rows == examples) or several (packed, fewer
rows): `seg` names each slot's example (-1 on padding), attention then runs within
examples only, and the contribution scores are normalised per example.

Drop-and-restore (span QA): a second buffer `restored` (E, T, H) holds each example's
sequence at its original positions; every call writes the vectors of the tokens it ran
there (`walk.restore_step`), so a token dropped before layer l keeps its layer l-1 output,
and `finish_restored` runs the head on every position. Classification passes None.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adapler_jax.models import walk
from adapler_jax.models.adapler import AdapLeRConfig, ContributionPredictor
from adapler_jax.models.bert import NEG_INF, Bert, EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import ClassificationHead, Head, as_head
from adapler_jax.reduce.adapler import PAD_LOG_KEEP, keep_rule, masked_log_scores

Array = jax.Array


class Decision(NamedTuple):
  """One keep decision over a grid (rows, width), after the survivors are compacted.

  buffer: (N, H) the token buffer; the survivors fill rows [0, sum(counts)) in slot order.
  positions: (N,) int32 original position of each buffer row, alongside.
  counts: (E,) int32 survivors per example ([CLS] included).
  scores: (rows, width) float32 S~ of each slot's token (0 on padding).
  keep: (rows, width) bool, the decision.
  slot_positions: (rows, width) int32 original position of each slot's token (-1 padding).
  restored: (E, T, H) each example's restored sequence (drop-and-restore), or None.
  """

  buffer: Array
  positions: Array
  counts: Array
  scores: Array
  keep: Array
  slot_positions: Array
  restored: Array | None = None


def valid_positions(n: Array, width: int) -> Array:
  """(B, width) bool: True on the first `n[b]` slots of row b."""
  return jnp.arange(width) < n[:, None]


def embed(enc: EncoderConfig, embedding_params, input_ids: Array, token_type_ids: Array,
          position_ids: Array | None = None) -> Array:
  """Embedding lookup: ids (B, W) -> x (B, W, H); positions 0..W-1 unless given."""
  return Bert(enc).apply({"params": {"embeddings": embedding_params}}, input_ids,
                         token_type_ids, position_ids=position_ids, method=Bert.embed)


def keep_mask(scores: Array, eta: Array, n: Array, keep_cls: bool = True) -> Array:
  """Hard keep decision: S~ >= eta / n on each row's present tokens; [CLS] (slot 0) always
  unless `keep_cls` is False.

  scores (B, W); eta () float32; n (B,) int32 -> (B, W) bool (False on padding).
  """
  width = scores.shape[1]
  return keep_rule(scores, eta, n.astype(jnp.float32)[:, None],
                   (jnp.arange(width) == 0) & keep_cls, valid_positions(n, width))


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
  (original position 0) always when `cfg.keep_cls`.

  Returns scores (rows, width), keep (rows, width) bool and counts (E,) int32.
  """
  logits = ContributionPredictor(cfg.cp_hidden, cfg.encoder.compute_dtype).apply(
      {"params": cp_params}, x)
  real = seg >= 0
  if seg.shape[0] == num_examples:  # unpacked: example r is row r, its tokens first.
    n = jnp.sum(real, axis=1, dtype=jnp.int32)
    scores = jnp.exp(masked_log_scores(logits, jnp.where(real, 0.0, PAD_LOG_KEEP)))
    keep = keep_mask(scores, eta, n, cfg.keep_cls)
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


def compact(buffer: Array, positions: Array, keep: Array, x: Array,
            slot_positions: Array) -> tuple[Array, Array]:
  """Writes the kept slots of a grid, in slot order, to the front of the buffer."""
  flat_keep = keep.reshape(-1)
  order = jnp.argsort(~flat_keep, stable=True)
  size = flat_keep.shape[0]
  buffer = buffer.at[:size].set(x.reshape(size, -1)[order].astype(buffer.dtype))
  positions = positions.at[:size].set(slot_positions.reshape(-1)[order])
  return buffer, positions


def restore(restored: Array | None, x: Array, seg: Array, slot_positions: Array
            ) -> Array | None:
  """Writes a grid's vectors x (rows, width, H) at their examples' original positions in
  the restored sequences (E, T, H); None (no restore) stays None."""
  if restored is None:
    return None
  return walk.restore_step(restored, x, jnp.where(seg >= 0, slot_positions, -1), seg)


def start(cfg: AdapLeRConfig, buffer: Array, positions: Array, embedding_params, cp_params,
          eta: Array, input_ids: Array, token_type_ids: Array, n: Array, *,
          restored: Array | None = None) -> Decision:
  """Embeds a padded batch (E, W) with `n` real tokens per row and takes the keep
  decision before layer 0 (`restored` (E, T, H), if given, gets the embeddings)."""
  num, width = input_ids.shape
  x = embed(cfg.encoder, embedding_params, input_ids, token_type_ids)
  real = valid_positions(n, width)
  seg = jnp.where(real, jnp.arange(num, dtype=jnp.int32)[:, None], -1)
  slot_positions = jnp.where(real, jnp.arange(width, dtype=jnp.int32), -1)
  scores, keep, counts = decide(cfg, cp_params, eta, x, seg, slot_positions, num)
  buffer, positions = compact(buffer, positions, keep, x, slot_positions)
  return Decision(buffer, positions, counts, scores, keep, slot_positions,
                  restore(restored, x, seg, slot_positions))


def step(cfg: AdapLeRConfig, num_examples: int, buffer: Array, positions: Array,
         layer_params, cp_params, eta: Array, idx: Array, seg: Array, *,
         chunk_rows: int | None = None, restored: Array | None = None) -> Decision:
  """Layer l on the grid `idx` reads from the buffer, then the keep decision of layer l + 1.

  Args:
    cfg: model shape. num_examples: E, examples in the batch (static).
    buffer, positions: the token buffer and original positions (`Decision`).
    layer_params, cp_params: params of layer l and of predictor l + 1.
    eta: () cutoff multiplier; after the last layer pass 0: every token stays, in order,
      so the same compiled function serves every layer.
    idx: (rows, width) int32 buffer row of each slot (out of range on padding).
    seg: (rows, width) int32 example of each slot, -1 on padding. With rows == E the grid
      must be padded: example r in row r, its tokens first.
    chunk_rows: see `feed_forward`.
    restored: (E, T, H) restored sequences, which get the layer's outputs; or None.
  """
  x = jnp.take(buffer, idx, axis=0, mode="fill", fill_value=0)
  slot_positions = jnp.take(positions, idx, axis=0, mode="fill", fill_value=-1)
  packed = idx.shape[0] < num_examples
  bias = packed_bias(seg) if packed else attention_bias_from_mask(seg >= 0)
  x = run_layer(cfg.encoder, layer_params, x, bias, chunk_rows)
  restored = restore(restored, x, seg, slot_positions)
  scores, keep, counts = decide(cfg, cp_params, eta, x, seg, slot_positions, num_examples)
  buffer, positions = compact(buffer, positions, keep, x, slot_positions)
  return Decision(buffer, positions, counts, scores, keep, slot_positions, restored)


def compacted_starts(counts: Array, order: Array) -> Array:
  """(E,) first buffer row of each example after a compaction that visited the examples
  in `order` (E,) with `counts` (E,) survivors each."""
  ordered = counts[order]
  return jnp.zeros_like(counts).at[order].set(jnp.cumsum(ordered) - ordered)


def padded_grid(counts: Array, order: Array, width: int, sentinel: int) -> tuple[Array, Array]:
  """The unpacked grid on the device: example e in row e, its `counts[e]` tokens first.

  Returns idx and seg (E, width) as `step` takes them (`layout.gather_indices`).
  """
  num = counts.shape[0]
  slot = jnp.arange(width, dtype=jnp.int32)
  real = slot < counts[:, None]
  idx = jnp.where(real, compacted_starts(counts, order)[:, None] + slot, sentinel)
  seg = jnp.where(real, jnp.arange(num, dtype=jnp.int32)[:, None], -1)
  return idx.astype(jnp.int32), seg


def padded_step(cfg: AdapLeRConfig, width: int, buffer: Array, positions: Array, layer_params,
                cp_params, eta: Array, counts: Array, order: Array, *,
                chunk_rows: int | None = None, restored: Array | None = None) -> Decision:
  """`step` on the unpacked grid of `width`, built on the device from the last decision's
  `counts` and compaction `order`: the host need not read the counts to run it."""
  idx, seg = padded_grid(counts, order, width, buffer.shape[0])
  return step(cfg, counts.shape[0], buffer, positions, layer_params, cp_params, eta, idx, seg,
              chunk_rows=chunk_rows, restored=restored)


def finish(cfg: AdapLeRConfig, head_params, buffer: Array, counts: Array,
           order: Array) -> Array:
  """Classifier on each example's [CLS], the first of its tokens after the last
  compaction (`counts`, `order` as in `compacted_starts`) -> logits (E, C)."""
  x = jnp.take(buffer, compacted_starts(counts, order), axis=0)[:, None, :]
  return ClassificationHead(cfg.encoder, cfg.num_labels).apply({"params": head_params}, x)


def finish_restored(cfg: AdapLeRConfig, head_params, restored: Array) -> Array:
  """The task head on every position of the restored sequences (E, T, H): span logits
  (E, T, 2)."""
  return cfg.task_head.module(cfg.encoder).apply({"params": head_params}, restored)


_row_chunks = walk.row_chunks


def feed_forward(enc: EncoderConfig, layer_params, x: Array,
                 chunk_rows: int | None = None) -> Array:
  """A layer's feed-forward block on x (B, W, H), `chunk_rows` token rows at a time.

  The block is position-wise, so chunking changes no value. On CPU it keeps the
  (rows, intermediate) activation in cache: at 32 x 128 tokens of MiniLM the block runs
  about 1.4x faster in chunks of 512 rows than whole (`bench/attention.py --ffn`).
  """
  return walk.ParamLayer(enc, layer_params, chunk_rows).feed_forward(x)


def run_layer(enc: EncoderConfig, layer_params, x: Array, bias: Array,
              chunk_rows: int | None = None) -> Array:
  """One encoder layer; `bias` per key (B, W) or per query and key (B, W, W).

  `chunk_rows`: see `feed_forward`.
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
  that the feed-forward blocks can run in `chunk_rows` chunks (see `feed_forward`).
  """
  bert = params["bert"]
  x = embed(enc, bert["embeddings"], input_ids, token_type_ids)
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
  x = embed(enc, bert["embeddings"], input_ids, token_type_ids, position_ids)
  x = _encode(enc, bert, x, packed_bias(seg), chunk_rows)
  cls = jnp.take(x.reshape(-1, x.shape[-1]), cls_slots, axis=0)[:, None, :]
  return ClassificationHead(enc, num_labels).apply({"params": params["head"]}, cls)
