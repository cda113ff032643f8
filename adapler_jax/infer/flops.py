"""FLOPs accounting for full-length, AdapLeR and LAT inference (README, "FLOPs").

Counts are per example, from its unpadded length and the real number of
tokens each layer runs on. One multiply-add counts as 2 FLOPs.

Two modes:

* ``"analytic"``: counted from the model shape (`FlopsDims`).
  - layer at n tokens: ``2n(4H^2 + 2HI)`` for the Q/K/V/output and FFN matmuls
    plus ``4n^2 H`` for the attention scores and the attention-weighted sum;
  - contribution predictor before a layer, on the ``n_in`` tokens entering it
    (Dense H->32, Dense 32->1): ``2 n_in (32H + 32)``;
  - embeddings, once, on all n input tokens: ``8nE`` (two additions of the
    word/position/type vectors and a layer norm, counted as 6 ops per element), E the
    embedding width (H but for ELECTRA), plus ``2nEH`` for ELECTRA's projection to H;
  - head: classification, once, on [CLS]: ``2H^2 + 2HC`` (pooler dense + output dense);
    span QA (`head="span"`), Dense H->2 at each of the n positions of the restored
    sequence, no pooler: ``4nH``.
  Biases, softmax, GELU, residual additions and the layer norms inside layers are not
  counted.
* ``"paper"``: the reference implementation's constants fitted on BERT-base
  (12 layers, H=768), for comparison with the paper's numbers:
  backbone ``37872 n^2 + 170216500 n + 1181953 + 1537 C``; AdapLeR
  ``1182000 + 1537 C + 6152 n_1 + sum_l (3156 n_l^2 + 14233554 n_l)`` (classification
  only: the constants include the pooler).

Speedup is the ratio of totals over examples (not a mean of ratios).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

MODES = ("analytic", "paper")
HEADS = ("classification", "span")
PAPER_NUM_LAYERS = 12


@dataclasses.dataclass(frozen=True)
class FlopsDims:
  """Model shape needed to count FLOPs; `head` is "classification" or "span" (span QA);
  `embedding_size` the width of the embeddings when they are projected to `hidden`
  (ELECTRA), else None."""

  num_layers: int
  hidden: int
  intermediate: int
  num_classes: int
  cp_hidden: int = 32
  head: str = "classification"
  embedding_size: int | None = None

  def __post_init__(self):
    if self.head not in HEADS:
      raise ValueError(f"head {self.head!r} is not one of {', '.join(HEADS)}")

  @classmethod
  def from_config(cls, cfg: Any, num_classes: int | None = None,
                  head: str = "classification", cp_hidden: int | None = None) -> FlopsDims:
    """Reads the shape from any config object with the usual attribute names.

    Uses ``num_layers`` (or HF's ``num_hidden_layers``), ``hidden_size``,
    ``intermediate_size``, ``embedding_size`` (when present and not ``hidden_size``),
    ``num_classes`` (or ``num_labels``) and ``cp_hidden`` (default 32) unless
    `num_classes` or `cp_hidden` is given.
    """
    num_layers = getattr(cfg, "num_layers", None)
    if num_layers is None:
      num_layers = getattr(cfg, "num_hidden_layers")
    if num_classes is None:
      num_classes = getattr(cfg, "num_classes", None)
    if num_classes is None:
      num_classes = getattr(cfg, "num_labels", None)
    if num_classes is None:
      raise ValueError(
          f"{type(cfg).__name__} has no num_classes or num_labels; pass "
          "num_classes= to FlopsDims.from_config")
    return cls(
        num_layers=int(num_layers),
        hidden=int(cfg.hidden_size),
        intermediate=int(cfg.intermediate_size),
        num_classes=int(num_classes),
        cp_hidden=int(getattr(cfg, "cp_hidden", 32) if cp_hidden is None else cp_hidden),
        head=head,
        embedding_size=_projected_width(cfg),
    )

  @classmethod
  def of_model(cls, cfg: Any) -> FlopsDims:
    """The shape of a model config with an `encoder`, `num_labels` and `head`
    (`ClassifierConfig`, `AdapLeRConfig`)."""
    return cls.from_config(cfg.encoder, num_classes=cfg.num_labels,
                           head=getattr(cfg, "head", "classification"),
                           cp_hidden=getattr(cfg, "cp_hidden", 32))


# ---------------------------------------------------------------------------
# Analytic counts (scalars; the same formulas work elementwise on numpy arrays).


def _wide(n):
  """Integer array counts as int64: their products with the model's sizes overflow int32
  from a few hundred tokens (BERT-base), silently. Python ints are exact as they are; JAX
  integer arrays (traced ones too) become float32, which does not wrap."""
  if hasattr(n, "dtype") and np.issubdtype(n.dtype, np.integer) and n.dtype.itemsize < 8:
    if isinstance(n, (np.ndarray, np.generic)):
      return np.asarray(n, np.int64)
    return n.astype(np.float32)
  return n


def layer_flops(n, hidden: int, intermediate: int, n_ffn=None):
  """One encoder layer on n tokens: matmuls plus attention scores and mixing.

  With `n_ffn`, the feed-forward block runs on that many tokens instead (attention-
  significance selection keeps them after the attention sub-layer):
  2n(4H^2) + 4n^2 H for attention, 2 n_ffn (2HI) for the feed-forward block.
  """
  n = _wide(n)
  n_ffn = n if n_ffn is None else _wide(n_ffn)
  return 2 * n * 4 * hidden**2 + 4 * n**2 * hidden + 2 * n_ffn * 2 * hidden * intermediate


def grid_cost(rows: int, width: int, hidden: int, intermediate: int) -> float:
  """Multiply-adds of one layer over a (rows, width) grid, padding included: what a
  batched engine pays (its planners compare grids by this)."""
  return float(rows * layer_flops(width, hidden, intermediate) // 2)


def predictor_flops(n_in, hidden: int, cp_hidden: int = 32):
  """Contribution predictor (Dense H->cp_hidden, Dense cp_hidden->1) on n_in tokens."""
  return 2 * _wide(n_in) * (cp_hidden * hidden + cp_hidden)


def _projected_width(cfg: Any) -> int | None:
  """The embedding width of a config whose embeddings are projected to `hidden_size`."""
  width = getattr(cfg, "embedding_size", None)
  return None if width in (None, cfg.hidden_size) else int(width)


def embedding_flops(n, hidden: int, embedding_size: int | None = None):
  """Embedding sum (2 additions) and layer norm (6 ops) per element: 8nE, E =
  `embedding_size` or `hidden`; with an `embedding_size`, also the projection to
  `hidden` (ELECTRA): 2nEH."""
  n = _wide(n)
  if embedding_size is None or embedding_size == hidden:
    return 8 * n * hidden
  return 8 * n * embedding_size + 2 * n * embedding_size * hidden


def classifier_flops(hidden: int, num_classes: int) -> int:
  """Pooler dense (H->H) and output dense (H->C) on the [CLS] vector."""
  return 2 * hidden**2 + 2 * hidden * num_classes


def head_flops(n, dims: FlopsDims):
  """The task head of an example of n tokens: the classifier on [CLS], or for span QA
  Dense H->2 at every position (the restored sequence, no pooler): 4nH."""
  if dims.head == "span":
    return 2 * _wide(n) * dims.hidden * 2
  return classifier_flops(dims.hidden, dims.num_classes)


def backbone_flops(length: int, dims: FlopsDims) -> int:
  """Full model on the unpadded length: every layer runs on all tokens."""
  return (embedding_flops(length, dims.hidden, dims.embedding_size)
          + dims.num_layers * layer_flops(length, dims.hidden, dims.intermediate)
          + head_flops(length, dims))


def adapler_flops(kept_per_layer, length, dims: FlopsDims):
  """AdapLeR model: layer l runs on kept_per_layer[l] tokens.

  The predictor of layer l runs on the tokens entering layer l: `length` for
  l = 0, kept_per_layer[l - 1] afterwards. Elementwise over examples: `kept_per_layer`
  (..., L) with `length` (...); an int for one example given as ints.
  """
  kept, n = np.asarray(kept_per_layer), np.asarray(length)
  if kept.shape[-1] != dims.num_layers:
    raise ValueError(
        f"kept_per_layer has {kept.shape[-1]} entries; the model has "
        f"{dims.num_layers} layers")
  entering = np.concatenate([n[..., None], kept[..., :-1]], axis=-1)
  per_layer = (predictor_flops(entering, dims.hidden, dims.cp_hidden)
               + layer_flops(kept, dims.hidden, dims.intermediate))
  total = (embedding_flops(n, dims.hidden, dims.embedding_size) + np.sum(per_layer, axis=-1)
           + head_flops(n, dims))
  return total.item() if total.ndim == 0 else total


def selection_flops(lengths, kept, dims: FlopsDims):
  """Per example FLOPs under attention-significance selection: layer l attends over the
  tokens that entered it (n, then kept[l-1]) and runs its feed-forward block on kept[l].

  lengths (E,), kept (E, L) -> (E,) float64 (no predictors: selection reads attention).
  """
  n = np.asarray(lengths, np.float64)
  k = np.asarray(kept, np.float64)
  entering = np.concatenate([n[:, None], k[:, :-1]], axis=1)
  h, i = dims.hidden, dims.intermediate
  return (embedding_flops(n, h, dims.embedding_size) + head_flops(n, dims)
          + np.sum(layer_flops(entering, h, i, k), axis=1))


def selection_cost(lengths, kept, config, base: int, dims: FlopsDims) -> dict[str, float]:
  """A length config's cost as fractions of the full model, in both conventions:
  `padded_fraction`, LAT MACs at the padded `base`; `actual_fraction`, real-token FLOPs of
  examples of `lengths` (E,) that kept `kept` (E, L) tokens per layer."""
  lengths, kept = _checked_counts(lengths, kept, dims.num_layers, "the model")
  full = float(np.sum(backbone_flops(np.asarray(lengths, np.float64), dims)))
  return {"padded_fraction": lat_macs(config, base, dims) / lat_macs(None, base, dims),
          "actual_fraction": float(np.sum(selection_flops(lengths, kept, dims))) / full}


def lat_macs(config: Sequence[int] | None, length: int, dims: FlopsDims,
             head: str | None = None) -> int:
  """Multiply-accumulates at the padded `length`, batch 1: the LAT paper's convention
  ("FLOPs" in its tables are these MACs, counted as torchprofile does).

  Embedding LayerNorm T*e, e the embedding width (d but for ELECTRA, whose embeddings
  also take T*e*d for their projection to d); per layer, at the previous length p and kept length k:
  4pd^2 + 2p^2 d + pd (projections, QK^T, AV, LayerNorm) + 2kd*d_ff + kd (FFN, LayerNorm);
  the head (classification d^2 + dC on [CLS]; span QA 2Td); T for the mask. BERT-base QA
  at 384 counts 35,340,779,904 in full. `config` None is the full model; `head` None is
  `dims.head`.
  """
  head = dims.head if head is None else head
  t, d, f = int(length), dims.hidden, dims.intermediate
  config = [t] * dims.num_layers if config is None else [int(c) for c in config]
  if len(config) != dims.num_layers:
    raise ValueError(f"length config {tuple(config)} has {len(config)} entries; the model has "
                     f"{dims.num_layers} layers: give one length per layer")
  e = dims.embedding_size or d
  total, prev = t * e + (t * e * d if e != d else 0), t
  for k in config:
    total += 4 * prev * d * d + 2 * prev * prev * d + prev * d + 2 * k * d * f + k * d
    prev = k
  if head == "classification":
    total += d * d + d * dims.num_classes
  elif head == "span":
    total += 2 * t * d
  else:
    raise ValueError(f"head {head!r} is not 'classification' or 'span'")
  return total + t


# ---------------------------------------------------------------------------
# The reference's fitted BERT-base constants.


def paper_backbone_flops(length, num_classes: int):
  """Reference backbone FLOPs for BERT-base at length n."""
  n = _wide(length)
  return 37_872 * n**2 + 170_216_500 * n + 1_181_953 + 1_537 * num_classes


def paper_adapler_flops(kept_per_layer, length, num_classes: int):
  """Reference AdapLeR FLOPs for BERT-base; n_1 = length, n_l = kept counts. Elementwise
  over examples as `adapler_flops`."""
  k = _wide(np.asarray(kept_per_layer))
  total = (1_182_000 + 1_537 * num_classes + 6_152 * _wide(np.asarray(length))
           + np.sum(3_156 * k**2 + 14_233_554 * k, axis=-1))
  return total.item() if total.ndim == 0 else total


# ---------------------------------------------------------------------------
# Totals over examples.


def speedup(backbone_total: float, adapler_total: float) -> float:
  """FLOPs speedup as a ratio of totals over examples."""
  if adapler_total <= 0:
    raise ValueError(f"adapler_total must be positive, got {adapler_total}")
  return float(backbone_total) / float(adapler_total)


def _per_example(lengths: np.ndarray, kept: np.ndarray, dims: FlopsDims,
                 mode: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-example (backbone, adapler) FLOPs as float64 arrays of shape (E,)."""
  n = lengths.astype(np.float64)
  k = kept.astype(np.float64)
  if mode == "paper":
    if dims.head != "classification":
      raise ValueError("the paper's FLOPs constants are fitted on BERT-base classification; "
                       "count a span QA model with mode='analytic'")
    return (paper_backbone_flops(n, dims.num_classes),
            paper_adapler_flops(k, n, dims.num_classes))
  return backbone_flops(n, dims), adapler_flops(k, n, dims)


def _checked_counts(lengths, kept, num_layers: int, expects: str
                    ) -> tuple[np.ndarray, np.ndarray]:
  """`lengths` (E,) and `kept` (E, L) as arrays; ValueError unless they pair up, L is
  `num_layers` (`expects` names who expects it) and no count exceeds its input."""
  lengths, kept = np.asarray(lengths), np.asarray(kept)
  if lengths.ndim != 1 or kept.ndim != 2 or kept.shape[0] != lengths.shape[0]:
    raise ValueError(f"expected lengths (E,) and kept (E, L); got {lengths.shape} and "
                     f"{kept.shape}")
  if lengths.shape[0] == 0:
    raise ValueError("no examples to count FLOPs over")
  if kept.shape[1] != num_layers:
    raise ValueError(f"kept has counts for {kept.shape[1]} layers; {expects} expects "
                     f"{num_layers}")
  if np.any(kept > lengths[:, None]):
    raise ValueError("kept counts exceed the input length for some examples")
  return lengths, kept


def flops_report(lengths: Any, kept: Any, dims: FlopsDims,
                 mode: str = "analytic") -> dict[str, Any]:
  """FLOPs totals and speedup over a set of examples.

  Args:
    lengths: (E,) unpadded input lengths (CLS and SEP included).
    kept: (E, L) tokens each layer ran on, per example.
    dims: model shape; in "paper" mode only `num_classes` is used.
    mode: "analytic" or "paper".

  Returns:
    dict with `backbone_flops` and `adapler_flops` (totals over examples),
    `flops_speedup` (their ratio) and `kept_tokens_per_layer` (mean per layer).
  """
  if mode not in MODES:
    raise ValueError(f"unknown FLOPs mode {mode!r}; options: {', '.join(MODES)}")
  num_layers = PAPER_NUM_LAYERS if mode == "paper" else dims.num_layers
  lengths, kept = _checked_counts(
      lengths, kept, num_layers,
      f"{mode} mode" + ("" if mode == "analytic" else " (BERT-base constants); use "
                        "mode='analytic'"))
  backbone, adapler = _per_example(lengths, kept, dims, mode)
  backbone_total = float(backbone.sum())
  adapler_total = float(adapler.sum())
  return {
      "backbone_flops": backbone_total,
      "adapler_flops": adapler_total,
      "flops_speedup": speedup(backbone_total, adapler_total),
      "kept_tokens_per_layer": kept.mean(axis=0).tolist(),
  }
