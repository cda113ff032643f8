"""The plain fine-tuned model (phase 1): fine-tuning step and full-length prediction, for
any task head (`models.heads`; a label count means classification)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from adapler_jax.data import TokenizedDataset
from adapler_jax.eval import squad as squad_eval
from adapler_jax.models import dense
from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import Head, as_head
from adapler_jax.train import parallel
from adapler_jax.train.losses import task_accuracy, task_loss
from adapler_jax.train.state import TrainState


def init_classifier(key: jax.Array, encoder: EncoderConfig, head: int | Head,
                    backbone: dict | None = None) -> dict:
  """`{"bert", "head"}` params of the head's model; `backbone` replaces the random encoder."""
  ids = jnp.zeros((1, 2), jnp.int32)
  params = as_head(head).model(encoder).init(key, ids, ids, jnp.zeros((1, 2)))["params"]
  return {**params, "bert": backbone} if backbone is not None else params


def classifier_logits(encoder: EncoderConfig, head: int | Head, params: dict, batch: dict, *,
                      deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
  """(B, N) batch -> logits of the full-length model: (B, C), or (B, N, 2) for span QA."""
  return as_head(head).model(encoder).apply(
      {"params": params}, batch["input_ids"], batch["token_type_ids"],
      attention_bias_from_mask(batch["attention_mask"]), deterministic=deterministic,
      rngs=None if deterministic else {"dropout": rng})[0]


def make_finetune_step(encoder: EncoderConfig, head: int | Head,
                       optimizer: optax.GradientTransformation, mesh: Mesh | None = None
                       ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Jitted `step(state, batch) -> (state, {"loss", "accuracy"})`, with dropout, state donated.

  The loss is the head's (`losses.task_loss`); span QA's accuracy is the share of right start
  and end positions. With a `mesh`, the step is data-parallel: the state is replicated in and
  out and the batch is split along `data` (see `parallel`).
  """
  head = as_head(head)

  def step(state: TrainState, batch: dict):
    def loss_fn(params):
      logits = classifier_logits(encoder, head, params, batch, deterministic=False,
                                 rng=state.step_key())
      return task_loss(head, logits, batch), logits

    with dense.kernel_gradient_layout():
      (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": task_accuracy(head, logits, batch)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return parallel.jit_train_step(step, mesh)


_MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def predict(encoder: EncoderConfig, head: int | Head, params: dict, data: TokenizedDataset,
            batch_size: int = 64, mesh: Mesh | None = None) -> np.ndarray:
  """Logits in dataset order, through length-bucketed batches: (E, C), or for span QA
  (E, max_length, 2) with -inf past each batch's width.

  With a `mesh`, each batch is split over its devices (`batch_size` must divide by their
  number) and params are replicated.
  """
  head = as_head(head)
  batches = parallel.map_eval_batches(classifier_logits, encoder, head, params, data,
                                      batch_size, _MODEL_INPUTS, mesh)
  if head.restore:
    return np.stack(squad_eval.gather_span_logits(batches, len(data), data.max_length), axis=-1)
  out = np.zeros((len(data), head.num_labels), np.float32)
  for rows, logits in batches:
    out[rows] = logits
  return out
