"""Task heads, the plain sequence classifier (the fine-tuned backbone) and span QA.

A task's head is described by a small static object (`Classification`, `Span`) that every
forward takes (`models.lat`, `models.adapler`, the engines), so a forward is written once
for all heads:

* `Classification(num_labels)` reads [CLS], position 0 of the final sequence; token
  reduction forces [CLS] to stay.
* `Span()` reads every position: start and end logits (..., T, 2). Token reduction runs with
  drop-and-restore (`walk.walk(..., restore=True)`): a dropped token brings its last
  layer's output back to its position. [CLS] may be dropped like any token.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapler_jax.models.bert import Bert, EncoderConfig, _dense
from adapler_jax.models.dropout import Dropout

Array = jax.Array

HEADS = ("classification", "span")


@dataclasses.dataclass(frozen=True)
class Classification:
  """Sequence classification: logits (B, num_labels) from [CLS] (position 0)."""

  num_labels: int
  restore = False  # the head reads [CLS] alone, which reduction keeps in slot 0.
  keep_cls = True

  def module(self, enc: EncoderConfig) -> nn.Module:
    return ClassificationHead(enc, self.num_labels)

  def model(self, enc: EncoderConfig) -> nn.Module:
    return SequenceClassifier(enc, self.num_labels)


@dataclasses.dataclass(frozen=True)
class Span:
  """Span QA: start and end logits (B, T, 2) at every position of the restored sequence."""

  num_labels: int = 2  # per position: start, end.
  restore = True
  keep_cls = False

  def module(self, enc: EncoderConfig) -> nn.Module:
    return SpanHead(enc)

  def model(self, enc: EncoderConfig) -> nn.Module:
    return SpanQA(enc)


Head = Classification | Span


def as_head(head: "int | Head") -> Head:
  """A label count means classification; a `Head` is returned as is."""
  if isinstance(head, (Classification, Span)):
    return head
  return Classification(int(head))


def task_head(cfg) -> Head:
  """The head of a model config (`ClassifierConfig`, `AdapLeRConfig`, or anything with
  `num_labels` and optionally `head`)."""
  kind = getattr(cfg, "head", "classification")
  if kind == "span":
    return Span()
  if kind == "classification":
    return Classification(cfg.num_labels)
  raise ValueError(f"head {kind!r} is not one of {', '.join(HEADS)}")


def check_head(kind: str, num_labels: int) -> None:
  """Validates a config's `head` field against its label count."""
  if kind not in HEADS:
    raise ValueError(f"head {kind!r} is not one of {', '.join(HEADS)}")
  if kind == "span" and num_labels != 2:
    raise ValueError(f"a span head has 2 outputs per position (start, end); got "
                     f"num_labels={num_labels}, pass 2")


class HeadedConfig:
  """What every model config derives from its `encoder`, `num_labels` and `head` fields: the
  head check at construction, the layer count and the `Head`."""

  def __post_init__(self):
    check_head(self.head, self.num_labels)

  @property
  def num_layers(self) -> int:
    return self.encoder.num_layers

  @property
  def task_head(self) -> Head:
    return task_head(self)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(HeadedConfig):
  """Static shape of a fine-tuned model: an encoder, a label count and the head
  ("classification", or "span" with num_labels=2)."""

  encoder: EncoderConfig
  num_labels: int
  head: str = "classification"


class ClassificationHead(nn.Module):
  """[CLS] vector -> logits, laid out as HF's `bert.pooler` + `classifier`.

  `hidden` (batch, seq, hidden) -> logits (batch, num_labels), float32 (or float64).
  """

  cfg: EncoderConfig
  num_labels: int

  @nn.compact
  def __call__(self, hidden: Array, *, deterministic: bool = True) -> Array:
    cls = hidden[..., 0, :]
    pooled = jnp.tanh(Pooler(self.cfg, name="pooler")(cls))
    pooled = Dropout(self.cfg.hidden_dropout)(pooled, deterministic=deterministic)
    logits = _dense(self.cfg, self.num_labels, "classifier")(pooled)
    return logits.astype(self.cfg.accum_dtype)


class Pooler(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _dense(self.cfg, self.cfg.hidden_size, "dense")(x)


class _HeadedModel(nn.Module):
  """BERT + a task head (`head_module`): params `{"bert": ..., "head": ...}`."""

  cfg: EncoderConfig
  restore = False  # walk reductions with drop-and-restore (heads reading every position).

  def head_module(self) -> nn.Module:
    raise NotImplementedError

  def setup(self):
    self.bert = Bert(self.cfg)
    self.head = self.head_module()

  def __call__(self, input_ids: Array, token_type_ids: Array, attention_bias: Array, *,
               deterministic: bool = True):
    hidden, aux = self.bert(input_ids, token_type_ids, attention_bias,
                            deterministic=deterministic)
    return self.head(hidden, deterministic=deterministic), aux

  def logits_from_embeddings(self, embeddings: Array, attention_bias: Array, *,
                             deterministic: bool = True) -> Array:
    """Runs the layers and the head on given embedding outputs h^0 (for saliency)."""
    hidden, _, _ = self.bert.encoder(embeddings, attention_bias, deterministic=deterministic)
    return self.head(hidden, deterministic=deterministic)

  def reduced(self, input_ids: Array, token_type_ids: Array, ctx, policy, *,
              layer_on: Array | None = None, deterministic: bool = True):
    """The model under a token-reduction policy (e.g. LAT's significance selection):
    `(logits, final ctx, trace)`. A classifier's head reads position 0, which the policy
    keeps; a span head reads the restored sequence (`walk.walk`, `restore`)."""
    x = self.bert.embed(input_ids, token_type_ids, deterministic=deterministic)
    x, ctx, trace = self.bert.encoder(x, ctx, policy, deterministic=deterministic,
                                      layer_on=layer_on, restore=self.restore)
    return self.head(x, deterministic=deterministic), ctx, trace


class SequenceClassifier(_HeadedModel):
  """BERT + classification head: params `{"bert": ..., "head": ...}`.

  `(input_ids, token_type_ids, attention_bias)` each (batch, seq) ->
  `(logits (batch, num_labels), aux)` with aux from `Bert`.
  """

  num_labels: int

  def head_module(self) -> nn.Module:
    return ClassificationHead(self.cfg, self.num_labels)


class SpanHead(nn.Module):
  """Every position -> start and end logits, laid out as HF's `qa_outputs` (Dense H -> 2).

  `hidden` (batch, seq, hidden) -> logits (batch, seq, 2) float32: [..., 0] start,
  [..., 1] end.
  """

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, hidden: Array, *, deterministic: bool = True) -> Array:
    logits = _dense(self.cfg, 2, "qa_outputs")(hidden)
    return logits.astype(self.cfg.accum_dtype)


class SpanQA(_HeadedModel):
  """BERT + span head: params `{"bert": ..., "head": {"qa_outputs": ...}}`.

  `(input_ids, token_type_ids, attention_bias)` each (batch, seq) ->
  `(logits (batch, seq, 2), aux)`; `reduced` walks with drop-and-restore.
  """

  restore = True

  def head_module(self) -> nn.Module:
    return SpanHead(self.cfg)
