"""Serving: self-contained exports of trained models and prediction from raw text.

  adapler-export --workdir runs/sst2 --output exports/sst2
  adapler-predict --model exports/sst2 --input texts.txt --output predictions.jsonl

  model = load_model("exports/sst2")          # no workdir, no backbone, no network
  Predictor("exports/sst2").predict(["a gentle , funny film"])
"""

from adapler_jax.serve.model_dir import ExportedModel, ExportError, load_model, write_model
from adapler_jax.serve.predictor import Predictor

__all__ = ["ExportError", "ExportedModel", "Predictor", "load_model", "write_model"]
