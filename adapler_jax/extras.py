"""Optional dependencies, the package's pip extras, imported where a feature first needs them.

  plots: matplotlib (figures of evaluate.py, the benchmarks and the LAT search)
  hub:   datasets (task data from the Hugging Face hub; local folders need nothing)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from adapler_jax.errors import MissingExtraError


def require(module: str, extra: str, purpose: str, instead: str = "") -> ModuleType:
  """`import module`, or a one-line `MissingExtraError` naming the package to install and
  its extra (or what to do `instead`). The pip command names the package itself, which
  works whether adapler-jax came from an index or from its source tree."""
  try:
    return importlib.import_module(module)
  except ImportError:
    package = module.split(".")[0]
    raise MissingExtraError(f"{purpose} needs the {package} package (adapler-jax's '{extra}' "
                            f"extra); install it with pip install {package}"
                            + (f" or {instead}" if instead else "")) from None


def pyplot() -> ModuleType:
  """`matplotlib.pyplot` on the non-interactive Agg backend (extra `plots`)."""
  matplotlib = require("matplotlib", "plots", "drawing figures")
  matplotlib.use("Agg")
  return importlib.import_module("matplotlib.pyplot")
