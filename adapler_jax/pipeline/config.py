"""Defaults shared by every `configs/<task>.py` (paper Appendix D unless noted)."""

from __future__ import annotations

import difflib

import ml_collections

from adapler_jax.errors import UserError


def base_config(task: str, max_length: int) -> ml_collections.ConfigDict:
  """The full config tree with the paper's shared hyperparameters."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.method = "adapler"  # or "lat" (Length-Adaptive Transformer).
  c.backbone = "minilm"  # embedded all-MiniLM-L6-v2; or a local HF dir, or a hub id.
  c.backbone_revision = ml_collections.config_dict.placeholder(str)  # pins a hub id's commit.
  c.seed = 22
  c.dtype = "float32"  # compute dtype: float32 or bfloat16.

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""  # "" = the Hugging Face hub; else the task's local folder.
  c.data.max_length = max_length
  c.data.train_split = "train"
  c.data.dev_split = "dev"
  c.data.test_split = ""  # "" = same as dev.
  c.data.train_subset = 0  # >0: a seeded subset of this many training examples.
  c.data.dev_subset = 0
  c.data.resplit_source = ""  # re-split one labelled split into train / held-out ...
  c.data.resplit_train = 0  # ... of these sizes (0: no re-split). Dev = test = held-out.
  c.data.resplit_test = 0
  c.data.resplit_seed = 0

  c.train = ml_collections.ConfigDict()  # phase 1: fine-tuning.
  c.train.epochs = 5
  c.train.batch_size = 32
  c.train.learning_rate = 2e-5
  c.train.weight_decay = 0.1
  c.train.warmup_fraction = 0.06
  c.train.keep_best = 3
  c.train.eval_every_steps = 0  # 0 = at each epoch's end.
  c.train.checkpoint_every_steps = 0  # extra resume points between evaluations.
  c.train.log_every_steps = 50

  c.saliency = ml_collections.ConfigDict()  # phase 2.
  c.saliency.batch_size = 64
  c.saliency.num_checkpoints = 3

  c.adapler = ml_collections.ConfigDict()  # phase 3 (paper Table 4 per task).
  c.adapler.epochs = 5
  c.adapler.batch_size = 32
  c.adapler.learning_rate = 3e-5
  c.adapler.speed_learning_rate = 5e-4
  c.adapler.predictor_learning_rate = 0.0  # 0 = learning_rate (the paper's setting).
  c.adapler.weight_decay = 0.1
  c.adapler.warmup_fraction = 0.06
  c.adapler.gamma = 5e-3
  c.adapler.phi = 5e-4
  c.adapler.lambda_init = 10.0  # lambda = lambda_init * lambda_rate ** epoch.
  c.adapler.lambda_rate = 10.0
  c.adapler.beta = 0.1
  c.adapler.eta_init = 0.25
  c.adapler.theta_init = 1.0
  c.adapler.tolerance = 1.0  # selection: best speedup within this many metric points.

  c.lat = ml_collections.ConfigDict()  # Length-Adaptive Transformer (LAT paper, section 4).
  c.lat.epochs = 5
  c.lat.batch_size = 32
  c.lat.learning_rate = 2e-5  # linear decay, no warmup, a fresh optimizer.
  c.lat.weight_decay = 0.0
  c.lat.length_drop = 0.2  # LengthDrop p.
  c.lat.layer_drop = 0.2
  c.lat.num_sandwich = 2  # random sub-models besides the smallest.
  c.lat.smallest_ratio = 0.2
  c.lat.min_length = 2
  c.lat.kd = "forward"  # or "reverse" (the authors' swapped KL arguments).
  c.lat.teacher_layerdrop = True
  c.lat.keep_cls = True
  c.lat.include_pad_queries = False  # True: the authors' scoring (padding rows count).
  c.lat.include_diagonal = True
  c.lat.score_from_dropout_probs = False  # True: the authors' (scores after attention dropout).
  c.lat.length_base = "padded"  # or "actual" (per-example ratios of each input's length).
  c.lat.eval_length_config = ""  # e.g. "52,42,34,28,23,19"; "" = eval_length_ratio.
  c.lat.eval_length_ratio = 0.2

  c.search = ml_collections.ConfigDict()  # evolutionary search (LAT defaults: 30/20/30/30).
  c.search.iterations = 30
  c.search.population = 20
  c.search.mutations = 30
  c.search.crossovers = 30
  c.search.mutation_prob = 0.5
  c.search.max_attempts = 1000
  c.search.seed = 0
  c.search.held_out = 872  # fitness rows, held out of train (never the reported split).
  c.search.batch_size = 64
  c.search.cost = "padded"  # frontier cost: "padded" MACs (LAT) or "actual" FLOPs.

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "dev"
  c.eval.batch_size = 32
  c.eval.engine = "bucketed"  # batched real dropping; or "per-example" (the reference).
  c.eval.flops = "analytic"  # or "paper" (the reference's fitted BERT-base constants).
  return c


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
  near = difflib.get_close_matches(key, fields or list(_dotted(config)), n=1)
  hint = f" (did you mean {near[0]!r}?)" if near else ""
  raise UserError(f"override {item!r}: the config has no field {key!r}{hint}; write "
                  "KEY=VALUE with a dotted key such as adapler.phi=1e-3")


def _dotted(config: ml_collections.ConfigDict, prefix: str = ""):
  for k, v in config.items():
    yield from (_dotted(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict)
                else [prefix + k])


def apply_overrides(config: ml_collections.ConfigDict, items) -> ml_collections.ConfigDict:
  """Sets `KEY=VALUE` items (dotted keys, e.g. `adapler.phi=1e-3`) in place, each value
  converted to the type of the field it replaces; returns `config`."""
  for item in items:
    key, sep, raw = item.partition("=")
    node, leaf = find_field(config, key, item)
    if not sep:
      raise UserError(f"override {item!r} has no value; write KEY=VALUE such as "
                      "adapler.phi=1e-3")
    current = node[leaf]
    if isinstance(current, bool):
      node[leaf] = raw.lower() in ("1", "true", "yes")
    elif isinstance(current, (int, float)):
      node[leaf] = type(current)(float(raw) if isinstance(current, float) else int(raw))
    else:
      node[leaf] = raw
  return config
