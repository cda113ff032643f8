"""Checks made before a run writes anything or takes a step, each failing with one line."""

from __future__ import annotations

import jax
import ml_collections

from adapler_jax.errors import UserError
from adapler_jax.models import adapler
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.train import classifier, optim
from adapler_jax.train.checkpoints import Checkpointer

MIN_LENGTH = 2  # [CLS] and [SEP].


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every `<section>.batch_size` is at least 1, `data.max_length` at least 2 and
  `search.floor_ratio` in [0, 1)."""
  for section, fields in config.items():
    if isinstance(fields, ml_collections.ConfigDict) and "batch_size" in fields:
      if fields.batch_size < 1:
        raise UserError(f"config {section}.batch_size is {fields.batch_size}; it must be at "
                        f"least 1 (e.g. --config.{section}.batch_size=32)")
  if config.data.max_length < MIN_LENGTH:
    raise UserError(f"config data.max_length is {config.data.max_length}; it must be at least "
                    f"{MIN_LENGTH} ([CLS] and [SEP]), e.g. --config.data.max_length=128")
  if not 0 <= config.search.floor_ratio < 1:
    raise UserError(f"config search.floor_ratio is {config.search.floor_ratio}; it must lie in "
                    "[0, 1) (0: the smallest trained sub-model), e.g. "
                    "--config.search.floor_ratio=0.25")
  frozen_groups(config)


def frozen_groups(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The AdapLeR parameter groups `adapler.frozen` names (comma-separated), each known."""
  names = tuple(n.strip() for n in config.adapler.get("frozen", "").split(",") if n.strip())
  unknown = [n for n in names if n not in optim.ADAPLER_GROUP_NAMES]
  if unknown:
    raise UserError(f"config adapler.frozen names {', '.join(unknown)}, not a parameter group; "
                    f"use any of {','.join(optim.ADAPLER_GROUP_NAMES)}, e.g. "
                    "--config.adapler.frozen=speed,predictors")
  return names


def check_max_length(config: ml_collections.ConfigDict, encoder: EncoderConfig) -> None:
  """`data.max_length` fits the backbone's position table (beyond it embeddings are NaN)."""
  positions = encoder.max_length
  if config.data.max_length > positions:
    raise UserError(f"config data.max_length {config.data.max_length} exceeds the {positions} "
                    f"positions of backbone {config.backbone}; pass "
                    f"--config.data.max_length={positions} or less")


def check_flops_mode(mode: str, task) -> None:
  """The paper's fitted FLOPs constants count BERT-base classifiers, not span QA."""
  if mode == "paper" and task.is_span:
    raise UserError(f"FLOPs mode 'paper' (the AdapLeR paper's BERT-base classification "
                    f"constants) does not fit span QA task {task.name}; use --flops analytic "
                    "(--config.eval.flops=analytic)")


def check_keep_cls(config: ml_collections.ConfigDict, task) -> None:
  """LAT may let [CLS] go only where the head reads every position (span QA)."""
  if config.get("method") == "lat" and not config.lat.keep_cls and not task.is_span:
    raise UserError(f"config lat.keep_cls is False, but task {task.name} classifies from [CLS]; "
                    "keep it (--config.lat.keep_cls=True)")


def check_checkpoints(run) -> None:
  """The workdir's checkpoints, if any, fit the models this run builds (same backbone shape,
  labels); raises a one-line `CheckpointError` before anything is overwritten."""
  from adapler_jax.pipeline import lat_phases, phases  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  classifier_params = lambda: classifier.init_classifier(key, run.encoder, run.head,
                                                         run.backbone)
  models = {
      phases.FINETUNE: classifier_params,
      phases.ADAPLER: lambda: adapler.init(key, run.adapler_config(), run.backbone),
      lat_phases.LENGTHDROP: classifier_params,
  }
  for name, init in models.items():
    ckpt = Checkpointer(run.workdir / name, read_only=True)
    if ckpt.latest_step() is not None:
      ckpt.check_fits(jax.eval_shape(init), under="params")
    ckpt.close()
