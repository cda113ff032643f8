"""The AdapLeR train step: one forward pass, two backward passes (one per objective, both
pulled through the same `jax.vjp`), one partitioned update.

The model group (backbone, predictors, head) descends L_CE + gamma * L_CP; the speed
group (eta, theta) descends L_CE + phi * L_LENGTH. theta is not in the forward graph:
its gradient is that of the dummy [CLS] multiplier theta_d = 1, divided by theta
(paper Appendix B). Span QA heads read every position, not [CLS]: removal does not force
[CLS], its CP target is its saliency like any token's, and theta is not trained.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from adapler_jax.models import dense
from adapler_jax.models.adapler import AdapLeRConfig, soft_forward
from adapler_jax.train import losses, parallel
from adapler_jax.train.state import TrainState, create_train_state  # noqa: F401 (re-export)

Array = jax.Array

ETA_RANGE = (0.01, 1.0)
THETA_MIN = 1e-3


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """gamma weighs L_CP for the model group, phi weighs L_LENGTH for the speed group."""

  gamma: float
  phi: float
  ce: float = 1.0  # weight of L_CE in both objectives (1 in training; 0 isolates terms).


def adapler_grads(cfg: AdapLeRConfig, params: dict, batch: dict, lam: Array,
                  weights: LossWeights, *, rng: Array | None = None,
                  deterministic: bool = False):
  """Gradients of both objectives from one forward pass (and two backward passes).

  Args:
    cfg: model shape. params: `{"model", "speed": {"eta", "theta"}}`.
    batch: `input_ids`, `token_type_ids` (B, N) int, `attention_mask` (B, N) bool,
      `labels` (B,) int (span QA: `start_positions`, `end_positions` (B,)), `saliency`
      (B, N) float.
    lam: scalar lambda. weights: loss weights.
  Returns:
    `(grads, aux)`: grads shaped like `params`; aux holds the three losses, logits and
    the forward's per-layer trace.
  """
  if not deterministic and rng is None:
    raise ValueError("adapler_grads with dropout (deterministic=False) needs a key: pass rng= "
                     "or deterministic=True")
  speed = params["speed"]
  num_layers = cfg.num_layers
  theta_target = speed["theta"].at[0].set(1.0)  # theta^0 = 1: [CLS] has no context yet.

  def forward(model, eta, theta_d):
    logits, trace = soft_forward(cfg, {"model": model, "speed": {"eta": eta}}, batch, lam,
                                 theta_d=theta_d, deterministic=deterministic, rng=rng)
    targets = losses.cp_targets(batch["saliency"], trace["keep_in"], theta_target,
                                keep_cls=cfg.keep_cls)
    terms = (losses.task_loss(cfg.task_head, logits, batch),
             losses.cp_loss(trace["log_scores"], targets),
             losses.length_loss(trace["lengths"]))
    return terms, (logits, trace)

  with dense.kernel_gradient_layout():
    terms, vjp, (logits, trace) = jax.vjp(
        forward, params["model"], speed["eta"], jnp.ones((num_layers,), jnp.float32),
        has_aux=True)
  cotangent = lambda *ws: tuple(jnp.asarray(w, t.dtype) for w, t in zip(ws, terms))
  g_model, _, _ = vjp(cotangent(weights.ce, weights.gamma, 0.0))
  _, g_eta, g_theta_d = vjp(cotangent(weights.ce, 0.0, weights.phi))
  # theta only shapes the CP targets of [CLS]; span heads do not amplify it (it stays put).
  trains_theta = (jnp.arange(num_layers) > 0) & cfg.keep_cls
  g_theta = jnp.where(trains_theta, g_theta_d / speed["theta"], 0.0)
  grads = {"model": g_model, "speed": {"eta": g_eta, "theta": g_theta}}
  ce, cp, length = terms
  return grads, {"ce": ce, "cp": cp, "length": length, "logits": logits, "trace": trace,
                 "theta_d_grad": g_theta_d}


def clip_speed(params: dict) -> dict:
  """eta into [0.01, 1] and theta to >= 1e-3, applied after every update."""
  speed = params["speed"]
  return {**params, "speed": {"eta": jnp.clip(speed["eta"], *ETA_RANGE),
                              "theta": jnp.maximum(speed["theta"], THETA_MIN)}}


def make_train_step(cfg: AdapLeRConfig, optimizer: optax.GradientTransformation,
                    weights: LossWeights, *, donate: bool = True, mesh: Mesh | None = None
                    ) -> Callable[[TrainState, dict, Array], tuple[TrainState, dict]]:
  """Builds the jitted `step(state, batch, lam) -> (state, metrics)`.

  `lam` (a Python float or scalar array) is traced as float32, so the per-epoch lambda
  schedule never recompiles. `state` is
  donated. Metrics: `ce`, `cp`, `length`, `accuracy` scalars and per-layer `eta`,
  `theta`, `kept` (L,) mean soft length after each layer's removal. With a `mesh`, the
  step is data-parallel: state and lambda replicated, the batch split along `data`.
  """

  def step(state: TrainState, batch: dict, lam: Array):
    grads, aux = adapler_grads(cfg, state.params, batch, jnp.asarray(lam, jnp.float32),
                               weights, rng=state.step_key())
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = clip_speed(optax.apply_updates(state.params, updates))
    metrics = {
        "ce": aux["ce"], "cp": aux["cp"], "length": aux["length"],
        "accuracy": losses.task_accuracy(cfg.task_head, aux["logits"], batch),
        "eta": params["speed"]["eta"], "theta": params["speed"]["theta"],
        "kept": aux["trace"]["lengths"].mean(axis=1),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  jitted = parallel.jit_train_step(step, mesh, donate=donate)

  def train_step(state: TrainState, batch: dict, lam) -> tuple[TrainState, dict]:
    # A fixed float32 scalar: Python floats and arrays would trace as different types.
    return jitted(state, batch, jnp.asarray(lam, jnp.float32))

  train_step.jitted = jitted
  return train_step
