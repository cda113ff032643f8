"""AdapLeR: contribution predictors, soft removal (training), hard removal (inference).

Notation follows the paper (Modarressi et al., ACL 2022, §3): `L` layers, position 0
is [CLS], `S~` are the contribution predictor's scores, `delta = eta / n` the cutoff.

All parameters live in one pytree::

    {"model": {"bert": ..., "predictors_0": ..., ..., "head": ...},
     "speed": {"eta": (L,), "theta": (L,)}}

`model` is trained on L_CE + gamma * L_CP, `speed` on L_CE + phi * L_LENGTH.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.errors import InputError
from adapler_jax.models import dense, walk
from adapler_jax.models.bert import Bert, EncoderConfig, check_ids, embed, encoder_layer_params
from adapler_jax.models.heads import Head, HeadedConfig
from adapler_jax.reduce.adapler import (PAD_LOG_KEEP, HardRemoval, SoftRemoval,  # noqa: F401
                                        masked_log_scores, soft_removal_edit)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AdapLeRConfig(HeadedConfig):
  """Static shape of an AdapLeR model: a classifier, or with `head="span"` (num_labels 2)
  span QA, whose removal lets [CLS] go and restores dropped tokens for the head."""

  encoder: EncoderConfig
  num_labels: int
  cp_hidden: int = 32
  beta: float = 0.1  # slope of the soft-removal function above the cutoff (Eq. 4).
  eta_init: float = 0.25
  theta_init: float = 1.0
  head: str = "classification"

  @property
  def keep_cls(self) -> bool:
    """Whether removal forces [CLS] to stay (classification) or not (span QA)."""
    return self.task_head.keep_cls


class ContributionPredictor(nn.Module):
  """Dense(32) -> GELU -> Dense(1): an unnormalised contribution logit per token.

  `x` (..., seq, hidden) -> logits (..., seq), float32.
  """

  hidden: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    layer = functools.partial(nn.Dense, dtype=self.dtype, dot_general=dense.dot_general)
    x = nn.gelu(layer(self.hidden, name="dense")(x), approximate=False)
    return layer(1, name="out")(x)[..., 0].astype(jnp.float32)


class AdapLeRModel(nn.Module):
  """BERT with a contribution predictor before every layer and the task's head.

  `__call__` is the soft-removal forward used in training; the pieces (`bert`,
  `predictors_l`, `head`) are also applied one by one for hard removal.
  """

  cfg: AdapLeRConfig

  def setup(self):
    enc = self.cfg.encoder
    self.bert = Bert(enc)
    self.predictors = [ContributionPredictor(self.cfg.cp_hidden, enc.compute_dtype)
                       for _ in range(enc.num_layers)]
    self.head = self.cfg.task_head.module(enc)

  def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array, *,
               eta: Array, lam: Array | float, theta_d: Array | None = None,
               deterministic: bool = True):
    """Soft-removal forward.

    Args:
      input_ids, token_type_ids: int (batch, seq).
      attention_mask: bool (batch, seq), True for real tokens ([CLS], text, [SEP]).
      eta: (L,) cutoff multipliers. lam: scalar lambda (traced).
      theta_d: (L,) dummy [CLS] multipliers, ones in value (Appendix B).
    Returns:
      logits (batch, num_labels), or (batch, seq, 2) for span QA, and aux with per-layer
      arrays stacked on axis 0: `log_scores` (L, batch, seq) log S~; `keep_in` (L, batch, seq) keep weights
      at each layer's input; `keep` (L, batch, seq) after its edit; `edit`
      (L, batch, seq); `lengths` (L, batch) = sum of kept non-[CLS] weights + 1.
    """
    theta_d = jnp.ones((self.cfg.num_layers,), jnp.float32) if theta_d is None else theta_d
    head = self.cfg.task_head
    policy = SoftRemoval(self.predictors, eta, lam, self.cfg.beta, theta_d, head.keep_cls,
                         head.restore)
    x = self.bert.embed(input_ids, token_type_ids, deterministic=deterministic)
    x, _, trace = self.bert.encoder(x, SoftRemoval.initial(attention_mask), policy,
                                    deterministic=deterministic)
    logits = self.head(x, deterministic=deterministic)
    return logits, trace


def predictor_params(cfg: AdapLeRConfig, model: dict) -> list:
  """The params of each layer's contribution predictor in a `model` params tree, in order."""
  return [model[f"predictors_{l}"] for l in range(cfg.num_layers)]


# ----------------------------------------------------------------------------- init


def init(key: Array, cfg: AdapLeRConfig, backbone: dict | None = None) -> dict:
  """Fresh AdapLeR params `{"model": ..., "speed": {"eta", "theta"}}`.

  Args:
    key: a `jax.random.key`.
    cfg: the model shape.
    backbone: optional `Bert` params (e.g. from `load_backbone`) replacing the random
      encoder; predictors and head stay freshly initialised.
  """
  ids = jnp.zeros((1, 2), jnp.int32)
  model = AdapLeRModel(cfg).init(key, ids, ids, ids > -1, eta=jnp.ones(cfg.num_layers),
                                 lam=1.0)["params"]
  if backbone is not None:
    if jax.tree.map(np.shape, backbone) != jax.tree.map(np.shape, model["bert"]):
      emb = backbone.get("embeddings", {}).get("word_embeddings", {}).get("embedding")
      raise InputError(f"backbone does not fit the config: parameter shapes differ (word "
                       f"embeddings {np.shape(emb)} against the config's "
                       f"{model['bert']['embeddings']['word_embeddings']['embedding'].shape}, "
                       f"{cfg.num_layers} layers); build the AdapLeRConfig from the "
                       "backbone's EncoderConfig (load_backbone returns it)")
    model = {**model, "bert": backbone}
  L = cfg.num_layers
  speed = {"eta": jnp.full((L,), cfg.eta_init, jnp.float32),
           "theta": jnp.full((L,), cfg.theta_init, jnp.float32)}
  return {"model": model, "speed": speed}


# ----------------------------------------------------------------------------- soft forward


def soft_forward(cfg: AdapLeRConfig, params: dict, batch: dict, lam: Array | float, *,
                 theta_d: Array | None = None, deterministic: bool = True,
                 rng: Array | None = None):
  """Soft-removal forward of a padded batch.

  Args:
    cfg: model shape. params: `{"model", "speed"}`.
    batch: `input_ids`, `token_type_ids` int (B, N) and `attention_mask` bool (B, N).
    lam: lambda of Eq. 4, > 0 (a traced scalar: changing it never recompiles; only a
      Python number is checked, a traced one <= 0 removes every token but [CLS]).
    theta_d: (L,) dummy [CLS] multipliers (ones); pass to differentiate for theta.
    deterministic: False enables dropout, which needs `rng`.
  Returns:
    `(logits (B, C) or (B, N, 2) for span QA, aux)`, aux as in `AdapLeRModel.__call__`.
    Soft removal keeps every token in place, so a span head sees every position; for span
    QA a removed token's vector stops changing (soft drop-and-restore, `SoftRemoval`).
  """
  if not deterministic and rng is None:
    raise InputError("soft_forward with dropout (deterministic=False) needs a key: pass rng= "
                     "or deterministic=True")
  if isinstance(lam, (int, float)) and not lam > 0:
    raise InputError(f"lam is {lam}; lambda of Eq. 4 must be > 0 (it grows during training)")
  rngs = None if deterministic else {"dropout": rng}
  return AdapLeRModel(cfg).apply(
      {"params": params["model"]}, batch["input_ids"], batch["token_type_ids"],
      batch["attention_mask"], eta=params["speed"]["eta"], lam=lam, theta_d=theta_d,
      deterministic=deterministic, rngs=rngs)


# ----------------------------------------------------------------------------- hard removal


class HardRemovalResult(NamedTuple):
  """Output of `hard_forward` for one example of n real tokens.

  logits: (num_labels,), or (n, 2) start/end logits of every position for span QA (a
    dropped token restored with its last layer's output).
  kept_positions: per layer, the original positions (ints; [CLS] = 0 first unless it
    may go) that layer runs on.
  scores: per layer, S~ over the tokens entering that layer (sums to 1).
  """

  logits: np.ndarray
  kept_positions: list[np.ndarray]
  scores: list[np.ndarray]

  @property
  def kept_counts(self) -> list[int]:
    return [len(p) for p in self.kept_positions]


@functools.partial(jax.jit, static_argnums=0)
def _embed(enc: EncoderConfig, bert_params, input_ids, token_type_ids):
  return embed(enc, bert_params["embeddings"], input_ids, token_type_ids)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _cp_scores(hidden: int, dtype: str, cp_params, x, log_keep):
  logits = ContributionPredictor(hidden, jnp.dtype(dtype)).apply({"params": cp_params}, x)
  return jnp.exp(masked_log_scores(logits, log_keep))


@functools.partial(jax.jit, static_argnums=0)
def _attend(enc: EncoderConfig, layer_params, x, bias):
  return walk.ParamLayer(enc, layer_params).attend(x, bias)[0]


@functools.partial(jax.jit, static_argnums=0)
def _feed_forward(enc: EncoderConfig, layer_params, x):
  return walk.ParamLayer(enc, layer_params).feed_forward(x)


class _JitLayer:
  """A layer whose halves run as jitted calls (for the host-side reference walk). A span
  model may drop every token (eta above 1, as a search scales it): the layers after that
  run on nothing and hand back their empty input."""

  def __init__(self, enc: EncoderConfig, params):
    self.enc, self.params = enc, params

  def attend(self, x, bias, *, deterministic=True, return_probs=False):
    return (x if x.shape[-2] == 0 else _attend(self.enc, self.params, x, bias)), None

  def feed_forward(self, x, *, deterministic=True):
    return x if x.shape[-2] == 0 else _feed_forward(self.enc, self.params, x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _head(enc: EncoderConfig, head: Head, head_params, x):
  return head.module(enc).apply({"params": head_params}, x)


def hard_forward(cfg: AdapLeRConfig, params: dict, input_ids, token_type_ids=None
                 ) -> HardRemovalResult:
  """Hard-removal inference for ONE example (the reference semantics, batch size 1).

  At layer l the predictor scores the tokens still present; with n of them
  (including [CLS]) a token stays if S~ >= eta^l / n; [CLS] always stays (unless the
  head is a span head). Dropped tokens are gone for every later layer; a span head reads
  them restored (`walk.walk`, `restore`).

  Args:
    cfg: model shape. params: `{"model", "speed"}`.
    input_ids, token_type_ids: int (n,) real tokens only, [CLS] first (trailing
      padding id tokens, if any, are an error of the caller: pass the unpadded ids).
  """
  enc, model = cfg.encoder, params["model"]
  if isinstance(input_ids, jax.core.Tracer):
    raise InputError("hard_forward runs on the host, one example at a time (each layer's "
                     "kept tokens set the next one's shape), so it cannot be traced by "
                     "jit, vmap or grad; use soft_forward to trace, infer.AdaptiveEngine "
                     "for batches")
  input_ids = np.asarray(input_ids, np.int32)
  if input_ids.ndim != 1 or not 0 < len(input_ids) <= enc.max_length:
    raise InputError(f"hard_forward takes one example of shape (n,) with 1 <= n <= "
                     f"{enc.max_length} (the model's positions), got shape "
                     f"{input_ids.shape}; for a batch use infer.AdaptiveEngine")
  token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                    else np.asarray(token_type_ids, np.int32))
  check_ids(enc, input_ids, token_type_ids)
  eta = np.asarray(params["speed"]["eta"], np.float32)
  x = _embed(enc, model["bert"], input_ids[None], token_type_ids[None])

  predictors = predictor_params(cfg, model)

  def scores(l, x):
    zeros = jnp.zeros(x.shape[:2], jnp.float32)
    return np.asarray(_cp_scores(cfg.cp_hidden, enc.dtype, predictors[l], x, zeros))[0]

  layers = [_JitLayer(enc, p) for p in encoder_layer_params(enc, model["bert"])]
  head = cfg.task_head
  x, _, trace = walk.walk(layers, x, np.arange(len(input_ids)),
                          HardRemoval(scores, eta, head.keep_cls), restore=head.restore)
  logits = _head(enc, head, model["head"], x)[0]
  return HardRemovalResult(np.asarray(logits), [np.asarray(p) for p in trace["kept_positions"]],
                           [np.asarray(s) for s in trace["scores"]])
