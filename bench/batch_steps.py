"""Per-batch minimum times of the engines' steps: robust where whole passes are noisy.

For each batch of a trained run's evaluation rows (`bench/inference.py`'s data), times one
engine's whole batch step (host inputs, the compiled program, the outputs read back), in
turn for every engine (the order rotated from batch to batch and pass to pass, so no engine
always runs first), `--passes` times over. Each batch keeps its fastest time of the
passes; the sums of those minima give each engine's time per example and its speed relative
to the full model.
A slow spell of a shared machine then costs nothing unless it lasts all passes.

  python bench/batch_steps.py --workdir runs/demo --task demo --eta-scales 0,0.25 --threads 1

`--scan-layers` adds, beside each AdapLeR engine, the same engine with its layers as one
`lax.scan` over stacked weights (`AdaptiveEngine(scan_layers=True)`); every row also has
the seconds its engine took to compile (`warmup`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import timing  # bench/timing.py  # pylint: disable=wrong-import-position
from adapler_jax.cli import run_cli  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="trained run (adapler_jax.pipeline.load_run)")
  p.add_argument("--task", required=True)
  p.add_argument("--batch-size", type=int, default=1)
  p.add_argument("--eta-scales", default="1,0.25",
                 help="AdapLeR engines: every layer's eta times each of these")
  p.add_argument("--passes", type=int, default=7)
  p.add_argument("--max-examples", type=int, default=200)
  p.add_argument("--threads", type=int, default=None)
  p.add_argument("--scan-layers", action="store_true",
                 help="also each AdapLeR engine with scan_layers=True")
  p.add_argument("--out", default=None, help="also write the rows as JSON")
  args = p.parse_args(argv)
  timing.out_path(args.out)
  args.eta_scales = timing.numbers(args.eta_scales, "--eta-scales", "0,0.25")
  if args.passes < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
    p.error("--passes, --batch-size and --threads must be at least 1")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.threads is not None:
    timing.pin_threads(args.threads)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import inference  # bench/inference.py  # pylint: disable=g-import-not-at-top
  from adapler_jax.data.batching import eval_batches  # pylint: disable=g-import-not-at-top

  bench_args = inference.parse_args(["--workdir", args.workdir, "--task", args.task,
                                     "--max-examples", str(args.max_examples)])
  setup = inference.run_setup(args.task, args.workdir, bench_args)
  engines = {"ours-full": inference.full_engine(setup, args.batch_size, bench_args)}
  for scale in args.eta_scales:
    for scan in (False, True) if args.scan_layers else (False,):
      engines[f"ours-adapler eta x{scale:g}{' scan' if scan else ''}"] = inference.adapler_engine(
          setup, args.batch_size, bench_args, np.full(setup.cfg.num_layers, scale, np.float32),
          scan_layers=scan)
  compile_seconds = {}
  for name, engine in engines.items():
    start = time.perf_counter()
    engine.warmup()
    compile_seconds[name] = time.perf_counter() - start
    engine.run(setup.data)
  batches = list(eval_batches(setup.data, args.batch_size, bench_args.buckets))
  step = {name: np.full(len(batches), np.inf) for name in engines}
  names = list(engines)
  for p in range(args.passes):
    for i, batch in enumerate(batches):
      shift = (p + i) % len(names)  # no engine always runs first on a batch.
      for name in names[shift:] + names[:shift]:
        engine = engines[name]
        start = time.perf_counter()
        engine.run_batch(batch)
        step[name][i] = min(step[name][i], time.perf_counter() - start)
  rows = []
  for name in engines:
    rows.append({
        "system": name, "task": args.task, "batch_size": args.batch_size,
        "examples": len(setup.data), "passes": args.passes,
        "step_ms_per_example": round(1e3 * step[name].sum() / len(setup.data), 4),
        "speed_over_full": round(step["ours-full"].sum() / step[name].sum(), 4),
        "compile_seconds": round(compile_seconds[name], 2)})
    print(f"{name:33s} {rows[-1]['step_ms_per_example']:.3f} ms per example, "
          f"{rows[-1]['speed_over_full']:.3f} of ours-full's speed, "
          f"compiled in {rows[-1]['compile_seconds']:.1f} s")
  if args.out:
    timing.write_json(args.out, rows)


if __name__ == "__main__":
  run_cli(main)
