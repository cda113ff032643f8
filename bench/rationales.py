"""Rationale agreement on ERASER movie reviews (paper §5.3, Figure 5) with the embedded MiniLM.

Trains fine-tune -> saliency -> AdapLeR on the review windows (`configs/eraser_movies.py`)
with a small CPU budget, then scores every token of the test windows per layer with the
contribution predictors (CP) and with three baselines on the fine-tuned backbone (raw
attention, attention rollout, gradient x input saliency) and compares them with the human
rationales: mAP and FPR per layer (`adapler_jax/eval/rationale.py` defines both).

  python bench/rationales.py --workdir runs/eraser_movies_cpu \
      --out bench/results/rationales_eraser_movies

writes OUT.json, OUT.png (Figure 5 style) and prints the per-layer table. Without training,
a finished sentiment run (same labels) can be scored on the review windows instead::

  python bench/rationales.py --eval-only --workdir runs/sst2 --eval-task eraser_movies \
      --out bench/results/rationales_eraser_movies_from_sst2

 Rerunning resumes
unfinished phases; a finished run (its summary.json) goes straight to the evaluation.

CPU budget (`CPU_BUDGET`, applied unless --full; --set KEY=VALUE overrides anything after
it): a seeded subset of 600 of the 3,491 training windows, 2 fine-tuning epochs (both
evaluated checkpoints averaged for saliency), 3 AdapLeR epochs with lambda 10, 1e3, 1e5 and
the larger predictor / speed learning rates of `configs/demo.py` (few steps), phi 0.01
(the length loss sums ~6 x 400 tokens here); dev and test windows are all used. About 100
minutes on one CPU core; minutes on one accelerator. --full trains with the config's own
budget (all windows, 5 + 5 epochs, paper Table 4 IMDB values).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from absl import logging

from adapler_jax import pipeline
from adapler_jax.cli import run_cli
from adapler_jax.data import load_split, tokenize, transfer_task
from adapler_jax.data.eraser import review_of
from adapler_jax.eval import rationale
from adapler_jax.pipeline.config import apply_overrides
import timing  # bench/timing.py
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIG = REPO / "configs" / "eraser_movies.py"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "eraser_movies"
CPU_BUDGET = (
    "data.train_subset=600",
    "train.epochs=2",
    "train.learning_rate=5e-5",
    "train.keep_best=2",
    "saliency.num_checkpoints=2",
    "adapler.epochs=3",
    "adapler.learning_rate=5e-5",
    "adapler.predictor_learning_rate=2e-3",
    "adapler.speed_learning_rate=1e-2",
    "adapler.gamma=0.1",
    "adapler.phi=0.01",
    "adapler.lambda_rate=100.0",
)


def load_config(path: Path):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def build_config(args: argparse.Namespace):
  """The config file, the CPU budget (unless --full), the data folder, then --set items."""
  config = load_config(Path(args.config))
  if not args.full:
    apply_overrides(config, [i for i in CPU_BUDGET if _has(config, i)])
  if config.task == "eraser_movies" and not config.data.data_dir:
    config.data.data_dir = str(args.data_dir)
  return apply_overrides(config, args.set)


def _has(config, item: str) -> bool:
  *parents, leaf = item.partition("=")[0].split(".")
  node = config
  for p in parents:
    node = node.get(p, {})
  return leaf in node


def claim_check(result: dict) -> dict:
  """Per layer, the method with the lowest FPR and whether it is CP (the paper's claim)."""
  methods = result["methods"]
  lowest = []
  for l in range(result["num_layers"]):
    values = {m: v["fpr"][l] for m, v in methods.items() if v["fpr"][l] is not None}
    lowest.append(min(values, key=values.get) if values else None)
  return {"lowest_fpr_method_per_layer": lowest,
          "cp_fpr_lowest_at_layers": [l + 1 for l, m in enumerate(lowest) if m == rationale.CP]}


def _train_examples(workdir: Path) -> int | None:
  path = workdir / "summary.json"
  return json.loads(path.read_text())["train_examples"] if path.exists() else None


def eval_data(trained, split: str, args: argparse.Namespace):
  """The run's own `split`, or with `--eval-task` that task's `split` (read from --data-dir,
  at the task's max length), when it has the run's labels."""
  if not args.eval_task or args.eval_task == trained.task.name:
    return trained.eval_dataset(split)
  task = transfer_task(args.eval_task, trained.task, args.workdir)
  texts = load_split(task, split, args.data_dir, tokenizer=trained.tokenizer,
                     max_length=task.max_length)
  return tokenize(texts, trained.tokenizer, task.max_length)


def default_title(result: dict) -> str:
  source = result["trained_on"]
  trained = "" if source == result["task"] else f", CPs trained on {source}"
  return (f"{result['task']} ({result['split']}, {result['windows']} windows{trained}): "
          "agreement with human rationales")


def evaluate(workdir: Path, split: str, batch_size: int, out: Path, title: str | None,
             args: argparse.Namespace) -> dict:
  trained = pipeline.load_run(workdir)
  data = eval_data(trained, split, args)
  start = time.time()
  result = rationale.evaluate_rationales(trained.adapler_cfg, trained.adapler_params,
                                         trained.backbone_params, data, batch_size=batch_size,
                                         progress=True)
  c = trained.config
  result = {
      "task": data.task or trained.task.name, "trained_on": trained.task.name, "split": split,
      "workdir": str(workdir),
      "reviews": len({review_of(i) for i in data.ids}), "windows": len(data),
      "max_length": data.max_length, "train_windows": _train_examples(workdir),
      "finetune_epochs": c.train.epochs, "adapler_epochs": c.adapler.epochs,
      "gamma": c.adapler.gamma, "phi": c.adapler.phi,
      "eval_seconds": time.time() - start, **result}
  result.update(claim_check(result))
  json_path = rationale.write_json(result, out.with_name(out.name + ".json"))
  png = rationale.plot_layers(
      result, out.with_name(out.name + ".png"),
      title or default_title(result))
  print(rationale.format_table(result))
  print(f"AdapLeR accuracy {100 * result['adapler_accuracy']:.1f}, backbone "
        f"{100 * result['backbone_accuracy']:.1f}; kept tokens per layer "
        f"{np.round(result['adapler_kept_tokens_per_layer'], 1).tolist()}")
  print(f"CP has the lowest FPR at layers {result['cp_fpr_lowest_at_layers']}")
  print(f"wrote {json_path}, {png}")
  return result


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="run directory (created or resumed)")
  parser.add_argument("--config", default=str(DEFAULT_CONFIG))
  parser.add_argument("--data-dir", default=str(DEFAULT_DATA),
                      help="ERASER movies folder (when the config leaves data_dir empty)")
  parser.add_argument("--full", action="store_true", help="the config's budget, not CPU_BUDGET")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. data.train_subset=1000 (repeatable)")
  parser.add_argument("--split", default="test", help="split to evaluate: test or dev")
  parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
  parser.add_argument("--eval-only", action="store_true", help="no training: the run is done")
  parser.add_argument("--eval-task", default=None,
                      help="evaluate on this task's rationales (from --data-dir) rather than the "
                           "run's own, e.g. eraser_movies with a run trained on sst2")
  parser.add_argument("--title", default=None)
  parser.add_argument("--out", required=True, help="output stem: OUT.json and OUT.png")
  args = parser.parse_args(argv)
  timing.out_files(f"{args.out}.json", f"{args.out}.png")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  workdir = Path(args.workdir)
  if not args.eval_only and not (workdir / "summary.json").exists():
    run = pipeline.prepare(build_config(args), workdir)
    print(pipeline.format_summary(pipeline.run_all(run)))
  return evaluate(workdir, args.split, args.batch_size, Path(args.out), args.title, args)


if __name__ == "__main__":
  run_cli(main)
