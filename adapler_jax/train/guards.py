"""Stops training with one line when a loss or a parameter stops being finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.errors import UserError

LOSSES = ("loss", "ce", "cp", "length")


class NonFiniteError(UserError):
  """Training diverged: a loss or a parameter is NaN or infinite."""


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class FiniteGuard:
  """Checks every step's losses one step late, so the host never waits on the step it just
  dispatched, and the parameters before each save, so no NaN checkpoint is written."""

  def __init__(self, phase: str):
    self.phase = phase
    self._pending: tuple[int, dict] | None = None

  def __call__(self, step: int, metrics: dict) -> None:
    """Checks the previous step's losses, then holds this step's."""
    self.flush()
    self._pending = (step, {k: metrics[k] for k in LOSSES if k in metrics})

  def flush(self) -> None:
    """Checks the held losses now."""
    if self._pending is None:
      return
    (step, losses), self._pending = self._pending, None
    bad = {k: float(v) for k, v in jax.device_get(losses).items() if not np.isfinite(v)}
    if bad:
      found = ", ".join(f"{k} is {v}" for k, v in bad.items())
      raise NonFiniteError(f"{self.phase} step {step}: {found}; stopped before saving it. "
                           "Lower the learning rate and rerun")

  def before_save(self, step: int, params) -> None:
    """Checks the held losses and that every parameter is finite."""
    self.flush()
    if not bool(_all_finite(params)):
      raise NonFiniteError(f"{self.phase} step {step}: parameters are not finite; stopped "
                           "before saving them. Lower the learning rate and rerun")
