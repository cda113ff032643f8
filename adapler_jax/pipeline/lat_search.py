"""The `search` phase of a LAT run: the evolutionary search of the LengthDrop model's
per-layer lengths (outputs and budget dial: `pipeline.frontier`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from adapler_jax.eval import report
from adapler_jax.infer import flops
from adapler_jax.pipeline import frontier, lat_phases
from adapler_jax.pipeline.context import Run
from adapler_jax.reduce import lengths
from adapler_jax.search import evolution as evo

def cost_model(run: Run, data_lengths: np.ndarray):
  """gene -> {"padded_fraction", "actual_fraction"}: LAT MACs at the padded length, and
  real-token FLOPs over `data_lengths`, each as a fraction of the full model."""
  base, dims = run.config.data.max_length, flops.FlopsDims.of_model(run.classifier_config())
  length_base = run.config.lat.length_base

  def cost(gene):
    real = lengths.real_counts(gene, data_lengths, base, length_base)
    return flops.selection_cost(data_lengths, real, gene, base, dims)
  return cost


def floor_config(run: Run) -> tuple[int, ...]:
  """The cheapest config the search scores: the smallest trained sub-model, or the constant
  ratio `search.floor_ratio` when set (a floor below the trained one scores configs LengthDrop
  never sampled)."""
  return lat_phases.ratio_config(run, run.config.search.floor_ratio
                                 or run.config.lat.smallest_ratio)


def _metric(run: Run, params, data, gene) -> float:
  logits = report.masked_lat_logits(run.classifier_config(), params, data, gene,
                                    base=run.config.data.max_length,
                                    flags=lat_phases.selection_flags(run),
                                    batch_size=run.config.search.batch_size)
  return report.task_scores(run.metric_name, logits, data)["metric"]


def run_search(run: Run) -> dict[str, Any]:
  """Evolutionary search of the LengthDrop model's length configs; writes the store and
  `frontier.json`, resumes from the store when rerun."""
  c, lat = run.config.search, run.config.lat
  key = frontier.cost_key(run)
  base, layers = run.config.data.max_length, run.encoder.num_layers
  held = run.search_split(c.held_out)
  step, params = lat_phases.load_lengthdrop(run)
  cost = cost_model(run, held.lengths)
  lower = floor_config(run)
  upper = (base,) * layers
  make = lambda r: lat_phases.ratio_config(run, r) if r else upper
  initial = evo.initial_population(lambda g: cost(g)[key], make, lower, upper, c.population)
  source = frontier.source(lat_phases.lengthdrop_checkpointer(run, read_only=True), step, held,
                           **dataclasses.asdict(lat_phases.selection_flags(run)))
  store, out = frontier.evolve(run, lambda g: _metric(run, params, held, g), cost,
                               initial=initial, source=source, upper=base,
                               floor_value=lat.min_length, floor_cost=cost(lower)[key])
  split = run.config.eval.split
  dev = run.dataset(split)
  dev_cost = cost_model(run, dev.lengths)
  rows = []
  for gene in frontier.on_reported_split(run, out["frontier"], split):
    record = store.records[gene]
    rows.append({"config": list(gene), "padded_fraction": record["padded_fraction"],
                 "actual_fraction": record["actual_fraction"],
                 "held_out_metric": record["metric"],
                 f"{split}_metric": _metric(run, params, dev, gene),
                 f"{split}_actual_fraction": dev_cost(gene)["actual_fraction"]})
  result = {"cost": c.cost, "metric_name": run.metric_name, "held_out_rows": len(held),
            "reported_split": split, "lengthdrop_step": step,
            "checkpoint": source["checkpoint"], "frontier": rows,
            "full": {"config": list(upper), "held_out_metric": store.records[upper]["metric"]},
            "areas": out["areas"], "scored": out["scored"], "settings": dict(c)}
  frontier.save(run, store, result, "LAT search")
  return result
