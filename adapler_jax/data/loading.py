"""`load_split`: one split of a registered task from the hub, a local folder, or the generator."""

from __future__ import annotations

import os

from adapler_jax.data import demo, eraser, hub, readers, squad
from adapler_jax.data.dataset import TextDataset
from adapler_jax.data.tasks import TaskSpec, get_task


def load_split(task: str | TaskSpec, split: str, data_dir: str | os.PathLike[str] | None = None,
               *, num_examples: int | None = None, tokenizer=None,
               max_length: int | None = None) -> TextDataset | squad.SquadDataset:
  """Split `split` of `task` as a `TextDataset` (a `SquadDataset` for the span task `squad`).

  Args:
    task: registered task name or spec.
    split: `train`, `dev`, `test` (those the task has; MNLI: `dev_matched` / `dev_mismatched`,
      `dev` meaning `dev_matched`).
    data_dir: None: download with `datasets.load_dataset`; else the task's folder in its
      standard local format (e.g. `.../sst2` holding `train.tsv`, `dev.tsv`). For `demo`, a
      folder with the `vocab.txt` to draw words from (default: the embedded backbone's).
    num_examples: `demo` only: number of examples to generate (default `demo.DEMO_SIZES`).
    tokenizer, max_length: `eraser_movies` only (ignored by other tasks): long reviews are cut
      into windows of at most `max_length` tokens (default: the task's), counted with
      `tokenizer` when given (see `data.eraser`).
  """
  spec = get_task(task) if isinstance(task, str) else task
  split = spec.resolve_split(split)
  if spec.name == "demo":
    return demo.demo_split(split, num_examples, data_dir, num_classes=spec.num_labels)
  if spec.cuts_into_windows:
    return eraser.load_eraser(data_dir, split, tokenizer=tokenizer,
                              max_length=max_length or spec.max_length)
  if spec.is_span:
    return squad.load_squad(split, data_dir, spec)
  if spec.local is not None and spec.local.kind == "file":  # task `custom`: named files.
    return readers.read_local(spec, split, data_dir or ".")
  if num_examples is not None:
    raise ValueError("num_examples applies to the demo task only; use data.subset")
  if data_dir is None:
    return hub.load_from_hub(spec, split)
  return readers.read_local(spec, split, data_dir)
