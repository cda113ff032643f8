"""Rationale agreement: AP / FPR against hand values, word-level scores, CP and baseline scores."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax import data
from adapler_jax.eval import rationale, report
from adapler_jax.models import adapler
from adapler_jax.models.bert import Bert, EncoderConfig, attention_bias_from_mask, attention_probs
from adapler_jax.train import classifier, saliency

TINY = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=64)


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("scores, truth, expected", [
    ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], (1 + 2 / 3) / 2),  # P@1 = 1, P@3 = 2/3.
    ([3, 2, 1], [1, 1, 0], 1.0),  # perfect ranking.
    ([3, 2, 1], [0, 0, 1], 1 / 3),  # the one positive ranked last.
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], (1 + 2 / 3) / 2),  # sorted: .8+, .4-, .35+, .1-.
    ([1, 1, 0, 0], [1, 0, 1, 0], 0.5),  # ties: (1/2)(1/2) + (1/2)(2/4).
    ([0.5] * 4, [0, 1, 0, 0], 0.25),  # all tied: the base rate.
    ([5, 0, 0, 0, 0], [0, 1, 0, 0, 1], 0.4),  # positives only in the tied tail: 2/5.
])
def test_average_precision_hand_values(scores, truth, expected):
  assert rationale.average_precision(np.array(scores), np.array(truth, bool)) == \
      pytest.approx(expected)


def test_average_precision_without_positives_is_nan():
  assert math.isnan(rationale.average_precision(np.array([0.3, 0.2]), np.array([0, 0], bool)))


def test_false_positive_rate_and_recall_hand_values():
  selected = np.array([1, 1, 0, 0, 1], bool)
  truth = np.array([1, 0, 0, 0, 1], bool)
  assert rationale.false_positive_rate(selected, truth) == pytest.approx(1 / 3)
  assert rationale.recall(selected, truth) == 1.0
  assert rationale.false_positive_rate(np.zeros(5, bool), truth) == 0.0
  assert math.isnan(rationale.false_positive_rate(selected, np.ones(5, bool)))


@pytest.mark.parametrize("positives, total", [(1, 4), (2, 5), (3, 3), (2, 6)])
def test_random_average_precision_is_the_mean_over_all_rankings(positives, total):
  truth = np.arange(total) < positives
  aps = [rationale.average_precision(-np.array(order, float), truth)
         for order in itertools.permutations(range(total))]
  assert rationale.random_average_precision(positives, total) == pytest.approx(np.mean(aps))
  assert rationale.random_average_precision(1, 4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


# ----------------------------------------------------------------------------- word level


def test_scores_sum_to_words_and_selection_is_any_token():
  # [CLS] un ##real film [SEP]: words 0 ("unreal", two pieces) and 1 ("film").
  word_ids = np.array([-1, 0, 0, 1, -1])
  index, num_words = rationale.word_index(word_ids)
  assert num_words == 2 and index.tolist() == [-1, 0, 0, 1, -1]
  scores = np.array([[0.1, 0.2, 0.3, 0.1, 0.3]])
  np.testing.assert_allclose(rationale.to_words(scores, index, num_words), [[0.5, 0.1]])
  chosen = rationale.to_words(np.array([[False, False, True, False, True]]), index, num_words)
  assert chosen.tolist() == [[True, False]]


def test_layer_agreement_hand_example():
  # Tokens: [CLS] w0 w1a w1b w2 w3 [SEP]; rationale words {1, 3}.
  word_ids = np.array([-1, 0, 1, 1, 2, 3, -1])
  mask = np.isin(word_ids, [1, 3])
  scores = np.array([
      [0.2, 0.1, 0.2, 0.2, 0.05, 0.15, 0.1],  # words: 0.1, 0.4, 0.05, 0.15 -> AP 1.
      [0.3, 0.3, 0.0, 0.0, 0.2, 0.1, 0.1],  # words: 0.3, 0, 0.2, 0.1 -> ranks 3 and 4.
  ])
  selected = np.array([[1, 0, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 0, 0]], bool)
  got = rationale.layer_agreement(scores, selected, word_ids, mask)
  np.testing.assert_allclose(got["ap"], [1.0, (1 / 3 + 2 / 4) / 2])
  np.testing.assert_allclose(got["fpr"], [0.0, 1.0])
  np.testing.assert_allclose(got["recall"], [1.0, 0.0])
  np.testing.assert_allclose(got["selected_fraction"], [0.5, 0.5])


def test_aggregate_skips_undefined_examples():
  rows = [{"ap": np.array([1.0, 0.5]), "fpr": np.array([0.2, math.nan]),
           "recall": np.array([1.0, 1.0]), "selected_fraction": np.array([0.5, 0.5])},
          {"ap": np.array([math.nan, math.nan]), "fpr": np.array([0.4, math.nan]),
           "recall": np.array([math.nan, math.nan]), "selected_fraction": np.array([1.0, 0.0])}]
  out = rationale.aggregate(rows)
  assert out["map"] == [1.0, 0.5]
  assert out["fpr"] == [pytest.approx(0.3), None]
  assert out["examples_with_ap"] == 1 and out["examples_with_fpr"] == 2


def test_cp_token_scores_zero_after_drop():
  kept = [np.array([0, 1, 3]), np.array([0, 3])]
  scores = [np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.5, 0.2, 0.3])]  # over 0..3, then 0,1,3.
  dense, selected = rationale.cp_token_scores(kept, scores, 4)
  np.testing.assert_allclose(dense, [[0.4, 0.3, 0.2, 0.1], [0.5, 0.2, 0.0, 0.3]])
  assert selected.tolist() == [[True, True, False, True], [True, False, False, True]]


def test_baseline_selection_uniform_threshold():
  scores = np.array([[0.5, 0.2, 0.1, 0.1, 0.1]])  # [CLS] a b c [SEP]
  is_text = np.array([False, True, True, True, False])
  s, sel = rationale.baseline_selection(scores, is_text)
  np.testing.assert_allclose(s, [[0, 0.5, 0.25, 0.25, 0]])  # renormalised over the text.
  assert sel.tolist() == [[False, True, False, False, False]]  # >= 1/3.
  s, sel = rationale.baseline_selection(scores, is_text, include_special=True)
  assert sel.tolist() == [[True, True, False, False, False]]  # >= 1/5 over all tokens.


# ----------------------------------------------------------------------------- baselines


def test_rollout_matches_hand_product():
  a0 = np.array([[0.5, 0.5], [0.0, 1.0]])
  a1 = np.array([[0.0, 1.0], [1.0, 0.0]])
  got = np.asarray(rationale.rollout(jnp.asarray(np.stack([a0, a1])[:, None])))[:, 0]
  m0, m1 = 0.5 * a0 + 0.5 * np.eye(2), 0.5 * a1 + 0.5 * np.eye(2)
  np.testing.assert_allclose(got[0], m0, atol=1e-6)
  np.testing.assert_allclose(got[1], m1 @ m0, atol=1e-6)
  np.testing.assert_allclose(got[1, 0], [0.375, 0.625], atol=1e-6)


def _tiny_batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 2000, (2, 8)).astype(np.int32)
  mask = np.arange(8)[None] < np.array([[8], [5]])
  return {"input_ids": ids * mask, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
          "labels": np.array([1, 0], np.int32)}


def test_attention_probs_are_optional_and_normalised():
  batch = _tiny_batch()
  params = Bert(TINY).init(jax.random.key(0), batch["input_ids"], batch["token_type_ids"],
                           jnp.zeros((2, 8)))["params"]
  bias = attention_bias_from_mask(batch["attention_mask"])
  probs = np.asarray(attention_probs(TINY, params, batch["input_ids"], batch["token_type_ids"],
                                     bias))
  assert probs.shape == (TINY.num_layers, 2, TINY.num_heads, 8, 8)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert np.all(probs[:, 1, :, :, 5:] < 1e-6)  # padding keys get no attention.
  hidden, aux = Bert(TINY).apply({"params": params}, batch["input_ids"],
                                 batch["token_type_ids"], bias)  # default: no intermediates.
  assert set(aux) == {"hidden_states"} and hidden.shape == (2, 8, TINY.hidden_size)


def test_baseline_scores_shapes_and_layer0_saliency_is_phase2_saliency():
  batch = _tiny_batch()
  params = classifier.init_classifier(jax.random.key(1), TINY, 2)
  out = jax.device_get(rationale.baseline_scores(TINY, 2, params, batch, "gold"))
  mask = batch["attention_mask"]
  for name in rationale.BASELINES:
    assert out[name].shape == (TINY.num_layers, 2, 8)
    np.testing.assert_allclose(out[name].sum(-1), 1.0, atol=1e-5)
    assert np.all(out[name][:, ~mask] < 1e-6)
  expected = saliency.normalise(np.asarray(saliency.saliency_batch(TINY, 2, params, batch)))
  np.testing.assert_allclose(out[rationale.SALIENCY][0], expected, rtol=1e-4, atol=1e-6)
  # Raw attention and rollout coincide at layer 1 once [CLS] is set aside (rollout's
  # identity share sits on [CLS] only).
  text = mask & (np.arange(8) > 0)
  raw = np.where(text, out[rationale.ATTENTION][0], 0)
  roll = np.where(text, out[rationale.ROLLOUT][0], 0)
  np.testing.assert_allclose(raw / raw.sum(-1, keepdims=True),
                             roll / roll.sum(-1, keepdims=True), atol=1e-5)


# ----------------------------------------------------------------------------- demo task


@pytest.fixture(scope="module")
def demo_data(tokenizer):
  return data.tokenize(data.make_demo_task(tokenizer, 400, seed=3), tokenizer, 48)


def _per_example(tok, fn):
  rows = []
  for i in range(len(tok)):
    n = int(tok.lengths[i])
    scores, selected = fn(i, n)
    rows.append(rationale.layer_agreement(scores, selected, tok.word_ids[i, :n],
                                          tok.rationale_mask[i, :n]))
  return rationale.aggregate(rows)


def test_demo_perfect_scorer(demo_data):
  def perfect(i, n):
    mask = demo_data.rationale_mask[i, :n]
    return (mask / mask.sum())[None], mask[None]
  out = _per_example(demo_data, perfect)
  assert out["map"] == [1.0] and out["fpr"] == [0.0] and out["recall"] == [1.0]
  assert out["examples_with_ap"] == len(demo_data)


def test_demo_random_scorer_is_at_chance(demo_data):
  rng = np.random.default_rng(0)
  out = _per_example(demo_data, lambda i, n: (rng.random((1, n)), rng.random((1, n)) < 0.3))
  chance = rationale.chance_levels(demo_data)
  # ~10% of the words are planted keywords; a random ranking's expected AP is higher than
  # that base rate with 1-3 positives among 8-40 words.
  assert 0.05 < chance["rationale_word_fraction"] < 0.15
  assert out["map"][0] == pytest.approx(chance["random_map"], abs=0.03)
  assert out["fpr"][0] == pytest.approx(0.3, abs=0.03)


def test_evaluate_rationales_end_to_end(tokenizer, tmp_path):
  small = data.tokenize(data.make_demo_task(tokenizer, 16, seed=5, min_len=6, max_len=12),
                        tokenizer, 16)
  cfg = adapler.AdapLeRConfig(TINY, num_labels=4, eta_init=1.0)
  params = adapler.init(jax.random.key(0), cfg)
  backbone = {"bert": params["model"]["bert"], "head": params["model"]["head"]}
  result = rationale.evaluate_rationales(cfg, params, backbone, small, batch_size=8)
  assert set(result["methods"]) == set(rationale.METHODS)
  for name, m in result["methods"].items():
    for key in ("map", "fpr", "recall", "selected_fraction"):
      assert len(m[key]) == TINY.num_layers and all(0 <= v <= 1 for v in m[key]), (name, key)
  # Hard removal drops tokens from layer to layer, so the CP selects fewer words later.
  cp = result["methods"]["CP"]["selected_fraction"]
  assert cp[1] <= cp[0] < 1
  # The batched engine's scores are those of per-example hard removal (`hard_forward`).
  engine = report.run_adapler(cfg, params, small, batch_size=8, return_rationales=True)
  for i in (0, 1):
    n = int(small.lengths[i])
    ref = adapler.hard_forward(cfg, params, small.input_ids[i, :n])
    want = rationale.cp_token_scores(ref.kept_positions, ref.scores, n)
    got = rationale.cp_token_scores(engine.kept_positions[i], engine.scores[i], n)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])
  json.dumps(result)
  png = rationale.plot_layers(result, tmp_path / "fig5.png", "tiny")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "layer" in rationale.format_table(result)
