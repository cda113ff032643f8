"""A BERT encoder in flax.linen whose parameter tree mirrors Hugging Face's.

Converting a Hugging Face checkpoint is a rename (``layer.3`` -> ``layer_3``,
``weight`` -> ``kernel``/``embedding``/``scale``) and a transpose of dense
kernels; see `adapler_jax.weights`. RoBERTa, DistilBERT and ELECTRA share the layers;
what differs (positions, token types, embedding width) is in `EncoderConfig` and
`Embeddings`.

Attention takes a float additive bias per key position, shape ``(batch, seq)``:
0 for kept tokens, ``NEG_INF`` (-1e4) for padding, and anything in between for
soft removal, which adds its edits to the same bias. A ``(batch, seq, seq)`` bias
per query and key works too (several sequences packed in one row, `adapler_jax.infer`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.errors import InputError
from adapler_jax.models import attention, dense, walk
from adapler_jax.models.dropout import Dropout

Array = jax.Array

NEG_INF = -1e4  # additive bias of a removed key; exp(-1e4) underflows to 0 in float32.


MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra")

# DistilBERT's config names for BERT's.
_DISTILBERT_NAMES = {"hidden_size": "dim", "num_hidden_layers": "n_layers",
                     "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
                     "hidden_act": "activation", "hidden_dropout_prob": "dropout",
                     "attention_probs_dropout_prob": "attention_dropout"}


def hf_model_type(hf_config: Any) -> str:
  """The `model_type` of a Hugging Face config (or its dict), checked against `MODEL_TYPES`;
  a config without one is a BERT (as old BERT checkpoints are)."""
  get = hf_config.get if isinstance(hf_config, dict) else (
      lambda k, d=None: getattr(hf_config, k, d))
  model_type = get("model_type") or "bert"
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(MODEL_TYPES)}")
  return model_type


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Shape and numerics of a BERT encoder (static under jit)."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  type_vocab_size: int = 2
  max_position_embeddings: int = 512
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0
  dtype: str = "float32"  # compute dtype; parameters stay float32.
  model_type: str = "bert"  # the checkpoint family (`MODEL_TYPES`); it names weights only.
  position_offset: int = 0  # row of position 0 (RoBERTa: pad_token_id + 1, see `Embeddings`).
  embedding_size: int | None = None  # ELECTRA: narrower embeddings, projected to hidden_size.

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads "
          f"{self.num_heads}; pick a head count that divides it")
    if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
      raise ValueError(f"dtype {self.dtype!r} is not one of float32, bfloat16, float16, "
                       "float64 (float64 needs jax_enable_x64)")
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not supported; supported: "
                       f"{', '.join(MODEL_TYPES)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_length(self) -> int:
    """The longest sequence the position table holds."""
    return self.max_position_embeddings - self.position_offset

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def accum_dtype(self):
    """Attention logits, softmax and outputs: at least float32."""
    return jnp.promote_types(self.compute_dtype, jnp.float32)

  @classmethod
  def from_hf(cls, hf_config: Any, **overrides) -> "EncoderConfig":
    """Builds the config from a Hugging Face config of a `MODEL_TYPES` family (or its dict)."""
    get = hf_config.get if isinstance(hf_config, dict) else (
        lambda k, d=None: getattr(hf_config, k, d))
    model_type = hf_model_type(hf_config)
    if model_type == "distilbert":
      names, bert_get = _DISTILBERT_NAMES, get
      get = lambda k, d=None: bert_get(names.get(k, k), d)
    act = get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_python"):
      raise ValueError(f"hidden_act {act!r} is not supported; only exact 'gelu' encoders load")
    pos_type = get("position_embedding_type", "absolute")
    if pos_type not in (None, "absolute"):
      raise ValueError(f"position_embedding_type {pos_type!r} is not supported; "
                       "only 'absolute' loads")
    pad = get("pad_token_id", 0) or 0
    fields = dict(
        vocab_size=get("vocab_size"),
        hidden_size=get("hidden_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=get("num_attention_heads"),
        intermediate_size=get("intermediate_size"),
        type_vocab_size=0 if model_type == "distilbert" else get("type_vocab_size", 2),
        max_position_embeddings=get("max_position_embeddings", 512),
        layer_norm_eps=get("layer_norm_eps", 1e-12),
        hidden_dropout=get("hidden_dropout_prob", 0.1),
        attention_dropout=get("attention_probs_dropout_prob", 0.1),
        initializer_range=get("initializer_range", 0.02),
        pad_token_id=pad,
        model_type=model_type,
        position_offset=pad + 1 if model_type in ("roberta", "xlm-roberta") else 0,
    )
    missing = [k for k, v in fields.items() if v is None]
    if missing:
      raise ValueError(f"the {model_type} config lacks {missing}; pass its config.json")
    embedding_size = get("embedding_size")
    if model_type == "electra" and embedding_size not in (None, fields["hidden_size"]):
      fields["embedding_size"] = embedding_size
    fields.update(overrides)
    return cls(**fields)

  @classmethod
  def tiny(cls, **overrides) -> "EncoderConfig":
    """A 2-layer, width-32 encoder for tests."""
    fields = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                  intermediate_size=64, max_position_embeddings=128)
    fields.update(overrides)
    return cls(**fields)


def _dense(cfg: EncoderConfig, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=cfg.compute_dtype, name=name, dot_general=dense.dot_general,
                  kernel_init=nn.initializers.normal(cfg.initializer_range))


def _layer_norm(cfg: EncoderConfig, name: str = "LayerNorm") -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name)


class Embeddings(nn.Module):
  """Word + position (+ token-type) embeddings, LayerNorm and dropout (+ ELECTRA's projection).

  `position_ids` count from 0; the table row is `position_ids + cfg.position_offset`. By
  default they are 0..seq-1, except in the offset family (RoBERTa), where, as Hugging Face
  does, they count the non-padding tokens before each one and padding reads row
  `pad_token_id`. Without token types (`type_vocab_size` 0, DistilBERT) `token_type_ids`
  is ignored; with one (RoBERTa) every token is type 0.
  """

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array, *,
               position_ids: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    width = cfg.embedding_size or cfg.hidden_size
    embed = lambda n, name: nn.Embed(n, width, embedding_init=init, name=name)
    if position_ids is None:
      position_ids = default_positions(cfg, input_ids)
    x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings")(
             position_ids + cfg.position_offset))
    if cfg.type_vocab_size:
      types = token_type_ids if cfg.type_vocab_size > 1 else jnp.zeros_like(input_ids)
      x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(types)
    x = _layer_norm(cfg)(x.astype(cfg.compute_dtype))
    x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    if width != cfg.hidden_size:
      x = _dense(cfg, cfg.hidden_size, "embeddings_project")(x)
    return x


def default_positions(cfg: EncoderConfig, input_ids: Array) -> Array:
  """0-based position ids of a padded batch (see `Embeddings`): -1 on RoBERTa's padding."""
  if input_ids.shape[-1] > cfg.max_length:  # rows past the table read NaN.
    raise InputError(f"input of {input_ids.shape[-1]} tokens is longer than the model's "
                     f"{cfg.max_length} positions; truncate it (the tokenizer's max_length)")
  if not cfg.position_offset:
    return jnp.arange(input_ids.shape[-1])
  real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=-1) * real - 1


class SelfAttention(nn.Module):
  """Multi-head scaled dot-product attention with an additive key bias.

  Returns the output, and with `return_probs` also the probabilities before dropout,
  (..., heads, seq, seq) (`return_probs="after_dropout"`: after it). Only then, or under
  attention dropout, are normalised probabilities formed; the plain forward runs the
  output-only `attention.attention`.
  """

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x: Array, bias: Array, *, deterministic: bool = True,
               return_probs: bool = False):
    cfg = self.cfg
    split = lambda t: t.reshape(*t.shape[:-1], cfg.num_heads, cfg.head_dim)
    q = split(_dense(cfg, cfg.hidden_size, "query")(x))
    k = split(_dense(cfg, cfg.hidden_size, "key")(x))
    v = split(_dense(cfg, cfg.hidden_size, "value")(x))
    use_dropout = not deterministic and cfg.attention_dropout > 0
    probs = None
    if use_dropout or return_probs:
      dropout, dropped = Dropout(cfg.attention_dropout), []
      drop = lambda p: dropped.append(dropout(p, deterministic=deterministic)) or dropped[0]
      probs, out = attention.attention_probs_and_output(
          q, k, v, bias, accum_dtype=cfg.accum_dtype, dropout=drop)
      if return_probs == "after_dropout":  # what HF v3 returned in training (LAT upstream).
        probs = dropped[0]
    else:
      out = attention.attention(q, k, v, bias, accum_dtype=cfg.accum_dtype)
    out = out.reshape(*out.shape[:-2], cfg.hidden_size)
    return (out, probs) if return_probs else out


class DenseResidual(nn.Module):
  """Dense, dropout, then LayerNorm of the residual sum (HF's `*Output` blocks)."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x: Array, residual: Array, *, deterministic: bool = True) -> Array:
    x = _dense(self.cfg, self.cfg.hidden_size, "dense")(x)
    x = Dropout(self.cfg.hidden_dropout)(x, deterministic=deterministic)
    return _layer_norm(self.cfg)(x + residual)


def gelu(x: Array) -> Array:
  """Exact GELU as BERT writes it, x/2 (1 + erf(x / sqrt 2)).

  Equal to `jax.nn.gelu(x, approximate=False)` within float32 rounding, and about twice
  as fast on CPU, where XLA lowers that one's `erfc` through two branches.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


class Intermediate(nn.Module):
  """The widening half of the feed-forward block, with exact GELU."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return gelu(_dense(self.cfg, self.cfg.intermediate_size, "dense")(x))


class Attention(nn.Module):
  """Self-attention, then dense + residual + LayerNorm: `(x, probs or None)`."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x: Array, bias: Array, *, deterministic: bool = True,
               return_probs: bool = False):
    y = SelfAttention(self.cfg, name="self")(x, bias, deterministic=deterministic,
                                             return_probs=return_probs)
    y, probs = y if return_probs else (y, None)
    return DenseResidual(self.cfg, name="output")(y, x, deterministic=deterministic), probs


class Layer(nn.Module):
  """One post-LN transformer layer: attention then the GELU feed-forward block.

  Shapes: `x` (..., seq, hidden), `bias` (..., seq) -> (..., seq, hidden). The two
  halves, `attend` and `feed_forward`, are what `walk` calls: token reduction policies
  act before, between and after them.
  """

  cfg: EncoderConfig

  def setup(self):
    self.attention = Attention(self.cfg)
    self.intermediate = Intermediate(self.cfg)
    self.output = DenseResidual(self.cfg)

  def __call__(self, x: Array, bias: Array, *, deterministic: bool = True) -> Array:
    x, _ = self.attend(x, bias, deterministic=deterministic)
    return self.feed_forward(x, deterministic=deterministic)

  def attend(self, x: Array, bias: Array, *, deterministic: bool = True,
             return_probs: bool = False) -> tuple[Array, Array | None]:
    """The attention block (with its residual and LayerNorm) -> `(out, probs or None)`,
    probs (..., heads, seq, seq) before dropout."""
    return self.attention(x, bias, deterministic=deterministic, return_probs=return_probs)

  def feed_forward(self, x: Array, *, deterministic: bool = True) -> Array:
    """The feed-forward block alone: position-wise, so any leading shape works."""
    return self.output(self.intermediate(x), x, deterministic=deterministic)


class Encoder(nn.Module):
  """The stack of layers, walked by `walk.walk` under a reduction policy."""

  cfg: EncoderConfig

  def setup(self):
    self.layer = [Layer(self.cfg) for _ in range(self.cfg.num_layers)]

  def __call__(self, x: Array, ctx, policy: walk.Policy = walk.FULL, *,
               deterministic: bool = True, layer_on: Array | None = None,
               hidden_states: bool = False, restore: bool = False):
    """`walk.walk` over this encoder's layers -> `(x, ctx, trace)`."""
    return walk.walk(self.layer, x, ctx, policy, deterministic=deterministic,
                     layer_on=layer_on, hidden_states=hidden_states, restore=restore)


def encoder_layer_params(cfg: EncoderConfig, bert_params: dict) -> list:
  """The params of each encoder layer of a `Bert` params tree, in order."""
  layers = bert_params["encoder"]
  return [layers[f"layer_{l}"] for l in range(cfg.num_layers)]


class Bert(nn.Module):
  """BERT encoder: `(input_ids, token_type_ids, attention_bias) -> (hidden, aux)`.

  Args (to `__call__`):
    input_ids: int (batch, seq).
    token_type_ids: int (batch, seq).
    attention_bias: float (batch, seq), additive per key position.
  Returns:
    `hidden` (batch, seq, hidden) and `aux = {"hidden_states": (h^0, ..., h^L)}`,
    h^0 being the embedding output.
  """

  cfg: EncoderConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.encoder = Encoder(self.cfg)

  def embed(self, input_ids: Array, token_type_ids: Array, *,
            position_ids: Array | None = None, deterministic: bool = True) -> Array:
    """Embeddings alone; `position_ids` default to 0..seq-1 (packed rows pass their own)."""
    return self.embeddings(input_ids, token_type_ids, position_ids=position_ids,
                           deterministic=deterministic)

  def __call__(self, input_ids: Array, token_type_ids: Array, attention_bias: Array, *,
               deterministic: bool = True):
    check_bias(attention_bias)
    h0 = self.embed(input_ids, token_type_ids, deterministic=deterministic)
    x, _, trace = self.encoder(h0, attention_bias, deterministic=deterministic,
                               hidden_states=True)
    return x, {"hidden_states": (h0, *trace["hidden_states"])}


def check_bias(attention_bias: Array) -> None:
  """One line when an attention mask (bool or integers) is passed where the additive bias
  goes: read as a bias it would add 1 to the kept keys and attend to padding."""
  dtype = jnp.result_type(attention_bias)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise InputError(f"attention_bias is {dtype}, an attention mask: the model adds a float "
                     "bias to the scores; pass attention_bias_from_mask(mask)")


def attention_bias_from_mask(mask: Array) -> Array:
  """Bool/int validity mask (batch, seq) -> float additive bias (0 valid, NEG_INF pad)."""
  return jnp.where(mask.astype(bool), 0.0, NEG_INF).astype(jnp.float32)


class RecordAttention(walk.Policy):
  """No reduction; records each layer's attention probabilities as `attention_probs`."""

  wants_probs = True

  def after_attention(self, l, a, probs, ctx):
    return a, ctx, {"attention_probs": probs}


def attention_probs(cfg: EncoderConfig, params: dict, input_ids: Array, token_type_ids: Array,
                    attention_bias: Array) -> Array:
  """Attention probabilities of every layer of a `Bert` forward (deterministic).

  Args:
    cfg: encoder shape. params: `Bert` params.
    input_ids, token_type_ids: int (batch, seq). attention_bias: float (batch, seq).
  Returns:
    (L, batch, heads, seq, seq); row q of a head is query q's distribution over keys.
  """
  def run(bert: Bert):
    h0 = bert.embed(input_ids, token_type_ids)
    return bert.encoder(h0, attention_bias, RecordAttention())[2]["attention_probs"]

  return nn.apply(run, Bert(cfg))({"params": params})


def check_ids(cfg: EncoderConfig, input_ids, token_type_ids=None, attention_mask=None) -> None:
  """One line unless the ids fit the model's tables and the other inputs have their shape.

  Out-of-range rows of an embedding table read NaN, which hard removal turns into dropped
  tokens and plausible logits. Values are checked only on concrete arrays (not under jit).
  """
  shape = np.shape(input_ids)
  for name, other in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
    if other is not None and np.shape(other) != shape:
      raise InputError(f"{name} has shape {np.shape(other)}, input_ids {shape}; give one "
                       "value per token")
  for name, ids, size, table in (("input_ids", input_ids, cfg.vocab_size, "vocabulary"),
                                 ("token_type_ids", token_type_ids, cfg.type_vocab_size,
                                  "token-type table")):
    if ids is None or isinstance(ids, jax.core.Tracer) or np.size(ids) == 0 or size <= 1:
      continue
    ids = np.asarray(ids)
    if ids.min() < 0 or ids.max() >= size:
      raise InputError(f"{name} holds {ids.max() if ids.max() >= size else ids.min()}, outside "
                       f"the model's {table} of {size}; use the model's own tokenizer")


def embed(cfg: EncoderConfig, embedding_params: dict, input_ids: Array, token_type_ids: Array,
          position_ids: Array | None = None) -> Array:
  """The embedding output h^0 (B, W, H) of ids (B, W), deterministic: positions 0..W-1
  unless given. `embedding_params` is a `Bert` params tree's `embeddings`."""
  return Bert(cfg).apply({"params": {"embeddings": embedding_params}}, input_ids,
                         token_type_ids, position_ids=position_ids, method=Bert.embed)


def encode(cfg: EncoderConfig, params: dict, input_ids: Array, attention_mask: Array | None = None,
           token_type_ids: Array | None = None) -> Array:
  """Last hidden states of a `Bert` forward (deterministic), as Hugging Face's
  `last_hidden_state`.

  Args:
    cfg: encoder shape. params: `Bert` params (e.g. `load_backbone(...).params`).
    input_ids: int (batch, seq), padded on the right (with `pad_token_id` for RoBERTa).
    attention_mask: bool/int (batch, seq), 1 on real tokens; default all real.
    token_type_ids: int (batch, seq); default all 0.
  Returns:
    (batch, seq, hidden); rows at padding are not meaningful.
  """
  check_ids(cfg, input_ids, token_type_ids, attention_mask)
  input_ids = jnp.asarray(input_ids)
  if attention_mask is None:
    attention_mask = jnp.ones(input_ids.shape, bool)
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  bias = attention_bias_from_mask(jnp.asarray(attention_mask))

  def run(bert: Bert):
    return bert.encoder(bert.embed(input_ids, jnp.asarray(token_type_ids)), bias)[0]

  return nn.apply(run, Bert(cfg))({"params": params})
