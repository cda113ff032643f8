"""A run: its config, workdir, backbone and tokenized data, built once and shared by phases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import ml_collections
from jax.sharding import Mesh

from adapler_jax import weights
from adapler_jax.data import (TaskSpec, TokenizedDataset, get_task, load_split, resplit, subset,
                              tokenize)
from adapler_jax.errors import UserError
from adapler_jax.models.adapler import AdapLeRConfig
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.models.heads import ClassifierConfig
from adapler_jax.pipeline import checks
from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.train import parallel
from adapler_jax.train.metric_writer import MetricWriter

CONFIG_FILE = "config.json"
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class Run:
  """Everything the phases share."""

  config: ml_collections.ConfigDict
  workdir: Path
  task: TaskSpec
  encoder: EncoderConfig
  backbone: dict  # pre-trained `Bert` params.
  tokenizer: Any
  writer: MetricWriter
  mesh: Mesh | None = None  # the `data` mesh every phase runs on (None: default device).
  _data: dict = dataclasses.field(default_factory=dict)

  @property
  def num_labels(self) -> int:
    return self.task.num_labels

  @property
  def metric_name(self) -> str:
    return self.task.metric

  @property
  def is_main_process(self) -> bool:
    return jax.process_index() == 0

  def check_batch_sizes(self, *names: str) -> None:
    """One-line `UserError` unless each config batch size (e.g. `"train.batch_size"`)
    splits evenly over the mesh."""
    for name in names:
      section, field = name.split(".")
      parallel.check_batch_size(self.config[section][field], self.mesh, name)

  def adapler_config(self) -> AdapLeRConfig:
    c = self.config.adapler
    return AdapLeRConfig(self.encoder, self.num_labels, beta=c.beta, eta_init=c.eta_init,
                         theta_init=c.theta_init)

  def classifier_config(self) -> ClassifierConfig:
    return ClassifierConfig(self.encoder, self.num_labels)

  def dataset(self, split: str) -> TokenizedDataset:
    """Tokenized split: `train`, `dev` or `test` as the config defines them (cached)."""
    if split not in SPLITS:
      raise UserError(f"no split {split!r}; use one of {', '.join(SPLITS)} (as the config "
                      "defines them)")
    if split not in self._data:
      self._data.update(_load_splits(self.config, self.task, self.tokenizer, split))
    return self._data[split]


  def search_split(self, size: int) -> TokenizedDataset:
    """A seeded held-out part of train that training never saw (the rows outside
    `data.train_subset`), `size` rows: the fitness split of a search, never a reported one."""
    key = f"search_{size}"
    if key not in self._data:
      d = self.config.data
      if d.resplit_train or not d.train_subset:
        raise UserError("the search scores configs on train rows that training never saw; "
                        "set --config.data.train_subset below the train split's size")
      train = load_split(self.task, d.train_split, d.data_dir or None, tokenizer=self.tokenizer,
                         max_length=d.max_length)
      if d.train_subset >= len(train):
        raise UserError(f"data.train_subset {d.train_subset} uses all {len(train)} train rows; "
                        "lower it so the search has held-out rows")
      used = np.random.default_rng(self.config.seed).choice(len(train), d.train_subset,
                                                             replace=False)
      rest = np.setdiff1d(np.arange(len(train)), used)
      pick = np.sort(np.random.default_rng(self.config.seed + 1).choice(
          rest, min(size, len(rest)), replace=False))
      self._data[key] = tokenize(train.take(pick, f"{train.source} (held out for search)"),
                                 self.tokenizer, d.max_length)
    return self._data[key]


def _load_splits(config, task: TaskSpec, tokenizer, wanted: str) -> dict[str, TokenizedDataset]:
  d = config.data
  data_dir = d.data_dir or None
  names = {"train": d.train_split, "dev": d.dev_split, "test": d.test_split or d.dev_split}
  windowing = {"tokenizer": tokenizer, "max_length": d.max_length}  # long-document tasks.
  if d.resplit_train:
    source = load_split(task, d.resplit_source, data_dir, **windowing)
    train, held_out = resplit(source, d.resplit_train, d.resplit_test, seed=d.resplit_seed)
    texts = {"train": train, "dev": held_out, "test": held_out}
  else:
    texts = {wanted: load_split(task, names[wanted], data_dir, **windowing)}
  sizes = {"train": d.train_subset, "dev": d.dev_subset, "test": d.dev_subset}
  out = {}
  for split, ds in texts.items():
    if sizes[split] and sizes[split] < len(ds):
      ds = subset(ds, sizes[split], seed=config.seed)
    out[split] = tokenize(ds, tokenizer, d.max_length)
  return out


def prepare(config: ml_collections.ConfigDict, workdir: str | Path, *,
            record: bool = True) -> Run:
  """Loads the task, backbone and tokenizer and builds the data mesh over every device.

  `record` is for runs that train: the config, the data and the checkpoints already in the
  workdir are checked first, then the workdir is locked for this process and the config
  written to it atomically, so a rerun that fails leaves the workdir as it was.
  """
  workdir = workdir_lib.check_dir(workdir)
  checks.check_config(config)
  mesh = parallel.make_data_mesh()
  task = get_task(config.task)
  encoder, backbone, tokenizer = weights.load_backbone(
      config.backbone, revision=config.get("backbone_revision"), dtype=config.dtype)
  checks.check_max_length(config, encoder)
  run = Run(config, workdir, task, encoder, backbone, tokenizer, MetricWriter(workdir), mesh)
  if record:
    for split in ("train", "dev"):
      run.dataset(split)  # a bad data_dir fails here, before anything is written.
    if run.is_main_process:
      workdir_lib.lock(workdir)
    checks.check_checkpoints(run)
    if run.is_main_process:
      workdir_lib.atomic_write_text(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2))
  return run


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  path = workdir_lib.check_dir(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f"{path} is missing; pass the --workdir of a train.py run")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
