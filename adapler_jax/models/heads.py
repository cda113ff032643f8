"""Task heads and the plain sequence classifier (the fine-tuned backbone)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapler_jax.models.bert import Bert, EncoderConfig, _dense
from adapler_jax.models.dropout import Dropout

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """Static shape of a sequence classifier (an encoder and a label count)."""

  encoder: EncoderConfig
  num_labels: int

  @property
  def num_layers(self) -> int:
    return self.encoder.num_layers


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


class SequenceClassifier(nn.Module):
  """BERT + classification head: params `{"bert": ..., "head": ...}`.

  `(input_ids, token_type_ids, attention_bias)` each (batch, seq) ->
  `(logits (batch, num_labels), aux)` with aux from `Bert`.
  """

  cfg: EncoderConfig
  num_labels: int

  def setup(self):
    self.bert = Bert(self.cfg)
    self.head = ClassificationHead(self.cfg, self.num_labels)

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
    """The classifier under a token-reduction policy (e.g. LAT's significance selection):
    `(logits, final ctx, trace)`. The head reads position 0, which the policy keeps."""
    x = self.bert.embed(input_ids, token_type_ids, deterministic=deterministic)
    x, ctx, trace = self.bert.encoder(x, ctx, policy, deterministic=deterministic,
                                      layer_on=layer_on)
    return self.head(x, deterministic=deterministic), ctx, trace
