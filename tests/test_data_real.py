"""Loaders on the real datasets in ../shared/data (skipped when the folder is absent)."""

import numpy as np
import pytest

from adapler_jax import data


@pytest.fixture(scope="module")
def load(shared_data):
  cache = {}

  def get(task, split):
    if (task, split) not in cache:
      folder = shared_data / task
      if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
      cache[task, split] = data.load_split(task, split, folder)
    return cache[task, split]
  return get


def _check_tokenized(tok, ds, max_length):
  assert tok.input_ids.shape == tok.token_type_ids.shape == (len(ds), max_length)
  assert tok.lengths.max() <= max_length and tok.lengths.min() >= 3
  np.testing.assert_array_equal(tok.labels, ds.labels)
  pad = ~data.valid_mask(tok.lengths, max_length)
  assert (tok.input_ids[pad] == tok.pad_id).all()


def _check_eval_batches(tok, batch_size):
  widths = set(data.bucket_lengths(tok.max_length))
  seen = []
  for b in data.eval_batches(tok, batch_size):
    assert b["input_ids"].shape[0] == batch_size and b["input_ids"].shape[1] in widths
    real = b["index"][b["real"]]
    assert (tok.lengths[real] <= b["input_ids"].shape[1]).all()
    seen.append(real)
  seen = np.concatenate(seen)
  assert len(seen) == len(tok) and len(np.unique(seen)) == len(tok)


@pytest.mark.parametrize("task,split,rows,counts", [
    ("sst2", "train", 67_349, [29_780, 37_569]),
    ("sst2", "dev", 872, [428, 444]),
    ("mrpc", "train", 3_668, [1_194, 2_474]),
    ("mrpc", "dev", 408, [129, 279]),
    ("mrpc", "test", 1_725, None),
    ("qnli", "dev", 5_463, [2_702, 2_761]),
    ("ag_news", "test", 7_600, [1_900] * 4),
    ("imdb", "train", 25_000, [12_500] * 2),
    ("imdb", "test", 25_000, [12_500] * 2),
])
def test_row_counts_and_labels(load, task, split, rows, counts):
  ds = load(task, split)
  assert len(ds) == rows and len(set(ds.ids)) == rows
  spec = data.get_task(task)
  assert set(np.unique(ds.labels).tolist()) == set(range(spec.num_labels))
  if counts is not None:
    assert np.bincount(ds.labels).tolist() == counts
  assert len(ds.texts) == (2 if spec.is_pair else 1)
  assert all(t.strip() for texts in ds.texts for t in texts)


def test_text_contents(load):
  assert load("sst2", "dev").texts[0][0] == "it 's a charming and often affecting journey ."
  mrpc = load("mrpc", "train")
  assert mrpc.ids[0] == "702876-702977" and mrpc.labels[0] == 1
  assert mrpc.texts[0][0].startswith('Amrozi accused his brother , whom he called " the')
  qnli = load("qnli", "dev")
  assert qnli.labels[0] == 0 and qnli.labels[1] == 1  # entailment = 0
  assert qnli.texts[1][694].startswith('" Luis Walter Alvarez')
  ag = load("ag_news", "test")
  assert ag.texts[0][0].startswith("Fears for T N pension after talks Unions representing")
  assert ag.labels[0] == 2  # class 3 (Business), 1-based in the file
  imdb = load("imdb", "train")
  assert not any("<br />" in t for t in imdb.texts[0])


def test_ag_news_resplit(load):
  ag = load("ag_news", "test")
  train, test = data.resplit(ag, 6_000, 1_600, seed=0)
  assert len(train) == 6_000 and len(test) == 1_600
  assert not set(train.ids) & set(test.ids)
  assert np.bincount(train.labels).tolist() == [1_500] * 4
  assert np.bincount(test.labels).tolist() == [400] * 4
  again, _ = data.resplit(ag, 6_000, 1_600, seed=0)
  other, _ = data.resplit(ag, 6_000, 1_600, seed=1)
  assert again.ids == train.ids and other.ids != train.ids
  assert "re-split" in train.source


@pytest.mark.parametrize("task,split", [("sst2", "dev"), ("mrpc", "dev"), ("qnli", "dev")])
def test_tokenize_and_batch(load, tokenizer, task, split):
  ds = load(task, split)
  max_length = data.get_task(task).max_length
  tok = data.tokenize(ds, tokenizer, max_length)
  _check_tokenized(tok, ds, max_length)
  if ds.is_pair:
    # Segment 1 starts right after the first [SEP] and runs to the last real token.
    first_sep = np.argmax(tok.input_ids == tokenizer.sep_token_id, axis=1)
    positions = np.arange(max_length)
    second = (positions > first_sep[:, None]) & data.valid_mask(tok.lengths, max_length)
    np.testing.assert_array_equal(tok.token_type_ids == 1, second)
  else:
    assert (tok.token_type_ids == 0).all()
  _check_eval_batches(tok, 64)
  batch = next(data.train_batches(tok, 32, seed=0, epoch=0))
  assert batch["input_ids"].shape == (32, max_length)


def test_imdb_subset_tokenizes_at_512(load, tokenizer):
  ds = data.subset(load("imdb", "test"), 400, seed=0)
  tok = data.tokenize(ds, tokenizer, 512)
  _check_tokenized(tok, ds, 512)
  assert (tok.lengths == 512).any()  # long reviews are truncated
  _check_eval_batches(tok, 32)
