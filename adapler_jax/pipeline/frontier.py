"""The `search` phase's shared machinery, for both methods' searches (`lat_search`,
`adapler_search`): the evolution in a run, its outputs, and the budget dial.

Workdir outputs::

  search/store.jsonl    every scored config: gene, both costs, held-out metric, seconds
  search/store.source.json  what the store scored: checkpoint, held-out rows, settings
  search/frontier.json  the Pareto frontier (cost convention `search.cost`), each point with
                        its held-out and dev metric, the full model, the area per iteration
  search/frontier.png   every scored config, the frontier, the full model; area per iteration
  search/chosen.json    the last point picked by `--flops-budget` / `--max-drop`; a new
                        frontier on which its rule picks another point moves it aside
                        (`chosen.previous.json`)

Fitness is the metric on rows of train that training never saw (`Run.search_split`); dev,
the reported split, only labels the frontier's points afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from absl import logging
import numpy as np
from tqdm.auto import tqdm

from adapler_jax import extras, files
from adapler_jax.data import TokenizedDataset
from adapler_jax.errors import UserError
from adapler_jax.pipeline import checks
from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.pipeline.context import Run
from adapler_jax.search import evolution as evo
from adapler_jax.train.checkpoints import Checkpointer

SEARCH_DIR = "search"
FRONTIER_FILE = f"{SEARCH_DIR}/frontier.json"  # relative to the workdir.
CHOSEN_FILE = f"{SEARCH_DIR}/chosen.json"  # the last point an evaluate.py dial picked.
STORE_FILE = f"{SEARCH_DIR}/store.jsonl"  # every scored gene.
COSTS = checks.SEARCH_COSTS


def cost_key(run: Run) -> str:
  """The record key of the run's cost convention, `search.cost`: '<cost>_fraction'."""
  cost = run.config.search.cost
  if cost not in COSTS:
    raise UserError(f"search.cost {cost!r} is not one of {', '.join(COSTS)}")
  return f"{cost}_fraction"


def source(checkpointer: Checkpointer, step: int, held_out: TokenizedDataset,
           **scoring) -> dict[str, Any]:
  """What a search's scores depend on: the fingerprint of checkpoint `step` (closes
  `checkpointer`), a digest of the held-out rows (their tokens and labels: data, split and
  tokenizer settings alike), and the settings that change a config's score."""
  checkpoint = checkpointer.fingerprint([step])
  checkpointer.close()
  digest = hashlib.sha256()
  for array in (held_out.input_ids, held_out.token_type_ids, held_out.lengths,
                held_out.labels):
    if array is not None:
      digest.update(np.ascontiguousarray(array).tobytes())
  return {"checkpoint": checkpoint, "held_out_rows": digest.hexdigest()[:16], **scoring}


def check_searched(record: dict[str, Any], checkpointer: Checkpointer, step: int,
                   path: Path) -> None:
  """One line unless the checkpoint `record` (a frontier, or a pick from one) was searched
  on is checkpoint `step`, the one about to be used (closes `checkpointer`): a model trained
  again after its search would be read at points scored on the old one. A record saved
  before records noted their checkpoint is checked against its store's source (beside it in
  `search/`), which noted it earlier; without either it is not checked."""
  now = checkpointer.fingerprint([step])
  checkpointer.close()
  searched_on = record.get("checkpoint")
  if searched_on is None:
    try:
      source = evo.saved_source(Path(path).parent / Path(STORE_FILE).name)
    except (OSError, ValueError):  # unreadable: as if none was saved.
      source = None
    searched_on = source.get("checkpoint") if isinstance(source, dict) else None
  if searched_on not in (None, now):
    raise UserError(f"{path} comes from a search of another checkpoint than the one this run "
                    f"now has (step {step}), so its points were scored on another model; move "
                    f"{Path(path).parent} aside and rerun train.py --phase search")


def evolve(run: Run, evaluate: Callable, cost: Callable | None, *, initial,
           source: dict[str, Any], **kwargs) -> tuple[evo.Store, dict[str, Any]]:
  """`evo.evolve` with the run's `search` settings, its store in the workdir (a rerun
  resumes from it when it scored the same `source`), a progress bar and a metrics row per
  iteration.

  Returns:
    (the store of every scored gene, `evo.evolve`'s result).
  """
  c = run.config.search
  path = run.workdir / STORE_FILE
  try:
    store = evo.Store(path, source, write=run.is_main_process)
  except evo.SourceMismatch as e:
    raise UserError(f"{e} than this search scores; move {path.parent} aside (or search in "
                    "a workdir of its own) to search again") from None
  run.write_config()  # its refusals have passed: from here on, this is the run's config.
  workdir_lib.record_config(run, "search")
  run.writer.rewind("search", -1)  # a rerun logs every iteration again, from 0.
  settings = evo.SearchSettings(c.iterations, c.population, c.mutations, c.crossovers,
                                c.mutation_prob, c.max_attempts, c.seed)
  bar = tqdm(total=c.iterations + 1, desc="search", leave=False,
             disable=not run.is_main_process)

  def progress(it, info):
    bar.update(1)
    bar.set_postfix({"frontier": info["frontier"], "scored": info["scored"],
                     "area": f"{info['area']:.4f}"})
    run.writer.write("search", it, info)

  try:
    out = evo.evolve(evaluate, cost, store, initial=initial, settings=settings,
                     cost_key=cost_key(run), progress=progress, **kwargs)
  finally:
    bar.close()
  return store, out


def on_reported_split(run: Run, genes, split: str):
  """The frontier's genes with a progress bar, for scoring each on the reported split."""
  return tqdm(genes, desc=f"frontier on {split}", leave=False, disable=not run.is_main_process)


def save(run: Run, store: evo.Store, result: dict[str, Any], title: str) -> None:
  """Writes `frontier.json` and its plot (main process only)."""
  if run.is_main_process:
    directory = run.workdir / SEARCH_DIR
    retire_stale_choice(run.workdir, result)  # first: no old pick beside a new frontier.
    files.atomic_write_text(run.workdir / FRONTIER_FILE, json.dumps(result, indent=2))
    plot(store, result, directory / "frontier.png", f"{run.task.name}: {title} "
         f"({result['held_out_rows']} held-out rows)")


def retire_stale_choice(workdir: Path, result: dict[str, Any]) -> None:
  """Moves `chosen.json` aside (`chosen.previous.json`, with a warning) when its rule picks
  another point of the new frontier `result`, or none, or the search was of another
  checkpoint: export would otherwise ship a pick the current search no longer makes."""
  path = Path(workdir) / CHOSEN_FILE
  if not path.exists():
    return
  reason = "its rule no longer picks the same point"
  try:
    chosen = json.loads(path.read_text(encoding="utf-8"))
    rule = chosen["rule"]
    now = pick(result, flops_budget=rule.get("flops_budget"), max_drop=rule.get("max_drop"))
    same_point = all(now.get(k) == chosen.get(k) for k in ("config", "eta_multipliers"))
    same_model = chosen.get("checkpoint") in (None, result.get("checkpoint"))  # None: older.
    if same_point and same_model:
      return  # the same point (for AdapLeR, the same multipliers: what export ships).
    if same_point:
      reason = "it was picked from a search of another checkpoint"
  except (UserError, ValueError, KeyError, TypeError, AttributeError):
    pass  # damaged, or no point fits its rule now: stale either way.
  aside = path.with_name("chosen.previous.json")
  os.replace(path, aside)
  logging.warning("%s was picked from an earlier frontier, and %s; moved it to %s, so "
                  "adapler-export ships the run's own setting until evaluate.py --flops-budget "
                  "or --max-drop picks again", path, reason, aside.name)


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


def load(workdir: str | Path) -> dict[str, Any]:
  """A run's `search/frontier.json`."""
  path = Path(workdir) / FRONTIER_FILE
  if not path.exists():
    raise UserError(f"{path} is missing; run train.py --phase search on this workdir first")
  fix = "rerun train.py --phase search (it replays the configs its store has scored)"
  frontier = files.read_json(path, fix)
  if not _is_frontier(frontier):
    raise UserError(f"{path} is damaged (not a search frontier); {fix}")
  return frontier


def _is_frontier(frontier) -> bool:
  """Whether `frontier` has what `pick` reads: a cost convention, one point or more, each
  with its config, cost and held-out metric, and the full model's metric."""
  try:
    key = f"{frontier['cost']}_fraction"
    rows = frontier["frontier"]
    return (files.is_number(frontier["full"]["held_out_metric"]) and isinstance(rows, list)
            and bool(rows) and all(isinstance(r["config"], list) and files.is_number(r[key])
                                   and files.is_number(r["held_out_metric"]) for r in rows))
  except (KeyError, TypeError):
    return False


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


def format_table(result: dict[str, Any]) -> str:
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
