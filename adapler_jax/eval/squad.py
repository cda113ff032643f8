"""SQuAD v1.1 answers from span logits, and the official exact match and F1.

Post-processing follows Hugging Face's `postprocess_qa_predictions` for v1.1: in each window the
`n_best` highest start and end logits are paired; a pair is skipped unless both tokens are
context tokens, end >= start and the span is at most `max_answer_length` tokens; the pair with
the highest start + end logit over all of a question's windows gives the answer, cut from the
context through the tokens' character offsets.

The metric is the official v1.1 evaluation script's: answers are normalised (lower case, no
punctuation, no articles a/an/the, whitespace collapsed); exact match compares normalised
strings, F1 counts shared normalised tokens (a multiset overlap); each question scores its best
gold answer; both are percentages over all questions, a question without a prediction scoring 0.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple
from pathlib import Path

import numpy as np

from adapler_jax.data.squad import SpanFeatures, SquadDataset, SquadExample, windows_of
from adapler_jax.files import atomic_write_text

N_BEST = 20
MAX_ANSWER_LENGTH = 30
PREDICTIONS_FILE = "predictions.json"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """Lower case, punctuation removed, articles removed, whitespace collapsed (in that order)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
  """Token F1 of the normalised answers (0 when they share no token)."""
  pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
  same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(ref)
  return 2 * precision * recall / (precision + recall)


def question_scores(predictions: Mapping[str, str],
                    examples: SquadDataset | Sequence[SquadExample]) -> dict[str, np.ndarray]:
  """Per-question `{"exact_match", "f1"}` in [0, 1], in the order of `examples`, each on its
  best gold answer; a question without a prediction scores 0."""
  examples = examples.examples if isinstance(examples, SquadDataset) else examples
  if not examples:
    raise ValueError("no examples to score")
  em, f = np.zeros(len(examples)), np.zeros(len(examples))
  for i, e in enumerate(examples):
    if e.id in predictions:
      em[i] = max(exact_match(predictions[e.id], g) for g in e.answer_texts)
      f[i] = max(f1(predictions[e.id], g) for g in e.answer_texts)
  return {"exact_match": em, "f1": f}


def squad_metrics(predictions: Mapping[str, str],
                  examples: SquadDataset | Sequence[SquadExample]) -> dict[str, float]:
  """`{"exact_match", "f1"}` in percent over `examples`, each scored on its best gold answer."""
  return {k: 100.0 * float(v.mean()) for k, v in question_scores(predictions, examples).items()}


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
               n_best: int = N_BEST,
               max_answer_length: int = MAX_ANSWER_LENGTH) -> list[tuple[float, int, int]]:
  """Candidate `(score, start_char, end_char)` of one window, best first.

  `start_logits`, `end_logits`: (W,) over the window's positions; `offsets`: (>= W, 2) character
  spans, -1 outside the context.
  """
  width = min(len(start_logits), len(offsets))
  start_logits, end_logits, offsets = start_logits[:width], end_logits[:width], offsets[:width]
  starts = np.argsort(start_logits, kind="stable")[-1:-n_best - 1:-1]
  ends = np.argsort(end_logits, kind="stable")[-1:-n_best - 1:-1]
  out = []
  for s in starts:
    for e in ends:
      if offsets[s, 0] < 0 or offsets[e, 0] < 0 or e < s or e - s + 1 > max_answer_length:
        continue
      out.append((float(start_logits[s] + end_logits[e]), int(offsets[s, 0]), int(offsets[e, 1])))
  out.sort(key=lambda c: -c[0])
  return out


class Answer(NamedTuple):
  """A question's best span: its score (start + end logit) and `context[start:end]`."""
  text: str
  start: int
  end: int
  score: float


def best_answers(start_logits: np.ndarray, end_logits: np.ndarray, features: SpanFeatures,
                 n_best: int = N_BEST,
                 max_answer_length: int = MAX_ANSWER_LENGTH) -> dict[str, Answer | None]:
  """`{question id: Answer}` from per-window logits; None for a question without a valid span
  in any window.

  `start_logits`, `end_logits`: (num windows, W) in the rows of `features`, W <= max_length
  (positions past a window's length are ignored through its offsets).
  """
  start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
  if start_logits.shape != end_logits.shape or start_logits.shape[0] != len(features):
    raise ValueError(f"logits {start_logits.shape} and {end_logits.shape} do not match "
                     f"{len(features)} windows")
  answers = {}
  for example, rows in zip(features.examples.examples, windows_of(features)):
    candidates = [c for r in rows for c in best_spans(start_logits[r], end_logits[r],
                                                      features.offsets[r], n_best,
                                                      max_answer_length)]
    best = max(candidates, key=lambda c: c[0], default=None)
    answers[example.id] = None if best is None else Answer(
        example.context[best[1]:best[2]], best[1], best[2], best[0])
  return answers


def span_predictions(start_logits: np.ndarray, end_logits: np.ndarray, features: SpanFeatures,
                     n_best: int = N_BEST,
                     max_answer_length: int = MAX_ANSWER_LENGTH) -> dict[str, str]:
  """`{question id: answer text}` from per-window logits (see `best_answers`); a question
  without a valid span gets the empty answer."""
  answers = best_answers(start_logits, end_logits, features, n_best, max_answer_length)
  return {q: "" if a is None else a.text for q, a in answers.items()}


def predictions_text(predictions: Mapping[str, str]) -> str:
  """The official predictions file's text: a JSON object `{question id: answer text}`."""
  return json.dumps(dict(predictions), ensure_ascii=False, indent=1) + "\n"


def write_predictions(predictions: Mapping[str, str], directory: str | os.PathLike[str]) -> Path:
  """`predictions.json` (`{id: text}`, the official format) in `directory`; its path."""
  path = Path(directory) / PREDICTIONS_FILE
  atomic_write_text(path, predictions_text(predictions))
  return path


def gather_span_logits(batches: Iterable[tuple[np.ndarray, np.ndarray]], num_windows: int,
                       width: int) -> tuple[np.ndarray, np.ndarray]:
  """`(start, end)` logits, each (num_windows, width), from `(rows, logits (b, w, 2))` pairs of
  length-bucketed batches (e.g. `train.parallel.map_eval_batches`); positions past a batch's
  width hold -inf."""
  start = np.full((num_windows, width), -np.inf, np.float32)
  end = np.full((num_windows, width), -np.inf, np.float32)
  for rows, logits in batches:
    logits = np.asarray(logits)
    start[rows, :logits.shape[1]] = logits[..., 0]
    end[rows, :logits.shape[1]] = logits[..., 1]
  return start, end


def evaluate_span(start_logits: np.ndarray, end_logits: np.ndarray, features: SpanFeatures,
                  directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """Answers and the official EM / F1 (percent) of `features`' questions; with `directory`,
  the answers are written there as `predictions.json`. `metric` is F1 as a fraction, the
  scale of the classification metrics (checkpoint selection, tolerances)."""
  predictions = span_predictions(start_logits, end_logits, features)
  scores = squad_metrics(predictions, features.examples)
  out = {"num_questions": len(features.examples), "num_windows": len(features),
         "metric_name": "f1", "metric": scores["f1"] / 100.0, **scores}
  if directory is not None:
    out["predictions_file"] = str(write_predictions(predictions, directory))
  return out
