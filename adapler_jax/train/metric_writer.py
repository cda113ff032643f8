"""Metrics to JSON lines (always) and TensorBoard event files (when tensorboardX is present)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


def _plain(value: Any) -> Any:
  value = np.asarray(jax.device_get(value))
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
  """Appends `{"phase", "step", "time", **metrics}` rows to `workdir/metrics.jsonl`.

  Scalars also go to TensorBoard under `phase/name`; vectors (per-layer values) as
  `phase/name/i`. Only process 0 writes.
  """

  def __init__(self, workdir: str | os.PathLike[str]):
    self.active = jax.process_index() == 0
    self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    self._tb = None
    if self.active:
      os.makedirs(os.fspath(workdir), exist_ok=True)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))
      except ImportError:
        pass

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> dict:
    row = {"phase": phase, "step": int(step), "time": time.time(),
           **{k: _plain(v) for k, v in metrics.items()}}
    if not self.active:
      return row
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k in ("phase", "step", "time"):
          continue
        for name, x in ([(k, v)] if np.ndim(v) == 0 else
                        [(f"{k}/{i}", x) for i, x in enumerate(np.ravel(v))]):
          if isinstance(x, (int, float)):
            self._tb.add_scalar(f"{phase}/{name}", x, int(step))
      self._tb.flush()
    return row

  def close(self):
    if self._tb is not None:
      self._tb.close()
