"""Optional dependencies, the package's pip extras, imported where a feature first needs them.

  plots: matplotlib (figures of evaluate.py, the benchmarks and the LAT search)
  hub:   datasets (task data from the Hugging Face hub; local folders need nothing)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from adapler_jax.errors import MissingExtraError


def require(module: str, extra: str, purpose: str, instead: str = "") -> ModuleType:
  """`import module`, or a one-line `MissingExtraError` naming the extra to install (or what
  to do `instead`)."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise MissingExtraError(f"{purpose} needs the {module.split('.')[0]} package; install it "
                            f"with pip install 'adapler-jax[{extra}]'"
                            + (f" or {instead}" if instead else "")) from None


def pyplot() -> ModuleType:
  """`matplotlib.pyplot` on the non-interactive Agg backend (extra `plots`)."""
  matplotlib = require("matplotlib", "plots", "drawing figures")
  matplotlib.use("Agg")
  return importlib.import_module("matplotlib.pyplot")
