"""Batches of a `TokenizedDataset`: shuffled fixed-shape training batches and length-bucketed
evaluation batches (few distinct shapes, so jitted functions compile a bounded number of times).

Every batch is a dict of numpy arrays: `input_ids`, `token_type_ids` (int32), `attention_mask`
(bool), `labels` (int32) and `index` (int32 rows of the dataset, to key per-example data), plus
the dataset's `row_fields` (e.g. `context_mask` of span features).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from adapler_jax.data.tokenize import TokenizedDataset, valid_mask
from adapler_jax.errors import DataError

Batch = dict[str, np.ndarray]

DEFAULT_BUCKETS: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64, 128, 256, 512)


def bucket_lengths(max_length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
  """Sorted padded widths: the `buckets` below `max_length`, plus `max_length` itself."""
  return tuple(sorted({b for b in buckets if b < max_length} | {max_length}))


def _batch(tok: TokenizedDataset, idx: np.ndarray, width: int) -> Batch:
  batch = {
      "input_ids": tok.input_ids[idx, :width],
      "token_type_ids": tok.token_type_ids[idx, :width],
      "attention_mask": valid_mask(tok.lengths[idx], width),
      "index": idx.astype(np.int32),
  }
  if tok.labels is not None:
    batch["labels"] = tok.labels[idx]
  for name in tok.row_fields:
    rows = getattr(tok, name)[idx]
    batch[name] = rows[:, :width] if rows.ndim > 1 and rows.shape[1] == tok.max_length else rows
  return batch


def num_train_steps(tok: TokenizedDataset, batch_size: int) -> int:
  """Batches per epoch of `train_batches` (the remainder is dropped)."""
  return len(tok) // batch_size


TRAIN_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
SORT_WINDOW = 50  # batches whose rows are sorted together by length when bucketing.


def train_batches(tok: TokenizedDataset, batch_size: int, seed: int, epoch: int, *,
                  num_shards: int = 1, shard_index: int = 0,
                  buckets: Sequence[int] | None = None) -> Iterator[Batch]:
  """Shuffled batches of one epoch; the last partial batch is dropped.

  The order depends only on `(seed, epoch)`. Without `buckets` every batch is
  `(batch_size, max_length)`. With `buckets`, rows are shuffled, sorted by length inside
  windows of `SORT_WINDOW` batches, cut into batches, and the batches shuffled again; each is
  padded to the smallest of `bucket_lengths(max_length, buckets)` holding its longest row, so
  a jitted step compiles once per bucket and pads far less. With `num_shards` > 1 (one shard
  per process), each global batch of `batch_size` rows is split and this process gets part
  `shard_index`.
  """
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by num_shards {num_shards}")
  if tok.labels is None:
    raise DataError(f"{tok.task} train split has no labels; training needs a labelled split")
  steps = num_train_steps(tok, batch_size)
  if steps == 0:
    raise DataError(f"{tok.task} train split: {len(tok)} examples, fewer than one batch of "
                    f"{batch_size}; lower --config.train.batch_size")
  rng = np.random.default_rng((seed, epoch))
  order = rng.permutation(len(tok))[:steps * batch_size]
  widths = np.asarray(bucket_lengths(tok.max_length, buckets or ()))
  if buckets:
    window = SORT_WINDOW * batch_size
    for lo in range(0, len(order), window):
      chunk = order[lo:lo + window]
      order[lo:lo + window] = chunk[np.argsort(tok.lengths[chunk], kind="stable")]
    order = order.reshape(steps, batch_size)[rng.permutation(steps)].reshape(-1)
  per_shard = batch_size // num_shards
  for step in range(steps):
    rows = order[step * batch_size:(step + 1) * batch_size]
    width = int(widths[np.searchsorted(widths, tok.lengths[rows].max())])
    yield _batch(tok, rows[shard_index * per_shard:(shard_index + 1) * per_shard], width)


def eval_batches(tok: TokenizedDataset, batch_size: int,
                 buckets: Sequence[int] = DEFAULT_BUCKETS) -> Iterator[Batch]:
  """Every example once, sorted by length, `batch_size` rows per batch, padded to a bucket.

  Each batch is padded to the smallest of `bucket_lengths(max_length, buckets)` that holds its
  longest example. The last batch is filled up with copies of its last real row; the extra
  bool entry `real` marks the real rows and `index` is -1 on the copies.
  """
  widths = np.asarray(bucket_lengths(tok.max_length, buckets))
  order = np.argsort(tok.lengths, kind="stable")
  for lo in range(0, len(order), batch_size):
    idx = order[lo:lo + batch_size]
    real = np.arange(batch_size) < len(idx)
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
    width = int(widths[np.searchsorted(widths, tok.lengths[idx].max())])
    batch = _batch(tok, idx, width)
    batch["index"] = np.where(real, batch["index"], -1).astype(np.int32)
    batch["real"] = real
    yield batch
