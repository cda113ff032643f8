"""adapler_jax: adaptive length reduction (AdapLeR) for BERT-style encoders in JAX/Flax.

The pure functions most research code needs::

  import adapler_jax as aj
  cfg = aj.AdapLeRConfig(encoder_config, num_labels=2)
  params = aj.init(jax.random.key(0), cfg, backbone=bert_params)
  logits, trace = aj.soft_forward(cfg, params, batch, lam=10.0)       # training forward
  result = aj.hard_forward(cfg, params, input_ids)                    # one example, real dropping
  hidden = aj.encode(encoder_config, bert_params, input_ids, attention_mask)  # (B, N, H)
  step = aj.make_train_step(cfg, optimizer, aj.LossWeights(gamma=5e-3, phi=5e-4))

A trained model, exported with `adapler-export`, predicts from raw text::

  model = aj.load_model("exports/sst2")                  # no workdir, backbone or network
  rows = aj.Predictor("exports/sst2").predict(["a gentle , funny film"])
"""

from importlib import metadata as _metadata

from adapler_jax.models.adapler import (AdapLeRConfig, AdapLeRModel, HardRemovalResult,
                                        hard_forward, init, soft_forward, soft_removal_edit)
from adapler_jax.models.bert import Bert, EncoderConfig, encode
from adapler_jax.models.heads import ClassifierConfig, SequenceClassifier, SpanQA
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.serve import ExportedModel, Predictor, load_model
from adapler_jax.train.adapler_step import (LossWeights, TrainState, adapler_grads,
                                            create_train_state, make_train_step)
from adapler_jax.train.optim import adapler_optimizer
from adapler_jax.weights import load_backbone

try:
  __version__ = _metadata.version("adapler-jax")
except _metadata.PackageNotFoundError:  # the source tree on sys.path, not installed.
  __version__ = "0+unknown"

__all__ = [
    "AdapLeRConfig", "AdapLeRModel", "Bert", "ClassifierConfig", "EncoderConfig",
    "ExportedModel", "HardRemovalResult", "LossWeights", "Predictor", "SelectionFlags",
    "SequenceClassifier", "SpanQA",
    "TrainState", "adapler_grads", "adapler_optimizer", "create_train_state", "encode",
    "hard_forward", "init", "load_backbone", "load_model", "make_train_step", "soft_forward",
    "soft_removal_edit",
]
