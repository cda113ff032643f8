"""ERASER movie reviews: reading, windows that never split evidence, word -> word-piece rationales."""

import json
import re

import numpy as np
import pytest

from adapler_jax import data
from adapler_jax.data import eraser
from adapler_jax.errors import DataError

# ----------------------------------------------------------------------------- windows


def test_window_bounds_hand_example():
  # 10 one-piece words, budget 4, evidence [2, 5), sentences end after words 3, 6, 10.
  windows, split = eraser.window_bounds(np.ones(10, int), [(2, 5)], np.array([3, 6, 10]), 4)
  # From 0 the cuts 3 and 4 fall inside the span: cut at 2. From 2: sentence end 6 fits.
  assert windows == [(0, 2), (2, 6), (6, 10)] and split == 0


def test_window_bounds_prefers_sentence_ends_and_counts_pieces():
  pieces = np.array([1, 1, 1, 1, 1, 3, 1, 1, 1, 1])
  windows, _ = eraser.window_bounds(pieces, [], np.array([3, 10]), 6)
  assert windows[0] == (0, 3)  # sentence end 3 keeps >= half of the 5 words that fit.
  windows, _ = eraser.window_bounds(pieces, [], np.array([1, 10]), 6)
  assert windows[0] == (0, 5)  # sentence end 1 would waste the window: last word boundary.
  assert all(pieces[a:b].sum() <= 6 for a, b in windows)


def test_window_bounds_splits_only_spans_longer_than_a_window():
  windows, split = eraser.window_bounds(np.ones(8, int), [(1, 7)], np.array([8]), 3)
  assert split >= 1 and windows[0] == (0, 1) and windows[-1][1] == 8


def test_window_bounds_properties_on_random_reviews():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 120))
    pieces = rng.integers(1, 4, n)
    starts = np.sort(rng.choice(n, size=min(n, 4), replace=False))
    spans = [(int(a), int(min(n, a + rng.integers(1, 6)))) for a in starts]
    ends = np.unique(np.r_[rng.integers(1, n + 1, 6), n])
    budget = int(rng.integers(16, 40))
    windows, split = eraser.window_bounds(pieces, spans, ends, budget)
    assert split == 0 and windows[0][0] == 0 and windows[-1][1] == n
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(windows, windows[1:]))
    assert all(pieces[a:b].sum() <= budget for a, b in windows)
    for _, e in windows[:-1]:
      assert not any(a < e < b for a, b in spans)


# ----------------------------------------------------------------------------- files


def _write_movies(root, rows, docs):
  (root / "docs").mkdir(parents=True)
  for name, text in docs.items():
    (root / "docs" / name).write_text(text)
  for split, file in eraser.SPLIT_FILES.items():
    (root / file).write_text("".join(json.dumps(r) + "\n" for r in rows.get(split, [])))


def _evidence(docid, a, b):
  return {"docid": docid, "start_token": a, "end_token": b, "start_sentence": -1,
          "end_sentence": -1, "text": ""}


@pytest.fixture()
def small_movies(tmp_path):
  docs = {"negR_1.txt": "a dull film .\nvery dull indeed .\n",
          "posR_2.txt": "a truly great ride .\n"}
  rows = {"dev": [
      {"annotation_id": "negR_1.txt", "classification": "NEG",
       "evidences": [[_evidence("negR_1.txt", 1, 2)], [_evidence("negR_1.txt", 4, 6)]]},
      {"annotation_id": "posR_2.txt", "classification": "POS", "docids": None,
       "evidences": [[_evidence("posR_2.txt", 1, 3), _evidence("posR_2.txt", 2, 2)]]}]}
  _write_movies(tmp_path / "movies", rows, docs)
  return tmp_path


def test_load_split_reads_labels_windows_and_rationales(small_movies, tokenizer):
  ds = data.load_split("eraser_movies", "dev", small_movies)  # the parent of movies/ works.
  assert ds.ids == ["negR_1.txt#0", "posR_2.txt#0"] and ds.labels.tolist() == [0, 1]
  assert ds.texts[0] == ["a dull film . very dull indeed .", "a truly great ride ."]
  assert [r.tolist() for r in ds.rationales] == [[1, 4, 5], [1, 2]]  # empty span ignored.
  # Windows of 6 tokens (4 pieces): the second sentence's evidence [4, 6) is never cut.
  small = data.load_split("eraser_movies", "dev", small_movies / "movies", tokenizer=tokenizer,
                          max_length=6)
  assert small.ids[:2] == ["negR_1.txt#0", "negR_1.txt#1"]
  assert small.texts[0][:2] == ["a dull film .", "very dull indeed ."]
  assert [r.tolist() for r in small.rationales[:2]] == [[1], [0, 1]]


@pytest.mark.parametrize("evidences,problem", [
    ([[{"end_token": 2}]], "evidence start_token None / end_token 2 are not integers"),
    ([[{"start_token": "x", "end_token": 2}]], "evidence start_token 'x' / end_token 2 are not "
     "integers"),
    ([{"start_token": 0, "end_token": 2}], "'evidences' is not a list of lists of evidence "
     "objects"),
    ([["negR_1.txt"]], "evidence 'negR_1.txt' is not an object")])
def test_malformed_evidence_is_one_line(tmp_path, evidences, problem):
  rows = {"dev": [{"annotation_id": "negR_1.txt", "classification": "NEG",
                   "evidences": evidences}]}
  _write_movies(tmp_path / "movies", rows, {"negR_1.txt": "a dull film .\n"})
  with pytest.raises(DataError) as err:
    data.load_split("eraser_movies", "dev", tmp_path)
  assert str(err.value) == f"movies/val.jsonl line 1: {problem}; use the original ERASER files"


def test_token_bounds_of_a_re_export_read_and_a_file_is_not_the_folder(tmp_path):
  rows = {"dev": [{"annotation_id": "negR_1.txt", "classification": "NEG",
                   "evidences": [[_evidence("negR_1.txt", 1.0, "3")]]}]}  # e.g. via pandas.
  _write_movies(tmp_path / "movies", rows, {"negR_1.txt": "a dull film .\n"})
  assert data.load_split("eraser_movies", "dev", tmp_path).rationales[0].tolist() == [1, 2]
  val = tmp_path / "movies" / "val.jsonl"
  with pytest.raises(DataError, match=re.escape(
      f"eraser_movies: data folder {val} is a file, not the folder that holds it")):
    data.load_split("eraser_movies", "dev", val)


def test_missing_folder_and_hub_are_one_line_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.load_split("eraser_movies", "dev", tmp_path / "nope")
  with pytest.raises(DataError, match="no hub loader"):
    data.load_split("eraser_movies", "dev")
  with pytest.raises(DataError, match="has no split 'validation'"):
    data.load_split("eraser_movies", "validation", tmp_path)


# ----------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def movies(shared_data):
  path = shared_data / "eraser_movies"
  if not (path / "movies" / "docs").is_dir():
    pytest.skip(f"{path}/movies is absent")
  return path


def test_real_row_counts(movies):
  counts = {s: len(eraser.read_reviews(movies, s)) for s in ("train", "dev", "test")}
  assert counts == {"train": 1600, "dev": 200, "test": 199}
  labels = np.array([r.label for r in eraser.read_reviews(movies, "dev")])
  assert np.bincount(labels).tolist() == [100, 100]


def test_real_windows_fit_keep_spans_and_map_evidence_to_pieces(movies, tokenizer):
  reviews = {r.docid: r for r in eraser.read_reviews(movies, "dev")}
  ds, stats = eraser.load_eraser(movies, "dev", tokenizer=tokenizer, max_length=512,
                                 return_stats=True)
  assert stats.reviews == 200 and stats.split_spans == 0 and stats.windows == len(ds) > 200
  tok = data.tokenize(ds, tokenizer, 512)
  words = [t.split() for t in ds.texts[0]]
  # No window is truncated: its last word still has a token.
  assert all(tok.word_ids[i].max() == len(w) - 1 for i, w in enumerate(words))
  # Per review, windows tile the words and carry every evidence word exactly once.
  offsets, rebuilt = {}, {}
  for i, example_id in enumerate(ds.ids):
    doc = eraser.review_of(example_id)
    start = offsets.get(doc, 0)
    rebuilt.setdefault(doc, []).extend((ds.rationales[i] + start).tolist())
    offsets[doc] = start + len(words[i])
  for doc, review in reviews.items():
    assert offsets[doc] == len(review.words)
    assert rebuilt[doc] == review.evidence_words().tolist()
  # The rationale pieces of a window are exactly the pieces of its evidence words.
  for i in range(0, len(ds), 7):
    marked = tok.input_ids[i][tok.rationale_mask[i]]
    expected = tokenizer([words[i][w] for w in ds.rationales[i]], is_split_into_words=True,
                         add_special_tokens=False)["input_ids"]
    assert marked.tolist() == expected


def test_real_known_span_maps_to_its_pieces(movies, tokenizer):
  # negR_000.txt (train) has the evidence "mind - fuck movie" at words [63, 67).
  review = next(r for r in eraser.read_reviews(movies, "train") if r.docid == "negR_000.txt")
  assert (63, 67) in review.spans and review.words[63:67] == ["mind", "-", "fuck", "movie"]
  counts = eraser.piece_counts([review], tokenizer)[0]
  ds, _ = eraser.windows_dataset([review], [counts], 512, "train", "test")
  tok = data.tokenize(ds, tokenizer, 512)
  first = tok.word_ids[0]
  pieces = tokenizer.convert_ids_to_tokens(tok.input_ids[0][np.isin(first, [63, 64, 65, 66])])
  assert pieces == ["mind", "-", "fuck", "movie"]
  assert tok.rationale_mask[0][np.isin(first, [63, 64, 65, 66])].all()


def test_byte_level_bpe_windows_fit_their_budget():
  """Byte-level BPE splits a word after a space (`Ġwere`) unlike the same word bare (`were`),
  and a window's text puts a space before every word but its first: each word counts the
  larger, so no window outgrows max_length (counted bare, 10 of these words made 19 pieces
  in a budget of 10)."""
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["were", "they", "here"] * 5, vocab_size=270, min_frequency=1)
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe)
  assert len(tok(" were", add_special_tokens=False)["input_ids"]) == 2  # Ġ, were.
  words = ["were", "they", "here"] * 14
  review = eraser.Review("d.txt", words, np.asarray([len(words)]), 1, [])
  counts = eraser.piece_counts([review], tok)
  ds, _ = eraser.windows_dataset([review], counts, 12, "dev", "test")
  pieces = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in ds.texts[0]]
  assert max(pieces) <= 10 and sum(len(t.split()) for t in ds.texts[0]) == len(words)
  assert len(ds) == 9  # 5 words a window (the last 2), where 10 fit the bare counts.
