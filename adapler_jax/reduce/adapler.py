"""AdapLeR as a reduction policy: contribution scores against the cutoff eta / n.

One keep rule (`cutoff`, `keep_rule`) serves every form:

* `SoftRemoval`, training: Eq. 4 turns each token's distance to the cutoff into a log
  keep-weight edit that the attention bias carries to every later layer;
* `HardRemoval`, inference on one example: tokens below the cutoff are gone;
* the batched engine (`adapler_jax.infer.packing`) calls `keep_rule` on its grids.

Soft removal with a huge lambda makes the same decisions as hard removal (tested).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.models.bert import NEG_INF
from adapler_jax.models.walk import Policy

Array = jax.Array

PAD_LOG_KEEP = -1e9  # log keep weight of padding: exp() is 0, and it stays finite.


def cutoff(eta, n):
  """delta = eta / n: the score a token needs to stay, with n tokens present ([CLS] in)."""
  return eta / n


def keep_rule(scores, eta, n, is_cls, present=True):
  """Hard keep decision: S~ >= eta / n, [CLS] always (`is_cls`: where it is forced; all
  False when it may go, as for span QA), only on present tokens.

  Works on numpy and jax arrays alike; `n` and `eta` broadcast against `scores`.
  """
  return ((scores >= cutoff(eta, n)) | is_cls) & present


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
  it it is the gentle `(S - 1)(beta / lam) / (1 - delta)`; both meet at S = delta. The
  result is clipped to [NEG_INF, 0]. Broadcasts over all arguments. `1 - delta` is floored
  at 1e-6: delta reaches 1 when eta = 1 and only [CLS] is left. (The branches are chosen by
  S < delta, not as their min: below lam^2 = beta delta / (1 - delta) the "gentle" line is
  the steeper one, and the min would swap them.)
  """
  below = (lam / delta) * (scores - delta) - beta / lam
  above = (scores - 1.0) * (beta / lam) / jnp.maximum(1.0 - delta, 1e-6)
  return jnp.clip(jnp.where(scores < delta, below, above), NEG_INF, 0.0)


class SoftRemoval(Policy):
  """Eq. 4 soft removal before every layer; `ctx` is `(log_keep, log_restore)`, each (B, N).

  Every token stays in place (with a fading weight `log_keep`, carried to every later layer
  by the attention bias). `keep_cls=False` (span QA) lets [CLS] fade like any token.
  `restore` (span QA) is the soft form of drop-and-restore: a layer's output replaces a
  token's vector in proportion to its restore weight, x <- r y + (1 - r) x. The restore
  weight gathers only the edits of layers where the token fell below the cutoff, so a token
  above every cutoff so far is updated in full (r = 1, as hard removal runs it) and one
  removed before layer l keeps its layer l-1 output. (Eq. 4 also fades tokens above the
  cutoff a little at every layer; that only shifts attention among them, but as a restore
  weight it would damp every token's update, 26 % after six layers at lambda 10, which
  inference never does.) Without `restore` a removed token is still updated as a query
  (harmless for [CLS]). Records per layer: `log_scores` log S~, `keep_in` keep weights at
  the layer's input, `keep` after its edit, `edit`, `lengths` = sum of kept non-[CLS]
  weights + 1 (with `keep_cls=False`: of all kept weights).
  """

  def __init__(self, predictors: list[Callable], eta: Array, lam, beta: float,
               theta_d: Array, keep_cls: bool = True, restore: bool = False):
    self.predictors, self.eta, self.lam, self.beta, self.theta_d = (
        predictors, eta, lam, beta, theta_d)
    self.keep_cls, self.restore = keep_cls, restore

  @staticmethod
  def initial(attention_mask: Array) -> tuple[Array, Array]:
    log_keep = jnp.where(attention_mask.astype(bool), 0.0, PAD_LOG_KEEP).astype(jnp.float32)
    return log_keep, jnp.zeros_like(log_keep)

  def bias(self, ctx):
    return jnp.maximum(ctx[0], NEG_INF)

  def before_layer(self, l, x, ctx):
    log_keep, log_restore = ctx
    forced = float(self.keep_cls)
    not_cls = jnp.arange(x.shape[-2]) >= forced  # the tokens that may go.
    keep = jnp.exp(log_keep)
    log_scores = masked_log_scores(self.predictors[l](x), log_keep, self.theta_d[l])
    # At least one token, as hard removal counts: with keep_cls=False the kept weights may
    # sum below 1, and eta / n above 1 would put every token below the cutoff.
    n = jnp.maximum(jnp.sum(keep * not_cls, axis=-1, keepdims=True) + forced, 1.0)
    scores, delta = jnp.exp(log_scores), cutoff(self.eta[l], n)
    edit = soft_removal_edit(scores, delta, self.lam, self.beta)
    edit = jnp.where(not_cls, edit * keep, 0.0)
    log_keep = log_keep + edit
    log_restore = log_restore + jnp.where(scores < delta, edit, 0.0)
    new_keep = jnp.exp(log_keep)
    return x, (log_keep, log_restore), {
        "log_scores": log_scores, "keep_in": keep, "keep": new_keep, "edit": edit,
        "lengths": jnp.sum(new_keep * not_cls, -1) + forced}

  def after_layer(self, l, x, y, ctx):
    if not self.restore:
      return y, ctx
    r = jnp.exp(ctx[1])[..., None].astype(y.dtype)
    return r * y + (1 - r) * x, ctx


class HardRemoval(Policy):
  """Hard removal of one example on the host; `ctx` is the original positions (n,) of the
  tokens present. Records `scores` (S~ over the tokens entering each layer) and
  `kept_positions` (the positions each layer runs on). `keep_cls=False` (span QA) lets
  [CLS] go like any token."""

  def __init__(self, scores_fn: Callable[[int, Array], np.ndarray], eta: np.ndarray,
               keep_cls: bool = True):
    self.scores_fn, self.eta, self.keep_cls = scores_fn, eta, keep_cls

  def bias(self, positions):
    return jnp.zeros((1, len(positions)), jnp.float32)

  def positions(self, positions):
    return positions[None]

  def before_layer(self, l, x, positions):
    s = self.scores_fn(l, x)
    is_cls = (positions == 0) & self.keep_cls
    # Once every token is gone (span QA, large eta) later layers see none: n floored at 1.
    keep = keep_rule(s, self.eta[l], max(len(positions), 1), is_cls)
    positions = positions[keep]
    return x[:, np.flatnonzero(keep)], positions, {"scores": s, "kept_positions": positions}
