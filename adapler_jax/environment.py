"""What a result was computed on: software versions, devices and the CPU.

Training on the same machine and software repeats bit for bit; on another CPU or another XLA
the same run may not (other kernels, other rounding), so every phase and benchmark records
this next to its numbers.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("adapler-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


# The instruction sets that pick XLA:CPU's kernels, when /proc/cpuinfo lists them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo(path: str | os.PathLike[str]) -> dict[str, str]:
  """The first processor's `key: value` lines of a Linux `/proc/cpuinfo` ({} elsewhere)."""
  fields: dict[str, str] = {}
  try:
    text = Path(path).read_text(errors="replace")
  except OSError:
    return fields
  for line in text.splitlines():
    if not line.strip():
      if fields:
        break
      continue
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  return fields


def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
  """The CPU's model name (Linux `/proc/cpuinfo`), else what `platform` knows."""
  return (_cpuinfo(cpuinfo).get("model name") or platform.processor()
          or platform.machine())


def cpu_features(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> list[str]:
  """Which of `CPU_FEATURES` the CPU has ([] where `/proc/cpuinfo` is absent)."""
  flags = set(_cpuinfo(cpuinfo).get("flags", "").split())
  return [f for f in CPU_FEATURES if f in flags]


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def describe() -> dict[str, Any]:
  """A JSON-ready record of this process's software and hardware."""
  device = jax.local_devices()[0]
  return {
      "versions": {"python": platform.python_version(),
                   **{p: _version(p) for p in PACKAGES}},
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "local_devices": jax.local_device_count(),
      "processes": jax.process_count(),
      "cpu": cpu_model(),
      "cpu_features": cpu_features(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


# What changes a result's rounding: not the core count or the architecture's name.
_NUMERIC_KEYS = ("versions", "backend", "device_kind", "local_devices", "processes", "cpu",
                 "cpu_features", "xla_flags")


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """`key: old -> new` for each field of two `describe()` records that can change rounding."""
  changed = []
  for key in _NUMERIC_KEYS:
    old, new = before.get(key), now.get(key)
    if key == "versions" and isinstance(old, dict) and isinstance(new, dict):
      changed += [f"{p} {old.get(p)} -> {new.get(p)}" for p in sorted(set(old) | set(new))
                  if old.get(p) != new.get(p)]
    elif old != new:
      changed.append(f"{key} {old} -> {new}")
  return changed
