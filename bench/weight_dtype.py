"""Whether bfloat16 weights would make few-token layers cheaper on this CPU.

At batch 1 a layer that keeps a handful of tokens still reads all its weights (docs/engine.md),
so halving the bytes read looks like the way to lower that fixed cost. This times one MiniLM
encoder layer (`packing.run_layer`, the engines' layer) on rows x width tokens computing in
float32 and in bfloat16 (weights, activations and dots), each with both of XLA:CPU's
dot-kernel sets (`kernels`), interleaved (`bench/timing.py`); the ratio is float32 time over
bfloat16 time, so above 1 means bfloat16 is faster::

  python bench/weight_dtype.py --threads 1 --out bench/results/weight_dtype.json
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # bench/timing.py
from adapler_jax.cli import run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position
# pylint: enable=g-import-not-at-top,wrong-import-position

SHAPES = ((1, 4), (1, 8), (1, 16), (1, 32), (32, 64))  # (rows, width) of a layer's grid.
DTYPES = ("float32", "bfloat16")
KERNELS = ("default", "xla")


def cases():
  """{(rows, width): {(dtype, kernels): call}} on the embedded MiniLM's first layer."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from adapler_jax.infer import kernels, packing
  from adapler_jax.models.bert import attention_bias_from_mask, encoder_layer_params
  from adapler_jax.weights import load_backbone
  backbone = load_backbone("minilm")
  enc = backbone.config
  layer = encoder_layer_params(enc, backbone.params)[0]
  # The layer computes in its config's dtype: bfloat16 weights alone would be upcast and
  # multiplied in float32, so each dtype gets its own config.
  jitted = {}
  for dtype in DTYPES:
    fn = functools.partial(packing.run_layer, dataclasses.replace(enc, dtype=dtype),
                           chunk_rows=None)
    jitted[dtype] = {"default": jax.jit(fn),
                     "xla": jax.jit(fn, compiler_options=kernels.xla_dots_options())}
  rng = np.random.default_rng(0)
  out = {}
  for rows, width in SHAPES:
    x = rng.normal(size=(rows, width, enc.hidden_size))
    bias = attention_bias_from_mask(jnp.ones((rows, width), bool))
    out[(rows, width)] = {}
    for dtype in DTYPES:
      params = jax.tree.map(lambda w, d=dtype: jnp.asarray(w, d), layer)
      xd = jnp.asarray(x, dtype)
      for k, f in jitted[dtype].items():
        out[(rows, width)][(dtype, k)] = (
            lambda f=f, params=params, xd=xd, bias=bias: jax.block_until_ready(
                f(params, xd, bias)))
  return out


def main(argv=None) -> None:
  args, threads = timing.parse_args(__doc__, argv, min_seconds=0.5)
  rows = []
  print(f"{'layer grid':<12} {'kernels':<8} {'float32 ms':>22} {'bfloat16 ms':>22} "
        f"{'float32 / bfloat16':>20}")
  for (b, w), calls in cases().items():
    seconds, _ = timing.interleaved({f"{d} {k}": c for (d, k), c in calls.items()},
                                    args.repeats, args.min_seconds)
    for k in KERNELS:
      f32_ms, bf16_ms, ratio = timing.versus(seconds[f"float32 {k}"],
                                             seconds[f"bfloat16 {k}"])
      rows.append({"rows": b, "width": w, "kernels": k, "float32_ms": f32_ms,
                   "bfloat16_ms": bf16_ms, "float32_over_bfloat16": ratio})
      print(timing.pair_line(f"{f'{b} x {w}':<12} {k:<8}", f32_ms, bf16_ms, ratio, 22),
            flush=True)
  print(f"({threads} thread(s), {args.repeats} interleaved repeats; one MiniLM layer, ms per "
        "call, median [min-max]; kernels: XLA:CPU's default dots, or its own)")
  if args.out:
    timing.write_json(args.out, {"threads": threads, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
  run_cli(main)
