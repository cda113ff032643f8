"""Pure, jittable pieces of bucketed hard removal (DESIGN.md §5 hard removal, §7).

A batch is a set of rows padded to one width W. Each row carries its hidden states
packed to the front: the first `n[b]` of the W slots hold its kept tokens in original
order, and the rest is padding that no attention, score or keep decision ever sees.

Shapes: x (B, W, H) float, n (B,) int32.

Every function here is keyed by its (B, W) input shape alone: the layer and predictor
params are arguments, and a width change never happens inside a function. Instead a
selection returns its packed output pre-sliced at every bucket width <= W
(`Selection.prefixes`), so the host, having read the largest survivor count, picks the
smallest slice that holds it without compiling a (W_in, W_out) slicing program.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adapler_jax.models.adapler import (PAD_LOG_KEEP, AdapLeRConfig, ContributionPredictor,
                                        masked_log_scores)
from adapler_jax.models.bert import Bert, EncoderConfig, Layer, attention_bias_from_mask
from adapler_jax.models.heads import ClassificationHead

Array = jax.Array


class Selection(NamedTuple):
  """Result of one keep decision over a packed batch of width W.

  prefixes: the packed survivors `x[:, :w]` for each `w` in `prefix_widths(W, widths)`,
    ascending; the last one is the full width W.
  n: (B,) int32 survivors per row ([CLS] included).
  max_n: () int32, the largest survivor count: the one number the host reads.
  scores: (B, W) float32 S~ over each row's tokens entering the layer (0 on padding).
  order: (B, W) int32 packing permutation: slot j of the output holds entering slot
    `order[b, j]`; its first `n[b]` entries locate the survivors (for rationales).
  """

  prefixes: tuple[Array, ...]
  n: Array
  max_n: Array
  scores: Array
  order: Array


def prefix_widths(width: int, widths: Sequence[int]) -> tuple[int, ...]:
  """Bucket widths a batch of `width` can shrink to: those below it, and itself."""
  return tuple(sorted({w for w in widths if w < width} | {width}))


def smallest_holding(count: int, widths: Sequence[int]) -> int:
  """Index of the smallest of the ascending `widths` that is >= `count`."""
  i = bisect.bisect_left(widths, count)
  if i == len(widths):
    raise ValueError(f"{count} tokens do not fit the widths {tuple(widths)}")
  return i


def valid_positions(n: Array, width: int) -> Array:
  """(B, width) bool: True on the first `n[b]` slots of row b."""
  return jnp.arange(width) < n[:, None]


def embed(enc: EncoderConfig, embedding_params, input_ids: Array,
          token_type_ids: Array) -> Array:
  """Embedding lookup: ids (B, W) -> x (B, W, H)."""
  return Bert(enc).apply({"params": {"embeddings": embedding_params}}, input_ids,
                         token_type_ids, method=Bert.embed)


def keep_mask(scores: Array, eta: Array, n: Array) -> Array:
  """Hard keep decision: S~ >= eta / n on each row's present tokens; [CLS] always.

  scores (B, W); eta () float32; n (B,) int32 -> (B, W) bool (False on padding).
  """
  width = scores.shape[1]
  delta = eta / n.astype(jnp.float32)
  keep = (scores >= delta[:, None]) | (jnp.arange(width) == 0)
  return keep & valid_positions(n, width)


def pack(keep: Array, x: Array) -> tuple[Array, Array]:
  """Moves each row's kept tokens to the front, in their original order.

  keep (B, W) bool, x (B, W, H) -> `(x permuted along axis 1, order (B, W) int32)`:
  a stable sort, so slots `[0, sum(keep[b]))` of row b hold its kept tokens.
  """
  order = jnp.argsort(~keep, axis=1, stable=True).astype(jnp.int32)
  return jnp.take_along_axis(x, order[..., None], axis=1), order


def prefixes(widths: Sequence[int], x: Array) -> tuple[Array, ...]:
  """`x[:, :w]` for every bucket width `w` the batch can shrink to, ascending."""
  return tuple(x[:, :w] for w in prefix_widths(x.shape[1], widths))


def select(cfg: AdapLeRConfig, widths: Sequence[int], cp_params, eta: Array, x: Array,
           n: Array) -> Selection:
  """Scores the tokens present, decides which stay, packs the survivors.

  Args:
    cfg: model shape. widths: the engine's ascending bucket widths (static).
    cp_params: params of one `ContributionPredictor`. eta: () float32 cutoff multiplier.
    x (B, W, H), n (B,): the packed batch entering the layer.
  """
  width = x.shape[1]
  logits = ContributionPredictor(cfg.cp_hidden, cfg.encoder.compute_dtype).apply(
      {"params": cp_params}, x)
  log_keep = jnp.where(valid_positions(n, width), 0.0, PAD_LOG_KEEP)
  scores = jnp.exp(masked_log_scores(logits, log_keep))
  keep = keep_mask(scores, eta, n)
  x, order = pack(keep, x)
  new_n = jnp.sum(keep, axis=1, dtype=jnp.int32)
  return Selection(prefixes(widths, x), new_n, jnp.max(new_n), scores, order)


def _row_chunks(total: int, rows: int) -> int:
  """How many equal chunks of about `rows` (never under half) split `total` rows; 1: none."""
  for count in range(-(-total // rows), total // max(1, rows // 2) + 1):
    if total % count == 0:
      return count
  return 1


def feed_forward(enc: EncoderConfig, layer_params, x: Array,
                 chunk_rows: int | None = None) -> Array:
  """A layer's feed-forward block on x (B, W, H), `chunk_rows` token rows at a time.

  The block is position-wise, so chunking changes no value. On CPU it keeps the
  (rows, intermediate) activation in cache: at 32 x 128 tokens of MiniLM the block runs
  about 1.4x faster in chunks of 512 rows than whole (`bench/attention.py --ffn`).
  """
  apply = lambda t: Layer(enc).apply({"params": layer_params}, t, method=Layer.feed_forward)
  total = x.shape[0] * x.shape[1]
  count = 1 if chunk_rows is None or total <= chunk_rows else _row_chunks(total, chunk_rows)
  if count == 1:
    return apply(x)
  chunks = x.reshape(count, total // count, x.shape[-1])
  return jax.lax.map(apply, chunks).reshape(x.shape)


def run_layer(enc: EncoderConfig, layer_params, x: Array, n: Array,
              chunk_rows: int | None = None) -> Array:
  """One encoder layer over each row's first `n[b]` tokens (padding masked out).

  `chunk_rows`: see `feed_forward`.
  """
  bias = attention_bias_from_mask(valid_positions(n, x.shape[1]))
  x = Layer(enc).apply({"params": layer_params}, x, bias, method=Layer.attend)
  return feed_forward(enc, layer_params, x, chunk_rows)


def layer_then_select(cfg: AdapLeRConfig, widths: Sequence[int], layer_params, cp_params,
                      eta: Array, x: Array, n: Array, *,
                      chunk_rows: int | None = None) -> Selection:
  """Layer l on the packed batch, then the keep decision of layer l + 1.

  After the last layer, pass `eta = 0`: every present token stays (S~ >= 0), the
  order is unchanged and [CLS] stays in slot 0, so the same compiled function serves
  every layer. `chunk_rows`: see `feed_forward`.
  """
  x = run_layer(cfg.encoder, layer_params, x, n, chunk_rows)
  return select(cfg, widths, cp_params, eta, x, n)


def head(cfg: AdapLeRConfig, head_params, x: Array) -> Array:
  """Classifier on slot 0 ([CLS]): x (B, W, H) -> logits (B, C) float32."""
  return ClassificationHead(cfg.encoder, cfg.num_labels).apply({"params": head_params}, x)


def take_rows(widths: Sequence[int], x: Array, n: Array, rows: Array):
  """Rows `rows` (R,) of a packed batch: `(prefixes of the R rows, n (R,))`."""
  return prefixes(widths, x[rows]), n[rows]


def full_forward(enc: EncoderConfig, num_labels: int, params, input_ids: Array,
                 token_type_ids: Array, n: Array, *, chunk_rows: int | None = None) -> Array:
  """Full-length classifier: every layer on all `n[b]` real tokens -> logits (B, C).

  The same maths as `SequenceClassifier` (params `{"bert", "head"}`), layer by layer so
  that the feed-forward blocks can run in `chunk_rows` chunks (see `feed_forward`).
  """
  bert = params["bert"]
  x = embed(enc, bert["embeddings"], input_ids, token_type_ids)
  for l in range(enc.num_layers):
    x = run_layer(enc, bert["encoder"][f"layer_{l}"], x, n, chunk_rows)
  return ClassificationHead(enc, num_labels).apply({"params": params["head"]}, x)
