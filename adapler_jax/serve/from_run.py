"""`export_run`: a finished training workdir -> an export directory (`serve.model_dir`).

AdapLeR exports the selected AdapLeR checkpoint (the one `summary.json` names, else the
selection rule) with its eta / theta. LAT exports the best LengthDrop checkpoint at the
length config a search chose (`search/chosen.json`), else the run's eval length config,
and the searched frontier when there is one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from adapler_jax import files
from adapler_jax.errors import UserError
from adapler_jax.serve.model_dir import ExportError, export_meta, write_model


def export_run(workdir: str | os.PathLike[str], output: str | os.PathLike[str], *,
               force: bool = False) -> Path:
  """Exports the trained model of `workdir` to `output`; returns `output`."""
  from adapler_jax import pipeline  # pylint: disable=g-import-not-at-top
  workdir, output = Path(workdir), Path(output)
  config = pipeline.read_config(workdir)
  resolved = output.resolve()
  if resolved == workdir.resolve() or resolved in workdir.resolve().parents:
    raise ExportError(f"--output {output} holds the workdir {workdir}; pass a directory "
                      "outside it")
  keeper = files.kept_by(output, workdir)  # this or another run's folders, an export's files.
  if keeper == workdir:
    raise ExportError(f"--output {output} is a folder the workdir {workdir} keeps; pass a "
                      "directory outside it")
  if keeper is not None:
    raise ExportError(f"--output {output} lies in a folder {keeper} keeps; pass a "
                      "directory outside it")
  files.check_writable(output, "--output", folder=True)
  method = config.get("method", "adapler")
  if method == "lat":
    return _export_lat(pipeline, config, workdir, output, force)
  trained = pipeline.load_run(workdir)
  params, chosen_from = trained.adapler_params, "trained eta"
  chosen = _chosen(workdir)
  if chosen is not None:
    pipeline.frontier.check_searched(
        chosen, pipeline.phases.adapler_checkpointer(trained.run, read_only=True),
        trained.adapler_step, _chosen_path(workdir))
    from adapler_jax.eval import tradeoff  # pylint: disable=g-import-not-at-top
    multipliers = tradeoff.per_layer_multipliers(chosen.get("eta_multipliers"),
                                                 trained.adapler_cfg.num_layers)
    if multipliers is None:
      raise ExportError(f"{_chosen_path(workdir)} holds no eta multiplier (a number >= 0) per "
                        "layer; rerun evaluate.py with --flops-budget or --max-drop, or "
                        "delete it")
    params = tradeoff.with_eta_scaled(params, multipliers)
    chosen_from = pipeline.frontier.CHOSEN_FILE
  speed = {k: np.asarray(params["speed"][k], np.float64).tolist() for k in ("eta", "theta")}
  speed["chosen_from"] = chosen_from
  if chosen is not None:
    speed["chosen_rule"] = chosen.get("rule")
  source = {"workdir": str(workdir.resolve()), "backbone": config.backbone,
            "adapler_step": trained.adapler_step,
            "trained_dtype": _trained_dtype(workdir, "adapler")}
  meta = _meta(trained.run, "adapler", trained.adapler_cfg, speed, source)
  return write_model(output, meta, params, trained.tokenizer, force=force)


def _trained_dtype(workdir: Path, phase: str) -> str | None:
  """The compute dtype `phase` trained in, as its `config.<phase>.json` records it (a rerun
  may have switched the run's own); None when no readable record says."""
  path = workdir / f"config.{phase}.json"
  try:
    recorded = files.read_json(path, "") if path.exists() else None
  except UserError:  # damaged.
    return None
  dtype = recorded.get("dtype") if isinstance(recorded, dict) else None
  return dtype if isinstance(dtype, str) else None


def _chosen_path(workdir: Path) -> Path:
  return workdir / _chosen_file()


def _chosen(workdir: Path) -> dict | None:
  """The point the last evaluate.py dial picked from the run's search, or None."""
  path = _chosen_path(workdir)
  if not path.exists():
    return None
  chosen = files.read_json(path, "rerun evaluate.py with --flops-budget or --max-drop, or "
                                 "delete it")
  if not isinstance(chosen, dict):
    raise ExportError(f"{path} is damaged (not a JSON object); rerun evaluate.py with "
                      "--flops-budget or --max-drop, or delete it")
  return chosen


def _export_lat(pipeline, config, workdir: Path, output: Path, force: bool) -> Path:
  from adapler_jax.pipeline import frontier, lat_phases  # pylint: disable=g-import-not-at-top
  from adapler_jax.reduce import lengths  # pylint: disable=g-import-not-at-top
  if lat_phases.pad_queries(config.lat):  # refused before the backbone and data load.
    raise ExportError(f"{workdir} scores tokens with lat.include_pad_queries=True, which counts "
                      "padded query rows; an export predicts through the engine, which drops "
                      "padding first: evaluate this run with evaluate.py, or export a run "
                      "trained without it")
  run = pipeline.prepare(config, workdir, record=False)
  step, params = lat_phases.load_lengthdrop(run)
  chosen = _chosen(workdir)
  if chosen is not None:
    frontier.check_searched(chosen, lat_phases.lengthdrop_checkpointer(run, read_only=True),
                            step, _chosen_path(workdir))
    try:
      length_config = lengths.validate_config(chosen.get("config") or (),
                                              config.data.max_length, run.encoder.num_layers,
                                              keep_cls=config.lat.keep_cls)
    except UserError as e:
      raise ExportError(f"{_chosen_path(workdir)}: {e}") from None
    chosen_from = pipeline.frontier.CHOSEN_FILE
  else:
    length_config = lat_phases.eval_length_config(run)
    chosen_from = ("lat.eval_length_config" if config.lat.eval_length_config
                   else "lat.eval_length_ratio")
  searched, found_file = None, workdir / frontier.FRONTIER_FILE
  if found_file.exists():
    found = frontier.load(workdir)
    searched = {k: found[k] for k in ("cost", "full", "frontier", "metric_name") if k in found}
  speed = {"length_config": [int(v) for v in length_config], "chosen_from": chosen_from,
           "base": int(config.data.max_length),
           "selection": dataclasses.asdict(lat_phases.selection_flags(run)),
           "frontier": searched}
  if chosen is not None:
    speed["chosen_rule"] = chosen.get("rule")
  source = {"workdir": str(workdir.resolve()), "backbone": config.backbone,
            "lengthdrop_step": step,
            "trained_dtype": _trained_dtype(workdir, "lengthdrop")}
  meta = _meta(run, "lat", run.classifier_config(), speed, source)
  return write_model(output, meta, params, run.tokenizer, force=force)


def _meta(run, method: str, model_config, speed: dict, source: dict) -> dict:
  task = run.task
  tsv = task.local if task.local is not None and task.local.kind == "tsv" else None
  return export_meta(method, model_config, task=task.name, label_names=task.label_names,
                     max_length=run.config.data.max_length, text_fields=task.text_fields,
                     speed=speed, tokenizer=run.tokenizer,
                     tsv_columns=None if tsv is None else tsv.text_columns,
                     file_labels=None if tsv is None else tsv.label_values, source=source,
                     doc_stride=run.config.data.doc_stride if task.is_span else None)


def speed_summary(meta: dict) -> str:
  """One line on the dial an export predicts at and where it came from (the export CLI
  prints it, so a pick of evaluate.py's search dial never ships unnoticed)."""
  method = meta["method"]
  speed = meta[method]
  if method == "lat":
    what = f"LAT at lengths {', '.join(map(str, speed['length_config']))}"
  else:
    what = f"AdapLeR at eta {', '.join(f'{e:.4g}' for e in speed['eta'])}"
  source = speed.get("chosen_from")
  if source != _chosen_file():
    return f"{what} ({source})"
  rule = speed.get("chosen_rule") or {}
  dial = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in rule.items()
                  if files.is_number(v))
  return (f"{what}: the search point evaluate.py {dial or 'a dial'} picked ({source} in the "
          "workdir; delete it to export the run's own setting)")


def _chosen_file() -> str:
  from adapler_jax.pipeline.frontier import CHOSEN_FILE  # pylint: disable=g-import-not-at-top
  return CHOSEN_FILE
