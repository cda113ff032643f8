"""Tests for adapler_jax.infer.flops."""

import dataclasses
import types

import numpy as np
import pytest

from adapler_jax.infer import flops

TINY = flops.FlopsDims(num_layers=2, hidden=4, intermediate=8, num_classes=2)
BERT_BASE = flops.FlopsDims(num_layers=12, hidden=768, intermediate=3072,
                            num_classes=2)


def test_hand_computed_tiny():
  # 2*3*(4*16 + 2*4*8) + 4*9*4
  assert flops.layer_flops(3, 4, 8) == 912
  # 2*3*(32*4 + 32)
  assert flops.predictor_flops(3, 4) == 960
  assert flops.embedding_flops(3, 4) == 96
  assert flops.classifier_flops(4, 2) == 48
  assert flops.backbone_flops(3, TINY) == 96 + 2 * 912 + 48
  # embeddings + CP(3) + layer(2) + CP(2) + layer(1) + classifier
  assert flops.adapler_flops([2, 1], 3, TINY) == 96 + 960 + 576 + 640 + 272 + 48


def test_no_dropping_costs_only_the_predictors():
  n = 128
  full = flops.backbone_flops(n, BERT_BASE)
  same = flops.adapler_flops([n] * 12, n, BERT_BASE)
  assert same - full == 12 * flops.predictor_flops(n, 768)
  s = flops.speedup(full, same)
  assert 0.99 < s < 1.0


def test_paper_mode_matches_formulas():
  for n, c in [(10, 2), (57, 3)]:
    kept = [n] * 4 + [n // 2] * 4 + [3] * 4
    dims = dataclasses.replace(BERT_BASE, num_classes=c)
    report = flops.flops_report([n], [kept], dims, mode="paper")
    backbone = 37872 * n * n + 170216500 * n + 1181953 + 1537 * c
    adapler = (1182000 + 1537 * c + 6152 * n
               + sum(3156 * k * k + 14233554 * k for k in kept))
    assert report["backbone_flops"] == backbone
    assert report["adapler_flops"] == adapler
    assert flops.paper_backbone_flops(n, c) == backbone
    assert flops.paper_adapler_flops(kept, n, c) == adapler
    assert report["flops_speedup"] == pytest.approx(backbone / adapler)


@pytest.mark.parametrize("mode", ["analytic", "paper"])
def test_vectorised_matches_scalar_loop(mode):
  rng = np.random.default_rng(0)
  dims = BERT_BASE
  lengths = rng.integers(5, 200, size=17)
  kept = np.zeros((17, 12), dtype=np.int64)
  for e, n in enumerate(lengths):
    k = n
    for l in range(12):
      k = int(rng.integers(1, k + 1))
      kept[e, l] = k
  report = flops.flops_report(lengths, kept, dims, mode=mode)
  if mode == "analytic":
    backbone = sum(flops.backbone_flops(int(n), dims) for n in lengths)
    adapler = sum(flops.adapler_flops(k, int(n), dims)
                  for n, k in zip(lengths, kept))
  else:
    backbone = sum(flops.paper_backbone_flops(int(n), 2) for n in lengths)
    adapler = sum(flops.paper_adapler_flops(k, int(n), 2)
                  for n, k in zip(lengths, kept))
  assert report["backbone_flops"] == pytest.approx(backbone, rel=1e-12)
  assert report["adapler_flops"] == pytest.approx(adapler, rel=1e-12)
  assert report["flops_speedup"] == pytest.approx(backbone / adapler, rel=1e-12)
  assert report["flops_speedup"] > 1.0
  np.testing.assert_allclose(report["kept_tokens_per_layer"], kept.mean(0))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_arrays_count_as_python_ints(dtype):
  """Engine results and tokenized data hold int32 counts; BERT-base at 400 of 512 tokens
  overflows int32 products, so array counts must give what exact Python ints give."""
  kept, n = [400] * 12, 512
  k, length = np.asarray([kept], dtype), np.asarray([n], dtype)
  assert flops.adapler_flops(k, length, BERT_BASE)[0] == flops.adapler_flops(kept, n, BERT_BASE)
  assert flops.backbone_flops(length, BERT_BASE)[0] == flops.backbone_flops(n, BERT_BASE)
  assert flops.layer_flops(length, 768, 3072)[0] == flops.layer_flops(n, 768, 3072)
  assert flops.paper_adapler_flops(k, length, 2)[0] == flops.paper_adapler_flops(kept, n, 2)
  assert flops.paper_backbone_flops(length, 2)[0] == flops.paper_backbone_flops(n, 2)
  assert isinstance(flops.adapler_flops(kept, n, BERT_BASE), int)  # one example: an int.


def test_bad_mode_names_the_options():
  with pytest.raises(ValueError, match="analytic, paper"):
    flops.flops_report([3], [[2, 1]], TINY, mode="fitted")


def test_bad_shapes():
  with pytest.raises(ValueError, match="layers"):
    flops.flops_report([3], [[2, 1, 1]], TINY)
  with pytest.raises(ValueError, match="exceed"):
    flops.flops_report([3], [[4, 1]], TINY)
  with pytest.raises(ValueError, match="layers"):
    flops.flops_report([3], [[2, 1]], TINY, mode="paper")
  with pytest.raises(ValueError, match="no examples"):
    flops.flops_report(np.zeros(0), np.zeros((0, 2)), TINY)
  # The LAT cost takes the same counts and refuses the same mistakes (it returned an
  # actual fraction of 7 for counts above the input's length).
  with pytest.raises(ValueError, match="^kept counts exceed the input length"):
    flops.selection_cost([3], [[4, 1]], (4, 1), 8, TINY)
  with pytest.raises(ValueError, match="^kept has counts for 3 layers; the model expects 2$"):
    flops.selection_cost([3], [[2, 1, 1]], (2, 1), 8, TINY)
  assert flops.selection_cost([3], [[2, 1]], (2, 1), 8, TINY)["actual_fraction"] < 1


def test_dims_from_config():
  cfg = types.SimpleNamespace(num_layers=6, hidden_size=384,
                              intermediate_size=1536, num_classes=3)
  assert flops.FlopsDims.from_config(cfg) == flops.FlopsDims(6, 384, 1536, 3)
  hf = types.SimpleNamespace(num_hidden_layers=6, hidden_size=384,
                             intermediate_size=1536)
  assert flops.FlopsDims.from_config(hf, num_classes=2).num_classes == 2
  with pytest.raises(ValueError, match="num_classes"):
    flops.FlopsDims.from_config(hf)


def test_span_head_counts_every_position():
  """Span QA: Dense H->2 at each of the n positions (4nH), no pooler, in every count."""
  span = dataclasses.replace(TINY, head="span")
  assert flops.head_flops(5, span) == 4 * 5 * 4 and flops.head_flops(5, TINY) == 48
  assert flops.backbone_flops(5, span) == flops.backbone_flops(5, TINY) - 48 + 80
  assert flops.adapler_flops([2, 1], 5, span) == flops.adapler_flops([2, 1], 5, TINY) - 48 + 80
  report = flops.flops_report(np.array([3, 5]), np.array([[2, 1], [5, 5]]), span)
  assert report["backbone_flops"] == flops.backbone_flops(3, span) + flops.backbone_flops(5, span)
  base = dataclasses.replace(BERT_BASE, head="span")
  assert flops.lat_macs(None, 384, base) == flops.lat_macs(None, 384, BERT_BASE, "span")
  with pytest.raises(ValueError, match="analytic"):
    flops.flops_report(np.array([3]), np.array([[2, 1]]), span, mode="paper")
  cfg = types.SimpleNamespace(encoder=types.SimpleNamespace(
      num_layers=2, hidden_size=4, intermediate_size=8), num_labels=2, head="span")
  assert flops.FlopsDims.of_model(cfg) == span


def test_a_model_with_wider_predictors_counts_them():
  """`of_model` reads the predictors' width from the model config, not the encoder's."""
  from adapler_jax.models.adapler import AdapLeRConfig
  from adapler_jax.models.bert import EncoderConfig
  enc = EncoderConfig.tiny()
  wide = flops.FlopsDims.of_model(AdapLeRConfig(enc, num_labels=2, cp_hidden=256))
  assert wide.cp_hidden == 256
  assert flops.FlopsDims.of_model(AdapLeRConfig(enc, num_labels=2)).cp_hidden == 32
  narrow = dataclasses.replace(wide, cp_hidden=32)
  extra = flops.adapler_flops([4] * enc.num_layers, 4, wide) - flops.adapler_flops(
      [4] * enc.num_layers, 4, narrow)
  assert extra == enc.num_layers * 2 * 4 * (256 - 32) * (enc.hidden_size + 1)


def test_cost_formulas_trace_on_jax_integers_without_wrapping():
  """Under jit a JAX int32 count is traced: it counts in float32 (a numpy int32 in int64),
  where BERT-base at 512 tokens would wrap int32 (8.05e9 FLOPs a layer)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  exact = flops.layer_flops(512, 768, 3072)
  assert exact > 2**31 and flops.layer_flops(np.int32(512), 768, 3072) == exact
  traced = jax.jit(lambda n: flops.layer_flops(n, 768, 3072))(jnp.int32(512))
  assert float(traced) == pytest.approx(exact, rel=1e-6)


def _matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in `jaxpr`, nested jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      depth = np.prod([eqn.invars[0].aval.shape[i] for i in contracting])
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(depth)
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        total += _matmul_flops(inner)
  return total


@pytest.mark.parametrize("embedding_size", [None, 16])  # 16: ELECTRA's narrower embeddings.
def test_matmul_terms_equal_the_models_own_matmuls(embedding_size):
  """The analytic count is the model's matmuls (read from its jaxpr) plus 8nE for the
  embedding sums and layer norm; an ELECTRA model's projection E -> H is a matmul too."""
  import jax
  import jax.numpy as jnp
  from adapler_jax.models.bert import EncoderConfig
  from adapler_jax.models.heads import SequenceClassifier

  kind = {"model_type": "electra", "embedding_size": embedding_size} if embedding_size else {}
  enc = EncoderConfig.tiny(**kind)
  model = SequenceClassifier(enc, num_labels=3)
  dims = flops.FlopsDims.from_config(enc, num_classes=3)
  assert dims.embedding_size == embedding_size
  ids = jnp.ones((1, 4), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, ids, jnp.zeros((1, 4)))
  for n in (5, 24):
    ids = jnp.ones((1, n), jnp.int32)
    forward = lambda p, i: model.apply(p, i, jnp.zeros_like(i), jnp.zeros(i.shape))
    matmuls = _matmul_flops(jax.make_jaxpr(forward)(params, ids).jaxpr)
    assert flops.backbone_flops(n, dims) - matmuls == 8 * n * (embedding_size or enc.hidden_size)
  if embedding_size:  # LAT's MACs: the embedding layer norm at E, and the projection.
    plain = dataclasses.replace(dims, embedding_size=None)
    t, e, d = 24, embedding_size, enc.hidden_size
    assert flops.lat_macs(None, t, dims) - flops.lat_macs(None, t, plain) == t * e * d + t * (e - d)
