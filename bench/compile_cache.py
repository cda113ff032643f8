"""A CLI's wall time with the persistent compilation cache: cache off, empty (first run), and
filled by that first run (second run), each in a fresh process.

  cp -r runs/demo /tmp/demo_eval
  python bench/compile_cache.py --workdir /tmp/demo_eval --out bench/results/compile_cache_demo.json

The command is `python evaluate.py --workdir W` unless given after `--`. The cache lives in
--cache-dir (emptied first). The script prints a table and writes JSON: per run the wall and CPU
seconds and the cache entries after it; a second run that compiles nothing adds no entry.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from adapler_jax.cli import CACHE_ENV, CACHE_SUFFIX, ATIME_SUFFIX, run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from adapler_jax.errors import UserError  # pylint: disable=wrong-import-position
from adapler_jax.files import check_output  # pylint: disable=wrong-import-position
import timing  # bench/timing.py  # pylint: disable=wrong-import-position


def entries(cache: Path) -> int:
  return len(list(cache.glob("*-cache"))) if cache.is_dir() else 0


def timed(command: list[str], cache_env: str, cache: Path) -> dict:
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.run(command, cwd=ROOT, env={**os.environ, CACHE_ENV: cache_env},
                        capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise UserError(f"{' '.join(command)} failed (exit {proc.returncode}): {last}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return {"wall_seconds": wall, "cpu_seconds": cpu, "cache_entries_after": entries(cache)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run (use a copy: "
                      "evaluate.py writes its report there)")
  parser.add_argument("--cache-dir", default=None, help="cache folder (emptied first; "
                      "default: a temporary one)")
  parser.add_argument("--out", default=None, help="JSON file")
  parser.add_argument("command", nargs="*", help="after --: the CLI to time")
  args = parser.parse_args()
  command = args.command or [sys.executable, "evaluate.py", "--workdir", args.workdir]
  if args.out:
    check_output(args.out, flag="--out")
  cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="jax_cache_"))
  others = [p.name for p in cache.iterdir()
            if not p.name.endswith((CACHE_SUFFIX, ATIME_SUFFIX))] if cache.is_dir() else []
  if others:  # emptied first: only ever a compilation cache.
    raise UserError(f"--cache-dir {cache} holds {others[0]!r}, not only cache entries; pass "
                    "a new or empty folder (it is emptied first)")
  shutil.rmtree(cache, ignore_errors=True)
  runs = {"cache off": timed(command, "", cache),
          "first run (empty cache)": timed(command, str(cache), cache),
          "second run (filled cache)": timed(command, str(cache), cache)}
  first, second = runs["first run (empty cache)"], runs["second run (filled cache)"]
  result = {
      "command": " ".join(["python" if c == sys.executable else c for c in command]),
      "cache_env": f"{CACHE_ENV}={cache}",
      "runs": {name: {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
               for name, r in runs.items()},
      "first_over_second_wall": round(first["wall_seconds"] / second["wall_seconds"], 2),
      "first_over_second_cpu": round(first["cpu_seconds"] / max(second["cpu_seconds"], 1e-9),
                                     2),
      "new_entries_in_second_run": second["cache_entries_after"]
                                   - first["cache_entries_after"],
      "load_average_1m_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
  }
  print(f"{'run':<28}{'wall s':>9}{'cpu s':>9}{'entries':>9}")
  for name, r in runs.items():
    print(f"{name:<28}{r['wall_seconds']:>9.1f}{r['cpu_seconds']:>9.1f}"
          f"{r['cache_entries_after']:>9}")
  print(f"first / second: {result['first_over_second_wall']}x wall, "
        f"{result['first_over_second_cpu']}x CPU; new entries in the second run: "
        f"{result['new_entries_in_second_run']}")
  if args.out:
    timing.write_json(args.out, result)


if __name__ == "__main__":
  run_cli(main)
