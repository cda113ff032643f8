"""Training pipeline: fine-tune -> saliency -> AdapLeR -> evaluation, with resumable phases."""

from adapler_jax.pipeline.config import base_config
from adapler_jax.pipeline.context import Run, prepare, read_config
from adapler_jax.pipeline.phases import (TrainedRun, extract_saliency, finetune,
                                         format_summary, load_adapler, load_finetuned,
                                         load_run, run_all,
                                         select_adapler_step, summarize, train_adapler)

PHASES = ("all", "finetune", "saliency", "adapler", "evaluate")


def run_phase(run: Run, phase: str):
  """Runs one phase (or `all`); returns the summary for `all`/`evaluate`."""
  if phase == "all":
    return run_all(run)
  if phase == "finetune":
    return finetune(run)
  if phase == "saliency":
    return extract_saliency(run)
  if phase == "adapler":
    return train_adapler(run)
  if phase == "evaluate":
    return summarize(run)
  raise ValueError(f"phase {phase!r} is not one of {PHASES}")
