"""`Predictor`: raw texts -> labels, probabilities and kept tokens, through the batched engine.

  predictor = Predictor("exports/sst2")
  rows = predictor.predict(["a gentle , funny film", "dull"], rationales=True)
  rows[0]["label"], rows[0]["probabilities"], rows[0]["kept_tokens"]

A span QA export (SQuAD) answers questions instead: each input is a question and its context,
cut into overlapping windows as in training; the answer is the best span over the windows.

  Predictor("exports/squad").predict([{"question": "Who?", "context": "..."}])[0]["answer"]

AdapLeR runs on `AdaptiveEngine` (its eta), LAT on `LengthEngine` (its length config).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from adapler_jax.data.dataset import TextDataset, check_unique_ids
from adapler_jax.data.squad import SpanFeatures, SquadDataset, SquadExample, span_features
from adapler_jax.data.squad import windows_of
from adapler_jax.data.tokenize import TokenizedDataset, tokenize
from adapler_jax.errors import DataError
from adapler_jax.eval import metrics
from adapler_jax.eval import squad as squad_eval
from adapler_jax.eval.rationale import cp_token_scores
from adapler_jax.infer.engine import AdaptiveEngine, EngineResult, LengthEngine
from adapler_jax.serve import inputs as inputs_lib
from adapler_jax.serve.model_dir import ExportedModel, load_model


class Predictor:
  """An exported model with its engine, built once.

  Args:
    model: an export directory (`adapler-export`) or a loaded `ExportedModel`.
    batch_size: rows per engine batch: examples, or for span QA context windows.
    length_config: LAT only: run at this length config instead of the exported one.
    device: where the engine runs (default: the first local device).
  """

  def __init__(self, model: str | os.PathLike[str] | ExportedModel, *, batch_size: int = 32,
               length_config: Sequence[int] | None = None, device=None):
    self.model = model if isinstance(model, ExportedModel) else load_model(model)
    m = self.model
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
      raise DataError(f"batch_size {batch_size!r} is not an int; pass e.g. batch_size=32")
    if batch_size < 1:
      raise DataError(f"batch_size {batch_size} is below 1; pass e.g. batch_size=32")
    if m.method == "adapler":
      if length_config is not None:
        raise DataError("a length config (--length-config) applies to LAT exports; this one "
                        "is AdapLeR, whose cutoffs set its speed: drop it")
      self.engine = AdaptiveEngine(m.config, m.params, batch_size=batch_size,
                                   max_length=m.max_length, device=device)
    else:
      config = m.length_config if length_config is None else length_config  # () is refused.
      self.engine = LengthEngine(m.config, m.params, config,
                                 base=m.speed["base"], flags=m.selection_flags,
                                 batch_size=batch_size, max_length=m.max_length, device=device)

  @property
  def label_names(self) -> tuple[str, ...]:
    return self.model.label_names

  def fields(self) -> list:
    """Record field namings accepted, in order: the model's, the task's TSV columns, generic."""
    m = self.model
    tsv = m.meta["inputs"].get("tsv_columns")
    return [m.text_fields] + ([tsv] if tsv else []) + [inputs_lib.GENERIC_FIELDS]

  def tokenize(self, items: Sequence[Any], ids: Sequence[str] | None = None, *,
               source: str | None = None, char_spans: bool = False) -> TokenizedDataset:
    """Unlabelled inputs (texts, pairs or records; see `inputs.texts_of`), tokenized.
    `source` (e.g. the file they came from) prefixes the one-line errors; `char_spans`
    keeps each token's characters (`TokenizedDataset.char_spans`)."""
    ids, rows = self._texts(items, ids, source)
    if self.model.is_span:
      return self._windows(ids, rows, source or "prediction input", char_spans)
    data = TextDataset(ids=ids, texts=tuple(list(t) for t in zip(*rows)), labels=None,
                       task=self.model.task, source=source or "prediction input")
    return tokenize(data, self.model.tokenizer, self.model.max_length, char_spans=char_spans)

  def check(self, items: Sequence[Any], ids: Sequence[str] | None = None, *,
            source: str | None = None) -> None:
    """The one-line `DataError` `tokenize` would raise for these inputs (a text that cannot
    be read, an id given twice), without tokenizing: to refuse a bad input of a long list
    before predicting any part of it."""
    ids, _ = self._texts(items, ids, source)
    check_unique_ids(ids, source or "prediction input")

  def _texts(self, items, ids, source: str | None):
    """`(ids, texts per input)`: every input's texts, checked."""
    if isinstance(items, (str, bytes, dict)):  # one input, not a sequence of them.
      raise DataError(f"items is one {type(items).__name__}, not a list of inputs; pass a "
                      "list, e.g. predict([text])")
    if not isinstance(items, Sequence):
      if not isinstance(items, Iterable):
        raise DataError(f"items is {type(items).__name__}, not a list of inputs; pass a list "
                        "of texts, pairs or records")
      items = list(items)  # a generator, say.
    if len(items) == 0:
      raise DataError("no inputs to predict; pass at least one text")
    if ids is not None and (isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable)):
      raise DataError(f"ids is one {type(ids).__name__}, not a list of ids; pass one id per "
                      "input, e.g. ids=['a', 'b'], or none")
    ids = [str(i) for i in range(len(items))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(items):
      raise DataError(f"{len(ids)} ids for {len(items)} inputs; pass one id per input, or "
                      "none")
    num, fields = len(self.model.text_fields), self.fields()
    where = lambda i: f"{source} input {i}" if source else f"input {i}"
    rows = [inputs_lib.texts_of(item, fields, num, where(i)) for i, item in zip(ids, items)]
    if self.model.is_span:
      for i, (question, context) in zip(ids, rows):
        for text, problem in ((question, "empty question; give every input a question"),
                              (context, "empty context; give every question a context to "
                                        "answer from")):
          if not text.strip():
            raise DataError(f"{where(i)}: {problem}")
    return ids, rows

  def _windows(self, ids: Sequence[str], rows: Sequence[tuple[str, str]], source: str,
               char_spans: bool) -> SpanFeatures:
    """Span QA: the windows of each (question, context), as in training (`span_features`)."""
    examples = [SquadExample(i, "", context, question, (), ())
                for i, (question, context) in zip(ids, rows)]
    m = self.model
    return span_features(SquadDataset(examples, source, m.task), m.tokenizer,
                         m.max_length, m.doc_stride,
                         room_fix="shorten the question (the model's windows are fixed)",
                         char_spans=char_spans)

  def run(self, items: Sequence[Any], ids: Sequence[str] | None = None, *,
          rationales: bool = False, progress: bool = False, source: str | None = None
          ) -> tuple[TokenizedDataset, EngineResult]:
    """The tokenized inputs and the engine's raw result (logits, kept counts, ...)."""
    data = self.tokenize(items, ids, source=source, char_spans=rationales)
    return data, self.engine.run(data, return_rationales=rationales, progress=progress)

  def predict(self, items: Sequence[Any], ids: Sequence[str] | None = None, *,
              rationales: bool = False, progress: bool = False,
              source: str | None = None) -> list[dict[str, Any]]:
    """One row per input, in input order: `id` (`ids`, default 0, 1, ...), `label`,
    `label_index`, `probabilities` (by label name), `logits`, `length` (tokens),
    `kept_tokens` (per layer); with `rationales` also `tokens`, `char_spans` (per token,
    `[i, start, end]`: it covers `texts[i][start:end]` of the texts the model read, i = 0,
    or 1 for a pair's second; None on special tokens), `kept_positions` (per layer, the
    positions it ran on) and, for AdapLeR, `scores` (per layer, S~ over the positions then
    present, None on those dropped before).

    Span QA: `id`, `answer` (a piece of the context, "" when no window holds a valid span),
    `answer_start` / `answer_end` (its characters in the context, None without an answer),
    `score` (start + end logit), `windows` (how many the context took), `length` and
    `kept_tokens` summed over the windows; with `rationales` also `window_rationales`, the
    rationale fields above for each window (`char_spans` text 0 is the question, 1 the
    context)."""
    data, result = self.run(items, ids, rationales=rationales, progress=progress,
                            source=source)
    if self.model.is_span:
      return span_rows(self.model, data, result)
    return rows(self.model, data, result)


def rows(model: ExportedModel, data: TokenizedDataset,
         result: EngineResult) -> list[dict[str, Any]]:
  """The prediction rows of an engine result (see `Predictor.predict`)."""
  names = model.label_names
  probs = metrics.softmax(result.logits)
  out = []
  for i, p in enumerate(probs):
    k = int(np.argmax(result.logits[i]))
    row = {"id": data.ids[i], "label": names[k], "label_index": k,
           "probabilities": dict(zip(names, p.tolist())),
           "logits": result.logits[i].tolist(), "length": int(data.lengths[i]),
           "kept_tokens": result.kept_counts[i].tolist()}
    if result.kept_positions is not None:
      row.update(_rationale(model, data, result, i))
    out.append(row)
  return out


_NO_ANSWER = squad_eval.Answer(text="", start=None, end=None, score=None)  # no valid span.


def span_rows(model: ExportedModel, data: SpanFeatures,
              result: EngineResult) -> list[dict[str, Any]]:
  """The answer rows of a span QA engine result, one per question (see `Predictor.predict`)."""
  answers = squad_eval.best_answers(result.logits[..., 0], result.logits[..., 1], data)
  out = []
  for example, windows in zip(data.examples.examples, windows_of(data)):
    answer = answers[example.id] or _NO_ANSWER
    row = {"id": example.id, "answer": answer.text, "answer_start": answer.start,
           "answer_end": answer.end, "score": answer.score, "windows": len(windows),
           "length": int(data.lengths[windows].sum()),
           "kept_tokens": result.kept_counts[windows].sum(axis=0).tolist()}
    if result.kept_positions is not None:
      row["window_rationales"] = [_rationale(model, data, result, w) for w in windows]
    out.append(row)
  return out


def _rationale(model: ExportedModel, data: TokenizedDataset, result: EngineResult,
               i: int) -> dict[str, Any]:
  """Row `i`'s `tokens`, `char_spans` (when `data` has them: `tokenize(...,
  char_spans=True)`), `kept_positions` and (AdapLeR) `scores`."""
  n = int(data.lengths[i])
  out = {"tokens": model.tokenizer.convert_ids_to_tokens(data.input_ids[i, :n].tolist())}
  if data.char_spans is not None:
    out["char_spans"] = [None if s[0] < 0 else s.tolist() for s in data.char_spans[i, :n]]
  out["kept_positions"] = [np.asarray(p).tolist() for p in result.kept_positions[i]]
  if result.scores is not None and result.scores[i] is not None:
    out["scores"] = _scores_by_position(result.kept_positions[i], result.scores[i], n)
  return out


def _scores_by_position(positions, scores, n: int) -> list[list[float | None]]:
  """Per layer, S~ at each of the `n` original positions (None where already dropped):
  layer l's scores are over the tokens layer l-1 ran on (all tokens for layer 0)."""
  dense, _ = cp_token_scores(positions, scores, n, fill=np.nan)
  return [[None if np.isnan(v) else v for v in layer] for layer in dense.tolist()]
