"""The batched LAT engine (gather path) against the masked path, and compile reuse."""

import dataclasses
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from jax._src import array as jax_array

from adapler_jax.data import load_split, subset, tokenize
from adapler_jax.data.batching import eval_batches
from adapler_jax.errors import UserError
from adapler_jax.eval import report
from adapler_jax.infer import LengthEngine
from adapler_jax.models import lat
from adapler_jax.models.heads import ClassifierConfig
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.train import classifier
from tests.test_engine import (KERNEL_SETS, TINY, CompileCounter, minilm,  # noqa: F401 (fixture)
                               synthetic)


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


def test_scores_counting_padded_queries_pad_to_the_full_length():
  """`include_pad_queries=True` (the authors' scores count padded query rows): the engine,
  which drops padding first, refuses it when built; the masked path pads every batch to
  `max_length`, as LengthDrop trains, so an example's logits do not depend on the lengths
  batched beside it; `evaluate_lat` runs through that path."""
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(2), TINY, 2)
  data = synthetic(24, 32, seed=7)
  flags = SelectionFlags(include_pad_queries=True)
  config = (8, 4)  # real tokens drop from examples of 5 tokens or more.
  with pytest.raises(UserError, match="^" + re.escape(
      "LengthEngine drops padding before it scores, so SelectionFlags(include_pad_queries="
      "True) has no padded query rows to count; run it through the masked path "
      "(eval.report.masked_lat_logits)")):
    LengthEngine(cfg, params, config, flags=flags, max_length=32)
  every = report.masked_lat_logits(cfg, params, data, config, base=32, flags=flags,
                                   batch_size=len(data))  # one batch, as long as the longest.
  short = np.flatnonzero(data.lengths <= 16)  # alone, they pad to 16 slots, not 32.
  assert 0 < len(short) < len(data)
  alone = dataclasses.replace(data, input_ids=data.input_ids[short],
                              token_type_ids=data.token_type_ids[short],
                              lengths=data.lengths[short], labels=data.labels[short],
                              ids=[data.ids[i] for i in short])
  np.testing.assert_allclose(report.masked_lat_logits(cfg, params, alone, config, base=32,
                                                      flags=flags, batch_size=8),
                             every[short], atol=1e-5, rtol=0)
  result = report.evaluate_lat(cfg, params, data, "accuracy", config, base=32, flags=flags,
                               batch_size=8)
  assert result["metric"] == (every.argmax(-1) == data.labels).mean()
  batch = {"input_ids": data.input_ids, "token_type_ids": data.token_type_ids,
           "attention_mask": np.arange(32) < data.lengths[:, None]}
  _, trace = lat.masked_forward(TINY, 2, params, batch, np.asarray(config), base=32,
                                flags=flags)  # the tokens the masked path really kept.
  np.testing.assert_allclose(result["kept_tokens_per_layer"],
                             np.asarray(trace["lengths"]).mean(axis=1))


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
  with pytest.raises(UserError, match="^" + re.escape(
      "length config (8, 12) must be non-increasing layer by layer, e.g. 26,21 (ratio 0.2 "
      "per layer)") + "$"):
    LengthEngine(cfg, params, (8, 12), max_length=32)


def test_a_classifier_refuses_a_selection_that_lets_cls_go():
  """The head reads [CLS]: both paths refuse `keep_cls=False` rather than read another
  token (gather path) or [CLS]'s stale vector (masked path)."""
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(1), TINY, 2)
  flags = SelectionFlags(keep_cls=False)
  message = "SelectionFlags(keep_cls=False) lets [CLS] go, but a classification head reads it"
  with pytest.raises(UserError, match=re.escape(message)):
    LengthEngine(cfg, params, (8, 4), flags=flags, max_length=32)
  data = synthetic(4, 16, seed=1)
  batch = {"input_ids": data.input_ids, "token_type_ids": data.token_type_ids,
           "attention_mask": np.arange(16) < data.lengths[:, None]}
  with pytest.raises(UserError, match=re.escape(message)):
    lat.masked_forward(TINY, 2, params, batch, np.array([8, 4]), base=16, flags=flags)


def test_a_second_adaptive_engine_compiles_nothing():
  """Engine jits live at module level: a new AdapLeR engine (a new epoch's evaluation)
  on the same shapes reuses every compilation."""
  from adapler_jax.infer import AdaptiveEngine  # pylint: disable=g-import-not-at-top
  from adapler_jax.models import adapler  # pylint: disable=g-import-not-at-top
  from tests.test_engine import scaled_params  # pylint: disable=g-import-not-at-top
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=2, scale=8.0, eta=0.8)
  data = synthetic(24, 32, seed=6)
  first = AdaptiveEngine(cfg, params, batch_size=4, max_length=32, buckets=(8, 16, 32)).run(data)
  with CompileCounter() as counter:
    second = AdaptiveEngine(cfg, params, batch_size=4, max_length=32,
                            buckets=(8, 16, 32)).run(data)
  assert counter.count == 0
  np.testing.assert_array_equal(first.logits, second.logits)


def test_data_tokenized_off_the_engine_buckets_runs_at_its_own_width():
  """Rows padded to 24, an engine whose buckets jump from 16 to 32: no layer is planned
  wider than its input, and the engine equals the masked path."""
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(1), TINY, 2)
  data = synthetic(20, 24, seed=7)
  for base in ("padded", "actual"):
    flags = SelectionFlags(length_base=base)
    got = LengthEngine(cfg, params, (30, 20), base=32, flags=flags, batch_size=8,
                       max_length=32, buckets=(8, 16, 32)).run(data)
    masked = report.masked_lat_logits(cfg, params, data, (30, 20), base=32, flags=flags,
                                      batch_size=8)
    np.testing.assert_allclose(got.logits, masked, atol=1e-5, rtol=0)


def test_one_program_per_bucket_serves_every_config():
  """Layer widths are data of the program, not shapes: after one engine's warm-up, engines
  at other configs (and batches of any lengths) compile nothing, and each still equals
  the masked path."""
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(3), TINY, 2)
  data = synthetic(40, 32, seed=8)
  kwargs = dict(base=32, batch_size=8, max_length=32, buckets=(8, 16, 32))
  first = LengthEngine(cfg, params, (20, 12), **kwargs)
  first.warmup()
  assert first.compiled_shapes <= KERNEL_SETS * 3  # one program per bucket and kernel set.
  configs = [((20, 12), "padded"), ((30, 20), "padded"), ((12, 4), "padded"),
             ((6, 2), "padded"), ((20, 12), "actual"), (None, "padded")]
  with CompileCounter() as counter:
    runs = [LengthEngine(cfg, params, config, flags=SelectionFlags(length_base=base), **kwargs)
            for config, base in configs]
    results = [engine.run(data) for engine in runs]
  assert counter.count == 0
  for (config, base), engine, got in zip(configs, runs, results):
    masked = report.masked_lat_logits(cfg, params, data, config, base=32, batch_size=8,
                                      flags=SelectionFlags(length_base=base))
    np.testing.assert_allclose(got.logits, masked, atol=1e-5, rtol=0)
    assert engine.compiled_shapes <= KERNEL_SETS * 3
  assert (got.kept_counts == got.lengths[:, None]).all()  # None: every token, every layer.


def test_a_rows_kept_order_does_not_depend_on_its_batch():
  """A row that a layer drops nothing from keeps its slots' order, as it does alone, even
  when rows beside it drop (they were reordered by significance then): kept positions, in
  order, and logits equal at batch 1 and batch 8."""
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(4), TINY, 2)
  data = synthetic(40, 32, seed=9)
  kwargs = dict(base=32, max_length=32, buckets=(8, 16, 32))
  config = (8, 4)  # layer 1 drops from rows of 5 tokens or more, not from shorter ones.
  alone, batched = (LengthEngine(cfg, params, config, batch_size=b, **kwargs).run(
      data, return_rationales=True) for b in (1, 8))
  n = data.lengths
  assert ((n <= 4) & (n >= 3)).sum() >= 2 and ((n > 4) & (n <= 8)).sum() >= 2  # one bucket.
  for i in range(len(data)):
    for l in range(TINY.num_layers):
      np.testing.assert_array_equal(batched.kept_positions[i][l], alone.kept_positions[i][l])
    if n[i] <= 4:  # never dropped from: position order at every layer.
      assert all((p == np.arange(n[i])).all() for p in batched.kept_positions[i])
  np.testing.assert_allclose(batched.logits, alone.logits, atol=1e-5, rtol=0)


def test_no_transfer_to_the_host_between_layers(monkeypatch):
  """The host plans a batch from its lengths and reads only the outputs (on CPU every
  read of an array's value is counted; the guard stops them on accelerators)."""
  cfg = ClassifierConfig(TINY, 2)
  params = classifier.init_classifier(jax.random.key(3), TINY, 2)
  data = synthetic(8, 32, seed=9)
  engine = LengthEngine(cfg, params, (20, 6), base=32, batch_size=8, max_length=32,
                        buckets=(8, 16, 32))
  batch = next(iter(eval_batches(data, 8, engine.widths)))
  n = batch["attention_mask"].sum(axis=1, dtype=np.int32)
  args = batch["input_ids"], batch["token_type_ids"], n
  engine._call(*args)  # pylint: disable=protected-access  # compiles outside the guard.
  reads = []
  value = jax_array.ArrayImpl._value  # pylint: disable=protected-access
  monkeypatch.setattr(jax_array.ArrayImpl, "_value",
                      property(lambda a: reads.append(a.shape) or value.fget(a)))
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    (logits, trace), real, widths = jax.block_until_ready(
        engine._call(*args))  # pylint: disable=protected-access
  assert not reads
  assert widths[-1] < 32 and (real[:, -1] < n).sum() == 7  # the layers did shrink.
  positions = jax.device_get(trace["positions"])
  assert reads  # the count sees reads.
  np.testing.assert_array_equal((positions >= 0).sum(-1).T, real)


def test_the_python_example_of_the_lat_docs_runs(minilm):  # noqa: F811
  """docs/lat.md's "From Python" block runs as written, and its two paths agree."""
  page = (Path(__file__).resolve().parents[1] / "docs" / "lat.md").read_text()
  block = page.split("From Python, a LengthDrop-shaped model", 1)[1]
  code = block.split("```python\n", 1)[1].split("```", 1)[0]
  scope = {}
  exec(compile(code, "docs/lat.md", "exec"), scope)  # pylint: disable=exec-used
  np.testing.assert_allclose(scope["out"].logits, scope["logits"], atol=1e-4, rtol=0)
  assert scope["trace"]["kept"].shape[0] == 6 and scope["out"].kept_counts.shape == (2, 6)
