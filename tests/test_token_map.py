"""Token maps: per-layer kept tokens and CP scores as HTML and PNG."""

import html
import re

import jax
import numpy as np
import pytest

from adapler_jax.eval import token_map
from adapler_jax.models import adapler
from adapler_jax.models.bert import EncoderConfig

TEXT = "an unbelievably gripping film , with <tags> & jokes that land"


@pytest.fixture(scope="module")
def tmap(tokenizer):
  cfg = adapler.AdapLeRConfig(EncoderConfig.tiny(vocab_size=30522, num_layers=3),
                              num_labels=2, eta_init=1.0)
  params = adapler.init(jax.random.key(0), cfg)
  return token_map.explain(cfg, params, tokenizer, TEXT, ("negative", "positive"))


def test_explain_records_hard_removal(tmap, tokenizer):
  assert tmap.tokens == tokenizer.convert_ids_to_tokens(tokenizer(TEXT)["input_ids"])
  assert tmap.scores.shape == tmap.kept.shape == (3, len(tmap.tokens))
  assert tmap.kept[:, 0].all()  # [CLS] always stays.
  assert np.all(tmap.kept[1:] <= tmap.kept[:-1])  # a dropped token never comes back.
  np.testing.assert_allclose(tmap.scores.sum(axis=1), 1.0, atol=1e-5)
  assert tmap.prediction in ("negative", "positive")
  intensity = tmap.intensity()
  assert intensity.min() >= 0 and np.allclose(intensity.max(axis=1), 1.0)


def test_html_has_every_token_and_one_row_per_layer(tmap):
  page = token_map.to_html(tmap, "tiny")
  assert page.count("<tr>") == 3
  assert [int(m) for m in re.findall(r">layer (\d+)<", page)] == [1, 2, 3]
  spans = re.findall(r'<span class="tok" style="([^"]*)"[^>]*>([^<]*)</span>', page)
  assert len(spans) == 3 * len(tmap.tokens)
  shown = [text for _, text in spans[:len(tmap.tokens)]]
  assert shown == [html.escape(t) for t, _ in tmap.display()]
  assert "&lt;" in page and "<tags>" not in page  # text is escaped.
  struck = [("line-through" in style) for style, _ in spans]
  assert struck == (~tmap.kept).ravel().tolist()


def test_display_tokens_glue_word_pieces():
  assert token_map.display_tokens(["[CLS]", "un", "##real", "##", "[SEP]"]) == [
      ("[CLS]", False), ("un", False), ("real", True), ("##", False), ("[SEP]", False)]


def test_words_show_as_written(tmap):
  """A fast tokenizer's offsets give each token the text it covers: pieces of a word glued,
  the case and punctuation as typed, special tokens alone."""
  shown = tmap.display()
  assert shown[0] == ("[CLS]", False) and shown[-1] == ("[SEP]", False)
  words = "".join((" " if i and not glued else "") + t for i, (t, glued) in enumerate(shown[1:-1]))
  assert words == TEXT
  assert any(glued for _, glued in shown)  # "unbelievably" is several pieces.


def test_byte_level_bpe_pieces_show_as_words():
  """RoBERTa's byte-level BPE marks a leading space with `Ġ` and writes non-ASCII bytes as
  symbols (`é` as `Ã©`): the map shows the words instead."""
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["a cafe charming", "bleak journey"] * 5, vocab_size=280,
                          min_frequency=1, special_tokens=["<s>", "<pad>", "</s>"])
  bpe.post_processor = tokenizers.processors.RobertaProcessing(
      ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")), trim_offsets=True)
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>",
                                              eos_token="</s>", pad_token="<pad>")
  text = "a café's charming, unflinchingly bleak journey"
  enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
  tokens = tok.convert_ids_to_tokens(enc["input_ids"])
  assert any(t.startswith("\u0120") for t in tokens)  # Ġ: the raw pieces are unreadable.
  shown = token_map.display_from_offsets(tokens, enc["offset_mapping"], text,
                                         enc["special_tokens_mask"])
  assert shown[0] == ("<s>", False) and shown[-1] == ("</s>", False)
  words = "".join((" " if i and not glued else "") + t for i, (t, glued) in enumerate(shown[1:-1]))
  assert words == text


def test_write_html_and_png(tmap, tmp_path):
  html_path, png_path = token_map.write(tmap, tmp_path / "maps" / "explain", "tiny")
  assert html_path.name == "explain.html" and png_path.name == "explain.png"
  assert html_path.read_text().startswith("<!doctype html>")
  data = png_path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
