"""A run: its config, workdir, backbone and tokenized data, built once and shared by phases."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np
import ml_collections
from absl import logging
from jax.sharding import Mesh

from adapler_jax import files, weights
from adapler_jax.data import (TaskSpec, TextDataset, TokenizedDataset, get_task, load_split,
                              resplit, subset, subset_indices, tokenize)
from adapler_jax.data import eraser, squad
from adapler_jax.data import readers
from adapler_jax.data.tasks import CUSTOM, custom_task
from adapler_jax.errors import UserError
from adapler_jax.eval.metrics import METRICS
from adapler_jax.models.adapler import AdapLeRConfig
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.models.heads import ClassifierConfig, Head
from adapler_jax.pipeline import checks
from adapler_jax.pipeline import config as config_lib
from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.train import parallel
from adapler_jax.train.checkpoints import CheckpointError, Checkpointer
from adapler_jax.train.metric_writer import MetricWriter

CONFIG_FILE = "config.json"
# The phases that train a model, and the config fields that decide which train rows they see:
# a search holds out the others, so it must read these fields as those phases did.
TRAINING_PHASES = ("finetune", "adapler", "lengthdrop")
RESPLIT_FIELDS = ("data.resplit_source", "data.resplit_train", "data.resplit_test",
                  "data.resplit_seed")
TRAIN_ROW_FIELDS = ("seed", "data.train_split", "data.train_subset", *RESPLIT_FIELDS)
SPLITS = ("train", "dev", "test")
# Phases whose own refusals need the loaded run (the search's held-out rows and store):
# they write config.json once those pass (`Run.write_config`), so a refused one leaves it.
RECORDS_LATER = ("search",)
# The batch sizes each phase splits over the devices: checked before config.json is written,
# so a refused rerun leaves the stored config as it was; a phase never asks for a size it
# does not use (a run moved to 3 devices may still search or evaluate).
PHASE_BATCH_SIZES = {
    "adapler": {"finetune": ("train.batch_size", "eval.batch_size"),
                "saliency": ("saliency.batch_size",), "adapler": ("adapler.batch_size",),
                "search": ("eval.batch_size",), "evaluate": ("eval.batch_size",)},
    "lat": {"finetune": ("train.batch_size", "eval.batch_size"),
            "lengthdrop": ("lat.batch_size",), "search": (), "evaluate": ("eval.batch_size",)},
}
# Every phase's (`all`).
BATCH_SIZES = {method: tuple(dict.fromkeys(n for names in by_phase.values() for n in names))
               for method, by_phase in PHASE_BATCH_SIZES.items()}
# The batch size a training phase counts its steps in: a resume keeps it.
TRAINING_BATCH_SIZE = {"finetune": "train.batch_size", "adapler": "adapler.batch_size",
                       "lengthdrop": "lat.batch_size"}


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
  def head_kind(self) -> str:
    """The model head the task needs: "span" for span QA, else "classification"."""
    return "span" if self.task.is_span else "classification"

  @property
  def head(self) -> Head:
    """The task's `models.heads` head (`Span()` or `Classification(num_labels)`)."""
    return self.classifier_config().task_head

  @property
  def metric_name(self) -> str:
    return self.task.metric

  @property
  def is_main_process(self) -> bool:
    return jax.process_index() == 0

  def write_config(self) -> None:
    """Makes this config the run's: `WORKDIR/config.json`, which evaluation and export read
    (process 0), with a warning first naming the `data.*` fields it changes there."""
    if self.is_main_process:
      warn_changed_data(self.config, self.workdir)
      workdir_lib.atomic_write_text(self.workdir / CONFIG_FILE,
                                    self.config.to_json_best_effort(indent=2))

  def check_batch_sizes(self, *names: str) -> None:
    """One-line `UserError` unless each config batch size (e.g. `"train.batch_size"`)
    splits evenly over the mesh."""
    for name in names:
      section, field = name.split(".")
      parallel.check_batch_size(self.config[section][field], self.mesh, name)

  def check_phase_batch_sizes(self, phase: str) -> None:
    """`check_batch_sizes` of those `phase` splits over the devices (`PHASE_BATCH_SIZES`;
    `all`: every phase's)."""
    method = self.config.method
    self.check_batch_sizes(*(BATCH_SIZES[method] if phase == "all"
                             else PHASE_BATCH_SIZES[method].get(phase, ())))

  def adapler_config(self) -> AdapLeRConfig:
    c = self.config.adapler
    return AdapLeRConfig(self.encoder, self.num_labels, beta=c.beta, eta_init=c.eta_init,
                         theta_init=c.theta_init, head=self.head_kind)

  def classifier_config(self) -> ClassifierConfig:
    return ClassifierConfig(self.encoder, self.num_labels, head=self.head_kind)

  def dataset(self, split: str) -> TokenizedDataset:
    """Tokenized split: `train`, `dev` or `test` as the config defines them (cached)."""
    if split not in SPLITS:
      raise UserError(f"no split {split!r}; use one of {', '.join(SPLITS)} (as the config "
                      "defines them)")
    if split not in self._data:
      load = _load_span_splits if self.task.is_span else _load_splits
      self._data.update(load(self.config, self.task, self.tokenizer, split))
    return self._data[split]


  def test_is_dev(self) -> bool:
    """Whether split "test" reads the dev data: a re-split, or no test split (or file)."""
    d = self.config.data
    if d.resplit_train:
      return True
    return not (d.test_file if self.task.name == CUSTOM else d.test_split)

  def search_split(self, size: int) -> TokenizedDataset:
    """A seeded held-out part of train that training never saw (the rows outside
    `data.train_subset`; for a task cut into windows, the windows of reviews none of whose
    windows trained), `size` rows: the fitness split of a search, never a reported one."""
    self.check_trained_rows()
    key = f"search_{size}"
    if self.task.is_span:
      return self._span_search_split(size)
    if key not in self._data:
      d = self.config.data
      train = _text_splits(self.config, self.task, self.tokenizer, "train")["train"]
      if not d.train_subset or d.train_subset >= len(train):
        raise UserError(f"data.train_subset {d.train_subset} uses all {len(train)} train rows, "
                        "but the search scores configs on train rows that training never saw; "
                        f"set --config.data.train_subset below {len(train)}")
      used = subset_indices(len(train), d.train_subset, self.config.seed)
      rest = np.setdiff1d(np.arange(len(train)), used)
      if self.task.cuts_into_windows:  # a review's windows share its text and label.
        seen = {eraser.review_of(train.ids[i]) for i in used}
        rest = np.asarray([i for i in rest if eraser.review_of(train.ids[i]) not in seen], int)
        if not len(rest):
          raise UserError(f"every review among the train rows training never saw also has "
                          f"windows it trained on (data.train_subset {d.train_subset} of "
                          f"{len(train)} windows), so the search has no unseen review to score "
                          "on; train on a smaller --config.data.train_subset")
      if size > len(rest):
        logging.warning("search.held_out %d is more than the %d train rows training never "
                        "saw; the search scores on those %d", size, len(rest), len(rest))
      pick = np.sort(np.random.default_rng(self.config.seed + 1).choice(
          rest, min(size, len(rest)), replace=False))
      self._data[key] = tokenize(train.take(pick, f"{train.source} (held out for search)"),
                                 self.tokenizer, d.max_length)
    return self._data[key]

  def train_row_fields(self) -> tuple[str, ...]:
    """The config fields that decide which train rows a search must hold out from: span
    tasks hold out whole articles, so only the re-split counts there."""
    fields = RESPLIT_FIELDS if self.task.is_span else TRAIN_ROW_FIELDS
    return fields + (("data.max_length",) if self.task.cuts_into_windows else ())

  def resumed_row_fields(self) -> tuple[str, ...]:
    """The config fields that decide the rows (or windows) a training phase steps over."""
    windows = (("data.max_length", "data.doc_stride") if self.task.is_span
               else ("data.max_length",) if self.task.cuts_into_windows else ())
    return TRAIN_ROW_FIELDS + windows

  def check_trained_rows(self) -> None:
    """One-line `UserError` when this config picks other train rows than the phases that
    trained the model did (their `config.<phase>.json`), or those phases saw different
    rows: the rows a search holds out could then be rows the model learned from. Span
    tasks hold out whole articles, so only the re-split counts there. A fine-tuned model
    imported from elsewhere saw rows no config records: a warning says so. For tasks cut
    into windows (`eraser_movies`) the max length counts too. Not compared: where the data
    live (`data.data_dir`, `data.*_file`: a moved folder is the same data)."""
    fields = self.train_row_fields()
    stored = {}  # field -> {phase file: value}
    for phase in TRAINING_PHASES:
      path = self.workdir / f"config.{phase}.json"
      try:
        trained = files.read_json(path, "") if path.exists() else None
      except UserError:  # damaged: that phase's rerun writes it again; nothing to compare.
        continue
      imported = _imported_from(trained)
      if phase == "finetune" and imported:
        logging.warning("%s: the fine-tuned model was imported from %s, trained on rows no "
                        "config here records; the search's held-out rows may be among them",
                        path.name, imported)
        continue  # its data fields chose no training rows.
      for field in fields:
        value = _field(trained, field)
        if value is not _MISSING:
          stored.setdefault(field, {})[path.name] = value
    for field, by_file in stored.items():
      if len(set(by_file.values())) > 1:
        seen = ", ".join(f"{name} {value!r}" for name, value in by_file.items())
        raise UserError(f"the phases that trained this model saw different train rows "
                        f"({field}: {seen}), so no rows are held out from all of them; "
                        "search a run whose phases share their data flags")
      name, value = next(iter(by_file.items()))
      now = _field(self.config, field)
      if value != now:
        raise UserError(f"{name} trained the model with {field} {value!r}, but this search "
                        f"has {now!r}, so the rows it holds out could be training rows; "
                        f"repeat the run's data flags (--config.{field}={value})")

  def _span_search_split(self, size: int) -> TokenizedDataset:
    """Span tasks: up to `size` questions of the articles the re-split holds out for search."""
    key = f"search_{size}"
    if key not in self._data:
      self.dataset("train")
      part = self._data.get("search_questions")
      if part is None or not len(part):
        raise UserError("the search scores configs on held-out articles; set "
                        "--config.data.resplit_test below the articles left after "
                        "data.resplit_train so some are held out for it")
      d = self.config.data
      self._data[key] = squad.span_features(subset(part, size, seed=self.config.seed),
                                            self.tokenizer, d.max_length, d.doc_stride)
    return self._data[key]


def _load_span_splits(config, task: TaskSpec, tokenizer,
                      wanted: str) -> dict[str, TokenizedDataset]:
  """Windows of span QA questions (`data.squad.SpanFeatures`) per split.

  With `data.resplit_train`, one split (`data.resplit_source`) is re-split by article:
  `resplit_train` articles to train, `resplit_test` (0: all the others) to dev = test, the
  articles left over held out for a search (`search_questions`). Subsets count questions.
  """
  d = config.data
  data_dir = d.data_dir or None
  names = {"train": d.train_split, "dev": d.dev_split, "test": d.test_split or d.dev_split}
  out: dict = {}
  if d.resplit_train:
    source = squad.load_squad(d.resplit_source, data_dir, task)
    rest = len(source.articles()) - d.resplit_train
    if d.resplit_test > rest:
      raise UserError(f"data.resplit_test {d.resplit_test}: only {max(rest, 0)} articles of "
                      f"{source.source} are left after data.resplit_train {d.resplit_train}; "
                      "lower them (span tasks re-split by article)")
    parts = squad.split_by_article(source, d.resplit_train, d.resplit_seed,
                                   num_search_articles=rest - (d.resplit_test or rest))
    questions = {"train": parts.train, "dev": parts.dev, "test": parts.dev}
    out["search_questions"] = parts.search
  else:
    questions = {wanted: squad.load_squad(names[wanted], data_dir, task)}
  sizes = {"train": d.train_subset, "dev": d.dev_subset, "test": d.dev_subset}
  built: dict = {}  # dev and test of a re-split share their windows.
  for split, ds in questions.items():
    key = (id(ds), sizes[split])
    if key not in built:
      ds = _subset(ds, split, sizes[split], config.seed)
      built[key] = squad.span_features(ds, tokenizer, d.max_length, d.doc_stride)
    out[split] = built[key]
  return out


def _text_splits(config, task: TaskSpec, tokenizer, wanted: str) -> dict[str, TextDataset]:
  """Untokenized splits before any subset: all three of a re-split (`data.resplit_train`),
  else `wanted` read from its file."""
  d = config.data
  windowing = {"tokenizer": tokenizer, "max_length": d.max_length}  # long-document tasks.
  if d.resplit_train:
    source = load_split(task, d.resplit_source, d.data_dir or None, **windowing)
    train, held_out = resplit(source, d.resplit_train, d.resplit_test, seed=d.resplit_seed)
    return {"train": train, "dev": held_out, "test": held_out}
  if task.name == CUSTOM:  # its splits are its files; "test" is data.test_file or dev_file.
    names = {split: split for split in SPLITS}
  else:
    names = {"train": d.train_split, "dev": d.dev_split, "test": d.test_split or d.dev_split}
  return {wanted: load_split(task, names[wanted], d.data_dir or None, **windowing)}


def check_test_split(config, task: TaskSpec) -> None:
  """The test split the config names exists (`evaluate.py --split test` reads it later):
  one line before anything is stored."""
  d = config.data
  if d.resplit_train:
    return
  if task.name == CUSTOM:
    if d.test_file:
      readers.task_file(task, "test", Path(d.data_dir).expanduser())
  elif d.test_split:
    task.resolve_split(d.test_split)


def _load_splits(config, task: TaskSpec, tokenizer, wanted: str) -> dict[str, TokenizedDataset]:
  d = config.data
  sizes = {"train": d.train_subset, "dev": d.dev_subset, "test": d.dev_subset}
  out = {}
  for split, ds in _text_splits(config, task, tokenizer, wanted).items():
    out[split] = tokenize(_subset(ds, split, sizes[split], config.seed), tokenizer,
                          d.max_length)
  return out


def _subset(ds, split: str, size: int, seed: int):
  """`size` rows of `ds` (`data.train_subset` / `dev_subset`; 0: all), with a warning when
  the split holds fewer: a subset with a zero too many would run the whole split silently."""
  if size and size > len(ds):
    field = "data.train_subset" if split == "train" else "data.dev_subset"
    logging.warning("%s %d is more than the %d rows of the %s split: all of them are used",
                    field, size, len(ds), split)
  return subset(ds, size, seed=seed) if size else ds


def prepare(config: ml_collections.ConfigDict, workdir: str | Path, *,
            record: bool = True, phase: str | None = None) -> Run:
  """Loads the task, backbone and tokenizer and builds the data mesh over every device.

  Without `record` the config is a finished run's (`read_config`), and a backbone that no
  longer loads is reported against the workdir's config.json.

  `record` is for runs that train: the config, the data and the checkpoints already in the
  workdir are checked first, then the workdir is locked for this process and the config
  written to it atomically, so a rerun that fails leaves the workdir as it was. For a
  `phase` of `RECORDS_LATER` the phase writes it, once its own checks pass.
  """
  workdir = workdir_lib.check_dir(workdir)
  checks.check_config(config)
  if record:
    config = with_absolute_paths(config)
    checks.check_training_flags(config, phase)
    check_same_run(config, workdir)
  mesh = parallel.make_data_mesh()
  config, task = resolve_task(config)
  if task.cuts_into_windows and config.data.resplit_train:  # a run trained so before: read.
    if record:
      raise UserError(f"data.resplit_train re-splits rows, and {task.name} cuts each review "
                      "into windows, one row each, so windows of one review would be on both "
                      "sides; use the task's own train, dev and test files (drop the "
                      "data.resplit_* settings)")
    logging.warning("%s re-split %s by window, so its dev and test windows share reviews "
                    "with training", workdir, task.name)
  try:
    encoder, backbone, tokenizer = weights.load_backbone(
        config.backbone, revision=config.get("backbone_revision"), dtype=config.dtype)
  except weights.MissingCheckpointError as e:
    if record:  # the backbone came from the user's config: its own message names the fix.
      raise
    reason = str(e).split("; ")[0]
    fix = "put it back, or set \"backbone\" there to where it is now"
    if isinstance(e, weights.HubFetchError):  # a hub id, or an older run's folder as typed.
      reason = str(e)
      fix = ("if it names a folder, that is relative to the folder training ran in: run "
             "from there, or set \"backbone\" there to its absolute path")
    raise weights.WeightsError(
        f"the run's backbone {config.backbone} (\"backbone\" in {workdir / CONFIG_FILE}) "
        f"does not load: {reason}; {fix}") from e
  checks.check_max_length(config, encoder)
  run = Run(config, workdir, task, encoder, backbone, tokenizer, MetricWriter(workdir), mesh)
  checks.check_flops_mode(config.eval.flops, task, encoder)
  checks.check_keep_cls(config, task)
  if record:
    run.check_phase_batch_sizes(phase or "all")
    checks.check_lat_eval_config(run)
    for split in ("train", "dev"):
      run.dataset(split)  # a bad data_dir fails here, before anything is written.
    check_test_split(config, task)
    checks.check_train_rows(config, len(run.dataset("train")))
    if run.is_main_process:
      workdir_lib.lock(workdir)
    checks.check_checkpoints(run)
    check_resumed_phases(run, phase)
    checks.check_phase_inputs(run, phase)
    if phase not in RECORDS_LATER:
      run.write_config()
  return run


FILE_FIELDS = ("train_file", "dev_file", "test_file")
LOCAL_PATH_FIELDS = ("backbone", "data.data_dir")


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config`, or a copy whose fields naming a local folder or file (a backbone,
  `data.data_dir`) hold absolute paths, so the run's config.json still finds them when
  evaluate.py, adapler-export or a later phase runs from another directory. Hub ids and
  embedded names stay as they are; so does `train.init_from_hf`, read by fine-tuning alone
  (and compared, as typed, with the source its checkpoints recorded)."""
  absolute = {}
  for name in LOCAL_PATH_FIELDS:
    value = functools.reduce(getattr, name.split("."), config)
    if value and value not in weights.EMBEDDED and Path(value).expanduser().exists():
      path = str(Path(value).expanduser().absolute())
      if path != value:
        absolute[name] = path
  if not absolute:
    return config
  config = config.copy_and_resolve_references()
  for name, path in absolute.items():
    *sections, field = name.split(".")
    setattr(functools.reduce(getattr, sections, config), field, path)
  return config


def resolve_task(config: ml_collections.ConfigDict
                 ) -> tuple[ml_collections.ConfigDict, TaskSpec]:
  """The config's task. For `custom` (the user's files in `data.*_file`), a copy of the
  config with the files as absolute paths and, without `data.label_names`, the train file's
  labels in class order, so the workdir records what the run read."""
  if config.task != CUSTOM:
    named = [f for f in FILE_FIELDS if config.data.get(f)]
    if named:
      raise UserError(f"config data.{named[0]} is set but task is {config.task!r}; pass "
                      f"--config.task={CUSTOM} to train on your own files")
    return config, get_task(config.task)
  config = config.copy_and_resolve_references()
  d = config.data
  for f in FILE_FIELDS[:2]:
    if not d[f]:
      raise UserError(f"task {CUSTOM} needs data.{f}; pass --config.data.{f}=PATH (a .csv or "
                      ".tsv with a header, or .jsonl)")
  for f in FILE_FIELDS:
    if d[f]:
      d[f] = str((Path(d.data_dir).expanduser() / Path(d[f]).expanduser()).absolute())
  groups = tuple(tuple(f.strip() for f in g.split("+")) for g in d.text_fields.split(","))
  if not 1 <= len(groups) <= 2 or not all(all(g) for g in groups):
    raise UserError(f"config data.text_fields {d.text_fields!r} must name one text field or "
                    "two for a pair, e.g. --config.data.text_fields=question,sentence")
  if d.metric not in METRICS:
    raise UserError(f"config data.metric {d.metric!r} is not one of {', '.join(METRICS)}; "
                    "pass e.g. --config.data.metric=accuracy")
  split_files = {"train": d.train_file, "dev": d.dev_file, "test": d.test_file or d.dev_file}
  if not d.label_names:
    inferred = readers.file_labels(custom_task(split_files, groups, d.label_field), "train", ".")
    with_comma = [n for n in inferred if "," in n]
    if with_comma:  # data.label_names lists the classes separated by commas.
      raise UserError(f"{d.train_file}: label {with_comma[0]!r} contains a comma, which "
                      "data.label_names cannot hold; rename that class in the data files")
    d.label_names = ",".join(inferred)
  names = tuple(n.strip() for n in d.label_names.split(","))
  if "" in names or len(set(names)) < len(names):
    raise UserError(f"config data.label_names {d.label_names!r} must name each class once, "
                    "with no empty name, e.g. --config.data.label_names=neg,pos")
  if len(names) < 2:
    raise UserError(f"task {CUSTOM} has the single label {names[0]!r}; a classifier needs two "
                    "or more (pass --config.data.label_names=NEG,POS)")
  return config, custom_task(split_files, groups, d.label_field, names, d.metric, d.id_field,
                             d.max_length)


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a train.py run stored in `workdir`, with fields added since at their
  defaults; one line when it is missing or damaged."""
  directory = workdir_lib.check_dir(workdir)
  path = directory / CONFIG_FILE
  if not path.exists():
    what = f"{path} is missing" if directory.exists() else f"{directory} does not exist"
    raise UserError(f"{what}; pass the --workdir of a train.py run")
  fix = "rerun train.py with the run's --config and this --workdir to write it again"
  stored = files.read_json(path, fix)
  if not isinstance(stored, dict):
    raise UserError(f"{path} is damaged (not a JSON object); {fix}")
  missing = [k for k, kind in (("task", str), ("data", dict))
             if not isinstance(stored.get(k), kind)]
  if missing:
    raise ForeignConfigError(
        f"{path} is not a train.py run's config (no {' or '.join(map(repr, missing))}: an "
        "export or a model folder?); pass the --workdir of a train.py run")
  return config_lib.with_new_fields(ml_collections.ConfigDict(stored))


class ForeignConfigError(UserError):
  """The workdir's config.json is a JSON object of another kind (an export's, a Hugging
  Face model's): train.py must not write over it."""


def stored_config(workdir: Path) -> ml_collections.ConfigDict | None:
  """The config of the run `workdir` holds, or None without one (or with a damaged one,
  which a rerun writes again); a `ForeignConfigError` for another kind of config.json."""
  try:
    return read_config(workdir)
  except ForeignConfigError as e:
    raise ForeignConfigError(f"{e}, or a new folder for this one") from None
  except UserError:
    return None


_MISSING = object()


def check_resumed_phases(run: Run, phase: str | None) -> None:
  """A training phase this run would resume (its folder holds a checkpoint) asks for the
  batch size and the train rows it started with (its `config.<phase>.json`): its step
  count, schedule and batch order count in the batch size, and a model trained on the rows
  of two seeds or subsets is one no config records (a search could hold out rows it learned
  from). One line otherwise, before anything is written (moving a run to a device count that
  does not divide its batch size is what leads to the first)."""
  for name, batch_field in TRAINING_BATCH_SIZE.items():
    path = run.workdir / f"config.{name}.json"
    if phase not in (name, "all", None) or not path.exists() or not _has_checkpoint(
        run.workdir / name):
      continue
    try:
      recorded = files.read_json(path, "")
    except UserError:  # damaged: that phase's rerun writes it again.
      continue
    imported = name == "finetune" and _imported_from(recorded)
    rows = () if imported else run.resumed_row_fields()  # an import stepped over no rows.
    for field in (batch_field, *rows):
      was, now = _field(recorded, field), _field(run.config, field)
      if was is _MISSING or was == now:
        continue
      if field == batch_field:
        raise CheckpointError(
            f"{run.workdir / name} holds checkpoints trained at {field} {was} ({path.name}), "
            f"this run asks for {now}; a resumed phase keeps its batch size (its steps and "
            f"schedule count in it): rerun with --config.{field}={was} on a number of "
            f"devices that divides it, or move {name}/ aside to train it again at {now}")
      raise CheckpointError(
          f"{run.workdir / name} holds checkpoints trained with {field} {was!r} "
          f"({path.name}), this run asks for {now!r}; a resumed phase keeps the train rows "
          f"it started on: rerun with --config.{field}={was}, move {name}/ aside to train "
          f"it again, or, if {name} is finished, run the later phases alone (--phase)")


def _has_checkpoint(directory: Path) -> bool:
  ckpt = Checkpointer(directory, read_only=True)
  try:
    return ckpt.latest_step() is not None
  finally:
    ckpt.close()


def _field(tree, dotted: str):
  """`tree["a"]["b"]` for "a.b" (dicts or ConfigDicts), `_MISSING` where a level lacks it."""
  for key in dotted.split("."):
    if not hasattr(tree, "keys") or key not in tree:
      return _MISSING
    tree = tree[key]
  return tree


def _imported_from(recorded) -> str:
  """The `train.init_from_hf` a fine-tuning config records ('' for one train.py ran)."""
  source = _field(recorded, "train.init_from_hf")
  return "" if source is _MISSING else source


def _a(word: str) -> str:
  return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def check_same_run(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """A workdir holds one run: a config of another method or task is refused before it is
  written over the stored one (the checkpoints would be read as the new task's)."""
  stored = stored_config(workdir)
  if stored is None:
    return
  method = stored.get("method", "adapler")
  if method != config.method:
    raise UserError(f"{workdir} holds {_a(method)} run (config.json method {method!r}), not "
                    f"{config.method}; pass that run's config (--config.method={method}) or "
                    "another --workdir")
  if stored.task != config.task:
    raise UserError(f"{workdir} holds {_a(stored.task)} run (config.json task "
                    f"{stored.task!r}), not {config.task}; pass a {stored.task} config (the one "
                    "it was trained with) or another --workdir")


def warn_changed_data(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """A warning naming the `data.*` fields and the compute `dtype` a rerun changes from the
  stored config (they are allowed: e.g. a phase evaluated at another length or in bfloat16),
  since everything after reads them."""
  stored = stored_config(workdir)
  if stored is None:
    return
  changed = [f"data.{k} ({stored.data[k]!r} -> {v!r})" for k, v in config.data.items()
             if k in stored.data and stored.data[k] != v]
  if "dtype" in stored and stored.dtype != config.dtype:
    changed.append(f"dtype ({stored.dtype!r} -> {config.dtype!r})")
  if changed:
    logging.warning("%s: this run changes %s; later phases, evaluate.py and adapler-export "
                    "read the new values", workdir / CONFIG_FILE, ", ".join(changed))
