"""XLA:CPU's dot kernels: its default (dots handed to YNNPACK) against XLA's own, which the CLIs
pick (`adapler_jax.cli.configure_xla_cpu`), on the shapes token dropping produces.

The flag is fixed when JAX's backend starts, so each setting runs in a worker process of its
own, both alive for the whole run; a repeat asks each worker in turn (A B, A B, ...) to time
every case, and the ratios are taken per repeat (`bench/timing.py`). Cases, on the embedded
MiniLM's weights: one feed-forward matmul (rows x 384 @ 384 x 1536) over six layers' worth of
distinct weight matrices (so none stays in cache), and one whole encoder layer at batch x
width tokens::

  python bench/cpu_dots.py --threads 1 --out bench/results/cpu_dots.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # bench/timing.py
from adapler_jax import cli
# pylint: enable=g-import-not-at-top,wrong-import-position

MATMUL_ROWS = (1, 8, 16, 64, 2048)
LAYER_SHAPES = ((1, 8), (1, 16), (1, 32), (1, 64), (8, 64), (32, 64))
SETTINGS = {"xla-default": "", "ours": cli.CPU_DOT_FLAG}


def cases():
  """{name: call} of every case, each call blocking until its result is ready."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from adapler_jax.infer import packing
  from adapler_jax.models.bert import attention_bias_from_mask, encoder_layer_params
  from adapler_jax.weights import load_backbone
  backbone = load_backbone("minilm")
  enc, layers = backbone.config, encoder_layer_params(backbone.config, backbone.params)
  rng = np.random.default_rng(0)
  mats = [jnp.asarray(rng.normal(size=(enc.hidden_size, enc.intermediate_size)), jnp.float32)
          for _ in range(2 * enc.num_layers)]
  matmuls = jax.jit(lambda x, ws: [x @ w for w in ws])
  layer = jax.jit(lambda p, x, bias: packing.run_layer(enc, p, x, bias, None))
  out = {}
  for m in MATMUL_ROWS:
    x = jnp.asarray(rng.normal(size=(m, enc.hidden_size)), jnp.float32)
    out[f"matmul {m} x {enc.hidden_size} @ {enc.hidden_size} x {enc.intermediate_size}"] = (
        lambda x=x: jax.block_until_ready(matmuls(x, mats)), len(mats))
  for b, w in LAYER_SHAPES:
    x = jnp.asarray(rng.normal(size=(b, w, enc.hidden_size)), jnp.float32)
    bias = attention_bias_from_mask(jnp.ones((b, w), bool))
    out[f"layer {b} x {w} tokens"] = (
        lambda x=x, bias=bias: jax.block_until_ready(layer(layers[0], x, bias)), 1)
  return out


def worker(min_seconds: float) -> None:
  """Reads one line per repeat from stdin; answers with the seconds of every case (JSON)."""
  calls = cases()
  for call, _ in calls.values():
    call()  # compile and warm up.
  print(json.dumps(list(calls)), flush=True)
  for _ in sys.stdin:
    out = {}
    for name, (call, per) in calls.items():
      out[name] = timing.measure(call, min_seconds)[0] / per
    print(json.dumps(out), flush=True)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--threads", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--min-seconds", type=float, default=0.5)
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args.min_seconds)
  threads = timing.pin_threads(args.threads)  # workers inherit the affinity.
  procs = {}
  for name, flag in SETTINGS.items():
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(),
           cli.KEEP_XLA_ENV: "1"}
    procs[name] = subprocess.Popen(
        [sys.executable, __file__, "--worker", "--min-seconds", str(args.min_seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
  names = [json.loads(p.stdout.readline()) for p in procs.values()][0]
  seconds = {s: {n: [] for n in names} for s in procs}
  for r in range(args.repeats):
    for setting, p in procs.items():
      p.stdin.write("go\n")
      p.stdin.flush()
      for n, s in json.loads(p.stdout.readline()).items():
        seconds[setting][n].append(s)
    print(f"repeat {r + 1}/{args.repeats}", flush=True)
  for p in procs.values():
    p.stdin.close()
    p.wait()
  rows = []
  for n in names:
    base, ours = seconds["xla-default"][n], seconds["ours"][n]
    rows.append({"case": n, "xla_default_ms": timing.summary([1e3 * s for s in base], 3),
                 "ours_ms": timing.summary([1e3 * s for s in ours], 3),
                 "speedup": timing.ratio(base, ours)})
  print(f"{threads} thread(s), {args.repeats} interleaved repeats; ms per call, median "
        "[min-max]")
  print(f"{'case':<36} {'XLA default':>22} {'ours':>22} {'speedup':>20}")
  for row in rows:
    print(f"{row['case']:<36} {timing.fmt(row['xla_default_ms'], precision=3):>22} "
          f"{timing.fmt(row['ours_ms'], precision=3):>22} "
          f"{timing.fmt(row['speedup']):>20}")
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": threads, "repeats": args.repeats,
                                          "flag": cli.CPU_DOT_FLAG, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
