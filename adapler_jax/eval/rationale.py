"""Agreement of per-layer token importance with human rationales (paper §5.3, Figure 5).

Every method gives, for each example and layer l = 0..L-1 (plotted as layer l + 1), a soft
score and a binary selection per token. Both are taken to word level (the whitespace words of
the text, which the human rationales mark) and compared with the rationale words:

* word score: the sum of the word's token scores ([CLS], [SEP], padding and the second text of
  a pair are not words); a word is selected when any of its tokens is.
* AP: average precision of the word scores, one precision-recall point per distinct score
  (tied words enter together, so a method that scores every word the same gets the base rate).
* FPR: selected non-rationale words / non-rationale words.
* mAP and FPR per layer are means over examples. An example without rationale words has no AP
  and one without other words has no FPR: each is left out of that mean only.

Methods (token scores of layer l):

* `CP`: the AdapLeR model's contribution scores S~^l over the tokens entering layer l; a token
  dropped at an earlier layer scores 0 there (the layer no longer sees it). Selection: the
  tokens layer l runs on, i.e. those hard removal keeps (S~ >= eta^l / n).
* `Attention`: the fine-tuned backbone's attention of layer l, [CLS] row, mean over heads.
* `Rollout` (Abnar & Zuidema, 2020): with A_k layer k's head-mean attention,
  Ã_k = (A_k + I) / 2 with rows renormalised, R_l = Ã_l Ã_{l-1} ... Ã_0; the [CLS] row of R_l.
* `Saliency`: gradient x input at the input of layer l, `|| (d logit_c / d h^l) * h^l ||_2`
  per token (h^0 is the embedding output, as in phase 2), c the backbone's predicted class
  (or the gold one), normalised to sum 1 over the example's tokens.

The baselines select with the uniform threshold. By default their scores are restricted to
the text tokens (those of words: [CLS], [SEP] left out, since attention parks much of its mass
on them and rollout keeps half of [CLS] on itself), renormalised to sum 1, and a token is
selected when its share is >= 1 / m, m the number of text tokens. With
`include_special=True` the scores stay over all n tokens (each method sums to 1 over them) and
the threshold is 1 / n. The renormalisation does not change AP (a per-example scale).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax import extras
from adapler_jax.data import TokenizedDataset, eval_batches
from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text
from adapler_jax.models import walk
from adapler_jax.models.bert import (EncoderConfig, Embeddings, attention_bias_from_mask,
                                     attention_probs)
from adapler_jax.models.heads import ClassificationHead
from adapler_jax.train import parallel

CP, ATTENTION, ROLLOUT, SALIENCY = "CP", "Attention", "Rollout", "Saliency"
BASELINES = (ATTENTION, ROLLOUT, SALIENCY)
METHODS = (CP, *BASELINES)


# ----------------------------------------------------------------------------- metrics


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
  """AP of `scores` (n,) against bool `truth` (n,); NaN without positives.

  AP = sum_k (R_k - R_{k-1}) P_k over the distinct scores in decreasing order, P_k and R_k the
  precision and recall of "score >= k-th distinct score".
  """
  scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
  positives = int(truth.sum())
  if positives == 0:
    return math.nan
  order = np.argsort(-scores, kind="stable")
  scores, truth = scores[order], truth[order]
  tp, fp = np.cumsum(truth), np.cumsum(~truth)
  last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]  # end of each tie group.
  tp, fp = tp[last], fp[last]
  precision, recall = tp / (tp + fp), tp / positives
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def random_average_precision(positives: int, total: int) -> float:
  """Expected AP of a uniformly random ranking of `total` items with `positives` positives.

  E[AP] = (H_N + (P - 1) / (N - 1) * (N - H_N)) / N, with H_N the N-th harmonic number
  (the precision at a positive's rank r averages (1 + (P - 1)(r - 1) / (N - 1)) / r).
  """
  if positives == 0:
    return math.nan
  n = total
  harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
  rest = (positives - 1) / (n - 1) * (n - harmonic) if n > 1 else 0.0
  return (harmonic + rest) / n


def false_positive_rate(selected: np.ndarray, truth: np.ndarray) -> float:
  """Selected negatives / negatives for bool `selected`, `truth` (n,); NaN without negatives."""
  selected, truth = np.asarray(selected, bool), np.asarray(truth, bool)
  negatives = int((~truth).sum())
  return math.nan if negatives == 0 else float((selected & ~truth).sum() / negatives)


def recall(selected: np.ndarray, truth: np.ndarray) -> float:
  """Selected positives / positives; NaN without positives."""
  selected, truth = np.asarray(selected, bool), np.asarray(truth, bool)
  positives = int(truth.sum())
  return math.nan if positives == 0 else float((selected & truth).sum() / positives)


# ----------------------------------------------------------------------------- word level


def word_index(word_ids: np.ndarray) -> tuple[np.ndarray, int]:
  """Token -> dense word index (-1 for non-word tokens) and the number of words present.

  `word_ids` (n,) is `TokenizedDataset.word_ids` of one example; words without a token (cut
  by truncation) are not counted.
  """
  word_ids = np.asarray(word_ids)
  is_word = word_ids >= 0
  present, dense = np.unique(word_ids[is_word], return_inverse=True)
  out = np.full(word_ids.shape, -1, np.int64)
  out[is_word] = dense
  return out, len(present)


def to_words(token_values: np.ndarray, index: np.ndarray, num_words: int) -> np.ndarray:
  """Per-word sums of `token_values` (..., n) -> (..., num_words) (bool: any)."""
  values = np.asarray(token_values)
  is_word = index >= 0
  flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
  out = np.stack([np.bincount(index[is_word], weights=row[is_word], minlength=num_words)
                  for row in flat]).reshape(*values.shape[:-1], num_words)
  return out > 0 if values.dtype == bool else out


def layer_agreement(scores: np.ndarray, selected: np.ndarray, word_ids: np.ndarray,
                    rationale_mask: np.ndarray) -> dict[str, np.ndarray]:
  """AP, FPR and recall per layer of one example.

  Args:
    scores: (L, n) float token scores. selected: (L, n) bool token selections.
    word_ids: (n,) word of each token (-1: not a word). rationale_mask: (n,) bool.
  Returns:
    `ap`, `fpr`, `recall`, `selected_fraction` (selected words / words), each (L,).
  """
  index, num_words = word_index(word_ids)
  truth = to_words(np.asarray(rationale_mask, bool), index, num_words)
  word_scores = to_words(np.asarray(scores, np.float64), index, num_words)
  word_selected = to_words(np.asarray(selected, bool), index, num_words)
  return {
      "ap": np.asarray([average_precision(s, truth) for s in word_scores]),
      "fpr": np.asarray([false_positive_rate(s, truth) for s in word_selected]),
      "recall": np.asarray([recall(s, truth) for s in word_selected]),
      "selected_fraction": word_selected.mean(axis=-1) if num_words else
                           np.full(len(word_selected), math.nan),
  }


def _nanmean(rows: np.ndarray) -> list[float | None]:
  """Column means ignoring NaN; None for an all-NaN column (JSON-safe)."""
  counts = np.sum(~np.isnan(rows), axis=0)
  sums = np.nansum(rows, axis=0)
  return [float(s / c) if c else None for s, c in zip(sums, counts)]


def aggregate(per_example: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
  """Means over examples of `layer_agreement` outputs: `map`, `fpr`, `recall`, ... per layer."""
  out: dict[str, Any] = {}
  for key, name in (("ap", "map"), ("fpr", "fpr"), ("recall", "recall"),
                    ("selected_fraction", "selected_fraction")):
    rows = np.stack([e[key] for e in per_example])
    out[name] = _nanmean(rows)
  out["examples_with_ap"] = int(np.sum(~np.isnan(np.stack([e["ap"][0] for e in per_example]))))
  out["examples_with_fpr"] = int(np.sum(~np.isnan(np.stack([e["fpr"][0] for e in per_example]))))
  return out


# ----------------------------------------------------------------------------- CP scores


def cp_token_scores(kept_positions: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                    n: int, *, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Dense per-layer CP scores and selections of one example from hard removal.

  Args:
    kept_positions: per layer, the positions layer l runs on (`EngineResult.kept_positions`).
    scores: per layer, S~ over the tokens entering layer l, in position order.
    n: the example's token count.
  Returns:
    scores (L, n): S~^l on the tokens entering layer l, `fill` on tokens dropped before it;
    selected (L, n) bool: the tokens layer l runs on.
  """
  num_layers = len(kept_positions)
  dense = np.full((num_layers, n), fill, np.float64)
  selected = np.zeros((num_layers, n), bool)
  entering = np.arange(n)
  for l in range(num_layers):
    dense[l, entering] = scores[l]
    selected[l, kept_positions[l]] = True
    entering = np.asarray(kept_positions[l])
  return dense, selected


def uniform_selection(scores: np.ndarray, n: int) -> np.ndarray:
  """Tokens scoring at least the uniform share 1 / n (bool, same shape)."""
  return np.asarray(scores) >= 1.0 / n - 1e-12


def baseline_selection(scores: np.ndarray, is_text: np.ndarray, include_special: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Scores (L, n) and uniform-threshold selections of a baseline for one example.

  Without `include_special`, scores are zeroed off the text tokens (`is_text` (n,)) and
  renormalised per layer; the threshold is 1 / (number of text tokens).
  """
  scores = np.asarray(scores, np.float64)
  if include_special:
    return scores, uniform_selection(scores, scores.shape[-1])
  m = int(np.sum(is_text))
  if m == 0:
    return np.zeros_like(scores), np.zeros(scores.shape, bool)
  scores = np.where(is_text, scores, 0.0)
  scores = scores / np.maximum(scores.sum(axis=-1, keepdims=True), 1e-300)
  return scores, uniform_selection(scores, m) & np.asarray(is_text, bool)


# ----------------------------------------------------------------------------- baselines


def rollout(attention: jax.Array) -> jax.Array:
  """Attention rollout of head-mean attention (L, ..., N, N) -> (L, ..., N, N) products.

  Each layer's matrix is mixed with the identity for the residual, (A + I) / 2, rows
  renormalised, then multiplied onto the product of the layers below: R_l = Ã_l R_{l-1}.
  """
  eye = jnp.eye(attention.shape[-1], dtype=attention.dtype)
  mixed = 0.5 * attention + 0.5 * eye
  mixed = mixed / jnp.sum(mixed, axis=-1, keepdims=True)

  def step(product, a):
    product = a @ product
    return product, product

  init = jnp.broadcast_to(eye, attention.shape[1:])
  _, products = jax.lax.scan(step, init, mixed)
  return products


def layer_saliency(encoder: EncoderConfig, num_labels: int, params: dict, batch: dict,
                   target: str = "predicted") -> jax.Array:
  """Gradient x input at the input of every layer: (L, B, N), each row summing to 1.

  Args:
    params: a classifier `{"bert", "head"}` (or an AdapLeR `model` subtree).
    batch: `input_ids`, `token_type_ids` (B, N), `attention_mask` (B, N), and `labels` (B,)
      when `target == "gold"`.
    target: "predicted" (the class the model picks) or "gold".
  """
  mask = batch["attention_mask"].astype(bool)
  bias = attention_bias_from_mask(mask)
  layers = walk.param_layers(encoder, params["bert"])
  h0 = Embeddings(encoder).apply({"params": params["bert"]["embeddings"]},
                                 batch["input_ids"], batch["token_type_ids"])

  def target_logit(taps):
    x, _, trace = walk.walk(layers, h0, bias, _Taps(taps))
    logits = ClassificationHead(encoder, num_labels).apply({"params": params["head"]}, x)
    cls = (jnp.argmax(logits, axis=-1) if target == "predicted" else batch["labels"])
    gold = jnp.take_along_axis(logits, cls[:, None].astype(jnp.int32), axis=-1)
    return jnp.sum(gold), trace["inputs"]

  taps = jnp.zeros((encoder.num_layers, *h0.shape), h0.dtype)
  grads, inputs = jax.grad(target_logit, has_aux=True)(taps)
  sal = jnp.linalg.norm((grads * inputs).astype(jnp.float32), axis=-1)
  sal = jnp.where(mask, sal, 0.0)
  return sal / jnp.maximum(jnp.sum(sal, axis=-1, keepdims=True), 1e-30)


class _Taps(walk.Policy):
  """No reduction; adds a zero tap to each layer's input (its gradient is the gradient at
  that input) and records the inputs."""

  def __init__(self, taps):
    self.taps = taps

  def before_layer(self, l, x, ctx):
    x = x + self.taps[l]
    return x, ctx, {"inputs": x}


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def baseline_scores(encoder: EncoderConfig, num_labels: int, params: dict, batch: dict,
                    target: str = "predicted") -> dict[str, jax.Array]:
  """Token scores of the three baselines for a padded batch: name -> (L, B, N)."""
  mask = batch["attention_mask"].astype(bool)
  probs = attention_probs(encoder, params["bert"], batch["input_ids"], batch["token_type_ids"],
                          attention_bias_from_mask(mask))
  heads_mean = jnp.mean(probs, axis=2)  # (L, B, N, N)
  keep = mask[None].astype(heads_mean.dtype)
  return {
      ATTENTION: heads_mean[..., 0, :] * keep,
      ROLLOUT: rollout(heads_mean)[..., 0, :] * keep,
      SALIENCY: layer_saliency(encoder, num_labels, params, batch, target),
  }


def backbone_token_scores(encoder: EncoderConfig, num_labels: int, params: dict,
                          data: TokenizedDataset, *, batch_size: int = 8,
                          target: str = "predicted", progress: bool = False
                          ) -> dict[str, list[np.ndarray]]:
  """Baseline scores of every example: name -> per example an (L, n) array, dataset order."""
  out = {name: [None] * len(data) for name in BASELINES}
  batches = eval_batches(data, batch_size)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    batches = tqdm(batches, total=-(-len(data) // batch_size), desc="baselines", leave=False)
  def dispatched():
    for batch in batches:
      keys = ("input_ids", "token_type_ids", "attention_mask", "labels")
      yield batch, baseline_scores(encoder, num_labels, params, {k: batch[k] for k in keys},
                                   target)

  for batch, scores in parallel.read_behind(dispatched()):
    for r in np.flatnonzero(batch["real"]):
      i, n = int(batch["index"][r]), int(data.lengths[batch["index"][r]])
      for name in BASELINES:
        out[name][i] = np.asarray(scores[name][:, r, :n], np.float64)
  return out


# ----------------------------------------------------------------------------- report


def check_rationales(data: TokenizedDataset) -> None:
  if data.rationale_mask is None or data.word_ids is None:
    raise UserError(f"{data.task or 'the dataset'} has no rationales; use a task with human "
                    "rationales (eraser_movies) or the demo task")


def evaluate_rationales(adapler_cfg, adapler_params: dict | None, backbone_params: dict | None,
                        data: TokenizedDataset, *, engine: str = "bucketed",
                        batch_size: int = 8, saliency_target: str = "predicted",
                        include_special: bool = False, progress: bool = False
                        ) -> dict[str, Any]:
  """Per-layer mAP / FPR / recall of the CPs and the three baselines on `data`.

  Args:
    adapler_cfg: the AdapLeR model shape (its encoder also describes the backbone).
    adapler_params: AdapLeR params for `CP` (None: skip CP).
    backbone_params: the fine-tuned classifier `{"bert", "head"}` for the baselines (None: skip).
    data: tokenized examples with `rationale_mask` and `word_ids`.
    engine: hard-removal engine for the CPs ("bucketed" or "per-example").
    batch_size: rows per batch (both the engine and the baselines).
    saliency_target: "predicted" or "gold" class for the saliency baseline.
    include_special: baselines' uniform threshold over all tokens instead of the text tokens.
  Returns:
    JSON-ready dict: `methods` -> name -> {`map`, `fpr`, `recall`, `selected_fraction`} lists
    over layers (None where no example qualifies), plus counts, chance levels
    (`rationale_word_fraction`, `random_map`) and the accuracy of both models on `data`.
  """
  from adapler_jax.eval import report  # pylint: disable=g-import-not-at-top
  check_rationales(data)
  layers = adapler_cfg.num_layers
  token_scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
  out: dict[str, Any] = {"num_examples": len(data), "num_layers": layers, "methods": {}}
  if adapler_params is not None:
    result = report.run_adapler(adapler_cfg, adapler_params, data, engine=engine,
                                batch_size=batch_size, return_rationales=True, progress=progress)
    token_scores[CP] = [cp_token_scores(result.kept_positions[i], result.scores[i],
                                        int(data.lengths[i])) for i in range(len(data))]
    out["adapler_accuracy"] = float(np.mean(result.predictions == data.labels))
    out["adapler_kept_tokens_per_layer"] = result.kept_counts.mean(axis=0).tolist()
  if backbone_params is not None:
    scores = backbone_token_scores(adapler_cfg.encoder, adapler_cfg.num_labels, backbone_params,
                                   data, batch_size=batch_size, target=saliency_target,
                                   progress=progress)
    for name in BASELINES:
      token_scores[name] = [
          baseline_selection(s, data.word_ids[i, :s.shape[-1]] >= 0, include_special)
          for i, s in enumerate(scores[name])]
    out["backbone_accuracy"] = report.evaluate_backbone(
        adapler_cfg.encoder, adapler_cfg.num_labels, backbone_params, data, "accuracy",
        batch_size=batch_size)["metric"]
  for name, rows in token_scores.items():
    per_example = [layer_agreement(s, sel, data.word_ids[i, :data.lengths[i]],
                                   data.rationale_mask[i, :data.lengths[i]])
                   for i, (s, sel) in enumerate(rows)]
    out["methods"][name] = aggregate(per_example)
  out.update(chance_levels(data))
  out["saliency_target"] = saliency_target
  out["baseline_threshold"] = ("1/n over all tokens" if include_special else
                               "1/m over the text tokens ([CLS], [SEP] excluded, renormalised)")
  return out


def chance_levels(data: TokenizedDataset) -> dict[str, float | None]:
  """Over examples with rationale words: `rationale_word_fraction` (mean share of rationale
  words) and `random_map` (mean expected AP of a random word ranking)."""
  rates, expected = [], []
  for i in range(len(data)):
    n = int(data.lengths[i])
    index, num_words = word_index(data.word_ids[i, :n])
    truth = to_words(data.rationale_mask[i, :n], index, num_words)
    if truth.any():
      rates.append(truth.mean())
      expected.append(random_average_precision(int(truth.sum()), num_words))
  if not rates:
    return {"rationale_word_fraction": None, "random_map": None}
  return {"rationale_word_fraction": float(np.mean(rates)),
          "random_map": float(np.mean(expected))}


def write_json(result: dict[str, Any], path: str | Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(path, json.dumps(result, indent=2))
  return path


def format_table(result: dict[str, Any]) -> str:
  """Per-layer mAP / FPR of every method as a plain-text table."""
  names = [m for m in METHODS if m in result["methods"]]
  fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"
  header = "layer " + "".join(f"  {n:>9} mAP {n:>9} FPR" for n in names)
  rows = [header]
  for l in range(result["num_layers"]):
    cells = "".join(f"  {fmt(result['methods'][n]['map'][l]):>13} "
                    f"{fmt(result['methods'][n]['fpr'][l]):>13}" for n in names)
    rows.append(f"{l + 1:>5} {cells}")
  chance = result.get("random_map")
  if chance is not None:
    rows.append(f"random ranking mAP {chance:.3f}; rationale words "
                f"{100 * result['rationale_word_fraction']:.1f}% of an example's words (mean "
                "over examples with rationale words)")
  return "\n".join(rows)


# ----------------------------------------------------------------------------- figure


_STYLE = {CP: dict(color="#c0392b", marker="o", linewidth=2.4),
          ATTENTION: dict(color="#2e86c1", marker="s"),
          ROLLOUT: dict(color="#27ae60", marker="^"),
          SALIENCY: dict(color="#8e44ad", marker="D")}


def plot_layers(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
  """Figure 5 of the paper: mAP (left) and FPR (right) by layer, one line per method."""
  plt = extras.pyplot()

  fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), dpi=110)
  layers = np.arange(1, result["num_layers"] + 1)
  for ax, key, label in ((axes[0], "map", "mAP"), (axes[1], "fpr", "FPR")):
    for name in METHODS:
      if name in result["methods"]:
        values = [np.nan if v is None else v for v in result["methods"][name][key]]
        ax.plot(layers, values, label=name, markersize=4, **_STYLE[name])
    ax.set_xlabel("layer")
    ax.set_ylabel(label)
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
  chance = result.get("random_map")
  if chance is not None:
    axes[0].axhline(chance, color="grey", linestyle=":", linewidth=1.2, label="random ranking")
  axes[1].set_ylim(bottom=0)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path
