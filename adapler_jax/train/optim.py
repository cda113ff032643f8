"""Optimisers: AdamW with warmup and linear decay, and the labelled parameter groups."""

from __future__ import annotations

import re
from typing import Collection, Sequence

import jax
import optax


def warmup_linear_decay(learning_rate: float, total_steps: int,
                        warmup_fraction: float = 0.06) -> optax.Schedule:
  """Linear warmup over `warmup_fraction` of the steps (at least one step unless the
  fraction is 0: then the first step runs at the full rate), then linear decay to 0."""
  if warmup_fraction == 0:
    return optax.linear_schedule(learning_rate, 0.0, max(1, total_steps))
  warmup = max(1, int(round(warmup_fraction * total_steps)))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup),
       optax.linear_schedule(learning_rate, 0.0, max(1, total_steps - warmup))],
      boundaries=[warmup])


def path_str(path) -> str:
  """A pytree key path as `a/b/c`."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def label_params(params, rules: Sequence[tuple[str, str]]):
  """Labels every leaf by the first regex in `rules` matching its `/`-joined path.

  Raises:
    ValueError naming the leaves no rule matches.
  """
  compiled = [(re.compile(pattern), label) for pattern, label in rules]

  def label(path, _):
    name = path_str(path)
    for pattern, lab in compiled:
      if pattern.search(name):
        return lab
    return None

  labels = jax.tree_util.tree_map_with_path(label, params)
  unlabelled = [path_str(p) for p, lab in jax.tree_util.tree_flatten_with_path(
      labels, is_leaf=lambda x: x is None)[0] if lab is None]
  if unlabelled:
    raise ValueError(f"parameters {unlabelled[:5]} match no optimizer group; add a rule")
  return labels


def decay_mask(params):
  """Weight decay on kernels and embeddings only (not biases or LayerNorm scales)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: not re.search(r"(bias|scale)$", path_str(p)), params)


def adamw(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.1,
          clip_norm: float = 1.0) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (eps 1e-6 as in BERT) with masked decay."""
  return optax.chain(
      optax.clip_by_global_norm(clip_norm),
      optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay,
                  mask=decay_mask))


ADAPLER_GROUPS = (("^speed/", "speed"), ("^model/predictors_", "predictors"),
                  ("^model/", "model"))
ADAPLER_GROUP_NAMES = tuple(name for _, name in ADAPLER_GROUPS)


def adapler_optimizer(learning_rate: float, total_steps: int, *, weight_decay: float = 0.1,
                      warmup_fraction: float = 0.06, speed_learning_rate: float = 5e-4,
                      predictor_learning_rate: float | None = None,
                      frozen: Collection[str] = (),
                      clip_norm: float = 1.0) -> optax.GradientTransformation:
  """One `optax.partition` over the labelled groups of `ADAPLER_GROUPS`.

  model (backbone, head) and predictors: clipped AdamW with warmup and linear decay, the
  predictors at `predictor_learning_rate` (default: `learning_rate`, as in the paper; a
  larger one lets the fresh predictors learn in short runs). speed (eta, theta): clipped Adam.
  The groups named in `frozen` keep their values: their learning rate is zero, so the
  optimizer state has the same structure either way and a run can resume frozen or not.
  """
  unknown = set(frozen) - set(ADAPLER_GROUP_NAMES)
  if unknown:
    raise ValueError(f"unknown AdapLeR parameter groups {sorted(unknown)}; "
                     f"choose from {', '.join(ADAPLER_GROUP_NAMES)}")
  rate = lambda group, value: 0.0 if group in frozen else value
  if predictor_learning_rate is None:
    predictor_learning_rate = learning_rate
  decayed = lambda group, peak: adamw(
      warmup_linear_decay(rate(group, peak), total_steps, warmup_fraction), weight_decay,
      clip_norm)
  return optax.partition(
      {"model": decayed("model", learning_rate),
       "predictors": decayed("predictors", predictor_learning_rate),
       "speed": optax.chain(optax.clip_by_global_norm(clip_norm),
                            optax.adam(rate("speed", speed_learning_rate)))},
      lambda params: label_params(params, ADAPLER_GROUPS))
