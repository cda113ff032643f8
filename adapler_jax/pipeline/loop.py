"""The training loop every phase shares.

`TrainLoop` walks the seeded batches of a phase from where its state stopped, takes a step
on each, checks the losses one step late, moves the progress bar and logs every
`train.log_every_steps` steps; it yields after each step, so a phase adds only what it does
between steps (evaluate, save, sum its metrics)::

  loop = TrainLoop(run, "finetune", state, step_fn, train, batch_size, epochs)
  for taken in loop.steps():
    if loop.at_epoch_end:
      loop.save(ckpt, metrics={"dev_metric": evaluate(loop.state.params)})
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
from absl import logging
from tqdm.auto import tqdm

from adapler_jax.data import TRAIN_BUCKETS, num_train_steps, train_batches
from adapler_jax.pipeline.context import Run
from adapler_jax.train import parallel
from adapler_jax.train.checkpoints import Checkpointer
from adapler_jax.train.guards import FiniteGuard
from adapler_jax.train.state import TrainState


def progress_bar(run: Run, total: int, desc: str, initial: int = 0):
  return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
              disable=not run.is_main_process)


def print_done(run: Run, phase: str, start: float, work: str, details: str = "") -> None:
  """The line a finished phase leaves, its progress bar gone: `phase: work in N s details`
  (main process; `start` from `time.perf_counter`)."""
  if run.is_main_process:
    print(f"{phase}: {work} in {time.perf_counter() - start:.0f} s{details}", flush=True)


PHASE_STEPS = "phase_steps"  # a checkpoint's note of the steps its whole phase takes.
_noted: set[str] = set()


def note_if_unfinished(ckpt: Checkpointer, phase: str) -> None:
  """Warns, once a process, when `ckpt`'s latest checkpoint is not its phase's last step: a
  run read mid-training (stopped, killed, or still running) is reported as far as it got."""
  step = ckpt.latest_step()
  if step is None or ckpt.directory in _noted:
    return
  try:
    total = ckpt.restore_json(step).get(PHASE_STEPS)  # absent before the note existed.
  except Exception:  # pylint: disable=broad-except
    return  # advisory: a damaged latest step is reported by whatever restores it.
  if isinstance(total, int) and step < total:
    _noted.add(ckpt.directory)
    logging.warning("%s: the %s phase stopped at step %d of %d; using what it saved so far "
                    "(train.py --phase %s resumes it)", ckpt.directory, phase, step, total,
                    phase)


def shards() -> dict[str, int]:
  """`train_batches` arguments: each process reads its part of every global batch."""
  return {"num_shards": jax.process_count(), "shard_index": jax.process_index()}


def resumed_epochs(run: Run, data, batch_size: int, epochs: int, step: int,
                   buckets=TRAIN_BUCKETS):
  """`(epoch, batches)` for every epoch from the one `step` falls in: the seeded batches of
  the shared training loop, those already trained on (before `step`) skipped, so a resumed
  run replays exactly what an uninterrupted one would have seen."""
  per_epoch = num_train_steps(data, batch_size)
  for epoch in range(step // per_epoch, epochs):
    batches = train_batches(data, batch_size, run.config.seed, epoch, buckets=buckets,
                            **shards())
    yield epoch, itertools.islice(batches, max(0, step - epoch * per_epoch), None)


def sharded(run: Run, batch: dict) -> dict:
  return batch if run.mesh is None else parallel.shard_batch(batch, run.mesh)


class Taken(NamedTuple):
  """A step just taken: its epoch, the steps taken so far (this one included), its
  metrics (device values)."""

  epoch: int
  step: int
  metrics: dict


# `inputs(epoch, batch, index)`: adds a phase's own inputs to `batch` (its rows `index` of
# the training set) and returns the step's further arguments by name, logged with the step.
Inputs = Callable[[int, dict, Any], dict]


class TrainLoop:
  """The steps of one phase from `state.step` on (see the module docstring)."""

  def __init__(self, run: Run, phase: str, state: TrainState, step_fn, data, batch_size: int,
               epochs: int, *, buckets=TRAIN_BUCKETS, logs: tuple[str, ...] = ()):
    """`step_fn(state, batch, *args) -> (state, metrics)`; `logs`: the phase's other
    metrics.jsonl rows (per epoch, say), rewound with its step rows on a resume."""
    self.run, self.phase, self.state, self.step_fn = run, phase, state, step_fn
    self.data, self.batch_size, self.epochs, self.buckets = data, batch_size, epochs, buckets
    self.steps_per_epoch = num_train_steps(data, batch_size)
    self.total = epochs * self.steps_per_epoch
    self.step = int(state.step)
    self._checked = None  # the step whose state `check` passed.
    run.writer.rewind((phase, *logs), self.step)
    self.guard = FiniteGuard(phase)
    self.bar = progress_bar(run, self.total, phase, self.step)
    self._shown: dict[str, str] = {}
    self._start, self._first_step = time.perf_counter(), self.step

  @property
  def at_epoch_end(self) -> bool:
    return self.step % self.steps_per_epoch == 0

  def steps(self, inputs: Inputs | None = None) -> Iterator[Taken]:
    """Takes every remaining step, yielding after each; `self.state` is the state after it."""
    log_every = self.run.config.train.log_every_steps
    for epoch, batches in resumed_epochs(self.run, self.data, self.batch_size, self.epochs,
                                         self.step, self.buckets):
      for batch in batches:
        index = batch.pop("index")
        args = inputs(epoch, batch, index) if inputs else {}
        self.state, metrics = self.step_fn(self.state, sharded(self.run, batch),
                                           *args.values())
        self.step += 1
        self.guard(self.step, metrics)
        self.bar.update(1)
        if self.step % log_every == 0:
          self.run.writer.write(self.phase, self.step, {**metrics, **args, "epoch": epoch})
        yield Taken(epoch, self.step, metrics)
    # Only here: a failed step leaves the bar as last drawn, and the CLI's error line
    # goes below it.
    self.bar.close()
    taken = self.step - self._first_step
    resumed = f" (resumed at step {self._first_step} of {self.total})" if self._first_step else ""
    print_done(self.run, self.phase, self._start, f"{taken} steps",
               resumed + "".join(f", {k} {v}" for k, v in self._shown.items()))

  def check(self) -> None:
    """Stops, before anything reads them, on a non-finite loss or parameter (once a step)."""
    if self._checked != self.step:
      self.guard.before_save(self.step, self.state.params)
      self._checked = self.step

  def save(self, ckpt: Checkpointer, *, extra_json: dict | None = None, **kwargs) -> None:
    """The state, checked finite, as checkpoint `self.step` (`kwargs`: `Checkpointer.save`'s),
    with the phase's step count beside it (`note_if_unfinished` reads it)."""
    self.check()
    ckpt.save(self.step, self.state, extra_json={**(extra_json or {}), PHASE_STEPS: self.total},
              **kwargs)

  def show(self, **postfix: str) -> None:
    """Figures beside the progress bar, and on the phase's last line."""
    self._shown = postfix
    self.bar.set_postfix(postfix)
