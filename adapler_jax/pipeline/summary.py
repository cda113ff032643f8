"""`summary.json` of a run, for either method: the fields both share, the file, the table."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.pipeline.context import Run

FILE = "summary.json"


def common_fields(run: Run, data, seconds: float | None) -> dict[str, Any]:
  """What every summary states about the run and the split it was evaluated on."""
  return {
      "task": run.task.name,
      "split": run.config.eval.split,
      "metric_name": run.metric_name,
      "mean_length": float(np.mean(data.lengths)),
      "train_examples": len(run.dataset("train")),
      "eval_examples": len(data),
      "seconds": seconds,
      "backbone": run.config.backbone,
      "dtype": run.config.dtype,  # the compute dtype it was evaluated in (a rerun may switch it).
  }


def span_scores(name: str, result: dict[str, Any]) -> dict[str, float]:
  """Span QA: a report's exact match and F1 (percent) as `{name}_exact_match`, `{name}_f1`."""
  return {f"{name}_exact_match": result["exact_match"], f"{name}_f1": result["f1"]}


def write(run: Run, summary: dict[str, Any]) -> None:
  """`summary.json` in the workdir, whole or not at all (main process only)."""
  if run.is_main_process:
    workdir_lib.atomic_write_text(run.workdir / FILE, json.dumps(summary, indent=2))


def score_label(summary: dict[str, Any]) -> str:
  """What `format_score` shows: the metric's name, or "EM / F1" for span QA."""
  return ("EM / F1" if any(k.endswith("_exact_match") for k in summary)
          else summary["metric_name"])


def format_points(metric: float) -> str:
  """A metric stored as a fraction, as the terminal shows every metric: in points (0.9922
  -> 99.22)."""
  return f"{100 * metric:.2f}"


def format_score(summary: dict[str, Any], name: str) -> str:
  """`name`'s metric in percent; span QA: exact match / F1."""
  if f"{name}_exact_match" in summary:
    return f"{summary[f'{name}_exact_match']:.2f} / {summary[f'{name}_f1']:.2f}"
  return format_points(summary[f"{name}_metric"])


def format_table(summary: dict[str, Any], rows: Sequence[tuple[str, str]]) -> str:
  """The terminal table: the split, then a method's `(label, value)` rows, then the wall time."""
  rows = [("task / split", f"{summary['task']} / {summary['split']} "
                           f"({summary['eval_examples']} examples, mean length "
                           f"{summary['mean_length']:.1f})"),
          *rows]
  if summary.get("seconds"):
    rows.append(("wall time", f"{summary['seconds'] / 60:.1f} min"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def format_kept(summary: dict[str, Any]) -> str:
  return " ".join(f"{k:.1f}" for k in summary["mean_kept_tokens_per_layer"])
