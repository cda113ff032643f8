"""Accuracy-speedup trade-off points and their plot (paper Figure 3).

A trade-off result is a JSON-ready dict::

  {"task", "split", "metric_name",
   "backbone": {"metric": 0.91, "flops_speedup": 1.0},
   "points": [{"label": "phi=5e-4", "metric": 0.90, "flops_speedup": 1.6, ...}, ...]}

Points come from finished runs (`points_from_workdirs`: each run's `summary.json`, one run
per phi) or from one trained model evaluated with its cutoffs eta scaled by several
multipliers (`eta_sweep`: no training; a larger multiplier drops more tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from adapler_jax import extras, files, infer
from adapler_jax.data import TokenizedDataset
from adapler_jax.eval import report
from adapler_jax.infer import flops
from adapler_jax.errors import UserError


def summary_point(workdir: str | Path) -> dict[str, Any]:
  """A point from a finished run's `summary.json` (and its phi from `config.json`)."""
  workdir = Path(workdir)
  path = workdir / "summary.json"
  if not path.exists():
    raise UserError(f"{path} is missing; finish the run (train.py --phase evaluate) first")
  summary = json.loads(path.read_text())
  config = json.loads((workdir / "config.json").read_text())
  phi = config.get("adapler", {}).get("phi")
  return {"label": f"phi={phi:g}" if phi is not None else workdir.name, "phi": phi,
          "workdir": str(workdir), "metric": summary["adapler_metric"],
          "flops_speedup": summary["flops_speedup"], "backbone_metric": summary["backbone_metric"],
          "task": summary["task"], "split": summary["split"],
          "metric_name": summary["metric_name"]}


def points_from_workdirs(workdirs: Sequence[str | Path]) -> dict[str, Any]:
  """A trade-off result from finished runs of one task (the backbone from the first)."""
  points = [summary_point(w) for w in workdirs]
  if not points:
    raise UserError("no workdirs given")
  tasks = {(p["task"], p["split"]) for p in points}
  if len(tasks) > 1:
    raise UserError(f"the workdirs evaluate different tasks or splits: {sorted(tasks)}")
  first = points[0]
  return {"task": first["task"], "split": first["split"], "metric_name": first["metric_name"],
          "backbone": {"metric": first["backbone_metric"], "flops_speedup": 1.0},
          "points": sorted(points, key=lambda p: p["flops_speedup"])}


def with_eta_scaled(params: dict, multiplier: float | np.ndarray) -> dict:
  """AdapLeR params whose cutoff multipliers eta are scaled by `multiplier` (a scalar, or
  one value per layer)."""
  speed = dict(params["speed"], eta=np.asarray(params["speed"]["eta"]) * multiplier)
  return {**params, "speed": speed}


def per_layer_multipliers(value, num_layers: int) -> np.ndarray | None:
  """`value` (read from a JSON file) as one finite multiplier >= 0 per layer, else None."""
  if not isinstance(value, list) or len(value) != num_layers or not all(
      files.is_number(m) and 0 <= m < float("inf") for m in value):
    return None
  return np.asarray(value, np.float32)


def score_eta(engine, data: TokenizedDataset, metric_name: str,
              multiplier: float | np.ndarray) -> dict[str, Any]:
  """Hard-removal metric and costs of an `infer.AdaptiveEngine`'s model with its cutoffs eta
  x `multiplier` (a scalar, or one value per layer), the engine's weights and compiled
  programs reused (`AdaptiveEngine.with_eta`). Both cost conventions:

  * `actual_fraction`: FLOPs on each example's real tokens (predictors included) over the
    full model's; `flops_speedup` is its inverse, the AdapLeR paper's figure;
  * `padded_fraction`: the same kept tokens against the full model at the padded length
    (`data.max_length`), the LAT paper's convention.
  """
  result = engine.with_eta(engine.eta * np.asarray(multiplier, np.float32)).run(data)
  dims = flops.FlopsDims.of_model(engine.cfg)
  actual = flops.flops_report(data.lengths, result.kept_counts, dims)
  padded = flops.flops_report(np.full_like(data.lengths, data.max_length),
                              result.kept_counts, dims)
  return {"metric": report.task_scores(metric_name, result.logits, data)["metric"],
          "flops_speedup": actual["flops_speedup"],
          "actual_fraction": 1.0 / actual["flops_speedup"],
          "padded_fraction": 1.0 / padded["flops_speedup"],
          "kept_tokens_per_layer": actual["kept_tokens_per_layer"]}


def eta_sweep(cfg, params: dict, data: TokenizedDataset, multipliers: Sequence[float],
              metric_name: str, *, batch_size: int = 32) -> list[dict[str, Any]]:
  """Hard-removal metric and FLOPs speedup of one model at eta x each multiplier, through
  one batched engine."""
  engine = infer.AdaptiveEngine(cfg, jax.device_get(params), batch_size=batch_size,
                                max_length=data.max_length)
  points = []
  for m in multipliers:
    scored = score_eta(engine, data, metric_name, m)
    points.append({"label": f"eta x{m:g}", "eta_multiplier": float(m),
                   "metric": scored["metric"], "flops_speedup": scored["flops_speedup"],
                   "kept_tokens_per_layer": scored["kept_tokens_per_layer"]})
  return sorted(points, key=lambda p: p["flops_speedup"])


def plot_tradeoff(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
  """Metric (in points) against FLOPs speedup: AdapLeR points joined, the backbone a star."""
  plt = extras.pyplot()
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=110)
  points = sorted(result["points"], key=lambda p: p["flops_speedup"])
  x = [p["flops_speedup"] for p in points]
  y = [100 * p["metric"] for p in points]
  ax.plot(x, y, color="#c0392b", marker="o", linewidth=2, label="AdapLeR")
  for k, (p, xi, yi) in enumerate(zip(points, x, y)):
    ax.annotate(p["label"], (xi, yi), textcoords="offset points", fontsize=7, color="#555",
                xytext=(4, 6 if k % 2 == 0 else -11))
  backbone = result["backbone"]
  ax.plot([backbone["flops_speedup"]], [100 * backbone["metric"]], marker="*", markersize=13,
          color="#2c3e50", linestyle="none", label="fine-tuned backbone")
  if max(x + [1.0]) / min(x + [1.0]) >= 6:  # wide range: log axis, plain tick labels.
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.margins(x=0.12, y=0.08)
  ax.set_xlabel("FLOPs speedup (x)")
  ax.set_ylabel(f"{result.get('metric_name', 'metric')} (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, frameon=False, loc="lower left")
  ax.set_title(title or f"{result['task']} ({result['split']}): accuracy vs speedup",
               fontsize=10)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path
