"""Task metrics over predictions: accuracy, and F1 of the positive class (MRPC)."""

from __future__ import annotations

import numpy as np

from adapler_jax.errors import DataError


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
  """F1 of class `positive`; 0 when it is never predicted nor present."""
  p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
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
