"""Batched inference engines: AdapLeR with real token dropping, and the full-length baseline.

All iterate a `TokenizedDataset` in length-sorted batches padded to a bucket width
(`data.eval_batches`), and run their layers on the same grid widths (the buckets, and at
batches of up to 4 rows the fine widths `FINE_GRID_WIDTHS`), so the compiled shapes are
bounded by (row counts x widths) whatever the data, and speed comparisons between them are
fair (docs/engine.md).

AdapLeR runs each batch as one compiled program per (rows, input bucket)
(`program.forward`, docs/engine.md)::

  embed + decision 0 -> [plan grid, move survivors, lax.switch: layer l + decision l+1] x L
        -> head -> host reads logits, kept counts (and rationales)

Each decision scores the tokens present, keeps those with S~ >= eta^l / n_example ([CLS]
always). On the device, the survivors then go to the cheapest grid by the cost model
(`flops.grid_cost`): one example per row at the smallest bucket holding the largest
count, or several examples per row in fewer rows (attention stays within each example);
each layer gathers its grid's slots from the buffer, so its work follows its survivors.
`per_example_run` is the reference: `hard_forward`, one example at a time.

Use from Python::

  engine = AdaptiveEngine(cfg, params, batch_size=32)
  engine.warmup(rationales=True)  # the setting run will use
  result = engine.run(tokenized, return_rationales=True)
  result.logits, result.kept_counts, result.kept_positions[i][l], result.scores[i][l]

A span model (`head="span"` in the config) runs the same way with drop-and-restore: each
example's sequence is kept at its original positions beside the token buffer, every layer
writes the vectors it computed there, and the head reads every position. Its `logits` are
(E, max_length, 2) start/end logits; positions at or past an example's length hold
`PAD_LOGIT`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import numbers
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from adapler_jax.data.batching import DEFAULT_BUCKETS, bucket_lengths, eval_batches
from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.errors import InputError
from adapler_jax.infer import kernels, lat_program, layout, map_limit, packing, program
from adapler_jax.models.adapler import AdapLeRConfig, hard_forward, predictor_params
from adapler_jax.models import lat
from adapler_jax.models.bert import NEG_INF, check_ids, encoder_layer_params
from adapler_jax.models.heads import task_head
from adapler_jax.reduce import lengths as lengths_lib
from adapler_jax.reduce.significance import SelectionFlags

Batch = dict[str, np.ndarray]

CPU_FFN_CHUNK_ROWS = 512  # feed-forward rows per chunk on CPU (see `walk.ParamLayer`).
# Grid widths the AdapLeR engine adds below and between the input buckets when a batch has
# at most `FINE_GRID_MAX_ROWS` rows: there a layer's grid follows one or a few examples'
# survivors, often 2-5 tokens late in the model (docs/engine.md, "Fine grids at batch 1").
FINE_GRID_WIDTHS = (2, 4, 12)
FINE_GRID_MAX_ROWS = 4
PAD_LOGIT = NEG_INF  # span logits at or past an example's length.

# Compiled once per process for each static configuration and shape, shared by engines; each
# with XLA:CPU's default dot kernels and with its own for small inputs (`kernels`).
_FORWARD = kernels.ByGridSize(program.forward, grid_arg=4, static_argnums=(0, 1, 2),
                              static_argnames=("rationales", "chunk_rows", "scan_layers"))
_FULL_FORWARD = kernels.ByGridSize(packing.full_forward, grid_arg=3, static_argnums=(0, 1),
                                   static_argnames="chunk_rows")
_PACKED_FULL_FORWARD = kernels.ByGridSize(packing.packed_full_forward, grid_arg=3,
                                          static_argnums=(0, 1), static_argnames="chunk_rows")
_GATHER_FORWARD = kernels.ByGridSize(lat_program.forward, grid_arg=4, static_argnums=(0, 1, 2),
                                     static_argnames=("flags", "chunk_rows"))

@dataclasses.dataclass
class EngineResult:
  """Outputs of an engine over a dataset, in dataset order (E examples, L layers).

  Attributes:
    logits: (E, C) float32; span models: (E, T, 2) start/end logits, `PAD_LOGIT` at and
      past each example's length.
    kept_counts: (E, L) int tokens each layer ran on ([CLS] included).
    lengths: (E,) int input lengths.
    kept_positions: when rationales are requested, per example a list of L int arrays,
      the original positions each layer ran on.
    scores: when rationales are requested, per example a list of L float arrays, S~ over
      the tokens entering each layer (in the order of the previous layer's positions).
    seconds: wall time of the run, warm-up excluded.
    batch_seconds: wall time of each batch (at batch size 1: per-example latency).
    slots: (L,) token slots each layer computed over all batches, padding and filler
      rows included (`kept_counts.sum(0) / slots` is the padding efficiency).
    packed_batches: (L,) batches whose layer l ran on a packed grid (several examples
      per row).
  """

  logits: np.ndarray
  kept_counts: np.ndarray
  lengths: np.ndarray
  kept_positions: list | None = None
  scores: list | None = None
  seconds: float = 0.0
  batch_seconds: np.ndarray | None = None
  slots: np.ndarray | None = None
  packed_batches: np.ndarray | None = None

  @property
  def predictions(self) -> np.ndarray:
    """Predicted labels (classification; span logits go to span post-processing)."""
    return np.argmax(self.logits, axis=-1)

  @property
  def examples_per_second(self) -> float:
    return len(self.lengths) / self.seconds if self.seconds > 0 else float("inf")


def _progress(items: Iterable, total: int, progress: bool | str, what: str,
              unit: str = "batch"):
  """`items` under a bar when `progress`: True, or a label naming the run (the bar reads
  "<label>: <what>"); cleared when done, as the training loops' bars are."""
  if not progress:
    return items
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  desc = what if progress is True else f"{progress}: {what}"
  return tqdm(items, total=total, desc=desc, unit=unit, leave=False)


def _num_batches(data: TokenizedDataset, batch_size: int) -> int:
  return -(-len(data) // batch_size)


def _check_data(data: TokenizedDataset, max_length: int, enc) -> None:
  if len(data) == 0:
    raise ValueError(f"{data.task or 'the dataset'} has no examples to run")
  empty = np.flatnonzero(np.asarray(data.lengths) < 1)
  if empty.size:  # the per-example reference refuses them too: no [CLS] to classify.
    raise InputError(f"{data.task or 'the dataset'} example {data.ids[empty[0]]!r} has no "
                     "tokens; tokenize it with its special tokens ([CLS] ... [SEP])")
  if data.max_length > max_length:
    raise ValueError(f"{data.task or 'the dataset'} is tokenized at max_length "
                     f"{data.max_length}, above the engine's {max_length}; build the engine "
                     f"with max_length={data.max_length} or re-tokenize")
  check_ids(enc, data.input_ids, data.token_type_ids)  # else NaN rows of the tables.


class _Engine:
  """Batching, timing and result assembly shared by both engines."""

  def __init__(self, cfg: AdapLeRConfig, *, batch_size: int, buckets: Sequence[int],
               max_length: int, device: jax.Device | None, ffn_chunk_rows: int | None | str,
               grid_widths: Sequence[int] | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length > cfg.encoder.max_length:
      raise ValueError(f"max_length {max_length} exceeds the model's "
                       f"{cfg.encoder.max_length} positions")
    self.cfg = cfg
    self.batch_size = batch_size
    self.buckets = tuple(buckets)
    self.max_length = max_length
    self.widths = bucket_lengths(max_length, self.buckets)
    self.grid_widths = _grid_widths(grid_widths, batch_size, self.widths, max_length)
    # Everything the engine hands to its jitted functions is committed to this one device,
    # so warm-up and run-time calls see the same argument placements: a committed and an
    # uncommitted array of the same shape are different cache keys, hence compilations.
    self.device = device or jax.local_devices()[0]
    if ffn_chunk_rows == "auto":
      ffn_chunk_rows = CPU_FFN_CHUNK_ROWS if self.on_cpu else None
    elif ffn_chunk_rows is not None and (not isinstance(ffn_chunk_rows, int) or ffn_chunk_rows < 1):
      raise ValueError(f"ffn_chunk_rows must be 'auto', None or a positive int, got "
                       f"{ffn_chunk_rows!r}")
    self.ffn_chunk_rows = ffn_chunk_rows
    self.folds: tuple[int, ...] = ()  # packed grids' folds; engines that pack set theirs.
    self._shapes: dict[str, set] = {}
    self._guard = map_limit.ProgramGuard()

  @property
  def on_cpu(self) -> bool:
    return self.device.platform == "cpu"

  # Whether a batch's dot kernels follow the grids its layers run on, not known before it
  # runs (so one input shape may compile with both sets), rather than its input shape.
  kernels_by_layers = False

  @property
  def kernel_sets(self) -> int:
    """Dot-kernel sets one input shape's program may compile with (`kernels`)."""
    return 2 if self.on_cpu and self.kernels_by_layers else 1

  def _put(self, tree):
    return jax.device_put(tree, self.device)

  def _small_dots(self, layer_slots) -> bool:
    """Whether a program whose layers run on `layer_slots` token slots (one count, or one
    per layer) takes XLA's own dot kernels: on this engine's device, only when it is a CPU
    (`kernels.small_dots`). Decided here, not from the inputs, which are host arrays."""
    return self.on_cpu and kernels.small_dots(layer_slots)

  def _tracked(self, name: str, fn):
    """`fn` (a partial of a module-level jit), noting each argument shape it runs on: the
    compiled shapes this engine needs. The jit caches are shared, so a second engine or a
    second epoch's evaluation on the same shapes compiles nothing. A shape that may compile
    first checks the process's memory mappings (`map_limit`)."""
    shapes = self._shapes.setdefault(name, set())

    def call(*args, **kwargs):  # params (dicts) fix no shape: only the other arguments count.
      shape = tuple(getattr(a, "shape", a) for a in (*args, *kwargs.values())
                    if not isinstance(a, dict))
      shapes.add(shape)
      self._guard.check((name, shape))
      return fn(*args, **kwargs)

    return call

  def _shape_counts(self, *names: str) -> dict[str, int]:
    return {k: len(self._shapes.get(k, ())) for k in names}

  def row_counts(self) -> tuple[int, ...]:
    """Rows a grid may have, descending: `batch_size` (one example per row), then
    `batch_size // f` for each fold f of `self.folds` (packed grids)."""
    return _row_counts(self.batch_size, self.folds)

  def _batch_widths(self, data: TokenizedDataset) -> tuple[int, ...]:
    return bucket_lengths(data.max_length, self.buckets)

  def _grid_widths(self, width: int) -> tuple[int, ...]:
    """The widths a batch padded to `width` may run on: the engine's narrower grid widths
    and its own (data tokenized at a length that is not one of the engine's buckets pads
    to it)."""
    return (*(w for w in self.grid_widths if w < width), width)

  def _warmup_widths(self, progress: bool | str, widths: Sequence[int] | None = None):
    """The widths `warmup` compiles (default: the input buckets), with a bar when
    `progress`."""
    widths = self.widths if widths is None else widths
    return _progress(widths, len(widths), progress, "compiling", unit="width")

  def run(self, data: TokenizedDataset, *, return_rationales: bool = False,
          progress: bool | str = False) -> EngineResult:
    """Runs every example of `data` once; results come back in dataset order."""
    _check_data(data, self.max_length, self.cfg.encoder)
    num, layers = len(data), self.cfg.num_layers
    head = task_head(self.cfg)
    logits = _empty_logits(head, num, data.max_length)
    kept = np.zeros((num, layers), np.int32)
    positions = [None] * num if return_rationales else None
    scores = [None] * num if return_rationales else None
    batch_seconds = []
    slots = np.zeros((layers,), np.int64)
    packed = np.zeros((layers,), np.int64)
    batches = eval_batches(data, self.batch_size, self._batch_widths(data))
    start = time.perf_counter()
    for batch in _progress(batches, _num_batches(data, self.batch_size), progress,
                           "inference"):
      t0 = time.perf_counter()
      out = self.run_batch(batch, rationales=return_rationales)
      rows = np.flatnonzero(batch["real"])
      index = batch["index"][rows]
      _put_rows(logits, index, out["logits"][rows])
      kept[index] = out["kept"][rows]
      slots += out["slots"]
      packed += out["packed"]
      if return_rationales:
        for r, i in zip(rows, index):
          positions[i], scores[i] = out["positions"][r], out["scores"][r]
      batch_seconds.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    _mask_padding(head, logits, data.lengths)
    return EngineResult(logits, kept, np.asarray(data.lengths).copy(), positions, scores,
                        seconds, np.asarray(batch_seconds), slots, packed)

  def run_batch(self, batch: Batch, *, rationales: bool = False) -> dict[str, Any]:
    """One batch of `data.eval_batches` (host arrays) through the engine, its outputs read
    back to the host: per row ``logits`` and ``kept`` (tokens kept per layer), per layer
    ``slots`` and ``packed`` (token slots run and those in packed rows), and with
    `rationales` per row ``positions`` and ``scores``. `run` is this over every batch."""
    raise NotImplementedError


class AdaptiveEngine(_Engine):
  """AdapLeR hard removal over length-bucketed batches, with real token dropping.

  Each batch runs as one compiled program (`program.forward`) per (rows, input bucket):
  after each keep decision the survivors go, on the device, to the cheapest grid: one
  example per row at the smallest bucket holding the largest survivor count, or packed
  several to a row into `batch_size // f` rows for an f in `folds`; the host reads only
  the outputs.

  Args:
    cfg: model shape.
    params: AdapLeR params `{"model": ..., "speed": {"eta", ...}}`.
    batch_size: examples per batch (the last batch is filled up with copies, ignored).
    buckets: padded widths: the batch's input width and the grids' widths.
    max_length: the longest input (data tokenized at this length use exactly the
      widths `bucket_lengths(max_length, buckets)` that `warmup` compiles).
    device: where the weights live and every batch runs (default: the first local device).
    ffn_chunk_rows: token rows per feed-forward chunk (`walk.ParamLayer`); "auto"
      chunks on CPU, where it keeps activations in cache, and not on accelerators.
    folds: packed grids have `batch_size // f` rows for each f here; () never packs.
      Compiled programs: one per input bucket (and per rationale setting; on CPU, per
      dot-kernel set too: `kernels`).
    scan_layers: see `program.forward` (default: layers unrolled, faster to run).
    grid_widths: widths the layers' grids may take beyond the buckets (inputs are still
      padded to buckets only; those from `max_length` on are never needed and are
      dropped). Default: `FINE_GRID_WIDTHS` up to `FINE_GRID_MAX_ROWS`
      rows, none above, where packing already fits the survivors and each width would
      only add branches to compile.
  """

  kernels_by_layers = True

  def __init__(self, cfg: AdapLeRConfig, params: dict, *, batch_size: int = 32,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int = 512,
               device: jax.Device | None = None, ffn_chunk_rows: int | None | str = "auto",
               folds: Sequence[int] = (2, 4), scan_layers: bool = False,
               grid_widths: Sequence[int] | None = None):
    super().__init__(cfg, batch_size=batch_size, buckets=buckets, max_length=max_length,
                     device=device, ffn_chunk_rows=ffn_chunk_rows, grid_widths=grid_widths)
    self.folds = _check_folds(folds)
    model = params["model"]
    layers = encoder_layer_params(cfg.encoder, model["bert"])
    self._params = self._put({
        "embeddings": model["bert"]["embeddings"],
        "layers": program.stack_layers(layers) if scan_layers else layers,  # stacked once.
        "predictors": predictor_params(cfg, model), "head": model["head"],
        "eta": self._check_eta(params["speed"]["eta"])})
    self._forward = self._tracked("forward", functools.partial(
        _FORWARD, cfg, self.row_counts(), self.grid_widths, chunk_rows=self.ffn_chunk_rows,
        scan_layers=scan_layers))
    # Per input shape: whether the last batch's layer grids suit XLA's own dots.
    self._small_by_shape: dict[tuple[int, ...], bool] = {}

  def _check_eta(self, eta) -> np.ndarray:
    eta = np.asarray(eta, np.float32)
    if eta.shape != (self.cfg.num_layers,):
      raise ValueError(f"speed/eta has shape {eta.shape}; the model has "
                       f"{self.cfg.num_layers} layers")
    return eta

  @property
  def eta(self) -> np.ndarray:
    """The cutoffs (L,) this engine keeps tokens by."""
    return np.asarray(self._params["eta"])

  def with_eta(self, eta) -> AdaptiveEngine:
    """This engine with cutoffs `eta` (L,) in place of its own. The weights already on the
    device, the compiled programs and the count of compiled shapes are shared; only the L
    cutoffs are uploaded. A sweep or search over cutoffs builds one engine and this per
    point (`eval.tradeoff.score_eta`)."""
    other = copy.copy(self)
    other._params = {**self._params, "eta": self._put(self._check_eta(eta))}
    other._small_by_shape = {}  # grids follow eta; and a copy's results are its own calls'.
    return other

  @property
  def compiled_shapes(self) -> int:
    """Distinct (rows, input bucket, rationales, dot kernels) programs compiled so far."""
    return self.compile_counts["forward"]

  @property
  def compile_counts(self) -> dict[str, int]:
    return self._shape_counts("forward")

  def warmup(self, rationales: bool = False, *, progress: bool | str = False) -> None:
    """Compiles the program of every input bucket ahead of time, on placeholder inputs:
    on CPU, with each dot-kernel set a batch of that bucket may pick (`small_dots`).
    Pass the `rationales` setting `run` will use (each compiles its own programs);
    `progress` shows a bar, one step per bucket (minutes on CPU for a full model)."""
    for width in self._warmup_widths(progress):
      ids = np.zeros((self.batch_size, width), np.int32)
      n = np.full((self.batch_size,), width, np.int32)
      for small in sorted({self._small_dots(ids.size), self.kernel_sets == 2}):
        jax.block_until_ready(self._call(ids, ids, n, rationales, small))

  def run(self, data: TokenizedDataset, *, return_rationales: bool = False,
          progress: bool | str = False) -> EngineResult:
    # The kernel sets agree only to rounding, which can move a token across its cutoff:
    # each run starts from the input grids' choice, so its results follow its data alone.
    self._small_by_shape = {}
    return super().run(data, return_rationales=return_rationales, progress=progress)

  def small_dots(self, shape: tuple[int, ...]) -> bool:
    """Whether the next batch of input `shape` runs with XLA's own dot kernels
    (`kernels.small_dots`, CPU only): the grids its layers will run on are not known
    before it runs, so those of the last batch of that shape in this `run` stand in for
    them, and the input grid before the first."""
    small = self._small_by_shape.get(shape)
    return self._small_dots(math.prod(shape)) if small is None else small

  def _call(self, input_ids, token_type_ids, lengths, rationales: bool,
            small: bool | None = None) -> dict[str, jax.Array]:
    if small is None:
      small = self.small_dots(np.shape(input_ids))
    # Host arrays go in as they are: jit places them beside the committed params, about
    # 80 us a batch cheaper than a `device_put` of each (batch 1 runs ~5 ms on CPU).
    return self._forward(self._params, input_ids, token_type_ids, lengths,
                         rationales=rationales, small=small)

  def dispatch(self, batch: Batch, *, rationales: bool = False) -> dict[str, jax.Array]:
    """Starts one batch (`data.eval_batches`: host arrays) on the device; returns the
    program's outputs (`program.forward`) as device arrays, without waiting for them."""
    lengths = batch["attention_mask"].sum(axis=1, dtype=np.int32)
    return self._call(batch["input_ids"], batch["token_type_ids"], lengths, rationales)

  def run_batch(self, batch: Batch, *, rationales: bool = False) -> dict[str, Any]:
    # Each output read on its own: `jax.device_get` of the dict costs ~0.2 ms more a batch.
    out = {k: np.asarray(v) for k, v in self.dispatch(batch, rationales=rationales).items()}
    result = {"logits": out["logits"], "kept": np.asarray(out["kept"], np.int32),
              "slots": np.asarray(out["slots"], np.int64),
              "packed": np.asarray(out["packed"], np.int64)}
    self._small_by_shape[batch["input_ids"].shape] = self._small_dots(out["slots"].tolist())
    if rationales:
      result["positions"], result["scores"] = _rationales(out)
    return result


def _rationales(out: dict[str, np.ndarray]) -> tuple[list, list]:
  """Per example: the original positions each layer ran on, and S~ over the tokens
  entering each layer's decision, in original order (program outputs, on the host)."""
  scores, keep, pos = out["scores"], out["keep"], out["positions"]
  layers, num = pos.shape[:2]
  present = pos >= 0
  return ([[pos[l, e][keep[l, e]] for l in range(layers)] for e in range(num)],
          [[scores[l, e][present[l, e]] for l in range(layers)] for e in range(num)])


class FullLengthEngine(_Engine):
  """The full model (no dropping) over the same length-bucketed batches.

  Args:
    cfg: model shape (`cfg.encoder`, `cfg.num_labels`).
    params: a classifier `{"bert": ..., "head": ...}`, an AdapLeR `model` subtree, or
      full AdapLeR params `{"model": ..., "speed": ...}` (predictors are ignored).
    batch_size, buckets, max_length, device, ffn_chunk_rows: as for `AdaptiveEngine`.
    folds: as for `AdaptiveEngine`: each batch runs on the cheaper of its padded grid and
      a packed one of `batch_size // f` rows (bucket padding skipped), planned on the host
      (`layout.plan`) by the cost model the adaptive engine's grids use. () runs one
      example per row, as padded batches (and Hugging Face) do.
    grid_widths: as for `AdaptiveEngine`, with the same default: a batch runs on the
      narrowest of them holding its longest example, as the adaptive engine's first layer
      does when nothing drops, so comparisons at small batch sizes are fair.
  """

  def __init__(self, cfg: AdapLeRConfig, params: dict, *, batch_size: int = 32,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int = 512,
               device: jax.Device | None = None, ffn_chunk_rows: int | None | str = "auto",
               folds: Sequence[int] = (2, 4), grid_widths: Sequence[int] | None = None):
    super().__init__(cfg, batch_size=batch_size, buckets=buckets, max_length=max_length,
                     device=device, ffn_chunk_rows=ffn_chunk_rows, grid_widths=grid_widths)
    self.folds = _check_folds(folds)
    if self.folds and task_head(cfg).restore:
      raise ValueError("packed full-length runs read [CLS] only; run a span model with "
                       "folds=()")
    params = params.get("model", params)
    self._params = self._put({"bert": params["bert"], "head": params["head"]})
    chunk = self.ffn_chunk_rows
    self._forward = self._tracked("forward", functools.partial(
        _FULL_FORWARD, cfg.encoder, task_head(cfg), chunk_rows=chunk))
    self._packed = self._tracked("packed forward", functools.partial(
        _PACKED_FULL_FORWARD, cfg.encoder, cfg.num_labels, chunk_rows=chunk))

  @property
  def compiled_shapes(self) -> int:
    """Distinct (rows, width) shapes the full forward has compiled for so far."""
    return sum(self.compile_counts.values())

  @property
  def compile_counts(self) -> dict[str, int]:
    return self._shape_counts("forward", "packed forward")

  def warmup(self, *, progress: bool | str = False) -> None:
    """Compiles every (rows, width) shape ahead of time, on placeholder inputs
    (`progress`: a bar, one step per grid width)."""
    for width in self._warmup_widths(progress, self.grid_widths):
      ids = np.zeros((self.batch_size, width), np.int32)
      n = np.full((self.batch_size,), width, np.int32)
      jax.block_until_ready(self._forward(self._params, ids, ids, n,
                                          small=self._small_dots(ids.size)))
      for rows in self.row_counts()[1:]:
        grid = np.zeros((rows, width), np.int32)
        cls = np.zeros((self.batch_size,), np.int32)
        jax.block_until_ready(self._packed(self._params, grid, grid, grid, grid - 1, cls,
                                           small=self._small_dots(grid.size)))

  def run_batch(self, batch: Batch, *, rationales: bool = False) -> dict[str, Any]:
    lengths = batch["attention_mask"].sum(axis=1, dtype=np.int32)
    num, width = batch["input_ids"].shape
    enc = self.cfg.encoder
    grid = layout.plan(lengths, self._grid_widths(width), self.row_counts()[1:],
                       enc.hidden_size, enc.intermediate_size)
    if grid.packed:
      idx, seg = layout.gather_indices(grid, lengths, np.arange(num) * width, num * width)
      real = seg >= 0
      take = lambda a: np.where(real, a.reshape(-1)[np.minimum(idx, num * width - 1)], 0)
      cls = (grid.row * grid.width + grid.offset).astype(np.int32)
      logits = self._packed(self._params, take(batch["input_ids"]),
                            take(batch["token_type_ids"]),
                            np.where(real, idx % width, 0).astype(np.int32), seg, cls,
                            small=self._small_dots(seg.size))
    else:  # the narrowest grid width holding the longest example: its first columns.
      ids, types = (batch[k][:, :grid.width] for k in ("input_ids", "token_type_ids"))
      logits = self._forward(self._params, ids, types, lengths,
                             small=self._small_dots(ids.size))
    kept = np.repeat(lengths[:, None], self.cfg.num_layers, axis=1)
    out = {"logits": np.asarray(logits), "kept": kept,
           "slots": np.full((self.cfg.num_layers,), grid.slots),
           "packed": np.full((self.cfg.num_layers,), int(grid.packed))}
    if rationales:  # every layer runs on every token; there are no predictor scores.
      out["positions"] = [[np.arange(n)] * self.cfg.num_layers for n in lengths]
      out["scores"] = [None] * len(lengths)
    return out


class LengthEngine(_Engine):
  """A Length-Adaptive Transformer at one length config, with real token dropping.

  Each batch runs as one compiled program per (rows, input bucket) (`lat_program.forward`):
  after each layer's attention, the tokens kept by attention significance are gathered to
  the front of each row, and the feed-forward block and every later layer run on the
  narrowest grid width holding them. How many tokens each example keeps follows from the
  config and its length alone (`reduce.lengths.real_counts`), so the host plans every
  width before the batch starts, hands the plan to the program as data, and reads only the
  outputs. Configs and lengths never change the compiled shapes: one program per input
  bucket (and dot-kernel set, `kernels`) serves them all.

  Args:
    cfg: a `ClassifierConfig` (or any config with `encoder`, `num_labels`).
    params: the classifier `{"bert", "head"}` (or `{"model": ...}` around it).
    config: the length config (L,), on `base` (padded base: absolute lengths; actual base:
      each example keeps ceil(n * l_i / base)); None runs every token.
    base: the padded length configs refer to (default `max_length`).
    flags: `SelectionFlags`.
    batch_size, buckets, max_length, device, ffn_chunk_rows, grid_widths: as for
      `AdaptiveEngine` (the layers' widths; inputs are padded to buckets).
  """

  kernels_by_layers = True

  def __init__(self, cfg, params: dict, config, *, base: int | None = None,
               flags: SelectionFlags = SelectionFlags(), batch_size: int = 32,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int = 512,
               device: jax.Device | None = None, ffn_chunk_rows: int | None | str = "auto",
               grid_widths: Sequence[int] | None = None):
    super().__init__(cfg, batch_size=batch_size, buckets=buckets, max_length=max_length,
                     device=device, ffn_chunk_rows=ffn_chunk_rows, grid_widths=grid_widths)
    self.base = base or max_length
    lat.check_flags(task_head(cfg), flags)
    if flags.include_pad_queries:
      raise InputError("LengthEngine drops padding before it scores, so "
                       "SelectionFlags(include_pad_queries=True) has no padded query rows to "
                       "count; run it through the masked path (eval.report.masked_lat_logits)")
    self.flags = flags
    self.config = (None if config is None else lengths_lib.validate_config(
        config, self.base, cfg.num_layers, keep_cls=flags.keep_cls))
    params = params.get("model", params)
    self._params = self._put({"bert": params["bert"], "head": params["head"]})
    # The host turns the config into counts; the program never reads `length_base`, so
    # both bases share its compilations.
    program_flags = dataclasses.replace(flags, length_base="padded")
    self._forward = self._tracked("forward", functools.partial(
        _GATHER_FORWARD, cfg.encoder, task_head(cfg), flags=program_flags,
        chunk_rows=self.ffn_chunk_rows))

  @property
  def compiled_shapes(self) -> int:
    """Distinct (rows, input width, dot kernels) programs run so far."""
    return self._shape_counts("forward")["forward"]

  def plan(self, n: np.ndarray, width: int):
    """For lengths n (E,) padded to `width`: tokens to keep (L, E), real tokens kept (E, L),
    layer widths and whether each layer drops anything (one that keeps all leaves its slots
    in place: the program still scores them, and discards the order)."""
    config = self.config or (self.base,) * self.cfg.num_layers
    counts = lengths_lib.keep_counts(np.asarray(config), n, self.base, self.flags.length_base)
    real = lengths_lib.real_counts(config, n, self.base, self.flags.length_base)
    candidates = self._grid_widths(width)  # once a batch, not once a layer.
    widths = tuple(layout.smallest_width(int(c), candidates) for c in real.max(axis=0))
    entering = np.concatenate([np.asarray(n)[:, None], real[:, :-1]], axis=1)
    selects = tuple(bool(s) for s in (real < entering).any(axis=0))
    return counts.astype(np.int32), real, widths, selects

  def warmup(self, *, progress: bool | str = False) -> None:
    """Compiles the program of each input bucket ahead of time, on placeholder inputs: on
    CPU, with each dot-kernel set a batch of that bucket may pick (`kernels`; `progress`:
    a bar, one step per bucket)."""
    for width in self._warmup_widths(progress):
      ids = np.zeros((self.batch_size, width), np.int32)
      n = np.full((self.batch_size,), width, np.int32)
      for small in sorted({self._small_dots(ids.size), self.kernel_sets == 2}):
        jax.block_until_ready(self._call(ids, ids, n, small)[0])

  def _call(self, input_ids, token_type_ids, n, small: bool | None = None):
    """The program's outputs on one batch, the real tokens each layer keeps and the layer
    widths, both planned here on the host."""
    counts, real, widths, selects = self.plan(n, input_ids.shape[1])
    if small is None:
      small = self._small_dots([len(n) * w for w in widths])  # the grids the layers run on.
    candidates = self._grid_widths(input_ids.shape[1])
    index = np.asarray([candidates.index(w) for w in widths], np.int32)
    out = self._forward(candidates, self._params, input_ids, token_type_ids, n, counts, index,
                        np.asarray(selects), small=small)
    return out, real, widths

  def run_batch(self, batch: Batch, *, rationales: bool = False) -> dict[str, Any]:
    n = batch["attention_mask"].sum(axis=1, dtype=np.int32)
    (logits, trace), real, widths = self._call(batch["input_ids"], batch["token_type_ids"], n)
    rows = len(n)
    out = {"logits": np.asarray(logits), "kept": real,
           "slots": np.asarray([rows * w for w in widths]),
           "packed": np.zeros(len(widths), np.int64)}
    if rationales:
      positions = np.asarray(trace["positions"])
      out["positions"] = [[p[e][p[e] >= 0] for p in positions] for e in range(rows)]
      out["scores"] = [None] * rows
    return out


def _empty_logits(head, num: int, max_length: int) -> np.ndarray:
  """The result's logits before any batch: (E, C), or (E, T, 2) of `PAD_LOGIT` for span."""
  if head.restore:
    return np.full((num, max_length, head.num_labels), PAD_LOGIT, np.float32)
  return np.zeros((num, head.num_labels), np.float32)


def _put_rows(logits: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
  """logits[index] = values, values narrower on the position axis (a batch's width)."""
  logits[(index, *(slice(0, d) for d in values.shape[1:]))] = values


def _mask_padding(head, logits: np.ndarray, lengths: np.ndarray) -> None:
  """Span logits at and past each example's length become `PAD_LOGIT`."""
  if head.restore:
    logits[np.arange(logits.shape[1]) >= np.asarray(lengths)[:, None]] = PAD_LOGIT


def _grid_widths(grid_widths: Sequence[int] | None, batch_size: int, widths: Sequence[int],
                 max_length: int) -> tuple[int, ...]:
  """The engine's bucket `widths` and the `grid_widths` below `max_length` (default:
  `FINE_GRID_WIDTHS` up to `FINE_GRID_MAX_ROWS` rows), ascending."""
  if grid_widths is None:
    grid_widths = FINE_GRID_WIDTHS if batch_size <= FINE_GRID_MAX_ROWS else ()
  grid_widths = tuple(grid_widths)
  if not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w > 0
             for w in grid_widths):
    raise ValueError(f"grid_widths must be positive ints, got {grid_widths!r}")
  return tuple(sorted(set(widths) | {int(w) for w in grid_widths if w < max_length}))


def _check_folds(folds: Sequence[int]) -> tuple[int, ...]:
  folds = tuple(folds)
  if not all(isinstance(f, int) and f > 1 for f in folds):
    raise ValueError(f"folds must be ints > 1 (() never packs), got {folds!r}")
  return folds


def _row_counts(batch_size: int, folds: Sequence[int]) -> tuple[int, ...]:
  packed = {batch_size // f for f in folds} - {0}
  return (batch_size,) + tuple(sorted(packed, reverse=True))


def per_example_run(cfg: AdapLeRConfig, params: dict, data: TokenizedDataset, *,
                    progress: bool | str = False) -> EngineResult:
  """The reference: `hard_forward` on each example alone, unpadded (always with rationales).

  Every token count a layer meets compiles its own small programs (cached for the
  process), so a first pass over varied lengths spends most of its time compiling; it is
  the exact semantics the batched engines are tested against, not a fast path.
  """
  num, head = len(data), task_head(cfg)
  logits = _empty_logits(head, num, data.max_length)
  kept = np.zeros((num, cfg.num_layers), np.int32)
  positions, scores, seconds = [], [], []
  rows = range(num)
  start = time.perf_counter()
  for i in _progress(rows, num, progress, "per-example reference", unit="example"):
    t0 = time.perf_counter()
    n = int(data.lengths[i])
    result = hard_forward(cfg, params, data.input_ids[i, :n], data.token_type_ids[i, :n])
    _put_rows(logits, np.asarray([i]), result.logits[None])
    kept[i] = result.kept_counts
    positions.append(result.kept_positions)
    scores.append(result.scores)
    seconds.append(time.perf_counter() - t0)
  return EngineResult(logits, kept, np.asarray(data.lengths).copy(), positions, scores,
                      time.perf_counter() - start, np.asarray(seconds), kept.sum(axis=0))
