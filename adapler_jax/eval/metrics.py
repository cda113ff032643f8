"""Task metrics over predictions: accuracy, and F1 of the positive class (MRPC); a paired
bootstrap interval for the difference of two systems' per-example scores."""

from __future__ import annotations

import numpy as np

from adapler_jax.errors import DataError


def _paired(a, b, what: str, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """`a` and `b` as two equal, non-empty 1-D arrays: a (n, 1) array against a (n,) one would
  broadcast to (n, n) and score every pair."""
  a, b = np.asarray(a, dtype), np.asarray(b, dtype)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"{what} need two equal, non-empty 1-D arrays, got {a.shape} and "
                     f"{b.shape}")
  return a, b


def _classes(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
  return _paired(predictions, labels, "class predictions (argmax(logits, -1)) and labels")


def softmax(logits) -> np.ndarray:
  """Class probabilities of logits (..., C), in float64."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  p, y = _classes(predictions, labels)
  return float(np.mean(p == y))


def f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
  """F1 of class `positive`; 0 when it is never predicted nor present."""
  p, y = _classes(predictions, labels)
  p, y = p == positive, y == positive
  tp = np.sum(p & y)
  denom = np.sum(p) + np.sum(y)
  return float(2 * tp / denom) if denom else 0.0


METRICS = {"accuracy": accuracy, "f1": f1}


def compute(name: str, predictions: np.ndarray, labels: np.ndarray | None) -> float:
  if labels is None:
    raise DataError(f"the {name} of unlabelled data is undefined; evaluate a labelled split "
                    "(predict unlabelled texts with adapler-predict)")
  if name not in METRICS:
    raise ValueError(f"metric {name!r} is not one of {sorted(METRICS)}")
  return METRICS[name](predictions, labels)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95, at_least: float | None = None,
                     groups: np.ndarray | None = None) -> dict[str, float]:
  """The mean of per-example scores `b - a` and its percentile bootstrap interval: the
  examples are resampled with replacement, the same draw for both systems. With `groups`
  (one label per example, e.g. the article a question is about), whole groups are resampled
  instead (a cluster bootstrap: examples of one group are not independent draws), each
  resample's mean taken over the examples its groups hold. With `at_least`, also the share
  of resamples whose mean difference is at least that."""
  a, b = _paired(a, b, "paired scores", np.float64)
  if resamples < 1 or not 0 < level < 1:
    raise ValueError(f"paired bootstrap needs resamples >= 1 and a level in (0, 1), got "
                     f"{resamples} and {level}")
  diff, rng = b - a, np.random.default_rng(seed)
  if groups is None:
    sums, sizes = diff, np.ones_like(diff)
  else:
    if len(groups) != len(diff):
      raise ValueError(f"{len(groups)} group labels for {len(diff)} paired scores")
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    sums, sizes = np.bincount(index, weights=diff), np.bincount(index).astype(np.float64)
  chunks = [min(1000, resamples - start) for start in range(0, resamples, 1000)]  # bounded memory.
  draws = (rng.integers(0, len(sums), (n, len(sums))) for n in chunks)
  means = np.concatenate([sums[d].sum(axis=1) / sizes[d].sum(axis=1) for d in draws])
  tail = (1 - level) / 2
  low, high = np.quantile(means, [tail, 1 - tail])
  out = {"mean": float(diff.mean()), "low": float(low), "high": float(high), "level": level,
         "resamples": resamples}
  if at_least is not None:
    out["share_at_least"] = float((means >= at_least).mean())
  return out
