"""Length-Adaptive Transformer phases: `finetune` (shared), `lengthdrop`, `evaluate`.

Workdir layout (besides the shared `config.json`, `finetune/`, `metrics.jsonl`)::

  lengthdrop/        LengthDrop checkpoints, one per epoch, with the full model's and the
                     smallest sub-model's dev metric
  summary.json       written by `evaluate`: the full and reduced model at a length config
"""

from __future__ import annotations

import time
from typing import Any

import jax
import optax

from adapler_jax.data import TRAIN_BUCKETS, num_train_steps
from adapler_jax.errors import UserError
from adapler_jax.eval import report
from adapler_jax.pipeline import phases
from adapler_jax.pipeline import summary as summary_lib
from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.pipeline.context import Run
from adapler_jax.pipeline.loop import TrainLoop, note_if_unfinished
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.train import lat_step, optim, parallel
from adapler_jax.train.checkpoints import Checkpointer
from adapler_jax.train.state import create_train_state

LENGTHDROP = "lengthdrop"


def pad_queries(lat) -> bool:
  """Whether padded query rows count in the scores: `lat.include_pad_queries`, except on an
  actual length base, where no padding is in play (training refuses the pair; a run trained
  before that stored it, and ran without them)."""
  return bool(lat.include_pad_queries) and lat.length_base != "actual"


def selection_flags(run: Run) -> SelectionFlags:
  c = run.config.lat
  return SelectionFlags(keep_cls=c.keep_cls, include_pad_queries=pad_queries(c),
                        include_diagonal=c.include_diagonal,
                        score_from_dropout_probs=c.score_from_dropout_probs,
                        length_base=c.length_base)


def lat_config(run: Run) -> lat_step.LATConfig:
  c = run.config.lat
  return lat_step.LATConfig(base=run.config.data.max_length, length_drop=c.length_drop,
                            smallest_ratio=c.smallest_ratio, min_length=c.min_length,
                            layer_drop=c.layer_drop, num_sandwich=c.num_sandwich, kd=c.kd,
                            teacher_layerdrop=c.teacher_layerdrop, flags=selection_flags(run))


def ratio_config(run: Run, ratio: float) -> tuple[int, ...]:
  """`lengths.constant_ratio_config` at this run's length, layers and `lat.min_length`."""
  return lengths.constant_ratio_config(run.config.data.max_length, run.encoder.num_layers,
                                       ratio, run.config.lat.min_length)


def smallest_config(run: Run) -> tuple[int, ...]:
  return ratio_config(run, run.config.lat.smallest_ratio)


def lengthdrop_checkpointer(run: Run, read_only: bool = False) -> Checkpointer:
  return Checkpointer(run.workdir / LENGTHDROP, read_only=read_only)


def evaluate_at(run: Run, params: dict, data, config, predictions_dir=None, *,
                progress: bool | str = False) -> dict[str, Any]:
  """The metric of `params` at a length config (None: full length) through the engine (span
  QA: the answers go to `predictions_dir/predictions.json` when given; `progress`: a bar,
  or a label that names it)."""
  params = parallel.local_copy(params)  # the engine runs on this process's first device.
  return report.evaluate_lat(run.classifier_config(), params, data, run.metric_name, config,
                             base=run.config.data.max_length, flags=selection_flags(run),
                             batch_size=run.config.eval.batch_size,
                             predictions_dir=predictions_dir, progress=progress)


def train_lengthdrop(run: Run) -> None:
  """LengthDrop training from the best fine-tuned checkpoint with a fresh optimizer
  (linear decay, no warmup). After each epoch the full model and the smallest sub-model
  are evaluated on dev and a checkpoint is saved; a rerun resumes at the last epoch."""
  run.check_phase_batch_sizes("lengthdrop")
  c = run.config.lat
  train, dev = run.dataset("train"), run.dataset("dev")
  total = c.epochs * num_train_steps(train, c.batch_size)  # the schedule's; the loop's too.
  schedule = optax.linear_schedule(c.learning_rate, 0.0, max(1, total))
  optimizer = optim.adamw(schedule, c.weight_decay)
  _, params, _ = phases.load_finetuned(run, 1)[0]
  source = check_started_from(run)  # on every process: opening a manager syncs them.
  workdir_lib.record_config(run, LENGTHDROP)  # once its inputs are there.
  key = jax.random.key(run.config.seed + 2)
  ckpt = lengthdrop_checkpointer(run)
  state = phases.restore_latest(
      ckpt, phases.on_mesh(run, create_train_state(params, optimizer, key)))
  step_fn = lat_step.make_lat_step(run.encoder, run.head, lat_config(run), optimizer,
                                   run.mesh)
  # Upstream scoring counts padded query rows, so it needs the authors' full padding.
  buckets = (run.config.data.max_length,) if pad_queries(c) else TRAIN_BUCKETS
  loop = TrainLoop(run, LENGTHDROP, state, step_fn, train, c.batch_size, c.epochs,
                   buckets=buckets, logs=(LENGTHDROP + "_epoch",))
  smallest = smallest_config(run)
  for epoch, step, _ in loop.steps():
    if not loop.at_epoch_end:
      continue
    loop.check()
    host_params = parallel.local_copy(loop.state.params)
    full = evaluate_at(run, host_params, dev, None)["metric"]
    small = evaluate_at(run, host_params, dev, smallest)["metric"]
    run.writer.write(LENGTHDROP + "_epoch", step, {"epoch": epoch, phases.DEV_METRIC: full,
                                                   "dev_metric_smallest": small})
    loop.show(**{f"dev {run.metric_name}": summary_lib.format_points(full),
                 "at the smallest config": summary_lib.format_points(small)})
    loop.save(ckpt, metrics={phases.DEV_METRIC: full, "dev_metric_smallest": small,
                             "epoch": epoch}, extra_json={"finetuned": source})
  ckpt.close()


def check_started_from(run: Run) -> str:
  """The fingerprint of the fine-tuned checkpoint LengthDrop starts from; a one-line
  UserError when LengthDrop checkpoints started from one that has since been replaced:
  resuming would mix the two, and the summary would set the new fine-tuned model beside a
  LAT model of the old one. Reads only."""
  source = phases.finetuned_source(run)
  with lengthdrop_checkpointer(run, read_only=True) as ckpt:
    phases.check_trained_from(ckpt, "finetuned", source,
                              was="from a fine-tuned checkpoint that has since been "
                              "replaced (fine-tuning redone or trained further)",
                              retrain="LengthDrop from the new one")
  return source


def load_lengthdrop(run: Run) -> tuple[int, dict]:
  """The LengthDrop checkpoint with the best full-model dev metric: `(step, params)`."""
  ckpt = lengthdrop_checkpointer(run, read_only=True)
  best = ckpt.best_steps(1, metric=phases.DEV_METRIC, mode="max")
  if not best:
    ckpt.close()
    raise UserError(f"no LengthDrop checkpoint in {ckpt.directory}; run --phase lengthdrop")
  step = best[0]
  note_if_unfinished(ckpt, LENGTHDROP)
  params = ckpt.restore_params(step)
  ckpt.close()
  return step, params


def eval_length_config(run: Run) -> tuple[int, ...]:
  """The config `evaluate` uses: `lat.eval_length_config`, else the constant ratio
  `lat.eval_length_ratio`, validated against the model."""
  c, base = run.config.lat, run.config.data.max_length
  if c.eval_length_config:
    config = lengths.parse_config(c.eval_length_config, "config lat.eval_length_config",
                                  base=base, num_layers=run.encoder.num_layers)
  else:
    config = ratio_config(run, c.eval_length_ratio)
  name = "config lat.eval_length_config" if c.eval_length_config else "length config"
  return lengths.validate_config(config, base, run.encoder.num_layers, keep_cls=c.keep_cls,
                                 name=name)


def summarize(run: Run, seconds: float | None = None, config=None) -> dict[str, Any]:
  """The fine-tuned and the LengthDrop model on the eval split, at full length and at the
  length config; writes `summary.json`."""
  data = run.dataset(run.config.eval.split)
  config = eval_length_config(run) if config is None else config
  _, backbone, backbone_dev = phases.load_finetuned(run, 1)[0]
  step, params = load_lengthdrop(run)
  workdir_lib.record_config(run, "evaluate")  # once its inputs are there.
  rows = {"standard": evaluate_at(run, backbone, data, None),
          "standard_reduced": evaluate_at(run, backbone, data, config),
          "lat": evaluate_at(run, params, data, None),
          "lat_reduced": evaluate_at(run, params, data, config)}
  summary = {
      **summary_lib.common_fields(run, data, seconds), "method": "lat",
      "length_config": list(config), "length_base": run.config.lat.length_base,
      "lengthdrop_step": step, "backbone_dev_metric": backbone_dev,
      **{f"{name}_metric": r["metric"] for name, r in rows.items()},
      "flops_speedup_padded": rows["lat_reduced"]["flops_speedup_padded"],
      "flops_speedup_actual": rows["lat_reduced"]["flops_speedup_actual"],
      "mean_kept_tokens_per_layer": rows["lat_reduced"]["kept_tokens_per_layer"],
  }
  if run.task.is_span:
    for name, r in rows.items():
      summary.update(summary_lib.span_scores(name, r))
  summary_lib.write(run, summary)
  return summary


def run_all(run: Run) -> dict[str, Any]:
  """Fine-tune, LengthDrop training, then evaluation at the eval length config."""
  run.check_phase_batch_sizes("all")
  eval_length_config(run)  # a bad config fails now, not after training.
  start = time.time()
  phases.finetune(run)
  train_lengthdrop(run)
  return summarize(run, seconds=time.time() - start)


def format_summary(summary: dict[str, Any]) -> str:
  """A short table for the terminal."""
  score = lambda name: summary_lib.format_score(summary, name)
  label = summary_lib.score_label(summary)
  return summary_lib.format_table(summary, [
      ("length config", f"{summary['length_config']} ({summary['length_base']} base)"),
      (f"standard {label}", f"{score('standard')} full, {score('standard_reduced')} reduced"),
      (f"LAT {label}", f"{score('lat')} full, {score('lat_reduced')} reduced"),
      ("FLOPs speedup", f"{summary['flops_speedup_padded']:.2f}x padded MACs, "
                        f"{summary['flops_speedup_actual']:.2f}x actual-length FLOPs"),
      ("kept tokens / layer", summary_lib.format_kept(summary)),
  ])
