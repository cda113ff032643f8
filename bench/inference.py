"""Wall-clock inference benchmark: full-length vs AdapLeR and LAT (ours) vs Hugging Face PyTorch.

Every system runs the same examples through the same length-bucketed batches
(`data.eval_batches`) on this machine, in one process, after a warm-up. Per (system,
task, batch size) it reports examples/s, p50/p95 latency at batch size 1, the FLOPs
speedup (`infer.flops.flops_report`, exact kept counts), the wall-clock speedup over
`ours-full`, their ratio, and the number of compiled shapes.

Trained runs (`adapler_jax.pipeline.load_run`); a run may be measured on another task
with the same labels, here the SST-2 model on 1,000 IMDB test reviews at max length 512::

  python bench/inference.py --workdir runs/sst2 --task sst2 --workdir runs/ag_news \
      --task ag_news --workdir runs/sst2 --task imdb --batch-sizes 1,8,32,128 \
      --threads 1 --out bench/results/inference.json

A LAT run (configs/*_lat.py) at fixed length configs, each `base:ratio` (constant ratio per
layer, on the padded length or on each example's own length) or `base:l1-l2-...`; its
FLOPs speedup is in the convention the engine runs (each example's real tokens)::

  python bench/inference.py --workdir runs/sst2_lat --task sst2 --batch-sizes 32 \
      --systems ours-full,ours-lat --lat-configs padded:0.2,actual:0.2 \
      --out bench/results/inference_lat_sst2.json

The machinery alone, on the embedded all-MiniLM-L6-v2 with random contribution
predictors whose weights are scaled up (so tokens get dropped) and a fixed eta::

  python bench/inference.py --random-cp --task sst2 --batch-sizes 1,32 \
      --max-examples 200 --out bench/results/random_cp_sst2.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from adapler_jax.cli import run_cli
from adapler_jax.data import (DEFAULT_BUCKETS, eval_batches, get_task, load_split, subset,
                              tokenize, transfer_task)
from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.infer import (AdaptiveEngine, FlopsDims, FullLengthEngine, LengthEngine, flops,
                               flops_report)
from adapler_jax.models import adapler
from adapler_jax.pipeline import lat_phases, load_run, prepare, read_config
from adapler_jax.reduce import lengths as lengths_lib
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.weights import load_backbone, to_hf_state_dict
# pylint: enable=g-import-not-at-top,wrong-import-position

SYSTEMS = ("ours-full", "ours-adapler", "ours-lat", "hf-pytorch")
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
IMDB_EXAMPLES = 1000
SEED = 0


@dataclasses.dataclass
class Setup:
  """What one task's benchmark needs: model shape, both param sets, the examples."""

  task: str
  cfg: adapler.AdapLeRConfig
  adapler_params: dict
  backbone_params: dict  # {"bert", "head"}
  data: TokenizedDataset
  source: str
  lat_params: dict | None = None  # a LAT run's LengthDrop model (or the backbone).
  lat_flags: SelectionFlags = SelectionFlags()


# ----------------------------------------------------------------------------- data


def take_rows(tok: TokenizedDataset, idx: np.ndarray) -> TokenizedDataset:
  """Rows `idx` of a tokenized dataset."""
  return dataclasses.replace(
      tok, input_ids=tok.input_ids[idx], token_type_ids=tok.token_type_ids[idx],
      lengths=tok.lengths[idx], labels=tok.labels[idx], ids=[tok.ids[i] for i in idx],
      rationale_mask=None if tok.rationale_mask is None else tok.rationale_mask[idx],
      word_ids=None if tok.word_ids is None else tok.word_ids[idx])


def limit(tok: TokenizedDataset, n: int | None, seed: int = SEED) -> TokenizedDataset:
  """A seeded subset of `n` rows (in dataset order), or all rows."""
  if n is None or n >= len(tok):
    return tok
  idx = np.sort(np.random.default_rng(seed).choice(len(tok), n, replace=False))
  return take_rows(tok, idx)


def eval_split(task: str, override: str | None = None) -> str:
  """`override`, else the task's `dev` split, else its first evaluation split."""
  splits = get_task(task).eval_splits
  return override or ("dev" if "dev" in splits else splits[0])


def task_examples(task: str, split: str, tokenizer, args) -> TokenizedDataset:
  """A seeded subset of `task`'s `split` read from `--data-dir`, tokenized at the task's
  max length (subsampled before tokenizing: IMDB has 25,000 long reviews)."""
  texts = load_split(task, split, data_dir=Path(args.data_dir) / task)
  n = IMDB_EXAMPLES if task == "imdb" else None
  n = min(n or len(texts), args.max_examples or len(texts))
  return tokenize(subset(texts, n, args.seed), tokenizer, get_task(task).max_length)


def random_cp_setup(task: str, args) -> Setup:
  """Embedded MiniLM, fresh head, predictors scaled by `--cp-scale`, eta = `--eta`."""
  spec = get_task(task)
  backbone = load_backbone("minilm")
  cfg = adapler.AdapLeRConfig(backbone.config, num_labels=spec.num_labels)
  params = adapler.init(jax.random.key(args.seed), cfg, backbone=backbone.params)
  model = dict(params["model"])
  for l in range(cfg.num_layers):
    model[f"predictors_{l}"] = jax.tree.map(lambda w: w * args.cp_scale, model[f"predictors_{l}"])
  eta = jnp.full((cfg.num_layers,), args.eta, jnp.float32)
  params = {"model": model, "speed": {**params["speed"], "eta": eta}}
  split = eval_split(task, args.split)
  data = task_examples(task, split, backbone.tokenizer, args)
  source = (f"random-cp: minilm, predictors x{args.cp_scale}, eta {args.eta}, "
            f"{task} {split} ({len(data)} rows, seed {args.seed})")
  backbone_params = {"bert": model["bert"], "head": model["head"]}
  return Setup(task, cfg, params, backbone_params, data, source, lat_params=backbone_params)


def lat_setup(task: str, workdir: str, args) -> Setup:
  """A LAT run: its LengthDrop model serves both the full-length and the LAT engines."""
  run = prepare(read_config(workdir), workdir, record=False)
  if task != run.task.name:
    raise SystemExit(f"{workdir} is a {run.task.name} LAT run; pass --task {run.task.name}")
  step, params = lat_phases.load_lengthdrop(run)
  data = limit(run.dataset(eval_split(task, args.split)), args.max_examples, args.seed)
  cfg = adapler.AdapLeRConfig(run.encoder, run.num_labels)
  return Setup(task, cfg, None, params, data, f"{workdir} (LengthDrop step {step}, "
               f"{len(data)} rows)", lat_params=params, lat_flags=lat_phases.selection_flags(run))


def lat_config(spec: str, base: int, num_layers: int) -> tuple[str, tuple[int, ...]]:
  """'padded:0.2' / 'actual:0.2' (constant ratio) or 'padded:52-42-...' -> (base, config)."""
  length_base, _, value = spec.partition(":")
  if "-" in value:
    return length_base, tuple(int(v) for v in value.split("-"))
  return length_base, lengths_lib.constant_ratio_config(base, num_layers, float(value), 2)


def trained_setup(task: str, workdir: str, args) -> Setup:
  """A trained run: fine-tuned backbone and AdapLeR model from `load_run(workdir)`."""
  if read_config(workdir).get("method", "adapler") == "lat":
    return lat_setup(task, workdir, args)
  run = load_run(workdir)
  split = eval_split(task, args.split)
  if task == run.task.name:
    data = run.eval_dataset(split)
    if not isinstance(data, TokenizedDataset):  # texts: tokenize as the run was trained.
      data = tokenize(data, run.tokenizer, run.config.data.max_length)
    n = IMDB_EXAMPLES if task == "imdb" else None
    data = limit(limit(data, n, args.seed), args.max_examples, args.seed)
    source = f"{workdir} ({split}, {len(data)} rows)"
  else:  # e.g. a sentiment model trained on SST-2, measured on long IMDB reviews.
    transfer_task(task, run.task, workdir)
    data = task_examples(task, split, run.tokenizer, args)
    source = (f"{workdir} (trained on {run.task.name}) on {task} {split} "
              f"({len(data)} rows, seed {args.seed}, max length {data.max_length})")
  return Setup(task, run.adapler_cfg, run.adapler_params, run.backbone_params, data, source)


# ----------------------------------------------------------------------------- systems


@dataclasses.dataclass
class Timing:
  seconds: float
  batch_seconds: np.ndarray
  logits: np.ndarray
  kept_counts: np.ndarray | None = None
  compiled_shapes: int | None = None
  slots: np.ndarray | None = None
  shape_bound: int | None = None


def run_ours(engine, data: TokenizedDataset, repeats: int) -> Timing:
  """Warm-up (compiles every shape), then the best of `repeats` timed runs."""
  engine.warmup()
  best = min((engine.run(data) for _ in range(repeats)), key=lambda r: r.seconds)
  rows = len(engine.row_counts()) if hasattr(engine, "row_counts") else 1
  return Timing(best.seconds, best.batch_seconds, best.logits, best.kept_counts,
                engine.compiled_shapes, best.slots, rows * len(engine.widths))


def hf_model(setup: Setup):
  """`BertForSequenceClassification` with the backbone's weights (eval mode)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  enc = setup.cfg.encoder
  config = transformers.BertConfig(
      vocab_size=enc.vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
      num_attention_heads=enc.num_heads, intermediate_size=enc.intermediate_size,
      type_vocab_size=enc.type_vocab_size, max_position_embeddings=enc.max_position_embeddings,
      layer_norm_eps=enc.layer_norm_eps, hidden_act="gelu", pad_token_id=enc.pad_token_id,
      num_labels=setup.cfg.num_labels)
  model = transformers.BertForSequenceClassification(config).eval()
  state = to_hf_state_dict(setup.backbone_params["bert"], setup.backbone_params["head"])
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return model


def run_hf(model, data: TokenizedDataset, batch_size: int, buckets, repeats: int) -> Timing:
  """The same length-bucketed batches through PyTorch, under `torch.inference_mode`."""
  import torch  # pylint: disable=g-import-not-at-top

  def once(limit_batches=None):
    logits = np.zeros((len(data), model.config.num_labels), np.float32)
    times = []
    start = time.perf_counter()
    for i, batch in enumerate(eval_batches(data, batch_size, buckets)):
      if limit_batches is not None and i >= limit_batches:
        break
      t0 = time.perf_counter()
      with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                    token_type_ids=torch.from_numpy(batch["token_type_ids"]).long(),
                    attention_mask=torch.from_numpy(batch["attention_mask"]).long()).logits
      real = batch["real"]
      logits[batch["index"][real]] = out.numpy()[real]
      times.append(time.perf_counter() - t0)
    return Timing(time.perf_counter() - start, np.asarray(times), logits)

  once(limit_batches=3)  # warm-up: allocator and kernels.
  return min((once() for _ in range(repeats)), key=lambda t: t.seconds)


# ----------------------------------------------------------------------------- report


def row(system: str, setup: Setup, batch_size: int, timing: Timing, full: Timing,
        flops_speedup: float, meta: dict[str, Any]) -> dict[str, Any]:
  data = setup.data
  wall = full.seconds / timing.seconds
  out = {
      "system": system, "task": setup.task, "batch_size": batch_size,
      "examples": len(data), "seconds": round(timing.seconds, 4),
      "examples_per_second": round(len(data) / timing.seconds, 2),
      "flops_speedup": round(flops_speedup, 3), "wall_speedup": round(wall, 3),
      "wall_over_flops": round(wall / flops_speedup, 3),
      "compiled_shapes": timing.compiled_shapes,
      "shape_bound": timing.shape_bound,  # row counts x bucket widths the engine may use.
      "accuracy": round(float(np.mean(np.argmax(timing.logits, -1) == data.labels)), 4),
      "agreement_with_full": round(float(np.mean(
          np.argmax(timing.logits, -1) == np.argmax(full.logits, -1))), 4),
      "max_length": data.max_length, "mean_length": round(float(data.lengths.mean()), 1),
      "source": setup.source, **meta,
  }
  if timing.kept_counts is not None:
    out["kept_tokens_per_layer"] = np.round(timing.kept_counts.mean(0), 2).tolist()
  if timing.slots is not None:  # token slots computed per example, padding included.
    out["slots_per_layer"] = np.round(timing.slots / len(data), 2).tolist()
  if batch_size == 1:
    ms = 1e3 * timing.batch_seconds
    out["latency_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
    out["latency_p95_ms"] = round(float(np.percentile(ms, 95)), 3)
  if system == "hf-pytorch":
    out["max_abs_logit_diff_vs_ours_full"] = float(np.abs(timing.logits - full.logits).max())
  return out


def print_table(rows: list[dict[str, Any]]) -> None:
  cols = [("system", 22), ("task", 8), ("batch_size", 5), ("examples_per_second", 9),
          ("latency_p50_ms", 8), ("latency_p95_ms", 8), ("flops_speedup", 7),
          ("wall_speedup", 7), ("wall_over_flops", 7), ("compiled_shapes", 6)]
  names = {"batch_size": "batch", "examples_per_second": "ex/s", "latency_p50_ms": "p50 ms",
           "latency_p95_ms": "p95 ms", "flops_speedup": "FLOPs x", "wall_speedup": "wall x",
           "wall_over_flops": "wall/FL", "compiled_shapes": "shapes"}
  print("  ".join(f"{names.get(c, c):>{w}}" for c, w in cols))
  for r in rows:
    cells = []
    for c, w in cols:
      v = r.get(c)
      cells.append(f"{'-' if v is None else v:>{w}}")
    print("  ".join(cells))


def benchmark(setup: Setup, batch_sizes: list[int], systems: list[str], args,
              meta: dict[str, Any]) -> list[dict[str, Any]]:
  cfg, data, rows = setup.cfg, setup.data, []
  kwargs = dict(buckets=args.buckets, max_length=data.max_length)
  hf = hf_model(setup) if "hf-pytorch" in systems else None
  dims = FlopsDims.of_model(cfg)
  for batch_size in batch_sizes:
    full = run_ours(FullLengthEngine(cfg, setup.backbone_params, batch_size=batch_size,
                                     folds=args.full_folds, **kwargs), data, args.repeats)
    timings = {"ours-full": (full, 1.0)}
    if "ours-adapler" in systems and setup.adapler_params is not None:
      engine = AdaptiveEngine(cfg, setup.adapler_params, batch_size=batch_size,
                              folds=args.folds, **kwargs)
      ours = run_ours(engine, data, args.repeats)
      speedup = flops_report(data.lengths, ours.kept_counts, dims)["flops_speedup"]
      timings["ours-adapler"] = (ours, speedup)
    if "ours-lat" in systems and setup.lat_params is not None:
      for spec in args.lat_configs:
        length_base, config = lat_config(spec, data.max_length, cfg.num_layers)
        lat_flags = dataclasses.replace(setup.lat_flags, length_base=length_base)
        engine = LengthEngine(cfg, setup.lat_params, config, base=data.max_length,
                              flags=lat_flags, batch_size=batch_size, **kwargs)
        ours = run_ours(engine, data, args.repeats)
        cost = flops.selection_cost(data.lengths, ours.kept_counts, config, data.max_length,
                                    dims)
        timings[f"ours-lat {spec}"] = (ours, 1.0 / cost["actual_fraction"], {
            "length_config": list(config), "length_base": length_base,
            "flops_speedup_padded": round(1.0 / cost["padded_fraction"], 3)})
    if hf is not None:
      timings["hf-pytorch"] = (run_hf(hf, data, batch_size, args.buckets, args.repeats), 1.0)
    for system, (timing, speedup, *extra) in timings.items():
      if system not in systems and not system.startswith("ours-lat"):
        continue
      rows.append(row(system, setup, batch_size, timing, full, speedup,
                      {**meta, **(extra[0] if extra else {})}))
      if args.verbose:
        print_table(rows[-1:])
  return rows


def pin_threads(threads: int | None) -> int:
  """Restricts this process to `threads` CPUs (XLA sizes its pool from the affinity
  mask when its backend starts) and gives PyTorch as many threads. Returns the count."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads:
    if jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
      raise RuntimeError("pin threads before JAX starts its backend")
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  return len(cpus)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task", action="append", required=True,
                      help="task name; repeat for several (paired with --workdir in order)")
  parser.add_argument("--workdir", action="append", default=[],
                      help="trained run directory (adapler_jax.pipeline.load_run), per --task")
  parser.add_argument("--random-cp", action="store_true",
                      help="embedded MiniLM with random, scaled predictors (no trained run)")
  parser.add_argument("--cp-scale", type=float, default=1.5,
                      help="--random-cp: multiplier of the predictors' weights")
  parser.add_argument("--eta", type=float, default=0.7, help="--random-cp: eta of every layer")
  parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                      help="folder with one sub-folder per task (--random-cp, or a --task "
                           "other than the one its --workdir was trained on)")
  parser.add_argument("--split", default=None,
                      help="evaluation split (default: dev where the task has one, else test)")
  parser.add_argument("--batch-sizes", default="1,8,32,128")
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)))
  parser.add_argument("--folds", default="2,4",
                      help="AdapLeR engine: survivors may be packed into batch/f rows, for "
                           "each f here, when that is cheaper ('': one example per row)")
  parser.add_argument("--full-folds", default="",
                      help="ours-full: pack examples into batch/f rows when cheaper (as "
                           "--folds; default '': one example per row, like HF's batches)")
  parser.add_argument("--lat-configs", default="padded:0.2,actual:0.2",
                      help="ours-lat: length configs, each base:ratio or base:l1-l2-...")
  parser.add_argument("--max-examples", type=int, default=None,
                      help="seeded subset per task, for a quick run")
  parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best is kept")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin the process to this many CPUs, for JAX and PyTorch alike "
                           "(default: all the CPUs it may use)")
  parser.add_argument("--seed", type=int, default=SEED)
  parser.add_argument("--out", default=str(REPO / "bench" / "results" / "inference.json"))
  parser.add_argument("--verbose", action="store_true", help="print each row as it is measured")
  args = parser.parse_args(argv)
  args.buckets = tuple(int(b) for b in args.buckets.split(","))
  args.folds = tuple(int(f) for f in args.folds.split(",") if f)
  args.full_folds = tuple(int(f) for f in args.full_folds.split(",") if f)
  args.lat_configs = [c for c in args.lat_configs.split(",") if c]
  if not args.random_cp and len(args.workdir) != len(args.task):
    parser.error("give one --workdir per --task, or --random-cp")
  systems = [s for s in args.systems.split(",") if s]
  unknown = set(systems) - set(SYSTEMS)
  if unknown:
    parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
  args.systems = [s for s in SYSTEMS if s in systems]
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  threads = pin_threads(args.threads)
  systems = list(args.systems)
  if "hf-pytorch" in systems:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(threads)
    except ImportError:
      print("torch is not installed: skipping hf-pytorch", file=sys.stderr)
      systems.remove("hf-pytorch")
  meta = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
          "cpu_threads": threads, "machine": platform.machine(),
          "mode": "random-cp" if args.random_cp else "trained",
          "folds": list(args.folds), "full_folds": list(args.full_folds),
          "buckets": list(args.buckets)}
  rows = []
  for i, task in enumerate(args.task):
    setup = (random_cp_setup(task, args) if args.random_cp
             else trained_setup(task, args.workdir[i], args))
    print(f"# {task}: {setup.source}", flush=True)
    rows += benchmark(setup, [int(b) for b in args.batch_sizes.split(",")], systems, args, meta)
  print_table(rows)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rows, indent=1) + "\n")
  print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
  run_cli(main)
