"""Phase 2: gradient x input saliency of the gold logits at the embedding output: the gold
class's, or for span QA the gold start's plus the gold end's."""

from __future__ import annotations

import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from adapler_jax.data import TokenizedDataset
from adapler_jax.errors import InputError, UserError
from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import Head, Span, as_head
from adapler_jax.train import parallel


def gold_logit_sum(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Sum over the batch of the gold logits: the gold class's (logits (B, C), labels (B,)), or
  the gold start's plus the gold end's (span logits (B, T, 2), labels (B, 2) positions).
  Rows are independent, so its gradient splits by row."""
  if logits.ndim == 3:
    return jnp.sum(jnp.take_along_axis(logits, labels[:, None, :], axis=1))
  return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=-1))


def saliency_batch(encoder: EncoderConfig, head: int | Head, params: dict,
                   batch: dict) -> jax.Array:
  """Per-token saliency `|| (d logit_gold / d h0) * h0 ||_2` of a batch.

  Args:
    head: a label count (classification) or a `models.heads` head (`Span()`: span QA).
    batch: `input_ids`, `token_type_ids` int (B, N); `attention_mask` bool (B, N);
      `labels` (B,), or (B, 2) start and end positions for span QA.
  Returns:
    (B, N) float32, 0 on padding. Rows are independent (the gradient of the summed gold
    logits splits by row).
  """
  head = as_head(head)
  labels = batch["labels"]
  if not isinstance(labels, jax.core.Tracer) and np.size(labels):  # concrete: checkable.
    bound = np.shape(batch["input_ids"])[-1] if isinstance(head, Span) else head.num_labels
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= bound:
      what = "positions of the window" if isinstance(head, Span) else "classes"
      raise InputError(f"labels hold {labels.min() if labels.min() < 0 else labels.max()}, "
                       f"outside the {bound} {what}; the gold logit of a label out of range "
                       "is no logit (its saliency would be all zero)")
  model = head.model(encoder)
  variables = {"params": params}
  h0 = model.apply(variables, batch["input_ids"], batch["token_type_ids"],
                   method=lambda m, i, t: m.bert.embed(i, t))
  bias = attention_bias_from_mask(batch["attention_mask"])

  def gold_logits(h):
    logits = model.apply(variables, h, bias, method=type(model).logits_from_embeddings)
    return gold_logit_sum(logits, batch["labels"])

  grad = jax.grad(gold_logits)(h0)
  sal = jnp.linalg.norm((grad * h0).astype(jnp.float32), axis=-1)
  return jnp.where(batch["attention_mask"], sal, 0.0)


def compute_saliency(encoder: EncoderConfig, head: int | Head, params: dict,
                     data: TokenizedDataset, batch_size: int = 64,
                     progress=None, mesh: Mesh | None = None) -> np.ndarray:
  """(E, max_length) saliency of every example, rows in dataset order.

  With a `mesh`, each batch is split over its devices (`batch_size` must divide by their
  number) and params are replicated; every process gets every row.
  """
  out = np.zeros(data.input_ids.shape, np.float32)
  keys = ("input_ids", "token_type_ids", "attention_mask", "labels")
  for rows, sal in parallel.map_eval_batches(saliency_batch, encoder, head, params, data,
                                             batch_size, keys, mesh):
    out[rows, :sal.shape[1]] = sal
    if progress is not None:
      progress.update(len(rows))
  return out


def normalise(saliency: np.ndarray) -> np.ndarray:
  """Each row scaled to sum 1 (rows of zeros stay zero)."""
  total = saliency.sum(axis=1, keepdims=True)
  return np.divide(saliency, total, out=np.zeros_like(saliency), where=total > 0)


def save(path: Path, data: TokenizedDataset, saliency: np.ndarray, steps: list[int],
         source: str = "") -> None:
  """Stores saliency keyed by example id, with the token ids it belongs to and the
  `source` (a fingerprint) of the checkpoints it came from."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez_compressed(tmp, ids=np.asarray(data.ids), input_ids=data.input_ids,
                      saliency=saliency.astype(np.float32), checkpoint_steps=np.asarray(steps),
                      source=np.asarray(source))
  tmp.replace(path)


def _read(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The arrays `names` stored at `path` (those it has); one-line `UserError` when the file
  is damaged."""
  try:
    with np.load(path) as stored:
      return {k: stored[k] for k in names if k in stored}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path} is damaged ({e}); rerun --phase saliency") from None


def source(path: Path) -> str | None:
  """The `source` stored with the saliency at `path`; None if there is none (or the file is
  damaged: `run_all` then computes it again)."""
  if not path.exists():
    return None
  try:
    stored = _read(path, ("source",))
  except UserError:
    return None
  return str(stored["source"]) if "source" in stored else None


def load_for(path: Path, data: TokenizedDataset) -> np.ndarray:
  """Saliency rows aligned to `data` (by example id), checked against its token ids."""
  if not path.exists():
    raise UserError(f"{path} is missing; run --phase saliency first")
  stored = _read(path, ("ids", "input_ids", "saliency"))
  row_of = {i: r for r, i in enumerate(stored["ids"].tolist())}
  missing = [i for i in data.ids if i not in row_of]
  if missing:
    raise UserError(f"{path} has no saliency for {len(missing)} training examples (e.g. "
                    f"{missing[0]!r}); rerun --phase saliency with this data config")
  rows = np.asarray([row_of[i] for i in data.ids])
  if (stored["input_ids"].shape[1] != data.max_length
      or not np.array_equal(stored["input_ids"][rows], data.input_ids)):
    raise UserError(f"{path} was computed for other token ids (tokenizer or max_length "
                    "changed); rerun --phase saliency")
  return stored["saliency"][rows]
