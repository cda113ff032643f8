"""Tokenization of a `TextDataset` into fixed-width numpy arrays with a fast tokenizer."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import numpy as np

from adapler_jax.data.dataset import TextDataset

CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class TokenizedDataset:
  """Token ids of a dataset, padded to `max_length`.

  Attributes:
    input_ids: (n, max_length) int32, padded with the tokenizer's pad id.
    token_type_ids: (n, max_length) int32 segment ids (1 on the second text of a pair).
    lengths: (n,) int32 real tokens per row, [CLS] and [SEP] included.
    labels: (n,) int32 class indices; (n, 2) start and end tokens for span tasks
      (`data.squad.SpanFeatures`); None for unlabelled texts.
    ids: example ids, as in the `TextDataset`.
    task: task name.
    pad_id: the tokenizer's padding id.
    rationale_mask: (n, max_length) bool, tokens of the ground-truth rationale words; None when
      the dataset has no rationales.
    word_ids: (n, max_length) int32, index of the whitespace-separated word of the first text
      each token starts in (-1 on special tokens, the second text and padding); set together
      with `rationale_mask`, for word-level rationale scores.
    char_spans: (n, max_length, 3) int32 `(text, start, end)` per token: which of the row's
      texts it comes from (0, or 1 for a pair's second) and its characters `[start, end)`
      there; -1 on special tokens and padding. Set by `tokenize(..., char_spans=True)`.
  """
  input_ids: np.ndarray
  token_type_ids: np.ndarray
  lengths: np.ndarray
  labels: np.ndarray | None
  ids: list[str]
  task: str = ""
  pad_id: int = 0
  rationale_mask: np.ndarray | None = None
  word_ids: np.ndarray | None = None
  char_spans: np.ndarray | None = None

  # Names of extra per-row arrays (attributes) that batches carry; those of shape
  # (n, max_length, ...) are cut to the batch's width.
  row_fields: ClassVar[tuple[str, ...]] = ()

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def max_length(self) -> int:
    return self.input_ids.shape[1]



def valid_mask(lengths: np.ndarray, max_length: int) -> np.ndarray:
  """(n, max_length) bool: True on the first `lengths[i]` positions of row i."""
  return np.asarray(lengths)[:, None] > np.arange(max_length)


def _token_words(text: str, offsets: np.ndarray, first_segment: np.ndarray) -> np.ndarray:
  """Index of the whitespace-separated word of `text` each token starts in (by character
  offsets); -1 for tokens outside `first_segment` or without characters."""
  char_word = np.full(len(text) + 1, -1, np.int64)
  for w, m in enumerate(re.finditer(r"\S+", text)):
    char_word[m.start():m.end()] = w
  starts, ends = offsets[:, 0], offsets[:, 1]
  return np.where((ends > starts) & first_segment, char_word[starts], -1)



def token_char_spans(sequence_ids, offsets, shift: tuple[int, ...] = (0, 0)) -> np.ndarray:
  """(n, 3) int32 `(text, start, end)` of n tokens from one encoding's `sequence_ids()`
  and `offset_mapping`: -1 where the sequence id is None (special tokens, padding); text
  i's offsets move by `shift[i]` (characters stripped before tokenizing)."""
  text = np.asarray([-1 if s is None else s for s in sequence_ids], np.int32)
  offsets = np.asarray(offsets, np.int32).reshape(-1, 2)
  offsets = offsets + np.asarray(shift, np.int32)[np.maximum(text, 0)][:, None]
  return np.where((text >= 0)[:, None], np.concatenate([text[:, None], offsets], axis=1), -1)


def tokenize(dataset: TextDataset, tokenizer: Any, max_length: int, *,
             char_spans: bool = False) -> TokenizedDataset:
  """Tokenize (pairs with `'longest_first'` truncation) and pad every row to `max_length`.

  `tokenizer` is a Hugging Face fast tokenizer; rows are encoded in batches of `CHUNK`.
  When the dataset has rationales, token offsets give `rationale_mask` and `word_ids`;
  `char_spans` keeps each token's characters (`TokenizedDataset.char_spans`).
  """
  n = len(dataset)
  pad_id = int(tokenizer.pad_token_id or 0)
  input_ids = np.full((n, max_length), pad_id, np.int32)
  token_type_ids = np.zeros((n, max_length), np.int32)
  lengths = np.zeros((n,), np.int32)
  with_rationales = dataset.rationales is not None
  rationale_mask = np.zeros((n, max_length), bool) if with_rationales else None
  word_ids = np.full((n, max_length), -1, np.int32) if with_rationales else None
  spans = np.full((n, max_length, 3), -1, np.int32) if char_spans else None
  for lo in range(0, n, CHUNK):
    hi = min(lo + CHUNK, n)
    parts = [t[lo:hi] for t in dataset.texts]
    enc = tokenizer(*parts, truncation="longest_first", max_length=max_length,
                    padding="max_length", return_tensors="np", return_token_type_ids=True,
                    return_attention_mask=True,
                    return_offsets_mapping=with_rationales or char_spans)
    input_ids[lo:hi] = enc["input_ids"]
    token_type_ids[lo:hi] = enc["token_type_ids"]
    lengths[lo:hi] = enc["attention_mask"].sum(axis=1)
    if with_rationales:
      for j, i in enumerate(range(lo, hi)):  # sequence ids, not token types: RoBERTa's are 0.
        first = np.array([s == 0 for s in enc.sequence_ids(j)])
        word_ids[i] = _token_words(dataset.texts[0][i], enc["offset_mapping"][j], first)
        rationale_mask[i] = np.isin(word_ids[i], dataset.rationales[i]) & (word_ids[i] >= 0)
    if char_spans:
      for j, i in enumerate(range(lo, hi)):
        spans[i] = token_char_spans(enc.sequence_ids(j), enc["offset_mapping"][j])
  labels = None if dataset.labels is None else dataset.labels.copy()
  return TokenizedDataset(input_ids=input_ids, token_type_ids=token_type_ids, lengths=lengths,
                          labels=labels, ids=list(dataset.ids), task=dataset.task,
                          pad_id=pad_id, rationale_mask=rationale_mask, word_ids=word_ids,
                          char_spans=spans)
