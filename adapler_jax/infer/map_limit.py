"""Keeps a process below Linux's limit on memory mappings, which compiled programs fill.

XLA:CPU loads each compiled kernel as its own object: three mappings (code, constants,
data). One AdapLeR engine program of the 6-layer demo model holds about 1,460 of them, and
Linux allows a process 65,530 by default (`vm.max_map_count`). A process that compiles on
past the limit fails in LLVM ("LLVM compilation error: Cannot allocate memory"), and jaxlib
then crashes with a segmentation fault. Engines call `release_near_limit` before each
program they have not run yet: near the limit it drops JAX's compiled programs, and what
runs next compiles again (from the persistent compilation cache when it is on).
"""

from __future__ import annotations

import gc

import jax
from absl import logging

MAPS_FILE = "/proc/self/maps"
LIMIT_FILE = "/proc/sys/vm/max_map_count"
NEAR = 0.6  # of the limit: leaves room for a dozen or more programs before the next check.
_releases = 0  # times this process released its compiled programs here.


def mapping_count(path: str = MAPS_FILE) -> int | None:
  """This process's memory mappings (None where `path` cannot be read: not Linux)."""
  try:
    with open(path, "rb") as f:
      return f.read().count(b"\n")
  except OSError:
    return None


def mapping_limit(path: str = LIMIT_FILE) -> int | None:
  """The kernel's limit on mappings per process (None where `path` cannot be read)."""
  try:
    with open(path) as f:
      return int(f.read())
  except (OSError, ValueError):
    return None


def release() -> None:
  """Drops JAX's compiled programs (and their mappings); each compiles again when next used."""
  global _releases
  jax.clear_caches()
  gc.collect()
  _releases += 1


def release_near_limit(near: float = NEAR) -> bool:
  """`release`s when this process holds more than `near` of its mapping limit; True when it
  did. Costs a read of `/proc/self/maps` (about 5 ms at 12,000 mappings), so callers check
  before compiling, not on every call."""
  limit = mapping_limit(LIMIT_FILE)
  count = mapping_count() if limit else None
  if count is None or count <= near * limit:
    return False
  logging.warning("%d memory mappings of the %d a process may have (vm.max_map_count): "
                  "releasing compiled programs, which compile again when next used", count,
                  limit)
  release()
  return True


class ProgramGuard:
  """Checks the mapping count before a program that may compile: one whose key (its static
  arguments and shapes) has not run since the last release."""

  def __init__(self):
    self._keys: set = set()
    self._at = _releases

  def check(self, key) -> None:
    if self._at != _releases:  # released since: every program compiles again.
      self._keys.clear()
    if key not in self._keys:
      if release_near_limit():
        self._keys.clear()
      self._keys.add(key)
    self._at = _releases
