"""Bad input gives a one-line DataError naming the file, the 1-based line and the fix."""

import re
import sys
import types

import pytest

from adapler_jax import data
from adapler_jax.errors import DataError


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def _raises(match, fn, *args, **kwargs):
  with pytest.raises(DataError, match=match) as err:
    fn(*args, **kwargs)
  assert "\n" not in str(err.value)
  return str(err.value)


def test_unknown_label(tmp_path):
  _write(tmp_path / "sst2/dev.tsv", "sentence\tlabel\ngood \t1\nbad \tx\n")
  _raises(re.escape("sst2/dev.tsv line 3: label 'x' is not one of ['0', '1']; "
                    "fix the label or remove the row"),
          data.load_split, "sst2", "dev", tmp_path / "sst2")


def test_unknown_label_in_generic_file(tmp_path):
  path = _write(tmp_path / "mine/train.csv", "text,label\nok,pos\nfine,maybe\n")
  _raises(re.escape("mine/train.csv line 3: label 'maybe' is not one of ['neg', 'pos']; "
                    "fix the label or pass --config.data.label_names (load_file's "
                    "label_names=)"),
          data.load_file, path, label_names=["neg", "pos"])
  _raises(re.escape("mine/train.csv line 2: label 'pos' is not a class index (0, 1, ...); "
                    "fix the label or pass --config.data.label_names (load_file's "
                    "label_names=)"), data.load_file, path)


def test_missing_file_lists_folder(tmp_path):
  _write(tmp_path / "sst2/train.tsv", "sentence\tlabel\n")
  _write(tmp_path / "sst2/notes.txt", "")
  expected = tmp_path / "sst2" / "dev.tsv"
  _raises(re.escape(f"sst2 dev: expected file {expected} not found; the folder has: "
                    "notes.txt, train.tsv; pass the folder that holds the sst2 files with "
                    "--config.data.data_dir"), data.load_split, "sst2", "dev", tmp_path / "sst2")


def test_missing_folder(tmp_path):
  _raises(re.escape(f"ag_news test: data folder {tmp_path / 'nope'} does not exist"),
          data.load_split, "ag_news", "test", tmp_path / "nope")


def test_missing_column_names_columns_found(tmp_path):
  _write(tmp_path / "qnli/dev.tsv", "index\tquestion\ttext\tlabel\n0\tq?\ts.\tentailment\n")
  _raises(re.escape("qnli/dev.tsv line 1: no column 'sentence'; found columns "
                    "['index', 'question', 'text', 'label']"),
          data.load_split, "qnli", "dev", tmp_path / "qnli")
  path = _write(tmp_path / "x/rows.jsonl", '{"text": "a", "label": 0}\n{"txt": "b", "label": 1}\n')
  _raises(re.escape("x/rows.jsonl line 2: no column 'text'; found columns ['txt', 'label']; "
                    "pass --config.data.text_fields"), data.load_file, path)


def test_empty_text(tmp_path):
  _write(tmp_path / "mrpc/train.tsv",
         "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n0\t3\t4\t \tc\n")
  _raises(re.escape("mrpc/train.tsv line 3: empty text in '#1 String'; "
                    "fill in the text or remove the row"),
          data.load_split, "mrpc", "train", tmp_path / "mrpc")


def test_empty_split(tmp_path):
  _write(tmp_path / "sst2/dev.tsv", "sentence\tlabel\n")
  _raises(r"sst2/dev.tsv: split 'dev' has no examples; add data rows",
          data.load_split, "sst2", "dev", tmp_path / "sst2")
  _write(tmp_path / "ag_news/test.csv", "")
  _raises(r"split 'test' has no examples", data.load_split, "ag_news", "test",
          tmp_path / "ag_news")


def test_field_count_and_bad_json(tmp_path):
  _write(tmp_path / "sst2/train.tsv", "sentence\tlabel\na\tb\t1\n")
  _raises(re.escape("sst2/train.tsv line 2: expected 2 tab-separated fields as in the header, "
                    "found 3; remove stray tabs"), data.load_split, "sst2", "train",
          tmp_path / "sst2")
  path = _write(tmp_path / "imdb/test.jsonl", '{"id": "a", "text": "t", "label": 0}\n{oops\n')
  _raises(re.escape(f"{path.parent.name}/{path.name} line 2: invalid JSON"), data.load_split,
          "imdb", "test", tmp_path / "imdb")


def test_unknown_file_type_and_duplicate_ids(tmp_path):
  _raises(r"unknown file type '.txt'", data.load_file, _write(tmp_path / "a.txt", "x"))
  path = _write(tmp_path / "d.csv", "id,text,label\n1,a,0\n1,b,1\n")
  _raises(r"example id '1' appears more than once; give every row its own id", data.load_file,
          path, id_field="id")


def test_a_digit_that_is_not_a_number_is_a_label_error(tmp_path):
  path = _write(tmp_path / "mine/train.csv", "text,label\ngood film,1\nbad film,\u00b2\n")
  _raises(re.escape("mine/train.csv line 3: label '\u00b2' is not a class index (0, 1, ...)"),
          data.load_file, path)


def test_a_header_naming_a_column_twice_is_one_line(tmp_path):
  """A record keeps only one of two same-named columns: refused, not one text dropped."""
  for name, text in (("d.csv", "text,label,text\nthe plot,pos,a warm film\n"),
                     ("d.tsv", "text\tlabel\ttext\nthe plot\tpos\ta warm film\n")):
    _raises(re.escape(f"{tmp_path.name}/{name} line 1: the header names column 'text' 2 "
                      "times; give each column its own name"),
            data.load_file, _write(tmp_path / name, text), label_names=["neg", "pos"])


def test_a_quote_left_open_is_one_line_at_its_record(tmp_path):
  """Not one row swallowing the rest of the file, nor a quote silently dropped."""
  path = _write(tmp_path / "q/train.csv", 'label,text\n1,"Loved it, would watch again\n'
                "0,boring\n1,a warm funny film\n")
  _raises(re.escape("q/train.csv line 2: bad CSV in the record starting here: unexpected end "
                    'of data; close the quote, or double a quote inside a quoted field ("")'),
          data.load_file, path)
  path = _write(tmp_path / "q/head.csv", '"text,label\na,1\n')  # in the header itself.
  _raises(re.escape("q/head.csv line 1: bad CSV in the header: unexpected end of data; close "
                    "the quote"), data.load_file, path)
  path = _write(tmp_path / "q/dev.csv", 'label,text\n0,fine\n1,"Great" movie\n')
  _raises(re.escape("q/dev.csv line 3: bad CSV in the record starting here: ',' expected "
                    "after '\"'"), data.load_file, path)


def test_json_labels_are_compared_as_classes_not_as_text(tmp_path):
  path = _write(tmp_path / "j/train.jsonl", '{"text": "a", "label": 1.0}\n'
                '{"text": "b", "label": 0}\n{"text": "c", "label": "1"}\n')
  assert data.load_file(path).labels.tolist() == [1, 0, 1]
  named = _write(tmp_path / "j/named.jsonl", '{"text": "a", "label": 2.0}\n'
                 '{"text": "b", "label": 1.0}\n{"text": "c", "label": 0.5}\n')
  assert data.load_file(named, label_names=["0.5", "1.0", "2.0"]).labels.tolist() == [2, 1, 0]
  for bad, shown in (("[1]", "[1]"), ("0.5", "0.5"), ('{"c": 1}', '{"c": 1}')):
    path = _write(tmp_path / "j/bad.jsonl", '{"text": "a", "label": 0}\n'
                  f'{{"text": "b", "label": {bad}}}\n')
    _raises(re.escape(f"j/bad.jsonl line 2: label {shown} is not a class name or index"),
            data.load_file, path)


def test_a_zero_padded_class_index_is_its_class(tmp_path):
  path = _write(tmp_path / "z/train.csv", "text,label\na,01\nb,1\nc,0\n")
  assert data.load_file(path, label_names=["0", "1"]).labels.tolist() == [1, 1, 0]
  assert data.load_file(path).labels.tolist() == [1, 1, 0]


def test_a_text_of_only_invisible_characters_is_empty(tmp_path):
  """Zero-width and control characters tokenize to nothing: [CLS] [SEP] is no example."""
  path = _write(tmp_path / "e/train.jsonl", '{"text": "a film", "label": 0}\n'
                '{"text": "\\u00a0\\u200b", "label": 1}\n')
  _raises(re.escape("e/train.jsonl line 2: empty text in 'text'; fill in the text or remove "
                    "the row"), data.load_file, path)


def test_damaged_gzip_blocks_are_one_line(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  rows = "".join(f'{{"id": "{i}", "text": "review {i}", "label": {i % 2}}}\n'
                 for i in range(100))
  path = tmp_path / "imdb" / "test.jsonl.gz"
  path.parent.mkdir()
  raw = bytearray(gzip.compress(rows.encode(), compresslevel=0))  # stored blocks.
  raw[11] ^= 0xFF  # the first stored block's length (after the 10-byte header and its
  # type byte) no longer matches its complement: zlib.error, not OSError.
  path.write_bytes(bytes(raw))
  _raises(r"imdb/test.jsonl.gz: cannot be read \(.*\); use the unmodified file, or gzip it "
          "again", data.load_split, "imdb", "test", tmp_path / "imdb")


def test_a_data_file_given_as_the_folder_names_its_folder(tmp_path):
  path = _write(tmp_path / "sst2/dev.tsv", "sentence\tlabel\ngood\t1\n")
  _raises(re.escape(f"sst2 dev: data folder {path} is a file, not the folder that holds it "
                    f"({path.parent}); pass the folder"), data.load_split, "sst2", "dev", path)


def test_csv_fields_past_128_kib_and_blank_rows_read(tmp_path):
  long = "word " * 30_000  # 150,000 characters: over the csv module's default field limit.
  path = _write(tmp_path / "long.csv", f'text,label\n"{long}",1\n   \nshort,0\n')
  ds = data.load_file(path)
  assert ds.texts[0] == [long.strip(), "short"] and ds.labels.tolist() == [1, 0]
  path = _write(tmp_path / "head.csv", f"{'x' * 150_000},label\nhello,1\n")
  _raises(re.escape("head.csv line 1: no column 'text'"), data.load_file, path)


def test_hatexplain_files_of_the_wrong_shape_name_the_file(tmp_path):
  root = tmp_path / "hx"
  _write(root / "dataset.json", "{}")
  _write(root / "post_id_divisions.json", '{"train": [1,]}')
  _raises(re.escape("hx/post_id_divisions.json line 1: invalid JSON (Expecting value); use the "
                    "original HateXplain files"), data.load_split, "hatexplain", "train", root)
  _write(root / "post_id_divisions.json", '["p1"]')
  _raises(re.escape("hx/post_id_divisions.json: holds a JSON list, not an object"),
          data.load_split, "hatexplain", "train", root)
  for ids in ("5", '[["p1"]]', '"p1"'):
    _write(root / "post_id_divisions.json", f'{{"train": {ids}}}')
    _raises(re.escape("hx/post_id_divisions.json: 'train' is not a list of post ids; use the "
                      "original HateXplain files"), data.load_split, "hatexplain", "train", root)
  _write(root / "post_id_divisions.json", '{"train": ["p1"]}')
  for post in ('["x"]', '{"post_tokens": ["a"], "annotators": [{"label": "normal"}, "x"]}',
               '{"post_tokens": ["a"], "annotators": [{"label": ["normal"]}]}'):
    _write(root / "dataset.json", f'{{"p1": {post}}}')
    _raises(re.escape("hx/dataset.json post p1: expected an object with a list of annotator "
                      "objects, each with a string label; use the original HateXplain files"),
            data.load_split, "hatexplain", "train", root)


def test_offline_hub(monkeypatch):
  from tests.test_data_tasks import _fake_datasets  # pylint: disable=g-import-not-at-top
  from adapler_jax.data import hub  # pylint: disable=g-import-not-at-top

  def load(path, name, split):
    raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)\nmore")
  _fake_datasets(monkeypatch, load)
  _raises(re.escape("hub glue/sst2 split 'validation': could not load (ConnectionError: "
                    "Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)); pass a local "
                    "folder with the sst2 files with --config.data.data_dir"),
          data.load_split, "sst2", "dev")
  # With no route to the hub, the datasets cache alone is read (offline mode, no retries):
  # a cached copy loads; without one, one line at once.
  monkeypatch.undo()
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  from tests.test_data_tasks import _FakeTable  # pylint: disable=g-import-not-at-top
  cache = {}

  def cached(path, name, split):
    if not constants.HF_HUB_OFFLINE:
      raise AssertionError("asked the network")
    if (path, name) not in cache:
      raise ConnectionError("Couldn't reach the Hugging Face Hub (OfflineModeIsEnabled)")
    return cache[path, name]

  probes = []

  def refuse(address, timeout):
    probes.append(address)
    raise OSError(101, "Network is unreachable")
  monkeypatch.setattr(hub, "_probes", {})
  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=cached))
  monkeypatch.setattr(hub.socket, "create_connection", refuse)
  monkeypatch.setattr(hub.urllib.request, "getproxies", dict)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  _raises(r"hub glue/sst2 split 'validation': the Hugging Face hub is unreachable \(\S+: "
          + re.escape("Network is unreachable), and the datasets cache could not serve it "
                      "(ConnectionError: Couldn't reach the Hugging Face Hub "
                      "(OfflineModeIsEnabled)); pass a local folder with the sst2 files with "
                      "--config.data.data_dir"),
          data.load_split, "sst2", "dev")
  assert constants.HF_HUB_OFFLINE is False  # offline for that call only.
  cache["glue", "sst2"] = _FakeTable({"sentence": ["a b"], "label": [1], "idx": [3]})
  assert data.load_split("sst2", "dev").ids == ["3"]
  assert len(probes) == 1  # the second split reused the first one's probe.


def test_hub_split_without_labels(monkeypatch):
  from tests.test_data_tasks import _FakeTable, _fake_datasets  # pylint: disable=g-import-not-at-top
  table = _FakeTable({"sentence1": ["a"], "sentence2": ["b"], "label": [-1], "idx": [0]})
  _fake_datasets(monkeypatch, lambda *a, **k: table)
  _raises(re.escape("hub glue/mrpc split 'test': has no gold labels (label -1); pass a local "
                    "folder with labelled mrpc files"), data.load_split, "mrpc", "test")


def test_unknown_split_and_task():
  _raises(r"task 'imdb' has no split 'dev'; use one of train, test", data.load_split, "imdb",
          "dev", "/nonexistent")
  _raises(r"unknown task 'glue'", data.load_split, "glue", "dev")


@pytest.mark.parametrize("name", ["train.csv.gz", "train.jsonl.gz"])
def test_truncated_or_fake_gzip_is_one_line(tmp_path, name):
  import gzip  # pylint: disable=g-import-not-at-top
  rows = "text,label\n" + "a fine film,1\n" * 200 if "csv" in name else (
      '{"text": "a fine film", "label": 1}\n' * 200)
  whole = gzip.compress(rows.encode())
  path = tmp_path / "mine" / name
  path.parent.mkdir()
  for content, problem in ((whole[:len(whole) // 2], "Compressed file ended"),
                           (b"not gzip at all", "Not a gzipped file")):
    path.write_bytes(content)
    _raises(re.escape(f"mine/{name}: cannot be read (") + f".*{problem}.*" +
            re.escape("); use the unmodified file, or gzip it again"), data.load_file, path)


def test_a_folder_where_the_data_file_should_be(tmp_path):
  (tmp_path / "mine" / "train.csv").mkdir(parents=True)
  _raises(re.escape(f"mine train: {tmp_path / 'mine' / 'train.csv'} is a folder, not the data "
                    "file"), data.load_file, tmp_path / "mine" / "train.csv", task="mine")
