"""Prediction overhead: `Predictor.predict` on raw texts vs `engine.run` on tokenized data.

Both run the SST-2 dev sentences through the same engine object (so the same compiled
shapes), after a warm-up; the repeats interleave the two (alternating which goes first), and
the throughput ratio is taken per repeat and reported as its median with the min-max spread
(`timing.ratio`, as every benchmark here). `predict` adds what serving needs around the engine:
tokenization, softmax and the output rows. The target is `predict` at >= 90 % of the
engine's throughput::

  adapler-export --workdir runs/demo --output /tmp/demo_export
  python bench/predict.py --model /tmp/demo_export --data-dir DATA --repeats 5 \
      --out bench/results/predict_sst2.json

`DATA` is the folder holding `sst2/dev.tsv` (GLUE format). The model may come from any
task: only its speed on these sentences is measured.

`--task squad` times a span QA export on the first `--max-examples` questions of
`DATA/squad/dev-v1.1.json` instead: `predict` then also cuts each context into windows and
picks the best span over them, and `engine.run` takes the windows ready-made::

  python bench/predict.py --model /tmp/squad_export --data-dir DATA --task squad \
      --max-examples 1000 --repeats 5 --out bench/results/predict_squad.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position

from adapler_jax import environment
from adapler_jax.cli import run_cli
from adapler_jax.files import atomic_write_text
from adapler_jax.data import load_split
from adapler_jax.errors import UserError
from adapler_jax.serve import Predictor
import timing
# pylint: enable=g-import-not-at-top,wrong-import-position

TARGET = 0.9


def inputs(task: str, data_dir: str, max_examples: int) -> list:
  """The raw inputs of `task`: SST-2 dev sentences, or SQuAD dev questions with contexts."""
  folder = Path(data_dir) / task
  wanted = "dev-v1.1.json" if task == "squad" else "dev.tsv"
  if not any((folder / name).exists() for name in (wanted, f"{wanted}.gz")):
    raise UserError(f"--data-dir {data_dir} has no {task}/{wanted}; pass the folder "
                    f"holding the {task} files")
  dev = load_split(task, "dev", folder)
  items = ([{"question": e.question, "context": e.context} for e in dev.examples]
           if task == "squad" else list(dev.texts[0]))
  return items[:max_examples] if max_examples else items


def measure(model: str, texts: list, batch_size: int, repeats: int) -> dict:
  predictor = Predictor(model, batch_size=batch_size)
  engine = predictor.engine
  engine.warmup()
  data = predictor.tokenize(texts)
  engine.run(data)
  predictor.predict(texts)
  times = {"engine.run": [], "Predictor.predict": []}
  runs = {"engine.run": lambda: engine.run(data),
          "Predictor.predict": lambda: predictor.predict(texts)}
  for r in range(repeats):
    order = list(runs) if r % 2 == 0 else list(runs)[::-1]
    for name in order:
      start = time.perf_counter()
      runs[name]()
      times[name].append(time.perf_counter() - start)
  start = time.perf_counter()
  predictor.tokenize(texts)
  tokenize_seconds = time.perf_counter() - start
  median = {k: statistics.median(v) for k, v in times.items()}
  return {
      "method": predictor.model.method, "task_trained_on": predictor.model.task,
      "examples": len(texts), "engine_rows": len(data), "batch_size": batch_size,
      "repeats": repeats,
      "seconds": times, "median_seconds": median,
      "examples_per_second": {k: len(texts) / v for k, v in median.items()},
      "tokenize_seconds": tokenize_seconds,
      **over_engine(times),
      "target": TARGET,
  }


def over_engine(times: dict[str, list[float]]) -> dict:
  """`predict`'s throughput over the engine's, per repeat (engine seconds / predict
  seconds of the same repeat): `predict_over_engine` its median, `..._rounds` the summary
  with min, max and stability."""
  rounds = timing.ratio(times["engine.run"], times["Predictor.predict"])
  return {"predict_over_engine": rounds["median"], "predict_over_engine_rounds": rounds}


def table(result: dict) -> str:
  lines = [f"{'system':<18} {'median s':>9} {'ex/s':>9}"]
  for name, seconds in result["median_seconds"].items():
    lines.append(f"{name:<18} {seconds:>9.3f} {result['examples_per_second'][name]:>9.1f}")
  ratio, rounds = result["predict_over_engine"], result["predict_over_engine_rounds"]
  lines.append(f"predict / engine throughput {100 * ratio:.1f} % [{100 * rounds['min']:.1f}-"
               f"{100 * rounds['max']:.1f}] over {len(rounds['per_repeat'])} repeats "
               f"(target >= {100 * TARGET:.0f} %: {'met' if ratio >= TARGET else 'missed'}"
               f"{'' if rounds['stable'] else '; spread beyond +-10 %'}); "
               f"tokenization {1000 * result['tokenize_seconds']:.1f} ms of it")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="An export directory (adapler-export).")
  parser.add_argument("--data-dir", required=True,
                      help="Folder holding sst2/dev.tsv (or squad/dev-v1.1.json).")
  parser.add_argument("--task", choices=("sst2", "squad"), default="sst2",
                      help="squad: a span QA export on SQuAD dev questions.")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max-examples", type=int, default=0, help="0: the whole dev split.")
  parser.add_argument("--out", default=None,
                      help="JSON file for the results (default: none, the table "
                           "only: the files under bench/results are the ones cited)")
  args = parser.parse_args()
  if args.repeats < 1 or args.batch_size < 1 or args.max_examples < 0:
    raise UserError("--repeats and --batch-size must be at least 1, --max-examples at least 0 "
                    f"(0: all); got {args.repeats}, {args.batch_size}, {args.max_examples}")
  out = timing.out_path(args.out)
  items = inputs(args.task, args.data_dir, args.max_examples)
  result = {"task": args.task, **measure(args.model, items, args.batch_size, args.repeats)}
  result["environment"] = {**environment.describe(), "load_average": os.getloadavg()}
  print(table(result))
  if out is not None:
    timing.write_json(out, result)


if __name__ == "__main__":
  run_cli(main)
