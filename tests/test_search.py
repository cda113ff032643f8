"""The evolutionary search: operators, frontier, floor, cache, resume, budget picks."""

import dataclasses
import numpy as np
import pytest

from adapler_jax.errors import UserError
from adapler_jax.search import evolution as evo

UPPER, FLOOR_VALUE, LAYERS = 64, 2, 6


def _monotone_in_range(gene):
  return (all(a >= b for a, b in zip(gene, gene[1:])) and gene[0] <= UPPER
          and gene[-1] >= FLOOR_VALUE and len(gene) == LAYERS)


def _random_parent(rng):
  return tuple(sorted(rng.integers(FLOOR_VALUE, UPPER + 1, LAYERS).tolist(), reverse=True))


def test_mutation_and_crossover_keep_genes_monotone_and_in_range():
  rng = np.random.default_rng(0)
  for _ in range(10_000):
    a, b = _random_parent(rng), _random_parent(rng)
    assert _monotone_in_range(evo.mutate(rng, a, UPPER, FLOOR_VALUE, 0.5))
    child = evo.crossover(a, b)
    assert _monotone_in_range(child)
    assert child == tuple(int(np.ceil((x + y) / 2)) for x, y in zip(a, b))


def test_grid_operators_stay_on_the_grid_and_move_one_step():
  space, rng = evo.Grid(11), np.random.default_rng(1)
  for _ in range(5_000):
    a, b = tuple(rng.integers(0, 11, LAYERS).tolist()), tuple(rng.integers(0, 11, LAYERS).tolist())
    child = space.mutate(rng, a, 0.5)
    assert len(child) == LAYERS and all(0 <= c <= 10 and abs(c - p) <= 1
                                        for c, p in zip(child, a))
    assert space.crossover(a, b) == tuple(int(np.ceil((x + y) / 2)) for x, y in zip(a, b))
  assert space.mutate(rng, (0,) * LAYERS, 0.0) == (0,) * LAYERS  # p 0 changes nothing.


def test_measured_costs_feed_the_frontier_when_no_cost_model_is_given(tmp_path):
  """AdapLeR's case: the evaluator returns the cost with the metric."""
  calls = []

  def evaluate(gene):
    calls.append(gene)
    return {"metric": 1.0 - 0.05 * sum(gene), "cost": 1.0 / (1 + sum(gene))}

  settings = evo.SearchSettings(iterations=3, population=3, mutations=4, crossovers=4, seed=0)
  initial = [(i,) * 3 for i in range(4)]
  out = evo.evolve(evaluate, None, evo.Store(tmp_path / "s.jsonl"), initial=initial,
                   floor_cost=0.0, space=evo.Grid(4), settings=settings)
  assert len(calls) == len(set(calls)) == out["scored"]
  # Cost and metric both fall as a gene's total rises, so every total scored is on the
  # frontier, once: genes of equal total are equally good.
  totals = [sum(g) for g in out["frontier"]]
  assert sorted(totals) == sorted({sum(g) for g in calls}) and len(totals) > 3


def test_pareto_front_has_no_dominated_member_and_equal_costs_keep_the_better():
  scored = {(1,): (10.0, 0.5), (2,): (10.0, 0.7),  # equal cost: the better stays.
            (3,): (20.0, 0.6),  # dominated by (2,).
            (4,): (30.0, 0.9), (5,): (40.0, 0.9),  # equal score, dearer: dominated.
            (6,): (5.0, 0.1)}
  front = evo.pareto_front(scored)
  assert front == [(6,), (2,), (4,)]
  for g in front:
    assert not any(scored[h][0] <= scored[g][0] and scored[h][1] >= scored[g][1]
                   and scored[h] != scored[g] for h in scored)
  assert evo.pareto_front({(1,): (1.0, 0.5)}) == [(1,)]  # no duplicate of a lone gene.


def test_budget_pickers_on_a_synthetic_frontier():
  scored = {(1,): (0.3, 0.80), (2,): (0.5, 0.85), (3,): (0.7, 0.90), (4,): (1.0, 0.89)}
  front = evo.pareto_front(scored)
  assert evo.pick_budget(front, scored, 0.6) == (2,)
  assert evo.pick_budget(front, scored, 0.2) is None
  assert evo.pick_max_drop(front, scored, reference=0.89, max_drop=0.0) == (3,)  # dagger.
  assert evo.pick_max_drop(front, scored, reference=0.89, max_drop=0.05) == (2,)
  assert evo.pick_budget(front, scored, 1.0) == (3,)  # star: best accuracy.
  # Exactly max_drop below, though 0.52 - 0.05 rounds to 0.47000000000000003.
  edge = {(2,): (0.5, 0.47), (3,): (0.7, 0.52)}
  assert evo.pick_max_drop(evo.pareto_front(edge), edge, reference=0.52, max_drop=0.05) == (2,)


def _problem(calls):
  def cost(gene):
    return {"cost": float(sum(gene)), "other": float(sum(g * g for g in gene))}

  def evaluate(gene):
    calls.append(gene)
    # Peaks inside the space so the frontier is neither cheapest nor dearest only.
    return float(-abs(gene[0] - 40) - 0.5 * abs(gene[-1] - 10) + 0.01 * sum(gene))

  return cost, evaluate


def _run(tmp_path, calls, settings, name="store.jsonl"):
  cost, evaluate = _problem(calls)
  lower = (52, 42, 34, 28, 23, 19)
  make = lambda r: tuple(max(FLOOR_VALUE, int(np.ceil(UPPER * (1 - r) ** (i + 1))))
                         for i in range(LAYERS))
  initial = evo.initial_population(lambda g: cost(g)["cost"], make, lower, (UPPER,) * LAYERS,
                                   6)
  store = evo.Store(tmp_path / name)
  out = evo.evolve(evaluate, cost, store, initial=initial, upper=UPPER,
                   floor_value=FLOOR_VALUE, floor_cost=cost(lower)["cost"], settings=settings)
  return out, store


def test_search_scores_each_gene_once_never_below_the_floor_and_is_deterministic(tmp_path):
  settings = evo.SearchSettings(iterations=4, population=6, mutations=8, crossovers=8, seed=3)
  calls = []
  out, store = _run(tmp_path, calls, settings)
  assert len(calls) == len(set(calls)) == out["scored"]
  floor = sum((52, 42, 34, 28, 23, 19))
  assert all(sum(g) >= floor for g in calls)
  assert len(out["areas"]) == settings.iterations + 1
  assert all(b >= a - 1e-12 for a, b in zip(out["areas"], out["areas"][1:]))  # never worse.
  again, _ = _run(tmp_path, [], settings, "other.jsonl")
  assert again["frontier"] == out["frontier"]


def test_a_killed_search_resumes_from_its_store_without_rescoring(tmp_path):
  settings = evo.SearchSettings(iterations=3, population=6, mutations=6, crossovers=6, seed=1)
  calls = []
  full, _ = _run(tmp_path, calls, settings, "full.jsonl")
  # "Kill" after the first 10 evaluations: keep those lines (and half of the next one).
  lines = (tmp_path / "full.jsonl").read_text().splitlines()
  (tmp_path / "killed.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][:15])
  resumed_calls = []
  resumed, _ = _run(tmp_path, resumed_calls, settings, "killed.jsonl")
  assert resumed["frontier"] == full["frontier"]
  assert len(resumed_calls) == len(calls) - 10  # the 10 stored genes are never re-scored.
  # The cut line stays one bad line: the first record after it is not lost with it.
  assert (evo.Store(tmp_path / "killed.jsonl").records.keys()
          == evo.Store(tmp_path / "full.jsonl").records.keys())
  reader = evo.Store(tmp_path / "full.jsonl", write=False)  # another process of the run.
  before = (tmp_path / "full.jsonl").read_bytes()
  reader.add((1,) * LAYERS, {"cost": 1.0, "metric": 0.5})
  assert (1,) * LAYERS in reader and (tmp_path / "full.jsonl").read_bytes() == before


def test_a_shorter_rerun_keeps_the_frontier_its_store_holds(tmp_path):
  """Rerun with fewer iterations on a longer search's store, the frontier is still that of
  everything scored (it was the shorter run's population alone: a worse, dominated one)."""
  settings = evo.SearchSettings(iterations=3, population=6, mutations=6, crossovers=6, seed=1)
  full, store = _run(tmp_path, [], settings)
  table = {g: (r["cost"], r["metric"]) for g, r in store.records.items()}
  calls = []
  short, _ = _run(tmp_path, calls, dataclasses.replace(settings, iterations=0))
  assert not calls and short["frontier"] == full["frontier"]
  assert short["frontier"] == evo.pareto_front(
      {g: v for g, v in table.items() if v[0] >= sum((52, 42, 34, 28, 23, 19))})


def test_a_store_resumes_only_on_the_source_it_scored(tmp_path):
  """Scores of one model never serve another: a store saved with another source refuses
  and stays as it is; the same source (or a store written before sources) resumes."""
  path = tmp_path / "store.jsonl"
  store = evo.Store(path, {"checkpoint": "aaa", "held_out_rows": "h1"})
  store.add((3, 2), {"cost": 0.5, "metric": 0.7})
  before = path.read_bytes(), store.source_path.read_bytes()
  with pytest.raises(evo.SourceMismatch, match=r"store\.jsonl holds scores of another "
                     r"checkpoint, eta$"):
    evo.Store(path, {"checkpoint": "bbb", "held_out_rows": "h1", "eta": [1.0]})
  assert (path.read_bytes(), store.source_path.read_bytes()) == before
  again = evo.Store(path, {"held_out_rows": "h1", "checkpoint": "aaa"})
  assert again.records == store.records and again.source == store.source
  store.source_path.unlink()  # a store written before sources: taken as it is, not claimed.
  legacy = evo.Store(path, {"checkpoint": "bbb"})
  assert (3, 2) in legacy and legacy.source is None and not store.source_path.exists()
  fresh = evo.Store(tmp_path / "new.jsonl", {"checkpoint": "bbb"})
  assert fresh.source == {"checkpoint": "bbb"} and fresh.source_path.exists()


def test_loops_end_under_their_attempt_cap(tmp_path):
  """A space with one gene: no child can ever be new, and the search still ends."""
  calls = []
  store = evo.Store(tmp_path / "s.jsonl")
  out = evo.evolve(lambda g: calls.append(g) or 1.0, lambda g: {"cost": 1.0}, store,
                   initial=[(2, 2)], upper=2, floor_value=2, floor_cost=0.0,
                   settings=evo.SearchSettings(iterations=2, max_attempts=50))
  assert out["frontier"] == [(2, 2)] and calls == [(2, 2)]


def test_frontier_area_counts_a_point_past_the_upper_cost_at_the_end():
  """A costlier child with a better metric joins the frontier past `upper`: the area over
  [lower, upper] may not shrink (its step would otherwise have a negative width)."""
  scored = {(0,): (0.2, 0.80), (1,): (0.6, 0.85), (2,): (1.0, 0.90)}
  before = evo.frontier_area(evo.pareto_front(scored), scored, 0.0, 1.0)
  assert before == pytest.approx(0.8 * 0.4 + 0.85 * 0.4)
  scored[(3,)] = (1.4, 0.95)
  assert evo.frontier_area(evo.pareto_front(scored), scored, 0.0, 1.0) == pytest.approx(before)


def test_a_search_whose_every_initial_config_is_below_the_floor_says_so(tmp_path):
  calls = []
  with pytest.raises(UserError, match=r"every initial config costs less than the search floor "
                                      r"\(2 cost\)"):
    evo.evolve(lambda g: calls.append(g) or 1.0, lambda g: {"cost": 1.0},
               evo.Store(tmp_path / "s.jsonl"), initial=[(2, 2)], upper=2, floor_value=1,
               floor_cost=2.0, settings=evo.SearchSettings(iterations=1))
  assert calls == []  # nothing was scored.


def test_a_new_frontier_retires_a_pick_its_rule_no_longer_makes(tmp_path, caplog):
  """`search/chosen.json` (what export ships) stays while its rule still picks it from the
  new frontier; otherwise it moves to `chosen.previous.json`, unchanged, with a warning."""
  import json  # pylint: disable=g-import-not-at-top
  from adapler_jax.pipeline import frontier  # pylint: disable=g-import-not-at-top
  point = lambda config, cost, metric: {"config": config, "actual_fraction": cost,
                                        "held_out_metric": metric}
  result = lambda *rows: {"cost": "actual", "full": {"held_out_metric": 0.9},
                          "frontier": list(rows)}
  chosen = tmp_path / frontier.CHOSEN_FILE
  chosen.parent.mkdir()
  text = json.dumps({"rule": {"flops_budget": None, "max_drop": 1.0}, "config": [3, 2],
                     "actual_fraction": 0.6, "held_out_metric": 0.895})
  chosen.write_text(text)
  frontier.retire_stale_choice(tmp_path, result(point([3, 2], 0.6, 0.895),
                                                point([4, 4], 1.0, 0.9)))
  assert chosen.read_text() == text
  frontier.retire_stale_choice(tmp_path, result(point([2, 2], 0.5, 0.893),
                                                point([3, 2], 0.6, 0.895)))
  assert not chosen.exists()
  assert (chosen.parent / "chosen.previous.json").read_text() == text
  assert "picked from an earlier frontier" in caplog.text
  # AdapLeR: the same gene on another eta grid is another point.
  eta = lambda m: {**point([1, 1], 0.6, 0.895), "eta_multipliers": m}
  chosen.write_text(json.dumps({"rule": {"flops_budget": 0.7, "max_drop": None},
                                **eta([1.0, 1.0])}))
  frontier.retire_stale_choice(tmp_path, result(eta([1.0, 1.0])))
  assert chosen.exists()
  frontier.retire_stale_choice(tmp_path, result(eta([1.25, 1.25])))
  assert not chosen.exists()
  # The same point searched on another checkpoint is another model's; a pick saved before
  # picks recorded their checkpoint is kept.
  on = lambda checkpoint: {**result(eta([1.0, 1.0])), "checkpoint": checkpoint}
  for recorded, kept in ((None, True), ("a", True), ("b", False)):
    pick = {"rule": {"flops_budget": 0.7, "max_drop": None}, **eta([1.0, 1.0])}
    chosen.write_text(json.dumps(pick if recorded is None else {**pick, "checkpoint": recorded}))
    caplog.clear()
    frontier.retire_stale_choice(tmp_path, on("a"))
    assert chosen.exists() == kept
  assert "it was picked from a search of another checkpoint" in caplog.text
