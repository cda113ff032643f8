"""Bucketed inference engines against the per-example reference (docs/benchmarks.md).

The reference (`per_example_run`, one `hard_forward` per example) compiles once per
distinct token count, so the real-data examples are drawn from a few exact input
lengths spread over each dataset's range: mixed lengths, bounded test time.
"""

import dataclasses
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring
from jax._src import array as jax_array

from adapler_jax.data import load_split, subset, tokenize
from adapler_jax.data.batching import eval_batches
from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.errors import UserError
from adapler_jax.infer import AdaptiveEngine, FullLengthEngine, per_example_run
from adapler_jax.models import adapler, walk
from adapler_jax.models.bert import Bert, EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import ClassificationHead, SequenceClassifier
from adapler_jax.weights import (EMBEDDED, convert_state_dict, load_backbone,
                                 to_hf_state_dict)
from tests import jax_compat

TINY = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512)
KERNEL_SETS = 2 if jax.default_backend() == "cpu" else 1  # dot kernels per program (`kernels`).


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _initializers(cfg):
  """Jitted initializers of the encoder, the head and one predictor, per model shape."""
  enc = cfg.encoder
  x, ids = jnp.zeros((1, 1, enc.hidden_size)), jnp.zeros((1, 1), jnp.int32)
  bert = jax.jit(lambda k: Bert(enc).init(k, ids, ids, x[..., 0])["params"])
  head = jax.jit(lambda k: ClassificationHead(enc, cfg.num_labels).init(k, x)["params"])
  predictor = jax.jit(lambda k: adapler.ContributionPredictor(cfg.cp_hidden).init(k, x)["params"])
  return bert, head, predictor


def scaled_params(cfg, seed, scale, eta, bert=None):
  """AdapLeR params: `bert` (or a random encoder), a fresh head, fresh predictors whose
  weights are multiplied by `scale` (larger weights spread the contribution scores, so
  tokens fall below eta / n), and `eta` (scalar or per layer).
  """
  init_bert, init_head, init_predictor = _initializers(cfg)
  keys = jax.random.split(jax.random.key(seed), cfg.num_layers + 2)
  model = {"bert": init_bert(keys[0]) if bert is None else bert, "head": init_head(keys[1])}
  for l in range(cfg.num_layers):
    model[f"predictors_{l}"] = jax.tree.map(lambda w: w * scale, init_predictor(keys[l + 2]))
  speed = {"eta": jnp.broadcast_to(jnp.asarray(eta, jnp.float32), (cfg.num_layers,)),
           "theta": jnp.full((cfg.num_layers,), cfg.theta_init, jnp.float32)}
  params = {"model": model, "speed": speed}
  layout = jax.eval_shape(functools.partial(adapler.init, cfg=cfg), keys[0])
  assert jax.tree.structure(params) == jax.tree.structure(layout)
  return params


def _per_row_fields(tok):
  """Names of the fields of a TokenizedDataset that hold one entry per row."""
  return [f.name for f in dataclasses.fields(tok)
          if isinstance(getattr(tok, f.name), (np.ndarray, list))
          and len(getattr(tok, f.name)) == len(tok)]


def take_rows(tok, idx):
  idx = np.asarray(idx)
  return dataclasses.replace(tok, **{
      k: [v[i] for i in idx] if isinstance(v, list) else v[idx]
      for k in _per_row_fields(tok) for v in [getattr(tok, k)]})


def concat(a, b):
  return dataclasses.replace(a, **{
      k: getattr(a, k) + getattr(b, k) if isinstance(getattr(a, k), list)
      else np.concatenate([getattr(a, k), getattr(b, k)]) for k in _per_row_fields(a)})


def few_lengths(tok, num_lengths, per, seed=0):
  """Up to `per` rows of each of `num_lengths` common lengths spread over the range."""
  edges = np.quantile(tok.lengths, np.linspace(0, 1, num_lengths + 1))
  chosen = set()
  for lo, hi in zip(edges[:-1], edges[1:]):
    values, counts = np.unique(tok.lengths[(tok.lengths >= lo) & (tok.lengths <= hi)],
                               return_counts=True)
    chosen.add(int(values[np.argmax(counts)]))
  rng = np.random.default_rng(seed)
  idx = [rng.permutation(np.flatnonzero(tok.lengths == n))[:per] for n in sorted(chosen)]
  return take_rows(tok, np.sort(np.concatenate(idx)))


def synthetic(num, max_length, seed, vocab=1000):
  """Random token ids of mixed lengths ([CLS] = 101 first, [SEP] = 102 last)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, max_length + 1, num).astype(np.int32)
  valid = np.arange(max_length) < lengths[:, None]
  ids = np.where(valid, rng.integers(1000, 1000 + vocab, (num, max_length)), 0)
  ids[:, 0] = 101
  ids[np.arange(num), lengths - 1] = 102
  return TokenizedDataset(ids.astype(np.int32), np.zeros_like(ids, np.int32), lengths,
                          rng.integers(0, 2, num).astype(np.int32),
                          [str(i) for i in range(num)], "synthetic")


class CompileCounter:
  """Counts XLA backend compilations while active (all functions, all engines)."""

  def __init__(self):
    self.count = 0

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1

  def __enter__(self):
    monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc):
    jax_compat.unregister_event_duration_listener(self._listen)


def assert_same_outputs(got, want):
  np.testing.assert_array_equal(got.kept_counts, want.kept_counts)
  np.testing.assert_array_equal(got.predictions, want.predictions)
  np.testing.assert_allclose(got.logits, want.logits, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def minilm():
  """The embedded MiniLM; skipped only when its package is not installed (a load that
  fails once it is, is a failure)."""
  package = EMBEDDED["minilm"]
  if importlib.util.find_spec(package) is None:
    pytest.skip(f"{package} is not installed (see the README's Setup)")
  return load_backbone("minilm")


@pytest.fixture(scope="module")
def real_runs(minilm, shared_data):
  """MiniLM + scaled random predictors on SST-2 dev and IMDB test: engine and reference."""
  sst2 = tokenize(load_split("sst2", "dev", data_dir=shared_data / "sst2"), minilm.tokenizer, 64)
  imdb = load_split("imdb", "test", data_dir=shared_data / "imdb")
  imdb = tokenize(subset(imdb, 2000, seed=0), minilm.tokenizer, 256)
  datasets = {"sst2": few_lengths(sst2, 7, 16), "imdb": few_lengths(imdb, 16, 12)}
  cfg = adapler.AdapLeRConfig(minilm.config, num_labels=2)
  params = scaled_params(cfg, seed=0, scale=4.0, eta=0.5, bert=minilm.params)
  engine = AdaptiveEngine(cfg, params, batch_size=24, max_length=256, buckets=(8, 32, 256))
  runs = {}
  for name, data in datasets.items():
    runs[name] = (data, engine.run(data, return_rationales=True),
                  per_example_run(cfg, params, data))
  return runs


def test_engine_matches_per_example_on_real_data(real_runs):
  total = 0
  for name, (data, got, want) in real_runs.items():
    assert len(data) >= 100 and len(data) % 24, name  # the last batch has filler rows.
    assert len(np.unique(data.lengths)) >= 5, name
    assert_same_outputs(got, want)
    assert (want.kept_counts[:, 0] < data.lengths).mean() > 0.5, name  # tokens were dropped.
    assert (np.diff(want.kept_counts, axis=1) < 0).any(), name  # by later layers too.
    assert got.packed_batches.any(), name  # some layers ran several examples per row.
    total += len(data)
  assert total >= 200


def test_rationales_match_per_example(real_runs):
  for data, got, want in real_runs.values():
    for i, n in enumerate(data.lengths):
      for l in range(len(want.kept_positions[i])):
        np.testing.assert_array_equal(got.kept_positions[i][l], want.kept_positions[i][l])
        np.testing.assert_allclose(got.scores[i][l], want.scores[i][l], rtol=1e-4, atol=1e-6)
        assert got.kept_positions[i][l].max() < n  # padding is never kept.
        assert abs(got.scores[i][l].sum() - 1) < 1e-5


def test_batch_one_on_fine_grids_matches_per_example_on_real_data(real_runs, minilm):
  """At batch 1 the layers' grids follow one example's survivors down to 2 tokens
  (`FINE_GRID_WIDTHS`): same outputs, fewer slots than on the buckets alone."""
  data, _, want = real_runs["sst2"]
  short = np.flatnonzero(data.lengths <= 32)[:12]  # one input bucket: one program.
  data = take_rows(data, short)
  cfg = adapler.AdapLeRConfig(minilm.config, num_labels=2)
  params = scaled_params(cfg, seed=0, scale=4.0, eta=0.5, bert=minilm.params)
  engine = AdaptiveEngine(cfg, params, batch_size=1, max_length=64, buckets=(32, 64))
  assert engine.grid_widths == (2, 4, 12, 32, 64)
  got = engine.run(data)
  np.testing.assert_array_equal(got.kept_counts, want.kept_counts[short])
  np.testing.assert_allclose(got.logits, want.logits[short], atol=1e-4, rtol=0)
  assert (got.slots < 32 * len(short)).all()  # every layer ran below the input bucket.
  assert (got.slots[1:] <= 12 * len(short)).all()


def test_progress_bars_name_the_work_and_the_run(capsys):
  """An engine's bars read "compiling" and "inference", after the caller's label when it
  gives one (evaluate.py ran two LAT bars both named `LengthEngine`), and are cleared."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  engine = AdaptiveEngine(cfg, params, batch_size=4, max_length=16, buckets=(16,))
  engine.warmup(progress=True)
  engine.run(synthetic(6, 16, seed=5), progress="lengths 12,8")
  err = capsys.readouterr().err
  assert "compiling: " in err and "lengths 12,8: inference: " in err
  assert "Engine" not in err and err.endswith("\r")  # cleared, as training bars are.


def test_fine_grids_cut_slots_not_outputs():
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(12, 16, seed=5)
  kwargs = dict(batch_size=1, max_length=16, buckets=(16,))  # one input bucket: one program.
  fine, coarse = AdaptiveEngine(cfg, params, **kwargs), AdaptiveEngine(cfg, params, grid_widths=(),
                                                                       **kwargs)
  assert fine.grid_widths == (2, 4, 12, 16) and coarse.grid_widths == (16,)
  assert AdaptiveEngine(cfg, params, **{**kwargs, "batch_size": 8}).grid_widths == (16,)
  want = per_example_run(cfg, params, data)
  got, base = fine.run(data), coarse.run(data)
  assert_same_outputs(got, want)
  assert_same_outputs(base, want)
  assert got.slots.sum() < base.slots.sum() and (got.slots <= base.slots).all()
  for bad in [(0, 4), (True,), (4.0,)]:
    with pytest.raises(ValueError, match="grid_widths must be positive ints"):
      AdaptiveEngine(cfg, params, max_length=32, grid_widths=bad)
  numpy_ints = AdaptiveEngine(cfg, params, max_length=32, buckets=(16,),
                              grid_widths=iter(np.asarray([4, 6, 6, 40])))  # 40: past the input.
  assert numpy_ints.grid_widths == (4, 6, 16, 32)
  assert all(type(w) is int for w in numpy_ints.grid_widths)


def test_scanned_layers_give_the_unrolled_outputs():
  """`scan_layers=True` (the layers as one `lax.scan` over stacked weights) gives the
  reference's outputs, as the unrolled default does."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(12, 16, seed=6)
  want = per_example_run(cfg, params, data)
  got = AdaptiveEngine(cfg, params, batch_size=4, max_length=16, buckets=(8, 16),
                       scan_layers=True).run(data, return_rationales=True)
  assert_same_outputs(got, want)
  assert (got.kept_counts[:, -1] < got.lengths).any()  # tokens really dropped.


# ----------------------------------------------------------------------------- compiles


@pytest.mark.parametrize("folds", [(), (2, 4)], ids=["padded", "packing"])
def test_compiled_shapes_are_bounded(tokenizer, shared_data, folds):
  """One program per (batch size, input bucket), packed grids or not: the layers' grids
  are branches inside it."""
  sst2 = tokenize(load_split("sst2", "dev", data_dir=shared_data / "sst2"), tokenizer, 64)
  ag_news = load_split("ag_news", "test", data_dir=shared_data / "ag_news")
  data = concat(sst2, tokenize(subset(ag_news, 200, seed=0), tokenizer, 64))
  assert len(data) >= 1000
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=1, scale=8.0, eta=0.8)
  buckets, batch_sizes, total = (16, 64), (8, 32), 0  # two buckets bound as well as three.
  for batch_size in batch_sizes:
    engine = AdaptiveEngine(cfg, params, batch_size=batch_size, max_length=64, buckets=buckets,
                            folds=folds)
    if batch_size == 8:  # warm-up compiles every shape, so the run compiles nothing.
      engine.warmup()
      with CompileCounter() as counter:
        result = engine.run(data)
      assert counter.count == 0
    else:
      with CompileCounter() as counter:
        result = engine.run(data)
      # One program per input bucket and dot-kernel set (two on CPU, `kernels`), whatever
      # grids its layers ran on.
      assert 0 < counter.count <= KERNEL_SETS * len(buckets)
    assert len(engine.row_counts()) == 1 + len(folds)
    assert engine.compiled_shapes <= KERNEL_SETS * len(buckets)
    total += engine.compiled_shapes
    assert (result.kept_counts[:, -1] < result.lengths).mean() > 0.5
    assert result.packed_batches.any() == bool(folds)
  assert 0 < total <= KERNEL_SETS * len(batch_sizes) * len(buckets)


def test_a_bucket_whose_layers_shrink_takes_the_small_grid_dot_kernels():
  """On CPU the next batch of an input shape takes XLA's own dots when most layers of the
  last such batch ran on small grids (`kernels.small_dots`); either way the outputs
  equal the reference, and a model that drops nothing keeps the default kernels."""
  from adapler_jax.infer import kernels
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  data = synthetic(24, 64, seed=7)
  data = dataclasses.replace(data, lengths=np.full(24, 64, np.int32))  # one input shape.
  for eta, shrinks in ((0.9, True), (0.0, False)):
    params = scaled_params(cfg, seed=4, scale=8.0, eta=eta)
    engine = AdaptiveEngine(cfg, params, batch_size=8, max_length=64, buckets=(64,))
    assert not engine.small_dots((8, 64))  # 512 input slots: the default kernels first.
    result = engine.run(data)
    assert_same_outputs(result, per_example_run(cfg, params, data))
    assert engine.small_dots((8, 64)) == shrinks
    assert (result.slots < 3 * 256).all() == shrinks  # three batches, each layer's grid.
    assert engine.compiled_shapes == (1 + shrinks if KERNEL_SETS == 2 else 1)
  assert kernels.small_dots([512, 128]) and kernels.small_dots([1024, 2048, 255, 8])
  assert not kernels.small_dots([512, 255, 256]) and not kernels.small_dots(256)


def test_a_run_depends_on_its_data_only():
  """The dot kernels a batch takes follow the last batch of its shape (CPU), and the two
  kernel sets agree only to rounding, which can move a token across its cutoff. Each run,
  and each `with_eta` copy, starts afresh, so the same data give the same bits again."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(64, 64, seed=3)
  engine = AdaptiveEngine(cfg, params, batch_size=8, max_length=64, buckets=(16, 32, 64))
  first = engine.run(data)
  for again in (engine.run(data), engine.with_eta(engine.eta).run(data)):
    np.testing.assert_array_equal(again.logits, first.logits)
    np.testing.assert_array_equal(again.kept_counts, first.kept_counts)
  # Warm-up after such a run still compiles what a fresh run's first batches take.
  calls = []
  engine._call = lambda ids, types, n, rationales, small: calls.append((ids.shape, small))
  engine.warmup()
  if KERNEL_SETS == 2:  # 128 input slots: XLA's dots only; 256 and more: both sets.
    assert calls == [((8, 16), True), ((8, 32), False), ((8, 32), True), ((8, 64), False),
                     ((8, 64), True)]
  else:
    assert calls == [((8, w), False) for w in (16, 32, 64)]


@pytest.mark.parametrize("committed", [False, True], ids=["fresh", "restored"])
def test_warmup_leaves_nothing_to_compile(committed):
  """Checkpoints restore as arrays committed to a device; warm-up must match either kind."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=1, scale=8.0, eta=0.8)
  if committed:
    params = jax.device_put(params, jax.devices()[0])
  engine = AdaptiveEngine(cfg, params, batch_size=4, max_length=32, buckets=(8, 16, 32))
  engine.warmup()
  before = engine.compile_counts
  with CompileCounter() as counter:
    result = engine.run(synthetic(24, 32, seed=5))
  assert counter.count == 0 and engine.compile_counts == before
  assert (result.kept_counts[:, -1] < result.lengths).any()  # layers did shrink batches.


def test_full_length_warmup_leaves_nothing_to_compile():
  """At batches of up to 4 rows the full model runs a batch on the narrowest grid width
  holding it, fine widths included: warm-up compiles every (rows, width) one may take."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=1, scale=8.0, eta=0.8)
  data = synthetic(30, 40, seed=12)  # inputs of 9-12 tokens: a 24-token bucket, 12 slots.
  engine = FullLengthEngine(cfg, params, batch_size=3, max_length=40, buckets=(8, 24, 40),
                            folds=(3,))  # shapes no other test compiles.
  assert engine.grid_widths == (2, 4, 8, 12, 24, 40)
  with CompileCounter() as counter:
    engine.warmup()
  assert counter.count > 0
  with CompileCounter() as counter:
    result = engine.run(data)
  assert counter.count == 0
  coarse = FullLengthEngine(cfg, params, batch_size=3, max_length=40, buckets=(8, 24, 40),
                            folds=(3,), grid_widths=()).run(data)
  assert result.slots.sum() < coarse.slots.sum()  # some batches ran narrower than a bucket.
  np.testing.assert_allclose(result.logits, coarse.logits, atol=1e-5, rtol=0)


def test_with_eta_equals_an_engine_built_with_those_cutoffs_and_compiles_nothing():
  """A sweep over cutoffs reuses one engine: `with_eta` gives what a new engine would,
  without compiling, and leaves the engine it came from as it was."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=1, scale=8.0, eta=0.8)
  data = synthetic(24, 32, seed=5)
  kwargs = dict(batch_size=4, max_length=32, buckets=(8, 16, 32))
  engine = AdaptiveEngine(cfg, params, **kwargs)
  engine.warmup()
  before = engine.run(data)
  eta = np.asarray([0.4, 1.6], np.float32)
  with CompileCounter() as counter:
    got = engine.with_eta(eta).run(data)
  assert counter.count == 0
  want = AdaptiveEngine(cfg, {**params, "speed": {**params["speed"], "eta": eta}},
                        **kwargs).run(data)
  np.testing.assert_array_equal(got.logits, want.logits)
  np.testing.assert_array_equal(got.kept_counts, want.kept_counts)
  assert (got.kept_counts != before.kept_counts).any()  # the cutoffs did change the run.
  again = engine.run(data)
  np.testing.assert_array_equal(again.kept_counts, before.kept_counts)
  np.testing.assert_array_equal(engine.eta, np.full(2, 0.8, np.float32))
  with pytest.raises(ValueError, match="speed/eta has shape"):
    engine.with_eta([1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- engines, tiny


def test_no_transfer_to_the_host_between_layers(monkeypatch):
  """A batch runs start to finish on the device: the host reads only the outputs.

  The transfer guard stops reads on accelerators; on CPU (arrays shared with the host,
  no transfer to guard) every read of an array's value is counted instead.
  """
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(8, 32, seed=5)
  engine = AdaptiveEngine(cfg, params, batch_size=8, max_length=32, buckets=(8, 16, 32))
  batch = next(iter(eval_batches(data, 8, engine.widths)))
  engine.dispatch(batch, rationales=True)  # compiles outside the guard.
  reads = []
  value = jax_array.ArrayImpl._value  # pylint: disable=protected-access
  monkeypatch.setattr(jax_array.ArrayImpl, "_value",
                      property(lambda a: reads.append(a.shape) or value.fget(a)))
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    out = jax.block_until_ready(engine.dispatch(batch, rationales=True))
  assert not reads
  out = jax.device_get(out)
  assert reads  # the count sees reads.
  want = per_example_run(cfg, params, take_rows(data, batch["index"]))
  np.testing.assert_array_equal(out["kept"], want.kept_counts)
  np.testing.assert_allclose(out["logits"], want.logits, atol=1e-4, rtol=0)
  assert out["packed"].any() and (out["kept"][:, -1] < batch["attention_mask"].sum(1)).all()


@pytest.mark.parametrize("batch_size", [8, 1])
def test_a_layer_that_drops_nothing_stays_in_place(batch_size):
  """eta = 0 keeps every token: each layer runs on the grid the full-length engine picks
  for the batch (the same cost model and widths: padded, or packed where cheaper; at batch
  1 the fine widths too), and the outputs are the full model's."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.0)
  data = synthetic(16, 32, seed=7)
  kwargs = dict(batch_size=batch_size, max_length=32, buckets=(8, 16, 32), folds=(2, 4))
  got = AdaptiveEngine(cfg, params, **kwargs).run(data)
  engine = FullLengthEngine(cfg, params, **kwargs)
  full = engine.run(data)
  if batch_size == 8:
    assert full.packed_batches.any()
  else:  # examples of 9-12 tokens run on 12 slots, not on their 16-token bucket.
    assert engine.grid_widths == (2, 4, 8, 12, 16, 32)
    assert full.slots.sum() < bucket_slots(data, (8, 16, 32), cfg.num_layers)
  np.testing.assert_array_equal(got.kept_counts, full.kept_counts)
  np.testing.assert_allclose(got.logits, full.logits, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(got.slots, full.slots)


def bucket_slots(data, buckets, layers: int) -> int:
  """Token slots of a batch-1 run on the input buckets alone, every layer."""
  return layers * sum(min(b for b in buckets if b >= n) for n in data.lengths)


@pytest.mark.parametrize("engine_cls", [AdaptiveEngine, FullLengthEngine])
def test_one_batch_step_gives_that_batchs_rows_of_a_run(engine_cls):
  """`run_batch`, the public per-batch step (benchmarks time it), returns the batch's rows
  of what `run` returns for the whole dataset; padding rows are left for the caller."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(12, 32, seed=9)
  engine = engine_cls(cfg, params, batch_size=8, max_length=32, buckets=(8, 16, 32))
  whole = engine.run(data)
  batch = next(iter(eval_batches(data, 8, engine.widths)))
  out = engine.run_batch(batch)
  rows = np.flatnonzero(batch["real"])
  index = batch["index"][rows]
  np.testing.assert_array_equal(out["kept"][rows], whole.kept_counts[index])
  np.testing.assert_allclose(out["logits"][rows], whole.logits[index], atol=1e-6, rtol=0)
  assert out["slots"].shape == (cfg.num_layers,) and out["slots"].min() > 0


@pytest.mark.parametrize("total,rows,count", [(4096, 512, 8), (768, 512, 2), (1792, 512, 4),
                                              (100, 512, 1), (97, 16, 1)])
def test_row_chunks(total, rows, count):
  assert walk.row_chunks(total, rows) == count


def test_chunked_feed_forward_is_the_same_block():
  params = scaled_params(adapler.AdapLeRConfig(TINY, num_labels=2), seed=0, scale=1.0, eta=1.0)
  layer = params["model"]["bert"]["encoder"]["layer_0"]
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 24, TINY.hidden_size))
  block = lambda x, chunk_rows=None: walk.ParamLayer(TINY, layer, chunk_rows).feed_forward(x)
  whole = block(x)
  text = jax.jit(lambda x: block(x, 16)).lower(x).as_text()
  assert "while" in text  # 96 rows in 6 chunks of 16.
  np.testing.assert_allclose(block(x, 16), whole, atol=1e-6)


def test_engine_rejects_a_bad_chunk_size():
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=2, scale=1.0, eta=0.5)
  with pytest.raises(ValueError, match="ffn_chunk_rows must be 'auto', None or a positive int"):
    FullLengthEngine(cfg, params, max_length=32, ffn_chunk_rows="cpu")
  engine = AdaptiveEngine(cfg, params, max_length=32)
  assert engine.ffn_chunk_rows == (512 if jax.devices()[0].platform == "cpu" else None)


def test_engines_refuse_an_example_without_tokens_or_with_foreign_ids():
  """The per-example reference refuses an empty example; the engines returned logits and
  kept counts of 0 for it, as if classified. Ids past the vocabulary read NaN rows."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=2, scale=1.0, eta=0.5)
  ids = np.zeros((2, 16), np.int32)
  ids[1, :3] = [101, 2023, 102]
  data = TokenizedDataset(ids, np.zeros_like(ids), np.array([0, 3]), None, ["a", "b"])
  for engine in (AdaptiveEngine(cfg, params, batch_size=2, max_length=16),
                 FullLengthEngine(cfg, params, batch_size=2, max_length=16)):
    with pytest.raises(UserError, match="example 'a' has no tokens; tokenize it with its "
                                        "special tokens"):
      engine.run(data)
    foreign = dataclasses.replace(data, lengths=np.array([3, 3]),
                                  input_ids=np.where(ids == 2023, 40000, ids))
    with pytest.raises(UserError, match="input_ids holds 40000, outside the model's "
                                        "vocabulary of 30522"):
      engine.run(foreign)


@pytest.mark.parametrize("chunk_rows,folds", [(None, ()), (16, ()), (None, (2, 4))])
def test_full_length_engine_equals_sequence_classifier(chunk_rows, folds):
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=2, scale=1.0, eta=0.5)
  data = synthetic(11 if not folds else 23, 32, seed=3)
  engine = FullLengthEngine(cfg, params, batch_size=4 if not folds else 8, max_length=32,
                            buckets=(8, 16, 32), ffn_chunk_rows=chunk_rows, folds=folds)
  result = engine.run(data)
  assert result.packed_batches.any() == bool(folds)
  bias = attention_bias_from_mask(np.arange(32) < data.lengths[:, None])
  model = params["model"]
  forward = jax.jit(lambda p, ids, types, bias: SequenceClassifier(TINY, 2).apply(
      {"params": p}, ids, types, bias)[0])
  want = forward({"bert": model["bert"], "head": model["head"]}, data.input_ids,
                 data.token_type_ids, bias)
  np.testing.assert_allclose(result.logits, want, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(result.kept_counts, np.repeat(data.lengths[:, None], 2, 1))
  assert engine.compiled_shapes <= len(engine.grid_widths) * len(engine.row_counts())


def test_packed_scores_are_each_examples_masked_log_scores():
  """`packing._packed_log_scores`, the per-example softmax of a packed grid written out for
  speed, equals `masked_log_scores` on each example alone (the rule the reference uses)."""
  from adapler_jax.infer import packing  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  rows, width = 4, 24
  seg = np.full((rows, width), -1)
  for r in range(rows):  # examples of 1-8 tokens side by side, gaps as dropped tokens leave.
    start, e = int(rng.integers(0, 2)), 0
    while start < width:
      n = min(int(rng.integers(1, 9)), width - start)
      seg[r, start:start + n] = r * 10 + e
      seg[r, start + n - 1] = -1 if n > 2 and rng.random() < 0.3 else seg[r, start]
      start, e = start + n + int(rng.integers(0, 3)), e + 1
  logits = rng.normal(0.0, 3.0, (rows, width)).astype(np.float32)
  got = np.asarray(jax.jit(packing._packed_log_scores)(logits, packing.same_example(seg)))
  for example in np.unique(seg[seg >= 0]):
    r, slots = np.nonzero(seg == example)
    alone = adapler.masked_log_scores(jnp.asarray(logits[r[0], slots][None]),
                                      jnp.zeros((1, len(slots))))
    np.testing.assert_allclose(got[r[0], slots], np.asarray(alone)[0], atol=1e-6, rtol=0)


def test_packed_unpacked_and_batch_size_one_agree():
  """Packing several examples to a row changes where tokens sit, not what they compute."""
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(30, 32, seed=5)
  kwargs = dict(max_length=32, buckets=(8, 16, 32))
  packed = AdaptiveEngine(cfg, params, batch_size=8, folds=(2, 4), **kwargs)
  unpacked = AdaptiveEngine(cfg, params, batch_size=8, folds=(), **kwargs)
  single = AdaptiveEngine(cfg, params, batch_size=1, **kwargs)
  got, plain, want = (e.run(data, return_rationales=True) for e in (packed, unpacked, single))
  assert packed.row_counts() == (8, 4, 2) and unpacked.row_counts() == (8,)
  assert single.row_counts() == (1,)
  assert got.packed_batches.any() and not plain.packed_batches.any()
  assert got.slots.sum() < plain.slots.sum()
  for result in (got, plain):
    assert_same_outputs(result, want)
    for i, n in enumerate(data.lengths):
      for l in range(cfg.num_layers):
        np.testing.assert_array_equal(result.kept_positions[i][l], want.kept_positions[i][l])
        np.testing.assert_allclose(result.scores[i][l], want.scores[i][l], rtol=1e-4,
                                   atol=1e-6)
      assert all(p[0] == 0 and p.max() < n for p in result.kept_positions[i])
  assert (want.kept_counts[:, 0] < data.lengths).any()


def test_engine_rejects_a_bad_fold():
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=2, scale=1.0, eta=0.5)
  with pytest.raises(ValueError, match="folds must be ints > 1"):
    AdaptiveEngine(cfg, params, max_length=32, folds=(1,))


# ----------------------------------------------------------------------------- HF weights


def test_to_hf_state_dict_round_trip(minilm):
  head = ClassificationHead(minilm.config, 3).init(
      jax.random.key(0), jnp.zeros((1, 2, minilm.config.hidden_size)))["params"]
  state = to_hf_state_dict(minilm.params, head)
  kernel = minilm.params["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
  np.testing.assert_array_equal(state["bert.encoder.layer.0.attention.self.query.weight"],
                                np.asarray(kernel).T)
  assert {"bert.pooler.dense.weight", "classifier.bias"} <= state.keys()
  bert, head_back = convert_state_dict(state, minilm.config)
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                      (bert, head_back), (minilm.params, head))
  assert all(jax.tree.leaves(same))


def test_hf_pytorch_matches_full_engine(minilm, shared_data):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  enc = minilm.config
  cfg = adapler.AdapLeRConfig(enc, num_labels=2)
  params = scaled_params(cfg, seed=6, scale=1.0, eta=0.5, bert=minilm.params)["model"]
  data = tokenize(subset(load_split("sst2", "dev", data_dir=shared_data / "sst2"), 12, seed=1),
                  minilm.tokenizer, 64)
  ours = FullLengthEngine(cfg, params, batch_size=12, max_length=64, buckets=(64,)).run(data)
  hf = transformers.BertForSequenceClassification(transformers.BertConfig(
      vocab_size=enc.vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
      num_attention_heads=enc.num_heads, intermediate_size=enc.intermediate_size,
      max_position_embeddings=enc.max_position_embeddings, layer_norm_eps=enc.layer_norm_eps,
      num_labels=2)).eval()
  state = to_hf_state_dict(params["bert"], params["head"])
  hf.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
  with torch.inference_mode():
    logits = hf(input_ids=torch.tensor(data.input_ids, dtype=torch.long),
                token_type_ids=torch.tensor(data.token_type_ids, dtype=torch.long),
                attention_mask=torch.tensor(np.arange(64) < data.lengths[:, None])).logits
  np.testing.assert_allclose(logits.numpy(), ours.logits, atol=1e-4, rtol=0)


def test_small_input_grids_take_xla_dot_kernels_and_agree():
  """Below `SMALL_GRID_TOKENS` input slots a program compiles with XLA's own dot kernels (no
  YNNPACK fusion in its HLO), from there on with XLA's default; both compute the same."""
  from adapler_jax.infer import kernels
  if not kernels.xla_dots_options():
    pytest.skip("this jaxlib has no YNNPACK dots: XLA's own are its only kernels")
  w = jnp.asarray(np.random.default_rng(0).normal(size=(384, 1536)), jnp.float32)
  f = kernels.ByGridSize(lambda w, ids: (ids.astype(jnp.float32) @ w[:ids.shape[1]]).sum(),
                         grid_arg=1)
  small, large = np.ones((1, 128), np.int32), np.ones((2, 128), np.int32)
  assert kernels.SMALL_GRID_TOKENS == 256 and f.pick(small) is f.small
  assert f.pick(large) is f.default
  f(w, small), f(w, large)
  assert (f.small._cache_size(), f.default._cache_size()) == (1, 1)  # pylint: disable=protected-access
  lowered = lambda jitted: jitted.lower(w, large).compile().as_text()
  assert "ynn" in lowered(f.default) and "ynn" not in lowered(f.small)
  np.testing.assert_allclose(f.small(w, large), f.default(w, large), rtol=1e-5)


def test_a_jaxlib_without_the_dot_kernel_option_compiles_one_variant(monkeypatch):
  """An unknown compiler option fails every compile (jaxlib 0.7 has no YNNPACK option):
  there the small-grid variant is the default one, and the programs still run."""
  from adapler_jax.infer import kernels
  monkeypatch.setattr(kernels, "XLA_DOTS", {"xla_cpu_no_such_option_here": ""})
  kernels.xla_dots_options.cache_clear()
  try:
    assert kernels.xla_dots_options() == {}
    f = kernels.ByGridSize(lambda ids: ids.sum(), grid_arg=0)
    ids = np.ones((1, 8), np.int32)
    assert f.pick(ids, small=True) is f.default
    assert int(f(ids, small=True)) == 8
  finally:
    monkeypatch.undo()
    kernels.xla_dots_options.cache_clear()


def test_dot_kernels_follow_the_engines_device_not_the_default_backend(monkeypatch):
  """Engines hand jit host arrays, which say nothing of a device, so each engine decides
  the kernels by its own: a CPU engine takes XLA's own dots on a small grid even where the
  default backend is an accelerator."""
  from adapler_jax.infer import engine as engine_lib, kernels
  f = kernels.ByGridSize(lambda ids: ids.sum(), grid_arg=0)
  ids = np.ones((1, 8), np.int32)
  monkeypatch.setattr(kernels.jax, "default_backend", lambda: "gpu")
  assert f.pick(ids) is f.default  # no caller's word: host data goes to the default backend.
  assert f.pick(ids, small=True) is f.small and f.pick(ids, small=False) is f.default
  picked = []
  for name in ("_FORWARD", "_FULL_FORWARD", "_GATHER_FORWARD"):
    jitted = getattr(engine_lib, name)
    spy = lambda ids, small=None, jitted=jitted: picked.append(
        kernels.ByGridSize.pick(jitted, ids, small) is jitted.small) or jitted.small
    monkeypatch.setattr(jitted, "pick", spy)
  cfg = adapler.AdapLeRConfig(TINY, num_labels=2)
  params = scaled_params(cfg, seed=4, scale=4.0, eta=0.9)
  data = synthetic(2, 16, seed=5)
  kwargs = dict(batch_size=1, max_length=16, buckets=(16,))
  for make in (AdaptiveEngine, FullLengthEngine,
               lambda cfg, params, **kw: engine_lib.LengthEngine(cfg, params, None, **kw)):
    picked.clear()
    make(cfg, params, **kwargs).run(data)
    assert picked and all(picked), make  # 1 x 16 input slots: XLA's own dots, on the CPU.
