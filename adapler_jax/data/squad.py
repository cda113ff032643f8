"""SQuAD v1.1 (Rajpurkar et al., 2016): questions, contexts and answer spans, and their windows.

Local layout: the official JSON, `{split file}.json` or `.json.gz` (`train-v1.1.json`,
`dev-v1.1.json`) holding `data -> [{title, paragraphs -> [{context, qas -> [{id, question,
answers -> [{text, answer_start}]}]}]}]`; `answer_start` is a character offset into the context.
The hub path is `rajpurkar/squad` (same fields, one row per question).

Features follow Hugging Face's `run_qa.py` (`prepare_train_features` /
`prepare_validation_features`): the question (left-stripped) first, the context second,
`truncation="only_second"`, overflowing windows of `max_length` tokens whose contexts overlap by
`stride` tokens. Each window keeps the character offsets of its context tokens (-1 elsewhere) and
the index of its example; its label is the (start, end) token pair of the first gold answer, or
(0, 0), i.e. [CLS], when the window does not hold that whole answer.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from adapler_jax.data import hub
from adapler_jax.data.dataset import first_repeat
from adapler_jax.data.readers import missing_file, reading
from adapler_jax.data.tasks import TaskSpec, get_task
from adapler_jax.data.tokenize import TokenizedDataset, token_char_spans
from adapler_jax.errors import DataError, format_message, location

TASK = "squad"
LAYOUT_FIX = "use the official SQuAD v1.1 JSON layout"


@dataclasses.dataclass(frozen=True)
class SquadExample:
  """One question.

  Attributes:
    id: the question id.
    title: title of its article.
    context: the paragraph.
    question: the question as written.
    answer_texts: gold answers (dev has several crowd answers; they may repeat).
    answer_starts: character offset of each answer in `context`.
  """
  id: str
  title: str
  context: str
  question: str
  answer_texts: tuple[str, ...]
  answer_starts: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SquadDataset:
  """The questions of one split, in file order."""
  examples: list[SquadExample]
  source: str
  task: str = TASK

  def __post_init__(self):
    twice = first_repeat(e.id for e in self.examples)
    if twice is not None:
      raise DataError(f"{self.source}: question id {twice} appears more than once; give every "
                      "question its own id")

  def __len__(self) -> int:
    return len(self.examples)

  @property
  def ids(self) -> list[str]:
    return [e.id for e in self.examples]

  def articles(self) -> list[str]:
    """Article titles in order of first appearance."""
    return list(dict.fromkeys(e.title for e in self.examples))

  def take(self, indices: Sequence[int] | np.ndarray, source: str | None = None) -> SquadDataset:
    """The questions at `indices`, in that order."""
    return SquadDataset([self.examples[int(i)] for i in indices],
                        self.source if source is None else source, self.task)


# Reading -------------------------------------------------------------------------------------


def _field(record: Any, name: str, kind: type, where: str) -> Any:
  if not isinstance(record, dict) or name not in record:
    raise DataError(format_message(where, f"no field {name!r}", LAYOUT_FIX))
  value = record[name]
  if not isinstance(value, kind) or isinstance(value, bool):
    raise DataError(format_message(where, f"field {name!r} holds {type(value).__name__}, "
                                   f"not {kind.__name__}", LAYOUT_FIX))
  return value


def make_example(where: str, title: str, context: str, qa: Any, position: str, *,
                 answers_required: bool = True) -> SquadExample:
  """One checked question; `where` names the file, `position` the question when it lacks an id.

  DataError (one line naming the file and the question) on a missing field, an empty context,
  no answer (unless `answers_required` is False: questions to predict), or an `answer_start`
  whose context text differs from the answer.
  """
  if not isinstance(qa, dict) or "id" not in qa:
    raise DataError(format_message(f"{where} {position}", "no field 'id'", LAYOUT_FIX))
  qid = str(qa["id"])
  at = f"{where} question {qid}"
  question = _field(qa, "question", str, at)
  if not context.strip():
    raise DataError(format_message(at, "empty context", "fill in the paragraph or remove it"))
  if not answers_required and not qa.get("answers"):
    return SquadExample(qid, title, context, question, (), ())
  answers = _field(qa, "answers", list, at)
  if not answers:
    raise DataError(format_message(at, "no answers (SQuAD v1.1 answers every question)",
                                   "add its answer, or remove the question"))
  texts, starts = [], []
  for k, answer in enumerate(answers, start=1):
    text = _field(answer, "text", str, f"{at} answer {k}")
    start = _field(answer, "answer_start", int, f"{at} answer {k}")
    found = context[start:start + len(text)] if start >= 0 else ""
    if found != text:
      raise DataError(format_message(
          f"{at} answer {k}", f"answer_start {start} points at {found!r}, not the answer "
          f"{text!r}", "fix answer_start to the answer's character offset in the context"))
    texts.append(text)
    starts.append(start)
  return SquadExample(qid, title, context, question, tuple(texts), tuple(starts))


def read_squad_json(path: str | os.PathLike[str], *,
                    answers_required: bool = True) -> SquadDataset:
  """The questions of an official SQuAD v1.1 JSON file (`.json` or `.json.gz`); with
  `answers_required` False, questions may come without answers (a file to predict)."""
  path = Path(path)
  where = location(path)
  opener = gzip.open if path.name.endswith(".gz") else open
  try:
    with reading(path), opener(path, "rt", encoding="utf-8-sig") as f:  # a BOM is dropped.
      root = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(format_message(f"{where} line {e.lineno}", f"invalid JSON ({e.msg})",
                                   LAYOUT_FIX)) from None
  examples = []
  for a, article in enumerate(_field(root, "data", list, where), start=1):
    title = _field(article, "title", str, f"{where} article {a}")
    for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{where} article {a}"),
                                  start=1):
      at = f"{where} article {a} paragraph {p}"
      qas = _field(paragraph, "qas", list, at)
      first = (f"{where} question {qas[0]['id']}"
               if qas and isinstance(qas[0], dict) and "id" in qas[0] else at)
      context = _field(paragraph, "context", str, first)
      for q, qa in enumerate(qas, start=1):
        examples.append(make_example(where, title, context, qa,
                                     f"article {a} paragraph {p} question {q}",
                                     answers_required=answers_required))
  if not examples:
    raise DataError(format_message(where, "holds no questions", LAYOUT_FIX))
  return SquadDataset(examples, str(path))


def _local_file(spec: TaskSpec, split: str, data_dir: Path) -> Path:
  name = spec.local.file_for(split)
  for candidate in (data_dir / name, data_dir / f"{name}.gz"):
    if candidate.is_file():
      return candidate
  raise missing_file(spec.name, split, data_dir / name, data_dir, "pass the folder that holds "
                     "the SQuAD v1.1 JSON files with --config.data.data_dir", also=".gz")


def _hub_examples(spec: TaskSpec, split: str) -> SquadDataset:
  table, where = hub.load_table(spec, split, "SQuAD", "the SQuAD v1.1 JSON files")
  examples = []
  for i, row in enumerate(table):
    answers = row.get("answers") or {}
    qa = {"id": row.get("id"), "question": row.get("question"),
          "answers": [{"text": t, "answer_start": s}
                      for t, s in zip(answers.get("text", []), answers.get("answer_start", []))]}
    if qa["id"] is None:
      del qa["id"]
    examples.append(make_example(where, row.get("title") or "", row.get("context") or "", qa,
                                 f"row {i + 1}"))
  return SquadDataset(examples, where, spec.name)


def load_squad(split: str, data_dir: str | os.PathLike[str] | None = None,
               spec: TaskSpec | None = None) -> SquadDataset:
  """Split `train` or `dev` of the span task `spec` (default `squad`) from the folder
  `data_dir`, or from the hub when it is None."""
  spec = spec or get_task(TASK)
  split = spec.resolve_split(split)
  if data_dir is None:
    return _hub_examples(spec, split)
  return read_squad_json(_local_file(spec, split, Path(data_dir)))


# Re-split by article -------------------------------------------------------------------------


class ArticleSplit(NamedTuple):
  """Disjoint parts of one split by article: no article has questions in two parts."""
  train: SquadDataset
  dev: SquadDataset
  search: SquadDataset


def split_by_article(dataset: SquadDataset, num_train_articles: int, seed: int,
                     num_search_articles: int = 0) -> ArticleSplit:
  """Seeded re-split of `dataset` by article: `num_train_articles` for training,
  `num_search_articles` held out for a search's fitness, the rest for evaluation.

  The articles are shuffled with `seed`; each part keeps the file order of its questions.
  """
  titles = dataset.articles()
  if num_train_articles < 1 or num_search_articles < 0 or (
      num_train_articles + num_search_articles >= len(titles)):
    raise DataError(f"{dataset.source}: cannot split {len(titles)} articles into "
                    f"{num_train_articles} train + {num_search_articles} search and at least "
                    "one held out; lower the article counts")
  order = [titles[i] for i in np.random.default_rng(seed).permutation(len(titles))]
  parts = {"train": set(order[:num_train_articles]),
           "search": set(order[num_train_articles:num_train_articles + num_search_articles])}
  parts["dev"] = set(order[num_train_articles + num_search_articles:])
  note = (f"{dataset.source} re-split by article (seed {seed}, {num_train_articles} train / "
          f"{num_search_articles} search / {len(parts['dev'])} held-out articles)")
  out = {}
  for name, chosen in parts.items():
    rows = [i for i, e in enumerate(dataset.examples) if e.title in chosen]
    out[name] = dataset.take(rows, f"{note}: {name} part")
  return ArticleSplit(**out)


# Features ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpanFeatures(TokenizedDataset):
  """Windows of a `SquadDataset`, laid out as a `TokenizedDataset` (one row per window).

  `labels` is (n, 2) int32: the start and end token of the first gold answer in the window, or
  (0, 0) ([CLS]) when the window does not hold the whole answer; batches also carry them as
  `start_positions` and `end_positions` (B,). `ids` are `<question id>#<k>`.

  Attributes:
    example_index: (n,) int32 row of `examples` each window comes from.
    offsets: (n, max_length, 2) int32 character span `[start, end)` of each context token in
      its example's context; -1 on the question, special tokens and padding.
    context_mask: (n, max_length) bool, the context tokens (`offsets >= 0`); batches carry it.
    examples: the questions the windows were cut from.
  """
  example_index: np.ndarray | None = None
  offsets: np.ndarray | None = None
  context_mask: np.ndarray | None = None
  examples: SquadDataset | None = None

  row_fields: ClassVar[tuple[str, ...]] = ("context_mask", "start_positions", "end_positions")

  @property
  def start_positions(self) -> np.ndarray:
    """(n,) gold start tokens (`labels[:, 0]`, the name span losses read from a batch)."""
    return self.labels[:, 0]

  @property
  def end_positions(self) -> np.ndarray:
    """(n,) gold end tokens (`labels[:, 1]`)."""
    return self.labels[:, 1]


def span_labels(offsets: np.ndarray, context: np.ndarray, start_char: int,
                end_char: int) -> tuple[int, int]:
  """(start, end) tokens of the characters `[start_char, end_char)` in one window, else (0, 0).

  As `run_qa.prepare_train_features`: the window must hold the answer's characters within its
  context tokens; the start is the last context token starting at or before `start_char`, the
  end the first context token ending at or after `end_char`. (Unlike `run_qa`, whose start scan
  can run past the context onto [SEP] when the answer begins in the last context token.)
  """
  tokens = np.flatnonzero(context)
  if not len(tokens) or not (offsets[tokens[0], 0] <= start_char
                             and offsets[tokens[-1], 1] >= end_char):
    return 0, 0
  start = tokens[np.flatnonzero(offsets[tokens, 0] <= start_char)[-1]]
  end = tokens[np.flatnonzero(offsets[tokens, 1] >= end_char)[0]]
  return int(start), int(end)


ROOM_FIX = "lower data.doc_stride, raise data.max_length, or shorten the question"


def _check_context_room(source: str, batch: Sequence[SquadExample], tokenizer: Any,
                        max_length: int, stride: int, fix: str = ROOM_FIX) -> None:
  """Every question whose context is cut into windows leaves them more context tokens than
  `stride`, which they overlap by: the tokenizer refuses (or panics on) any with less."""
  questions = tokenizer([e.question.lstrip() for e in batch], add_special_tokens=False)
  specials = tokenizer.num_special_tokens_to_add(pair=True)
  for example, ids in zip(batch, questions["input_ids"]):
    room = max_length - len(ids) - specials
    # Only a context that must be cut into windows needs room past the stride.
    if room <= stride and len(tokenizer(example.context, add_special_tokens=False)[
        "input_ids"]) > room:
      raise DataError(format_message(
          f"{source} question {example.id!r}",
          f"its question takes {len(ids)} of the {max_length} tokens of a window, leaving "
          f"{max(room, 0)} for the context, not more than the stride of {stride} the windows "
          "overlap by", fix))


def span_features(dataset: SquadDataset, tokenizer: Any, max_length: int = 384,
                  stride: int = 128, chunk: int = 2048, room_fix: str = ROOM_FIX, *,
                  char_spans: bool = False) -> SpanFeatures:
  """Overflowing question + context windows of every question, with labels and offsets.

  `tokenizer` is a Hugging Face fast tokenizer; questions are encoded in batches of `chunk`.
  A question too long to leave its windows more context than `stride` is a one-line
  DataError ending in `room_fix`. `char_spans` also keeps every token's characters, the
  question's (text 0) as the context's (text 1): `TokenizedDataset.char_spans`.
  """
  pad_id = int(tokenizer.pad_token_id or 0)
  rows: dict[str, list] = {k: [] for k in ("ids", "types", "offsets", "example", "labels",
                                           "names", "spans")}
  for lo in range(0, len(dataset), chunk):
    batch = dataset.examples[lo:lo + chunk]
    _check_context_room(dataset.source, batch, tokenizer, max_length, stride, room_fix)
    enc = tokenizer([e.question.lstrip() for e in batch], [e.context for e in batch],
                    truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    return_token_type_ids=True, padding=False)
    seen: dict[int, int] = {}
    for w, j in enumerate(enc["overflow_to_sample_mapping"]):
      example = batch[j]
      context = np.asarray([s == 1 for s in enc.sequence_ids(w)])
      offsets = np.asarray(enc["offset_mapping"][w], np.int32).reshape(-1, 2)
      if char_spans:  # question offsets count from its start as given, not as stripped.
        stripped = len(example.question) - len(example.question.lstrip())
        rows["spans"].append(token_char_spans(enc.sequence_ids(w), offsets, (stripped, 0)))
      offsets = np.where(context[:, None], offsets, -1)
      start = example.answer_starts[0] if example.answer_starts else -1
      label = ((0, 0) if start < 0 else
               span_labels(offsets, context, start, start + len(example.answer_texts[0])))
      k = seen[j] = seen.get(j, -1) + 1
      rows["ids"].append(enc["input_ids"][w])
      rows["types"].append(enc["token_type_ids"][w])
      rows["offsets"].append(offsets)
      rows["example"].append(lo + j)
      rows["labels"].append(label)
      rows["names"].append(f"{example.id}#{k}")
  n = len(rows["ids"])
  input_ids = np.full((n, max_length), pad_id, np.int32)
  token_type_ids = np.zeros((n, max_length), np.int32)
  offsets = np.full((n, max_length, 2), -1, np.int32)
  spans = np.full((n, max_length, 3), -1, np.int32) if char_spans else None
  lengths = np.zeros((n,), np.int32)
  for i, (ids, types, offs) in enumerate(zip(rows["ids"], rows["types"], rows["offsets"])):
    lengths[i] = len(ids)
    input_ids[i, :len(ids)] = ids
    token_type_ids[i, :len(ids)] = types
    offsets[i, :len(ids)] = offs
    if char_spans:
      spans[i, :len(ids)] = rows["spans"][i]
  return SpanFeatures(input_ids=input_ids, token_type_ids=token_type_ids, lengths=lengths,
                      labels=np.asarray(rows["labels"], np.int32).reshape(n, 2),
                      ids=rows["names"], task=dataset.task, pad_id=pad_id,
                      example_index=np.asarray(rows["example"], np.int32), offsets=offsets,
                      context_mask=offsets[..., 0] >= 0, examples=dataset,
                      char_spans=spans)


def windows_of(features: SpanFeatures) -> list[np.ndarray]:
  """Per example, the rows of its windows in order."""
  order = np.argsort(features.example_index, kind="stable")
  bounds = np.searchsorted(features.example_index[order],
                           np.arange(len(features.examples) + 1))
  return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

