"""The plain classifier (phase 1): fine-tuning step and full-length prediction."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from adapler_jax.data import TokenizedDataset
from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import SequenceClassifier
from adapler_jax.train import parallel
from adapler_jax.train.losses import cross_entropy
from adapler_jax.train.state import TrainState


def init_classifier(key: jax.Array, encoder: EncoderConfig, num_labels: int,
                    backbone: dict | None = None) -> dict:
  """`{"bert", "head"}` params; `backbone` replaces the random encoder."""
  ids = jnp.zeros((1, 2), jnp.int32)
  params = SequenceClassifier(encoder, num_labels).init(key, ids, ids, jnp.zeros((1, 2)))
  params = params["params"]
  return {**params, "bert": backbone} if backbone is not None else params


def classifier_logits(encoder: EncoderConfig, num_labels: int, params: dict, batch: dict, *,
                      deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
  """(B, N) batch -> (B, C) logits of the full-length classifier."""
  return SequenceClassifier(encoder, num_labels).apply(
      {"params": params}, batch["input_ids"], batch["token_type_ids"],
      attention_bias_from_mask(batch["attention_mask"]), deterministic=deterministic,
      rngs=None if deterministic else {"dropout": rng})[0]


def make_finetune_step(encoder: EncoderConfig, num_labels: int,
                       optimizer: optax.GradientTransformation, mesh: Mesh | None = None
                       ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Jitted `step(state, batch) -> (state, {"loss", "accuracy"})`, with dropout, state donated.

  With a `mesh`, the step is data-parallel: the state is replicated in and out and the
  batch is split along `data` (see `parallel`).
  """

  def step(state: TrainState, batch: dict):
    def loss_fn(params):
      logits = classifier_logits(encoder, num_labels, params, batch, deterministic=False,
                                 rng=state.step_key())
      return cross_entropy(logits, batch["labels"]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return parallel.jit_train_step(step, mesh)


_MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def predict(encoder: EncoderConfig, num_labels: int, params: dict, data: TokenizedDataset,
            batch_size: int = 64, mesh: Mesh | None = None) -> np.ndarray:
  """(E, C) logits in dataset order, through length-bucketed batches.

  With a `mesh`, each batch is split over its devices (`batch_size` must divide by their
  number) and params are replicated.
  """
  out = np.zeros((len(data), num_labels), np.float32)
  batches = parallel.map_eval_batches(classifier_logits, encoder, num_labels, params, data,
                                      batch_size, _MODEL_INPUTS, mesh)
  for rows, logits in batches:
    out[rows] = logits
  return out
