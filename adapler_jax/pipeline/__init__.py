"""Training pipeline: a small registry of resumable phases per method.

AdapLeR: finetune -> saliency -> adapler -> evaluate. LAT: finetune -> lengthdrop -> evaluate.
Both have a `search` phase for an anytime frontier (per-layer eta multipliers for AdapLeR,
per-layer lengths for LAT).
"""

from pathlib import Path

from adapler_jax.errors import UserError
from adapler_jax.pipeline import adapler_search, frontier, lat_phases, lat_search
from adapler_jax.pipeline import summary as summary_lib
from adapler_jax.pipeline.config import base_config
from adapler_jax.pipeline.context import Run, prepare, read_config
from adapler_jax.pipeline.phases import (DEV_METRIC, TrainedRun, extract_saliency, finetune,
                                         format_summary, load_adapler, load_finetuned,
                                         load_run, run_all,
                                         select_adapler_step, summarize, train_adapler)
from adapler_jax.train.checkpoints import Checkpointer

METHOD_PHASES = {
    "adapler": {"all": run_all, "finetune": finetune, "saliency": extract_saliency,
                "adapler": train_adapler, "search": adapler_search.run_search,
                "evaluate": summarize},
    "lat": {"all": lat_phases.run_all, "finetune": finetune,
            "lengthdrop": lat_phases.train_lengthdrop, "search": lat_search.run_search,
            "evaluate": lat_phases.summarize},
}
PHASES = ("all", "finetune", "saliency", "adapler", "lengthdrop", "search", "evaluate")


def check_phase(config, phase: str):
  """The function of `phase` (or `all`) for the config's method; one line if it has none."""
  method = config.get("method", "adapler")
  if method not in METHOD_PHASES:
    raise UserError(f"config method {method!r} is not one of {', '.join(METHOD_PHASES)}")
  phases = METHOD_PHASES[method]
  if phase not in phases:
    raise UserError(f"phase {phase!r} is not a phase of {method}; choose one of "
                    f"{', '.join(phases)}")
  return phases[phase]


# What each phase reads from the workdir, by method: checkpoint folders and files, each
# written by the phase of the same name (`saliency.npz`: saliency).
PHASE_INPUTS = {
    "adapler": {"saliency": ("finetune",), "adapler": ("finetune", "saliency.npz"),
                "evaluate": ("finetune", "adapler"), "search": ("finetune", "adapler")},
    "lat": {"lengthdrop": ("finetune",), "evaluate": ("finetune", "lengthdrop"),
            "search": ("lengthdrop",)},
}


def check_ready(config, workdir: Path, phase: str) -> None:
  """One line, before anything is written, when `workdir` lacks what `phase` reads."""
  needs = PHASE_INPUTS.get(config.get("method", "adapler"), {}).get(phase, ())
  if phase == "adapler" and not config.adapler.from_finetuned:
    needs = tuple(n for n in needs if n != "finetune")
  for name in needs:
    path = workdir / name
    if name.endswith(".npz"):
      if not path.is_file():
        raise UserError(f"{path} is missing; run --phase {path.stem} first")
    else:
      with Checkpointer(path, read_only=True) as ckpt:  # as check_checkpoints reads them.
        latest = ckpt.latest_step()
        if latest is None:
          raise UserError(f"no {name} checkpoint in {path}; run --phase {name} first")
        # The phases read the best evaluated step; a cut run may have saved none yet.
        if not ckpt.best_steps(1, metric=DEV_METRIC, mode="max"):
          raise UserError(f"{path} holds no evaluated {name} checkpoint (step {latest} was "
                          f"saved before its dev evaluation); finish it with --phase {name}")


def run_phase(run: Run, phase: str):
  """Runs one phase (or `all`) of the run's method; returns the summary for `all`/`evaluate`."""
  return check_phase(run.config, phase)(run)


def format_result(run: Run, summary: dict) -> str:
  """The terminal table of a summary, for the run's method, and the file it was saved in."""
  if "frontier" in summary:
    table, saved = frontier.format_table(summary), frontier.FRONTIER_FILE
  elif run.config.get("method", "adapler") == "lat":
    table, saved = lat_phases.format_summary(summary), summary_lib.FILE
  else:
    table, saved = format_summary(summary), summary_lib.FILE
  return f"{table}\nsaved in {run.workdir / saved}"
