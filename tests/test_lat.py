"""The Length-Adaptive Transformer: selection, both execution paths, sampler, loss, cost."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax.infer import flops
from adapler_jax.models import lat, walk
from adapler_jax.models.bert import NEG_INF, EncoderConfig, embed
from adapler_jax.models.heads import Span, as_head
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import SelectionFlags, keep_top, significance
from adapler_jax.train import classifier
from adapler_jax.train import lat_step

ENC = EncoderConfig.tiny(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128)
T = 16

# Compiled once per shape: eager dispatch of these tiny models costs far more than compiling.
masked_forward = jax.jit(lat.masked_forward, static_argnums=(0, 1),
                         static_argnames=("base", "flags", "deterministic"))
plain_logits = jax.jit(classifier.classifier_logits, static_argnums=(0, 1))


@pytest.fixture(scope="module")
def params():
  return classifier.init_classifier(jax.random.key(0), ENC, 3)


def _batch(n=(16, 12, 9, 5), seed=0):
  n = np.asarray(n)
  ids = np.random.default_rng(seed).integers(5, 120, (len(n), T)).astype(np.int32)
  mask = np.arange(T)[None] < n[:, None]
  return {"input_ids": ids * mask, "token_type_ids": np.zeros_like(ids),
          "attention_mask": mask, "labels": np.arange(len(n)) % 3}


def _gather(params, batch, config, flags=SelectionFlags()):
  n = batch["attention_mask"].sum(1)
  counts = lengths.keep_counts(np.asarray(config), n, T, flags.length_base)
  real = lengths.real_counts(config, n, T, flags.length_base)
  widths = tuple(int(w) for w in real.max(axis=0))
  logits, trace = lat.gather_forward(ENC, 3, params, batch["input_ids"], batch["token_type_ids"],
                                     jnp.asarray(n), jnp.asarray(counts), widths, flags=flags)
  return np.asarray(logits), real, trace


def test_identity_without_config_or_layerdrop_is_plain_bert(params):
  batch = _batch()
  plain = plain_logits(ENC, 3, params, batch)
  logits, _ = masked_forward(ENC, 3, params, batch, None, base=T)
  np.testing.assert_array_equal(logits, plain)


@pytest.mark.parametrize("n", [(16, 16, 16, 16), (16, 12, 9, 5)])  # without, with padding.
def test_full_lengths_equal_plain_bert(params, n):
  batch = _batch(n)
  plain = plain_logits(ENC, 3, params, batch)
  masked, trace = masked_forward(ENC, 3, params, batch, jnp.full((4,), T), base=T)
  np.testing.assert_allclose(masked, plain, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(trace["lengths"])[:, 0], [n[0]] * 4)
  gathered, _, _ = _gather(params, batch, (T,) * 4)
  np.testing.assert_allclose(gathered, plain, atol=1e-5)


def test_padding_goes_first(params):
  """A config at least as long as every example equals the unpadded model, per example."""
  batch = _batch((12, 9, 5))
  config = jnp.array([12, 12, 12, 12])
  logits, trace = masked_forward(ENC, 3, params, batch, config, base=T)
  for b, n in enumerate((12, 9, 5)):
    alone = {k: v[b:b + 1, :n] for k, v in batch.items() if k != "labels"}
    np.testing.assert_allclose(logits[b], plain_logits(ENC, 3, params, alone)[0],
                               atol=1e-5)
  assert np.asarray(trace["lengths"]).tolist() == [[12, 9, 5]] * 4


def test_significance_on_a_hand_built_attention_tensor():
  probs = np.zeros((1, 2, 4, 4), np.float32)
  probs[0, 0] = [[.1, .2, .3, .4], [.25, .25, .25, .25], [0, 0, 1, 0], [.5, .5, 0, 0]]
  probs[0, 1] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
  rows = np.array([[True, True, True, False]])  # query 3 is not counted (padding, dropped).
  score = np.asarray(significance(jnp.asarray(probs), jnp.asarray(rows)))
  np.testing.assert_allclose(score, [[.1 + .25 + 1, .2 + .25 + 1, .3 + .25 + 1 + 1, .4 + .25]],
                             rtol=1e-6)
  no_diag = np.asarray(significance(jnp.asarray(probs), jnp.asarray(rows), False))
  np.testing.assert_allclose(no_diag, [[.25, .2, .3 + .25, .4 + .25]], rtol=1e-6)
  # Ties go to the lower position; [CLS] forced or not; absent tokens never kept.
  tied = jnp.array([[0.1, 0.5, 0.5, 0.5, 0.9]])
  present = jnp.ones((1, 5), bool)
  k = jnp.array([2])
  assert keep_top(tied, present, k).tolist() == [[False, True, False, False, True]]
  forced = (jnp.arange(5) == 0)[None]
  assert keep_top(tied, present, k, forced).tolist() == [[True, False, False, False, True]]
  absent = present.at[0, 4].set(False)
  assert keep_top(tied, absent, jnp.array([3])).tolist() == [[False, True, True, True, False]]


@pytest.mark.parametrize("base", ["padded", "actual"])
def test_masked_path_equals_gather_path(params, base):
  batch = _batch()
  flags = SelectionFlags(length_base=base)
  config = (14, 11, 8, 6)
  masked, trace = masked_forward(ENC, 3, params, batch, jnp.asarray(config), base=T,
                                 flags=flags)
  gathered, real, _ = _gather(params, batch, config, flags)
  np.testing.assert_allclose(masked, gathered, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(trace["lengths"]).T, real)


def _upstream_reference(params, head, batch, config, layer_on, flags):
  """The authors' selection written out per example in numpy, sharing only the layers'
  attention and feed-forward blocks: score = attention received, summed over heads and
  the kept query rows (all rows with `include_pad_queries`); keep the top l_i by score,
  ties to the lower position, [CLS] first when forced; a dropped token's last vector is
  restored into its position for span heads."""
  head = as_head(head)
  layers = walk.param_layers(ENC, params["bert"])
  embedded = np.asarray(embed(ENC, params["bert"]["embeddings"], batch["input_ids"],
                              batch["token_type_ids"]))
  outputs = []
  for b, h in enumerate(embedded):
    valid = np.asarray(batch["attention_mask"][b], bool)
    positions, restored, h = np.arange(T), h.copy(), h[None]
    for i, layer in enumerate(layers):
      if layer_on is not None and not layer_on[i]:
        continue
      bias = np.where(valid, 0.0, NEG_INF).astype(np.float32)[None]  # (1, keys).
      attended, probs = layer.attend(jnp.asarray(h), jnp.asarray(bias), return_probs=True)
      rows = np.ones_like(valid) if flags.include_pad_queries else valid
      score = (np.asarray(probs)[0] * rows[None, :, None]).sum(axis=(0, 1))
      order = np.lexsort((positions, -score))  # by score, then by position.
      if flags.keep_cls:
        order = np.concatenate([[0], order[order != 0]])
      keep = order[:min(config[i], len(valid))]
      h = np.asarray(layer.feed_forward(jnp.asarray(np.asarray(attended)[:, keep])))
      valid, positions = valid[keep], positions[keep]
      restored[positions] = h[0]
    outputs.append(restored if head.restore else h[0, :1])
  return np.asarray(head.module(ENC).apply({"params": params["head"]},
                                           jnp.asarray(np.stack(outputs))))


@pytest.mark.parametrize("head,flags", [
    (3, SelectionFlags()), (3, SelectionFlags(include_pad_queries=True)),
    (Span(), SelectionFlags(keep_cls=False))], ids=["cls", "cls-pad-queries", "span"])
def test_masked_path_equals_an_upstream_style_reference(head, flags):
  """Not only the two paths against each other (they share the scoring and the top-k):
  the masked path against the selection written out per example, with and without
  LayerDrop, on a padded batch."""
  params = classifier.init_classifier(jax.random.key(0), ENC, head)
  batch = _batch()
  for config, layer_on in (((14, 11, 8, 6), None), ((9, 7, 4, 2), (True, False, True, True))):
    on = None if layer_on is None else jnp.asarray(layer_on)
    got, _ = masked_forward(ENC, head, params, batch, jnp.asarray(config), base=T, flags=flags,
                            layer_on=on)
    want = _upstream_reference(params, head, batch, config, layer_on, flags)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_both_paths_break_ties_by_original_position(params):
  """Query and key weights at zero make attention uniform, so every token of a layer ties
  on significance: both paths keep the lowest positions, though after the first gather
  the slots are in significance order, not position order."""
  tied = jax.tree.map(lambda a: a, params)
  for layer in ("layer_1", "layer_2", "layer_3"):
    attention = tied["bert"]["encoder"][layer]["attention"]["self"]
    for name in ("query", "key"):
      attention[name] = jax.tree.map(jnp.zeros_like, attention[name])
  batch = _batch()
  config = (12, 8, 5, 3)
  masked, trace = masked_forward(ENC, 3, tied, batch, jnp.asarray(config), base=T)
  gathered, _, gather_trace = _gather(tied, batch, config)
  n = batch["attention_mask"].sum(1)
  for l in range(1, len(config)):
    masked_kept = [[p for p in np.flatnonzero(row) if p < n[b]]  # real tokens only.
                   for b, row in enumerate(np.asarray(trace["kept"][l]))]
    gather_kept = [sorted(p[p >= 0].tolist()) for p in np.asarray(gather_trace["positions"][l])]
    assert gather_kept == masked_kept
  assert masked_kept[1] == [0, 1, 2]  # row 1 kept every token so far: the first three stay.
  np.testing.assert_allclose(masked, gathered, atol=1e-4)


def test_actual_base_keeps_a_ratio_of_each_example():
  real = lengths.real_counts((8, 4), np.array([16, 10, 3]), 16, "actual")
  assert real.tolist() == [[8, 4], [5, 3], [2, 1]]  # ceil(n * l / T), at least 1.


def test_selection_is_padding_free_unless_pad_queries_count(params):
  """Per-example clamp: a padded batch selects as each example alone; with the upstream
  flag (padded query rows counted) the scores depend on the batch's padding."""
  batch = _batch((16, 6))
  config = jnp.array([5, 4, 3, 2])
  alone = {k: v[1:, :6] for k, v in batch.items() if k != "labels"}
  run = lambda b, flags=SelectionFlags(): masked_forward(ENC, 3, params, b, config, base=T,
                                                          flags=flags)[1]
  padded, single = run(batch), run(alone)
  np.testing.assert_array_equal(np.asarray(padded["kept"])[:, 1, :6],
                                np.asarray(single["kept"])[:, 0])
  np.testing.assert_allclose(np.asarray(padded["significance"])[0, 1, :6],
                             np.asarray(single["significance"])[0, 0], rtol=1e-5)
  up = SelectionFlags(include_pad_queries=True)
  s_padded = np.asarray(run(batch, up)["significance"])[0, 1, :6]
  s_single = np.asarray(run(alone, up)["significance"])[0, 0]
  assert np.max(np.abs(s_padded - s_single)) > 1.0  # ten padded rows add ~10 x heads of mass.


def test_smallest_configs():
  assert lengths.constant_ratio_config(64, 6, 0.2) == (52, 42, 34, 28, 23, 19)
  assert lengths.constant_ratio_config(128, 12, 0.2) == (
      103, 83, 67, 54, 44, 36, 29, 24, 20, 16, 13, 11)
  assert lengths.constant_ratio_config(384, 12, 0.2) == (
      308, 247, 198, 159, 128, 103, 83, 67, 54, 44, 36, 29)
  on = jnp.ones((6,), bool)
  assert lengths.sample_config(None, 64, on, ratio=0.2).tolist() == [52, 42, 34, 28, 23, 19]


def test_sampler_bounds_and_layerdrop():
  on = jnp.array([True, False, True, True, True, True])
  sample = jax.jit(lambda k: lengths.sample_config(k, 64, on, ratio=0.2))
  for seed in range(200):
    config = np.asarray(sample(jax.random.key(seed)))
    prev = 64
    for i, l in enumerate(config):
      if not on[i]:
        assert l == prev  # a dropped layer does not reduce.
      else:
        assert max(math.ceil(0.8 * prev), 2) <= l <= prev
      prev = l
  drops = jax.vmap(lambda k: lengths.layer_drop(k, 12, 0.2))(jax.random.split(jax.random.key(0),
                                                                               2000))
  assert abs(1 - float(jnp.mean(drops)) - 0.2) < 0.02


def test_a_layerdropped_layer_is_the_identity(params):
  """Skipping layer 1 equals the 3-layer model without it; its length entry is never used."""
  batch = _batch()
  off = jnp.array([True, False, True, True])
  logits, _ = masked_forward(ENC, 3, params, batch, jnp.array([12, 10, 8, 6]), base=T,
                             layer_on=off)
  enc3 = EncoderConfig.tiny(num_layers=3, hidden_size=64, num_heads=4, intermediate_size=128)
  layers = params["bert"]["encoder"]
  three = {**params, "bert": {**params["bert"], "encoder": {
      "layer_0": layers["layer_0"], "layer_1": layers["layer_2"], "layer_2": layers["layer_3"]}}}
  want, _ = masked_forward(enc3, 3, three, batch, jnp.array([12, 8, 6]), base=T)
  np.testing.assert_allclose(logits, want, atol=1e-5)


def test_kd_directions_match_hand_computed_values():
  t = jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
  s = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
  pt, ps = np.array([0.7, 0.2, 0.1]), np.array([0.5, 0.3, 0.2])
  forward = np.sum(pt * (np.log(pt) - np.log(ps)))
  reverse = np.sum(ps * (np.log(ps) - np.log(pt)))  # torch KLDivLoss(log p_t, p_s), batchmean.
  assert float(lat_step.kd_loss(t, s, "forward")) == pytest.approx(forward, rel=1e-5)
  assert float(lat_step.kd_loss(t, s, "reverse")) == pytest.approx(reverse, rel=1e-5)
  assert forward != pytest.approx(reverse, rel=1e-3)


def test_sandwich_gradient_is_the_sum_of_the_separate_terms():
  # Two layers and one random sub-model keep every kind of term and the compile short.
  enc = EncoderConfig.tiny(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
  params = classifier.init_classifier(jax.random.key(1), enc, 3)
  batch = _batch()
  cfg = lat_step.LATConfig(base=T, num_sandwich=1)
  key = jax.random.key(3)
  one_pass = jax.jit(jax.grad(
      lambda p: lat_step.sandwich_loss(enc, 3, cfg, p, batch, key)[0]))(params)
  teacher = jax.jit(lambda p: lat_step.sandwich_terms(enc, 3, cfg, p, batch, key)[1]["logits"])(
      params)
  # One backward pass per term (as upstream), then their sum.
  terms = lambda p: jnp.stack(lat_step.sandwich_terms(enc, 3, cfg, p, batch, key, teacher)[0])
  per_term = jax.jit(jax.jacrev(terms))(params)  # leaves (num_sandwich + 2, ...).
  assert jax.tree.leaves(per_term)[0].shape[0] == cfg.num_sandwich + 2 == 3
  total = jax.tree.map(lambda g: jnp.sum(g, axis=0) / (cfg.num_sandwich + 2), per_term)
  for a, b in zip(jax.tree.leaves(one_pass), jax.tree.leaves(total)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_pass_by_pass_gradient_equals_the_summed_loss_in_a_third_of_the_memory():
  # The train step differentiates the full model, then each sub-model in a scan: same loss,
  # terms, configs and gradient as differentiating the summed sandwich loss, and XLA's
  # scratch memory holds one pass's activations instead of all four.
  enc = EncoderConfig.tiny(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
  params = classifier.init_classifier(jax.random.key(1), enc, 3)
  b, t = 8, 64
  ids = np.random.default_rng(0).integers(5, 120, (b, t)).astype(np.int32)
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
           "attention_mask": np.ones((b, t), bool), "labels": np.arange(b) % 3}
  cfg = lat_step.LATConfig(base=t, num_sandwich=2)
  key = jax.random.key(3)
  summed = jax.jit(jax.value_and_grad(
      lambda p: lat_step.sandwich_loss(enc, 3, cfg, p, batch, key), has_aux=True))
  by_pass = jax.jit(lambda p: lat_step.sandwich_grads(enc, 3, cfg, p, batch, key))
  (want_loss, want_aux), want = summed(params)
  loss, aux, grads = by_pass(params)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
  np.testing.assert_allclose(aux["terms"], want_aux["terms"], rtol=1e-6)
  np.testing.assert_array_equal(aux["configs"], want_aux["configs"])
  for a, g in zip(jax.tree.leaves(want), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, g, atol=1e-7)
  scratch = lambda f: f.lower(params).compile().memory_analysis().temp_size_in_bytes
  assert scratch(by_pass) < scratch(summed) / 3


def test_new_length_configs_never_recompile(params):
  import optax  # pylint: disable=g-import-not-at-top
  from adapler_jax.train.state import create_train_state  # pylint: disable=g-import-not-at-top
  optimizer = optax.adamw(1e-3)
  step = lat_step.make_lat_step(ENC, 3, lat_step.LATConfig(base=T), optimizer)
  state = create_train_state(params, optimizer, jax.random.key(0))
  configs = set()
  batch = _batch()
  for _ in range(4):
    state, metrics = step(state, batch)
    configs.add(tuple(np.asarray(metrics["smallest_config"]).tolist()))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert np.isfinite(float(metrics["loss"]))
  assert len(configs) > 1  # LayerDrop changed the smallest sub-model between steps.


def test_lat_macs_match_the_papers_counts():
  bert_base = flops.FlopsDims(num_layers=12, hidden=768, intermediate=3072, num_classes=2)
  assert flops.lat_macs(None, 384, bert_base, "span") == 35_340_779_904
  smallest = lengths.constant_ratio_config(384, 12, 0.2)
  assert flops.lat_macs(smallest, 384, bert_base, "span") == 11_779_692_672


def test_selection_flops_count_attention_before_and_ffn_after():
  dims = flops.FlopsDims(num_layers=2, hidden=4, intermediate=8, num_classes=2)
  got = flops.selection_flops([10], [[6, 3]], dims)[0]
  layer = lambda n, k: 2 * n * 4 * 16 + 4 * n * n * 4 + 2 * k * 2 * 4 * 8
  want = 8 * 10 * 4 + 2 * 16 + 2 * 4 * 2 + layer(10, 6) + layer(6, 3)
  assert got == want
  full = flops.selection_flops([10], [[10, 10]], dims)[0]
  assert full == flops.backbone_flops(10, dims)


def test_a_traced_ratio_is_one_line():
  """Ratios are exact fractions of a static number; a traced one was a Fraction parse error."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="^a length ratio is static: pass a Python float"):
    jax.jit(lambda r: lengths.shrink(64, r))(0.2)
  assert lengths.shrink(64, np.float32(0.2)) == lengths.shrink(64, 0.2) == 52


def test_config_validation_messages():
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  example = re.escape(", e.g. 13,11 (ratio 0.2 per layer)") + "$"
  for config, message in (
      ((10, 12), "length config (10, 12) must be non-increasing layer by layer"),
      ((10,), "length config (10,) has 1 entries; the model has 2 layers: give one length "
              "per layer"),
      ((17, 3), "length config (17, 3) must stay within [2, 16] (the max length is 16)")):
    with pytest.raises(UserError, match="^" + re.escape(message) + example):
      lengths.validate_config(config, 16, 2)
  assert lengths.parse_config("(52, 42,34)") == (52, 42, 34)


def test_a_config_for_another_depth_is_one_line(params):
  """JAX clamps indices past an array's end, so a config of 3 entries on this 4-layer model
  ran (14, 11, 8, 8) and a cost count read 3 layers: every path refuses it instead."""
  from adapler_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  batch = _batch()
  for config in [(14, 11, 8), (14, 11, 8, 6, 4)]:
    with pytest.raises(InputError, match=rf"config has shape \({len(config)},\); the model "
                                         "has 4 layers"):
      masked_forward(ENC, 3, params, batch, jnp.asarray(config), base=T)
    with pytest.raises(ValueError, match="the model has 4 layers"):
      flops.lat_macs(config, T, flops.FlopsDims.from_config(ENC, num_classes=3))
  n = jnp.asarray(batch["attention_mask"].sum(1))
  with pytest.raises(InputError, match="widths has shape"):
    lat.gather_forward(ENC, 3, params, batch["input_ids"], batch["token_type_ids"], n,
                       jnp.ones((4, 4), jnp.int32), (16, 16, 16))
  with pytest.raises(InputError, match="counts has shape"):
    lat.gather_forward(ENC, 3, params, batch["input_ids"], batch["token_type_ids"], n,
                       jnp.ones((3, 4), jnp.int32), (16, 16, 16, 16))


def test_gather_widths_narrower_than_the_tokens_kept_are_one_line(params):
  """Widths narrower than the real tokens a layer keeps cut tokens without a word."""
  from adapler_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  batch = _batch((16, 12, 9, 5))
  n = batch["attention_mask"].sum(1)
  config = (14, 11, 8, 6)
  real = lengths.real_counts(config, n, T, "actual")  # (E, L)
  counts = lengths.keep_counts(np.asarray(config), n, T, "actual")
  with pytest.raises(InputError, match=re.escape(
      "widths (14, 11, 8, 5) cannot hold the (14, 11, 8, 6) real tokens kept per layer")):
    lat.gather_forward(ENC, 3, params, batch["input_ids"], batch["token_type_ids"], n,
                       jnp.asarray(counts), (14, 11, 8, 5))
  wide = tuple(int(w) for w in real.max(axis=0))
  got, _ = lat.gather_forward(ENC, 3, params, batch["input_ids"], batch["token_type_ids"], n,
                              jnp.asarray(counts), wide)
  assert got.shape == (4, 3)
