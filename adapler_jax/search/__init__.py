"""Evolutionary search over per-layer settings, Pareto frontiers and budget picks."""

from adapler_jax.search.evolution import (SearchSettings, SourceMismatch, Store, crossover,
                                          evolve, frontier_area, initial_population, mutate,
                                          pareto_front, pick_budget, pick_max_drop)

__all__ = ["SearchSettings", "SourceMismatch", "Store", "crossover", "evolve",
           "frontier_area", "initial_population", "mutate", "pareto_front", "pick_budget",
           "pick_max_drop"]
