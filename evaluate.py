"""Evaluates a trained run with hard removal and writes a JSON report.

  python evaluate.py --workdir runs/sst2 [--split dev|test] [--batch-size 32]
      [--engine bucketed|per-example] [--flops analytic|paper] [--output FILE]

Span QA runs (configs/squad*.py) also report the official exact match and F1 and write the
answers beside the report as predictions.json ({question id: answer}).

LAT runs (configs/*_lat.py) are evaluated at a length config, with real dropping:
  python evaluate.py --workdir runs/sst2_lat [--length-config 52,42,34,28,23,19 |
      --length-ratio 0.2] [--split dev] [--batch-size 32]

After `train.py --phase search`, either method at a point of its frontier:
  python evaluate.py --workdir W --flops-budget 0.4    # best point under 40% of the cost
  python evaluate.py --workdir W --max-drop 1.0        # cheapest point within 1 metric point

Also:
  --explain "some text"   token map of one text: which tokens each layer keeps, coloured by
                          CP score -> WORKDIR/explain.html and .png (or --output STEM.*)
  --rationales            per-layer mAP / FPR of the CPs and the attention, rollout and
                          saliency baselines against the split's rationales (eraser_movies,
                          demo) -> WORKDIR/rationales_<split>.json and .png (or --output);
                          [--saliency_target predicted|gold] [--batch-size 8]
"""

import json
from pathlib import Path

from absl import flags, logging

from adapler_jax import files, pipeline
from adapler_jax.cli import enable_compilation_cache, run_app
from adapler_jax.data.tasks import TASKS
from adapler_jax.errors import UserError
from adapler_jax.eval import report
from adapler_jax.infer import flops
from adapler_jax.pipeline import checks
from adapler_jax.pipeline import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The --workdir of a finished train.py run.")
_SPLIT = flags.DEFINE_enum("split", None, ["dev", "test", "train"], "Split to evaluate, as "
                           "the config defines them (default: the config's eval.split).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch size (default: the config's).",
                              lower_bound=1)
_ENGINE = flags.DEFINE_enum("engine", None, report.ENGINES, "Inference engine (default: "
                            "the config's).")
_FLOPS = flags.DEFINE_enum("flops", None, flops.MODES, "FLOPs count: analytic from the "
                           "model's shape, or the paper's fitted BERT-base constants "
                           "(default: the config's eval.flops).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file (default: WORKDIR/eval_<split>.json); "
                              "with --explain, the stem of the .html / .png files.")
_EXPLAIN = flags.DEFINE_string("explain", None, "A text to draw the per-layer token map of.")
_RATIONALES = flags.DEFINE_bool("rationales", False, "Agreement with human rationales per "
                                "layer (mAP, FPR) for the CPs and three baselines.")
_SALIENCY_TARGET = flags.DEFINE_enum("saliency_target", "predicted", ["predicted", "gold"],
                                     "--rationales: class whose logit the saliency baseline "
                                     "differentiates.")
_LENGTH_CONFIG = flags.DEFINE_string("length_config", None, "LAT: per-layer lengths on the "
                                     "max length, e.g. 52,42,34,28,23,19.")
_LENGTH_RATIO = flags.DEFINE_float("length_ratio", None, "LAT: a constant per-layer ratio, "
                                   "l_i = ceil((1 - r) l_{i-1}); 0.2 is the smallest sub-model.")
_FLOPS_BUDGET = flags.DEFINE_float("flops_budget", None, "After a search: the best frontier "
                                   "point costing at most this fraction of the full model "
                                   "(in the search's cost convention).")
_MAX_DROP = flags.DEFINE_float("max_drop", None, "After a search: the cheapest frontier "
                               "point within this many metric points of the full model.")
flags.DEFINE_alias("batch-size", "batch_size")
flags.DEFINE_alias("flops-budget", "flops_budget")
flags.DEFINE_alias("max-drop", "max_drop")
flags.DEFINE_alias("length-config", "length_config")
flags.DEFINE_alias("length-ratio", "length_ratio")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  check_flags()
  run_config = pipeline.read_config(_WORKDIR.value)
  check_span_output(TASKS.get(run_config.get("task")))
  enable_compilation_cache(run_config)
  if _SPLIT.value is None:  # the split the run's summary reports.
    flags.FLAGS.split = (run_config.get("eval") or {}).get("split") or "dev"
  if run_config.get("method", "adapler") == "lat":
    if _EXPLAIN.value is not None or _RATIONALES.value:
      raise UserError("--explain and --rationales read AdapLeR's contribution predictors; "
                      "this run is LAT: evaluate it at a length config, or pass an AdapLeR run")
    if _ENGINE.value is not None or _FLOPS.value is not None:
      raise UserError("--engine and --flops choose AdapLeR's engine and FLOPs count; a LAT run "
                      "has one engine and reports both of its conventions (padded MACs and "
                      "real-token FLOPs): drop them")
    return evaluate_lat()
  if _LENGTH_CONFIG.value is not None or _LENGTH_RATIO.value is not None:
    raise UserError("--length-config and --length-ratio apply to LAT runs; this run is "
                    "AdapLeR (--flops-budget / --max-drop pick from its eta search)")
  task = TASKS.get(run_config.get("task"))  # custom tasks classify.
  if (_EXPLAIN.value is not None or _RATIONALES.value) and task is not None and task.is_span:
    raise UserError(f"--explain and --rationales draw a classifier's kept tokens; this run "
                    f"answers questions ({task.name}): evaluate it without them")
  chosen = pick_from_frontier()
  trained = pipeline.load_run(_WORKDIR.value)
  config = trained.config
  if chosen is not None:
    check_searched(chosen, pipeline.phases.adapler_checkpointer(trained.run, read_only=True),
                   trained.adapler_step)
  flops_mode = _FLOPS.value or config.eval.flops
  checks.check_flops_mode(flops_mode, trained.task, trained.run.encoder)
  if _EXPLAIN.value is not None:
    return explain(trained, _EXPLAIN.value)
  if _RATIONALES.value:
    return rationales(trained)
  data = trained.eval_dataset(_SPLIT.value)
  params = trained.adapler_params
  if chosen is not None:
    from adapler_jax.eval import tradeoff  # pylint: disable=g-import-not-at-top
    from adapler_jax.pipeline import frontier  # pylint: disable=g-import-not-at-top
    multipliers = tradeoff.per_layer_multipliers(chosen.get("eta_multipliers"),
                                                 trained.adapler_cfg.num_layers)
    if multipliers is None:
      raise UserError(f"{Path(_WORKDIR.value) / frontier.FRONTIER_FILE}: the point it picked "
                      f"({chosen.get('config')}) holds no eta multiplier (a number >= 0) per "
                      "layer; rerun train.py --phase search")
    params = tradeoff.with_eta_scaled(params, multipliers)
  result = report.evaluate_adapler(
      trained.adapler_cfg, params, data, trained.task.metric,
      engine=_ENGINE.value or config.eval.engine,
      batch_size=_BATCH.value or config.eval.batch_size, flops_mode=flops_mode,
      predictions_dir=predictions_dir(trained.task), warmup=True,  # a speed without compiling.
      progress=True)
  out = {"task": trained.task.name, **split_fields(trained.run), **result}
  write_result(out, chosen)


def check_flags() -> None:
  """One line, before any work, for flags that cannot go together or hold a bad value."""
  if _EXPLAIN.value is not None and not _EXPLAIN.value.strip():
    raise UserError("--explain got an empty text; pass the text to explain, e.g. "
                    "--explain \"a gentle, funny film\"")
  if _EXPLAIN.value is not None and not _EXPLAIN.value.isascii():
    try:
      _EXPLAIN.value.encode("utf-8")  # bytes that were not UTF-8 arrive as lone surrogates.
    except UnicodeEncodeError:
      raise UserError("--explain got bytes that are not UTF-8 text; pass the text in "
                      "UTF-8") from None
  if _EXPLAIN.value is not None and _RATIONALES.value:
    raise UserError("pass only one of --explain and --rationales")
  if ((_EXPLAIN.value is not None or _RATIONALES.value)
      and (_FLOPS_BUDGET.value is not None or _MAX_DROP.value is not None)):
    raise UserError("--explain and --rationales draw the trained cutoffs; --flops-budget and "
                    "--max-drop pick a search point for an evaluation: pass one or the other")
  if flags.FLAGS["saliency_target"].present and not _RATIONALES.value:
    raise UserError("--saliency_target chooses the saliency --rationales compares with; pass "
                    "--rationales too, or drop it")
  if _FLOPS_BUDGET.value is not None and not 0 < _FLOPS_BUDGET.value <= 1:
    raise UserError(f"--flops-budget {_FLOPS_BUDGET.value} must be in (0, 1]: a fraction of "
                    "the full model's cost, e.g. --flops-budget 0.5")
  if _MAX_DROP.value is not None and not 0 <= _MAX_DROP.value <= 100:
    raise UserError(f"--max-drop {_MAX_DROP.value} must be in [0, 100]: metric points below "
                    "the full model, e.g. --max-drop 1")
  if _OUTPUT.value is not None:
    files.check_output(_OUTPUT.value, _WORKDIR.value)
    if _RATIONALES.value and Path(_OUTPUT.value).suffix == ".png":
      raise UserError(f"--output {_OUTPUT.value}: with --rationales it names the JSON report, "
                      "and the figure beside it (.png) would write over it; pass a .json path")


def write_result(out: dict, chosen: dict | None) -> None:
  """`out` (with the frontier point it used, if any) to --output or WORKDIR/eval_SPLIT.json,
  whole or not at all, and its summary to stdout."""
  if chosen is not None:
    out["chosen_from_frontier"] = record_choice(chosen)
  path = Path(_OUTPUT.value or Path(_WORKDIR.value) / f"eval_{_SPLIT.value}.json")
  path.parent.mkdir(parents=True, exist_ok=True)
  workdir_lib.atomic_write_text(path, json.dumps(out, indent=2))
  kept = out.get("kept_tokens_per_layer")
  print(json.dumps({k: v for k, v in out.items() if k != "kept_tokens_per_layer"}, indent=2))
  if kept is not None:  # one line, not one per layer.
    print("kept tokens per layer (mean): " + " ".join(f"{k:.1f}" for k in kept))
  print(f"wrote {path}")


def pick_from_frontier() -> dict | None:
  """The frontier point `--flops-budget` / `--max-drop` name (with the checkpoint the search
  scored, when the frontier records it), or None without them."""
  from adapler_jax.pipeline import frontier  # pylint: disable=g-import-not-at-top
  if _FLOPS_BUDGET.value is None and _MAX_DROP.value is None:
    return None
  found = frontier.load(_WORKDIR.value)
  point = frontier.pick(found, flops_budget=_FLOPS_BUDGET.value, max_drop=_MAX_DROP.value)
  return {**point, "checkpoint": found["checkpoint"]} if "checkpoint" in found else point


def check_searched(chosen: dict, checkpointer, step: int) -> None:
  """One line unless the frontier `chosen` comes from was searched on checkpoint `step`."""
  from adapler_jax.pipeline import frontier  # pylint: disable=g-import-not-at-top
  frontier.check_searched(chosen, checkpointer, step,
                          Path(_WORKDIR.value) / frontier.FRONTIER_FILE)


def record_choice(chosen: dict) -> dict:
  """The choice with its rule, also kept in WORKDIR/search/chosen.json (export reads it)."""
  from adapler_jax.pipeline import frontier  # pylint: disable=g-import-not-at-top
  choice = {"rule": {"flops_budget": _FLOPS_BUDGET.value, "max_drop": _MAX_DROP.value},
            **chosen}
  path = Path(_WORKDIR.value) / frontier.CHOSEN_FILE
  workdir_lib.atomic_write_text(path, json.dumps(choice, indent=2))
  print(f"recorded this pick in {path}: adapler-export ships it (delete the file to export "
        "the run's own setting)")
  return choice


def evaluate_lat() -> None:
  """A LAT run's LengthDrop model at a length config, through the gather engine."""
  from adapler_jax.pipeline import lat_phases  # pylint: disable=g-import-not-at-top
  from adapler_jax.reduce import lengths  # pylint: disable=g-import-not-at-top
  dials = [_LENGTH_CONFIG.value is not None, _LENGTH_RATIO.value is not None,
           _FLOPS_BUDGET.value is not None, _MAX_DROP.value is not None]
  if sum(dials) > 1:
    raise UserError("pass only one of --length-config, --length-ratio, --flops-budget, "
                    "--max-drop")
  chosen = pick_from_frontier()
  config = pipeline.read_config(_WORKDIR.value)
  if _BATCH.value is not None:
    config.eval.batch_size = _BATCH.value
  run = pipeline.prepare(config, _WORKDIR.value, record=False)
  base, layers = run.config.data.max_length, run.encoder.num_layers
  if chosen is not None:
    lengths_ = tuple(chosen["config"])
  elif _LENGTH_CONFIG.value is not None:
    parsed = lengths.parse_config(_LENGTH_CONFIG.value, base=base, num_layers=layers)
    lengths_ = lengths.validate_config(parsed, base, layers,
                                       keep_cls=run.config.lat.keep_cls, name="--length-config")
  elif _LENGTH_RATIO.value is not None:
    if not 0 <= _LENGTH_RATIO.value < 1:
      raise UserError(f"--length-ratio {_LENGTH_RATIO.value} must be in [0, 1): the share of "
                      "tokens each layer drops, e.g. --length-ratio 0.2")
    lengths_ = lengths.constant_ratio_config(base, layers, _LENGTH_RATIO.value,
                                             run.config.lat.min_length)
  else:
    lengths_ = lat_phases.eval_length_config(run)
  step, params = lat_phases.load_lengthdrop(run)
  if chosen is not None:
    check_searched(chosen, lat_phases.lengthdrop_checkpointer(run, read_only=True), step)
  data = run.dataset(_SPLIT.value)
  full = lat_phases.evaluate_at(run, params, data, None, progress="full length")
  at = "full length" if lengths_ is None else "lengths " + ",".join(map(str, lengths_))
  reduced = lat_phases.evaluate_at(run, params, data, lengths_,
                                   predictions_dir=predictions_dir(run.task), progress=at)
  out = {"task": run.task.name, **split_fields(run), "method": "lat",
         "lengthdrop_step": step, "full_metric": full["metric"], **reduced}
  if run.task.is_span:
    out.update(full_exact_match=full["exact_match"], full_f1=full["f1"])
  write_result(out, chosen)


def split_fields(run) -> dict:
  """`split`, and `split_read` with a note when --split test reads the dev data (the task has
  no test split here, e.g. GLUE's unlabelled test sets, or a re-split)."""
  if _SPLIT.value != "test" or not run.test_is_dev():
    return {"split": _SPLIT.value}
  print(f"note: {run.task.name} has no labelled test split in this run's config; --split test "
        "reads the dev split")
  return {"split": _SPLIT.value, "split_read": "dev"}


def check_span_output(task) -> None:
  """Span QA writes its answers beside the report as predictions.json: a report of that
  name would replace them."""
  from adapler_jax.eval.squad import PREDICTIONS_FILE  # pylint: disable=g-import-not-at-top
  if task is not None and task.is_span and _OUTPUT.value is not None and (
      Path(_OUTPUT.value).name == PREDICTIONS_FILE):
    raise UserError(f"--output {_OUTPUT.value}: the answers go beside the report as "
                    f"{PREDICTIONS_FILE}; name the report otherwise, e.g. "
                    f"{Path(_OUTPUT.value).with_name('eval.json')}")


def predictions_dir(task) -> Path | None:
  """Span QA: the folder of the report, where the answers go as predictions.json."""
  if not task.is_span:
    return None
  path = Path(_OUTPUT.value).parent if _OUTPUT.value else Path(_WORKDIR.value)
  path.mkdir(parents=True, exist_ok=True)
  return path


def explain(trained, text: str) -> None:
  from adapler_jax.eval import token_map  # pylint: disable=g-import-not-at-top
  max_length = trained.config.data.max_length
  length = len(trained.tokenizer(text)["input_ids"])
  if length > max_length:
    print(f"note: the text has {length} tokens; the map shows its first {max_length} "
          "(data.max_length)")
  tmap = token_map.explain(trained.adapler_cfg, trained.adapler_params, trained.tokenizer, text,
                           trained.task.label_names, max_length=max_length)
  stem = Path(_OUTPUT.value or Path(_WORKDIR.value) / "explain")
  if stem.suffix in (".html", ".png", ".json"):  # a file name given for the stem.
    stem = stem.with_suffix("")
  paths = token_map.write(tmap, stem, f"{trained.task.name}: AdapLeR token map")
  print(f"prediction: {tmap.prediction}; kept tokens per layer: "
        f"{tmap.kept.sum(axis=1).tolist()} of {len(tmap.tokens)}")
  print("wrote " + ", ".join(map(str, paths)))


def rationales(trained) -> None:
  from adapler_jax.eval import rationale  # pylint: disable=g-import-not-at-top
  data = trained.eval_dataset(_SPLIT.value)
  result = rationale.evaluate_rationales(
      trained.adapler_cfg, trained.adapler_params, trained.backbone_params, data,
      engine=_ENGINE.value or "bucketed", batch_size=_BATCH.value or 8,
      saliency_target=_SALIENCY_TARGET.value, progress=True)
  out = {"task": trained.task.name, **split_fields(trained.run), **result}
  path = Path(_OUTPUT.value or Path(_WORKDIR.value) / f"rationales_{_SPLIT.value}.json")
  rationale.write_json(out, path)
  png = rationale.plot_layers(out, path.with_suffix(".png"),
                              f"{trained.task.name} ({_SPLIT.value}): agreement with rationales")
  print(rationale.format_table(out))
  print(f"wrote {path}, {png}")


if __name__ == "__main__":
  run_app(main)
