"""ERASER Movie Reviews (DeYoung et al., 2020): reviews, POS/NEG labels and human evidence.

Local layout (the original `movies.tar.gz` extracted; `data_dir` may be the folder holding
`movies/` or `movies/` itself)::

  movies/{train,val,test}.jsonl   one annotation per line: `annotation_id` (= the review's file
                                  name), `classification` (NEG / POS), `evidences` (groups of
                                  spans with `start_token` / `end_token`)
  movies/docs/<annotation_id>     the review: lower-cased, tokenized, one sentence per line

Evidence spans index the review's whitespace tokens ("words", sentences flattened), end
exclusive. Labels: NEG = 0, POS = 1. Project split names: `train`, `dev` (val.jsonl), `test`.

Reviews are ~770 words on average, longer than one input, so each review is cut into windows,
one example per window (id `<annotation_id>#<k>`), each with the review's label and the
evidence words inside it as its rationale (word indices into the window's text).

Window rule (exact). With budget B = max_length - 2 word pieces ([CLS] and [SEP] take the
other two) and each word's piece count from the tokenizer (`piece_counts`: for byte-level
BPE, the larger of the word bare and after a space):

1. Windows are consecutive, do not overlap and together cover the review.
2. A cut (a window end) e is *allowed* when no evidence span [a, b) has a < e < b: cuts never
   fall inside an evidence span.
3. From start s, let `fit` be the largest e with pieces(s..e) <= B. If the review ends within
   `fit`, the window runs to the end. Otherwise the window ends at the last allowed sentence end
   in (s, fit] if it keeps at least half of `fit - s` words, else at the last allowed word
   boundary in (s, fit].
4. If no cut in (s, fit] is allowed (one evidence span longer than a whole window, possible only
   for small max_length), the window ends at `fit` and that span is split: counted in
   `WindowStats.split_spans`.

Without a tokenizer every word counts as `FALLBACK_PIECES_PER_WORD` pieces (a conservative
bound for BERT vocabularies on these lower-cased, pre-tokenized reviews; rare windows may
then still exceed max_length and be truncated); pass the tokenizer for exact windows.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from adapler_jax.data.dataset import TextDataset
from adapler_jax.data.readers import folder_problem, read_jsonl, read_utf8
from adapler_jax.errors import DataError, format_message, location

SPLIT_FILES = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}
LABELS = {"NEG": 0, "POS": 1}
FALLBACK_PIECES_PER_WORD = 2
TASK = "eraser_movies"


@dataclasses.dataclass(frozen=True)
class Review:
  """One annotated review.

  Attributes:
    docid: the annotation id (the review's file name, e.g. `negR_000.txt`).
    words: the whitespace tokens of the review, sentences flattened.
    sentence_ends: (num_sentences,) int, index after each sentence's last word.
    label: 0 (NEG) or 1 (POS).
    spans: evidence spans `(start, end)` over `words`, end exclusive, sorted.
  """
  docid: str
  words: list[str]
  sentence_ends: np.ndarray
  label: int
  spans: list[tuple[int, int]]

  def evidence_words(self) -> np.ndarray:
    """Sorted unique word indices covered by any evidence span."""
    if not self.spans:
      return np.zeros((0,), np.int32)
    return np.unique(np.concatenate([np.arange(a, b) for a, b in self.spans])).astype(np.int32)


@dataclasses.dataclass
class WindowStats:
  """What the windowing did to a split (for reports and tests)."""
  reviews: int = 0
  windows: int = 0
  split_spans: int = 0
  windows_without_evidence: int = 0


def movies_dir(data_dir: str | os.PathLike[str] | None) -> Path:
  """The folder holding `train.jsonl` and `docs/`: `data_dir` itself or its `movies/`."""
  fix = ("pass the folder of the extracted ERASER movies.tar.gz (e.g. data/"
         "eraser_movies) with --config.data.data_dir")
  if data_dir is None or str(data_dir) == "":
    raise DataError(format_message("eraser_movies", "has no hub loader here", fix))
  root = Path(data_dir)
  for candidate in (root, root / "movies"):
    if (candidate / "docs").is_dir() and any((candidate / f).is_file()
                                             for f in SPLIT_FILES.values()):
      return candidate
  problem = (folder_problem(root) if not root.is_dir() else
             f"{root} holds neither docs/ + train.jsonl nor movies/docs/")
  raise DataError(format_message("eraser_movies", problem, fix))


def read_document(path: Path) -> tuple[list[str], np.ndarray]:
  """Words (whitespace tokens, sentences flattened) and sentence end indices of a doc."""
  words, ends = [], []
  for line in read_utf8(path).splitlines():
    tokens = line.split()
    if tokens:
      words.extend(tokens)
      ends.append(len(words))
  return words, np.asarray(ends, np.int64)


def _token_index(value: Any) -> int | None:
  """A word index as the files hold it (an int; 3.0 or "3" from a re-export), else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
    return int(value)
  return None


def _spans(record: dict[str, Any], docid: str, num_words: int, where: str
           ) -> list[tuple[int, int]]:
  spans = set()
  groups = record.get("evidences") or []
  if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
    raise DataError(format_message(where, "'evidences' is not a list of lists of evidence "
                                   "objects", "use the original ERASER files"))
  for group in groups:
    for ev in group:
      if not isinstance(ev, dict):
        raise DataError(format_message(where, f"evidence {ev!r} is not an object",
                                       "use the original ERASER files"))
      if ev.get("docid", docid) != docid:
        continue
      a, b = (_token_index(ev.get(k)) for k in ("start_token", "end_token"))
      if a is None or b is None:
        raise DataError(format_message(
            where, f"evidence start_token {ev.get('start_token')!r} / end_token "
            f"{ev.get('end_token')!r} are not integers", "use the original ERASER files"))
      if a == b:
        continue  # an empty span (the test split has a few) marks no word.
      if not 0 <= a < b <= num_words:
        raise DataError(format_message(where, f"evidence span [{a}, {b}) is outside the "
                                       f"{num_words} words of {docid}",
                                       "use the original ERASER files"))
      spans.add((a, b))
  return sorted(spans)


def read_reviews(data_dir: str | os.PathLike[str] | None, split: str) -> list[Review]:
  """The annotated reviews of `split` (`train`, `dev` or `test`), in file order."""
  if split not in SPLIT_FILES:
    raise DataError(f"task 'eraser_movies' has no split '{split}'; "
                    f"use one of {', '.join(SPLIT_FILES)}")
  root = movies_dir(data_dir)
  path = root / SPLIT_FILES[split]
  if not path.is_file():
    raise DataError(format_message(f"eraser_movies {split}", f"expected file {path} not found",
                                   "use the original ERASER folder"))
  reviews = []
  for where, record in read_jsonl(path):
    for key in ("annotation_id", "classification"):
      if key not in record:
        raise DataError(format_message(where, f"no key {key!r}", "use the original ERASER files"))
    docid, label = str(record["annotation_id"]), str(record["classification"])
    if label not in LABELS:
      raise DataError(format_message(where, f"label {label!r} is not one of {list(LABELS)}",
                                     "fix the label or remove the row"))
    doc = root / "docs" / docid
    if not doc.is_file():
      raise DataError(format_message(where, f"document {location(doc)} not found",
                                     "use the original ERASER folder with its docs/"))
    words, ends = read_document(doc)
    reviews.append(Review(docid, words, ends, LABELS[label],
                          _spans(record, docid, len(words), where)))
  if not reviews:
    raise DataError(format_message(str(path), f"split '{split}' has no examples",
                                   "use the original ERASER files"))
  return reviews


def piece_counts(reviews: list[Review], tokenizer: Any | None) -> list[np.ndarray]:
  """Word pieces per word of every review (the fallback bound without a tokenizer).

  A window's text joins its words with spaces, so a word is tokenized after a space, or
  bare where it starts the window. WordPiece splits the two alike; byte-level BPE (RoBERTa)
  does not (`were` and `Ġwere` may differ in pieces), so each word counts the larger of the
  two and a window never holds more pieces than its budget."""
  if tokenizer is None:
    return [np.full(len(r.words), FALLBACK_PIECES_PER_WORD, np.int64) for r in reviews]
  out = []
  for lo in range(0, len(reviews), 256):
    chunk = reviews[lo:lo + 256]
    counts = [_word_pieces(tokenizer, [[p + w for w in r.words] for r in chunk])
              for p in ("", " ")]
    out.extend(np.maximum(bare, spaced) for bare, spaced in zip(*counts))
  return out


def _word_pieces(tokenizer: Any, reviews: list[list[str]]) -> list[np.ndarray]:
  enc = tokenizer(reviews, is_split_into_words=True, add_special_tokens=False,
                  truncation=False, verbose=False)
  return [np.bincount(np.asarray([w for w in enc.word_ids(i) if w is not None], np.int64),
                      minlength=len(words)) for i, words in enumerate(reviews)]


def window_bounds(pieces: np.ndarray, spans: list[tuple[int, int]], sentence_ends: np.ndarray,
                  budget: int) -> tuple[list[tuple[int, int]], int]:
  """Windows `[(start, end), ...]` of one review by the module's rule, and spans split.

  Args:
    pieces: (num_words,) word pieces per word.
    spans: evidence spans `(start, end)`, end exclusive.
    sentence_ends: index after each sentence's last word.
    budget: pieces per window (max_length - 2).
  """
  if budget < 1:
    raise ValueError(f"window budget must be >= 1 piece, got {budget}")
  num_words = len(pieces)
  allowed = np.ones(num_words + 1, bool)  # allowed[e]: a cut before word e.
  for a, b in spans:
    allowed[a + 1:b] = False
  is_sentence_end = np.zeros(num_words + 1, bool)
  is_sentence_end[np.asarray(sentence_ends, np.int64)] = True
  cumulative = np.concatenate([[0], np.cumsum(pieces)])
  windows, split, start = [], 0, 0
  while start < num_words:
    fit = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
    fit = max(fit, start + 1)  # a single word above the budget still gets its own window.
    if fit >= num_words:
      end = num_words
    else:
      cuts = np.flatnonzero(allowed[start + 1:fit + 1]) + start + 1
      sentence_cuts = cuts[is_sentence_end[cuts]]
      if len(sentence_cuts) and sentence_cuts[-1] - start >= (fit - start) / 2:
        end = int(sentence_cuts[-1])
      elif len(cuts):
        end = int(cuts[-1])
      else:
        end, split = fit, split + 1
    windows.append((start, end))
    start = end
  return windows, split


def windows_dataset(reviews: list[Review], counts: list[np.ndarray], max_length: int,
                    split: str, source: str) -> tuple[TextDataset, WindowStats]:
  """One example per window of every review, with the evidence words as rationales."""
  stats = WindowStats(reviews=len(reviews))
  ids, texts, labels, rationales = [], [], [], []
  for review, pieces in zip(reviews, counts):
    bounds, split_spans = window_bounds(pieces, review.spans, review.sentence_ends,
                                        max_length - 2)
    stats.split_spans += split_spans
    evidence = review.evidence_words()
    for k, (a, b) in enumerate(bounds):
      inside = evidence[(evidence >= a) & (evidence < b)] - a
      ids.append(f"{review.docid}#{k}")
      texts.append(" ".join(review.words[a:b]))
      labels.append(review.label)
      rationales.append(inside.astype(np.int32))
      stats.windows += 1
      stats.windows_without_evidence += int(len(inside) == 0)
  dataset = TextDataset(ids=ids, texts=(texts,), labels=np.asarray(labels, np.int32), task=TASK,
                        source=f"{source} ({split}, windows of <= {max_length} tokens)",
                        rationales=rationales)
  return dataset, stats


def load_eraser(data_dir: str | os.PathLike[str] | None, split: str, *,
                tokenizer: Any | None = None, max_length: int = 512,
                return_stats: bool = False):
  """ERASER movie reviews of `split` cut into windows that fit `max_length` tokens.

  Args:
    data_dir: the ERASER movies folder (or its parent).
    split: `train`, `dev` or `test`.
    tokenizer: a Hugging Face fast tokenizer sizing windows in word pieces (recommended).
    max_length: the model's input length, [CLS] and [SEP] included.
    return_stats: also return the `WindowStats`.
  Returns:
    A `TextDataset` (one row per window; `rationales` = evidence word indices in the
    window's text), and the stats when asked.
  """
  reviews = read_reviews(data_dir, split)
  counts = piece_counts(reviews, tokenizer)
  dataset, stats = windows_dataset(reviews, counts, max_length, split,
                                   str(movies_dir(data_dir) / SPLIT_FILES[split]))
  return (dataset, stats) if return_stats else dataset


def review_of(example_id: str) -> str:
  """The review (annotation id) a window id `<annotation_id>#<k>` comes from."""
  return example_id.rsplit("#", 1)[0]
