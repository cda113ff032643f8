"""Losses: cross-entropy (classification and span QA), AdapLeR's L_CP (Eq. 6-7) and
L_LENGTH (Eq. 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import xlogy

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
  """Mean softmax cross-entropy; `weights` (B,) masks rows out of the mean."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return losses.mean()
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def span_cross_entropy(logits: Array, starts: Array, ends: Array,
                       weights: Array | None = None) -> Array:
  """Span QA loss, (CE(start) + CE(end)) / 2 over positions: logits (B, T, 2) ([..., 0]
  start, [..., 1] end), gold `starts`/`ends` (B,) token positions ([CLS] = 0 when a window
  lacks the answer); `weights` (B,) masks rows out of the mean."""
  start = cross_entropy(logits[..., 0], starts, weights)
  end = cross_entropy(logits[..., 1], ends, weights)
  return (start + end) / 2


def task_loss(head, logits: Array, batch: dict, weights: Array | None = None) -> Array:
  """The task's loss for a `models.heads` head: cross-entropy on `labels`, or for a span
  head `span_cross_entropy` on `start_positions` and `end_positions`."""
  if head.restore:
    return span_cross_entropy(logits, batch["start_positions"], batch["end_positions"],
                              weights)
  return cross_entropy(logits, batch["labels"], weights)


def task_accuracy(head, logits: Array, batch: dict) -> Array:
  """Share of right labels (argmax class); for a span head, of right start and end positions
  (argmax over positions)."""
  if head.restore:
    gold = jnp.stack([batch["start_positions"], batch["end_positions"]], axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-2) == gold)
  return jnp.mean(jnp.argmax(logits, -1) == batch["labels"])


def cp_targets(saliency: Array, keep_in: Array, theta: Array, keep_cls: bool = True) -> Array:
  """Eq. 7: saliency over the tokens still kept, [CLS] amplified by theta, renormalised.

  Args:
    saliency: (B, N) non-negative, 0 on padding.
    keep_in: (L, B, N) keep weights at each layer's input (treated as constants).
    theta: (L,) [CLS] multipliers.
    keep_cls: False for heads that do not read [CLS] (span QA): removal does not force it
      and its target is its saliency like any token's, theta unused.
  Returns:
    (L, B, N) target distributions.
  """
  s = saliency[None] * jax.lax.stop_gradient(keep_in)
  if keep_cls:
    s = s * jnp.where(jnp.arange(s.shape[-1]) == 0, theta[:, None, None], 1.0)
  return s / jnp.maximum(jnp.sum(s, axis=-1, keepdims=True), 1e-12)


def cp_loss(log_scores: Array, targets: Array, weights: Array | None = None) -> Array:
  """Eq. 6: sum over layers of (L - l) * KL(target || S~), mean over the batch.

  Args:
    log_scores: (L, B, N) log S~ from the predictors.
    targets: (L, B, N) from `cp_targets`.
    weights: optional (B,) row weights.
  """
  num_layers = log_scores.shape[0]
  kl = jnp.sum(xlogy(targets, targets) - targets * log_scores, axis=-1)  # (L, B)
  layer_weight = (num_layers - jnp.arange(num_layers, dtype=jnp.float32))[:, None]
  per_example = jnp.sum(layer_weight * kl, axis=0)
  return _mean(per_example, weights)


def length_loss(lengths: Array, weights: Array | None = None) -> Array:
  """Eq. 8: the soft kept length summed over layers, mean over the batch. (L, B) -> ()."""
  return _mean(jnp.sum(lengths, axis=0), weights)


def _mean(x: Array, weights: Array | None) -> Array:
  if weights is None:
    return x.mean()
  return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1.0)
