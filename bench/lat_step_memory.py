"""Memory of one LengthDrop gradient on MiniLM: the summed sandwich loss against pass by pass.

Compiles, without running, the gradient of `train.lat_step.sandwich_loss` (every pass's
activations alive until the one backward) and `train.lat_step.sandwich_grads` (the full
model, then each sub-model in a scan: what the train step runs), for span QA or
classification at `--batch-size` x `--length`, and reads XLA's buffer sizes
(`Compiled.memory_analysis()`: scratch, arguments, outputs). Nothing is allocated, so it
answers "does a step at this size fit?" on any machine::

  python bench/lat_step_memory.py --batch-size 32 --length 384 --head span \\
      --out bench/results/lat_step_memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import timing  # bench/timing.py  # pylint: disable=wrong-import-position
from adapler_jax.cli import run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--length", type=int, default=384)
  parser.add_argument("--head", choices=("span", "classification"), default="span")
  parser.add_argument("--num-sandwich", type=int, default=2)
  parser.add_argument("--out", default=None,
                      help="JSON file for the results (default: none, the table "
                           "only: the files under bench/results are the ones cited)")
  args = parser.parse_args(argv)
  timing.out_path(args.out)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from adapler_jax import environment
  from adapler_jax.models.heads import Span
  from adapler_jax.train import classifier, lat_step
  from adapler_jax.weights import load_backbone
  # pylint: enable=g-import-not-at-top
  enc = load_backbone("minilm").config
  head = Span() if args.head == "span" else 2
  params = jax.eval_shape(lambda: classifier.init_classifier(jax.random.key(0), enc, head))
  b, t = args.batch_size, args.length
  spec = lambda dtype: jax.ShapeDtypeStruct((b, t), dtype)
  batch = {"input_ids": spec(np.int32), "token_type_ids": spec(np.int32),
           "attention_mask": spec(np.bool_)}
  if args.head == "span":
    batch |= {"start_positions": jax.ShapeDtypeStruct((b,), np.int32),
              "end_positions": jax.ShapeDtypeStruct((b,), np.int32)}
  else:
    batch["labels"] = jax.ShapeDtypeStruct((b,), np.int32)
  cfg = lat_step.LATConfig(base=t, num_sandwich=args.num_sandwich)
  key = jax.random.key(0)
  gradients = {
      "summed": jax.value_and_grad(
          lambda p, x: lat_step.sandwich_loss(enc, head, cfg, p, x, key), has_aux=True),
      "pass_by_pass": lambda p, x: lat_step.sandwich_grads(enc, head, cfg, p, x, key),
  }
  rows = {}
  for name, fn in gradients.items():
    stats = jax.jit(fn).lower(params, batch).compile().memory_analysis()
    rows[name] = {k: int(getattr(stats, f"{k}_size_in_bytes"))
                  for k in ("temp", "argument", "output")}
    gib = {k: v / 2**30 for k, v in rows[name].items()}
    print(f"{name:>13}: scratch {gib['temp']:6.2f} GiB, arguments {gib['argument']:.2f} GiB, "
          f"outputs {gib['output']:.2f} GiB", flush=True)
  ratio = rows["summed"]["temp"] / rows["pass_by_pass"]["temp"]
  print(f"scratch, summed over pass by pass: {ratio:.2f}x")
  result = {"backbone": "minilm", "head": args.head, "batch_size": b, "length": t,
            "num_sandwich": args.num_sandwich, "bytes": rows, "scratch_ratio": ratio,
            "environment": environment.describe()}
  if args.out is None:
    return
  from adapler_jax.files import atomic_write_text  # pylint: disable=g-import-not-at-top
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(out, json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  run_cli(main)
