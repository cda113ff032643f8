"""Drop-and-restore and the span head (docs/squad_restore.md): every token dropped before layer i
ends with its layer i-1 output, kept tokens with the last layer's, for LAT (masked and
gather paths) and AdapLeR (hard and soft removal), and in the batched engines.

`check_engines` takes token ids of any windows: random ones here, and real SQuAD 1.1
question + context windows when the shared data folder is present.
"""

import dataclasses
import functools
import gzip
import json
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.infer import AdaptiveEngine, FullLengthEngine, LengthEngine, per_example_run
from adapler_jax.infer.engine import PAD_LOGIT
from adapler_jax.models import adapler, lat, walk
from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask, encoder_layer_params
from adapler_jax.models.heads import ClassifierConfig, Span, SpanHead, SpanQA
from adapler_jax.reduce import lengths
from adapler_jax.reduce.adapler import HardRemoval
from adapler_jax.reduce.significance import GatherSelection, MaskedSelection, SelectionFlags
from adapler_jax.train import lat_step, losses

ENC = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512)  # 2 layers, width 32.
L = ENC.num_layers
T = 16
FLAGS = SelectionFlags(keep_cls=False)  # span QA: [CLS] is not forced.
SPAN = Span()
CONFIG = (10, 5)  # drops at every layer.

masked_forward = jax.jit(lat.masked_forward, static_argnums=(0, 1),
                         static_argnames=("base", "flags"))
gather_forward = jax.jit(lat.gather_forward, static_argnums=(0, 1, 7), static_argnames="flags")
soft_forward = jax.jit(adapler.soft_forward, static_argnums=0)


@functools.cache
def span_params(seed: int = 0) -> dict:
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.jit(lambda k: SpanQA(ENC).init(k, ids, ids, jnp.zeros((1, 2)))["params"])(
      jax.random.key(seed))


@functools.cache
def adapler_params(scale: float = 4.0, eta: float = 0.6) -> dict:
  """AdapLeR span params whose predictors are scaled up, so that tokens fall below the
  cutoff (but not all of them)."""
  cfg = adapler_config()
  params = jax.jit(lambda k: adapler.init(k, cfg))(jax.random.key(1))
  model = {k: jax.tree.map(lambda w: w * scale, v) if k.startswith("predictors") else v
           for k, v in params["model"].items()}
  return {"model": model, "speed": {**params["speed"], "eta": jnp.full((L,), eta)}}


def adapler_config():
  return adapler.AdapLeRConfig(ENC, num_labels=2, head="span")


def _batch(n=(16, 13, 9, 6), seed=0):
  n = np.asarray(n)
  ids = np.random.default_rng(seed).integers(1000, 2000, (len(n), T)).astype(np.int32)
  mask = np.arange(T)[None] < n[:, None]
  return {"input_ids": ids * mask,
          "token_type_ids": ((np.arange(T) >= 4) & mask).astype(np.int32),
          "attention_mask": mask}


@jax.jit
def _embed(params, batch):
  return nn.apply(lambda m: m.bert.embed(batch["input_ids"], batch["token_type_ids"]),
                  SpanQA(ENC))({"params": params})


@jax.jit
def _plain_logits(params, batch):
  bias = attention_bias_from_mask(batch["attention_mask"])
  return SpanQA(ENC).apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                           bias)[0]


@jax.jit
def _head(params, x):
  return SpanHead(ENC).apply({"params": params["head"]}, x)


@functools.partial(jax.jit, static_argnums=3)
def _masked_walk(params, batch, config, flags):
  """The masked path's restored sequence and trace (with every layer's output)."""
  valid = batch["attention_mask"]
  counts = lengths.keep_counts(config, valid.sum(1), T, "padded")
  policy = MaskedSelection(valid, counts, flags)
  return walk.walk(walk.param_layers(ENC, params["bert"]), _embed(params, batch),
                   policy.initial(), policy, hidden_states=True, restore=True)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _gather_walk(params, batch, counts, widths, flags):
  """The gather path's restored sequence and trace (with every layer's output)."""
  policy = GatherSelection(counts, widths, flags)
  return walk.walk(walk.param_layers(ENC, params["bert"]), _embed(params, batch),
                   policy.initial(batch["attention_mask"]), policy, hidden_states=True,
                   restore=True)


def assert_restored(final, h0, hidden, ran, n):
  """`final` (T, H) of one example against its per-layer states: `hidden[l]` maps each
  position layer l ran on to its output, `ran[l]` is that set. A token ends with the output
  of the last layer it ran (the embedding if none), and once dropped it never runs again."""
  alive = set(range(n))
  for l, positions in enumerate(ran):
    assert set(positions) <= alive  # a dropped token passes through no later layer.
    alive = set(positions)
  for p in range(n):
    last = max((l for l, positions in enumerate(ran) if p in positions), default=-1)
    want = h0[p] if last < 0 else hidden[last][p]
    np.testing.assert_allclose(final[p], want, atol=1e-6, rtol=0, err_msg=f"position {p}")


# ----------------------------------------------------------------------------- semantics


def test_lat_masked_path_restores_layer_outputs():
  params, batch = span_params(), _batch()
  valid = batch["attention_mask"]
  h0 = _embed(params, batch)
  final, _, trace = _masked_walk(params, batch, jnp.asarray(CONFIG), FLAGS)
  kept, states = np.asarray(trace["kept"]), np.asarray(trace["hidden_states"])
  for b, n in enumerate(valid.sum(1)):
    ran = [np.flatnonzero(k[b] & valid[b]) for k in kept]  # padding may stay (padded base).
    hidden = [dict(zip(r, s[b][r])) for r, s in zip(ran, states)]
    assert_restored(np.asarray(final[b]), np.asarray(h0[b]), hidden, ran, n)
    assert len(ran[-1]) < n  # tokens really were dropped.
  logits, _ = masked_forward(ENC, SPAN, params, batch, jnp.asarray(CONFIG), base=T,
                             flags=FLAGS)
  assert logits.shape == (4, T, 2) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, _head(params, final), atol=1e-6)


def test_lat_gather_path_restores_layer_outputs_and_equals_masked():
  params, batch = span_params(), _batch()
  n = batch["attention_mask"].sum(1)
  counts = lengths.keep_counts(np.asarray(CONFIG), n, T, "padded")
  widths = tuple(int(w) for w in lengths.real_counts(CONFIG, n, T, "padded").max(axis=0))
  h0 = _embed(params, batch)
  final, _, trace = _gather_walk(params, batch, jnp.asarray(counts), widths, FLAGS)
  for b in range(len(n)):
    ran = [np.asarray(p[b])[np.asarray(p[b]) >= 0] for p in trace["positions"]]
    hidden = [{int(q): s[b][j] for j, q in enumerate(np.asarray(p[b])) if q >= 0}
              for p, s in zip(trace["positions"], trace["hidden_states"])]
    assert_restored(np.asarray(final[b]), np.asarray(h0[b]), hidden, ran, n[b])
  gathered, _ = gather_forward(ENC, SPAN, params, batch["input_ids"], batch["token_type_ids"],
                               jnp.asarray(n), jnp.asarray(counts), widths, flags=FLAGS)
  np.testing.assert_allclose(gathered, _head(params, final), atol=1e-6)
  masked, _ = masked_forward(ENC, SPAN, params, batch, jnp.asarray(CONFIG), base=T,
                             flags=FLAGS)
  real = batch["attention_mask"][..., None]
  np.testing.assert_allclose(np.where(real, gathered, 0), np.where(real, masked, 0), atol=1e-5)


def test_adapler_hard_removal_restores_layer_outputs():
  cfg, params = adapler_config(), adapler_params()
  model = params["model"]
  ids = _batch()["input_ids"][1, :13]
  types = (np.arange(13) >= 4).astype(np.int32)
  predictors = adapler.predictor_params(cfg, model)

  # pylint: disable=protected-access
  def scores(l, x):  # as `hard_forward` scores (its jitted pieces, compiled once).
    zeros = jnp.zeros(x.shape[:2], jnp.float32)
    return np.asarray(adapler._cp_scores(cfg.cp_hidden, ENC.dtype, predictors[l], x, zeros))[0]

  h0 = _embed(model, {"input_ids": ids[None], "token_type_ids": types[None]})
  policy = HardRemoval(scores, np.asarray(params["speed"]["eta"]), keep_cls=False)
  layers = [adapler._JitLayer(ENC, p) for p in encoder_layer_params(ENC, model["bert"])]
  final, _, trace = walk.walk(layers, h0, np.arange(13), policy, hidden_states=True,
                              restore=True)
  ran = [np.asarray(p) for p in trace["kept_positions"]]
  hidden = [dict(zip(p, np.asarray(s)[0])) for p, s in zip(ran, trace["hidden_states"])]
  assert_restored(np.asarray(final[0]), np.asarray(h0[0]), hidden, ran, 13)
  assert 0 < len(ran[-1]) < 13 and 0 not in ran[-1]  # dropped, [CLS] among them.
  result = adapler.hard_forward(cfg, params, ids, types)
  assert result.logits.shape == (13, 2)
  np.testing.assert_allclose(result.logits, _head(model, final)[0], atol=1e-5)


def test_adapler_soft_removal_at_huge_lambda_equals_hard_with_restore():
  cfg, params = adapler_config(), adapler_params()
  batch = _batch((13, 9))
  logits, trace = soft_forward(cfg, params, batch, 1e20)
  soft_kept = np.asarray(jnp.sum(trace["keep"] > 0.5, axis=-1)).T
  for b, n in enumerate(batch["attention_mask"].sum(1)):
    hard = adapler.hard_forward(cfg, params, batch["input_ids"][b, :n],
                                batch["token_type_ids"][b, :n])
    np.testing.assert_array_equal(hard.kept_counts, soft_kept[b])
    np.testing.assert_allclose(hard.logits, logits[b, :n], atol=1e-4)


# ----------------------------------------------------------------------------- full length


@pytest.mark.parametrize("n", [(16, 16, 16, 16), (16, 13, 9, 6)])
def test_full_length_with_restore_equals_plain_forward(n):
  params, batch = span_params(), _batch(n)
  plain = np.asarray(_plain_logits(params, batch))
  masked, _ = masked_forward(ENC, SPAN, params, batch, jnp.full((L,), T), base=T,
                             flags=FLAGS)
  np.testing.assert_allclose(masked, plain, atol=1e-5)
  n = np.asarray(n)
  gathered, _ = gather_forward(ENC, SPAN, params, batch["input_ids"], batch["token_type_ids"],
                               jnp.asarray(n), jnp.full((L, 4), T), (int(n.max()),) * L,
                               flags=FLAGS)
  real = batch["attention_mask"][..., None]
  np.testing.assert_allclose(np.where(real, gathered, 0), np.where(real, plain, 0), atol=1e-5)
  # The full-length engine one example per batch, each on the narrowest grid width holding
  # it (9 tokens: 12 slots, narrower than its 16-token bucket), padding at PAD_LOGIT.
  data = TokenizedDataset(batch["input_ids"], batch["token_type_ids"], n.astype(np.int32),
                          np.zeros(len(n), np.int32), [str(i) for i in range(len(n))], "span")
  engine = FullLengthEngine(ClassifierConfig(ENC, 2, head="span"), params, batch_size=1,
                            max_length=T, folds=())
  got = engine.run(data)
  np.testing.assert_allclose(got.logits[real[..., 0]], plain[real[..., 0]], atol=1e-5)
  assert (got.logits[~real[..., 0]] == PAD_LOGIT).all()
  assert engine.grid_widths == (2, 4, 8, 12, 16)
  assert got.slots.sum() == L * sum(min(w for w in engine.grid_widths if w >= k) for k in n)


def test_adapler_without_removal_equals_plain_forward():
  """eta = 0 keeps every token: hard removal with restore is the plain span model."""
  cfg, params = adapler_config(), adapler_params()
  params = {**params, "speed": {**params["speed"], "eta": jnp.zeros((L,))}}
  batch = _batch((11,))
  result = adapler.hard_forward(cfg, params, batch["input_ids"][0, :11],
                                batch["token_type_ids"][0, :11])
  assert result.kept_counts == [11] * L
  model = {"bert": params["model"]["bert"], "head": params["model"]["head"]}
  plain = _plain_logits(model, {k: v[:, :11] for k, v in batch.items()})[0]
  np.testing.assert_allclose(result.logits, plain, atol=1e-5)


def test_adapler_soft_restore_updates_every_token_above_the_cutoffs_in_full():
  """Training at a small lambda, predictors giving every token the same score 1/n and eta
  0.5: no token falls below its cutoff, so the soft forward is the plain span model, as
  hard removal is; Eq. 4's small fade of tokens above the cutoff must not damp their
  updates."""
  cfg, params = adapler_config(), adapler_params()
  model = {k: (jax.tree.map(jnp.zeros_like, v) if k.startswith("predictors_") else v)
           for k, v in params["model"].items()}
  params = {"model": model, "speed": {**params["speed"], "eta": jnp.full((L,), 0.5)}}
  batch = _batch((13, 9))
  logits, trace = soft_forward(cfg, params, batch, 10.0)
  real = np.asarray(batch["attention_mask"])
  assert np.all(np.asarray(trace["keep"])[-1][real] < 1.0)  # faded, never below a cutoff.
  plain = _plain_logits({"bert": model["bert"], "head": model["head"]}, batch)
  np.testing.assert_allclose(np.where(real[..., None], logits, 0),
                             np.where(real[..., None], plain, 0), atol=1e-5)


# ----------------------------------------------------------------------------- losses


def test_span_loss_and_distillation_average_start_and_end():
  logits = jax.random.normal(jax.random.key(0), (3, 7, 2))
  starts, ends = jnp.array([0, 2, 6]), jnp.array([1, 2, 6])
  log_p = jax.nn.log_softmax(logits, axis=1)
  want = -(log_p[jnp.arange(3), starts, 0] + log_p[jnp.arange(3), ends, 1]).mean() / 2
  got = losses.span_cross_entropy(logits, starts, ends)
  assert float(got) == pytest.approx(float(want), rel=1e-6)
  batch = {"start_positions": starts, "end_positions": ends}
  assert float(losses.task_loss(SPAN, logits, batch)) == pytest.approx(float(want), rel=1e-6)
  student = jax.random.normal(jax.random.key(1), (3, 7, 2))
  each = [lat_step.kd_loss(logits[..., i], student[..., i], "reverse") for i in (0, 1)]
  got = lat_step.kd_loss(logits, student, "reverse", axis=-2)
  assert float(got) == pytest.approx(float(sum(each) / 2), rel=1e-6)


def test_span_sandwich_terms_are_scalars_of_span_logits():
  """The sandwich rule takes a span head (traced only: compiling it is the slow part)."""
  batch = {**_batch(), "start_positions": np.array([3, 5, 0, 2]),
           "end_positions": np.array([4, 7, 0, 3])}
  cfg = lat_step.LATConfig(base=T, flags=FLAGS)
  terms, aux = jax.eval_shape(
      lambda p, b, k: lat_step.sandwich_terms(ENC, SPAN, cfg, p, b, k), span_params(), batch,
      jax.random.key(0))
  assert aux["logits"].shape == (4, T, 2)
  assert [t.shape for t in terms] == [()] * 4


# ----------------------------------------------------------------------------- engines


def check_engines(input_ids, token_type_ids, n):
  """The batched engines with restore against their references on the given windows
  (padded (E, W) ids, `n` (E,) real tokens): AdapLeR's `AdaptiveEngine` (packed and
  padded grids) against per-example hard removal, LAT's `LengthEngine` against the masked
  path, span logits within 1e-4 at real positions, the same kept counts and positions."""
  n = np.asarray(n, np.int32)
  width = input_ids.shape[1]
  data = TokenizedDataset(np.asarray(input_ids, np.int32), np.asarray(token_type_ids, np.int32),
                          n, np.zeros(len(n), np.int32), [str(i) for i in range(len(n))], "span")
  real = np.arange(width) < n[:, None]
  cfg, params = adapler_config(), adapler_params()
  want = per_example_run(cfg, params, data)
  packed = 0
  for folds in [(2,), ()]:  # packed grids when cheaper; one example per row only.
    got = AdaptiveEngine(cfg, params, batch_size=4, max_length=width, buckets=(16, 32, 64),
                         folds=folds).run(data, return_rationales=True)
    packed += got.packed_batches.sum()
    np.testing.assert_array_equal(got.kept_counts, want.kept_counts)
    for a, b in zip(got.kept_positions, want.kept_positions):
      for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
    assert got.logits.shape == (len(n), width, 2)
    np.testing.assert_allclose(got.logits[real], want.logits[real], atol=1e-4, rtol=0)
    assert (got.logits[~real] == PAD_LOGIT).all()
  assert (want.kept_counts[:, -1] < n).all() and (want.kept_counts[:, -1] > 0).all()

  config = lengths.constant_ratio_config(width, L, 0.5)
  engine = LengthEngine(ClassifierConfig(ENC, 2, head="span"), span_params(), config,
                        base=width, flags=FLAGS, batch_size=4, max_length=width,
                        buckets=(16, 32, 64))
  got = engine.run(data, return_rationales=True)
  batch = {"input_ids": data.input_ids, "token_type_ids": data.token_type_ids,
           "attention_mask": real}
  masked, trace = masked_forward(ENC, SPAN, span_params(), batch, jnp.asarray(config),
                                 base=width, flags=FLAGS)
  np.testing.assert_allclose(got.logits[real], np.asarray(masked)[real], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(got.kept_counts, np.asarray(trace["lengths"]).T)
  kept = np.asarray(trace["kept"]) & real
  for e in range(len(n)):
    for l, positions in enumerate(got.kept_positions[e]):
      np.testing.assert_array_equal(np.sort(positions), np.flatnonzero(kept[l, e]))
  assert (got.kept_counts[:, -1] < n).all()
  return packed


def test_engines_with_restore_equal_references_on_random_windows():
  rng = np.random.default_rng(3)
  n = np.array([24, 32, 17, 32, 24])  # few lengths: the reference compiles per length.
  ids = np.where(np.arange(32) < n[:, None], rng.integers(1000, 3000, (len(n), 32)), 0)
  ids[:, 0] = 101
  types = ((np.arange(32) >= 6) & (np.arange(32) < n[:, None])).astype(np.int32)
  assert check_engines(ids, types, n) > 0  # the packed grids' scatter ran too.


def squad_windows(path, tokenizer, count: int, max_length: int = 128):
  """The first `count` question + context windows of a SQuAD JSON (only_second truncation),
  padded to `max_length`: (input_ids, token_type_ids, lengths)."""
  with gzip.open(path, "rt", encoding="utf-8") as f:
    articles = json.load(f)["data"]
  pairs = [(qa["question"], paragraph["context"]) for article in articles
           for paragraph in article["paragraphs"] for qa in paragraph["qas"]][:count]
  enc = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation="only_second",
                  max_length=max_length, padding="max_length", return_tensors="np")
  return enc["input_ids"], enc["token_type_ids"], enc["attention_mask"].sum(1)


def test_engines_with_restore_equal_references_on_squad_windows(shared_data, tokenizer):
  path = shared_data / "squad" / "dev-v1.1.json.gz"
  if not path.exists():
    pytest.skip(f"{path} is absent")
  assert check_engines(*squad_windows(path, tokenizer, 5)) > 0  # packed grids on real text too.


def test_hard_removal_with_no_token_left_runs_on_quietly():
  """Every token gone before layer 0: each later layer sees none (its cutoff counts at
  least one token, as the engine's does), keeps none, and no NumPy warning is raised; the
  head reads the restored embeddings."""
  cfg, params = adapler_config(), adapler_params()  # cached: changed on a copy.
  params = {**params, "speed": {**params["speed"], "eta": jnp.full((L,), 100.0)}}
  ids = _batch((9,))["input_ids"][0, :9]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = adapler.hard_forward(cfg, params, ids)
  assert list(got.kept_counts) == [0] * L
  assert got.logits.shape == (9, 2) and np.isfinite(got.logits).all()
  h0 = _embed(params["model"], {"input_ids": ids[None],
                                "token_type_ids": np.zeros_like(ids)[None]})
  np.testing.assert_allclose(got.logits, _head(params["model"], h0)[0], atol=1e-5, rtol=0)


def test_a_span_model_that_drops_every_token_restores_them_all():
  """eta 0 at the first layer and far above 1 at the last (a search may scale it so):
  every token runs the first layer, none enters the last, and every one comes back with
  its first layer's output, in the engine and the per-example reference alike: the logits
  of a one-layer model."""
  n = np.array([16, 13, 9, 6], np.int32)
  batch = _batch(n)
  data = TokenizedDataset(batch["input_ids"], batch["token_type_ids"], n,
                          np.zeros(len(n), np.int32), [str(i) for i in range(len(n))], "span")
  cfg, params = adapler_config(), adapler_params()  # cached: changed on a copy.
  eta = params["speed"]["eta"].at[0].set(0.0).at[-1].set(100.0)  # S~ <= 1 < 100 / n.
  params = {**params, "speed": {**params["speed"], "eta": eta}}
  want = per_example_run(cfg, params, data)
  got = AdaptiveEngine(cfg, params, batch_size=4, max_length=T, buckets=(8, 16)).run(data)
  assert (want.kept_counts[:, -1] == 0).all() and (want.kept_counts[:, 0] == n).all()
  np.testing.assert_array_equal(got.kept_counts, want.kept_counts)
  real = batch["attention_mask"]
  one_layer = SpanQA(dataclasses.replace(ENC, num_layers=1)).apply(
      {"params": params["model"]}, batch["input_ids"], batch["token_type_ids"],
      attention_bias_from_mask(real))[0]
  for result in (want, got):
    np.testing.assert_allclose(result.logits[real], np.asarray(one_layer)[real], atol=1e-4,
                               rtol=0)
