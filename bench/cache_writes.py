"""What a write to the persistent compilation cache costs as the folder fills, with JAX's own
size limit (it lists the folder and reads every entry's access-time file on each write) and
without it, as the CLIs run it; and the one trim per run that replaces that limit.

  python bench/cache_writes.py --out bench/results/cache_writes.json

Entries are random 16 KB blobs in a temporary folder; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from jax._src.lru_cache import LRUCache  # pylint: disable=g-import-not-at-top,wrong-import-position

from adapler_jax.cli import (ATIME_SUFFIX, CACHE_MAX_BYTES, CACHE_SUFFIX,  # pylint: disable=wrong-import-position
                             prune_compilation_cache, run_cli)
from adapler_jax.errors import UserError  # pylint: disable=wrong-import-position
from adapler_jax.files import check_output  # pylint: disable=wrong-import-position
import timing  # bench/timing.py  # pylint: disable=wrong-import-position


def filled(folder: Path, count: int, blob: bytes) -> None:
  """`count` entries as JAX writes them (program and access-time file), without its cost."""
  stamp = time.time_ns().to_bytes(8, "little")
  for i in range(count):
    (folder / f"k{i}{CACHE_SUFFIX}").write_bytes(blob)
    (folder / f"k{i}{ATIME_SUFFIX}").write_bytes(stamp)


def ms_per_write(folder: Path, max_size: int, blob: bytes, writes: int) -> float:
  cache = LRUCache(str(folder), max_size=max_size)
  start = time.perf_counter()
  for i in range(writes):
    cache.put(f"new{max_size}_{i}", blob)
  return (time.perf_counter() - start) / writes * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--entries", default="0,1000,4000")
  parser.add_argument("--writes", type=int, default=20)
  parser.add_argument("--out", type=Path)
  args = parser.parse_args()
  entries = [e.strip() for e in args.entries.split(",") if e.strip()]
  if not entries or not all(e.isdigit() for e in entries) or args.writes < 1:
    raise UserError("--entries takes ints of at least 0 (e.g. 0,1000,4000) and --writes at "
                    f"least 1; got --entries {args.entries!r} --writes {args.writes}")
  if args.out:
    check_output(args.out, flag="--out")
  blob, rows = os.urandom(16_000), []
  for count in map(int, entries):
    with tempfile.TemporaryDirectory() as tmp:
      folder = Path(tmp)
      filled(folder, count, blob)
      row = {"entries": count,
             "jax_limit_ms_per_write": ms_per_write(folder, CACHE_MAX_BYTES, blob, args.writes),
             "no_limit_ms_per_write": ms_per_write(folder, -1, blob, args.writes)}
      start = time.perf_counter()
      prune_compilation_cache(folder, CACHE_MAX_BYTES)
      row["trim_once_ms"] = (time.perf_counter() - start) * 1e3
    rows.append(row)
  print(f"{'entries':>8} {'JAX limit ms/write':>19} {'no limit ms/write':>18} {'trim once ms':>13}")
  for r in rows:
    print(f"{r['entries']:>8} {r['jax_limit_ms_per_write']:>19.2f} "
          f"{r['no_limit_ms_per_write']:>18.2f} {r['trim_once_ms']:>13.2f}")
  if args.out:
    timing.write_json(args.out, {"rows": rows, "entry_bytes": len(blob)})


if __name__ == "__main__":
  run_cli(main)
