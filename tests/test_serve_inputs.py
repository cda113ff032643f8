"""Unlabelled datasets through tokenization and batching, and the prediction input readers."""

import gzip
import re

import numpy as np
import pytest

from adapler_jax import data as data_lib
from adapler_jax.serve import inputs


def test_unlabelled_data_and_inputs():
  ds = data_lib.TextDataset(ids=["a", "b"], texts=(["x y", "z"],), labels=None, task="t",
                            source="s")
  assert not ds.is_labelled and ds.take([1]).labels is None
  tok = data_lib.tokenize(ds, _Chars(), 6)
  batch = next(data_lib.eval_batches(tok, 2))
  assert "labels" not in batch and tok.labels is None
  with pytest.raises(data_lib.DataError, match="has no labels"):
    next(data_lib.train_batches(tok, 2, 0, 0))

  fields = [(("sentence1",), ("sentence2",)), inputs.GENERIC_FIELDS]
  assert inputs.texts_of({"sentence1": "a", "sentence2": "b"}, fields, 2, "x") == ("a", "b")
  assert inputs.texts_of({"text": "a", "text_pair": "b"}, fields, 2, "x") == ("a", "b")
  assert inputs.texts_of("a\tb", fields, 2, "x") == ("a", "b")
  with pytest.raises(data_lib.DataError, match="line 3: the model takes a sentence pair"):
    inputs.texts_of("a", fields, 2, "line 3")
  assert inputs.texts_of({"text": ["a", "b"]}, [inputs.GENERIC_FIELDS], 1, "x") == ("a b",)
  for record in ({"text": "a", "text_pair": "b"}, {"sentence": "a", "text_pair": "b"}):
    with pytest.raises(data_lib.DataError, match="^line 2: the model takes one text, and the "
                       "record also has 'text_pair'; drop it, or use a model of a "
                       "sentence-pair task$"):  # never silently dropped.
      inputs.texts_of(record, [(("sentence",),), inputs.GENERIC_FIELDS], 1, "line 2")
  for value, kind in ((None, "NoneType"), (5, "int"), ({"a": 1}, "dict")):
    with pytest.raises(data_lib.DataError, match=f"^line 4: field 'text' holds {kind}, not "
                                                 "text; give it a string$"):
      inputs.texts_of({"text": value}, [inputs.GENERIC_FIELDS], 1, "line 4")
  # A record without the model's fields: the generic names offered are the model's count.
  for num_texts, offered in ((1, "text"), (2, "text / text_pair")):
    with pytest.raises(data_lib.DataError, match=f"^line 6: the record lacks the model's input "
                       r"field\(s\) sentence.* \(it has review\); add them, or use "
                       f"{offered}$"):
      inputs.texts_of({"review": "a"}, [(("sentence",), ("sentence2",)),
                                        inputs.GENERIC_FIELDS], num_texts, "line 6")
  assert inputs.texts_of("a\t", fields, 2, "x") == ("a", "")  # one side of a pair may be.
  # A TSV line read as text (a header, a label or index column) is refused, not joined in.
  with pytest.raises(data_lib.DataError) as err:
    inputs.texts_of("it is good .\t1", [inputs.GENERIC_FIELDS], 1, "dev.tsv input 2")
  assert str(err.value) == ("dev.tsv input 2: the model takes one text, this input has 2 "
                            "tab-separated fields; give one text per input (a tab inside a "
                            'text: a JSON-lines record {"text": ...}; a GLUE task\'s TSV test '
                            "file: --format glue)")
  with pytest.raises(data_lib.DataError, match="^x: the model takes a sentence pair, this "
                                               "input has 3 tab-separated fields; give "):
    inputs.texts_of("a\tb\t1", fields, 2, "x")
  assert inputs.texts_of(("a\tb",), [inputs.GENERIC_FIELDS], 1, "x") == ("a\tb",)
  with pytest.raises(data_lib.DataError, match="^" + re.escape(  # was transformers' TypeError.
      "x: the text holds '\\udcff', a lone surrogate, not Unicode text; decode its bytes as "
      "UTF-8 (errors='replace' keeps the rest)") + "$"):
    inputs.texts_of("rain \udcff snow", fields, 1, "x")
  for empty, num_texts in (({"text": ""}, 1), (" ", 1), (" \t ", 2), (("", ""), 2),
                           ("\u200b\x07", 1),  # a zero-width space and a bell.
                           ("  \t ", 1)):  # blank, not "2 tab-separated fields".
    with pytest.raises(data_lib.DataError, match=r"^line 5: empty text; give every input some "
                                                 r"text \(blank lines of a text file"):
      inputs.texts_of(empty, fields, num_texts, "line 5")
  ids, items = inputs.read_lines(["first\n", "\n", "second\n"], "f")
  assert inputs.read_lines(["a\n", "\u200b\n", "b\n"], "f") == (["1", "3"], ["a", "b"])
  for bad in ("null", "true", "1.5", '{"x": 1}'):  # were ids "None", "True", ...
    with pytest.raises(data_lib.DataError, match=re.escape(
        f"f line 1: id {bad} is not a string or an integer; give each record its own id, or "
        "none")):
      inputs.read_lines([f'{{"text": "a", "id": {bad}}}\n'], "f")
  assert inputs.read_lines(['{"text": "a", "idx": 7}\n'], "f")[0] == ["7"]
  # CSV inputs: a record over several lines has the id of the line it starts on, as errors
  # name it; a column named twice is refused, not one of the two texts dropped.
  assert inputs.read_csv_records(['text\n', '"a\n', 'b"\n', 'c\n'], "f") == (
      ["2", "4"], [{"text": "a\nb"}, {"text": "c"}])
  with pytest.raises(data_lib.DataError, match=re.escape(
      "f line 1: the header names column 'text' 2 times; give each column its own name")):
    inputs.read_csv_records(["text,text\n", "a,b\n"], "f")
  with pytest.raises(data_lib.DataError, match=re.escape(
      "g line 1: the header names column 'sentence' 2 times")):
    inputs.read_glue_tsv(["index\tsentence\tsentence\n", "0\ta\tb\n"], [["sentence"]], "g")
  with pytest.raises(data_lib.DataError) as err:  # a pretty-printed SQuAD file on stdin.
    inputs.read_lines(["{\n", '  "data": []\n', "}\n"], "stdin")
  assert str(err.value) == ("stdin line 1: not a JSON record (Expecting property name enclosed "
                            "in double quotes); give one JSON object per line, or plain text "
                            "lines (an official SQuAD JSON file: --input FILE --format squad)")
  assert ids == ["1", "3"] and items == ["first", "second"]
  # A byte-order mark before the first record still makes it a record, not a text.
  assert inputs.read_lines(['\ufeff{"text": "good", "id": "a"}\n'], "f") == (
      ["a"], [{"text": "good", "id": "a"}])
  with pytest.raises(data_lib.DataError, match=r"^f line 1: not a JSON record \(.*\); give one "
                     r"JSON object per line, or plain text lines without --format jsonl$"):
    inputs.read_lines(["a film\n"], "f", kind="jsonl")
  tsv = ["index\tsentence\n", "0\tgood .\n", "1\tbad .\n"]
  ids, texts = inputs.read_glue_tsv(tsv, (("sentence",),), "SST-2/test.tsv")
  assert ids == ["0", "1"] and texts == [("good .",), ("bad .",)]
  assert inputs.glue_lines(ids, [1, 0], ("0", "1")) == ["index\tprediction", "0\t1", "1\t0"]
  with pytest.raises(data_lib.DataError, match="the header lacks sentence"):
    inputs.read_glue_tsv(["index\tquestion\n"], (("sentence",),), "f")
  # Rows follow the task data's TSV rule: as many fields as the header, blank lines skipped.
  with pytest.raises(data_lib.DataError, match=re.escape(
      "SST-2/test.tsv line 3: expected 2 tab-separated fields as in the header, found 3; "
      "remove stray tabs or line breaks in that row")):
    inputs.read_glue_tsv(["\ufeffindex\tsentence\n", "0\tgood .\n", "1\tbad\t.\n"],
                         (("sentence",),), "SST-2/test.tsv")
  assert inputs.read_glue_tsv([*tsv, "  \n"], (("sentence",),), "f")[0] == ["0", "1"]


class _Chars:
  """A stand-in fast tokenizer: one token per character, [CLS]=1 ... [SEP]=2, pad 0."""

  pad_token_id = 0

  def __call__(self, texts, truncation, max_length, padding, return_tensors, **kw):
    ids = np.zeros((len(texts), max_length), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
      row = [1] + [3 + ord(c) % 50 for c in t][:max_length - 2] + [2]
      ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def test_hf_classifier_needs_its_head(tmp_path):
  """`train.init_from_hf` takes a sequence-classification checkpoint of the task's shape."""
  import jax
  from safetensors.numpy import save_file
  from adapler_jax import weights
  from adapler_jax.train import classifier
  from tests.test_pipeline import TINY, write_backbone
  hf = write_backbone(tmp_path)
  with pytest.raises(weights.WeightsError, match="has no sequence-classification head"):
    weights.load_classifier(str(hf), TINY, 2)
  params = classifier.init_classifier(jax.random.key(0), TINY, 3)
  save_file(weights.to_hf_state_dict(params["bert"], params["head"]),
            str(hf / "model.safetensors"))
  with pytest.raises(weights.WeightsError, match=r"the classifier has shape \(32, 3\), the "
                     r"task needs \(32, 2\) \(2 labels\)"):
    weights.load_classifier(str(hf), TINY, 2)
  loaded = weights.load_classifier(str(hf), TINY, 3)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # A checkpoint that names its classes in another order is reordered to the task's.
  import json
  config = json.loads((hf / "config.json").read_text())
  (hf / "config.json").write_text(json.dumps({**config, "id2label": {
      "0": "CONTRADICTION", "1": "NEUTRAL", "2": "ENTAILMENT"}}))
  task = ("entailment", "neutral", "contradiction")
  kernel = np.asarray(params["head"]["classifier"]["kernel"])
  loaded = weights.load_classifier(str(hf), TINY, 3, task)
  np.testing.assert_array_equal(loaded["head"]["classifier"]["kernel"], kernel[:, [2, 1, 0]])
  np.testing.assert_array_equal(loaded["head"]["classifier"]["bias"],
                                np.asarray(params["head"]["classifier"]["bias"])[[2, 1, 0]])
  with pytest.raises(weights.WeightsError, match=r"its classes are CONTRADICTION, NEUTRAL, "
                     r"ENTAILMENT, the task's negative, neutral, positive; pass a checkpoint"):
    weights.load_classifier(str(hf), TINY, 3, ("negative", "neutral", "positive"))
  (hf / "config.json").write_text(json.dumps({**config, "id2label": {
      str(i): f"LABEL_{i}" for i in range(3)}}))  # unnamed classes: the order as it is.
  np.testing.assert_array_equal(
      weights.load_classifier(str(hf), TINY, 3, task)["head"]["classifier"]["kernel"], kernel)


def test_unlabelled_file(tmp_path):
  path = tmp_path / "test.tsv"
  path.write_text("index\tsentence\n0\tgood .\n1\tbad .\n")
  ds = data_lib.load_file(path, "sentence", label_field=None, id_field="index")
  assert ds.labels is None and ds.ids == ["0", "1"] and ds.texts == (["good .", "bad ."],)


def test_csv_records():
  """A CSV input's header names the fields (never read as a text); one line per problem."""
  ids, records = inputs.read_csv_records(
      ['text,label\n', '"good, really",pos\n', ',\n', 'bad,neg\n'], "in.csv")
  assert ids == ["2", "4"] and records == [{"text": "good, really", "label": "pos"},
                                           {"text": "bad", "label": "neg"}]
  assert inputs.read_csv_records(["index,sentence\n", "7,a\n"], "in.csv")[0] == ["7"]
  for lines, message in (
      ([], "in.csv line 1: no header; a CSV input names its columns on the first line"),
      (["text\n", "a,b\n"], "in.csv line 2: expected 1 comma-separated fields as in the "
                            "header, found 2; quote fields that contain commas")):
    with pytest.raises(data_lib.DataError, match="^" + re.escape(message)):
      inputs.read_csv_records(lines, "in.csv")


def test_gzip_inputs(tmp_path):
  """A .gz input is read decompressed; a compressed file without the suffix, or a .gz name
  on plain text, is one line saying which."""
  (tmp_path / "in.txt.gz").write_bytes(gzip.compress("café\nau lait\n".encode()))
  with inputs.open_input(str(tmp_path / "in.txt.gz")) as f, inputs.decoding("in.txt.gz"):
    assert inputs.read_lines(f, "in.txt.gz") == (["1", "2"], ["café", "au lait"])
  (tmp_path / "in.txt").write_bytes(gzip.compress(b"a\n"))
  (tmp_path / "plain.gz").write_text("a\n")
  for name, message in (("in.txt", "in.txt is gzip-compressed; rename it to end in .gz, or "
                                   "decompress it (gunzip)"),
                        ("plain.gz", "plain.gz is not a gzip file (")):
    with pytest.raises(data_lib.DataError, match="^" + re.escape(message)):
      with inputs.open_input(str(tmp_path / name)) as f, inputs.decoding(name):
        f.read()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_carriage_return_inside_a_line_is_text(tmp_path, suffix):
  """Lines end at "\\n" (and "\\r\\n"): a lone "\\r" split one line into two inputs, and every
  later line's id was off by one. In task data it stays text in a TSV field; in an unquoted
  CSV field it is one line (a CSV row split there silently before)."""
  text = b"mostly masses\rspheres bread\r\nrumble chicks\n"
  path = tmp_path / f"in.txt{suffix}"
  path.write_bytes(gzip.compress(text) if suffix else text)
  with inputs.open_input(str(path)) as f:
    assert inputs.read_lines(f, "in.txt") == (["1", "2"], ["mostly masses\rspheres bread",
                                                           "rumble chicks"])
  (tmp_path / "d.tsv").write_bytes(b"sentence\tlabel\nx\ry\t1\r\nok\t0\n")
  ds = data_lib.load_file(tmp_path / "d.tsv", "sentence", label_field="label")
  assert ds.texts == (["x\ry", "ok"],) and list(ds.labels) == [1, 0]
  (tmp_path / "d.csv").write_bytes(b'text,label\n"x\ry",1\nok,0\n')
  ds = data_lib.load_file(tmp_path / "d.csv", "text", label_field="label")
  assert ds.texts == (["x\ry", "ok"],)
  (tmp_path / "bad.csv").write_bytes(b"text,label\nx\ry,1\nok,0\n")
  with pytest.raises(data_lib.DataError, match=re.escape(
      "bad.csv line 2: a carriage return (\\r) inside an unquoted field; quote the field, or "
      "remove the carriage return") + "$"):
    data_lib.load_file(tmp_path / "bad.csv", "text", label_field="label")
