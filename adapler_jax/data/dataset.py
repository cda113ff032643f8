"""Text datasets in memory: one row per example, plus seeded subsets and re-splits."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from adapler_jax.errors import DataError


def first_repeat(ids: Iterable[Any]) -> Any | None:
  """The first id that comes a second time, or None."""
  seen = set()
  for i in ids:
    if i in seen:
      return i
    seen.add(i)
  return None


def check_unique_ids(ids: Iterable[Any], source: str) -> None:
  """One-line DataError naming `source` when an id appears twice."""
  twice = first_repeat(ids)
  if twice is not None:
    raise DataError(f"{source}: example id {twice!r} appears more than once; give every row "
                    "its own id")


@dataclasses.dataclass(frozen=True)
class TextDataset:
  """Texts of one split, labelled or not.

  Attributes:
    ids: stable, unique example ids.
    texts: one list of strings (single text) or two (sentence pair), each of length n.
    labels: (n,) int32 class indices, or None for unlabelled texts (prediction input).
    task: task name.
    source: where the rows came from (file, hub id, generator, re-split), for reports.
    rationales: optional ground truth, per example the int32 indices of the
      whitespace-separated words of `texts[0]` that carry the label.
  """
  ids: list[str]
  texts: tuple[list[str], ...]
  labels: np.ndarray | None
  task: str
  source: str
  rationales: list[np.ndarray] | None = None

  def __post_init__(self):
    if self.labels is not None:
      object.__setattr__(self, "labels", np.asarray(self.labels, np.int32))
    n = len(self.ids)
    if len(self.texts) not in (1, 2):
      raise ValueError(f"texts must hold 1 or 2 lists, got {len(self.texts)}")
    if any(len(t) != n for t in self.texts) or (self.labels is not None
                                                and self.labels.shape != (n,)):
      raise ValueError("ids, texts and labels must have the same length")
    if self.rationales is not None and len(self.rationales) != n:
      raise ValueError("rationales must have one entry per example")
    check_unique_ids(self.ids, self.source)

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def is_pair(self) -> bool:
    return len(self.texts) == 2

  @property
  def is_labelled(self) -> bool:
    return self.labels is not None

  def take(self, indices: Sequence[int] | np.ndarray, source: str | None = None) -> TextDataset:
    """The rows at `indices`, in that order."""
    idx = np.asarray(indices, np.int64)
    return TextDataset(
        ids=[self.ids[i] for i in idx],
        texts=tuple([t[i] for i in idx] for t in self.texts),
        labels=None if self.labels is None else self.labels[idx],
        task=self.task,
        source=self.source if source is None else source,
        rationales=None if self.rationales is None else [self.rationales[i] for i in idx])


def subset_indices(size: int, n: int, seed: int) -> np.ndarray:
  """The sorted rows `subset` draws: `n` of `size` without replacement with `seed`."""
  return np.sort(np.random.default_rng(seed).choice(size, size=n, replace=False))


def subset(dataset: TextDataset, n: int, seed: int) -> TextDataset:
  """`n` rows drawn without replacement with `seed`, kept in file order (all rows if n >= len)."""
  if n >= len(dataset):
    return dataset
  return dataset.take(subset_indices(len(dataset), n, seed),
                      f"{dataset.source} (subset of {n} rows, seed {seed})")


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random order whose every prefix holds the classes in (near) their overall proportions."""
  perm = rng.permutation(len(labels))
  key = np.empty(len(labels), np.float64)
  for c in np.unique(labels):
    rows = perm[labels[perm] == c]
    key[rows] = (np.arange(len(rows)) + 0.5) / len(rows)
  return perm[np.argsort(key[perm], kind="stable")]


def resplit(dataset: TextDataset, train_size: int, test_size: int, seed: int,
            stratify: bool = True) -> tuple[TextDataset, TextDataset]:
  """Disjoint seeded `(train, test)` re-split of one split's rows, each kept in file order.

  With `stratify`, both parts keep the class proportions (exactly, when they divide evenly);
  unlabelled rows are split without it.
  """
  if train_size < 0 or test_size < 0 or train_size + test_size > len(dataset):
    raise DataError(f"{dataset.source}: cannot re-split {len(dataset)} rows into "
                    f"{train_size} train + {test_size} test; lower the sizes")
  rng = np.random.default_rng(seed)
  order = (_stratified_order(dataset.labels, rng) if stratify and dataset.is_labelled
           else rng.permutation(len(dataset)))
  test_idx = np.sort(order[:test_size])
  train_idx = np.sort(order[test_size:test_size + train_size])
  note = f"re-split of {dataset.source} (seed {seed}, {train_size} train / {test_size} test)"
  return (dataset.take(train_idx, f"{note}: train part"),
          dataset.take(test_idx, f"{note}: test part"))
