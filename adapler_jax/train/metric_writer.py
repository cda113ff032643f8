"""Metrics to JSON lines (always) and TensorBoard event files (when tensorboardX is present)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from adapler_jax.files import atomic_write_text


def _plain(value: Any) -> Any:
  value = np.asarray(jax.device_get(value))
  return value.item() if value.ndim == 0 else value.tolist()


def _kept(line: str, phases: tuple[str, ...], step: int) -> bool:
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return False
  return not (row.get("phase") in phases and row.get("step", 0) > step)


class MetricWriter:
  """Appends `{"phase", "step", "time", **metrics}` rows to `workdir/metrics.jsonl`.

  Scalars also go to TensorBoard under `phase/name`; vectors (per-layer values) as
  `phase/name/i`. Only process 0 writes, and nothing is created before the first row.
  """

  def __init__(self, workdir: str | os.PathLike[str]):
    self.active = jax.process_index() == 0
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, "metrics.jsonl")
    self._tb = None
    self._opened = False

  def _open(self) -> None:
    self._opened = True
    os.makedirs(self.workdir, exist_ok=True)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
    except ImportError:
      pass

  def rewind(self, phases: str | tuple[str, ...], step: int) -> None:
    """Drops the rows of `phases` after `step` (and any line cut short by a kill): a phase
    resumed from the checkpoint of `step` writes them again, so the file reads as one run."""
    if not self.active or not os.path.exists(self.path):
      return
    phases = (phases,) if isinstance(phases, str) else phases
    with open(self.path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    kept = [l for l in lines if _kept(l, phases, step)]
    if len(kept) < len(lines):
      atomic_write_text(self.path, "".join(l + "\n" for l in kept))

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> dict:
    row = {"phase": phase, "step": int(step), "time": time.time(),
           **{k: _plain(v) for k, v in metrics.items()}}
    if not self.active:
      return row
    if not self._opened:
      self._open()
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
