"""Accuracy vs FLOPs-speedup trade-off curves (paper Figure 3), with the backbone as reference.

Three ways to get the points; each writes OUT.json (the points) and OUT.png (the plot):

1. Train the AdapLeR phase at several phi into sibling workdirs of a finished run, reusing its
   fine-tuned checkpoints and saliency (symlinked: `finetune/`, `saliency.npz`), evaluate
   each (its `summary.json`) and plot them with the run itself::

     python bench/tradeoff.py --workdir runs/sst2 --phis 1e-4,2e-3,1e-2 \
         --out bench/results/tradeoff_sst2

   Siblings are `runs/sst2_phi0.002` etc.; an interrupted sweep resumes (finished siblings
   are skipped, AdapLeR training resumes from its last epoch). `--set adapler.epochs=3`
   overrides any config value in the siblings.

2. Only plot finished runs (no training)::

     python bench/tradeoff.py --from-workdirs runs/sst2,runs/sst2_phi0.002,runs/sst2_phi0.01 \
         --out bench/results/tradeoff_sst2

3. One trained model with its cutoffs eta scaled (no training; more drops as it grows)::

     python bench/tradeoff.py --workdir runs/demo --eta-multipliers 0.5,1,2,4,8 \
         --out docs/tradeoff_demo
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
from absl import logging

from adapler_jax import pipeline
from adapler_jax.cli import run_cli
from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text
from adapler_jax.eval import report, tradeoff
from adapler_jax.pipeline.config import apply_overrides, flat
import timing  # bench/timing.py
# pylint: enable=g-import-not-at-top,wrong-import-position

SHARED = ("finetune", "saliency.npz")  # what the siblings reuse from the finished run.


def sibling(base: Path, phi: float) -> Path:
  return base.parent / f"{base.name}_phi{phi:g}"


RECIPE = ("seed", "adapler", "train", "data")  # what a reused sibling must have trained with.


def check_same_recipe(workdir: Path, config) -> None:
  """One line unless the finished sibling `workdir` trained with `config`'s `RECIPE`
  fields (its config.adapler.json, else config.json; where the data lie may differ): a
  rerun with other `--set` values would reuse a model of another recipe."""
  path = workdir / "config.adapler.json"
  trained = flat(json.loads((path if path.exists() else workdir / "config.json").read_text()))
  want = flat(json.loads(config.to_json()))  # as stored: tuples are lists.
  differ = [f"{k} {trained.get(k)!r}, not {v!r}" for k, v in want.items()
            if k.split(".")[0] in RECIPE and k != "data.data_dir" and trained.get(k) != v]
  if differ:
    raise UserError(f"{workdir} was trained with other settings ({'; '.join(differ[:3])}); "
                    "move it aside to train it again, or pass the --set values it had")


def train_sibling(base: Path, phi: float, overrides: list[str]) -> Path:
  """AdapLeR phase + evaluation at `phi` in a sibling of `base` (skipped when finished)."""
  workdir = sibling(base, phi)
  config = pipeline.read_config(base)
  config.adapler.phi = float(phi)
  apply_overrides(config, overrides)
  if (workdir / "summary.json").exists():
    check_same_recipe(workdir, config)
    print(f"{workdir}: finished, reusing its summary.json")
    return workdir
  for name in SHARED:
    if not (base / name).exists():
      raise UserError(f"{base / name} is missing; run train.py on {base} first")
  workdir.mkdir(parents=True, exist_ok=True)
  for name in SHARED:
    link = workdir / name
    if not link.exists() and not link.is_symlink():
      link.symlink_to((base / name).resolve())
  run = pipeline.prepare(config, workdir)
  print(f"{workdir}: training AdapLeR at phi={phi:g}")
  pipeline.train_adapler(run)
  summary = pipeline.summarize(run)
  print(pipeline.format_summary(summary))
  return workdir


def eta_points(workdir: Path, multipliers: list[float], split: str | None) -> dict:
  trained = pipeline.load_run(workdir)
  split = split or trained.config.eval.split
  data = trained.eval_dataset(split)
  backbone = report.evaluate_backbone(trained.adapler_cfg.encoder, trained.adapler_cfg.task_head,
                                      trained.backbone_params, data, trained.task.metric)
  points = tradeoff.eta_sweep(trained.adapler_cfg, trained.adapler_params, data, multipliers,
                              trained.task.metric, batch_size=trained.config.eval.batch_size)
  for p in points:
    p["workdir"] = str(workdir)
  return {"task": trained.task.name, "split": split, "metric_name": trained.task.metric,
          "backbone": {"metric": backbone["metric"], "flops_speedup": 1.0},
          "points": points, "mode": "eta multipliers of one trained model"}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="a finished train.py run")
  parser.add_argument("--phis", default="", help="comma-separated phi values to train")
  parser.add_argument("--eta-multipliers", default="",
                      help="comma-separated eta multipliers (no training)")
  parser.add_argument("--from-workdirs", default="",
                      help="comma-separated finished runs of one task: plot only")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for the phi siblings, e.g. adapler.epochs=3")
  parser.add_argument("--split", default=None, help="--eta-multipliers: split to evaluate")
  parser.add_argument("--title", default=None)
  parser.add_argument("--out", required=True, help="output stem: OUT.json and OUT.png")
  args = parser.parse_args(argv)
  timing.out_files(f"{args.out}.json", f"{args.out}.png")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  if args.from_workdirs:
    result = tradeoff.points_from_workdirs([Path(w) for w in args.from_workdirs.split(",")])
  elif args.workdir and args.eta_multipliers:
    result = eta_points(Path(args.workdir), timing.numbers(args.eta_multipliers, "--eta-multipliers", "1.25,1.5"), args.split)
  elif args.workdir and args.phis:
    base = Path(args.workdir)
    siblings = [train_sibling(base, phi, args.set) for phi in timing.numbers(args.phis, "--phis", "1e-3,5e-3")]
    result = tradeoff.points_from_workdirs([base, *siblings])
  else:
    raise UserError("pass --from-workdirs, or --workdir with --phis or --eta-multipliers")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  json_path = out.with_name(out.name + ".json")
  atomic_write_text(json_path, json.dumps(result, indent=2))
  png = tradeoff.plot_tradeoff(result, out.with_name(out.name + ".png"), args.title)
  for p in result["points"]:
    print(f"{p['label']:>14}  {result['metric_name']} {100 * p['metric']:6.2f}  "
          f"speedup {p['flops_speedup']:5.2f}x")
  print(f"{'backbone':>14}  {result['metric_name']} {100 * result['backbone']['metric']:6.2f}")
  print(f"wrote {json_path}, {png}")


if __name__ == "__main__":
  run_cli(main)
