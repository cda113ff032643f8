"""The Length-Adaptive Transformer: a fine-tuned model (`SequenceClassifier` or `SpanQA`)
walked under attention-significance selection (`reduce.significance`).

Its params are those of the fine-tuned model, `{"bert", "head"}`: LengthDrop training
changes values, not shapes. Every forward takes the task's head (`models.heads`: a label
count for classification, or a `Head`); a span head reads the restored sequence
(drop-and-restore). Two forward paths:

* `masked_forward`: fixed (B, T) shapes; the length config is a traced array, so sampling
  a new one never recompiles (training, evaluating many configs);
* `gather_forward`: kept tokens are gathered and later layers run on fewer of them, at
  static widths (the reference for inference; the batched `LengthEngine` runs the same
  rule with the widths as data, `infer.lat_program`).

They agree (tested), and with no config (or lengths at least as long as every example)
both equal the plain model.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from adapler_jax.errors import InputError
from adapler_jax.models import walk
from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask, embed
from adapler_jax.models.heads import Head, as_head
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import GatherSelection, MaskedSelection, SelectionFlags

Array = jax.Array


def check_flags(head: Head, flags: SelectionFlags) -> None:
  """A head that reads [CLS] needs the selection to keep it."""
  if head.keep_cls and not flags.keep_cls:
    raise InputError("SelectionFlags(keep_cls=False) lets [CLS] go, but a classification head "
                     "reads it; keep it (keep_cls=True) or use a span head")


def check_layer_count(enc: EncoderConfig, name: str, shape: tuple[int, ...]) -> None:
  """One line unless `shape` starts with one entry per layer (a config of another depth
  would run a sub-model nobody asked for: JAX clamps the indices past its end)."""
  if not shape or shape[0] != enc.num_layers:
    raise InputError(f"{name} has shape {tuple(shape)}; the model has {enc.num_layers} layers: "
                     "give one entry per layer")


def check_gather_counts(counts, widths: Sequence[int], n) -> None:
  """One line unless `counts` is (layers, examples) and, when `counts` and `n` are
  concrete, each layer's width holds the most real tokens any example keeps there (a
  narrower one would cut tokens silently)."""
  shape = tuple(jnp.shape(counts))
  if shape != (len(widths), jnp.shape(n)[0]):
    raise InputError(f"counts has shape {shape}; the gather path takes (layers, examples) = "
                     f"({len(widths)}, {jnp.shape(n)[0]}) as lengths.keep_counts gives "
                     "(lengths.real_counts is (examples, layers): transpose it)")
  if isinstance(counts, jax.core.Tracer) or isinstance(n, jax.core.Tracer):
    return
  largest = [int(c) for c in lengths.kept_of(counts, n).max(axis=0, initial=0)]
  if any(c > w for c, w in zip(largest, widths)):
    raise InputError(f"widths {tuple(int(w) for w in widths)} cannot hold the {tuple(largest)} "
                     "real tokens kept per layer; give each layer a width of at least its "
                     "largest count (lengths.real_counts(...).max(axis=0))")


def masked_forward(enc: EncoderConfig, head: int | Head, params: dict, batch: dict,
                   config: Array | None, *, base: int, flags: SelectionFlags = SelectionFlags(),
                   layer_on: Array | None = None, deterministic: bool = True,
                   rng: Array | None = None):
  """Logits and trace of the model under length `config` (L,) int, or of the plain model
  when `config` is None; `layer_on` (L,) bool skips layers (LayerDrop).

  `head`: a label count (classification, logits (B, C)) or a `Head` (`Span()`: logits
  (B, T, 2) over the restored sequence). `base` is the padded length the config refers to
  (the task's max length).
  """
  head = as_head(head)
  check_flags(head, flags)
  model = head.model(enc)
  valid = batch["attention_mask"].astype(bool)
  if config is None:
    policy, ctx = walk.FULL, attention_bias_from_mask(valid)
  else:
    check_layer_count(enc, "config", jnp.shape(config))
    n = jnp.sum(valid, axis=-1)
    counts = lengths.keep_counts(jnp.asarray(config), n, base, flags.length_base)
    policy = MaskedSelection(valid, counts, flags)
    ctx = policy.initial()
  logits, _, trace = model.apply(
      {"params": params}, batch["input_ids"], batch["token_type_ids"], ctx, policy,
      layer_on=layer_on, deterministic=deterministic, method=type(model).reduced,
      rngs=None if deterministic else {"dropout": rng})
  return logits, trace


def gather_forward(enc: EncoderConfig, head: int | Head, params: dict, input_ids: Array,
                   token_type_ids: Array, n: Array, counts: Array, widths: Sequence[int], *,
                   flags: SelectionFlags = SelectionFlags(), chunk_rows: int | None = None,
                   selects: Sequence[bool] | None = None):
  """The model with real token dropping: `counts` (L, B) tokens each example keeps per
  layer (`lengths.keep_counts`; an example keeps no more than it still has), `widths` (L,)
  static widths holding the real tokens kept (`lengths.real_counts(...).max(axis=0)`;
  checked when `counts` and `n` are concrete); `selects` (L,) static, False where a layer
  drops nothing (it then skips scoring). Rows hold `n` (B,) real tokens first. Returns
  logits (B, C), or for a span head (B, T, 2) over the restored sequence (padding holds
  its embedding output), and the trace (`lengths`, `positions` per layer)."""
  head = as_head(head)
  check_flags(head, flags)
  check_layer_count(enc, "widths", (len(widths),))
  check_gather_counts(counts, widths, n)
  bert = params["bert"]
  x = embed(enc, bert["embeddings"], input_ids, token_type_ids)
  valid = jnp.arange(input_ids.shape[1]) < n[:, None]
  policy = GatherSelection(counts, widths, flags, selects)
  layers = walk.param_layers(enc, bert, chunk_rows=chunk_rows)
  x, _, trace = walk.walk(layers, x, policy.initial(valid), policy, restore=head.restore)
  logits = head.module(enc).apply({"params": params["head"]}, x)
  return logits, trace
