"""Task metrics (accuracy, F1) and the paired bootstrap interval over per-example scores."""

import numpy as np
import pytest

from adapler_jax.eval.metrics import METRICS, compute, paired_bootstrap


def test_a_constant_shift_has_a_point_interval():
  a = np.random.default_rng(0).random(50)
  out = paired_bootstrap(a, a + 0.25, resamples=300)
  assert out["mean"] == pytest.approx(0.25)
  assert out["low"] == pytest.approx(0.25) and out["high"] == pytest.approx(0.25)
  assert paired_bootstrap(a, a + 0.25, resamples=300, at_least=0.2)["share_at_least"] == 1.0
  assert paired_bootstrap(a, a + 0.25, resamples=300, at_least=0.3)["share_at_least"] == 0.0


def test_interval_matches_the_normal_approximation_and_is_seeded():
  rng = np.random.default_rng(1)
  n, sd = 400, 0.3
  a = rng.random(n)
  b = a - 0.05 + rng.normal(0, sd, n)
  out = paired_bootstrap(a, b, resamples=4000, seed=3)
  diff = b - a
  half = 1.96 * diff.std() / np.sqrt(n)
  assert out["mean"] == pytest.approx(diff.mean())
  assert out["low"] < out["mean"] < out["high"]
  assert (out["high"] - out["low"]) / 2 == pytest.approx(half, rel=0.1)
  assert paired_bootstrap(a, b, resamples=4000, seed=3) == out  # the same draws.
  assert paired_bootstrap(a, b, resamples=4000, seed=4) != out


def test_unpaired_scores_are_refused():
  with pytest.raises(ValueError, match="two equal, non-empty 1-D arrays"):
    paired_bootstrap(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match="two equal, non-empty 1-D arrays"):
    paired_bootstrap(np.zeros(0), np.zeros(0))
  with pytest.raises(ValueError, match="resamples >= 1 and a level in"):
    paired_bootstrap(np.zeros(3), np.zeros(3), resamples=0)
  with pytest.raises(ValueError, match="resamples >= 1 and a level in"):
    paired_bootstrap(np.zeros(3), np.zeros(3), level=1.0)


@pytest.mark.parametrize("predictions,labels", [
    (np.zeros((4, 1), int), np.zeros(4, int)),  # would broadcast to (4, 4): f1 2.0.
    (np.zeros((4, 2)), np.zeros(4, int)),  # logits, not class predictions.
    (np.zeros(0, int), np.zeros(0, int)),  # no examples: nan.
])
def test_metrics_refuse_predictions_that_do_not_pair_with_labels(predictions, labels):
  for name in METRICS:
    with pytest.raises(ValueError, match="two equal, non-empty 1-D arrays"):
      compute(name, predictions, labels)


def test_accuracy_and_f1_on_a_hand_case():
  predictions, labels = np.asarray([1, 1, 0, 0, 1]), np.asarray([1, 0, 0, 1, 1])
  assert compute("accuracy", predictions, labels) == pytest.approx(3 / 5)
  assert compute("f1", predictions, labels) == pytest.approx(2 * 2 / (3 + 3))
  assert compute("f1", np.zeros(3, int), np.zeros(3, int)) == 0.0  # positive never seen.


def test_paired_bootstrap_by_group_resamples_whole_groups():
  """One example per group is the plain bootstrap, draw for draw; examples that move
  together within their group (questions of one article) widen the interval, as they
  should: 8 groups of 50 identical differences are 8 draws, not 400."""
  rng = np.random.default_rng(0)
  a, b = rng.random(40), rng.random(40)
  assert (paired_bootstrap(a, b, resamples=2000, groups=np.arange(40))
          == paired_bootstrap(a, b, resamples=2000))
  per_group = rng.normal(0.0, 1.0, 8)
  diff = np.repeat(per_group, 50)
  plain = paired_bootstrap(np.zeros(400), diff, resamples=4000)
  clustered = paired_bootstrap(np.zeros(400), diff, resamples=4000,
                               groups=np.repeat(np.arange(8), 50))
  assert clustered["mean"] == pytest.approx(plain["mean"]) == pytest.approx(per_group.mean())
  width = lambda r: r["high"] - r["low"]
  assert width(clustered) > 4 * width(plain)
  with pytest.raises(ValueError, match="3 group labels for 4 paired scores"):
    paired_bootstrap(np.zeros(4), np.zeros(4), groups=[0, 1, 2])
