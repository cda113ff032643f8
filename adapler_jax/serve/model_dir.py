"""The exported model: one self-contained directory, written whole and loaded in one call.

Layout::

  config.json         format, method, architecture (`EncoderConfig` fields), head shape,
                      label names, input fields, max length, tokenizer settings, and the
                      method's speed settings (AdapLeR: eta / theta; LAT: the length config
                      and, after a search, its frontier)
  model.safetensors   the inference weights, '/'-joined paths of the model tree
                      (`bert`, `head`, AdapLeR's `predictors_l`); no optimizer state
  tokenizer/          the tokenizer files (`save_pretrained`)

`load_model` needs nothing else: no workdir, no original backbone, no network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from adapler_jax import files
from adapler_jax.errors import UserError
from adapler_jax.models.adapler import AdapLeRConfig
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.models.heads import ClassifierConfig
from adapler_jax.reduce import lengths
from adapler_jax.reduce.significance import SelectionFlags

FORMAT, FORMAT_VERSION = "adapler-jax-export", 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR)  # everything `write_model` writes.
METHODS = {"adapler": AdapLeRConfig, "lat": ClassifierConfig}


class ExportError(UserError):
  """An export directory that is missing, not an export, or would be overwritten."""


@dataclasses.dataclass(frozen=True)
class ExportedModel:
  """A restored export: everything prediction needs.

  Attributes:
    directory: where it was loaded from.
    method: "adapler" or "lat".
    config: `AdapLeRConfig` (AdapLeR) or `ClassifierConfig` (LAT).
    params: AdapLeR `{"model": ..., "speed": {"eta", "theta"}}`; LAT `{"bert", "head"}`.
    tokenizer: the fast tokenizer saved with it.
    label_names: class names in index order.
    max_length: inputs are truncated to this many tokens ([CLS] and [SEP] included).
    task: the task it was trained on.
    text_fields: input field names, one group per text (1 group: single text; 2: pairs).
    meta: the whole `config.json` (speed settings, tsv columns, provenance).
  """

  directory: Path
  method: str
  config: AdapLeRConfig | ClassifierConfig
  params: dict
  tokenizer: Any
  label_names: tuple[str, ...]
  max_length: int
  task: str
  text_fields: tuple[tuple[str, ...], ...]
  meta: dict

  @property
  def is_pair(self) -> bool:
    return len(self.text_fields) == 2

  @property
  def is_span(self) -> bool:
    """Span QA: answers are spans of the second text (the context), not labels."""
    return self.config.head == "span"

  @property
  def doc_stride(self) -> int:
    """Span QA: tokens shared by consecutive windows of a long context (exports that predate
    the field: a third of the window, run_qa's 128 of 384)."""
    return int(self.meta["inputs"].get("doc_stride", self.max_length // 3))

  @property
  def speed(self) -> dict:
    """The method's speed settings as stored: AdapLeR `eta`/`theta`; LAT `length_config`,
    `base`, `selection` and (after a search) `frontier`."""
    return self.meta[self.method]

  @property
  def length_config(self) -> tuple[int, ...] | None:
    """LAT: the length config prediction runs at (None for AdapLeR)."""
    return tuple(self.speed["length_config"]) if self.method == "lat" else None

  @property
  def selection_flags(self) -> SelectionFlags:
    return SelectionFlags(**self.speed.get("selection", {}))


def model_tree(method: str, params: dict) -> dict:
  """The weights an export stores: the model tree without AdapLeR's `speed` group."""
  return params["model"] if method == "adapler" else {"bert": params["bert"],
                                                       "head": params["head"]}


def write_model(output: str | os.PathLike[str], meta: dict, params: dict, tokenizer, *,
                force: bool = False) -> Path:
  """Writes an export to `output` whole: into a temporary sibling, flushed to the disk, then
  renamed into place.

  `meta` is the body of `config.json` (see `export_meta`); `params` the method's params.
  An existing non-empty `output` is replaced only with `force`, and only when it is an
  export itself. Ctrl-C or SIGTERM leaves the previous export or the new one, whole (the
  swap of the two finishes first); only a kill -9 between its two renames would leave the
  previous one aside, as `.NAME.old-PID`, which `load_model` then names.
  """
  output = Path(output)
  _check_output(output, force)
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    with files.naming_errors(output.parent, tmp):  # where it was writing, not the temporary.
      tmp.mkdir()
      _write(tmp, meta, params, tokenizer)
      files.sync_tree(tmp)  # on the disk before the rename: a power cut leaves one whole.
    if output.exists():
      old = output.with_name(f"{_aside_prefix(output)}{os.getpid()}")
      with files.uninterrupted():  # never the old export moved out and the new one not in.
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old)
    else:
      os.replace(tmp, output)
    files.sync_folder(output.parent)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return output


def _check_output(output: Path, force: bool) -> None:
  if output.exists() and not output.is_dir():
    raise ExportError(f"--output {output} is a file; pass a directory for the export")
  if not output.is_dir() or not any(output.iterdir()):
    return
  if _read_meta(output, strict=False) is None:
    raise ExportError(f"--output {output} is not empty and holds no export, which is never "
                      "replaced; pass an empty or new --output")
  if not force:
    raise ExportError(f"--output {output} holds an export; pass --force to replace it, or "
                      "another --output")
  others = sorted(p.name for p in output.iterdir() if p.name not in EXPORT_FILES)
  if others:
    raise ExportError(f"--output {output} holds files that are not the export's "
                      f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), which "
                      "--force would delete; move them out of the folder, or pass another "
                      "--output")


def _write(directory: Path, meta: dict, params: dict, tokenizer) -> None:
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(model_tree(meta["method"], params), sep="/")
  arrays = {k: np.ascontiguousarray(np.asarray(jax.device_get(v))) for k, v in flat.items()}
  # Serialised here, written by Python: an OS error (a full disk) stays an OSError.
  (directory / WEIGHTS_FILE).write_bytes(save(arrays, metadata={"format": FORMAT}))
  meta = {**meta, "weights_crc32": {k: files.array_crc32(a) for k, a in arrays.items()}}
  tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
  (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def export_meta(method: str, config: AdapLeRConfig | ClassifierConfig, *, task: str,
                label_names, max_length: int, text_fields, speed: dict, tokenizer,
                tsv_columns=None, file_labels=None, source: dict | None = None,
                doc_stride: int | None = None) -> dict:
  """The body of `config.json`. `config.encoder` is stored field by field, so encoder
  fields added later flow through unchanged. Span QA models also store `doc_stride`, the
  overlap of the windows a long context is cut into."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
  head = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name != "encoder"}
  return {
      "format": FORMAT, "format_version": FORMAT_VERSION, "method": method, "task": task,
      "architecture": dataclasses.asdict(config.encoder), "model": head,
      "label_names": list(label_names), "max_length": int(max_length),
      "inputs": {"text_fields": [list(g) for g in text_fields],
                 "tsv_columns": None if tsv_columns is None else [list(g) for g in tsv_columns],
                 "file_labels": None if file_labels is None else list(file_labels),
                 **({} if doc_stride is None else {"doc_stride": int(doc_stride)})},
      "tokenizer": {"class": type(tokenizer).__name__, "directory": TOKENIZER_DIR,
                    "pad_token_id": int(tokenizer.pad_token_id or 0),
                    "truncation": "longest_first", "max_length": int(max_length)},
      method: speed,
      "source": source or {},
  }


def _read_meta(directory: Path, strict: bool = True) -> dict | None:
  path = directory / CONFIG_FILE
  try:
    meta = json.loads(path.read_text())
  except OSError:
    meta = None
  except ValueError:
    if strict and (directory / WEIGHTS_FILE).exists():
      raise ExportError(f"{path} is damaged (not JSON); re-export the model to a new "
                        "--output (a folder that is no readable export is never "
                        "replaced)") from None
    meta = None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    if not strict:
      return None
    if isinstance(meta, dict) and "method" in meta and "backbone" in meta:
      raise ExportError(f"{directory} is a train.py workdir, not an export; export it first: "
                        f"adapler-export --workdir {directory} --output DIR, then pass DIR")
    raise ExportError(f"{directory} is not an adapler-jax export ({CONFIG_FILE} is missing or "
                      "not an export's); pass a directory written by adapler-export")
  return meta


def _aside_prefix(output: Path) -> str:
  """How `write_model` names the export it moves aside, before its process id."""
  return f".{output.name}.old-"


def _set_aside(output: Path) -> Path | None:
  """The latest export `write_model` moved aside from `output` and never removed."""
  prefix = _aside_prefix(output)
  found = ([p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
           if output.parent.is_dir() else [])
  return max(found, key=lambda p: p.stat().st_mtime, default=None)


# What `load_model` reads from an export's config.json, besides "adapler" or "lat".
REQUIRED_FIELDS = ("architecture", "model", "inputs", "tokenizer", "label_names",
                   "max_length", "task")


def load_model(directory: str | os.PathLike[str]) -> ExportedModel:
  """Restores an export written by `write_model` (e.g. `adapler-export`)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from adapler_jax.weights import (  # pylint: disable=g-import-not-at-top
      WeightsError, load_tokenizer)
  if not isinstance(directory, (str, os.PathLike)):
    raise ExportError(f"model directory {directory!r} is not a path; pass the --output of "
                      "adapler-export")
  path = Path(directory)
  if not path.is_dir():
    set_aside = _set_aside(path) if not path.exists() else None
    if set_aside is not None:  # a kill -9 between write_model's two renames.
      raise ExportError(f"model directory {path} does not exist; an interrupted "
                        f"adapler-export --force left the previous export at {set_aside}: "
                        f"move it back (mv {shlex.quote(str(set_aside))} "
                        f"{shlex.quote(str(path))}), or export again")
    what = "is a file, not a directory" if path.exists() else "does not exist"
    raise ExportError(f"model directory {path} {what}; pass the --output of adapler-export")
  meta = _read_meta(path)
  version = meta.get("format_version", 0)  # absent in the first exports.
  if not isinstance(version, int) or isinstance(version, bool):
    raise ExportError(f"{path / CONFIG_FILE}: format_version is {json.dumps(version)}, not an "
                      "integer; re-export the model")
  if version > FORMAT_VERSION:
    raise ExportError(f"{path / CONFIG_FILE} is format {version}, newer than this adapler-jax "
                      f"reads ({FORMAT_VERSION}); upgrade it")
  if meta.get("method") not in METHODS:
    raise ExportError(f"{path / CONFIG_FILE}: method is {json.dumps(meta.get('method'))}, not "
                      f"one of {', '.join(METHODS)}; re-export the model")
  needed = REQUIRED_FIELDS + (meta["method"],)  # and its method's own section.
  missing = [k for k in needed if k not in meta]
  if missing:
    raise ExportError(f"{path / CONFIG_FILE} lacks {', '.join(missing)}; re-export the model")
  try:
    encoder = EncoderConfig(**meta["architecture"])
    config = METHODS[meta["method"]](encoder, **meta["model"])
  except (TypeError, ValueError) as e:
    raise ExportError(f"{path / CONFIG_FILE}: the architecture does not load ({e}); "
                      "re-export it with this adapler-jax version") from None
  _check_values(path, meta, config)
  if not (path / WEIGHTS_FILE).exists():
    raise ExportError(f"{path / WEIGHTS_FILE} is missing; re-export the model")
  try:
    flat = load_file(str(path / WEIGHTS_FILE))
  except Exception as e:  # pylint: disable=broad-except  (safetensors' own error types)
    raise ExportError(f"{path / WEIGHTS_FILE} cannot be read ({e}); re-export the "
                      "model") from None
  stored = meta.get("weights_crc32")  # absent in exports written before checksums.
  if stored is not None:
    bad = sorted(k for k, a in flat.items() if files.array_crc32(a) != stored.get(k))
    if bad:
      raise ExportError(f"{path / WEIGHTS_FILE}: {bad[0]} fails its checksum ({len(bad)} "
                        "arrays do); the file changed after export: re-export the model")
  tree = traverse_util.unflatten_dict(flat, sep="/")
  _check_shapes(path, meta["method"], config, tree)
  if meta["method"] == "adapler":
    speed = meta["adapler"]
    params = {"model": tree, "speed": {k: np.asarray(speed[k], np.float32)
                                       for k in ("eta", "theta")}}
  else:
    params = tree
  inputs = meta["inputs"]
  try:
    tokenizer = load_tokenizer(path / meta["tokenizer"]["directory"])
  except WeightsError as e:  # its advice is for a base model's folder; an export's is whole.
    raise ExportError(f"{str(e).split('; ')[0]}; re-export the model") from None
  return ExportedModel(
      directory=path, method=meta["method"], config=config, params=params,
      tokenizer=tokenizer,
      label_names=tuple(meta["label_names"]), max_length=int(meta["max_length"]),
      task=meta["task"], text_fields=tuple(tuple(g) for g in inputs["text_fields"]),
      meta=meta)


def _check_values(path: Path, meta: dict, config) -> None:
  """One-line `ExportError` for a config.json value the model cannot run with (a hand edit,
  or damage the checksums of the weights do not see)."""
  def refuse(field: str, value, want: str):
    return ExportError(f"{path / CONFIG_FILE}: {field} is {json.dumps(value)}, but it must "
                       f"be {want}; re-export the model, or restore the file")

  layers, head = config.encoder.num_layers, config.task_head
  names = meta["label_names"]
  if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
      or len(names) != head.num_labels):
    raise refuse("label_names", names, f"a list of the model's {head.num_labels} class names")
  length, positions = meta["max_length"], config.encoder.max_length
  if not isinstance(length, int) or isinstance(length, bool) or not 2 <= length <= positions:
    raise refuse("max_length", length, f"an integer in [2, {positions}] (the position table)")
  speed = meta[meta["method"]]
  if meta["method"] == "adapler":
    for key in ("eta", "theta"):
      value = speed.get(key) if isinstance(speed, dict) else None
      if (not isinstance(value, list) or len(value) != layers
          or not all(files.is_number(v) for v in value)):
        raise refuse(f"adapler.{key}", value, f"a list of {layers} numbers, one per layer")
  else:
    base = speed.get("base") if isinstance(speed, dict) else None
    if not isinstance(base, int) or isinstance(base, bool) or not 2 <= base <= positions:
      raise refuse("lat.base", base, f"an integer in [2, {positions}]")
    value, keep_cls = speed.get("length_config"), config.task_head.keep_cls
    whole = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    try:
      lengths.validate_config(value if whole else (), base, layers, keep_cls=keep_cls)
    except UserError:
      raise refuse("lat.length_config", value, f"{layers} non-increasing lengths in "
                   f"[{2 if keep_cls else 1}, {base}]") from None


def _check_shapes(path: Path, method: str, config, tree: dict) -> None:
  """One-line `ExportError` unless the weights have exactly the model's paths and shapes."""
  from adapler_jax.models import adapler  # pylint: disable=g-import-not-at-top
  from adapler_jax.train import classifier  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  if method == "adapler":
    init = lambda: model_tree(method, adapler.init(key, config))
  else:
    init = lambda: classifier.init_classifier(key, config.encoder, config.task_head)
  want = {k: v.shape for k, v in traverse_util.flatten_dict(jax.eval_shape(init), sep="/").items()}
  have = {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  bad = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
  if bad:
    raise ExportError(f"{path / WEIGHTS_FILE} does not fit {path / CONFIG_FILE}: "
                      f"{len(bad)} tensors differ (first {bad[0]}: {have.get(bad[0])} vs "
                      f"{want.get(bad[0])}); re-export the model")
