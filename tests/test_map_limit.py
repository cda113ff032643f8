"""Compiled programs released near Linux's limit on memory mappings (`infer.map_limit`)."""

import logging

import jax
import numpy as np
import pytest

from adapler_jax.infer import AdaptiveEngine, map_limit
from adapler_jax.models import adapler
from tests.test_engine import TINY, scaled_params, synthetic

pytestmark = pytest.mark.skipif(map_limit.mapping_count() is None,
                                reason="no /proc/self/maps: not Linux")


def limit_file(tmp_path, monkeypatch, limit: int) -> None:
  path = tmp_path / "max_map_count"
  path.write_text(f"{limit}\n")
  monkeypatch.setattr(map_limit, "LIMIT_FILE", str(path))


def test_programs_are_released_only_near_the_limit(tmp_path, monkeypatch, caplog):
  programs = [jax.jit(lambda x, k=k: x * k + k) for k in range(40)]
  for f in programs:
    f(np.float32(1)).block_until_ready()
  held = map_limit.mapping_count()

  limit_file(tmp_path, monkeypatch, 10 * held)
  assert not map_limit.release_near_limit()
  assert programs[0]._cache_size() == 1

  limit_file(tmp_path, monkeypatch, held)
  with caplog.at_level(logging.WARNING):
    assert map_limit.release_near_limit()
  assert "vm.max_map_count" in caplog.text
  assert programs[0]._cache_size() == 0
  assert map_limit.mapping_count() <= held - len(programs)  # each held one or more.


def test_an_engine_released_before_each_new_program_gives_the_same_results(tmp_path,
                                                                          monkeypatch):
  """A limit of 1 releases every program before the engine's next new one: the run compiles
  again and again, and its outputs are the bits of an unreleased run."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(24, 32, seed=3)
  build = lambda: AdaptiveEngine(cfg, params, batch_size=8, max_length=32, buckets=(16, 32))
  want = build().run(data)

  limit_file(tmp_path, monkeypatch, 1)
  engine, releases = build(), map_limit._releases
  got = engine.run(data)
  assert map_limit._releases - releases == engine.compiled_shapes > 1
  np.testing.assert_array_equal(got.logits, want.logits)
  np.testing.assert_array_equal(got.kept_counts, want.kept_counts)
  # A second run releases before each program again: only the last one of the first run
  # was left, and the second runs it last.
  again = map_limit._releases
  engine.run(data)
  assert map_limit._releases - again == engine.compiled_shapes
