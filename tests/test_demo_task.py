"""The generated keyword-topic task: deterministic, keyword-labelled, with exact rationales."""

import numpy as np
import pytest

from adapler_jax import data
from adapler_jax.data import demo


@pytest.fixture(scope="module")
def demo_set(tokenizer):
  return data.make_demo_task(tokenizer, 300, seed=7)


def test_deterministic(tokenizer, demo_set):
  again = data.make_demo_task(tokenizer, 300, seed=7)
  assert again.texts == demo_set.texts and again.ids == demo_set.ids
  np.testing.assert_array_equal(again.labels, demo_set.labels)
  assert all(np.array_equal(a, b) for a, b in zip(again.rationales, demo_set.rationales))
  assert data.make_demo_task(tokenizer, 300, seed=8).texts != demo_set.texts


def test_keywords_determine_label(demo_set):
  keyword_class = {w: c for c, words in enumerate(demo.TOPICS) for w in words}
  assert np.bincount(demo_set.labels).tolist() == [75] * 4
  for text, label, rationale in zip(demo_set.texts[0], demo_set.labels, demo_set.rationales):
    words = text.split()
    assert 8 <= len(words) <= 40 and 1 <= len(rationale) <= 3
    planted = [i for i, w in enumerate(words) if w in keyword_class]
    assert planted == rationale.tolist()
    assert {keyword_class[words[i]] for i in planted} == {label}


def test_fillers_are_whole_words(tokenizer):
  fillers = demo.filler_words(tokenizer)
  assert len(fillers) > 10_000
  assert not any(w.startswith("##") or w.startswith("[") for w in fillers)
  assert all(len(tokenizer.tokenize(w)) == 1 for w in fillers[::500])


def test_rationale_tokens_are_keywords(tokenizer, demo_set):
  tok = data.tokenize(demo_set, tokenizer, 64)
  keywords = {w for words in demo.TOPICS for w in words}
  for i in range(len(demo_set)):
    tokens = tokenizer.convert_ids_to_tokens(tok.input_ids[i, :tok.lengths[i]].tolist())
    marked = np.nonzero(tok.rationale_mask[i])[0]
    # Every word is one token, so word j sits at token j + 1 (after [CLS]).
    np.testing.assert_array_equal(marked, demo_set.rationales[i] + 1)
    assert {tokens[p] for p in marked} <= keywords
    assert not keywords & {t for p, t in enumerate(tokens) if p not in set(marked)}


def test_registered_demo_splits():
  train = data.load_split("demo", "train", num_examples=50)
  dev = data.load_split("demo", "dev", num_examples=50)
  assert len(train) == 50 and train.task == "demo" and train.rationales is not None
  assert train.texts != dev.texts and not set(train.ids) & set(dev.ids)
  assert data.load_split("demo", "train", num_examples=50).texts == train.texts
  assert data.get_task("demo").label_names == demo.TOPIC_NAMES[:4]
  with pytest.raises(ValueError, match="demo task only"):
    data.load_split("sst2", "dev", "/nonexistent", num_examples=5)


def test_a_subset_larger_than_its_split_is_named(tmp_path, caplog):
  """A subset with a zero too many ran the whole split without a word: it is named."""
  import logging  # pylint: disable=g-import-not-at-top
  from adapler_jax import pipeline  # pylint: disable=g-import-not-at-top
  config = pipeline.base_config("demo", max_length=16)
  config.data.train_subset, config.data.dev_subset = 1_000_000, 100
  run = pipeline.prepare(config, tmp_path / "run")
  with caplog.at_level(logging.WARNING):
    train, dev = run.dataset("train"), run.dataset("dev")
  assert len(dev) == 100
  assert [r.getMessage() for r in caplog.records if "subset" in r.getMessage()] == [
      f"data.train_subset 1000000 is more than the {len(train)} rows of the train split: all "
      "of them are used"]
