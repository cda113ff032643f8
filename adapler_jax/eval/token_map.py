"""Token maps: which tokens each layer of an AdapLeR model keeps, and their contribution scores.

In the style of the paper's Figures 4 and 6: one row per layer; the tokens that layer runs on
are highlighted with colour intensity proportional to their CP score S~ (scaled by the
largest score of that layer, so each row spans the full range); tokens the layer does not run
on are grey and struck through. Output as HTML (inline-styled spans, the score in each span's
tooltip) and as a PNG drawn with matplotlib.

  tmap = explain(cfg, params, tokenizer, "a gripping , funny film", label_names)
  write(tmap, "runs/sst2/explain")  # -> explain.html, explain.png
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adapler_jax import extras
from adapler_jax.eval import metrics
from adapler_jax.eval.rationale import cp_token_scores
from adapler_jax.models.adapler import AdapLeRConfig, hard_forward

COLOUR = (192, 57, 43)  # highlight colour of kept tokens (RGB).
GREY = "#9a9a9a"


@dataclasses.dataclass
class TokenMap:
  """Per-layer CP scores and kept tokens of one input (n tokens, L layers).

  Attributes:
    tokens: the n word pieces, [CLS] and [SEP] included.
    scores: (L, n) S~^l on the tokens entering layer l, 0 on tokens dropped before it.
    kept: (L, n) bool, the tokens layer l runs on.
    prediction: predicted class name (or index).
    probabilities: (C,) softmax of the logits.
    text: the input text.
    pieces: `(text, joins_previous)` per token as shown (`display_from_offsets`); None
      shows the tokens themselves (`display_tokens`).
  """
  tokens: list[str]
  scores: np.ndarray
  kept: np.ndarray
  prediction: str
  probabilities: np.ndarray
  text: str = ""
  pieces: list[tuple[str, bool]] | None = None

  @property
  def num_layers(self) -> int:
    return self.scores.shape[0]

  def display(self) -> list[tuple[str, bool]]:
    """`(text, joins_previous)` per token, as the maps show them."""
    return self.pieces if self.pieces is not None else display_tokens(self.tokens)

  def intensity(self) -> np.ndarray:
    """(L, n) scores scaled by each layer's largest score into [0, 1]."""
    top = np.max(self.scores, axis=1, keepdims=True)
    return np.divide(self.scores, top, out=np.zeros_like(self.scores), where=top > 0)


def explain(cfg: AdapLeRConfig, params: dict, tokenizer: Any, text: str,
            label_names: Sequence[str] | None = None, max_length: int = 512) -> TokenMap:
  """Hard removal on one text (`hard_forward`) recorded as a `TokenMap`; with a fast
  tokenizer, each token is shown as the span of `text` it covers (`display_from_offsets`)."""
  offsets = bool(getattr(tokenizer, "is_fast", False))
  enc = tokenizer(text, truncation=True, max_length=max_length, return_token_type_ids=True,
                  return_offsets_mapping=offsets, return_special_tokens_mask=offsets)
  ids = np.asarray(enc["input_ids"], np.int32)
  result = hard_forward(cfg, params, ids, np.asarray(enc["token_type_ids"], np.int32))
  scores, kept = cp_token_scores(result.kept_positions, result.scores, len(ids))
  probs = metrics.softmax(result.logits)
  pred = int(np.argmax(probs))
  name = label_names[pred] if label_names is not None else str(pred)
  tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
  pieces = (display_from_offsets(tokens, enc["offset_mapping"], text,
                                 enc["special_tokens_mask"]) if offsets else None)
  return TokenMap(tokens, scores, kept, name, probs, text, pieces)


def display_tokens(tokens: Sequence[str]) -> list[tuple[str, bool]]:
  """`(text, joins_previous)` per token: WordPiece continuations (`##x`) show as `x` glued on."""
  return [(t[2:], True) if t.startswith("##") and len(t) > 2 else (t, False) for t in tokens]


def display_from_offsets(tokens: Sequence[str], offsets: Sequence[tuple[int, int]],
                         text: str, special: Sequence[int]) -> list[tuple[str, bool]]:
  """`(text, joins_previous)` per token from the character span it covers in `text`: the
  words as written, whatever the tokenizer's pieces look like (WordPiece `##`, byte-level
  BPE's `Ġ` and byte symbols, SentencePiece's `▁`). A token joins the previous one when its
  span starts where that one's ends; special tokens (`special`, the tokenizer's special
  tokens mask) show as themselves, alone, and other tokens without a span (a lone space
  piece) as nothing."""
  shown, end = [], None
  for i, (token, (a, b)) in enumerate(zip(tokens, offsets)):
    if special[i]:
      shown.append((token, False))
      end = None
      continue
    if b <= a:
      shown.append(("", True))
      continue
    a = a if end is None else max(a, end)  # a character split over two pieces shows once.
    shown.append((text[a:b], end is not None and a == end))
    end = max(b, a)
  return shown


def _rgba(alpha: float) -> str:
  r, g, b = COLOUR
  return f"rgba({r},{g},{b},{alpha:.3f})"


def to_html(tmap: TokenMap, title: str | None = None) -> str:
  """A standalone HTML page: one row per layer, one inline-styled span per token."""
  intensity = tmap.intensity()
  rows = []
  for l in range(tmap.num_layers):
    spans = []
    for i, (text, glued) in enumerate(tmap.display()):
      sep = "" if glued else " "
      tip = f"{tmap.tokens[i]}: S~={tmap.scores[l, i]:.4f}"
      if tmap.kept[l, i]:
        alpha = 0.12 + 0.88 * intensity[l, i]
        colour = "#fff" if alpha > 0.6 else "#111"
        style = f"background:{_rgba(alpha)};color:{colour};padding:1px 2px;border-radius:3px"
      else:
        style = f"color:{GREY};text-decoration:line-through;padding:1px 2px"
      spans.append(f'{sep}<span class="tok" style="{style}" title="{html.escape(tip)}">'
                   f"{html.escape(text)}</span>")
    kept = int(tmap.kept[l].sum())
    rows.append(f'<tr><td style="white-space:nowrap;vertical-align:top;padding-right:12px;'
                f'color:#555">layer {l + 1}<br><small>{kept}/{len(tmap.tokens)} kept</small>'
                f'</td><td style="line-height:1.9">{"".join(spans).lstrip()}</td></tr>')
  probs = ", ".join(f"{p:.3f}" for p in tmap.probabilities)
  heading = html.escape(title or "AdapLeR token map")
  return (
      "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
      f"<title>{heading}</title></head>\n"
      "<body style=\"font-family:Menlo,Consolas,monospace;font-size:14px;max-width:70em\">\n"
      f"<h3>{heading}</h3>\n"
      f"<p>prediction: <b>{html.escape(tmap.prediction)}</b> (probabilities {probs}). "
      "Highlighted: tokens the layer runs on, colour intensity = contribution score "
      "(relative to the layer's largest); struck through: dropped.</p>\n"
      f"<table>\n{chr(10).join(rows)}\n</table>\n</body></html>\n")


def _layout(tmap: TokenMap, chars_per_line: int) -> list[list[tuple[int, float]]]:
  """Token index and start column (in characters) on each wrapped line of one layer row."""
  lines, line, col = [], [], 0.0
  for i, (text, glued) in enumerate(tmap.display()):
    start = col if glued or not line else col + 1
    if line and start + len(text) > chars_per_line and not glued:
      lines.append(line)
      line, start = [], 0.0
    line.append((i, start))
    col = start + len(text)
  if line:
    lines.append(line)
  return lines


def to_png(tmap: TokenMap, path: str | Path, title: str | None = None,
           chars_per_line: int = 84, dpi: int = 110) -> Path:
  """The token map drawn with matplotlib (Agg): layer rows, coloured kept tokens."""
  plt = extras.pyplot()
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top

  font = 9.0
  char_w, line_h, label_w = 0.6 * font / 72, 1.75 * font / 72, 0.95  # inches.
  lines = _layout(tmap, chars_per_line)
  display = tmap.display()
  width = label_w + chars_per_line * char_w + 0.2
  block = len(lines) * line_h + 0.12
  head = 0.55
  height = head + tmap.num_layers * block + 0.1
  fig = plt.figure(figsize=(width, height), dpi=dpi)
  ax = fig.add_axes((0, 0, 1, 1))
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)
  ax.axis("off")
  heading = title or "AdapLeR token map"
  ax.text(0.1, 0.22, heading, fontsize=font + 1.5, fontweight="bold", va="center")
  ax.text(0.1, 0.43, f"prediction: {tmap.prediction}  |  highlighted: kept, intensity = "
          "CP score (per layer)  |  struck: dropped", fontsize=font - 1, va="center",
          color="#444")
  intensity = tmap.intensity()
  for l in range(tmap.num_layers):
    top = head + l * block
    ax.text(0.1, top + line_h / 2, f"layer {l + 1}", fontsize=font, va="center", color="#333")
    ax.text(0.1, top + 1.4 * line_h, f"{int(tmap.kept[l].sum())}/{len(tmap.tokens)} kept",
            fontsize=font - 2, va="center", color="#777")
    for row, line in enumerate(lines):
      y = top + row * line_h + line_h / 2
      for i, col in line:
        text = display[i][0]
        x = label_w + col * char_w
        w = len(text) * char_w
        if tmap.kept[l, i]:
          alpha = 0.12 + 0.88 * float(intensity[l, i])
          ax.add_patch(Rectangle((x - 0.01, y - 0.42 * line_h), w + 0.02, 0.84 * line_h,
                                 facecolor=np.asarray(COLOUR) / 255, alpha=alpha,
                                 edgecolor="none"))
          colour = "white" if alpha > 0.6 else "#111"
          ax.text(x, y, text, fontsize=font, family="monospace", va="center", color=colour)
        else:
          ax.text(x, y, text, fontsize=font, family="monospace", va="center", color=GREY)
          ax.plot([x, x + w], [y, y], color=GREY, linewidth=0.7)
    if l < tmap.num_layers - 1:
      ax.axhline(top + block - 0.05, color="#e5e5e5", linewidth=0.6)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  _save_palette_png(fig, path, dpi)
  plt.close(fig)
  return path


def _save_palette_png(fig, path: Path, dpi: int, colours: int = 64) -> None:
  """Saves `fig` as an 8-bit palette PNG (a few colours suffice: text and flat boxes)."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=dpi, format="png")
  buffer.seek(0)
  image = Image.open(buffer).convert("RGB").quantize(colors=colours)
  image.save(path, format="PNG", optimize=True)


def write(tmap: TokenMap, stem: str | Path, title: str | None = None) -> tuple[Path, Path]:
  """Writes `<stem>.html` and `<stem>.png`; returns both paths."""
  stem = Path(stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  html_path = stem.with_name(stem.name + ".html")
  html_path.write_text(to_html(tmap, title), encoding="utf-8")
  return html_path, to_png(tmap, stem.with_name(stem.name + ".png"), title)
