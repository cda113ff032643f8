"""XLA:CPU's dot kernels: its default (dots handed to YNNPACK) against its own, which the
engines take for inputs under `kernels.SMALL_GRID_TOKENS` slots (`adapler_jax.infer.kernels`),
on the shapes token dropping produces.

Each case is jitted twice, without and with `kernels.XLA_DOTS` as compiler options, and the
two are timed interleaved (A B, A B, ...; `bench/timing.py`), the ratios taken per repeat.
Cases, on the embedded MiniLM's weights: one feed-forward matmul (rows x 384 @ 384 x 1536) over
six layers' worth of distinct weight matrices (so none stays in cache; time per matrix), one
whole encoder layer at batch x width tokens, and whole forward passes of the engines' programs
(full length; AdapLeR with random predictors scaled x4 and eta 0.9, which keeps about a third
of the tokens) on inputs of 64 positions, 44 of them real::

  python bench/cpu_dots.py --threads 1 --out bench/results/cpu_dots.json
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # bench/timing.py
from adapler_jax.cli import run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position
# pylint: enable=g-import-not-at-top,wrong-import-position

MATMUL_ROWS = (1, 8, 16, 64, 256, 2048)
LAYER_SHAPES = ((1, 8), (1, 16), (1, 32), (1, 64), (4, 64), (8, 64), (32, 64))
PROGRAM_BATCHES = (1, 4, 32)


def cases():
  """{name: (call with XLA's default kernels, call with its own, calls per matrix)}."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from adapler_jax.infer import engine, kernels, packing
  from adapler_jax.models import adapler
  from adapler_jax.models.bert import attention_bias_from_mask, encoder_layer_params
  from adapler_jax.weights import load_backbone
  backbone = load_backbone("minilm")
  enc, layers = backbone.config, encoder_layer_params(backbone.config, backbone.params)
  rng = np.random.default_rng(0)
  both = lambda fn, **kw: (jax.jit(fn, **kw), jax.jit(fn, compiler_options=kernels.xla_dots_options(),
                                                      **kw))
  ready = lambda f, *a, **kw: (lambda: jax.block_until_ready(f(*a, **kw)))
  mats = [jnp.asarray(rng.normal(size=(enc.hidden_size, enc.intermediate_size)), jnp.float32)
          for _ in range(2 * enc.num_layers)]
  matmuls = both(lambda x, ws: [x @ w for w in ws])
  layer = both(lambda p, x, bias: packing.run_layer(enc, p, x, bias, None))
  out = {}
  for m in MATMUL_ROWS:
    x = jnp.asarray(rng.normal(size=(m, enc.hidden_size)), jnp.float32)
    out[f"matmul {m} x {enc.hidden_size} @ {enc.hidden_size} x {enc.intermediate_size}"] = (
        *(ready(f, x, mats) for f in matmuls), len(mats))
  for b, w in LAYER_SHAPES:
    x = jnp.asarray(rng.normal(size=(b, w, enc.hidden_size)), jnp.float32)
    bias = attention_bias_from_mask(jnp.ones((b, w), bool))
    out[f"layer {b} x {w} tokens"] = (*(ready(f, layers[0], x, bias) for f in layer), 1)
  cfg = adapler.AdapLeRConfig(enc, num_labels=2)
  params = adapler.init(jax.random.key(0), cfg, backbone=backbone.params)
  model = {k: jax.tree.map(lambda w: 4 * w, v) if k.startswith("predictors_") else v
           for k, v in params["model"].items()}
  speed = {**params["speed"], "eta": jnp.full((cfg.num_layers,), 0.9)}
  for b in PROGRAM_BATCHES:
    ids = rng.integers(1000, 20000, (b, 64)).astype(np.int32)
    types, lengths = np.zeros_like(ids), np.full((b,), 44, np.int32)
    full = engine.FullLengthEngine(cfg, {"bert": model["bert"], "head": model["head"]},
                                   batch_size=b, max_length=64, folds=())
    adaptive = engine.AdaptiveEngine(cfg, {"model": model, "speed": speed}, batch_size=b,
                                     max_length=64)
    f, a = engine._FULL_FORWARD, engine._FORWARD  # pylint: disable=protected-access
    full_args = (cfg.encoder, 2, full._params, ids, types, lengths)  # pylint: disable=protected-access
    out[f"full forward {b} x 64"] = (*(ready(g, *full_args, chunk_rows=full.ffn_chunk_rows)
                                       for g in (f.default, f.small)), 1)
    adaptive_args = (cfg, adaptive.row_counts(), adaptive.widths, adaptive._params,  # pylint: disable=protected-access
                     ids, types, lengths)
    out[f"AdapLeR forward {b} x 64"] = (
        *(ready(g, *adaptive_args, chunk_rows=adaptive.ffn_chunk_rows)
          for g in (a.default, a.small)), 1)
  return out


def main(argv=None) -> None:
  args, threads = timing.parse_args(__doc__, argv, min_seconds=0.5)
  rows = []
  for name, (default, xla, per) in cases().items():
    seconds, _ = timing.interleaved({"default": default, "xla": xla}, args.repeats,
                                    args.min_seconds)
    base, ours = ([s / per for s in seconds[k]] for k in ("default", "xla"))
    default_ms, xla_ms, speedup = timing.versus(base, ours)
    rows.append({"case": name, "xla_default_ms": default_ms, "xla_dots_ms": xla_ms,
                 "speedup": speedup})
    print(timing.pair_line(f"{name:<36}", default_ms, xla_ms, speedup), flush=True)
  print(f"({threads} thread(s), {args.repeats} interleaved repeats; ms per call, median "
        "[min-max]: XLA default, XLA dots, speedup)")
  if args.out:
    timing.write_json(args.out, {"threads": threads, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
  run_cli(main)
