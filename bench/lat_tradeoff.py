"""LAT paper Figure 2, curves 1 and 2: accuracy vs cost under constant-rate reduction, for
the standard fine-tuned model and the LengthDrop-trained model of one LAT run.

  python bench/lat_tradeoff.py --workdir runs/sst2_lat --out docs/lat_tradeoff_sst2

Each ratio r in 0..0.2 gives the config l_i = ceil((1 - r) l_{i-1}) from the max length;
both models are scored on the eval split through the masked path (one compilation serves
every config). Cost in two conventions, two panels: MACs at the padded length, batch 1
(the LAT paper's x-axis), and actual-length FLOPs (each example's real tokens,
min(n, l_i) per layer), as a fraction of the full model. Writes OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from absl import logging

from adapler_jax import extras, pipeline
from adapler_jax.cli import run_cli
from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text
import timing  # bench/timing.py
from adapler_jax.eval import report
from adapler_jax.infer import flops
from adapler_jax.pipeline import lat_phases
from adapler_jax.reduce import lengths
# pylint: enable=g-import-not-at-top,wrong-import-position

STEP = 0.02  # default grid: 0, 0.02, ... up to the run's smallest trained sub-model.


def default_ratios(smallest_ratio: float) -> tuple[float, ...]:
  """0 to `smallest_ratio` (the ratio of LengthDrop's smallest sub-model) in steps of STEP,
  `smallest_ratio` itself the last."""
  grid = [round(STEP * i, 4) for i in range(int(smallest_ratio / STEP + 1e-9) + 1)]
  return tuple(grid if grid[-1] == round(smallest_ratio, 4) else grid + [smallest_ratio])


def sweep(workdir: str, ratios=None) -> dict:
  run = pipeline.prepare(pipeline.read_config(workdir), workdir, record=False)
  ratios = default_ratios(run.config.lat.smallest_ratio) if ratios is None else ratios
  cfg, base = run.classifier_config(), run.config.data.max_length
  flags = lat_phases.selection_flags(run)
  data = run.dataset(run.config.eval.split)
  models = {"standard": pipeline.load_finetuned(run, 1)[0][1],
            "lat": lat_phases.load_lengthdrop(run)[1]}
  dims = flops.FlopsDims.of_model(cfg)
  points = []
  for r in ratios:
    config = (lengths.constant_ratio_config(base, cfg.num_layers, r, run.config.lat.min_length)
              if r > 0 else (base,) * cfg.num_layers)
    real = lengths.real_counts(config, data.lengths, base, flags.length_base)
    row = {"ratio": r, "config": list(config),
           "padded_macs": flops.lat_macs(config, base, dims),
           **flops.selection_cost(data.lengths, real, config, base, dims)}
    for name, params in models.items():
      logits = report.masked_lat_logits(cfg, params, data, config, base=base, flags=flags,
                                        batch_size=run.config.eval.batch_size)
      row[name] = report.task_scores(run.metric_name, logits, data)["metric"]
    points.append(row)
    print(f"r={r:.2f} padded {row['padded_fraction']:.3f} actual {row['actual_fraction']:.3f} "
          f"standard {100 * row['standard']:.2f} lat {100 * row['lat']:.2f}", flush=True)
  questions = getattr(getattr(data, "examples", None), "examples", None)  # span tasks.
  return {"task": run.task.name, "split": run.config.eval.split, "metric": run.metric_name,
          "examples": len(data), "max_length": base, "mean_length": float(np.mean(data.lengths)),
          **({} if questions is None else {"questions": len(questions)}),
          "points": points}


def plot(result: dict, path: Path) -> None:
  plt = extras.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  pts = result["points"]
  panels = (("padded_macs", "GMACs at the padded length (LAT convention, log)"),
            ("actual_fraction", "actual-length FLOPs / full model"))
  for ax, (key, label) in zip(axes, panels):
    x = [p[key] / (1e9 if key == "padded_macs" else 1) for p in pts]
    for name, style in (("standard", "o-"), ("lat", "s-")):
      ax.plot(x, [100 * p[name] for p in pts], style,
              label={"standard": "standard + constant-rate",
                     "lat": "LengthDrop + constant-rate"}[name])
    if key == "padded_macs":
      ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  scored = (f"{result['questions']} questions" if "questions" in result  # not windows.
            else f"{result['examples']} examples")
  axes[0].set_ylabel(f"{result['metric']} ({result['split']}, {scored})")
  axes[0].legend()
  ratios = [p["ratio"] for p in pts]
  fig.suptitle(f"{result['task']}: constant-rate length reduction, ratios {min(ratios):g} to "
               f"{max(ratios):g} per layer")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="output stem: OUT.json and OUT.png")
  parser.add_argument("--ratios", default=None,
                      help="comma-separated per-layer ratios (0: the full model; default 0 to "
                           "the run's lat.smallest_ratio in steps of 0.02); ratios past "
                           "lat.smallest_ratio are configs LengthDrop never trained")
  args = parser.parse_args()
  timing.out_files(*timing.figure_files(args.out))
  logging.set_verbosity(logging.WARNING)
  ratios = None
  if args.ratios is not None:
    try:
      ratios = tuple(sorted(float(r) for r in args.ratios.split(",") if r.strip()))
    except ValueError:
      raise UserError(f"--ratios {args.ratios!r} is not a comma-separated list of numbers, "
                      "e.g. 0,0.1,0.2") from None
    if not ratios or not all(0 <= r < 1 for r in ratios):
      raise UserError(f"--ratios {args.ratios!r}: each ratio must lie in [0, 1), e.g. "
                      "0,0.1,0.2")
  result = sweep(args.workdir, ratios)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  json_path, png_path = timing.figure_files(out)
  atomic_write_text(json_path, json.dumps(result, indent=2))
  plot(result, png_path)
  print(f"wrote {json_path}, {png_path}")


if __name__ == "__main__":
  run_cli(main)
