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
  assert shown == [html.escape(t) for t, _ in token_map.display_tokens(tmap.tokens)]
  assert "&lt;" in page and "<tags>" not in page  # text is escaped.
  struck = [("line-through" in style) for style, _ in spans]
  assert struck == (~tmap.kept).ravel().tolist()


def test_display_tokens_glue_word_pieces():
  assert token_map.display_tokens(["[CLS]", "un", "##real", "##", "[SEP]"]) == [
      ("[CLS]", False), ("un", False), ("real", True), ("##", False), ("[SEP]", False)]


def test_write_html_and_png(tmap, tmp_path):
  html_path, png_path = token_map.write(tmap, tmp_path / "maps" / "explain", "tiny")
  assert html_path.name == "explain.html" and png_path.name == "explain.png"
  assert html_path.read_text().startswith("<!doctype html>")
  data = png_path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
