"""Checks made before a run writes anything or takes a step, each failing with one line."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import ml_collections

from adapler_jax.errors import UserError
from adapler_jax.eval.report import ENGINES
from adapler_jax.infer import flops
from adapler_jax.infer.flops import MODES as FLOPS_MODES
from adapler_jax.models import adapler
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.reduce.lengths import BASES
from adapler_jax.train import classifier, optim
from adapler_jax.train.checkpoints import Checkpointer
from adapler_jax.train.lat_step import KD_DIRECTIONS

MIN_LENGTH = 2  # [CLS] and [SEP].
METHODS = ("adapler", "lat")
SEARCH_COSTS = ("padded", "actual")

# Fields holding one of a few names.
CHOICES = {"method": METHODS, "dtype": ("float32", "bfloat16", "float16"),
           "eval.engine": ENGINES, "eval.flops": FLOPS_MODES, "search.cost": SEARCH_COSTS,
           "lat.kd": KD_DIRECTIONS, "lat.length_base": BASES,
           "eval.split": ("dev", "test", "train")}

# Numeric fields: (lowest, highest, whether the highest is excluded, an example value).
RANGES = {
    "data.train_subset": (0, None, False, 5000), "data.dev_subset": (0, None, False, 1000),
    "train.epochs": (1, None, False, 3), "adapler.epochs": (1, None, False, 3),
    "lat.epochs": (1, None, False, 3),
    "train.keep_best": (1, None, False, 3), "train.log_every_steps": (1, None, False, 50),
    "train.eval_every_steps": (0, None, False, 0),
    "train.checkpoint_every_steps": (0, None, False, 0),
    "train.warmup_fraction": (0, 1, True, 0.06), "adapler.warmup_fraction": (0, 1, True, 0.06),
    "adapler.predictor_learning_rate": (0, None, False, 0),
    "adapler.speed_learning_rate": (0, None, False, 5e-4), "adapler.beta": (0, None, False, 0.1),
    "lat.length_drop": (0, 1, True, 0.2), "lat.layer_drop": (0, 1, True, 0.2),
    "search.held_out": (1, None, False, 872), "search.population": (1, None, False, 20),
    "search.iterations": (0, None, False, 30), "search.mutations": (0, None, False, 30),
    "search.crossovers": (0, None, False, 30), "search.mutation_prob": (0, 1, False, 0.5),
    "search.floor_ratio": (0, 1, True, 0.25),
    "seed": (0, None, False, 22), "search.seed": (0, None, False, 0),
    "search.max_attempts": (1, None, False, 1000),
    "data.resplit_train": (0, None, False, 38), "data.resplit_test": (0, None, False, 8),
    "data.resplit_seed": (0, None, False, 0), "data.doc_stride": (1, None, False, 128),
    "train.weight_decay": (0, None, False, 0.1), "adapler.weight_decay": (0, None, False, 0.1),
    "lat.weight_decay": (0, None, False, 0.0), "saliency.num_checkpoints": (1, None, False, 3),
    "adapler.gamma": (0, None, False, 5e-3), "adapler.phi": (0, None, False, 5e-4),
    "adapler.tolerance": (0, None, False, 1.0), "adapler.eta_init": (0, 1, False, 0.25),
    "lat.num_sandwich": (0, None, False, 2), "lat.min_length": (1, None, False, 2),
    "lat.smallest_ratio": (0, 1, True, 0.2), "lat.eval_length_ratio": (0, 1, True, 0.2),
}
# Fields that must be positive and finite (rates, scales), with an example value.
POSITIVE = {"train.learning_rate": "2e-5", "adapler.learning_rate": "2e-5",
            "lat.learning_rate": "2e-5", "adapler.lambda_init": "10",
            "adapler.lambda_rate": "10", "adapler.theta_init": "1"}


def _get(config: ml_collections.ConfigDict, dotted: str):
  section, _, field = dotted.rpartition(".")
  return (config[section] if section else config).get(field)


def _range_text(low, high, high_open: bool) -> str:
  if high is None:
    return f"at least {low}"
  return f"in [{low}, {high})" if high_open else f"in [{low}, {high}]"


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every name-valued field holds one of its names, every numeric field lies in its range
  (`CHOICES`, `RANGES`; `POSITIVE` fields positive and finite), every `<section>.batch_size` is
  at least 1 and `data.max_length` at least 2."""
  for dotted, names in CHOICES.items():
    value = _get(config, dotted)
    if value is not None and value not in names:
      raise UserError(f"config {dotted} is {value!r}; it must be one of {', '.join(names)}, "
                      f"e.g. --config.{dotted}={names[0]}")
  for dotted, (low, high, high_open, example) in RANGES.items():
    value = _get(config, dotted)
    if value is None:
      continue
    inside = math.isfinite(value) and value >= low and (
        high is None or (value < high if high_open else value <= high))
    if not inside:
      if dotted == "search.floor_ratio":  # 0 has a meaning worth saying.
        raise UserError(f"config search.floor_ratio is {value}; it must lie in [0, 1) (0: the "
                        "smallest trained sub-model), e.g. --config.search.floor_ratio=0.25")
      raise UserError(f"config {dotted} is {value}; it must be {_range_text(low, high, high_open)}"
                      f", e.g. --config.{dotted}={example}")
  for dotted, example in POSITIVE.items():
    value = _get(config, dotted)
    if value is not None and not (math.isfinite(value) and value > 0):
      raise UserError(f"config {dotted} is {value}; it must be a positive number, e.g. "
                      f"--config.{dotted}={example}")
  lat = config.get("lat")
  if lat is not None and lat.smallest_ratio < lat.length_drop:
    raise UserError(f"config lat.smallest_ratio {lat.smallest_ratio} is below lat.length_drop "
                    f"{lat.length_drop}: LengthDrop would sample sub-models smaller than the "
                    "smallest one the sandwich trains; set both alike, e.g. "
                    f"--config.lat.smallest_ratio={lat.length_drop}")
  check_grid(config.search.eta_multipliers)
  for section, fields in config.items():
    if isinstance(fields, ml_collections.ConfigDict) and "batch_size" in fields:
      if fields.batch_size < 1:
        raise UserError(f"config {section}.batch_size is {fields.batch_size}; it must be at "
                        f"least 1 (e.g. --config.{section}.batch_size=32)")
  if config.data.max_length < MIN_LENGTH:
    raise UserError(f"config data.max_length is {config.data.max_length}; it must be at least "
                    f"{MIN_LENGTH} ([CLS] and [SEP]), e.g. --config.data.max_length=128")
  frozen_groups(config)


# The train.py phases that take optimizer steps (None: every phase, as `all`).
STEPPING_PHASES = (None, "all", "finetune", "adapler", "lengthdrop")


def check_training_flags(config: ml_collections.ConfigDict, phase: str | None = None) -> None:
  """Settings a run that trains must not combine (a finished run that did is read as it
  ran: `lat_phases.pad_queries`), and float16 for a `phase` that takes optimizer steps:
  there is no loss scaling, so most gradients would underflow (on MiniLM 99 % of them lie
  below float16's smallest normal number)."""
  if config.get("dtype") == "float16" and phase in STEPPING_PHASES:
    raise UserError(f"config dtype is float16, and --phase {phase or 'all'} trains: without "
                    "loss scaling most gradients underflow in float16; train with "
                    "--config.dtype=bfloat16 or float32 (float16 serves a trained run: "
                    "--phase evaluate or search with --config.dtype=float16)")
  lat = config.get("lat")
  if lat is not None and lat.include_pad_queries and lat.length_base == "actual":
    raise UserError("config lat.include_pad_queries=True counts padded query rows, but "
                    "lat.length_base='actual' never puts padding in play, so it would change "
                    "nothing; set --config.lat.length_base=padded or leave include_pad_queries "
                    "False")


def check_grid(grid: Sequence[float], name: str = "search.eta_multipliers") -> tuple[float, ...]:
  """The multiplier grid as floats; a `UserError` naming `name` unless it rises and holds 1."""
  try:
    grid = tuple(float(v) for v in grid)
  except (TypeError, ValueError):
    raise UserError(f"{name} {grid!r} must be numbers, e.g. 0,0.5,1,1.5,2") from None
  if len(grid) < 2 or any(not v >= 0 for v in grid) or list(grid) != sorted(set(grid)):
    raise UserError(f"{name} {grid} must be at least two distinct "
                    "non-negative values in rising order, e.g. 0,0.5,1,1.5,2")
  if 1.0 not in grid:
    raise UserError(f"{name} {grid} must contain 1 (the trained cutoffs)")
  return grid


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


def check_flops_mode(mode: str, task, encoder) -> None:
  """The paper's fitted FLOPs constants count 12-layer BERT-base classifiers: not span QA,
  not other depths (refused before any work, not after the evaluation)."""
  fix = "use --flops analytic (--config.eval.flops=analytic)"
  if mode == "paper" and task.is_span:
    raise UserError(f"FLOPs mode 'paper' (the AdapLeR paper's BERT-base classification "
                    f"constants) does not fit span QA task {task.name}; {fix}")
  if mode == "paper" and encoder.num_layers != flops.PAPER_NUM_LAYERS:
    raise UserError(f"FLOPs mode 'paper' counts the AdapLeR paper's {flops.PAPER_NUM_LAYERS}-"
                    f"layer BERT-base; this backbone has {encoder.num_layers} layers: {fix}")


def check_keep_cls(config: ml_collections.ConfigDict, task) -> None:
  """LAT may let [CLS] go only where the head reads every position (span QA)."""
  if config.get("method") == "lat" and not config.lat.keep_cls and not task.is_span:
    raise UserError(f"config lat.keep_cls is False, but task {task.name} classifies from [CLS]; "
                    "keep it (--config.lat.keep_cls=True)")


def check_train_rows(config: ml_collections.ConfigDict, rows: int) -> None:
  """Each training phase of the method gets at least one full batch (the remainder of an
  epoch is dropped) from the `rows` of the train split."""
  second = "lat.batch_size" if config.get("method") == "lat" else "adapler.batch_size"
  for dotted in ("train.batch_size", second):
    size = _get(config, dotted)
    if size > rows:
      raise UserError(f"the train split has {rows} rows, fewer than {dotted} {size}, so no "
                      f"full batch to train on; lower --config.{dotted} or use more rows "
                      "(data.train_subset)")


def check_lat_eval_config(run) -> None:
  """A LAT run's `lat.eval_length_config` parses and fits the model (before it is stored)."""
  from adapler_jax.pipeline import lat_phases  # pylint: disable=g-import-not-at-top
  if run.config.get("method") == "lat":
    lat_phases.eval_length_config(run)


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


def check_phase_inputs(run, phase: str | None) -> None:
  """What `phase` reads from the workdir was made for this config, checked before the config
  is stored: fine-tuning imported from `train.init_from_hf` (not another source), LengthDrop
  checkpoints resumed from the fine-tuned checkpoint they started from, and for AdapLeR
  training a saliency file of these training rows and token ids (with `all`, one it will not
  compute again: of the fine-tuned checkpoints there now)."""
  from adapler_jax.pipeline import phases  # pylint: disable=g-import-not-at-top
  from adapler_jax.train import saliency  # pylint: disable=g-import-not-at-top
  if run.config.train.init_from_hf and phase in ("finetune", "all"):
    phases.check_import_source(run)
  if run.config.method == "lat" and phase == "lengthdrop":  # `all` checks after fine-tuning.
    from adapler_jax.pipeline import lat_phases  # pylint: disable=g-import-not-at-top
    lat_phases.check_started_from(run)
  if run.config.method != "adapler":
    return
  path = run.workdir / phases.SALIENCY_FILE
  if phase == "adapler" or (phase == "all" and path.exists()
                            and saliency.source(path) == phases.saliency_source(run)):
    saliency.load_for(path, run.dataset("train"))
