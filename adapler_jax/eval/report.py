"""Evaluation reports: task metric, FLOPs, kept tokens per layer and throughput.

Span QA data (`SpanFeatures`, logits (E, T, 2)) is scored with the official SQuAD exact match
and F1 (`eval.squad`); `metric` is then F1 as a fraction.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from adapler_jax.data import SpanFeatures, TokenizedDataset
from adapler_jax.eval import metrics
from adapler_jax.eval import squad as squad_eval
from adapler_jax.infer import flops
from adapler_jax.models import adapler
from adapler_jax.train import classifier, parallel

ENGINES = ("bucketed", "per-example")


def task_scores(metric_name: str, logits: np.ndarray, data: TokenizedDataset,
                predictions_dir=None) -> dict[str, Any]:
  """`{"metric": ...}` of `logits` on `data`: the task metric of the argmax class; for span
  QA (logits (E, T, 2)) F1 / 100, with `exact_match`, `f1` (percent) and the question count,
  the answers written to `predictions_dir/predictions.json` when given."""
  if isinstance(data, SpanFeatures):
    out = squad_eval.evaluate_span(logits[..., 0], logits[..., 1], data, predictions_dir)
    keys = ("metric", "exact_match", "f1", "num_questions", "predictions_file")
    return {k: out[k] for k in keys if k in out}
  return {"metric": metrics.compute(metric_name, np.argmax(logits, axis=-1), data.labels)}


def run_adapler(cfg: adapler.AdapLeRConfig, params: dict, data: TokenizedDataset, *,
                engine: str = "bucketed", batch_size: int = 32, return_rationales: bool = False,
                progress: bool | str = False, warmup: bool = False):
  """Hard-removal inference over `data` -> an `EngineResult` (logits, kept counts, ...).
  With `warmup`, the bucketed engine compiles first, so its `seconds` time the run alone."""
  from adapler_jax import infer  # pylint: disable=g-import-not-at-top
  if engine == "per-example":
    return infer.per_example_run(cfg, params, data)
  if engine != "bucketed":
    raise ValueError(f"engine {engine!r} is not one of {ENGINES}")
  runner = infer.AdaptiveEngine(cfg, params, batch_size=batch_size, max_length=data.max_length)
  if warmup:
    runner.warmup(return_rationales, progress=progress)
  return runner.run(data, return_rationales=return_rationales, progress=progress)


def evaluate_adapler(cfg: adapler.AdapLeRConfig, params: dict, data: TokenizedDataset,
                     metric_name: str, *, engine: str = "bucketed", batch_size: int = 32,
                     flops_mode: str = "analytic", progress: bool | str = False,
                     predictions_dir=None, warmup: bool = False) -> dict[str, Any]:
  """Hard-removal metric and per-example FLOPs of an AdapLeR model on `data` (span QA: the
  answers go to `predictions_dir/predictions.json` when given). `examples_per_second`
  counts compilation unless `warmup` compiles first."""
  start = time.perf_counter()
  result = run_adapler(cfg, params, data, engine=engine, batch_size=batch_size,
                       progress=progress, warmup=warmup)
  seconds = getattr(result, "seconds", None) or time.perf_counter() - start
  dims = flops.FlopsDims.of_model(cfg)
  report = flops.flops_report(data.lengths, result.kept_counts, dims, mode=flops_mode)
  return {
      "num_examples": len(data),
      "metric_name": metric_name,
      **task_scores(metric_name, result.logits, data, predictions_dir),
      "backbone_flops": report["backbone_flops"],
      "adapler_flops": report["adapler_flops"],
      "flops_speedup": report["flops_speedup"],
      "kept_tokens_per_layer": report["kept_tokens_per_layer"],
      "examples_per_second": len(data) / seconds,
      "engine": engine,
      "flops_mode": flops_mode,
  }


def evaluate_lat(cfg, params: dict, data: TokenizedDataset, metric_name: str, config, *,
                 base: int, flags=None, batch_size: int = 32, progress: bool | str = False,
                 predictions_dir=None) -> dict[str, Any]:
  """Metric and FLOPs of a classifier at a length config (None: full length), run with
  real dropping (`LengthEngine`; with `flags.include_pad_queries`, whose scores count
  padded query rows, through the masked path padded to `data.max_length`, with no
  examples/second). FLOPs in two conventions: `flops_speedup_padded` is the LAT paper's
  (MACs at the padded length, batch 1); `flops_speedup_actual` counts each example's real
  tokens, min(n, l_i) (what the engine runs). Span QA: the answers go to
  `predictions_dir/predictions.json` when given."""
  from adapler_jax import infer  # pylint: disable=g-import-not-at-top
  from adapler_jax.reduce import lengths  # pylint: disable=g-import-not-at-top
  from adapler_jax.reduce.significance import SelectionFlags  # pylint: disable=g-import-not-at-top
  flags = flags or SelectionFlags()
  if flags.include_pad_queries:
    # Scores that count padded query rows exist only where the padding does: the masked path.
    logits = masked_lat_logits(cfg, params, data, config, base=base, flags=flags,
                               batch_size=batch_size)
    speed = None  # not the engine's speed: the masked path runs every token.
    full = (base,) * cfg.num_layers
    kept = lengths.real_counts(full if config is None else config, data.lengths, base,
                               flags.length_base)
  else:
    engine = infer.LengthEngine(cfg, params, config, base=base, flags=flags,
                                batch_size=batch_size, max_length=data.max_length)
    result = engine.run(data, progress=progress)
    logits, kept, speed = result.logits, result.kept_counts, result.examples_per_second
  dims = flops.FlopsDims.of_model(cfg)
  cost = flops.selection_cost(data.lengths, kept, config, base, dims)
  return {
      "num_examples": len(data), "metric_name": metric_name,
      **task_scores(metric_name, logits, data, predictions_dir),
      "length_config": None if config is None else list(map(int, config)),
      "flops_speedup_padded": 1.0 / cost["padded_fraction"],
      "flops_speedup_actual": 1.0 / cost["actual_fraction"],
      "kept_tokens_per_layer": kept.mean(axis=0).tolist(),
      "examples_per_second": speed,
  }


def masked_lat_logits(cfg, params: dict, data: TokenizedDataset, config, *, base: int,
                      flags=None, batch_size: int = 32) -> np.ndarray:
  """Logits at a length config through the masked path: one compilation per bucket width
  serves every config (for sweeps and searches over many configs). (E, C), or for a span
  head (E, max_length, 2) with `engine.PAD_LOGIT` at and past each example's length, as the
  engines give them. With `flags.include_pad_queries` every batch is padded to
  `data.max_length`, as LengthDrop trains: padded query rows then count in the scores, so
  a narrower bucket would change them."""
  from adapler_jax.data import DEFAULT_BUCKETS, eval_batches  # pylint: disable=g-import-not-at-top
  from adapler_jax.infer.engine import PAD_LOGIT  # pylint: disable=g-import-not-at-top
  from adapler_jax.reduce.significance import SelectionFlags  # pylint: disable=g-import-not-at-top
  head = cfg.task_head
  flags = flags or SelectionFlags()
  fn = _masked_logits_fn(cfg.encoder, head, base, flags)
  buckets = (data.max_length,) if flags.include_pad_queries else DEFAULT_BUCKETS
  config = np.full((cfg.num_layers,), base, np.int32) if config is None else np.asarray(
      config, np.int32)
  shape = (len(data), data.max_length, 2) if head.restore else (len(data), head.num_labels)
  out = np.full(shape, PAD_LOGIT, np.float32)
  def dispatched():
    for batch in eval_batches(data, batch_size, buckets):
      inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
      yield batch, fn(params, inputs, config)

  for batch, logits in parallel.read_behind(dispatched()):
    rows = np.flatnonzero(batch["real"])
    logits = logits[rows]
    if head.restore:
      valid = np.asarray(batch["attention_mask"], bool)[rows, :, None]
      out[batch["index"][rows], :logits.shape[1]] = np.where(valid, logits, PAD_LOGIT)
    else:
      out[batch["index"][rows]] = logits
  return out


@functools.lru_cache(maxsize=None)
def _masked_logits_fn(enc, head, base, flags):
  """The jitted masked forward for a static (model, head, base, flags), built once per
  process."""
  import jax  # pylint: disable=g-import-not-at-top
  from adapler_jax.models import lat  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda p, b, c: lat.masked_forward(enc, head, p, b, c, base=base,
                                                    flags=flags)[0])


def evaluate_backbone(encoder, head, params: dict, data: TokenizedDataset, metric_name: str,
                      batch_size: int = 64, mesh=None) -> dict[str, Any]:
  """Full-length metric of the fine-tuned model (`{"bert", "head"}` params; `head` a label
  count or a `models.heads` head); with a `mesh`, batches are split over its devices."""
  start = time.perf_counter()
  logits = classifier.predict(encoder, head, params, data, batch_size, mesh=mesh)
  seconds = time.perf_counter() - start
  return {"num_examples": len(data), "metric_name": metric_name,
          **task_scores(metric_name, logits, data),
          "examples_per_second": len(data) / seconds}
