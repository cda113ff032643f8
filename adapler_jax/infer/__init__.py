"""Inference: the bucketed AdapLeR engine, the full-length baseline, FLOPs accounting."""

from adapler_jax.infer import flops
from adapler_jax.infer.engine import (AdaptiveEngine, EngineResult, FullLengthEngine,
                                      LengthEngine, per_example_run)
from adapler_jax.infer.flops import FlopsDims, flops_report

__all__ = ["AdaptiveEngine", "EngineResult", "FlopsDims", "FullLengthEngine", "LengthEngine",
           "flops", "flops_report", "per_example_run"]
