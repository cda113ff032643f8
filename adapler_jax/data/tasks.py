"""Registry of the tasks: where the data lives and how to read it.

Most are the paper's classification tasks; `squad` is span question answering (`kind="span"`,
read by `data.squad`).

Each task names its splits with the project's names (`train`, `dev`, `test`; MNLI has
`dev_matched` and `dev_mismatched`, with `dev` an alias of `dev_matched`). A split maps to a
hub split (`datasets.load_dataset`) and to a file in the task's local folder in its standard
format. Texts are given as groups of fields: every group becomes one text (its fields joined by a
space), so a task has one text or a sentence pair.
"""

from __future__ import annotations

import dataclasses

from adapler_jax.data.demo import TOPIC_NAMES
from adapler_jax.errors import DataError

Fields = tuple[tuple[str | int, ...], ...]


@dataclasses.dataclass(frozen=True)
class LocalFormat:
  """How a task's standard local files are laid out.

  Attributes:
    kind: `'tsv'` (header, tab-separated, quoting off), `'csv'` (no header, standard quoting;
      columns are 0-based ints), `'imdb'` (`{split}.jsonl[.gz]` or the aclImdb folders) or
      `'hatexplain'` (`dataset.json` + `post_id_divisions.json`) or `'eraser'` (ERASER
      `{split}.jsonl` + `docs/`, read by `data.eraser`), `'squad'` (the official SQuAD JSON,
      `.json` or `.json.gz`, read by `data.squad`) or `'file'` (any CSV/TSV with a header
      or JSON-lines file per split, read by `readers.load_file`; the task `custom`).
    files: split -> file name (for `'hatexplain'`: split -> key of `post_id_divisions.json`).
    text_columns: one group of columns per text; the columns of a group are joined by a space.
    label_column: column holding the label.
    label_values: raw label strings in class-index order.
    id_columns: columns whose values, joined by `-`, give the example id
      (default: `'<split>-<row>'`).
  """
  kind: str
  files: tuple[tuple[str, str], ...]
  text_columns: Fields = ()
  label_column: str | int = "label"
  label_values: tuple[str, ...] = ()
  id_columns: tuple[str | int, ...] = ()

  def file_for(self, split: str) -> str:
    return dict(self.files)[split]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task: classification (the paper's) or span question answering.

  Attributes:
    name: registry name.
    hub: `(path, config name)` for `datasets.load_dataset`; None for generated tasks.
    hub_splits: project split -> hub split.
    text_fields: hub fields, one group per text (joined by a space within a group).
    label_field: hub label field (0-based class index).
    label_names: class names in index order (span tasks: the per-position outputs).
    metric: `'accuracy'` or `'f1'` (F1 of class 1; span tasks: SQuAD's token F1).
    max_length: default max sequence length (paper Table 3).
    local: layout of the standard local files; None when the task has none.
    replace: `(old, new)` text substitutions applied to every text (e.g. IMDB `<br />`).
    aliases: extra split name -> split name.
    kind: `'classification'`, or `'span'` (extractive QA: start/end token labels, no classes).
  """
  name: str
  hub: tuple[str, str | None] | None
  hub_splits: tuple[tuple[str, str], ...]
  text_fields: Fields
  label_field: str
  label_names: tuple[str, ...]
  metric: str
  max_length: int
  local: LocalFormat | None = None
  replace: tuple[tuple[str, str], ...] = ()
  aliases: tuple[tuple[str, str], ...] = ()
  kind: str = "classification"

  @property
  def is_span(self) -> bool:
    return self.kind == "span"

  @property
  def cuts_into_windows(self) -> bool:
    """Long texts become several examples, one per window of `data.max_length` tokens, so
    the max length decides the rows (`eraser_movies`)."""
    return self.local is not None and self.local.kind == "eraser"

  @property
  def num_labels(self) -> int:
    return len(self.label_names)

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(s for s, _ in self.hub_splits)

  @property
  def is_pair(self) -> bool:
    return len(self.text_fields) == 2

  @property
  def eval_splits(self) -> tuple[str, ...]:
    """Splits to report on: every split except `train`."""
    return tuple(s for s in self.splits if s != "train")

  def resolve_split(self, split: str) -> str:
    """The canonical split name, or DataError listing the task's splits."""
    split = dict(self.aliases).get(split, split)
    if split not in self.splits:
      raise DataError(f"task '{self.name}' has no split '{split}'; "
                      f"use one of {', '.join(self.splits)}")
    return split


def _glue(name: str, fields: Fields, labels: tuple[str, ...], local: LocalFormat,
          splits=(("train", "train"), ("dev", "validation")), metric="accuracy",
          max_length=128, **kw) -> TaskSpec:
  return TaskSpec(name=name, hub=("glue", name), hub_splits=splits, text_fields=fields,
                  label_field="label", label_names=labels, metric=metric,
                  max_length=max_length, local=local, **kw)


_DBPEDIA_CLASSES = (
    "Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder",
    "MeanOfTransportation", "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album",
    "Film", "WrittenWork")

_TASKS = (
    _glue("sst2", (("sentence",),), ("negative", "positive"), max_length=64,
          local=LocalFormat("tsv", (("train", "train.tsv"), ("dev", "dev.tsv")),
                            (("sentence",),), "label", ("0", "1"))),
    _glue("mrpc", (("sentence1",), ("sentence2",)), ("not_equivalent", "equivalent"),
          metric="f1",
          splits=(("train", "train"), ("dev", "validation"), ("test", "test")),
          local=LocalFormat(
              "tsv", (("train", "train.tsv"), ("dev", "dev.tsv"),
                      ("test", "msr_paraphrase_test.txt")),
              (("#1 String",), ("#2 String",)), "Quality", ("0", "1"), ("#1 ID", "#2 ID"))),
    _glue("qnli", (("question",), ("sentence",)), ("entailment", "not_entailment"),
          local=LocalFormat("tsv", (("train", "train.tsv"), ("dev", "dev.tsv")),
                            (("question",), ("sentence",)), "label",
                            ("entailment", "not_entailment"), ("index",))),
    _glue("mnli", (("premise",), ("hypothesis",)), ("entailment", "neutral", "contradiction"),
          splits=(("train", "train"), ("dev_matched", "validation_matched"),
                  ("dev_mismatched", "validation_mismatched")),
          aliases=(("dev", "dev_matched"),),
          local=LocalFormat(
              "tsv", (("train", "train.tsv"), ("dev_matched", "dev_matched.tsv"),
                      ("dev_mismatched", "dev_mismatched.tsv")),
              (("sentence1",), ("sentence2",)), "gold_label",
              ("entailment", "neutral", "contradiction"), ("pairID",))),
    TaskSpec(
        "imdb", ("stanfordnlp/imdb", None), (("train", "train"), ("test", "test")),
        (("text",),), "label", ("negative", "positive"), "accuracy", 512,
        local=LocalFormat("imdb", (("train", "train"), ("test", "test")), (("text",),),
                          "label", ("0", "1"), ("id",)),
        replace=(("<br />", " "),)),
    TaskSpec(
        "hatexplain", ("Hate-speech-CNERG/hatexplain", None),
        (("train", "train"), ("dev", "validation"), ("test", "test")),
        (("post_tokens",),), "annotators", ("hatespeech", "normal", "offensive"), "accuracy", 72,
        local=LocalFormat("hatexplain", (("train", "train"), ("dev", "val"), ("test", "test")),
                          label_values=("hatespeech", "normal", "offensive"))),
    TaskSpec(
        "ag_news", ("fancyzhx/ag_news", None), (("train", "train"), ("test", "test")),
        (("text",),), "label", ("World", "Sports", "Business", "Sci/Tech"), "accuracy", 128,
        local=LocalFormat("csv", (("train", "train.csv"), ("test", "test.csv")), ((1, 2),), 0,
                          ("1", "2", "3", "4"))),
    TaskSpec(
        "dbpedia", ("fancyzhx/dbpedia_14", None), (("train", "train"), ("test", "test")),
        (("title", "content"),), "label", _DBPEDIA_CLASSES, "accuracy", 128,
        local=LocalFormat("csv", (("train", "train.csv"), ("test", "test.csv")), ((1, 2),), 0,
                          tuple(str(i) for i in range(1, 15)))),
    TaskSpec(
        "demo", None, (("train", "train"), ("dev", "dev"), ("test", "test")), (("text",),),
        "label", TOPIC_NAMES[:4], "accuracy", 64),
    TaskSpec(  # local files only (ERASER); long reviews are cut into windows (data/eraser.py).
        "eraser_movies", None, (("train", "train"), ("dev", "val"), ("test", "test")),
        (("text",),), "label", ("negative", "positive"), "accuracy", 512,
        local=LocalFormat("eraser", (("train", "train.jsonl"), ("dev", "val.jsonl"),
                                     ("test", "test.jsonl")), label_values=("NEG", "POS"))),
    TaskSpec(  # span QA: 2 outputs per position (start, end); the official EM and F1.
        "squad", ("rajpurkar/squad", None), (("train", "train"), ("dev", "validation")),
        (("question",), ("context",)), "answers", ("start", "end"), "f1", 384,
        local=LocalFormat("squad", (("train", "train-v1.1.json"), ("dev", "dev-v1.1.json"))),
        kind="span"),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASKS}


def task_names() -> tuple[str, ...]:
  return tuple(TASKS)


def get_task(name: str) -> TaskSpec:
  """The registered task `name`, or DataError listing the known names."""
  try:
    return TASKS[name]
  except KeyError:
    raise DataError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}, or {CUSTOM} "
                    "for your own files") from None


CUSTOM = "custom"  # the task over the user's own files (`custom_task`).


def custom_task(files: dict[str, str], text_fields: Fields, label_field: str = "label",
                label_names: tuple[str, ...] = (), metric: str = "accuracy",
                id_field: str = "", max_length: int = 128) -> TaskSpec:
  """Task `custom`: one CSV/TSV/JSON-lines file per split (`files`: split -> path), read by
  `readers.load_file` with the given fields; `label_names` are raw label values in class
  order."""
  return TaskSpec(CUSTOM, None, tuple((s, s) for s in files), text_fields, label_field,
                  tuple(label_names), metric, max_length,
                  local=LocalFormat("file", tuple(files.items()), text_fields, label_field,
                                    tuple(label_names), (id_field,) if id_field else ()))


def transfer_task(name: str, trained_on: TaskSpec, workdir) -> TaskSpec:
  """Task `name` for a model of `workdir` trained on `trained_on`: it must share the labels.

  E.g. a sentiment model trained on SST-2 is measured on IMDB or ERASER movie reviews.
  """
  task = get_task(name)
  if task.label_names != trained_on.label_names:
    raise DataError(f"{workdir} was trained on {trained_on.name} {trained_on.label_names}, "
                    f"which {name} {task.label_names} does not share; pair {name} with a run "
                    "trained on the same labels")
  return task
