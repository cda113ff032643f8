"""Tests for the task registry, local formats, tokenization and batching on small files."""

import json
import sys
import types

import numpy as np
import pytest

from adapler_jax import data
from adapler_jax.errors import DataError, UserError

PAPER_MAX_LENGTH = {"sst2": 64, "imdb": 512, "hatexplain": 72, "mrpc": 128, "mnli": 128,
                    "qnli": 128, "ag_news": 128, "dbpedia": 128}


def _write(path, text, encoding="utf-8"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding=encoding)
  return path


def test_registry_matches_paper():
  assert set(data.task_names()) == set(PAPER_MAX_LENGTH) | {"demo", "eraser_movies", "squad"}
  for name, length in PAPER_MAX_LENGTH.items():
    assert data.get_task(name).max_length == length
  assert data.get_task("mrpc").metric == "f1"
  assert data.get_task("sst2").metric == "accuracy"
  assert data.get_task("mnli").num_labels == 3
  assert data.get_task("dbpedia").num_labels == 14
  assert data.get_task("ag_news").num_labels == 4
  assert data.get_task("qnli").is_pair and not data.get_task("imdb").is_pair
  assert data.get_task("sst2").hub == ("glue", "sst2")


def test_get_task_unknown_lists_names():
  with pytest.raises(DataError, match=r"unknown task 'sst3'; known tasks: sst2, .*dbpedia"):
    data.get_task("sst3")
  assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)


def test_transfer_task_needs_the_same_labels():
  assert data.transfer_task("imdb", data.get_task("sst2"), "runs/sst2").name == "imdb"
  with pytest.raises(DataError, match=r"runs/sst2 was trained on sst2 .* ag_news .* does not "
                     "share; pair ag_news with a run trained on the same labels"):
    data.transfer_task("ag_news", data.get_task("sst2"), "runs/sst2")


def test_mnli_splits_and_alias():
  spec = data.get_task("mnli")
  assert spec.eval_splits == ("dev_matched", "dev_mismatched")
  assert spec.resolve_split("dev") == "dev_matched"
  with pytest.raises(DataError, match="task 'sst2' has no split 'test'; use one of train, dev"):
    data.get_task("sst2").resolve_split("test")


def test_mnli_local_tsv(tmp_path):
  header = "index\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
  for name in ("dev_matched", "dev_mismatched"):
    _write(tmp_path / f"{name}.tsv", header +
           f'0\t{name}1\tfic\tA "quoted man.\tA man.\tneutral\tneutral\n'
           f"1\t{name}2\tfic\tIt rains.\tIt is dry.\tcontradiction\tcontradiction\n")
  ds = data.load_split("mnli", "dev", tmp_path)
  assert ds.ids == ["dev_matched1", "dev_matched2"]
  assert ds.texts == (['A "quoted man.', "It rains."], ["A man.", "It is dry."])
  assert ds.labels.tolist() == [1, 2]
  assert data.load_split("mnli", "dev_mismatched", tmp_path).ids[0] == "dev_mismatched1"


def test_dbpedia_csv_joins_title_and_content(tmp_path):
  _write(tmp_path / "test.csv", '14,"Some Book","A book, with ""quotes""."\n'
                                '1,"Acme"," A company."\n')
  ds = data.load_split("dbpedia", "test", tmp_path)
  assert ds.texts == (['Some Book A book, with "quotes".', "Acme A company."],)
  assert ds.labels.tolist() == [13, 0]


def test_imdb_folder_layout(tmp_path):
  _write(tmp_path / "aclImdb/test/pos/1_9.txt", "Great.<br /><br />Loved it")
  _write(tmp_path / "aclImdb/test/neg/2_1.txt", "Bad<br />film")
  ds = data.load_split("imdb", "test", tmp_path)
  assert ds.ids == ["test/neg/2_1.txt", "test/pos/1_9.txt"]
  assert ds.texts[0] == ["Bad film", "Great.  Loved it"]
  assert ds.labels.tolist() == [0, 1]


def _hatexplain_post(labels, tokens):
  return {"annotators": [{"label": label, "annotator_id": i, "target": []}
                         for i, label in enumerate(labels)],
          "rationales": [], "post_tokens": tokens}


def test_hatexplain_majority_vote_drops_ties(tmp_path):
  posts = {"a": _hatexplain_post(["normal", "normal", "offensive"], ["hello", "there"]),
           "b": _hatexplain_post(["hatespeech", "normal", "offensive"], ["no", "majority"]),
           "c": _hatexplain_post(["hatespeech", "hatespeech", "offensive"], ["bad"])}
  _write(tmp_path / "dataset.json", json.dumps({k: {"post_id": k, **v} for k, v in posts.items()}))
  _write(tmp_path / "post_id_divisions.json",
         json.dumps({"train": ["a", "b"], "val": ["c"], "test": []}))
  train = data.load_split("hatexplain", "train", tmp_path)
  assert train.ids == ["a"] and train.texts == (["hello there"],)
  assert train.labels.tolist() == [1]
  assert data.load_split("hatexplain", "dev", tmp_path).labels.tolist() == [0]
  with pytest.raises(DataError, match="split 'test' has no examples"):
    data.load_split("hatexplain", "test", tmp_path)


def test_load_file_formats(tmp_path):
  tsv = _write(tmp_path / "a.tsv", 'q\tp\ty\nis it "so\tit is\tyes\nwhy\tbecause\tno\n')
  ds = data.load_file(tsv, text_fields=("q", "p"), label_field="y", label_names=["no", "yes"])
  assert ds.is_pair and ds.labels.tolist() == [1, 0] and ds.texts[0][0] == 'is it "so'
  csv_path = _write(tmp_path / "b.csv", 'id,text,label\nx1,"one, two",1\nx2,three,0\n')
  ds = data.load_file(csv_path, id_field="id")
  assert ds.ids == ["x1", "x2"] and ds.texts == (["one, two", "three"],)
  jsonl = _write(tmp_path / "c.jsonl", '{"text": "hi", "label": 2}\n\n{"text": "yo", "label": 0}\n')
  ds = data.load_file(jsonl)
  assert ds.labels.tolist() == [2, 0] and ds.ids == ["c-0", "c-1"]


def _toy(n=10, pair=False):
  texts = ([f"word {'x ' * i}end" for i in range(n)],)
  if pair:
    texts += ([f"second {'y ' * (n - i)}" for i in range(n)],)
  return data.TextDataset(ids=[f"t{i}" for i in range(n)], texts=texts,
                          labels=np.arange(n) % 3, task="toy", source="toy")


def test_subset_and_resplit():
  ds = _toy(30)
  sub = data.subset(ds, 7, seed=1)
  assert len(sub) == 7 and sub.ids == data.subset(ds, 7, seed=1).ids
  assert sub.ids == sorted(sub.ids, key=lambda s: int(s[1:]))
  assert data.subset(ds, 100, seed=1) is ds
  train, test = data.resplit(ds, 18, 9, seed=3)
  assert not set(train.ids) & set(test.ids)
  assert np.bincount(train.labels).tolist() == [6, 6, 6]
  assert np.bincount(test.labels).tolist() == [3, 3, 3]
  with pytest.raises(DataError, match="cannot re-split 30 rows into 25 train \\+ 9 test"):
    data.resplit(ds, 25, 9, seed=0)


def test_tokenize_single_and_pair(tokenizer):
  single = data.tokenize(_toy(6), tokenizer, 8)
  assert single.input_ids.shape == (6, 8) and single.input_ids.dtype == np.int32
  assert single.lengths.tolist() == [4, 5, 6, 7, 8, 8]
  assert (single.token_type_ids == 0).all()
  assert (single.input_ids[~data.valid_mask(single.lengths, 8)] == tokenizer.pad_token_id).all()
  pair = data.tokenize(_toy(6, pair=True), tokenizer, 12)
  row = pair.input_ids[0, :pair.lengths[0]]
  seps = np.nonzero(row == tokenizer.sep_token_id)[0]
  assert len(seps) == 2
  assert (pair.token_type_ids[0, :seps[0] + 1] == 0).all()
  assert (pair.token_type_ids[0, seps[0] + 1:seps[1] + 1] == 1).all()
  assert (pair.lengths <= 12).all()


def test_char_spans_give_each_token_its_characters(tokenizer):
  """`char_spans`: (text, start, end) of each token in the text of the pair it comes from;
  -1 on [CLS], [SEP] and padding. Off by default."""
  texts = (["Héllo, wonderfully odd world"], ["a tiny pair-text"])
  dataset = data.TextDataset(ids=["0"], texts=texts, labels=None, task="t", source="s")
  assert data.tokenize(dataset, tokenizer, 24).char_spans is None
  out = data.tokenize(dataset, tokenizer, 24, char_spans=True)
  n = int(out.lengths[0])
  tokens = tokenizer.convert_ids_to_tokens(out.input_ids[0, :n].tolist())
  spans = out.char_spans[0]
  assert (spans[n:] == -1).all() and spans.shape == (24, 3)
  shown = []
  for token, (text, a, b) in zip(tokens, spans[:n].tolist()):
    if token in ("[CLS]", "[SEP]"):
      assert (text, a, b) == (-1, -1, -1)
      continue
    shown.append((text, texts[text][0][a:b]))
  pieces = [len(tokenizer.tokenize(t[0])) for t in texts]
  assert [t for t, _ in shown] == [0] * pieces[0] + [1] * pieces[1]
  assert "".join(piece for _, piece in shown) == "Héllo,wonderfullyoddworldatinypair-text"


def test_train_batches_shapes_and_order(tokenizer):
  tok = data.tokenize(_toy(10), tokenizer, 16)
  batches = list(data.train_batches(tok, 4, seed=0, epoch=0))
  assert len(batches) == 2 == data.num_train_steps(tok, 4)
  for b in batches:
    assert b["input_ids"].shape == (4, 16) and b["attention_mask"].dtype == np.bool_
    assert b["index"].dtype == np.int32
    np.testing.assert_array_equal(b["labels"], tok.labels[b["index"]])
  seen = np.concatenate([b["index"] for b in batches])
  assert len(set(seen.tolist())) == 8
  again = np.concatenate([b["index"] for b in data.train_batches(tok, 4, seed=0, epoch=0)])
  other = np.concatenate([b["index"] for b in data.train_batches(tok, 4, seed=0, epoch=1)])
  np.testing.assert_array_equal(seen, again)
  assert not np.array_equal(seen, other)
  shards = [np.concatenate([b["index"] for b in data.train_batches(
      tok, 4, seed=0, epoch=0, num_shards=2, shard_index=i)]) for i in range(2)]
  assert sorted(np.concatenate(shards).tolist()) == sorted(seen.tolist())
  with pytest.raises(DataError, match="fewer than one batch of 32"):
    next(data.train_batches(tok, 32, seed=0, epoch=0))


def test_bucket_lengths():
  assert data.bucket_lengths(64) == (8, 16, 24, 32, 40, 48, 56, 64)
  assert data.bucket_lengths(72) == (8, 16, 24, 32, 40, 48, 56, 64, 72)
  assert data.bucket_lengths(512)[-4:] == (64, 128, 256, 512)
  assert data.bucket_lengths(100, buckets=(32, 64, 128)) == (32, 64, 100)


def test_eval_batches_cover_once(tokenizer):
  ds = data.TextDataset(ids=[f"e{i}" for i in range(11)],
                        texts=([" ".join(["w"] * (3 * i)) or "w" for i in range(11)],),
                        labels=np.zeros(11), task="toy", source="toy")
  tok = data.tokenize(ds, tokenizer, 40)
  batches = list(data.eval_batches(tok, 4))
  assert [b["input_ids"].shape for b in batches] == [(4, 16), (4, 24), (4, 32)]
  index = np.concatenate([b["index"][b["real"]] for b in batches])
  assert sorted(index.tolist()) == list(range(11))
  assert batches[-1]["real"].tolist() == [True, True, True, False]
  assert batches[-1]["index"][-1] == -1
  for b in batches:
    lengths = b["attention_mask"].sum(1)
    np.testing.assert_array_equal(lengths[b["real"]], tok.lengths[b["index"][b["real"]]])
    assert b["input_ids"].shape[1] in data.bucket_lengths(40)


class _FakeTable:
  """The part of `datasets.Dataset` the hub loader uses."""

  def __init__(self, columns):
    self._columns = columns
    self.column_names = list(columns)

  def __len__(self):
    return len(next(iter(self._columns.values())))

  def select_columns(self, names):
    return _FakeTable({c: self._columns[c] for c in names})

  def to_dict(self):
    return {c: list(v) for c, v in self._columns.items()}


def _fake_datasets(monkeypatch, load):
  """`datasets.load_dataset` replaced by `load`, and the hub taken as reachable."""
  from adapler_jax.data import hub  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))
  monkeypatch.setattr(hub, "hub_unreachable", lambda: None)


def test_hub_path(monkeypatch):
  calls = []

  def load(path, name, split):
    calls.append((path, name, split))
    return _FakeTable({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, 0],
                       "idx": [5, 6]})
  _fake_datasets(monkeypatch, load)
  ds = data.load_split("mrpc", "dev")
  assert calls == [("glue", "mrpc", "validation")]
  assert ds.ids == ["5", "6"] and ds.texts == (["a", "b"], ["c", "d"])
  assert ds.labels.tolist() == [1, 0]


def test_hub_hatexplain_majority(monkeypatch):
  table = _FakeTable({"id": ["p1", "p2"], "post_tokens": [["x", "y"], ["z"]],
                      "annotators": [{"label": [2, 2, 1]}, {"label": [0, 1, 2]}]})
  _fake_datasets(monkeypatch, lambda path, name, split: table)
  ds = data.load_split("hatexplain", "train")
  assert ds.ids == ["p1"] and ds.texts == (["x y"],) and ds.labels.tolist() == [2]
