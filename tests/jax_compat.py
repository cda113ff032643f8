"""The few JAX test APIs that moved between the releases `pyproject.toml` admits (jax >= 0.7)."""

import jax
from jax import monitoring


def enable_x64(on: bool = True):
  """`jax.enable_x64` (jax.experimental's before it moved)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(on)
  from jax.experimental import enable_x64 as old  # pylint: disable=g-import-not-at-top
  return old(on)


def unregister_event_duration_listener(callback) -> None:
  """`jax.monitoring.unregister_event_duration_listener` (private before it was public)."""
  if hasattr(monitoring, "unregister_event_duration_listener"):
    monitoring.unregister_event_duration_listener(callback)
  else:
    from jax._src import monitoring as private  # pylint: disable=g-import-not-at-top
    private._unregister_event_duration_listener_by_callback(callback)  # pylint: disable=protected-access
