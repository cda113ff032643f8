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
from adapler_jax.models.bert import NEG_INF, Bert, EncoderConfig, Layer
from adapler_jax.models.heads import ClassificationHead

Array = jax.Array
PAD_LOG_KEEP = -1e9  # log keep weight of padding: exp() is 0, and it stays finite.


@dataclasses.dataclass(frozen=True)
class AdapLeRConfig:
  """Static shape of an AdapLeR classifier."""

  encoder: EncoderConfig
  num_labels: int
  cp_hidden: int = 32
  beta: float = 0.1  # slope of the soft-removal function above the cutoff (Eq. 4).
  eta_init: float = 0.25
  theta_init: float = 1.0

  @property
  def num_layers(self) -> int:
    return self.encoder.num_layers


class ContributionPredictor(nn.Module):
  """Dense(32) -> GELU -> Dense(1): an unnormalised contribution logit per token.

  `x` (..., seq, hidden) -> logits (..., seq), float32.
  """

  hidden: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="dense")(x), approximate=False)
    return nn.Dense(1, dtype=self.dtype, name="out")(x)[..., 0].astype(jnp.float32)


def masked_log_scores(logits: Array, log_keep: Array, theta_d: Array | float = 1.0) -> Array:
  """log S~: softmax over positions weighted by the keep weights, [CLS] scaled by theta_d.

  Equals log of `softmax(logits) * keep / sum(softmax(logits) * keep)` with the [CLS]
  entry then multiplied by `theta_d` and renormalised (paper Eq. 9; theta_d = 1 in the
  forward pass, its gradient trains theta, Appendix B).

  Args:
    logits: (..., seq) float32.
    log_keep: (..., seq) log keep weights (0 kept, very negative removed or padding).
    theta_d: scalar.
  Returns:
    (..., seq) log scores; exp sums to 1 over `seq`.
  """
  log_s = jax.nn.log_softmax(logits + log_keep, axis=-1)
  s = jnp.exp(log_s)
  cls = s[..., :1]
  denom = theta_d * cls + (jnp.sum(s, axis=-1, keepdims=True) - cls)
  is_cls = jnp.arange(logits.shape[-1]) == 0
  return log_s + jnp.where(is_cls, jnp.log(theta_d), 0.0) - jnp.log(denom)


def soft_removal_edit(scores: Array, delta: Array, lam: Array | float, beta: float) -> Array:
  """Eq. 4: the (non-positive) log-mask edit for each token's score.

  Below the cutoff the edit falls steeply, `(lam / delta)(S - delta) - beta / lam`; above
  it it is the gentle `(S - 1)(beta / lam) / (1 - delta)`. The min of the two branches is
  the piecewise function; it is clipped to [NEG_INF, 0]. Broadcasts over all arguments.
  `1 - delta` is floored at 1e-6: delta reaches 1 when eta = 1 and only [CLS] is left.
  """
  below = (lam / delta) * (scores - delta) - beta / lam
  above = (scores - 1.0) * (beta / lam) / jnp.maximum(1.0 - delta, 1e-6)
  return jnp.clip(jnp.minimum(below, above), NEG_INF, 0.0)


class AdapLeRModel(nn.Module):
  """BERT with a contribution predictor before every layer and a [CLS] head.

  `__call__` is the soft-removal forward used in training; the pieces (`bert`,
  `predictors_l`, `head`) are also applied one by one for hard removal.
  """

  cfg: AdapLeRConfig

  def setup(self):
    enc = self.cfg.encoder
    self.bert = Bert(enc)
    self.predictors = [ContributionPredictor(self.cfg.cp_hidden, enc.compute_dtype)
                       for _ in range(enc.num_layers)]
    self.head = ClassificationHead(enc, self.cfg.num_labels)

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
      logits (batch, num_labels) and aux with per-layer arrays stacked on axis 0:
      `log_scores` (L, batch, seq) log S~; `keep_in` (L, batch, seq) keep weights
      at each layer's input; `keep` (L, batch, seq) after its edit; `edit`
      (L, batch, seq); `lengths` (L, batch) = sum of kept non-[CLS] weights + 1.
    """
    num_layers = self.cfg.num_layers
    theta_d = jnp.ones((num_layers,), jnp.float32) if theta_d is None else theta_d
    valid = attention_mask.astype(bool)
    not_cls = (jnp.arange(input_ids.shape[-1]) > 0)
    log_keep = jnp.where(valid, 0.0, PAD_LOG_KEEP)
    x = self.bert.embed(input_ids, token_type_ids, deterministic=deterministic)
    trace = {k: [] for k in ("log_scores", "keep_in", "keep", "edit", "lengths")}
    for l in range(num_layers):
      keep = jnp.exp(log_keep)
      log_scores = masked_log_scores(self.predictors[l](x), log_keep, theta_d[l])
      n = jnp.sum(keep * not_cls, axis=-1, keepdims=True) + 1.0
      edit = soft_removal_edit(jnp.exp(log_scores), eta[l] / n, lam, self.cfg.beta)
      edit = jnp.where(not_cls, edit * keep, 0.0)
      log_keep = log_keep + edit
      bias = jnp.maximum(log_keep, NEG_INF)
      x = self.bert.run_layer(l, x, bias, deterministic=deterministic)
      new_keep = jnp.exp(log_keep)
      for k, v in (("log_scores", log_scores), ("keep_in", keep), ("keep", new_keep),
                   ("edit", edit), ("lengths", jnp.sum(new_keep * not_cls, -1) + 1.0)):
        trace[k].append(v)
    logits = self.head(x, deterministic=deterministic)
    return logits, {k: jnp.stack(v) for k, v in trace.items()}


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
    lam: lambda of Eq. 4 (a traced scalar: changing it never recompiles).
    theta_d: (L,) dummy [CLS] multipliers (ones); pass to differentiate for theta.
    deterministic: False enables dropout, which needs `rng`.
  Returns:
    `(logits (B, C), aux)`, aux as in `AdapLeRModel.__call__`.
  """
  rngs = None if deterministic else {"dropout": rng}
  return AdapLeRModel(cfg).apply(
      {"params": params["model"]}, batch["input_ids"], batch["token_type_ids"],
      batch["attention_mask"], eta=params["speed"]["eta"], lam=lam, theta_d=theta_d,
      deterministic=deterministic, rngs=rngs)


# ----------------------------------------------------------------------------- hard removal


class HardRemovalResult(NamedTuple):
  """Output of `hard_forward` for one example of n real tokens.

  logits: (num_labels,).
  kept_positions: per layer, the original positions (ints, [CLS] = 0 first) that
    layer runs on.
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
  return Bert(enc).apply({"params": bert_params}, input_ids, token_type_ids,
                         method=Bert.embed)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _cp_scores(hidden: int, dtype: str, cp_params, x, log_keep):
  logits = ContributionPredictor(hidden, jnp.dtype(dtype)).apply({"params": cp_params}, x)
  return jnp.exp(masked_log_scores(logits, log_keep))


@functools.partial(jax.jit, static_argnums=0)
def _layer(enc: EncoderConfig, layer_params, x, bias):
  return Layer(enc).apply({"params": layer_params}, x, bias)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _head(enc: EncoderConfig, num_labels: int, head_params, x):
  return ClassificationHead(enc, num_labels).apply({"params": head_params}, x)


def hard_forward(cfg: AdapLeRConfig, params: dict, input_ids, token_type_ids=None
                 ) -> HardRemovalResult:
  """Hard-removal inference for ONE example (the reference semantics, batch size 1).

  At layer l the predictor scores the tokens still present; with n of them
  (including [CLS]) a token stays if S~ >= eta^l / n; [CLS] always stays. Dropped
  tokens are gone for every later layer.

  Args:
    cfg: model shape. params: `{"model", "speed"}`.
    input_ids, token_type_ids: int (n,) real tokens only, [CLS] first (trailing
      padding id tokens, if any, are an error of the caller: pass the unpadded ids).
  """
  enc, model = cfg.encoder, params["model"]
  input_ids = np.asarray(input_ids, np.int32)
  if input_ids.ndim != 1 or not 0 < len(input_ids) <= enc.max_position_embeddings:
    raise InputError(f"hard_forward takes one example of shape (n,) with 1 <= n <= "
                     f"{enc.max_position_embeddings} (the model's positions), got shape "
                     f"{input_ids.shape}; for a batch use infer.AdaptiveEngine")
  token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                    else np.asarray(token_type_ids, np.int32))
  eta = np.asarray(params["speed"]["eta"], np.float32)
  x = _embed(enc, model["bert"], input_ids[None], token_type_ids[None])
  positions = np.arange(len(input_ids))
  kept_positions, scores = [], []
  for l in range(cfg.num_layers):
    zeros = jnp.zeros((1, len(positions)), jnp.float32)
    s = np.asarray(_cp_scores(cfg.cp_hidden, enc.dtype, model[f"predictors_{l}"], x, zeros))[0]
    keep = s >= eta[l] / len(positions)
    keep[0] = True
    scores.append(s)
    positions = positions[keep]
    kept_positions.append(positions)
    x = x[:, np.flatnonzero(keep)]
    x = _layer(enc, model["bert"]["encoder"][f"layer_{l}"], x, zeros[:, : len(positions)])
  logits = _head(enc, cfg.num_labels, model["head"], x)[0]
  return HardRemovalResult(np.asarray(logits), kept_positions, scores)
