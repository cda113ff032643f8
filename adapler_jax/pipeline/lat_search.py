"""The `search` phase of a LAT run, and the budget dial over its frontier.

Workdir outputs::

  search/store.jsonl    every scored config: gene, both costs, held-out metric, seconds
  search/frontier.json  the Pareto frontier (cost convention `search.cost`), each point with
                        its held-out and dev metric, the full model, the area per iteration
  search/chosen.json    the last point picked by `--flops-budget` / `--max-drop`

Fitness is the metric on rows of train that training never saw (`Run.search_split`); dev,
the reported split, only labels the frontier's points afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from adapler_jax import extras
from adapler_jax.errors import UserError
from adapler_jax.eval import report
from adapler_jax.infer import flops
from adapler_jax.pipeline import lat_phases
from adapler_jax.pipeline.context import Run
from adapler_jax.reduce import lengths
from adapler_jax.search import evolution as evo

SEARCH_DIR = "search"
COSTS = ("padded", "actual")


def cost_model(run: Run, data_lengths: np.ndarray):
  """gene -> {"padded_fraction", "actual_fraction"}: LAT MACs at the padded length, and
  real-token FLOPs over `data_lengths`, each as a fraction of the full model."""
  base, dims = run.config.data.max_length, flops.FlopsDims.of_model(run.classifier_config())
  length_base = run.config.lat.length_base

  def cost(gene):
    real = lengths.real_counts(gene, data_lengths, base, length_base)
    return flops.selection_cost(data_lengths, real, gene, base, dims)
  return cost


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
  if c.cost not in COSTS:
    raise UserError(f"search.cost {c.cost!r} is not one of {', '.join(COSTS)}")
  key = f"{c.cost}_fraction"
  base, layers = run.config.data.max_length, run.encoder.num_layers
  held = run.search_split(c.held_out)
  _, params = lat_phases.load_lengthdrop(run)
  cost = cost_model(run, held.lengths)
  lower = lat_phases.smallest_config(run)
  upper = (base,) * layers
  make = lambda r: lengths.constant_ratio_config(base, layers, r, lat.min_length) if r else upper
  initial = evo.initial_population(lambda g: cost(g)[key], make, lower, upper, c.population)
  store = evo.Store(run.workdir / SEARCH_DIR / "store.jsonl")
  settings = evo.SearchSettings(c.iterations, c.population, c.mutations, c.crossovers,
                                c.mutation_prob, c.max_attempts, c.seed)
  bar = tqdm(total=c.iterations + 1, desc="search", leave=False,
             disable=not run.is_main_process)

  def progress(it, info):
    bar.update(1)
    bar.set_postfix({"frontier": info["frontier"], "scored": info["scored"],
                     "area": f"{info['area']:.4f}"})
    run.writer.write("search", it, info)

  out = evo.evolve(lambda g: _metric(run, params, held, g), cost, store, initial=initial,
                   upper=base, floor_value=lat.min_length, floor_cost=cost(lower)[key],
                   settings=settings, cost_key=key, progress=progress)
  bar.close()
  dev = run.dataset(run.config.eval.split)
  dev_cost = cost_model(run, dev.lengths)
  rows = []
  for gene in out["frontier"]:
    record = store.records[gene]
    rows.append({"config": list(gene), "padded_fraction": record["padded_fraction"],
                 "actual_fraction": record["actual_fraction"],
                 "held_out_metric": record["metric"],
                 f"{run.config.eval.split}_metric": _metric(run, params, dev, gene),
                 f"{run.config.eval.split}_actual_fraction": dev_cost(gene)["actual_fraction"]})
  full = store.records[upper]
  result = {"cost": c.cost, "metric_name": run.metric_name, "held_out_rows": len(held),
            "reported_split": run.config.eval.split, "frontier": rows,
            "full": {"config": list(upper), "held_out_metric": full["metric"]},
            "areas": out["areas"], "scored": out["scored"],
            "settings": dict(c)}
  if run.is_main_process:
    (run.workdir / SEARCH_DIR / "frontier.json").write_text(json.dumps(result, indent=2))
    plot(store, result, run.workdir / SEARCH_DIR / "frontier.png",
         f"{run.task.name}: LAT search ({len(held)} held-out rows)")
  return result


def plot(store: evo.Store, result: dict[str, Any], path: Path, title: str) -> Path:
  """Every scored config in grey, the frontier highlighted, the full model marked (cost on
  a log axis), and the area under the frontier per iteration."""
  plt = extras.pyplot()
  key = f"{result['cost']}_fraction"
  fig, (ax, conv) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
  records = list(store.records.values())
  ax.scatter([r[key] for r in records], [100 * r["metric"] for r in records], s=12,
             color="0.7", label=f"scored ({len(records)})")
  front = result["frontier"]
  ax.plot([r[key] for r in front], [100 * r["held_out_metric"] for r in front], "o-",
          color="C3", label="frontier")
  ax.plot([1.0], [100 * result["full"]["held_out_metric"]], "k*", markersize=12,
          label="full model")
  if "trained" in result:  # AdapLeR: the operating point training chose.
    trained = result["trained"]
    ax.plot([trained[key]], [100 * trained["held_out_metric"]], "D", color="C0",
            markersize=7, label="trained cutoffs")
  ax.set_xscale("log")
  ax.set_xlabel(f"{result['cost']} cost / full model (log)")
  ax.set_ylabel(f"held-out {result['metric_name']}")
  ax.legend()
  ax.grid(alpha=0.3)
  conv.plot(range(len(result["areas"])), result["areas"], "o-")
  conv.set_xlabel("iteration")
  conv.set_ylabel("area under the frontier")
  conv.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def load_frontier(workdir: str | Path) -> dict[str, Any]:
  path = Path(workdir) / SEARCH_DIR / "frontier.json"
  if not path.exists():
    raise UserError(f"{path} is missing; run train.py --phase search on this workdir first")
  return json.loads(path.read_text())


def pick(frontier: dict[str, Any], *, flops_budget: float | None = None,
         max_drop: float | None = None) -> dict[str, Any]:
  """A frontier point: the best held-out metric costing at most `flops_budget` (a fraction
  of the full model in the search's cost convention), or the cheapest within `max_drop`
  metric points (percent) of the full model."""
  if (flops_budget is None) == (max_drop is None):
    raise UserError("pick with one of --flops-budget or --max-drop")
  key = f"{frontier['cost']}_fraction"
  scored = {tuple(r["config"]): (r[key], r["held_out_metric"]) for r in frontier["frontier"]}
  front = evo.pareto_front(scored)
  if flops_budget is not None:
    gene = evo.pick_budget(front, scored, flops_budget)
    if gene is None:
      cheapest = min(v[0] for v in scored.values())
      raise UserError(f"no frontier point costs {flops_budget} of the full model or less "
                      f"({frontier['cost']} convention); the cheapest costs {cheapest:.3f}")
  else:
    gene = evo.pick_max_drop(front, scored, frontier["full"]["held_out_metric"],
                             max_drop / 100.0)
    if gene is None:
      raise UserError(f"no frontier point is within {max_drop} points of the full model")
  return next(r for r in frontier["frontier"] if tuple(r["config"]) == gene)


def format_frontier(result: dict[str, Any]) -> str:
  """The frontier as a table: config, both costs, held-out and reported metric."""
  split = result["reported_split"]
  head = (f"{'config':<32} {'padded':>7} {'actual':>7} {'held-out':>9} {split:>7}\n"
          f"{'':<32} {'MACs':>7} {'FLOPs':>7} {result['metric_name'][:9]:>9} {'':>7}")
  lines = [head]
  for r in result["frontier"]:
    setting = r.get("eta_multipliers", r["config"])
    lines.append(f"{','.join(f'{v:g}' for v in setting):<32} {r['padded_fraction']:>7.3f} "
                 f"{r['actual_fraction']:>7.3f} {100 * r['held_out_metric']:>9.2f} "
                 f"{100 * r[f'{split}_metric']:>7.2f}")
  lines.append(f"full model held-out {100 * result['full']['held_out_metric']:.2f}; "
               f"{result['scored']} configs scored; frontier area by iteration "
               + " ".join(f"{a:.4f}" for a in result["areas"][::max(1, len(result['areas']) // 8)]))
  return "\n".join(lines)
