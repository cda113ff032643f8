"""The LAT evolutionary search of per-layer settings, with its defects fixed.

A gene is a tuple of per-layer integers in a `Space`: LAT's non-increasing lengths in
[floor_value, upper] (`Lengths`), or indices into a grid of per-layer values such as
multipliers of AdapLeR's cutoffs (`Grid`). Each
iteration takes the Pareto frontier (cost, metric) of everything scored so far as the
population, then adds `mutations` mutated and `crossovers` crossed-over children of it.
Against the LAT authors' code:

* the frontier is correct: no dominated member, and of equal-cost genes the better stays;
* every loop has an attempt cap, so a population that yields no new child ends;
* genes cheaper than `floor_cost` are never scored;
* a `Store` (JSON lines, one scored gene per line) caches every evaluation, so the
  evaluator runs once per distinct gene and a killed search resumes without re-scoring,
  and it refuses to resume on another model, rows or scoring settings than it scored;
* the same seed gives the same search (cached genes consume no randomness).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text

Gene = tuple[int, ...]


def mutate(rng: np.random.Generator, parent: Gene, upper: int, floor_value: int,
           prob: float = 0.5) -> Gene:
  """Each layer, with `prob`, redrawn uniformly between its neighbours: the child's previous
  value (`upper` for layer 0) and the parent's next value (`floor_value` after the last)."""
  child: list[int] = []
  for i, value in enumerate(parent):
    prev = upper if i == 0 else child[-1]
    nxt = parent[i + 1] if i + 1 < len(parent) else floor_value
    child.append(int(rng.integers(nxt, prev + 1)) if rng.random() < prob else min(value, prev))
  return tuple(child)


def crossover(a: Gene, b: Gene) -> Gene:
  """The ceiling of the mean, layer by layer (non-increasing when both parents are)."""
  return tuple((x + y + 1) // 2 for x, y in zip(a, b))


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Non-increasing per-layer lengths in [floor_value, upper] (LAT's length configs)."""

  upper: int
  floor_value: int

  def mutate(self, rng: np.random.Generator, parent: Gene, prob: float) -> Gene:
    return mutate(rng, parent, self.upper, self.floor_value, prob)

  def crossover(self, a: Gene, b: Gene) -> Gene:
    return crossover(a, b)


@dataclasses.dataclass(frozen=True)
class Grid:
  """Per-layer indices into a grid of `size` values, each layer free of the others."""

  size: int

  def mutate(self, rng: np.random.Generator, parent: Gene, prob: float) -> Gene:
    """Each layer, with `prob`, redrawn uniformly between its grid neighbours."""
    return tuple(int(rng.integers(max(v - 1, 0), min(v + 1, self.size - 1) + 1))
                 if rng.random() < prob else v for v in parent)

  def crossover(self, a: Gene, b: Gene) -> Gene:
    return crossover(a, b)


def pareto_front(scored: dict[Gene, tuple[float, float]]) -> list[Gene]:
  """Genes no other gene beats on both cost (lower) and metric (higher), by rising cost.

  `scored` maps gene -> (cost, metric). Of genes with equal cost only the best stays; a
  gene enters only if it scores strictly better than every cheaper one.
  """
  order = sorted(scored, key=lambda g: (scored[g][0], -scored[g][1], g))
  front, best = [], -np.inf
  for gene in order:
    if scored[gene][1] > best:
      front.append(gene)
      best = scored[gene][1]
  return front


def frontier_area(front: Sequence[Gene], scored: dict, lower: float, upper: float) -> float:
  """Normalised area under the frontier's step function over [lower, upper] cost (the
  LAT paper's convergence measure): each point's metric holds until the next point. Costs
  outside the range count at its ends, so a point past `upper` adds nothing and takes nothing
  away."""
  if not front or upper <= lower:
    return 0.0
  costs = [min(max(scored[g][0], lower), upper) for g in front] + [upper]
  return float(sum((costs[i + 1] - costs[i]) * scored[g][1] for i, g in enumerate(front))
               / (upper - lower))


def pick_budget(front: Sequence[Gene], scored: dict, budget: float) -> Gene | None:
  """The best-scoring frontier gene costing at most `budget` (None if none does)."""
  within = [g for g in front if scored[g][0] <= budget]
  return max(within, key=lambda g: (scored[g][1], -scored[g][0])) if within else None


def pick_max_drop(front: Sequence[Gene], scored: dict, reference: float,
                  max_drop: float) -> Gene | None:
  """The cheapest frontier gene whose metric is at least `reference - max_drop` (LAT's
  dagger rule with max_drop 0: cheapest with accuracy >= standard)."""
  within = [g for g in front if scored[g][1] >= reference - max_drop - 1e-12]
  return min(within, key=lambda g: (scored[g][0], -scored[g][1])) if within else None


def source_path(store_path: str | Path) -> Path:
  """Where the store at `store_path` saves its source: `<name>.source.json` beside it."""
  store_path = Path(store_path)
  return store_path.with_name(store_path.stem + ".source.json")


def saved_source(store_path: str | Path) -> Any:
  """The source the store at `store_path` saved (None when it saved none)."""
  path = source_path(store_path)
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


class SourceMismatch(ValueError):
  """A store's genes were scored on another source (model, rows or scoring settings)."""


class Store:
  """Scored genes, one JSON object per line: `{"gene", "cost", "metric", "seconds", ...}`.

  Appends are flushed line by line, so a killed search keeps everything it scored; a line
  cut short by the kill is ignored when the store is read back.

  `source` (JSON-able) names what the genes are scored on. A new store saves it beside
  itself (`<name>.source.json`); a store saved with another source raises `SourceMismatch`
  and is left as it is, so a retrained model never reuses the old model's scores. A store
  written without a source file is taken as it is.

  With `write=False` (every process but the first of a multi-process run) the store reads
  the file and keeps new records in memory only, so processes never append to one file at
  once.
  """

  def __init__(self, path: str | Path, source: dict | None = None, *, write: bool = True):
    self.path, self.write = Path(path), write
    self.records: dict[Gene, dict] = {}
    text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
    for line in text.splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill.
      self.records[tuple(record["gene"])] = record
    self._cut_short = bool(text) and not text.endswith("\n")  # the next add ends it first.
    self.source = self._bind(json.loads(json.dumps(source)) if source is not None else None)

  @property
  def source_path(self) -> Path:
    return source_path(self.path)

  def _bind(self, source: dict | None) -> dict | None:
    saved = saved_source(self.path)
    if source is None or saved == source:
      return saved
    if saved is not None and self.records:
      differ = sorted(k for k in set(saved) | set(source) if saved.get(k) != source.get(k))
      raise SourceMismatch(f"{self.path} holds scores of another {', '.join(differ)}")
    if saved is None and self.records:
      return None  # written before sources were saved: taken as it is.
    if self.write:
      self.source_path.parent.mkdir(parents=True, exist_ok=True)
      atomic_write_text(self.source_path, json.dumps(source, sort_keys=True) + "\n")
    return source

  def __contains__(self, gene: Gene) -> bool:
    return gene in self.records

  def add(self, gene: Gene, record: dict) -> None:
    record = {"gene": list(gene), **record}
    self.records[gene] = record
    if not self.write:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(("\n" if self._cut_short else "") + json.dumps(record) + "\n")
    self._cut_short = False


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """The authors' values: 30 iterations, 20 initial genes, 30 + 30 children, p 0.5."""

  iterations: int = 30
  population: int = 20
  mutations: int = 30
  crossovers: int = 30
  mutation_prob: float = 0.5
  max_attempts: int = 1000  # per operator and iteration.
  seed: int = 0


def initial_population(cost: Callable[[Gene], float], make: Callable[[float], Gene],
                       lower: Gene, upper: Gene, size: int) -> list[Gene]:
  """`lower`, `upper`, and `size` genes `make(r)` whose costs are spread evenly between
  theirs (r found by bisection in [0, r_lower], `make(0) == upper`)."""
  lo_cost, hi_cost = cost(lower), cost(upper)
  genes = [lower, upper]
  for target in np.linspace(lo_cost, hi_cost, size + 2)[1:-1]:
    a, b = 0.0, 1.0
    while cost(make(b)) > lo_cost and b < 64:
      b *= 2
    for _ in range(40):  # cost falls as r grows.
      mid = (a + b) / 2
      a, b = (mid, b) if cost(make(mid)) > target else (a, mid)
    gene = make((a + b) / 2)
    if gene not in genes:
      genes.append(gene)
  return genes


def evolve(evaluate: Callable[[Gene], float | dict], cost: Callable[[Gene], dict] | None,
           store: Store, *, initial: Sequence[Gene], floor_cost: float,
           upper: int | None = None, floor_value: int | None = None,
           space: Lengths | Grid | None = None, settings: SearchSettings = SearchSettings(),
           cost_key: str = "cost", progress: Callable[[int, dict], None] | None = None) -> dict:
  """Runs the search; returns `{"frontier": [...], "areas": [...], "scored": n}`.

  Args:
    evaluate: gene -> metric (higher is better), or a dict with "metric" and any measured
      costs (when the cost is only known by running the model); called once per distinct gene.
    cost: gene -> dict of costs known before scoring (the store keeps them all), or None when
      `evaluate` measures them; `cost_key` is the one the frontier and the floor use.
    store: the cache (resumes a killed search).
    initial: the initial population.
    floor_cost: genes cheaper than this are never scored (when `cost` is given) and never
      join the population.
    space: where genes live; by default `Lengths(upper, floor_value)`.
  """
  space = space if space is not None else Lengths(upper, floor_value)
  rng = np.random.default_rng(settings.seed)

  def score(gene: Gene) -> bool:
    """Scores `gene` unless it is cached or below the floor; whether it may join."""
    costs = cost(gene) if cost is not None else {}
    if cost_key in costs and costs[cost_key] < floor_cost:
      return False
    if gene not in store:
      start = time.perf_counter()
      out = evaluate(gene)
      measured = dict(out) if isinstance(out, dict) else {"metric": out}
      measured["metric"] = float(measured["metric"])
      store.add(gene, {**costs, **measured, "seconds": time.perf_counter() - start})
    return store.records[gene][cost_key] >= floor_cost

  def scored() -> dict[Gene, tuple[float, float]]:
    return {g: (r[cost_key], r["metric"]) for g, r in store.records.items()}

  population = [g for g in initial if score(g)]
  if not population:
    raise UserError(f"every initial config costs less than the search floor ({floor_cost:g} "
                    f"{cost_key}); lower the floor or start from costlier configs")
  lower_cost = floor_cost
  upper_cost = max(store.records[g][cost_key] for g in population)
  areas = []
  for it in range(settings.iterations + 1):
    table = scored()
    population = pareto_front({g: table[g] for g in population})
    areas.append(frontier_area(population, table, lower_cost, upper_cost))
    if progress is not None:
      progress(it, {"frontier": len(population), "area": areas[-1], "scored": len(store.records)})
    if it == settings.iterations:
      break
    members = set(population)
    for operator, count in (("mutation", settings.mutations), ("crossover", settings.crossovers)):
      added = attempts = 0
      while added < count and attempts < settings.max_attempts:
        attempts += 1
        if operator == "mutation":
          parent = population[int(rng.integers(len(population)))]
          child = space.mutate(rng, parent, settings.mutation_prob)
        else:
          if len(population) < 2:
            break
          i, j = rng.choice(len(population), size=2, replace=False)
          child = space.crossover(population[int(i)], population[int(j)])
        if child in members or not score(child):
          continue
        population.append(child)
        members.add(child)
        added += 1
  # The frontier of every gene the store holds at or above the floor: a rerun with fewer
  # iterations than the store's keeps what the longer one found (in one run it is the
  # population's: every gene this run scored joined it).
  front = pareto_front({g: v for g, v in scored().items() if v[0] >= floor_cost})
  return {"frontier": front, "areas": areas, "scored": len(store.records)}
