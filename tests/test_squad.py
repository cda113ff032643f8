"""SQuAD v1.1: reading and its errors, the re-split by article, run_qa windows and labels (on
real dev questions), span post-processing and the official exact match / F1."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapler_jax import data
from adapler_jax.data import squad
from adapler_jax.errors import DataError, UserError
from adapler_jax.eval import squad as squad_eval

CONTEXT = "The Broncos beat the Panthers 24-10 in Santa Clara, California, in February 2016."


def _qa(qid, question="Who won?", answers=(("Broncos", 4),)):
  return {"id": qid, "question": question,
          "answers": [{"text": t, "answer_start": s} for t, s in answers]}


def _file(tmp_path, paragraphs, name="dev-v1.1.json", title="Super_Bowl_50"):
  root = {"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}
  path = tmp_path / name
  text = json.dumps(root)
  if name.endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")
  return path


def _example(qid, answers, title="t", context="c"):
  return squad.SquadExample(qid, title, context, "q", tuple(answers), (0,) * len(answers))


# Reading ---------------------------------------------------------------------------------------


def test_reads_official_layout_gz_and_task(tmp_path):
  path = _file(tmp_path, [{"context": CONTEXT, "qas": [
      _qa("q1"), _qa("q2", " Where?", (("Santa Clara, California", 39), ("Santa Clara", 39)))]}],
               name="dev-v1.1.json.gz")
  ds = data.load_split("squad", "dev", tmp_path)
  assert isinstance(ds, squad.SquadDataset) and ds.ids == ["q1", "q2"]
  e = ds.examples[1]
  assert (e.title, e.context, e.question) == ("Super_Bowl_50", CONTEXT, " Where?")
  assert e.answer_texts == ("Santa Clara, California", "Santa Clara") and e.answer_starts == (39, 39)
  spec = data.get_task("squad")
  assert spec.is_span and spec.hub == ("rajpurkar/squad", None) and spec.max_length == 384
  assert not data.get_task("sst2").is_span


@pytest.mark.parametrize("mutate, problem", [
    (lambda p: p["qas"][1].pop("question"), "question q2: no field 'question'"),
    (lambda p: p["qas"][1]["answers"][0].pop("answer_start"),
     "question q2 answer 1: no field 'answer_start'"),
    (lambda p: p["qas"][1]["answers"][0].update(answer_start=5),
     "question q2 answer 1: answer_start 5 points at 'roncos ', not the answer 'Broncos'"),
    (lambda p: p.update(context="  "), "question q1: empty context"),
    (lambda p: p["qas"][1].update(answers=[]), "question q2: no answers"),
    (lambda p: p.pop("context"), "question q1: no field 'context'"),
    (lambda p: p["qas"][1].pop("id"), "article 1 paragraph 1 question 2: no field 'id'"),
])
def test_bad_input_is_one_line_naming_file_and_question(tmp_path, mutate, problem):
  paragraph = {"context": CONTEXT, "qas": [_qa("q1"), _qa("q2")]}
  mutate(paragraph)
  _file(tmp_path, [paragraph])
  with pytest.raises(DataError) as e:
    squad.load_squad("dev", tmp_path)
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{tmp_path.name}/dev-v1.1.json {problem}")


def test_questions_to_predict_may_lack_answers_and_still_check_them(tmp_path):
  q2 = _qa("q2")
  del q2["answers"]
  path = _file(tmp_path, [{"context": CONTEXT, "qas": [_qa("q1", answers=()), q2, _qa("q3")]}])
  ds = squad.read_squad_json(path, answers_required=False)
  assert [(e.id, e.answer_texts) for e in ds.examples] == [("q1", ()), ("q2", ()),
                                                           ("q3", ("Broncos",))]
  with pytest.raises(DataError, match="question q1: no answers"):
    squad.read_squad_json(path)
  bad = _file(tmp_path, [{"context": CONTEXT, "qas": [_qa("q1", answers=(("Broncos", 5),))]}],
              name="test.json")  # answers given are still checked.
  with pytest.raises(DataError, match="question q1 answer 1: answer_start 5 points at"):
    squad.read_squad_json(bad, answers_required=False)


def test_a_byte_order_mark_is_dropped(tmp_path):
  root = {"data": [{"title": "t", "paragraphs": [{"context": "The cat sat.", "qas": [
      {"id": "q1", "question": "who?", "answers": [{"text": "cat", "answer_start": 4}]}]}]}]}
  path = tmp_path / "dev-v1.1.json"
  path.write_text("\ufeff" + json.dumps(root), encoding="utf-8")
  assert squad.read_squad_json(path).examples[0].answer_texts == ("cat",)


def test_a_folder_named_as_the_data_file_says_so(tmp_path):
  (tmp_path / "dev-v1.1.json").mkdir()
  with pytest.raises(DataError, match=re.escape(
      f"squad dev: {tmp_path / 'dev-v1.1.json'} is a folder, not the data file; pass the folder "
      "that holds the SQuAD v1.1 JSON files")):
    data.load_split("squad", "dev", tmp_path)


def test_missing_file_lists_folder(tmp_path):
  (tmp_path / "train.tsv").write_text("x")
  with pytest.raises(DataError, match=r"squad dev: expected file .*dev-v1.1.json \(or "
                     r"dev-v1.1.json.gz\) not found; the folder has: train.tsv"):
    squad.load_squad("dev", tmp_path)


def test_hub_rows(monkeypatch):
  calls = []

  def load(path, name, split):
    calls.append((path, name, split))
    return [{"id": "a", "title": "T", "context": CONTEXT, "question": "Who?",
             "answers": {"text": ["Broncos"], "answer_start": [4]}}]
  from tests.test_data_tasks import _fake_datasets  # pylint: disable=g-import-not-at-top
  _fake_datasets(monkeypatch, load)
  ds = data.load_split("squad", "dev")
  assert calls == [("rajpurkar/squad", None, "validation")]
  assert ds.examples[0].answer_texts == ("Broncos",) and ds.examples[0].title == "T"
  monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: the extra to install.
  with pytest.raises(UserError, match=re.escape(
      "downloading SQuAD from the Hugging Face hub needs the datasets package (adapler-jax's "
      "'hub' extra); install it with pip install datasets or pass a local folder with "
      "--config.data.data_dir")):
    data.load_split("squad", "dev")


def test_split_by_article_is_seeded_and_disjoint():
  ds = squad.SquadDataset([_example(f"{a}-{q}", ["x"], title=f"art{a}")
                           for a in range(10) for q in range(a + 1)], "mem")
  parts = squad.split_by_article(ds, 6, seed=3, num_search_articles=1)
  assert parts == squad.split_by_article(ds, 6, seed=3, num_search_articles=1)
  titles = [set(p.articles()) for p in parts]
  assert [len(t) for t in titles] == [6, 3, 1]
  assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
  assert sorted(i for p in parts for i in p.ids) == sorted(ds.ids)
  assert parts.train.ids == [i for i in ds.ids if i in set(parts.train.ids)]  # file order kept.
  assert parts.train.articles() != squad.split_by_article(ds, 6, seed=4).train.articles()
  with pytest.raises(DataError, match="cannot split 10 articles into 9 train . 1 search"):
    squad.split_by_article(ds, 9, seed=0, num_search_articles=1)


# Features on real dev questions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def long_windows(shared_data, tokenizer):
  """Real dev questions on long paragraphs, cut into 128-token windows with stride 64."""
  dev = squad.load_squad("dev", shared_data / "squad")
  long = [i for i, e in enumerate(dev.examples) if len(e.context) > 1400]
  picked = dev.take(long[::max(1, len(long) // 60)])
  return squad.span_features(picked, tokenizer, max_length=128, stride=64)


def test_windows_follow_run_qa(long_windows, tokenizer):
  f = long_windows
  windows = squad.windows_of(f)
  assert max(len(w) for w in windows) >= 3 and len(f) == sum(len(w) for w in windows)
  assert f.lengths.max() <= 128 and f.input_ids.shape == (len(f), 128)
  for example, rows in zip(f.examples.examples, windows):
    question = tokenizer(example.question.lstrip())["input_ids"]
    spans = []
    for k, r in enumerate(rows):
      assert f.ids[r] == f"{example.id}#{k}"
      n = f.lengths[r]
      assert f.input_ids[r, :len(question)].tolist() == question  # [CLS] question [SEP] first.
      assert (f.token_type_ids[r, :len(question)] == 0).all()
      ctx = np.flatnonzero(f.context_mask[r])
      assert ctx[0] == len(question) and ctx[-1] == n - 2  # then context tokens, then [SEP].
      assert (f.offsets[r, ~f.context_mask[r]] == -1).all()
      spans.append(ctx)
    for r0, r1, a, b in zip(rows[:-1], rows[1:], spans[:-1], spans[1:]):
      assert (f.offsets[r0, a[-64:]] == f.offsets[r1, b[:64]]).all()  # overlap: stride tokens.
    first, last = f.offsets[rows[0], spans[0][0]], f.offsets[rows[-1], spans[-1][-1]]
    assert first[0] <= len(example.context) - len(example.context.lstrip())
    assert last[1] == len(example.context.rstrip())


def test_labels_map_back_to_the_answer_text(long_windows):
  f = long_windows
  exact = labelled = unlabelled = 0
  overlap = 0  # questions whose answer is labelled in two windows.
  for example, rows in zip(f.examples.examples, squad.windows_of(f)):
    a = example.answer_starts[0]
    b = a + len(example.answer_texts[0])
    hits = 0
    for r in rows:
      s, e = f.labels[r]
      ctx = f.offsets[r, f.context_mask[r]]
      if (s, e) == (0, 0):
        unlabelled += 1
        assert not (ctx[0, 0] <= a and ctx[-1, 1] >= b)  # the window lacks the answer.
        continue
      labelled += 1
      hits += 1
      assert f.context_mask[r, s] and f.context_mask[r, e] and s <= e
      lo, hi = f.offsets[r, s, 0], f.offsets[r, e, 1]
      assert lo <= a < f.offsets[r, s, 1] and f.offsets[r, e, 0] < b <= hi  # tightest tokens.
      span = example.context[lo:hi]
      assert example.answer_texts[0] in span
      exact += span == example.answer_texts[0]
    overlap += hits >= 2
  assert labelled >= 60 and unlabelled >= 30 and overlap >= 10
  assert exact >= 0.95 * labelled  # others: answers cut inside a word piece ("1990" of "1990s").
  # Logits peaked at the labels come back as the gold answers through post-processing.
  start, end = np.zeros(f.input_ids.shape), np.zeros(f.input_ids.shape)
  rows = np.arange(len(f))
  start[rows, f.labels[:, 0]] = end[rows, f.labels[:, 1]] = 10.0
  scores = squad_eval.squad_metrics(squad_eval.span_predictions(start, end, f), f.examples)
  assert scores["f1"] >= 97.0  # a first gold answer of over 30 tokens is out of reach.


def _run_qa_labels(enc, w, start_char, end_char):
  """The label scans of run_qa's `prepare_train_features`, step by step, on window `w`."""
  offsets, sequence = enc["offset_mapping"][w], enc.sequence_ids(w)
  s, e = 0, len(enc["input_ids"][w]) - 1
  while sequence[s] != 1:
    s += 1
  while sequence[e] != 1:
    e -= 1
  if not (offsets[s][0] <= start_char and offsets[e][1] >= end_char):
    return 0, 0
  while s < len(offsets) and offsets[s][0] <= start_char:
    s += 1
  while offsets[e][1] >= end_char:
    e -= 1
  return s - 1, e + 1


def test_labels_equal_run_qa(long_windows, tokenizer):
  f = long_windows
  questions = [e.question.lstrip() for e in f.examples.examples]
  enc = tokenizer(questions, [e.context for e in f.examples.examples], truncation="only_second",
                  max_length=128, stride=64, return_overflowing_tokens=True,
                  return_offsets_mapping=True)
  assert len(enc["input_ids"]) == len(f)
  differ = 0
  for w, j in enumerate(enc["overflow_to_sample_mapping"]):
    assert f.example_index[w] == j and f.input_ids[w, :f.lengths[w]].tolist() == enc["input_ids"][w]
    e = f.examples.examples[j]
    ref = _run_qa_labels(enc, w, e.answer_starts[0], e.answer_starts[0] + len(e.answer_texts[0]))
    if ref != tuple(f.labels[w]):
      # run_qa's start scan runs onto [SEP] when the answer starts in the last context token.
      assert ref == (f.lengths[w] - 1, f.labels[w, 1]) and f.labels[w, 0] == f.lengths[w] - 2
      differ += 1
  assert differ <= len(f) // 20


# Post-processing -------------------------------------------------------------------------------


def _features(context, windows, answers=("x",)):
  """Span features of one question by hand: `windows` gives each window's character spans
  for its tokens (None: a non-context token)."""
  width = max(len(w) for w in windows)
  offsets = np.full((len(windows), width, 2), -1, np.int32)
  for r, w in enumerate(windows):
    for t, span in enumerate(w):
      if span is not None:
        offsets[r, t] = span
  n = len(windows)
  ex = squad.SquadDataset([squad.SquadExample("q", "t", context, "?", answers, (0,))], "mem")
  return squad.SpanFeatures(
      input_ids=np.zeros((n, width), np.int32), token_type_ids=np.zeros((n, width), np.int32),
      lengths=np.full((n,), width, np.int32), labels=np.zeros((n, 2), np.int32),
      ids=[f"q#{k}" for k in range(n)], example_index=np.zeros((n,), np.int32),
      offsets=offsets, context_mask=offsets[..., 0] >= 0, examples=ex)


def test_postprocess_picks_best_valid_span_across_windows():
  context = "alpha beta gamma delta epsilon"
  words = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30)]
  # window 0: [CLS] q [SEP] alpha beta gamma [SEP]; window 1: [CLS] q [SEP] gamma delta epsilon
  f = _features(context, [[None, None, None, *words[:3], None],
                          [None, None, None, *words[2:], None]])
  start = np.full((2, 7), -10.0)
  end = np.full((2, 7), -10.0)
  start[0, 1], end[0, 1] = 9.0, 9.0  # the question token: highest, not context: skipped.
  start[0, 5], end[0, 3] = 8.0, 8.0  # end before start: skipped.
  start[0, 4], end[0, 4] = 3.0, 3.0  # "beta": valid, 6.0.
  start[1, 4], end[1, 5] = 4.0, 3.5  # "delta epsilon" in window 1: valid, 7.5, the best.
  assert squad_eval.span_predictions(start, end, f) == {"q": "delta epsilon"}
  # logits cut to width 5 (a narrower batch) lose "epsilon": window 0's "beta" wins.
  assert squad_eval.span_predictions(start[:, :5], end[:, :5], f) == {"q": "beta"}
  # max_answer_length: "beta ... epsilon" (window 1 starts at gamma) would be 3 tokens.
  start[1, 3] = 20.0
  assert squad_eval.span_predictions(start, end, f) == {"q": "gamma delta epsilon"}
  assert squad_eval.span_predictions(start, end, f, max_answer_length=2) == {"q": "gamma delta"}
  # n_best: with 1, only the top start (window 1: gamma) and top end are paired.
  assert squad_eval.span_predictions(start, end, f, n_best=1) == {"q": "gamma delta epsilon"}
  empty = np.full((2, 7), -1.0)
  empty[:, 0] = 5.0
  assert squad_eval.best_spans(empty[0], empty[0], f.offsets[0], n_best=1) == []
  assert squad_eval.span_predictions(empty, empty, f, n_best=1) == {"q": ""}


def test_predictions_on_tokenized_windows_and_file(tokenizer, tmp_path):
  context = " ".join(f"w{i}" for i in range(60)) + " the answer is Denver Broncos indeed."
  a = context.index("Denver Broncos")
  ds = squad.SquadDataset([squad.SquadExample("q1", "t", context, "Which team?",
                                               ("Denver Broncos",), (a,))], "mem")
  f = squad.span_features(ds, tokenizer, max_length=48, stride=16)
  rows = squad.windows_of(f)[0]
  assert len(rows) >= 3
  start = np.zeros(f.input_ids.shape, np.float32)
  end = np.zeros(f.input_ids.shape, np.float32)
  r = rows[-1]
  s, e = f.labels[r]
  assert (s, e) != (0, 0)
  start[r, s], end[r, e] = 5.0, 5.0
  start[rows[0], 0] = end[rows[0], 0] = 50.0  # [CLS] scores highest but is no answer in v1.1.
  predictions = squad_eval.span_predictions(start, end, f)
  assert predictions == {"q1": "Denver Broncos"}
  path = squad_eval.write_predictions(predictions, tmp_path)
  assert path.name == "predictions.json"
  assert json.loads(path.read_text()) == {"q1": "Denver Broncos"}
  assert squad_eval.squad_metrics(predictions, ds) == {"exact_match": 100.0, "f1": 100.0}


def test_char_spans_of_windows_point_into_the_question_and_context_as_given(tokenizer):
  """`char_spans`: every token of every window covers its characters of the question (text
  0, counted from the question as given, though its leading spaces are stripped before
  tokenizing) or of the context (text 1); -1 on special tokens and padding."""
  question = "   Who founded the town?"
  context = " ".join(f"w{i}" for i in range(60)) + " founded by Denver Broncos."
  ds = squad.SquadDataset([squad.SquadExample("q1", "t", context, question, (), ())], "mem")
  f = squad.span_features(ds, tokenizer, max_length=48, stride=16, char_spans=True)
  assert squad.span_features(ds, tokenizer, max_length=48, stride=16).char_spans is None
  assert len(f) >= 3
  texts = (question, context)
  for r in range(len(f)):
    n = int(f.lengths[r])
    tokens = tokenizer.convert_ids_to_tokens(f.input_ids[r, :n].tolist())
    spans = f.char_spans[r]
    assert (spans[n:] == -1).all()
    assert [int(s[0]) for s in spans[:n]] == [
        -1 if t in ("[CLS]", "[SEP]") else int(o[0] >= 0) for t, o in zip(tokens, f.offsets[r])]
    assert all(texts[i][a:b].lower() == t.removeprefix("##")
               for t, (i, a, b) in zip(tokens, spans[:n].tolist()) if i >= 0)
    np.testing.assert_array_equal(spans[:n][spans[:n, 0] == 1, 1:], f.offsets[r, :n][
        f.context_mask[r, :n]])  # the context's spans are its offsets.


def test_batches_carry_span_fields(tokenizer):
  ds = squad.SquadDataset([squad.SquadExample(f"q{i}", "t", CONTEXT * (i + 1), "Who won?",
                                              ("Broncos",), (4,)) for i in range(3)], "mem")
  f = squad.span_features(ds, tokenizer, max_length=64, stride=16)
  batch = next(data.eval_batches(f, batch_size=len(f)))
  assert batch["labels"].shape == (len(f), 2)
  idx = batch["index"]
  assert (batch["context_mask"] == f.context_mask[idx, :batch["input_ids"].shape[1]]).all()
  assert (batch["start_positions"] == f.labels[idx, 0]).all()
  assert (batch["end_positions"] == f.labels[idx, 1]).all()
  plain = data.TokenizedDataset(f.input_ids, f.token_type_ids, f.lengths, f.labels[:, 0], f.ids)
  assert "context_mask" not in next(data.train_batches(plain, 2, seed=0, epoch=0))


def test_a_window_with_no_more_context_than_its_stride_is_one_line(tokenizer):
  """The tokenizer panics (a BaseException) when a question leaves a window no more context
  tokens than the stride; one line names the question and the fields to change."""
  question = "Who won the game in 2016?"
  taken = len(tokenizer(question, add_special_tokens=False)["input_ids"])
  room = lambda max_length: max_length - taken - tokenizer.num_special_tokens_to_add(pair=True)
  ds = squad.SquadDataset([squad.SquadExample("q1", "t", CONTEXT * 20, question, ("Broncos",),
                                              (4,))], "mem")
  stride = 20
  max_length = stride + (stride - room(stride))  # room == stride: the first refused length.
  assert room(max_length) == stride
  with pytest.raises(DataError) as err:
    squad.span_features(ds, tokenizer, max_length=max_length, stride=stride)
  assert str(err.value) == (
      f"mem question 'q1': its question takes {taken} of the {max_length} tokens of a window, "
      f"leaving {stride} for the context, not more than the stride of {stride} the windows "
      "overlap by; lower data.doc_stride, raise data.max_length, or shorten the question")
  f = squad.span_features(ds, tokenizer, max_length=max_length + 1, stride=stride)
  assert len(f) > 1 and (f.lengths == max_length + 1).sum() >= 1  # one more token: windows.
  fits = squad.SquadDataset([squad.SquadExample("q2", "t", "The Broncos won.", question,
                                                ("Broncos",), (4,))], "mem")
  whole = squad.span_features(fits, tokenizer, max_length=max_length, stride=stride)
  assert len(whole) == 1 and tuple(whole.labels[0]) != (0, 0)  # nothing to cut: no windows.


# Metric ----------------------------------------------------------------------------------------


def test_normalize_answer():
  assert squad_eval.normalize_answer("The  Quick,\tbrown fox!") == "quick brown fox"
  assert squad_eval.normalize_answer("an apple a day") == "apple day"
  assert squad_eval.normalize_answer("Banana and theory") == "banana and theory"
  assert squad_eval.normalize_answer("U.S.-based") == "usbased"
  assert squad_eval.normalize_answer("  A  ") == ""


def test_exact_match_and_f1_hand_cases():
  em, f1 = squad_eval.exact_match, squad_eval.f1
  assert em("the Denver Broncos.", "Denver  broncos") == 1.0
  assert em("Denver", "Denver Broncos") == 0.0
  assert f1("the cat sat", "cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
  assert f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap.
  assert f1("dog", "cat") == 0.0 and f1("", "cat") == 0.0 and f1("the", "a") == 0.0


def test_squad_metrics_max_over_gold_answers_in_percent():
  examples = [_example("q1", ["Broncos", "Denver Broncos"]),
              _example("q2", ["Santa Clara", "Santa Clara, California"]),
              _example("q3", ["2016"])]
  predictions = {"q1": "denver broncos", "q2": "Clara"}  # q3 unanswered: scores 0.
  m = squad_eval.squad_metrics(predictions, examples)
  assert m["exact_match"] == pytest.approx(100 / 3)
  assert m["f1"] == pytest.approx(100 * (1 + 2 * 1 * 0.5 / 1.5) / 3)
  per_question = squad_eval.question_scores(predictions, examples)  # in the order of examples.
  np.testing.assert_allclose(per_question["exact_match"], [1, 0, 0])
  np.testing.assert_allclose(per_question["f1"], [1, 2 * 1 * 0.5 / 1.5, 0])


def test_paired_comparison_of_two_prediction_files(tmp_path):
  """bench/squad_paired.py: candidate minus baseline on the same questions, with a paired
  bootstrap interval; files of different questions get one line and exit 2."""
  _file(tmp_path, [{"context": CONTEXT, "qas": [_qa(f"q{i}") for i in range(4)]}])
  baseline = {f"q{i}": "Broncos" for i in range(4)}
  files = {"a": baseline, "b": {**baseline, "q3": "the Panthers"}, "c": {"q0": "Broncos"}}
  for name, predictions in files.items():
    (tmp_path / f"{name}.json").write_text(json.dumps(predictions))

  def paired(candidate, *extra):
    return subprocess.run([sys.executable, "bench/squad_paired.py", "--data-dir", str(tmp_path),
                           "--baseline", str(tmp_path / "a.json"),
                           "--candidate", str(tmp_path / candidate), *extra],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)

  out = tmp_path / "paired.json"
  proc = paired("b.json", "--resamples", "2000", "--within", "30", "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-2000:]
  f1 = json.loads(out.read_text())["f1"]
  assert (f1["baseline"], f1["candidate"], f1["mean"]) == (100, 75, -25)
  assert -100 <= f1["low"] <= -50 and f1["high"] == 0  # q3 is drawn 0-4 times of 4.
  # At least -30 when q3 is drawn at most once: 0.75^4 + 4 * 0.25 * 0.75^3 = 0.738.
  assert f1["share_at_least"] == pytest.approx(0.738, abs=0.04)
  # By article: the four questions are one article, drawn whole every time.
  assert json.loads(out.read_text())["articles"] == 1
  by = f1["by_article"]
  assert (by["mean"], by["low"], by["high"], by["share_at_least"]) == (-25, -25, -25, 1.0)
  bad = paired("c.json")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      "error: the two files answer different questions (4 and 1 ids, 3 not in both); "
      "compare predictions of the same split and subset"]


# Pipeline pieces ------------------------------------------------------------------------------


def test_run_data_resplits_by_article(tmp_path, tokenizer):
  from configs import squad as squad_config
  from adapler_jax.pipeline import context
  root = {"version": "1.1", "data": [
      {"title": f"art{a}", "paragraphs": [{"context": CONTEXT, "qas": [
          _qa(f"{a}-{q}") for q in range(2)]}]} for a in range(6)]}
  (tmp_path / "dev-v1.1.json").write_text(json.dumps(root))
  config = squad_config.get_config()
  config.data.update(data_dir=str(tmp_path), max_length=64, doc_stride=16,
                     resplit_source="dev", resplit_train=3, resplit_test=2)
  out = context._load_span_splits(config, data.get_task("squad"), tokenizer, "train")
  assert out["dev"] is out["test"] and isinstance(out["train"], squad.SpanFeatures)
  titles = [set(out[k].examples.articles()) for k in ("train", "dev")]
  titles.append(set(out["search_questions"].articles()))
  assert [len(t) for t in titles] == [3, 2, 1] and len(set.union(*titles)) == 6
  assert (out["train"].labels[:, 0] > 0).all()  # each short context fits one window.
  config.data.resplit_test = 4
  with pytest.raises(UserError, match="only 3 articles .* are left"):
    context._load_span_splits(config, data.get_task("squad"), tokenizer, "train")


def test_saliency_target_is_gold_start_plus_end():
  import jax.numpy as jnp
  from adapler_jax.train import saliency
  logits = np.random.default_rng(0).normal(size=(2, 5, 2)).astype(np.float32)
  labels = np.asarray([[1, 3], [0, 0]])
  gold = logits[0, 1, 0] + logits[0, 3, 1] + logits[1, 0, 0] + logits[1, 0, 1]
  value = float(saliency.gold_logit_sum(jnp.asarray(logits), jnp.asarray(labels)))
  assert value == pytest.approx(gold, rel=1e-6)
  classes = logits[:, :, 0]
  value = float(saliency.gold_logit_sum(jnp.asarray(classes), jnp.asarray([2, 4])))
  assert value == pytest.approx(classes[0, 2] + classes[1, 4], rel=1e-6)


def test_gather_and_evaluate_span(tmp_path):
  context = "alpha beta gamma"
  f = _features(context, [[None, (0, 5), (6, 10), (11, 16)]], answers=("beta",))
  narrow = np.zeros((1, 3, 2), np.float32)
  narrow[0, 2] = 4.0  # "beta" at position 2 for start and end; width 3 < 4.
  start, end = squad_eval.gather_span_logits([(np.asarray([0]), narrow)], len(f), 4)
  assert start.shape == (1, 4) and np.isneginf(start[0, 3])
  out = squad_eval.evaluate_span(start, end, f, directory=tmp_path)
  assert (out["exact_match"], out["f1"], out["metric"]) == (100.0, 100.0, 1.0)
  assert json.loads((tmp_path / "predictions.json").read_text()) == {"q": "beta"}


def test_report_task_scores(tmp_path):
  from adapler_jax.eval import report
  f = _features("alpha beta gamma", [[None, (0, 5), (6, 10), (11, 16)]], answers=("beta",))
  logits = np.zeros((1, 4, 2), np.float32)
  logits[0, 2] = 3.0
  out = report.task_scores("f1", logits, f, tmp_path)
  assert (out["metric"], out["exact_match"], out["num_questions"]) == (1.0, 100.0, 1)
  assert json.loads((tmp_path / "predictions.json").read_text()) == {"q": "beta"}
  two = lambda a: np.repeat(a, 2, axis=0)
  plain = data.TokenizedDataset(two(f.input_ids), two(f.token_type_ids), two(f.lengths),
                                np.asarray([1, 1]), ["a", "b"])
  assert report.task_scores("accuracy", np.asarray([[0.1, 0.9], [0.8, 0.2]]), plain) == {
      "metric": 0.5}  # one of the two right.


def test_unreadable_and_duplicate_files_are_one_line(tmp_path):
  (tmp_path / "dev-v1.1.json.gz").write_bytes(b"not gzip")
  with pytest.raises(DataError, match=r"dev-v1.1.json.gz: cannot be read \(.*\); use the "):
    squad.load_squad("dev", tmp_path)
  (tmp_path / "dev-v1.1.json.gz").unlink()
  _file(tmp_path, [{"context": CONTEXT, "qas": [_qa("q1"), _qa("q1")]}])
  with pytest.raises(DataError, match="question id q1 appears more than once"):
    squad.load_squad("dev", tmp_path)
