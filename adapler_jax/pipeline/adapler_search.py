"""Anytime AdapLeR: the `search` phase of an AdapLeR run.

One trained model becomes a family of operating points: the evolutionary search of
`search.evolution` runs over per-layer multipliers of the trained cutoffs eta, each layer's
multiplier taken from the grid `search.eta_multipliers`. The initial population is the
global scalings (every layer on the same grid value), so the frontier starts where
`bench/tradeoff.py --eta-multipliers` ends and can only improve on it.

A gene's cost is known only by running it (how many tokens survive depends on the text),
so the evaluator measures it with the metric: hard removal through the batched engine on
rows of train that training never saw (`Run.search_split`), both conventions recorded:

* `actual_fraction`: FLOPs on each example's real tokens (CPs included) over the full model's;
* `padded_fraction`: the same kept tokens against the full model at the padded length
  (`data.max_length`, batch 1), the LAT paper's convention.

Outputs (`search/store.jsonl`, `search/frontier.json`, `search/frontier.png`) have LAT's
layout, so `frontier.pick` and `evaluate.py --flops-budget / --max-drop` serve both methods.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from adapler_jax import infer
from adapler_jax.data import TokenizedDataset
from adapler_jax.eval import report
from adapler_jax.eval.tradeoff import score_eta
from adapler_jax.pipeline import checks, frontier, phases
from adapler_jax.pipeline.context import Run
from adapler_jax.search import evolution as evo


def score(engine: infer.AdaptiveEngine, data: TokenizedDataset, metric_name: str,
          eta_scale: np.ndarray) -> dict[str, float]:
  """A gene's record: `tradeoff.score_eta` without the speedup (the fractions say it)."""
  scored = score_eta(engine, data, metric_name, eta_scale)
  return {k: scored[k] for k in ("metric", "actual_fraction", "padded_fraction",
                                 "kept_tokens_per_layer")}


def multipliers(grid: Sequence[float], gene: evo.Gene) -> np.ndarray:
  """The per-layer eta multipliers a gene (grid indices) stands for."""
  return np.asarray([grid[i] for i in gene], np.float32)


def trained_params(run: Run) -> tuple[int, dict]:
  """The AdapLeR checkpoint the run reports: the one in `summary.json`, else the one the
  evaluate phase would select (best dev speedup within tolerance)."""
  step = phases.reported_adapler_step(run)
  return step, jax.device_get(phases.load_adapler(run, step))


def run_search(run: Run) -> dict[str, Any]:
  """Evolutionary search over per-layer eta multipliers; writes the store, the frontier and
  its plot, and resumes from the store when rerun."""
  c = run.config.search
  frontier.cost_key(run)
  grid = checks.check_grid(c.eta_multipliers)
  layers, cfg = run.encoder.num_layers, run.adapler_config()
  held = run.search_split(c.held_out)
  step, params = trained_params(run)
  split = run.config.eval.split
  dev = run.dataset(split)
  engine = infer.AdaptiveEngine(cfg, params, batch_size=c.batch_size,
                                max_length=max(held.max_length, dev.max_length))
  one = grid.index(1.0)
  evaluate = lambda g: score(engine, held, run.metric_name, multipliers(grid, g))
  source = frontier.source(phases.adapler_checkpointer(run, read_only=True), step, held,
                           eta_multipliers=list(grid))
  store, out = frontier.evolve(run, evaluate, None,
                               initial=[(i,) * layers for i in range(len(grid))],
                               source=source, floor_cost=0.0, space=evo.Grid(len(grid)))
  rows = []
  for gene in frontier.on_reported_split(run, out["frontier"], split):
    record = store.records[gene]
    on_dev = score(engine, dev, run.metric_name, multipliers(grid, gene))
    rows.append({"config": list(gene), "eta_multipliers": multipliers(grid, gene).tolist(),
                 "padded_fraction": record["padded_fraction"],
                 "actual_fraction": record["actual_fraction"],
                 "held_out_metric": record["metric"], f"{split}_metric": on_dev["metric"],
                 f"{split}_actual_fraction": on_dev["actual_fraction"],
                 f"{split}_padded_fraction": on_dev["padded_fraction"]})
  trained = store.records[(one,) * layers]
  result = {"method": "adapler", "cost": c.cost, "metric_name": run.metric_name,
            "held_out_rows": len(held), "reported_split": split, "adapler_step": step,
            "checkpoint": source["checkpoint"],
            "eta_grid": list(grid), "frontier": rows,
            "trained": {"config": [one] * layers, "held_out_metric": trained["metric"],
                        "padded_fraction": trained["padded_fraction"],
                        "actual_fraction": trained["actual_fraction"]},
            "full": {"config": None, "held_out_metric": _full_metric(run, held)},
            "areas": out["areas"], "scored": out["scored"], "settings": dict(c)}
  frontier.save(run, store, result, "AdapLeR eta search")
  return result


def _full_metric(run: Run, data: TokenizedDataset) -> float:
  """The fine-tuned backbone's metric on `data` (the reference of the max-drop rule)."""
  _, backbone_params, _ = phases.load_finetuned(run, 1)[0]
  return report.evaluate_backbone(run.encoder, run.head, backbone_params, data,
                                  run.metric_name, run.config.eval.batch_size,
                                  mesh=run.mesh)["metric"]
