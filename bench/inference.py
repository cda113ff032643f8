"""Wall-clock inference benchmark: full-length vs AdapLeR and LAT (ours) vs Hugging Face PyTorch.

Every system runs the same examples through the same length-bucketed batches
(`data.eval_batches`) on this machine, in one process, after a warm-up. The systems are
timed in `--repeats` interleaved rounds (A B C, A B C, ...), each measurement repeating whole
passes for at least `--min-seconds` (`bench/timing.py`, docs/benchmarks_method.md). Per
(system, task, batch size) it reports, as the median with its min-max spread over the rounds:
examples/s, p50/p95 latency at batch size 1, the wall-clock speedup over `ours-full`, its
ratio to the FLOPs speedup (`infer.flops.flops_report`, exact kept counts) and the speed over
`hf-pytorch`, ratios taken per round; and the number of compiled shapes.

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

Points of a run's search frontier (train.py --phase search), picked per FLOPs budget as
`evaluate.py --flops-budget` picks them: eta multipliers for AdapLeR, length configs for LAT::

  python bench/inference.py --workdir runs/sst2 --task sst2 --workdir runs/sst2_lat \
      --task sst2 --frontier-budgets 0.3,0.67 --batch-sizes 1,32 --threads 1 \
      --out bench/results/frontier_sst2.json

The machinery alone (random-CP mode), on the embedded all-MiniLM-L6-v2 with random
contribution predictors whose weights are scaled up (so tokens get dropped) and a fixed
eta; here the generated demo task and 1,000 QNLI dev pairs (`--workdir random-cp` puts one
task in this mode next to trained runs)::

  python bench/inference.py --random-cp --task demo --task qnli --batch-sizes 1,32 \
      --threads 1 --out bench/results/random_cp_demo_qnli.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
from adapler_jax import environment
from adapler_jax.cli import run_cli
from adapler_jax.files import atomic_write_text
from adapler_jax.data import (DEFAULT_BUCKETS, eval_batches, get_task, load_split, subset,
                              tokenize, transfer_task)
from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.errors import UserError
from adapler_jax.infer import (AdaptiveEngine, FlopsDims, FullLengthEngine, LengthEngine, flops,
                               flops_report, map_limit)
from adapler_jax.models import adapler
from adapler_jax.eval import tradeoff
from adapler_jax.pipeline import frontier, lat_phases, load_run, prepare, read_config
from adapler_jax.reduce import lengths as lengths_lib
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.weights import load_backbone, to_hf_state_dict
import timing  # bench/timing.py
# pylint: enable=g-import-not-at-top,wrong-import-position

SYSTEMS = ("ours-full", "ours-adapler", "ours-lat", "hf-pytorch")
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
SUBSETS = {"imdb": 1000, "qnli": 1000}  # seeded subsets of the long or large eval splits.
RANDOM_CP = "random-cp"  # a --workdir value: this task in random-CP mode.
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
  lat_base: str = "padded"  # a LAT run's `lat.length_base`, for its frontier points.
  lat_min_length: int = 2  # a LAT run's `lat.min_length`, for ratio specs.
  eta_points: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (L,)
  lat_points: list[str] = dataclasses.field(default_factory=list)  # 'padded:52-42-...'


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


def capped(data: TokenizedDataset, task: str, args) -> TokenizedDataset:
  """A run's evaluation rows cut as every setup cuts them: the task's `SUBSETS` cap, then
  `--max-examples`, each a seeded subset."""
  return limit(limit(data, SUBSETS.get(task), args.seed), args.max_examples, args.seed)


def eval_split(task: str, override: str | None = None) -> str:
  """`override`, else the task's `dev` split, else its first evaluation split."""
  splits = get_task(task).eval_splits
  return override or ("dev" if "dev" in splits else splits[0])


def task_examples(task: str, split: str, tokenizer, args) -> TokenizedDataset:
  """A seeded subset of `task`'s `split` read from `--data-dir`, tokenized at the task's
  max length (subsampled before tokenizing: IMDB has 25,000 long reviews)."""
  # demo: generated from the embedded backbone's vocabulary, no data folder.
  data_dir = None if task == "demo" else Path(args.data_dir) / task
  texts = load_split(task, split, data_dir=data_dir)
  n = SUBSETS.get(task)
  n = min(n or len(texts), args.max_examples or len(texts))
  return tokenize(subset(texts, n, args.seed), tokenizer, get_task(task).max_length)


def random_cp_setup(task: str, args) -> Setup:
  """Embedded MiniLM, fresh head, predictors scaled by `--cp-scale`, eta = `--eta`."""
  if args.eta_scales:
    print(f"# {task}: random-CP mode sets eta with --eta; --eta-scales applies to trained runs "
          "only", flush=True)
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
    raise UserError(f"{workdir} is a {run.task.name} LAT run; pass --task {run.task.name}")
  step, params = lat_phases.load_lengthdrop(run)
  split = args.split or run.config.eval.split  # the run's own split names.
  data = capped(run.dataset(split), task, args)
  cfg = adapler.AdapLeRConfig(run.encoder, run.num_labels)
  return Setup(task, cfg, None, params, data, f"{workdir} (LengthDrop step {step}, "
               f"{len(data)} rows)", lat_params=params, lat_flags=lat_phases.selection_flags(run),
               lat_base=run.config.lat.length_base, lat_min_length=run.config.lat.min_length)


def lat_config(spec: str, base: int, num_layers: int,
               min_length: int = 2) -> tuple[str, tuple[int, ...]]:
  """'padded:0.2' / 'actual:0.2' (constant ratio, no layer below `min_length`) or
  'padded:52-42-...' -> (base, config)."""
  length_base, _, value = spec.partition(":")
  if "-" in value:
    return length_base, tuple(int(v) for v in value.split("-"))
  return length_base, lengths_lib.constant_ratio_config(base, num_layers, float(value),
                                                         min_length)


def frontier_points(workdir: str, budgets: list[float]) -> list[dict[str, Any]]:
  """The run's search-frontier points `frontier.pick` chooses for each FLOPs budget (in
  the search's cost convention), each once, tagged with the budget that chose it."""
  if not budgets:
    return []
  search, points = frontier.load(workdir), {}
  for budget in budgets:
    try:
      point = frontier.pick(search, flops_budget=budget)
    except UserError as e:
      print(f"# {workdir}: {e}; skipping budget {budget:g}", flush=True)
      continue
    points.setdefault(tuple(point["config"]), {**point, "budget": budget,
                                               "cost": search["cost"]})
  return list(points.values())


def with_frontier(setup: Setup, workdir: str, args) -> Setup:
  """`setup` plus the frontier points of `--frontier-budgets`: eta multipliers for an
  AdapLeR run, length configs for a LAT run."""
  for point in frontier_points(workdir, args.frontier_budgets):
    if "eta_multipliers" in point:
      name = f"ours-adapler eta@{point['budget']:g}{point['cost'][0]}"
      setup.eta_points[name] = np.asarray(point["eta_multipliers"], np.float32)
    else:
      # On the run's length base: the one its search scored the config on.
      setup.lat_points.append(f"{setup.lat_base}:" + "-".join(str(v) for v in point["config"]))
  return setup


def trained_setup(task: str, workdir: str, args) -> Setup:
  """A trained run: fine-tuned backbone and AdapLeR model from `load_run(workdir)`, with
  the frontier points of `--frontier-budgets` and the global eta scalings of
  `--eta-scales`."""
  setup = with_frontier(run_setup(task, workdir, args), workdir, args)
  if setup.adapler_params is not None:
    for scale in args.eta_scales:
      setup.eta_points[f"ours-adapler eta x{scale:g}"] = np.full(setup.cfg.num_layers, scale,
                                                                np.float32)
  return setup


def run_setup(task: str, workdir: str, args) -> Setup:
  if read_config(workdir).get("method", "adapler") == "lat":
    return lat_setup(task, workdir, args)
  run = load_run(workdir)
  if task == run.task.name:
    split = args.split or run.config.eval.split  # the run's own split names.
    data = run.eval_dataset(split)
    if not isinstance(data, TokenizedDataset):  # texts: tokenize as the run was trained.
      data = tokenize(data, run.tokenizer, run.config.data.max_length)
    data = capped(data, task, args)
    source = f"{workdir} ({split}, {len(data)} rows)"
  else:  # e.g. a sentiment model trained on SST-2, measured on long IMDB reviews.
    split = eval_split(task, args.split)  # the task's split names.
    transfer_task(task, run.task, workdir)
    data = task_examples(task, split, run.tokenizer, args)
    source = (f"{workdir} (trained on {run.task.name}) on {task} {split} "
              f"({len(data)} rows, seed {args.seed}, max length {data.max_length})")
  return Setup(task, run.adapler_cfg, run.adapler_params, run.backbone_params, data, source)


# ----------------------------------------------------------------------------- systems


@dataclasses.dataclass
class Timing:
  """One pass of a system over the data."""

  seconds: float
  batch_seconds: np.ndarray
  logits: np.ndarray
  kept_counts: np.ndarray | None = None
  slots: np.ndarray | None = None


def ours_pass(engine, data: TokenizedDataset):
  """Compiles every shape of `engine` (its warm-up), then returns one timed pass."""
  engine.warmup()

  def call() -> Timing:
    r = engine.run(data)
    return Timing(r.seconds, r.batch_seconds, r.logits, r.kept_counts, r.slots)
  return call


def shapes(engine) -> dict[str, int]:
  """Compiled (rows, width) shapes, and the most the engine may compile: on CPU an AdapLeR
  or LAT bucket compiles with either dot-kernel set (`infer.kernels`); the full model
  compiles each grid width it may run on (its inputs narrowed to them)."""
  rows = len(engine.row_counts()) if hasattr(engine, "row_counts") else 1
  kernel_sets = getattr(engine, "kernel_sets", 1)
  widths = engine.grid_widths if isinstance(engine, FullLengthEngine) else engine.widths
  out = {"compiled_shapes": engine.compiled_shapes,
         "shape_bound": rows * len(widths) * kernel_sets}
  if isinstance(engine, (AdaptiveEngine, FullLengthEngine)):  # the widths its grids may take.
    out["grid_widths"] = list(engine.grid_widths)
  return out


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


def hf_pass(model, data: TokenizedDataset, batch_size: int, buckets):
  """The same length-bucketed batches through PyTorch, under `torch.inference_mode`;
  warms up on three batches, then returns one timed pass."""
  import torch  # pylint: disable=g-import-not-at-top

  def once(limit_batches=None) -> Timing:
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
  return once


def measure_systems(calls: dict, args, flops_speedups: dict[str, float], label: str = ""):
  """`timing.interleaved` over the systems; while a ratio's spread exceeds +-10 %, measures
  again with twice the seconds per measurement (`--retries` times at most). `label` names
  the bar over the repeats (none with --verbose, which prints each repeat).

  Returns:
    (seconds per pass of each system in each repeat, passes per repeat, min seconds used).
  """
  min_seconds = args.min_seconds
  for attempt in range(args.retries + 1):
    seconds, passes = timing.interleaved(
        calls, args.repeats, min_seconds, warmup=False,
        log=(lambda m: print(f"  {m}", flush=True)) if args.verbose else None,
        progress=None if args.verbose else label)
    unstable = [k for k, r in ratios(seconds, flops_speedups).items()
                for name, v in r.items() if isinstance(v, dict) and not v["stable"]]
    if not unstable or attempt == args.retries:
      return seconds, passes, min_seconds
    min_seconds *= 2
    print(f"  spread over +-10 % ({', '.join(sorted(set(unstable)))}): measuring again "
          f"with {min_seconds:g} s per measurement", flush=True)
  raise AssertionError("unreachable")


def ratios(seconds: dict[str, list[float]], flops_speedups: dict[str, float]
           ) -> dict[str, dict[str, Any]]:
  """Per system, the per-repeat ratios summarised: `wall_speedup` (ours-full's time over
  its time), `wall_over_flops` and `speed_over_hf` (HF's time over its time)."""
  full, hf = seconds["ours-full"], seconds.get("hf-pytorch")
  out = {}
  for system, sec in seconds.items():
    r = {}
    if system != "ours-full":
      r["wall_speedup"] = timing.ratio(full, sec)
      fs = flops_speedups.get(system)
      if fs:
        r["wall_over_flops"] = timing.ratio(np.asarray(full) / fs, sec)
    if hf is not None and system != "hf-pytorch":
      r["speed_over_hf"] = timing.ratio(hf, sec)
    out[system] = r
  return out


# ----------------------------------------------------------------------------- report


def row(system: str, setup: Setup, batch_size: int, seconds: list[float],
        passes: list[list[Timing]], full: Timing, flops_speedup: float, ratio: dict,
        meta: dict[str, Any]) -> dict[str, Any]:
  """A system's row: medians as plain numbers (as before), and under `spread` every figure
  and ratio as {median, min, max} over the repeats."""
  data, last = setup.data, passes[-1][-1]
  # From the median and extreme seconds, so that it is examples / seconds for any repeat
  # count (with an even one, the median of per-repeat rates is not).
  s = np.asarray(seconds, np.float64)
  ex_s = {k: round(float(len(data) / v), 2)
          for k, v in (("median", np.median(s)), ("min", s.max()), ("max", s.min()))}
  spread = {"seconds": timing.summary(seconds), "examples_per_second": ex_s, **ratio}
  med = lambda k, default=1.0: ratio[k]["median"] if k in ratio else default
  out = {
      "system": system, "task": setup.task, "batch_size": batch_size,
      "examples": len(data), "seconds": round(float(np.median(seconds)), 4),
      "examples_per_second": ex_s["median"],
      "flops_speedup": round(flops_speedup, 3), "wall_speedup": med("wall_speedup"),
      "wall_over_flops": med("wall_over_flops", round(med("wall_speedup") / flops_speedup, 3)),
      "speed_over_hf": med("speed_over_hf", None),
      "accuracy": round(float(np.mean(np.argmax(last.logits, -1) == data.labels)), 4),
      "agreement_with_full": round(float(np.mean(
          np.argmax(last.logits, -1) == np.argmax(full.logits, -1))), 4),
      "max_length": data.max_length, "mean_length": round(float(data.lengths.mean()), 1),
      "passes_per_repeat": [len(p) for p in passes], "source": setup.source, **meta,
  }
  if last.kept_counts is not None:
    out["kept_tokens_per_layer"] = np.round(last.kept_counts.mean(0), 2).tolist()
    # The share of the full model's (token, layer) pairs this system ran.
    out["kept_token_fraction"] = round(float(
        last.kept_counts.sum() / (data.lengths.sum() * last.kept_counts.shape[1])), 4)
  if last.slots is not None:  # token slots computed per example, padding included.
    out["slots_per_layer"] = np.round(last.slots / len(data), 2).tolist()
  if batch_size == 1:
    ms = [1e3 * np.concatenate([t.batch_seconds for t in p]) for p in passes]
    for q in (50, 95):
      spread[f"latency_p{q}_ms"] = timing.summary([np.percentile(m, q) for m in ms], 3)
      out[f"latency_p{q}_ms"] = spread[f"latency_p{q}_ms"]["median"]
  if system == "hf-pytorch":
    out["max_abs_logit_diff_vs_ours_full"] = float(np.abs(last.logits - full.logits).max())
  out["spread"] = spread
  return out


def print_table(rows: list[dict[str, Any]]) -> None:
  """Medians, with [min-max] over the repeats for throughput and the ratios."""
  def cell(r, key, digits):
    s = r["spread"].get(key)
    if s is None:
      return "-"
    text = f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"
    return text + ("" if s.get("stable", True) else " !")
  cols = [("system", 22), ("task", 8), ("batch", 5), ("ex/s", 24), ("p50 ms", 8),
          ("FLOPs x", 7), ("wall x", 20), ("wall/FL", 20), ("/ HF", 20), ("shapes", 6)]
  print("  ".join(f"{name:>{w}}" for name, w in cols))
  for r in rows:
    cells = [r["system"], r["task"], r["batch_size"], cell(r, "examples_per_second", 1),
             r.get("latency_p50_ms") or "-", r["flops_speedup"], cell(r, "wall_speedup", 3),
             cell(r, "wall_over_flops", 3), cell(r, "speed_over_hf", 3),
             "-" if r.get("compiled_shapes") is None else r["compiled_shapes"]]
    print("  ".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, cols)))
  print("[min-max] over the interleaved repeats; ! marks a ratio whose spread exceeds +-10 %")


def full_engine(setup: Setup, batch_size: int, args) -> FullLengthEngine:
  """The benchmark's `ours-full` (`--full-folds`, `--buckets`)."""
  return FullLengthEngine(setup.cfg, setup.backbone_params, batch_size=batch_size,
                          folds=args.full_folds, buckets=args.buckets,
                          max_length=setup.data.max_length)


def adapler_engine(setup: Setup, batch_size: int, args, eta_scale: np.ndarray | None = None,
                   grid_widths: tuple[int, ...] | None = None,
                   scan_layers: bool = False) -> AdaptiveEngine:
  """The benchmark's `ours-adapler` (`--folds`, `--buckets`), its eta scaled per layer by
  `eta_scale` when given; `grid_widths` and `scan_layers` as the engine takes them."""
  params = (setup.adapler_params if eta_scale is None
            else tradeoff.with_eta_scaled(setup.adapler_params, eta_scale))
  return AdaptiveEngine(setup.cfg, params, batch_size=batch_size, folds=args.folds,
                        buckets=args.buckets, max_length=setup.data.max_length,
                        grid_widths=grid_widths, scan_layers=scan_layers)


def benchmark(setup: Setup, batch_sizes: list[int], systems: list[str], args,
              meta: dict[str, Any]) -> list[dict[str, Any]]:
  cfg, data, rows = setup.cfg, setup.data, []
  kwargs = dict(buckets=args.buckets, max_length=data.max_length)
  hf = hf_model(setup) if "hf-pytorch" in systems else None
  dims = FlopsDims.of_model(cfg)
  for batch_size in batch_sizes:
    engines = {"ours-full": full_engine(setup, batch_size, args)}
    extra: dict[str, dict] = {}
    if "ours-adapler" in systems and setup.adapler_params is not None:
      engines["ours-adapler"] = adapler_engine(setup, batch_size, args)
      fine = engines["ours-adapler"].grid_widths != engines["ours-adapler"].widths
      for name, scale in setup.eta_points.items():
        engines[name] = adapler_engine(setup, batch_size, args, scale)
        extra[name] = {"eta_multipliers": scale.tolist()}
      # The same engines on the bucket widths alone, and on --grid-widths.
      variants = {"coarse": ()} if args.coarse_grids and fine else {}
      if args.grid_widths:
        variants["alt-grids"] = args.grid_widths
      for suffix, grid_widths in variants.items():
        for name, scale in [("ours-adapler", None), *setup.eta_points.items()]:
          engines[f"{name} {suffix}"] = adapler_engine(setup, batch_size, args, scale,
                                                       grid_widths)
          extra[f"{name} {suffix}"] = extra.get(name, {})
    if "ours-lat" in systems and setup.lat_params is not None:
      for spec in [*args.lat_configs, *setup.lat_points]:
        length_base, config = lat_config(spec, data.max_length, cfg.num_layers,
                                         setup.lat_min_length)
        lat_flags = dataclasses.replace(setup.lat_flags, length_base=length_base)
        engines[f"ours-lat {spec}"] = LengthEngine(
            cfg, setup.lat_params, config, base=data.max_length, flags=lat_flags,
            batch_size=batch_size, **kwargs)
        extra[f"ours-lat {spec}"] = {"length_config": list(config), "length_base": length_base}
    calls = {name: ours_pass(engine, data) for name, engine in engines.items()}
    if hf is not None:
      calls["hf-pytorch"] = hf_pass(hf, data, batch_size, args.buckets)
    # FLOPs speedups from one pass' exact kept counts (they do not change between passes).
    first = {name: call() for name, call in calls.items()}
    speedups = {"ours-full": 1.0, "hf-pytorch": 1.0}
    for name in first:
      if name.startswith("ours-adapler"):
        speedups[name] = flops_report(data.lengths, first[name].kept_counts,
                                      dims)["flops_speedup"]
    for name, more in extra.items():
      if "length_config" not in more:
        continue
      config = tuple(more["length_config"])
      cost = flops.selection_cost(data.lengths, first[name].kept_counts, config,
                                  data.max_length, dims)
      speedups[name] = 1.0 / cost["actual_fraction"]
      more["flops_speedup_padded"] = round(1.0 / cost["padded_fraction"], 3)
    print(f"# {setup.task}, batch {batch_size}: {len(calls)} systems x {args.repeats} "
          f"interleaved repeats", flush=True)
    seconds, passes, min_seconds = measure_systems(calls, args, speedups,
                                                   f"{setup.task}, batch {batch_size}")
    per_system = ratios(seconds, speedups)
    full = passes["ours-full"][-1][-1]
    for system in calls:
      more = {**meta, "min_seconds": min_seconds, **extra.get(system, {}),
              **(shapes(engines[system]) if system in engines else {})}
      rows.append(row(system, setup, batch_size, seconds[system], passes[system], full,
                      speedups[system], per_system[system], more))
      if args.verbose:
        print_table(rows[-1:])
  return rows


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task", action="append", required=True,
                      help="task name; repeat for several (paired with --workdir in order)")
  parser.add_argument("--workdir", action="append", default=[],
                      help="trained run directory (adapler_jax.pipeline.load_run), per --task; "
                           f"'{RANDOM_CP}' runs that task in random-CP mode")
  parser.add_argument("--random-cp", action="store_true",
                      help="every task in random-CP mode: embedded MiniLM with random, scaled "
                           "predictors (no trained run)")
  parser.add_argument("--cp-scale", type=float, default=1.5,
                      help="random-CP mode: multiplier of the predictors' weights")
  parser.add_argument("--eta", type=float, default=0.7, help="random-CP mode: eta of every layer")
  parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                      help="folder with one sub-folder per task (random-CP mode, or a --task "
                           "other than the one its --workdir was trained on)")
  parser.add_argument("--split", default=None,
                      help="evaluation split (default: a trained run's eval.split on its own "
                           "task; for another task or random-CP mode its dev split where it "
                           "has one, else test)")
  parser.add_argument("--batch-sizes", default="1,8,32,128")
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)))
  parser.add_argument("--coarse-grids", action="store_true",
                      help="also time each AdapLeR engine with its layers' grids on the bucket "
                           "widths alone, where its default adds finer ones (batch <= 4)")
  parser.add_argument("--grid-widths", default="",
                      help="also time each AdapLeR engine (`... alt-grids`) with these widths "
                           "added to the buckets in place of its default's, e.g. "
                           "2,4,12,20,28,36,44,52,60 (every batch size given)")
  parser.add_argument("--folds", default="2,4",
                      help="AdapLeR engine: survivors may be packed into batch/f rows, for "
                           "each f here, when that is cheaper ('': one example per row)")
  parser.add_argument("--full-folds", default="",
                      help="ours-full: pack examples into batch/f rows when cheaper (as "
                           "--folds; default '': one example per row, like HF's batches)")
  parser.add_argument("--lat-configs", default="padded:0.2,actual:0.2",
                      help="ours-lat: length configs, each base:ratio or base:l1-l2-...")
  parser.add_argument("--frontier-budgets", default="",
                      help="trained runs with a search frontier (train.py --phase search): "
                           "also measure the frontier point picked for each FLOPs budget, e.g. "
                           "0.3,0.67 (fractions of the full model, the search's convention)")
  parser.add_argument("--eta-scales", default="",
                      help="AdapLeR runs: also measure the model with every layer's eta times "
                           "each of these, e.g. 0.1 for a model that drops few tokens")
  parser.add_argument("--max-examples", type=int, default=None,
                      help="seeded subset per task, for a quick run")
  parser.add_argument("--repeats", type=int, default=5,
                      help="interleaved repeats (A B C, A B C, ...); medians and min-max "
                           "spreads are over these")
  parser.add_argument("--min-seconds", type=float, default=2.0,
                      help="each measurement repeats whole passes over the data for at least "
                           "this long")
  parser.add_argument("--retries", type=int, default=1,
                      help="while a ratio's spread exceeds +-10 %%, measure again with twice "
                           "--min-seconds, at most this many times")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin the process to this many CPUs, for JAX and PyTorch alike "
                           "(default: all the CPUs it may use)")
  parser.add_argument("--seed", type=int, default=SEED)
  parser.add_argument("--out", default=None,
                      help="JSON file for the results (default: none, the table "
                           "only: the files under bench/results are the ones cited)")
  parser.add_argument("--verbose", action="store_true",
                      help="print each repeat and each row as it is measured")
  args = parser.parse_args(argv)
  args.batch_sizes = timing.positive_ints(args.batch_sizes, "--batch-sizes", "1,32")
  args.buckets = timing.positive_ints(args.buckets, "--buckets", "16,32,64,128")
  if args.max_examples is not None and args.max_examples < 1:
    raise UserError(f"--max-examples is {args.max_examples}; pass at least 1, e.g. 200")
  timing.check_counts(args)
  if args.retries < 0:
    raise UserError(f"--retries is {args.retries}; pass 0 or more, e.g. --retries 1")
  timing.out_path(args.out)
  args.folds = _folds(args.folds, "--folds")
  widths = [w for w in args.grid_widths.split(",") if w]
  if not all(w.isdigit() and int(w) > 0 for w in widths):
    raise UserError(f"--grid-widths takes positive ints, e.g. 2,4,12,20; got "
                    f"{args.grid_widths!r}")
  args.grid_widths = tuple(int(w) for w in widths)
  args.full_folds = _folds(args.full_folds, "--full-folds")
  args.lat_configs = [c for c in args.lat_configs.split(",") if c]
  for spec in args.lat_configs:  # checked for form here, against each model when it loads.
    length_base, _, value = spec.partition(":")
    if length_base not in ("padded", "actual") or not _is_config_value(value):
      raise UserError(f"--lat-configs takes base:ratio or base:l1-l2-... with base padded or "
                      f"actual, e.g. padded:0.2,actual:52-42-34; got {spec!r}")
  args.frontier_budgets = timing.numbers(args.frontier_budgets, "--frontier-budgets", "0.3,0.67")
  args.eta_scales = timing.numbers(args.eta_scales, "--eta-scales", "0.25,0.5")
  if args.random_cp:
    args.workdir = [RANDOM_CP] * len(args.task)
  if len(args.workdir) != len(args.task):
    raise UserError(f"give one --workdir (a run, or '{RANDOM_CP}') per --task, or "
                    "--random-cp")
  for workdir in args.workdir:  # every run before the first task is measured.
    if workdir != RANDOM_CP and not (Path(workdir) / "config.json").is_file():
      raise UserError(f"--workdir {workdir} holds no train.py run (no config.json); pass a "
                      f"run's workdir, or '{RANDOM_CP}'")
  args.systems = timing.systems_arg(args.systems, SYSTEMS)
  return args


def _folds(text: str, flag: str) -> tuple[int, ...]:
  folds = timing.positive_ints(text, flag, "2,4") if text else ()
  if any(f < 2 for f in folds):
    raise UserError(f"{flag} takes row folds of at least 2, e.g. {flag} 2,4; got {text!r}")
  return folds


def _is_config_value(value: str) -> bool:
  """A ratio in [0, 1) or lengths l1-l2-... of ints >= 1."""
  if "-" in value:
    return all(v.isdigit() and int(v) >= 1 for v in value.split("-"))
  try:
    return 0 <= float(value) < 1
  except ValueError:
    return False


def main(argv=None) -> None:
  args = parse_args(argv)
  threads = timing.pin_threads(args.threads)
  systems = list(args.systems)
  if "hf-pytorch" in systems:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("torch is not installed: skipping hf-pytorch", file=sys.stderr)
      systems.remove("hf-pytorch")
  meta = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
          "cpu_threads": threads, "machine": platform.machine(), "cpu": environment.cpu_model(),
          "versions": environment.describe()["versions"],
          "folds": list(args.folds), "full_folds": list(args.full_folds),
          "buckets": list(args.buckets), "repeats": args.repeats}
  rows, out = [], None if args.out is None else Path(args.out)
  if out is not None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
  for task, workdir in zip(args.task, args.workdir):
    random_cp = workdir == RANDOM_CP
    setup = random_cp_setup(task, args) if random_cp else trained_setup(task, workdir, args)
    print(f"# {task}: {setup.source}", flush=True)
    rows += benchmark(setup, list(args.batch_sizes), systems, args,
                      {**meta, "mode": "random-cp" if random_cp else "trained"})
    # Each task's rows are kept beside --out as it ends, so they survive a later task's
    # failure; --out itself is replaced only by the whole run.
    if out is not None and len(args.task) > 1:
      atomic_write_text(partial, json.dumps(rows, indent=1) + "\n")
    map_limit.release()  # a task's programs: they fill the process's memory mappings.
  print_table(rows)
  if out is not None:
    atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
  run_cli(main)
