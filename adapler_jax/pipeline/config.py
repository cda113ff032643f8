"""Defaults shared by every `configs/<task>.py` (paper Appendix D unless noted)."""

from __future__ import annotations

import difflib
import functools

import ml_collections

from adapler_jax.errors import UserError


def base_config(task: str, max_length: int) -> ml_collections.ConfigDict:
  """The full config tree with the paper's shared hyperparameters; `HELP` says what each
  field means."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.method = "adapler"
  c.backbone = "minilm"
  c.backbone_revision = ml_collections.config_dict.placeholder(str)
  c.seed = 22
  c.dtype = "float32"
  c.compilation_cache = True

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""
  c.data.max_length = max_length
  c.data.train_split = "train"
  c.data.dev_split = "dev"
  c.data.test_split = ""
  c.data.train_subset = 0
  c.data.dev_subset = 0
  c.data.resplit_source = ""
  c.data.resplit_train = 0
  c.data.resplit_test = 0
  c.data.resplit_seed = 0
  c.data.doc_stride = 128
  c.data.train_file = ""
  c.data.dev_file = ""
  c.data.test_file = ""
  c.data.text_fields = "text"
  c.data.label_field = "label"
  c.data.label_names = ""
  c.data.id_field = ""
  c.data.metric = "accuracy"

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 5
  c.train.batch_size = 32
  c.train.learning_rate = 2e-5
  c.train.weight_decay = 0.1
  c.train.warmup_fraction = 0.06
  c.train.keep_best = 3
  c.train.eval_every_steps = 0
  c.train.checkpoint_every_steps = 0
  c.train.log_every_steps = 50
  c.train.init_from_hf = ""

  c.saliency = ml_collections.ConfigDict()
  c.saliency.batch_size = 64
  c.saliency.num_checkpoints = 3

  c.adapler = ml_collections.ConfigDict()
  c.adapler.epochs = 5
  c.adapler.batch_size = 32
  c.adapler.learning_rate = 3e-5
  c.adapler.speed_learning_rate = 5e-4
  c.adapler.predictor_learning_rate = 0.0
  c.adapler.frozen = ""
  c.adapler.weight_decay = 0.1
  c.adapler.warmup_fraction = 0.06
  c.adapler.gamma = 5e-3
  c.adapler.phi = 5e-4
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 10.0
  c.adapler.beta = 0.1
  c.adapler.eta_init = 0.25
  c.adapler.theta_init = 1.0
  c.adapler.tolerance = 1.0
  c.adapler.from_finetuned = False

  c.lat = ml_collections.ConfigDict()
  c.lat.epochs = 5
  c.lat.batch_size = 32
  c.lat.learning_rate = 2e-5
  c.lat.weight_decay = 0.0
  c.lat.length_drop = 0.2
  c.lat.layer_drop = 0.2
  c.lat.num_sandwich = 2
  c.lat.smallest_ratio = 0.2
  c.lat.min_length = 2
  c.lat.kd = "forward"
  c.lat.teacher_layerdrop = True
  c.lat.keep_cls = True
  c.lat.include_pad_queries = False
  c.lat.include_diagonal = True
  c.lat.score_from_dropout_probs = False
  c.lat.length_base = "padded"
  c.lat.eval_length_config = ""
  c.lat.eval_length_ratio = 0.2

  c.search = ml_collections.ConfigDict()
  c.search.iterations = 30
  c.search.population = 20
  c.search.mutations = 30
  c.search.crossovers = 30
  c.search.mutation_prob = 0.5
  c.search.max_attempts = 1000
  c.search.seed = 0
  c.search.held_out = 872
  c.search.batch_size = 64
  c.search.eta_multipliers = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
  c.search.cost = "padded"
  c.search.floor_ratio = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "dev"
  c.eval.batch_size = 32
  c.eval.engine = "bucketed"
  c.eval.flops = "analytic"
  return c


# One line of help per section and per field of `base_config`, shown by `--print_config`
# (tests/test_config_cli.py checks that every field has one).
HELP = {
    "task": "a registered task (sst2, qnli, ag_news, imdb, demo, ...) or custom: your own "
            "files, named by data.train_file and data.dev_file",
    "method": "adapler (AdapLeR) or lat (Length-Adaptive Transformer)",
    "backbone": "minilm (embedded all-MiniLM-L6-v2), a local Hugging Face model folder, or "
                "a hub id",
    "backbone_revision": "a hub commit, branch or tag to pin a hub backbone to (None: the "
                         "latest)",
    "seed": "seed of initialisation, dropout, shuffling and data subsets",
    "dtype": "compute dtype: float32, bfloat16 or float16 (float16 only for phases that "
             "do not train: there is no loss scaling)",
    "compilation_cache": "reuse compiled programs across runs (JAX's persistent cache in "
                         "~/.cache/adapler-jax/jax, or $ADAPLER_JAX_CACHE_DIR)",

    "data": "where the examples come from and how they are cut",
    "data.data_dir": "'' = the Hugging Face hub; else the task's local folder (custom: the "
                     "folder of relative file names)",
    "data.max_length": "tokens per example after truncation, [CLS] and [SEP] included",
    "data.train_split": "the task's split to train on",
    "data.dev_split": "split for model selection and the dev metric",
    "data.test_split": "split reported as test; '' = the dev split",
    "data.train_subset": ">0: a seeded subset of this many training examples",
    "data.dev_subset": ">0: a seeded subset of this many dev (and test) examples",
    "data.resplit_source": "a labelled split to re-split into train and held-out ...",
    "data.resplit_train": "... with this many train examples (0: no re-split); dev = test = "
                          "the held-out",
    "data.resplit_test": "held-out examples of the re-split (span tasks count articles; those "
                         "left over are the search's)",
    "data.resplit_seed": "seed of the re-split",
    "data.doc_stride": "span tasks: tokens shared by consecutive windows of a long context",
    "data.train_file": "task custom: training file, .csv or .tsv with a header or .jsonl "
                       "(each may end in .gz)",
    "data.dev_file": "task custom: dev file (model selection, dev metric)",
    "data.test_file": "task custom: test file; '' = dev_file",
    "data.text_fields": "task custom: the text field, or two comma-separated for a pair "
                        "(question,sentence); a+b joins fields into one text",
    "data.label_field": "task custom: field holding the label",
    "data.label_names": "task custom: comma-separated label values in class order; '' = the "
                        "train file's (0,1,... when numeric, else sorted)",
    "data.id_field": "task custom: field with unique example ids; '' = <file stem>-<row>",
    "data.metric": "task custom: accuracy, or f1 (F1 of class 1)",

    "train": "phase 1: fine-tuning the backbone with a classifier (paper Appendix D)",
    "train.epochs": "fine-tuning epochs",
    "train.batch_size": "examples per step (split over the devices)",
    "train.learning_rate": "peak AdamW learning rate (linear warmup, then linear decay to 0)",
    "train.init_from_hf": "a fine-tuned HF BERT, RoBERTa or XLM-R *ForSequenceClassification dir or hub id: its encoder "
                          "and head are the fine-tuning result (no training); the backbone must "
                          "match it",
    "train.weight_decay": "AdamW weight decay",
    "train.warmup_fraction": "fraction of the steps spent warming up (0: none)",
    "train.keep_best": "evaluated checkpoints kept, the best by dev metric",
    "train.eval_every_steps": "evaluate on dev every this many steps; 0 = at each epoch's end",
    "train.checkpoint_every_steps": "extra resume points between evaluations; 0 = none",
    "train.log_every_steps": "log training metrics every this many steps",

    "saliency": "phase 2: gradient x input saliency of the training examples",
    "saliency.batch_size": "examples per batch",
    "saliency.num_checkpoints": "best fine-tuned checkpoints the saliency is averaged over",

    "adapler": "phase 3: AdapLeR training (paper Table 4 per task)",
    "adapler.epochs": "AdapLeR epochs (lambda grows each epoch)",
    "adapler.batch_size": "examples per step",
    "adapler.learning_rate": "peak learning rate of the backbone and classifier",
    "adapler.speed_learning_rate": "Adam learning rate of the speed parameters eta and theta",
    "adapler.predictor_learning_rate": "learning rate of the contribution predictors; 0 = "
                                       "learning_rate (the paper's setting)",
    "adapler.frozen": "parameter groups held fixed, comma-separated: speed (eta, theta), "
                      "predictors, model (backbone and head); e.g. speed,predictors to "
                      "train the backbone alone at fixed cutoffs",
    "adapler.weight_decay": "AdamW weight decay",
    "adapler.warmup_fraction": "fraction of the steps spent warming up (0: none)",
    "adapler.gamma": "weight of the contribution predictors' KL loss to the saliency",
    "adapler.phi": "weight of the length loss (higher: fewer tokens kept)",
    "adapler.lambda_init": "soft-removal sharpness of epoch 0: lambda = lambda_init * "
                           "lambda_rate ** epoch",
    "adapler.lambda_rate": "growth of lambda per epoch",
    "adapler.beta": "slope of the soft-removal function (Eq. 4)",
    "adapler.eta_init": "initial per-layer threshold factor eta (keep if score >= eta / n)",
    "adapler.theta_init": "initial per-layer [CLS] weight theta of the saliency target",
    "adapler.tolerance": "selection: best speedup within this many dev metric points of the "
                         "fine-tuned model",
    "adapler.from_finetuned": "start from the best fine-tuned model (backbone and head) instead "
                              "of the pre-trained backbone with a fresh head (the paper's "
                              "recipe); for short trainings, e.g. span QA on a CPU",

    "lat": "Length-Adaptive Transformer: LengthDrop training (LAT paper, section 4)",
    "lat.epochs": "LengthDrop epochs",
    "lat.batch_size": "examples per step",
    "lat.learning_rate": "learning rate (linear decay, no warmup, a fresh optimizer)",
    "lat.weight_decay": "AdamW weight decay",
    "lat.length_drop": "LengthDrop p: each layer keeps a length in [ceil((1-p) l), l]",
    "lat.layer_drop": "LayerDrop probability of each layer",
    "lat.num_sandwich": "random sub-models per step besides the smallest",
    "lat.smallest_ratio": "per-layer drop ratio of the smallest sub-model",
    "lat.min_length": "shortest length any layer keeps",
    "lat.kd": "distillation to the full model: forward, or reverse (the authors' swapped KL)",
    "lat.teacher_layerdrop": "apply LayerDrop to the full model too",
    "lat.keep_cls": "always keep [CLS]",
    "lat.include_pad_queries": "True: padding rows count in the significance (the authors')",
    "lat.include_diagonal": "a token's attention to itself counts in its significance",
    "lat.score_from_dropout_probs": "True: significance after attention dropout (the "
                                    "authors')",
    "lat.length_base": "padded: lengths on the padded length; actual: per-example ratios of "
                       "each input's length",
    "lat.eval_length_config": "per-layer lengths to evaluate, e.g. 52,42,34,28,23,19; '' = "
                              "eval_length_ratio",
    "lat.eval_length_ratio": "constant per-layer drop ratio to evaluate at",

    "search": "evolutionary search (--phase search): LAT's per-layer lengths, or AdapLeR's "
              "per-layer eta multipliers (LAT's defaults 30/20/30/30)",
    "search.iterations": "generations",
    "search.population": "LAT: constant-ratio configs spread evenly in cost between the "
                         "smallest and the full config, which join them as the first "
                         "generation",
    "search.mutations": "mutated configs per generation",
    "search.crossovers": "crossed-over configs per generation",
    "search.mutation_prob": "probability that a mutation changes each layer",
    "search.max_attempts": "tries to find new valid configs per generation",
    "search.seed": "seed of the search",
    "search.held_out": "fitness rows, held out of train (never the reported split)",
    "search.batch_size": "examples per fitness batch",
    "search.cost": "frontier cost: padded MACs (LAT) or actual FLOPs",
    "search.floor_ratio": "LAT search: configs cheaper than this constant ratio in [0, 1) are "
                          "never scored; 0 = lat.smallest_ratio (the smallest trained sub-model)",
    "search.eta_multipliers": "AdapLeR search: the grid each layer's multiplier of the trained "
                              "cutoff eta is drawn from",

    "eval": "evaluation with real token removal",
    "eval.split": "split the summary reports",
    "eval.batch_size": "examples per batch",
    "eval.engine": "bucketed (batched real dropping) or per-example (the reference)",
    "eval.flops": "analytic, or paper (the reference's fitted BERT-base constants)",
}


def format_config(config: ml_collections.ConfigDict) -> str:
  """The config as `--print_config` shows it: a header per section, then one line per field
  with its value, its help and, where the value differs, the `base_config` default."""
  defaults = base_config(config.task, config.data.max_length)
  order = {k: i for i, k in enumerate(HELP)}
  fields = sorted(dotted(config), key=lambda k: order.get(k, len(order)))
  width = min(40, max(len(f"{k} = {_get(config, k)!r}") for k in fields))
  lines, section = [], ""
  for key in fields:
    head = key.rpartition(".")[0]
    if head != section:
      section = head
      lines += ["", f"# {head}: {HELP.get(head, '')}"]
    value, default = _get(config, key), _get(defaults, key)
    note = "" if default is _MISSING or default == value else f" [default {default!r}]"
    lines.append(f"{f'{key} = {value!r}':<{width}}  # {HELP.get(key, '')}{note}")
  return "\n".join(lines)


_MISSING = object()


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return _MISSING
    node = node[part]
  return node


def find_field(config: ml_collections.ConfigDict, key: str,
               item: str) -> tuple[ml_collections.ConfigDict, str]:
  """The section holding dotted field `key` and the field's name; a one-line `UserError`
  about override `item` (with the nearest field names) when the config has no such field."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
  if isinstance(node, ml_collections.ConfigDict) and leaf in node:
    return node, leaf
  siblings = node.keys() if isinstance(node, ml_collections.ConfigDict) else []
  fields = [".".join(parents + [k]) for k in siblings]
  near = difflib.get_close_matches(key, fields or list(dotted(config)), n=1)
  hint = f" (did you mean {near[0]!r}?)" if near else ""
  raise UserError(f"override {item!r}: the config has no field {key!r}{hint}; write "
                  "KEY=VALUE with a dotted key such as adapler.phi=1e-3")


def with_new_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config`, a run's stored config, given every field of `base_config` it lacks at that
  field's default, in place: a run written before a field existed still loads, and the
  default keeps the behaviour the run had."""
  defaults = base_config(config.task, config.data.max_length)
  for key in dotted(defaults):
    if _get(config, key) is _MISSING:
      *sections, leaf = key.split(".")
      node = config
      for section in sections:
        if section not in node:
          node[section] = ml_collections.ConfigDict()
        node = node[section]
      node[leaf] = _get(defaults, key)
  return config


def dotted(config: ml_collections.ConfigDict, prefix: str = ""):
  """Every field of `config` as a dotted key (`train.epochs`), sections in order."""
  for k, v in config.items():
    yield from (dotted(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict)
                else [prefix + k])


def flat(config) -> dict:
  """`{dotted key: value}` of every field of `config` (a ConfigDict, or the dict of a
  stored config.json)."""
  config = ml_collections.ConfigDict(config)
  return {key: functools.reduce(getattr, key.split("."), config) for key in dotted(config)}


def apply_overrides(config: ml_collections.ConfigDict, items) -> ml_collections.ConfigDict:
  """Sets `KEY=VALUE` items (dotted keys, e.g. `adapler.phi=1e-3`) in place, each value
  converted to the type of the field it replaces; returns `config`."""
  for item in items:
    key, sep, raw = item.partition("=")
    node, leaf = find_field(config, key, item)
    if not sep:
      raise UserError(f"override {item!r} has no value; write KEY=VALUE such as "
                      "adapler.phi=1e-3")
    node[leaf] = parse_value(raw, node[leaf], item)
  return config


_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse_value(raw: str, current, item: str):
  """`raw` as a value of `current`'s type (a tuple: comma-separated, as its first element's
  type); one-line `UserError` when it is not one."""
  if isinstance(current, tuple):
    like = current[0] if current else ""
    return tuple(parse_value(part.strip(), like, item) for part in raw.split(",") if part.strip())
  try:
    if isinstance(current, bool):
      return _BOOLS[raw.lower()]
    if isinstance(current, int):
      number = float(raw)
      if number != int(number):
        raise ValueError
      return int(number)
    if isinstance(current, float):
      return float(raw)
  except (KeyError, ValueError, OverflowError):
    kind = ("true or false" if isinstance(current, bool)
            else "an int" if isinstance(current, int) else "a float")
    example = str(current).lower() if isinstance(current, bool) else repr(current)
    raise UserError(f"override {item!r}: {raw!r} is not {kind}; e.g. {example}") from None
  return raw
