"""The Length-Adaptive Transformer train step: LengthDrop, LayerDrop and the sandwich rule.

One step, one jitted function (all sampling happens on the device from the step's key, so
a new length config never recompiles):

* the full model (with LayerDrop when `teacher_layerdrop`) trains with cross-entropy;
* the smallest sub-model (constant ratio at every running layer) and `num_sandwich` random
  sub-models (LengthDrop) train towards the full model's detached predictions;
* loss = (CE + sum of the sub-models' KD terms) / (num_sandwich + 2), differentiated one
  pass at a time (`sandwich_grads`), so memory holds one pass's activations, not all of them.

Span QA (a `Span` head for `head`): the task loss is (CE(start) + CE(end)) / 2 and the KD
terms average the start and the end distributions, each a softmax over all positions.

KD direction: "forward" is the usual soft cross-entropy to the teacher (gradient of
KL(teacher || student)); "reverse" is KL(student || teacher), what the LAT authors' swapped
`KLDivLoss(log_softmax(teacher), softmax(student))` computes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from adapler_jax.models import dense
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.models.heads import Head, as_head
from adapler_jax.models.lat import masked_forward
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.train import parallel
from adapler_jax.train.losses import task_accuracy, task_loss
from adapler_jax.train.state import TrainState

Array = jax.Array
KD_DIRECTIONS = ("forward", "reverse")


@dataclasses.dataclass(frozen=True)
class LATConfig:
  """Static settings of LengthDrop training (defaults: the LAT paper's)."""

  base: int  # the padded length configs refer to (the task's max length).
  length_drop: float = 0.2  # p: l_i ~ U[ceil((1 - p) l_{i-1}), l_{i-1}].
  smallest_ratio: float = 0.2  # the smallest sub-model's per-layer ratio.
  min_length: int = 2
  layer_drop: float = 0.2
  num_sandwich: int = 2  # random sub-models besides the smallest.
  kd: str = "forward"
  teacher_layerdrop: bool = True
  flags: SelectionFlags = SelectionFlags()

  def __post_init__(self):
    if self.kd not in KD_DIRECTIONS:
      raise ValueError(f"kd {self.kd!r} is not one of {', '.join(KD_DIRECTIONS)}")


def kd_loss(teacher_logits: Array, student_logits: Array, direction: str = "forward", *,
            axis: int = -1) -> Array:
  """Batch-mean distillation loss over the distributions along `axis`; the teacher is
  detached. Span logits (B, T, 2) take axis=-2: the mean of the start and end terms.

  forward: sum p_t (log p_t - log p_s) = KL(teacher || student);
  reverse: sum p_s (log p_s - log p_t) = KL(student || teacher).
  """
  log_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits), axis=axis)
  log_s = jax.nn.log_softmax(student_logits, axis=axis)
  if direction == "forward":
    kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=axis)
  elif direction == "reverse":
    kl = jnp.sum(jnp.exp(log_s) * (log_s - log_t), axis=axis)
  else:
    raise ValueError(f"kd {direction!r} is not one of {', '.join(KD_DIRECTIONS)}")
  return jnp.mean(kl)


def _sub_model(enc, head, lat: LATConfig, params, batch, key, smallest):
  """One sub-model's logits: its own LayerDrop, then a sampled (or the smallest) config.
  `smallest` is a bool array (traced in the scan of `sandwich_grads`): both configs are
  drawn from the same key and one kept."""
  k_layers, k_lengths, k_dropout = jax.random.split(key, 3)
  layer_on = lengths.layer_drop(k_layers, enc.num_layers, lat.layer_drop)
  sample = lambda k, ratio: lengths.sample_config(k, lat.base, layer_on, ratio=ratio,
                                                  min_length=lat.min_length)
  config = jnp.where(smallest, sample(None, lat.smallest_ratio),
                     sample(k_lengths, lat.length_drop))
  logits, trace = masked_forward(enc, head, params, batch, config, base=lat.base,
                                 flags=lat.flags, layer_on=layer_on, deterministic=False,
                                 rng=k_dropout)
  return logits, config, trace


def _full_model(enc, head: Head, lat: LATConfig, params, batch, key):
  """The full model's logits (the teacher), with LayerDrop when `teacher_layerdrop`."""
  k_layers, k_dropout = jax.random.split(key)
  layer_on = (lengths.layer_drop(k_layers, enc.num_layers, lat.layer_drop)
              if lat.teacher_layerdrop else None)
  logits, _ = masked_forward(enc, head, params, batch, None, base=lat.base,
                             flags=lat.flags, layer_on=layer_on, deterministic=False,
                             rng=k_dropout)
  return logits


def sandwich_terms(enc: EncoderConfig, head: int | Head, lat: LATConfig, params: dict,
                   batch: dict, key: Array, teacher_logits: Array | None = None):
  """The sandwich rule's terms, `[CE_full, KD_smallest, KD_1, ..., KD_ns]`, and aux, from
  one forward of every pass: the reference `sandwich_grads` (what trains) is checked
  against, and its memory compared with (`bench/lat_step_memory.py`).

  `head`: a label count (classification, `labels`) or a `models.heads` head (`Span()`:
  `start_positions`, `end_positions`).

  `teacher_logits` given: the sub-models distil from them (the full model still runs for
  CE); None: from this forward's full model, detached. Summing the terms of separate calls
  with the same key gives the one-pass loss (tested).
  """
  head = as_head(head)
  k_teacher, k_subs = _pass_keys(lat, key)
  ce, logits = _full_term(enc, head, lat, params, batch, k_teacher)
  teacher = logits if teacher_logits is None else teacher_logits
  terms, configs = [ce], []
  for i in range(lat.num_sandwich + 1):
    term, config = _sub_term(enc, head, lat, params, batch, k_subs[i], jnp.asarray(i == 0),
                             teacher)
    terms.append(term)
    configs.append(config)
  return terms, {"logits": logits, "configs": jnp.stack(configs)}


def _pass_keys(lat: LATConfig, key):
  """The full model's key and the sub-models' keys (num_sandwich + 1,), the smallest first."""
  keys = jax.random.split(key, lat.num_sandwich + 2)
  return keys[0], keys[1:]


def _full_term(enc, head: Head, lat: LATConfig, params, batch, key):
  """The full model's task loss and its logits."""
  logits = _full_model(enc, head, lat, params, batch, key)
  return task_loss(head, logits, batch), logits


def _sub_term(enc, head: Head, lat: LATConfig, params, batch, key, smallest, teacher):
  """One sub-model's distillation loss towards `teacher`, and its config. Span logits
  (B, T, 2) are distributions over positions (axis -2)."""
  logits, config, _ = _sub_model(enc, head, lat, params, batch, key, smallest)
  return kd_loss(teacher, logits, lat.kd, axis=-2 if head.restore else -1), config


def sandwich_loss(enc, head, lat: LATConfig, params, batch, key):
  """(CE + sum KD) / (num_sandwich + 2), and aux."""
  terms, aux = sandwich_terms(enc, head, lat, params, batch, key)
  return sum(terms) / len(terms), {**aux, "terms": jnp.stack(terms)}


def sandwich_grads(enc, head, lat: LATConfig, params, batch, key):
  """`sandwich_loss` and its gradient, one backward pass per term as the LAT authors run it.

  The full model's forward and backward come first; then the sub-models, one at a time in a
  `lax.scan` whose carry starts from the full model's gradient. Only one pass's activations
  are alive at once, so peak memory is about 1 / (num_sandwich + 2) of differentiating the
  summed loss, with the same keys, configs and gradient (up to summation order).
  Returns `(loss, aux, grads)` with `sandwich_loss`'s aux.
  """
  head = as_head(head)
  k_teacher, k_subs = _pass_keys(lat, key)
  full = lambda p: _full_term(enc, head, lat, p, batch, k_teacher)
  with dense.kernel_gradient_layout():
    (ce, logits), grads = jax.value_and_grad(full, has_aux=True)(params)
  teacher = jax.lax.stop_gradient(logits)

  def sub_model(total, xs):
    k, smallest = xs
    kd = lambda p: _sub_term(enc, head, lat, p, batch, k, smallest, teacher)
    with dense.kernel_gradient_layout():
      (term, config), g = jax.value_and_grad(kd, has_aux=True)(params)
    return jax.tree.map(jnp.add, total, g), (term, config)

  is_smallest = jnp.arange(lat.num_sandwich + 1) == 0
  grads, (kds, configs) = jax.lax.scan(sub_model, grads, (k_subs, is_smallest))
  n = lat.num_sandwich + 2
  terms = jnp.concatenate([ce[None], kds])
  grads = jax.tree.map(lambda g: g / n, grads)
  return jnp.sum(terms) / n, {"logits": logits, "configs": configs, "terms": terms}, grads


def make_lat_step(enc: EncoderConfig, head: int | Head, lat: LATConfig,
                  optimizer: optax.GradientTransformation, mesh: Mesh | None = None
                  ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Jitted `step(state, batch) -> (state, metrics)`; the state is donated. Metrics: `loss`,
  `ce`, `kd_smallest`, `kd_random`, `accuracy` (full model), `smallest_config` (L,).
  `head`: a label count or a `models.heads` head."""
  head = as_head(head)

  def step(state: TrainState, batch: dict):
    loss, aux, grads = sandwich_grads(enc, head, lat, state.params, batch, state.step_key())
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    terms = aux["terms"]
    metrics = {"loss": loss, "ce": terms[0], "kd_smallest": terms[1],
               "kd_random": jnp.mean(terms[2:]) if len(terms) > 2 else jnp.zeros(()),
               "accuracy": task_accuracy(head, aux["logits"], batch),
               "smallest_config": aux["configs"][0]}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return parallel.jit_train_step(step, mesh)
