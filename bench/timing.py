"""Timing on a shared, noisy machine: interleaved repeats, medians and their spread.

Every benchmark here measures its systems the same way:

* each system gets one warm-up call first (compilation, allocator, kernels);
* a repeat times every system once, in turn (A B C, A B C, ...), so that a slow spell of
  the machine hits all of them rather than one;
* one measurement calls the system until `min_seconds` have passed (at least once) and
  divides: the time per call of a fast system is averaged over many calls;
* a figure is reported as the median over repeats with its spread (min and max), and a
  ratio between two systems is computed per repeat first, then summarised the same way.

`pin_threads` restricts the process to N CPUs before JAX starts its backend: XLA sizes its
thread pool from the affinity mask, and PyTorch is given the same count.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

SPREAD_TOLERANCE = 0.10  # a ratio's min and max within +-10 % of its median.


def systems_arg(text: str, known: tuple[str, ...]) -> list[str]:
  """`--systems a,b`: the named systems in `known`'s order; none, or an unknown one, is
  one line (`UserError`: the scripts run under `run_cli`)."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  systems = [s for s in text.split(",") if s]
  unknown = set(systems) - set(known)
  if unknown or not systems:
    what = f"unknown systems {sorted(unknown)}" if unknown else "no system"
    raise UserError(f"--systems {text!r} names {what}; choose from {', '.join(known)}")
  return [s for s in known if s in systems]


def positive_ints(text: str, flag: str, example: str) -> tuple[int, ...]:
  """A comma-separated list of ints >= 1 (`--batch-sizes 1,32`); one line otherwise."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  values = [v.strip() for v in str(text).split(",") if v.strip()]
  if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
    raise UserError(f"{flag} takes ints of at least 1, comma-separated, e.g. {flag} {example}; "
                    f"got {text!r}")
  return tuple(int(v) for v in values)


def numbers(text: str, flag: str, example: str) -> list[float]:
  """A comma-separated list of numbers (`--eta-scales 0.25,0.5`); one line otherwise."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    return [float(v) for v in str(text).split(",") if v.strip()]
  except ValueError:
    raise UserError(f"{flag} takes numbers, comma-separated, e.g. {flag} {example}; got "
                    f"{text!r}") from None


def out_path(path: str | None) -> Path | None:
  """`--out`, checked before any work (`files.check_output`): not a folder, nor a file that
  a run or an export keeps (a result written there broke the run)."""
  from adapler_jax.files import check_output  # pylint: disable=g-import-not-at-top
  return None if path is None else check_output(path, flag="--out")


def figure_files(out: str) -> tuple[Path, Path]:
  """OUT.json and OUT.png of a figure script's `--out OUT` (a dot in OUT stays in the name)."""
  out = Path(out)
  return out.with_name(out.name + ".json"), out.with_name(out.name + ".png")


def out_files(*paths) -> None:
  """Each file a script will write, checked as `out_path` checks `--out`, before any work
  (a figure script writes OUT.json and OUT.png: both are checked)."""
  for path in paths:
    out_path(str(path))


def parse_args(doc: str, argv=None, *, min_seconds: float):
  """A timing script's `--threads`, `--repeats`, `--min-seconds` and `--out`, parsed (its
  description: `doc`'s first line), and the process pinned -> (args, threads)."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--threads", type=int, default=None,
                      help="CPUs to run on (default: all this process may use)")
  parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
  parser.add_argument("--min-seconds", type=float, default=min_seconds,
                      help="least time one measurement calls a system for")
  parser.add_argument("--out", default=None, help="JSON file for the results")
  args = parser.parse_args(argv)
  check_counts(args)
  out_path(args.out)
  return args, pin_threads(args.threads)


def check_counts(args) -> None:
  """`--repeats` and `--threads` (when given) at least 1, `--min-seconds` at least 0: one
  line otherwise."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  if (args.repeats < 1 or not args.min_seconds >= 0
      or (args.threads is not None and args.threads < 1)):
    raise UserError("--repeats and --threads must be at least 1, --min-seconds at least 0 "
                    "(e.g. --repeats 5 --threads 1 --min-seconds 1)")


def write_json(path, result) -> None:
  """`result` as JSON at `path`, its folder made, the file written whole. What measured it
  goes with it: a mapping gets `environment` (software, hardware, XLA flags) unless it has
  one; each row of a list gets the package `versions`."""
  from adapler_jax import environment  # pylint: disable=g-import-not-at-top
  from adapler_jax.files import atomic_write_text  # pylint: disable=g-import-not-at-top
  described = environment.describe()
  if isinstance(result, Mapping):
    result = {"environment": described, **result}
  else:
    result = [{"versions": described["versions"], **row} for row in result]
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
  print(f"wrote {path}")


def pin_threads(threads: int | None) -> int:
  """Restricts this process to `threads` CPUs (XLA sizes its pool from the affinity mask
  when its backend starts) and gives PyTorch, when installed, as many threads. Returns the
  count (all the CPUs the process may use when `threads` is None)."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads:
    if jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
      raise RuntimeError("pin threads before JAX starts its backend")
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(len(cpus))
  except ImportError:
    pass
  return len(cpus)


def measure(call: Callable[[], Any], min_seconds: float) -> tuple[float, list[Any]]:
  """Calls `call()` (which must block until its work is done) until `min_seconds` have
  passed, at least once -> (seconds per call, the results of the calls)."""
  results, start = [], time.perf_counter()
  while True:
    results.append(call())
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return elapsed / len(results), results


def interleaved(systems: Mapping[str, Callable[[], Any]], repeats: int, min_seconds: float,
                *, warmup: bool = True, log: Callable[[str], None] | None = None,
                progress: str | None = None
                ) -> tuple[dict[str, list[float]], dict[str, list[list[Any]]]]:
  """Times each system `repeats` times, interleaved (A B C, A B C, ...), after one warm-up
  call each (unless `warmup` is False: the caller warmed them up). `progress` labels a bar
  over the repeats (on stderr, updated between repeats only, so never inside a timing).

  Returns:
    seconds per call of each system in each repeat, and the results of its calls in each
    repeat (`len` of one: the calls that measurement made).
  """
  if warmup:
    for call in systems.values():
      call()
  seconds = {name: [] for name in systems}
  results = {name: [] for name in systems}
  rounds = range(repeats)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    rounds = tqdm(rounds, desc=progress, unit="repeat", leave=False)
  for r in rounds:
    for name, call in systems.items():
      s, out = measure(call, min_seconds)
      seconds[name].append(s)
      results[name].append(out)
    if log is not None:
      log(f"repeat {r + 1}/{repeats}: " + ", ".join(
          f"{name} {1e3 * seconds[name][-1]:.1f} ms x {len(results[name][-1])}"
          for name in systems))
  return seconds, results


def summary(values, digits: int = 4) -> dict[str, float]:
  """{median, min, max} of per-repeat values."""
  v = np.asarray(values, np.float64)
  return {"median": round(float(np.median(v)), digits), "min": round(float(v.min()), digits),
          "max": round(float(v.max()), digits)}


def ratio(numerator, denominator, digits: int = 3) -> dict[str, Any]:
  """Per-repeat `numerator / denominator`, summarised, with its half-spread relative to the
  median (`spread`) and whether that stays within `SPREAD_TOLERANCE` (`stable`)."""
  r = np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64)
  out = summary(r, digits)
  med = float(np.median(r))
  half = max(med - r.min(), r.max() - med) / med if med else float("inf")
  return {**out, "spread": round(float(half), 3), "stable": bool(half <= SPREAD_TOLERANCE),
          "per_repeat": [round(float(x), digits) for x in r]}


def versus(a, b) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
  """Two systems' per-repeat seconds -> their ms summaries and a / b per repeat (how much
  faster b is), with `pair_line` to print them."""
  return summary([1e3 * s for s in a], 3), summary([1e3 * s for s in b], 3), ratio(a, b)


def pair_line(label: str, a_ms, b_ms, a_over_b, width: int = 24) -> str:
  """A table row of `versus`'s three summaries after `label`."""
  return (f"{label} {fmt(a_ms, precision=3):>{width}} {fmt(b_ms, precision=3):>{width}} "
          f"{fmt(a_over_b):>18}")


def fmt(s: Mapping[str, float], scale: float = 1.0, precision: int = 2) -> str:
  """'median [min-max]' of a summary, values times `scale`."""
  f = lambda x: f"{scale * x:.{precision}f}"
  return f"{f(s['median'])} [{f(s['min'])}-{f(s['max'])}]"
