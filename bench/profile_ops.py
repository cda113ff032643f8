"""Where an engine's time goes, by XLA op kind and by thread: one traced pass, aggregated.

Traces one pass of the AdapLeR engine or the full-length engine over a trained run's
evaluation rows with `jax.profiler`, then sums each op's *exclusive* time (its own, not its
nested ops') by op kind (the HLO name without its number: `ynn_fusion`, `dot`, `gather`,
...) and reports, per thread, how much time executors spent outside any op. The profiler
adds its own cost per event, so read the shares, not the absolute times; compare systems
by their op totals.

  python bench/profile_ops.py --workdir runs/demo --task demo --batch-size 32 --system adapler
  python bench/profile_ops.py --workdir runs/demo --task demo --batch-size 1 --eta-scale 0.25
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import timing  # bench/timing.py  # pylint: disable=wrong-import-position
from adapler_jax.cli import run_cli  # pylint: disable=wrong-import-position
from adapler_jax.errors import UserError  # pylint: disable=wrong-import-position

EXECUTOR = ("ThunkExecutor::Execute", "ThreadpoolListener")


def op_kind(name: str) -> str:
  """`ynn_fusion.616.clone` -> `ynn_fusion`; `cond.126` -> `cond`."""
  return re.sub(r"([._]\d+)+(\.clone)?$", "", name)


def exclusive_times(events) -> list[tuple[str, int]]:
  """(name, own duration ns) of each event of one thread's timeline (events nest in time)."""
  spans = sorted(((e.start_ns, e.duration_ns, e.name) for e in events),
                 key=lambda t: (t[0], -t[1]))
  stack, out = [], []
  for start, duration, name in spans:
    while stack and stack[-1][0] <= start:
      stack.pop()
    node = [start + duration, name, duration]
    if stack:
      stack[-1][2] -= duration
    stack.append(node)
    out.append(node)
  return [(name, own) for _, name, own in out]


def aggregate(trace_dir: str) -> dict:
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  path = next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
  ops, counts, threads = collections.Counter(), collections.Counter(), {}
  for plane in ProfileData.from_file(str(path)).planes:
    for line in plane.lines:
      if "XLA" not in line.name:  # python frames and profiler bookkeeping.
        continue
      op_ns = executor_ns = 0
      for name, own in exclusive_times(line.events):
        if name.startswith(EXECUTOR):
          executor_ns += own
        elif not name.startswith("end: "):
          ops[op_kind(name)] += own
          counts[op_kind(name)] += 1
          op_ns += own
      thread = re.sub(r"/-?\d+$", "", line.name)
      t = threads.setdefault(thread, {"op_ms": 0.0, "executor_ms": 0.0})
      t["op_ms"] += op_ns / 1e6
      t["executor_ms"] += executor_ns / 1e6
  total = sum(ops.values())
  return {"op_ms": total / 1e6, "threads": threads,
          "ops": [{"kind": k, "ms": v / 1e6, "share": v / total, "count": counts[k]}
                  for k, v in ops.most_common()]}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="trained run (adapler_jax.pipeline.load_run)")
  p.add_argument("--task", required=True)
  p.add_argument("--system", choices=("adapler", "full"), default="adapler")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--eta-scale", type=float, default=1.0,
                 help="AdapLeR: every layer's eta times this (e.g. 0.25: few tokens drop)")
  p.add_argument("--max-examples", type=int, default=None)
  p.add_argument("--buckets", default=None,
                 help="padded widths, comma-separated (default: bench/inference.py's)")
  p.add_argument("--threads", type=int, default=None,
                 help="pin the process to this many CPUs (as bench/inference.py; default: all)")
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--out", default=None, help="also write the aggregate as JSON")
  args = p.parse_args(argv)
  timing.out_path(args.out)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.threads:
    timing.pin_threads(args.threads)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import inference  # bench/inference.py  # pylint: disable=g-import-not-at-top

  # The engines exactly as bench/inference.py times them (its default folds and buckets).
  bench_args = inference.parse_args(["--workdir", args.workdir, "--task", args.task]
                                    + (["--max-examples", str(args.max_examples)]
                                       if args.max_examples else [])
                                    + (["--buckets", args.buckets] if args.buckets else []))
  setup = inference.run_setup(args.task, args.workdir, bench_args)
  if args.system == "adapler":
    if setup.adapler_params is None:
      raise UserError(f"{args.workdir} has no AdapLeR model; pass an AdapLeR run or "
                      "--system full")
    scale = np.full(setup.cfg.num_layers, args.eta_scale, np.float32)
    engine = inference.adapler_engine(setup, args.batch_size, bench_args, scale)
  else:
    engine = inference.full_engine(setup, args.batch_size, bench_args)
  engine.warmup()
  engine.run(setup.data)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      engine.run(setup.data)
    result = aggregate(trace_dir)
  result.update(system=args.system, task=args.task, batch_size=args.batch_size,
                eta_scale=args.eta_scale, rows=len(setup.data))
  print(f"{args.system}, {args.task}, batch {args.batch_size}: ops {result['op_ms']:.1f} ms "
        "(exclusive, under the profiler)")
  for name, t in result["threads"].items():
    print(f"  thread {name}: ops {t['op_ms']:.1f} ms, executors outside ops "
          f"{t['executor_ms']:.1f} ms")
  for op in result["ops"][:args.top]:
    print(f"  {op['ms']:9.2f} ms {100 * op['share']:5.1f} % {op['count']:7d}  {op['kind']}")
  if args.out:
    timing.write_json(args.out, result)


if __name__ == "__main__":
  run_cli(main)
