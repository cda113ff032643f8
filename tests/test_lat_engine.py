"""The batched LAT engine (gather path) against the masked path, and compile reuse."""

import jax
import numpy as np
import pytest

from adapler_jax.data import load_split, subset, tokenize
from adapler_jax.errors import UserError
from adapler_jax.eval import report
from adapler_jax.infer import LengthEngine
from adapler_jax.models.heads import ClassifierConfig
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.train import classifier
from adapler_jax.weights import load_backbone
from tests.test_engine import TINY, CompileCounter, synthetic


@pytest.fixture(scope="module")
def minilm():
  try:
    return load_backbone("minilm")
  except UserError as e:
    pytest.skip(str(e))


@pytest.mark.parametrize("base", ["padded", "actual"])
def test_engine_equals_masked_path_on_real_text(minilm, shared_data, base):
  """SST-2 dev sentences, MiniLM with a random head: the engine really drops tokens and
  gives the masked path's predictions and logits (within 1e-4)."""
  data = tokenize(subset(load_split("sst2", "dev", data_dir=shared_data / "sst2"), 48, seed=0),
                  minilm.tokenizer, 64)
  cfg = ClassifierConfig(minilm.config, 2)
  params = classifier.init_classifier(jax.random.key(0), minilm.config, 2, minilm.params)
  flags = SelectionFlags(length_base=base)
  config = lengths.constant_ratio_config(64, 6, 0.2) if base == "padded" else (40, 32, 24, 20,
                                                                              16, 12)
  engine = LengthEngine(cfg, params, config, base=64, flags=flags, batch_size=16, max_length=64)
  got = engine.run(data)
  masked = report.masked_lat_logits(cfg, params, data, config, base=64, flags=flags,
                                    batch_size=16)
  np.testing.assert_array_equal(got.predictions, masked.argmax(-1))
  np.testing.assert_allclose(got.logits, masked, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(got.kept_counts,
                                lengths.real_counts(config, data.lengths, 64, base))
  assert got.kept_counts[:, -1].sum() < got.lengths.sum()  # tokens really dropped.


def test_a_second_engine_compiles_nothing():
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(1), TINY, 2)
  data = synthetic(24, 32, seed=5)
  config = (20, 12)
  LengthEngine(cfg, params, config, batch_size=8, max_length=32, buckets=(8, 16, 32)).run(data)
  with CompileCounter() as counter:
    result = LengthEngine(cfg, params, config, batch_size=8, max_length=32,
                          buckets=(8, 16, 32)).run(data)
  assert counter.count == 0
  assert (result.kept_counts[:, -1] <= 12).all()


def test_engine_validates_the_config():
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(1), TINY, 2)
  with pytest.raises(UserError, match="non-increasing"):
    LengthEngine(cfg, params, (8, 12), max_length=32)
