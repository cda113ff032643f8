"""The three training phases and the final evaluation, each resumable from its checkpoints.

Workdir layout::

  config.json        the run's config
  finetune/          phase 1 checkpoints: the 3 best by dev metric + the latest
  saliency.npz       phase 2 saliency, keyed by example id
  adapler/           phase 3 checkpoints, one per epoch, with dev metric and speedup
  metrics.jsonl      every logged metric (and tensorboard/ event files)
  summary.json       written by `run_all`
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from adapler_jax import files, weights
from adapler_jax.data import num_train_steps
from adapler_jax.errors import UserError
from adapler_jax.eval import report
from adapler_jax.models import adapler
from adapler_jax.pipeline import checks
from adapler_jax.pipeline import summary as summary_lib
from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.pipeline.context import Run
from adapler_jax.pipeline.loop import TrainLoop, note_if_unfinished, print_done, progress_bar
from adapler_jax.train import adapler_step, classifier, optim, parallel
from adapler_jax.train import saliency as saliency_lib
from adapler_jax.train.checkpoints import Checkpointer
from adapler_jax.train.state import TrainState, create_train_state

FINETUNE, ADAPLER, SALIENCY_FILE = "finetune", "adapler", "saliency.npz"
DEV_METRIC = "dev_metric"


def restore_latest(ckpt: Checkpointer, state: TrainState) -> TrainState:
  """The latest intact checkpoint, restored with `state`'s shardings, else `state`."""
  latest = ckpt.restore_latest_intact(target=state)
  return state if latest is None else latest[1]


def on_mesh(run: Run, tree):
  return tree if run.mesh is None else parallel.replicate(tree, run.mesh)


def _restore_params(run: Run, ckpt: Checkpointer, step: int) -> dict:
  """The params of checkpoint `step`, replicated on the run's mesh (whatever the devices it
  was saved from)."""
  sharding = None if run.mesh is None else parallel.replicated(run.mesh)
  return ckpt.restore_params(step, sharding=sharding)


# ----------------------------------------------------------------------------- phase 1


def finetune_checkpointer(run: Run, read_only: bool = False) -> Checkpointer:
  return Checkpointer(run.workdir / FINETUNE, keep_latest=1,
                      keep_best=run.config.train.keep_best, best_metric=DEV_METRIC,
                      read_only=read_only)


def finetune(run: Run, *, stop_after_steps: int | None = None) -> float | None:
  """Fine-tunes the backbone with CE; returns the best dev metric (None if stopped early).

  Dev is evaluated every `train.eval_every_steps` steps (0: at each epoch's end) and the
  `train.keep_best` best checkpoints are kept, plus the latest for resuming. A rerun resumes
  from the latest checkpoint and replays the same batches and dropout keys, so the result
  equals an uninterrupted run. `stop_after_steps` simulates an interruption (for tests).
  With `train.init_from_hf` the result is imported instead (`import_finetuned`).
  """
  run.check_phase_batch_sizes("finetune")
  workdir_lib.record_config(run, FINETUNE)
  if run.config.train.init_from_hf:
    return import_finetuned(run)
  c = run.config.train
  train, dev = run.dataset("train"), run.dataset("dev")
  total = c.epochs * num_train_steps(train, c.batch_size)  # the schedule's; the loop's too.
  optimizer = optim.adamw(optim.warmup_linear_decay(c.learning_rate, total, c.warmup_fraction),
                          c.weight_decay)
  # One key initialises, another seeds the steps: fold_in(key, step), each step's key, is
  # split(key, n)[step], so one key for both would hand the init's keys to the steps.
  init_key, steps_key = jax.random.split(jax.random.key(run.config.seed))
  params = classifier.init_classifier(init_key, run.encoder, run.head, run.backbone)
  ckpt = finetune_checkpointer(run)
  state = restore_latest(ckpt, on_mesh(run, create_train_state(params, optimizer, steps_key)))
  step_fn = classifier.make_finetune_step(run.encoder, run.head, optimizer, run.mesh)
  loop = TrainLoop(run, FINETUNE, state, step_fn, train, c.batch_size, c.epochs)
  eval_every = c.eval_every_steps or loop.steps_per_epoch
  for epoch, step, _ in loop.steps():
    if step % eval_every == 0 or step == loop.total:
      loop.check()
      dev_metric = report.evaluate_backbone(run.encoder, run.head, loop.state.params, dev,
                                            run.metric_name, run.config.eval.batch_size,
                                            mesh=run.mesh)["metric"]
      run.writer.write(FINETUNE, step, {DEV_METRIC: dev_metric, "epoch": epoch})
      loop.show(**{f"dev {run.metric_name}": summary_lib.format_points(dev_metric)})
      loop.save(ckpt, metrics={DEV_METRIC: dev_metric})
    elif c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0:
      loop.save(ckpt)
    if stop_after_steps is not None and step >= stop_after_steps:
      loop.save(ckpt)
      ckpt.close()
      return None
  ckpt.wait()
  best = ckpt.best_steps(1)
  if not best:
    raise UserError(f"{ckpt.directory} has no evaluated checkpoint; rerun --phase finetune")
  ckpt.close()
  return float(ckpt.metrics(best[0])[DEV_METRIC])


IMPORTED_FROM = "init_from_hf"


def import_finetuned(run: Run) -> float:
  """Phase 1 from a fine-tuned Hugging Face sequence-classification checkpoint
  (`train.init_from_hf`): its encoder and head, evaluated on dev, are saved as the one
  evaluated fine-tuning checkpoint, at the step where fine-tuning would end, so the later
  phases (and reruns) see a finished fine-tuning. Returns its dev metric."""
  c = run.config.train
  check_import_source(run)
  ckpt = finetune_checkpointer(run)
  if ckpt.latest_step() is not None:
    best = ckpt.best_steps(1)
    metric = float(ckpt.metrics(best[0])[DEV_METRIC])
    ckpt.close()
    return metric
  try:
    params = weights.load_classifier(c.init_from_hf, run.encoder, run.num_labels,
                                     run.task.label_names)
  except weights.WeightsError as e:
    raise UserError(f"train.init_from_hf {c.init_from_hf}: {e}; its architecture must be "
                    f"the backbone's ({run.config.backbone})") from None
  dev_metric = report.evaluate_backbone(run.encoder, run.head, params, run.dataset("dev"),
                                        run.metric_name, run.config.eval.batch_size,
                                        mesh=run.mesh)["metric"]
  total = c.epochs * num_train_steps(run.dataset("train"), c.batch_size)
  optimizer = optim.adamw(optim.warmup_linear_decay(c.learning_rate, total, c.warmup_fraction),
                          c.weight_decay)
  state = create_train_state(params, optimizer, jax.random.key(run.config.seed))
  state = state.replace(step=jnp.asarray(total, jnp.int32))
  run.writer.write(FINETUNE, total, {DEV_METRIC: dev_metric, IMPORTED_FROM: c.init_from_hf})
  ckpt.save(total, on_mesh(run, state), metrics={DEV_METRIC: dev_metric},
            extra_json={IMPORTED_FROM: c.init_from_hf})
  ckpt.close()
  return dev_metric


def check_import_source(run: Run) -> None:
  """One line when the workdir holds fine-tuning from another source than
  `train.init_from_hf` (another checkpoint, or train.py's own)."""
  with finetune_checkpointer(run, read_only=True) as ckpt:
    if ckpt.latest_step() is None:
      return
    source = ckpt.restore_json().get(IMPORTED_FROM)
  if source != run.config.train.init_from_hf:
    raise UserError(f"{ckpt.directory} holds fine-tuning from {source or 'train.py'}, not "
                    f"from {run.config.train.init_from_hf}; delete it or pass another "
                    "--workdir")


def load_finetuned(run: Run, k: int = 1) -> list[tuple[int, dict, float]]:
  """The `k` best fine-tuned checkpoints as `(step, {"bert", "head"} params, dev metric)`."""
  ckpt = finetune_checkpointer(run, read_only=True)
  steps = ckpt.best_steps(k)
  if not steps:
    raise UserError(f"no fine-tuned checkpoint in {ckpt.directory}; run --phase finetune first")
  note_if_unfinished(ckpt, FINETUNE)
  out = []
  for step in steps:
    out.append((step, _restore_params(run, ckpt, step), float(ckpt.metrics(step)[DEV_METRIC])))
  ckpt.close()
  return out


def with_finetuned(params: dict, finetuned: dict) -> dict:
  """AdapLeR params whose encoder and head are those of a fine-tuned classifier
  (`{"bert", "head"}`); the predictors and speed parameters stay as they are."""
  model = params["model"]
  if jax.tree.map(np.shape, finetuned["head"]) != jax.tree.map(np.shape, model["head"]):
    raise UserError("the fine-tuned head does not fit the AdapLeR model (another task or "
                    "label count); set --config.adapler.from_finetuned=false")
  return {**params, "model": {**model, "bert": finetuned["bert"], "head": finetuned["head"]}}


# ----------------------------------------------------------------------------- phase 2


def extract_saliency(run: Run) -> np.ndarray:
  """Saliency of every training example, averaged over the best fine-tuned checkpoints.

  Each checkpoint's saliency is normalised per example to sum 1 before averaging, so every
  checkpoint weighs the same. Stored in `saliency.npz` keyed by example id.
  """
  run.check_phase_batch_sizes("saliency")
  train = run.dataset("train")
  wanted = run.config.saliency.num_checkpoints
  checkpoints = load_finetuned(run, wanted)
  if len(checkpoints) < wanted:
    logging.warning("saliency.num_checkpoints is %d, but %s holds %d evaluated fine-tuned "
                    "checkpoint(s) (train.keep_best %d): the saliency averages those", wanted,
                    run.workdir / FINETUNE, len(checkpoints), run.config.train.keep_best)
  workdir_lib.record_config(run, "saliency")  # once its inputs are there.
  total = np.zeros(train.input_ids.shape, np.float32)
  start = time.perf_counter()
  bar = progress_bar(run, len(train) * len(checkpoints), "saliency")
  for _, params, _ in checkpoints:
    sal = saliency_lib.compute_saliency(run.encoder, run.head, params, train,
                                        run.config.saliency.batch_size, progress=bar,
                                        mesh=run.mesh)
    total += saliency_lib.normalise(sal)
  bar.close()
  print_done(run, "saliency", start,
             f"{len(train)} examples x {len(checkpoints)} fine-tuned checkpoints")
  average = total / len(checkpoints)
  source = saliency_source(run)  # on every process: opening a checkpoint manager syncs them.
  if run.is_main_process:
    saliency_lib.save(run.workdir / SALIENCY_FILE, train, average,
                      [s for s, _, _ in checkpoints], source=source)
  parallel.sync_processes("saliency saved")  # the AdapLeR phase reads it on every process.
  run.writer.write("saliency", 0, {"checkpoints": [s for s, _, _ in checkpoints],
                                   "examples": len(train)})
  return average


def finetuned_source(run: Run, k: int = 1) -> str:
  """A fingerprint of the `k` best fine-tuned checkpoints (what a later phase starts from):
  it changes when fine-tuning is redone or trained further."""
  ckpt = finetune_checkpointer(run, read_only=True)
  source = ckpt.fingerprint(ckpt.best_steps(k))
  ckpt.close()
  return source


def saliency_source(run: Run) -> str:
  """A fingerprint of the fine-tuned checkpoints the saliency phase reads."""
  return finetuned_source(run, run.config.saliency.num_checkpoints)


# ----------------------------------------------------------------------------- phase 3


def adapler_checkpointer(run: Run, read_only: bool = False) -> Checkpointer:
  return Checkpointer(run.workdir / ADAPLER, read_only=read_only)


def lambda_at(run: Run, epoch: int) -> float:
  c = run.config.adapler
  return float(c.lambda_init * c.lambda_rate ** epoch)


def train_adapler(run: Run) -> None:
  """Phase 3: AdapLeR training from the pre-trained backbone with fresh predictors and head.

  Each epoch uses lambda = lambda_init * lambda_rate ** epoch, logs eta, theta, the three
  losses and mean soft kept tokens per layer, evaluates dev with hard removal, and saves a
  checkpoint with the dev metric and FLOPs speedup. A rerun resumes at the last epoch saved.
  """
  run.check_phase_batch_sizes("adapler")
  c = run.config.adapler
  train, dev = run.dataset("train"), run.dataset("dev")
  sal = saliency_lib.load_for(run.workdir / SALIENCY_FILE, train)
  workdir_lib.record_config(run, ADAPLER)  # once its inputs are there.
  source = saliency_lib.source(run.workdir / SALIENCY_FILE)
  cfg = run.adapler_config()
  total = c.epochs * num_train_steps(train, c.batch_size)  # the schedule's; the loop's too.
  optimizer = optim.adapler_optimizer(c.learning_rate, total, weight_decay=c.weight_decay,
                                      warmup_fraction=c.warmup_fraction,
                                      speed_learning_rate=c.speed_learning_rate,
                                      predictor_learning_rate=c.predictor_learning_rate or None,
                                      frozen=checks.frozen_groups(run.config))
  init_key, steps_key = jax.random.split(jax.random.key(run.config.seed + 1))  # as finetune.
  params = adapler.init(init_key, cfg, backbone=run.backbone)
  if c.from_finetuned:
    params = with_finetuned(params, load_finetuned(run, 1)[0][1])
  ckpt = adapler_checkpointer(run)
  state = restore_latest(ckpt, on_mesh(run, create_train_state(params, optimizer, steps_key)))
  check_trained_from(ckpt, "saliency", source,
                     was="on a saliency.npz since recomputed from other fine-tuned "
                     "checkpoints", retrain="AdapLeR on the new one")
  step_fn = adapler_step.make_train_step(cfg, optimizer,
                                         adapler_step.LossWeights(gamma=c.gamma, phi=c.phi),
                                         mesh=run.mesh)
  loop = TrainLoop(run, ADAPLER, state, step_fn, train, c.batch_size, c.epochs,
                   logs=(ADAPLER + "_epoch",))

  def inputs(epoch, batch, index):
    width = batch["input_ids"].shape[1]
    batch["saliency"] = sal[index, :width]  # this process's rows, on the host.
    return {"lambda": lambda_at(run, epoch)}

  sums: dict[str, Any] = {}
  for epoch, step, metrics in loop.steps(inputs):
    sums = jax.tree.map(lambda a, b: a + b, sums, metrics) if sums else metrics
    if not loop.at_epoch_end:
      continue
    loop.check()
    means = jax.tree.map(lambda v: np.asarray(v) / loop.steps_per_epoch, sums)
    sums = {}
    params = loop.state.params
    dev_report = report.evaluate_adapler(cfg, parallel.local_copy(params), dev,
                                         run.metric_name,
                                         engine=run.config.eval.engine,
                                         batch_size=run.config.eval.batch_size)
    epoch_metrics = {
        "epoch": epoch, "lambda": lambda_at(run, epoch), "ce": means["ce"], "cp": means["cp"],
        "length": means["length"], "train_kept_per_layer": means["kept"],
        "eta": params["speed"]["eta"], "theta": params["speed"]["theta"],
        DEV_METRIC: dev_report["metric"], "flops_speedup": dev_report["flops_speedup"],
        "dev_kept_per_layer": dev_report["kept_tokens_per_layer"],
    }
    run.writer.write(ADAPLER + "_epoch", step, epoch_metrics)
    loop.show(**{f"dev {run.metric_name}": summary_lib.format_points(dev_report['metric']),
                 "FLOPs speedup": f"{dev_report['flops_speedup']:.2f}x"})
    loop.save(ckpt, metrics={DEV_METRIC: dev_report["metric"],
                             "flops_speedup": dev_report["flops_speedup"], "epoch": epoch},
              extra_json={"saliency": source})
  ckpt.close()


def check_trained_from(ckpt: Checkpointer, key: str, source: str | None, *, was: str,
                       retrain: str) -> None:
  """One-line UserError when the checkpoints of `ckpt` recorded under `key` another
  source than `source` (they were trained `was`): resuming would mix the two."""
  if ckpt.recorded(key) not in (None, source):
    raise UserError(f"{ckpt.directory} was trained {was}; delete {ckpt.directory} to "
                    f"train {retrain}")


def select_adapler_step(run: Run, backbone_metric: float) -> tuple[int, str]:
  """The epoch checkpoint with the best dev speedup whose dev metric is within
  `adapler.tolerance` points of the backbone's; if none is, the best dev metric."""
  ckpt = adapler_checkpointer(run, read_only=True)
  rows = [(s, ckpt.metrics(s)) for s in ckpt.all_steps()]
  ckpt.close()
  rows = [(s, m) for s, m in rows if m and DEV_METRIC in m]
  if not rows:
    raise UserError(f"no AdapLeR checkpoint in {run.workdir / ADAPLER}; run --phase adapler")
  floor = backbone_metric - run.config.adapler.tolerance / 100.0
  within = [(s, m) for s, m in rows if m[DEV_METRIC] >= floor]
  if within:
    step = max(within, key=lambda r: (r[1]["flops_speedup"], r[1][DEV_METRIC]))[0]
    return step, f"best dev speedup within {run.config.adapler.tolerance} points of the backbone"
  step = max(rows, key=lambda r: (r[1][DEV_METRIC], r[1]["flops_speedup"]))[0]
  return step, (f"no epoch within {run.config.adapler.tolerance} points of the backbone: the "
                "best dev metric")


def load_adapler(run: Run, step: int) -> dict:
  """AdapLeR params of checkpoint `step` on this process's first device (hard-removal
  inference runs on one device)."""
  ckpt = adapler_checkpointer(run, read_only=True)
  note_if_unfinished(ckpt, ADAPLER)
  params = ckpt.restore_params(step)
  ckpt.close()
  return params


# ----------------------------------------------------------------------------- all


def run_all(run: Run) -> dict[str, Any]:
  """Fine-tune, saliency, AdapLeR training, then evaluation; writes `summary.json`."""
  run.check_phase_batch_sizes("all")  # before hours of fine-tuning, not after.
  start = time.time()
  backbone_metric = finetune(run)
  if saliency_lib.source(run.workdir / SALIENCY_FILE) != saliency_source(run):
    extract_saliency(run)  # missing, or computed from checkpoints since replaced.
  train_adapler(run)
  return summarize(run, backbone_metric, seconds=time.time() - start)


def summarize(run: Run, backbone_metric: float | None = None,
              seconds: float | None = None) -> dict[str, Any]:
  """Evaluates the selected checkpoints on the eval split and writes `summary.json`."""
  run.check_phase_batch_sizes("evaluate")
  split = run.config.eval.split
  data = run.dataset(split)
  _, backbone_params, dev_metric = load_finetuned(run, 1)[0]
  step, rule = select_adapler_step(run, dev_metric if backbone_metric is None
                                   else backbone_metric)
  workdir_lib.record_config(run, "evaluate")  # once its inputs are there.
  backbone = report.evaluate_backbone(run.encoder, run.head, backbone_params, data,
                                      run.metric_name, run.config.eval.batch_size,
                                      mesh=run.mesh)
  result = report.evaluate_adapler(run.adapler_config(), load_adapler(run, step), data,
                                   run.metric_name, engine=run.config.eval.engine,
                                   batch_size=run.config.eval.batch_size,
                                   flops_mode=run.config.eval.flops)
  summary = {
      **summary_lib.common_fields(run, data, seconds),
      "backbone_metric": backbone["metric"],
      "adapler_metric": result["metric"],
      "flops_speedup": result["flops_speedup"],
      "mean_kept_tokens_per_layer": result["kept_tokens_per_layer"],
      "adapler_step": step,
      "selection": rule,
  }
  if run.task.is_span:
    summary.update({**summary_lib.span_scores("backbone", backbone),
                    **summary_lib.span_scores("adapler", result)})
  summary_lib.write(run, summary)
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """A short table for the terminal."""
  label = summary_lib.score_label(summary)
  speedup = summary["flops_speedup"]
  rows = [
      (f"backbone {label}", summary_lib.format_score(summary, "backbone")),
      (f"AdapLeR {label}", summary_lib.format_score(summary, "adapler")),
      ("FLOPs speedup", f"{speedup:.2f}x" + (" (more FLOPs than the backbone)"
                                            if speedup < 1 else "")),
      ("kept tokens / layer", summary_lib.format_kept(summary)),
      ("train examples", str(summary["train_examples"])),
  ]
  if "adapler_step" in summary:  # which epoch, and whether it met the tolerance.
    rows.insert(3, ("selected", f"step {summary['adapler_step']}: {summary['selection']}"))
  return summary_lib.format_table(summary, rows)


# ----------------------------------------------------------------------------- trained runs


@dataclasses.dataclass
class TrainedRun:
  """A finished run's models: what `evaluate.py` and the benchmarks need."""

  run: Run
  adapler_cfg: adapler.AdapLeRConfig
  adapler_params: dict
  adapler_step: int
  backbone_params: dict  # the best fine-tuned classifier, {"bert", "head"}.
  backbone_dev_metric: float

  @property
  def config(self):
    return self.run.config

  @property
  def task(self):
    return self.run.task

  @property
  def tokenizer(self):
    return self.run.tokenizer

  def eval_dataset(self, split: str):
    return self.run.dataset(split)


def reported_adapler_step(run: Run, backbone_metric: float | None = None) -> int:
  """The AdapLeR checkpoint the run reports: the one in `summary.json`, else the one the
  evaluate phase would select (best dev speedup within tolerance)."""
  path = run.workdir / summary_lib.FILE
  if path.exists():
    fix = "delete it to select the checkpoint again, or rerun --phase evaluate"
    summary = files.read_json(path, fix)
    if not isinstance(summary, dict) or "adapler_step" not in summary:
      raise UserError(f"{path} is damaged (no adapler_step); {fix}")
    step = int(summary["adapler_step"])
    ckpt = adapler_checkpointer(run, read_only=True)
    steps = ckpt.all_steps()
    ckpt.close()
    if step not in steps:  # a step directory deleted since.
      fix = ("rerun train.py --phase evaluate to select one of them" if steps else
             "rerun train.py --phase adapler")
      raise UserError(f"{path} reports AdapLeR step {step}, which {ckpt.directory} no longer "
                      f"holds (steps: {', '.join(map(str, steps)) or 'none'}); {fix}")
    return step
  if backbone_metric is None:
    backbone_metric = load_finetuned(run, 1)[0][2]
  return select_adapler_step(run, backbone_metric)[0]


def load_run(workdir) -> TrainedRun:
  """Rebuilds a finished run from its workdir (config, selected AdapLeR and backbone)."""
  from adapler_jax.pipeline.context import prepare, read_config  # pylint: disable=g-import-not-at-top
  run = prepare(read_config(workdir), workdir, record=False)
  _, backbone_params, backbone_metric = load_finetuned(run, 1)[0]
  step = reported_adapler_step(run, backbone_metric)
  return TrainedRun(run, run.adapler_config(), load_adapler(run, step), step, backbone_params,
                    backbone_metric)
