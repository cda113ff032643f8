"""Gradient x input saliency against finite differences on a tiny classifier."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import SequenceClassifier
from adapler_jax.train import classifier, saliency
from tests import jax_compat


def test_saliency_matches_finite_difference_gradient_times_input():
  enc = EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0)
  params = classifier.init_classifier(jax.random.key(0), enc, 3)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, enc.vocab_size, (2, 7)).astype(np.int32)
  mask = np.arange(7)[None] < np.array([[7], [5]])
  batch = {"input_ids": ids * mask, "token_type_ids": np.zeros_like(ids),
           "attention_mask": mask, "labels": np.array([2, 0], np.int32)}
  got = np.asarray(saliency.saliency_batch(enc, 3, params, batch))

  model = SequenceClassifier(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0,
                                                dtype="float64"), 3)
  with jax_compat.enable_x64(True):
    p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    h0 = model.apply({"params": p64}, ids, ids * 0, method=lambda m, i, t: m.bert.embed(i, t))
    bias = attention_bias_from_mask(mask).astype(jnp.float64)

    def gold_logit(h, row):
      logits = model.apply({"params": p64}, h, bias,
                           method=SequenceClassifier.logits_from_embeddings)
      return logits[row, batch["labels"][row]]

    @functools.partial(jax.jit, static_argnums=1)
    def central_difference(h, row, eps=1e-5):
      """d gold_logit / d h[row, i, j] for every (i, j): one perturbed input per entry."""
      steps = eps * jnp.eye(h[row].size, dtype=h.dtype).reshape(-1, *h.shape[1:])
      at = jax.vmap(lambda step: gold_logit(h.at[row].add(step), row))
      return ((at(steps) - at(-steps)) / (2 * eps)).reshape(h.shape[1:])

    for row, n in ((0, 7), (1, 5)):
      grad = np.asarray(central_difference(h0, row))
      expected = np.linalg.norm(grad * np.asarray(h0[row]), axis=-1)
      np.testing.assert_allclose(got[row, :n], expected[:n], rtol=1e-3, atol=1e-6)
      assert np.all(got[row, n:] == 0)
  assert np.all(got[:, 0] > 0) and got[0].std() > 0


def test_normalise_rows_sum_to_one():
  s = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(saliency.normalise(s), [[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]])


def test_a_label_out_of_range_is_one_line():
  """`take_along_axis` fills out-of-range picks, so the gold logit of label 3 of 3 classes
  (or a span end past the window) was a constant and the row's saliency all zero."""
  from adapler_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from adapler_jax.models.heads import Span  # pylint: disable=g-import-not-at-top
  enc = EncoderConfig.tiny()
  ids = np.arange(3, 10, dtype=np.int32).reshape(1, 7)
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
           "attention_mask": np.ones(ids.shape, bool)}
  params = classifier.init_classifier(jax.random.key(0), enc, 3)
  with pytest.raises(InputError, match="labels hold 3, outside the 3 classes"):
    saliency.saliency_batch(enc, 3, params, {**batch, "labels": np.array([3])})
  span = classifier.init_classifier(jax.random.key(0), enc, Span())
  with pytest.raises(InputError, match="labels hold 7, outside the 7 positions"):
    saliency.saliency_batch(enc, Span(), span, {**batch, "labels": np.array([[2, 7]])})
  got = saliency.saliency_batch(enc, Span(), span, {**batch, "labels": np.array([[2, 6]])})
  assert np.all(np.asarray(got) > 0)
