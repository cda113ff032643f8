"""Batched inference engines: AdapLeR with real token dropping, and the full-length baseline.

Both iterate a `TokenizedDataset` in length-sorted batches padded to a bucket width
(`data.eval_batches`), so the compiled shapes are bounded by (batch sizes x buckets)
whatever the data, and speed comparisons between them are fair (DESIGN.md §7).

AdapLeR per batch::

  embed -> select_0 -> [host: max survivors -> width] -> layer_0 + select_1 -> ...
        -> layer_{L-1} (cutoff 0) -> head

Each `select` scores the tokens present, keeps those with S~ >= eta^l / n_row ([CLS]
always), packs the survivors to the front and returns them pre-sliced at every bucket
width; the host reads one int (the largest survivor count) and continues with the
smallest slice that holds it. `per_example_run` is the reference: `hard_forward`, one
example at a time.

Use from Python::

  engine = AdaptiveEngine(cfg, params, batch_size=32)
  engine.warmup()
  result = engine.run(tokenized, return_rationales=True)
  result.logits, result.kept_counts, result.kept_positions[i][l], result.scores[i][l]
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from adapler_jax.data.batching import DEFAULT_BUCKETS, bucket_lengths, eval_batches
from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.infer import packing
from adapler_jax.models.adapler import AdapLeRConfig, hard_forward

Batch = dict[str, np.ndarray]

CPU_FFN_CHUNK_ROWS = 512  # feed-forward rows per chunk on CPU (see `packing.feed_forward`).


@dataclasses.dataclass
class EngineResult:
  """Outputs of an engine over a dataset, in dataset order (E examples, L layers).

  Attributes:
    logits: (E, C) float32.
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
  """

  logits: np.ndarray
  kept_counts: np.ndarray
  lengths: np.ndarray
  kept_positions: list | None = None
  scores: list | None = None
  seconds: float = 0.0
  batch_seconds: np.ndarray | None = None
  slots: np.ndarray | None = None

  @property
  def predictions(self) -> np.ndarray:
    return np.argmax(self.logits, axis=-1)

  @property
  def examples_per_second(self) -> float:
    return len(self.lengths) / self.seconds if self.seconds > 0 else float("inf")


def _progress(batches: Iterable[Batch], total: int, enabled: bool, desc: str):
  if not enabled:
    return batches
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(batches, total=total, desc=desc, unit="batch")


def _num_batches(data: TokenizedDataset, batch_size: int) -> int:
  return -(-len(data) // batch_size)


def _check_data(data: TokenizedDataset, max_length: int) -> None:
  if len(data) == 0:
    raise ValueError(f"{data.task or 'the dataset'} has no examples to run")
  if data.max_length > max_length:
    raise ValueError(f"{data.task or 'the dataset'} is tokenized at max_length "
                     f"{data.max_length}, above the engine's {max_length}; build the engine "
                     f"with max_length={data.max_length} or re-tokenize")


class _Engine:
  """Batching, timing and result assembly shared by both engines."""

  def __init__(self, cfg: AdapLeRConfig, *, batch_size: int, buckets: Sequence[int],
               max_length: int, device: jax.Device | None, ffn_chunk_rows: int | None | str):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length > cfg.encoder.max_position_embeddings:
      raise ValueError(f"max_length {max_length} exceeds the model's "
                       f"{cfg.encoder.max_position_embeddings} positions")
    self.cfg = cfg
    self.batch_size = batch_size
    self.buckets = tuple(buckets)
    self.max_length = max_length
    self.widths = bucket_lengths(max_length, self.buckets)
    # Everything the engine hands to its jitted functions is committed to this one device,
    # so warm-up and run-time calls see the same argument placements: a committed and an
    # uncommitted array of the same shape are different cache keys, hence compilations.
    self.device = device or jax.local_devices()[0]
    if ffn_chunk_rows == "auto":
      ffn_chunk_rows = CPU_FFN_CHUNK_ROWS if self.device.platform == "cpu" else None
    elif ffn_chunk_rows is not None and (not isinstance(ffn_chunk_rows, int) or ffn_chunk_rows < 1):
      raise ValueError(f"ffn_chunk_rows must be 'auto', None or a positive int, got "
                       f"{ffn_chunk_rows!r}")
    self.ffn_chunk_rows = ffn_chunk_rows

  def _put(self, tree):
    return jax.device_put(tree, self.device)

  def _batch_widths(self, data: TokenizedDataset) -> tuple[int, ...]:
    return bucket_lengths(data.max_length, self.buckets)

  def run(self, data: TokenizedDataset, *, return_rationales: bool = False,
          progress: bool = False) -> EngineResult:
    """Runs every example of `data` once; results come back in dataset order."""
    _check_data(data, self.max_length)
    num, layers = len(data), self.cfg.num_layers
    logits = np.zeros((num, self.cfg.num_labels), np.float32)
    kept = np.zeros((num, layers), np.int32)
    positions = [None] * num if return_rationales else None
    scores = [None] * num if return_rationales else None
    batch_seconds = []
    slots = np.zeros((layers,), np.int64)
    batches = eval_batches(data, self.batch_size, self._batch_widths(data))
    start = time.perf_counter()
    for batch in _progress(batches, _num_batches(data, self.batch_size), progress,
                           type(self).__name__):
      t0 = time.perf_counter()
      out = self._run_batch(batch, return_rationales)
      rows = np.flatnonzero(batch["real"])
      index = batch["index"][rows]
      logits[index] = out["logits"][rows]
      kept[index] = out["kept"][rows]
      slots += out["slots"]
      if return_rationales:
        for r, i in zip(rows, index):
          positions[i], scores[i] = out["positions"][r], out["scores"][r]
      batch_seconds.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    return EngineResult(logits, kept, np.asarray(data.lengths).copy(), positions, scores,
                        seconds, np.asarray(batch_seconds), slots)

  def _run_batch(self, batch: Batch, rationales: bool) -> dict[str, Any]:
    raise NotImplementedError


class AdaptiveEngine(_Engine):
  """AdapLeR hard removal over length-bucketed batches, with real token dropping.

  Args:
    cfg: model shape.
    params: AdapLeR params `{"model": ..., "speed": {"eta", ...}}`.
    batch_size: rows per batch (the last batch is filled up with copies, ignored).
    buckets: padded widths; a batch starts at the smallest bucket holding its longest
      example and shrinks, layer by layer, to the smallest holding its largest survivor
      count.
    max_length: the longest input (data tokenized at this length use exactly the
      widths `bucket_lengths(max_length, buckets)` that `warmup` compiles).
    device: where the weights live and every batch runs (default: the first local device).
    ffn_chunk_rows: token rows per feed-forward chunk (`packing.feed_forward`); "auto"
      chunks on CPU, where it keeps activations in cache, and not on accelerators.
    split_divergent: after a keep decision, sort the rows of a batch by survivor count
      and split it in halves when that saves at least `min_split_saving` token slots
      per layer (each extra call re-reads the layer's weights, so small savings cost
      more than they save); the whole count vector then crosses to the host, and batch
      sizes `batch_size / 2^k` (down to `min_split_rows`) join the compiled shapes.
    min_split_rows: the smallest half a split may produce.
    min_split_saving: token slots per layer a split must save.
  """

  def __init__(self, cfg: AdapLeRConfig, params: dict, *, batch_size: int = 32,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int = 512,
               device: jax.Device | None = None, ffn_chunk_rows: int | None | str = "auto",
               split_divergent: bool = False, min_split_rows: int = 8,
               min_split_saving: int = 128):
    super().__init__(cfg, batch_size=batch_size, buckets=buckets, max_length=max_length,
                     device=device, ffn_chunk_rows=ffn_chunk_rows)
    self.split_divergent = split_divergent
    self.min_split_rows = max(1, min_split_rows)
    self.min_split_saving = min_split_saving
    model = params["model"]
    layers = cfg.num_layers
    self._embedding_params = self._put(model["bert"]["embeddings"])
    self._layer_params = [self._put(model["bert"]["encoder"][f"layer_{l}"])
                          for l in range(layers)]
    self._cp_params = [self._put(model[f"predictors_{l}"]) for l in range(layers)]
    self._head_params = self._put(model["head"])
    eta = np.asarray(params["speed"]["eta"], np.float32)
    if eta.shape != (layers,):
      raise ValueError(f"speed/eta has shape {eta.shape}; the model has {layers} layers")
    # Cutoff of each keep decision: eta^1..eta^{L-1} after layers 0..L-2, then 0 (keep all).
    self._eta = [self._put(e) for e in eta]
    self._no_cutoff = self._put(np.float32(0.0))
    self._embed = jax.jit(functools.partial(packing.embed, cfg.encoder))
    self._select = jax.jit(functools.partial(packing.select, cfg, self.widths))
    self._step = jax.jit(functools.partial(packing.layer_then_select, cfg, self.widths,
                                           chunk_rows=self.ffn_chunk_rows))
    self._head = jax.jit(functools.partial(packing.head, cfg))
    self._take = jax.jit(functools.partial(packing.take_rows, self.widths))

  # ---------------------------------------------------------------- compiled shapes

  @property
  def compiled_shapes(self) -> int:
    """Distinct (batch, width) shapes the per-layer step has compiled for so far.

    One compilation per shape serves every layer; `compile_counts` lists every
    jitted function of the engine.
    """
    return self._step._cache_size()  # pylint: disable=protected-access

  @property
  def compile_counts(self) -> dict[str, int]:
    fns = {"embed": self._embed, "select": self._select, "layer": self._step,
           "head": self._head, "split": self._take}
    return {k: f._cache_size() for k, f in fns.items()}  # pylint: disable=protected-access

  def batch_sizes(self) -> tuple[int, ...]:
    """Batch sizes this engine can run: `batch_size` and, when splitting, its halves."""
    sizes = [self.batch_size]
    while self.split_divergent and sizes[-1] % 2 == 0 and sizes[-1] // 2 >= self.min_split_rows:
      sizes.append(sizes[-1] // 2)
    return tuple(sizes)

  def warmup(self) -> None:
    """Compiles every (batch, bucket) shape ahead of time, on placeholder inputs."""
    for size in self.batch_sizes():
      for width in self.widths:
        ids = np.zeros((size, width), np.int32)
        n = self._put(np.full((size,), width, np.int32))
        x = self._embed(self._embedding_params, ids, ids)
        sel = self._select(self._cp_params[0], self._eta[0], x, n)
        sel = self._step(self._layer_params[0], self._cp_params[0], self._no_cutoff,
                         sel.prefixes[-1], sel.n)
        out = [self._head(self._head_params, sel.prefixes[0])]
        if size != self.batch_sizes()[-1]:
          rows = self._put(np.arange(size // 2, dtype=np.int32))
          out.append(self._take(x, n, rows))
        jax.block_until_ready((sel, out))

  # ---------------------------------------------------------------- one batch

  def _run_batch(self, batch: Batch, rationales: bool) -> dict[str, Any]:
    lengths = batch["attention_mask"].sum(axis=1, dtype=np.int32)
    n = self._put(lengths)
    x = self._embed(self._embedding_params, batch["input_ids"], batch["token_type_ids"])
    sel = self._select(self._cp_params[0], self._eta[0], x, n)
    records = _Records(lengths, self.cfg.num_layers, rationales)
    pending = [(np.arange(len(lengths)), 0, sel)]
    while pending:
      pending.extend(self._advance(*pending.pop(), records))
    return records.collect()

  def _advance(self, rows: np.ndarray, layer: int, sel: packing.Selection,
               records: _Records) -> list:
    """Runs a group of rows from the keep decision of `layer` to the head.

    Returns the groups it split into (each continues from the same decision), or []
    once it has reached the head.
    """
    num_layers = self.cfg.num_layers
    for l in range(layer, num_layers):
      if records.rationales and sel.scores is not None:
        records.add("scores", rows, l, sel.scores)
        records.add("order", rows, l, sel.order)
      widths = [x.shape[1] for x in sel.prefixes]
      if len(widths) == 1:  # already the narrowest bucket: nothing to read or decide.
        max_n = widths[0]
      elif self.split_divergent:
        counts = np.asarray(sel.n)
        halves = self._split_rows(counts, widths)
        if halves is not None:
          return [(rows[h], l, self._take_group(sel, counts, widths, h)) for h in halves]
        max_n = int(counts.max())
      else:
        max_n = int(sel.max_n)  # the one value that crosses to the host per layer.
      x = sel.prefixes[packing.smallest_holding(max_n, widths)]
      records.add("kept", rows, l, sel.n)
      records.slots[l] += len(rows) * x.shape[1]
      last = l == num_layers - 1
      sel = self._step(self._layer_params[l], self._cp_params[0 if last else l + 1],
                       self._no_cutoff if last else self._eta[l + 1], x, sel.n)
    records.add("logits", rows, num_layers, self._head(self._head_params, sel.prefixes[0]))
    return []

  def _split_rows(self, counts: np.ndarray, widths: Sequence[int]):
    """Halves of the rows (by survivor count) when padding shrinks enough, else None."""
    half = len(counts) // 2
    if len(counts) % 2 or half < self.min_split_rows:
      return None
    order = np.argsort(counts, kind="stable")
    low, high = order[:half], order[half:]
    w_low = widths[packing.smallest_holding(int(counts[low].max()), widths)]
    w_high = widths[packing.smallest_holding(int(counts[high].max()), widths)]
    return (low, high) if half * (w_high - w_low) >= self.min_split_saving else None

  def _take_group(self, sel: packing.Selection, counts: np.ndarray, widths: Sequence[int],
                  rows: np.ndarray) -> packing.Selection:
    """The selection restricted to `rows`, starting from the narrowest slice holding all."""
    x = sel.prefixes[packing.smallest_holding(int(counts.max()), widths)]
    prefixes, n = self._take(x, sel.n, self._put(rows.astype(np.int32)))
    return sel._replace(prefixes=prefixes, n=n, scores=None, order=None)


class _Records:
  """Per-row device outputs of one batch, fetched to the host in a single transfer."""

  def __init__(self, lengths: np.ndarray, num_layers: int, rationales: bool):
    self.lengths, self.num_layers, self.rationales = lengths, num_layers, rationales
    self._items: list[tuple[str, np.ndarray, int, jax.Array]] = []
    self.slots = np.zeros((num_layers,), np.int64)

  def add(self, kind: str, rows: np.ndarray, layer: int, value: jax.Array) -> None:
    """Notes `value` (rows first) as the `kind` output of `layer` for batch rows `rows`."""
    self._items.append((kind, rows, layer, value))

  def collect(self) -> dict[str, Any]:
    """Host arrays: logits (B, C), kept (B, L); with rationales, per-row lists."""
    size, layers = len(self.lengths), self.num_layers
    values = jax.device_get([v for *_, v in self._items])
    logits, kept = None, np.zeros((size, layers), np.int32)
    per_row = {"order": {}, "scores": {}}
    for (kind, rows, layer, _), value in zip(self._items, values):
      if kind == "logits":
        logits = np.zeros((size, value.shape[-1]), np.float32) if logits is None else logits
        logits[rows] = value
      elif kind == "kept":
        kept[rows, layer] = value
      else:
        per_row[kind].update(((int(r), layer), v) for r, v in zip(rows, value))
    out = {"logits": logits, "kept": kept, "slots": self.slots}
    if self.rationales:
      out["positions"], out["scores"] = zip(*(
          self._rationale(r, kept[r], per_row) for r in range(size)))
    return out

  def _rationale(self, row: int, kept: np.ndarray, per_row: dict):
    """Original positions each layer ran on, and S~ over the tokens entering it."""
    positions, scores = [], []
    current = np.arange(self.lengths[row])
    for l in range(self.num_layers):
      scores.append(per_row["scores"][row, l][: len(current)])
      current = current[per_row["order"][row, l][: kept[l]]]
      positions.append(current)
    return positions, scores


class FullLengthEngine(_Engine):
  """The full model (no dropping) over the same length-bucketed batches.

  Args:
    cfg: model shape (`cfg.encoder`, `cfg.num_labels`).
    params: a classifier `{"bert": ..., "head": ...}`, an AdapLeR `model` subtree, or
      full AdapLeR params `{"model": ..., "speed": ...}` (predictors are ignored).
    batch_size, buckets, max_length, device, ffn_chunk_rows: as for `AdaptiveEngine`.
  """

  def __init__(self, cfg: AdapLeRConfig, params: dict, *, batch_size: int = 32,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int = 512,
               device: jax.Device | None = None, ffn_chunk_rows: int | None | str = "auto"):
    super().__init__(cfg, batch_size=batch_size, buckets=buckets, max_length=max_length,
                     device=device, ffn_chunk_rows=ffn_chunk_rows)
    params = params.get("model", params)
    self._params = self._put({"bert": params["bert"], "head": params["head"]})
    self._forward = jax.jit(functools.partial(packing.full_forward, cfg.encoder,
                                              cfg.num_labels, chunk_rows=self.ffn_chunk_rows))

  @property
  def compiled_shapes(self) -> int:
    """Distinct (batch, width) shapes the full forward has compiled for so far."""
    return self._forward._cache_size()  # pylint: disable=protected-access

  @property
  def compile_counts(self) -> dict[str, int]:
    return {"forward": self.compiled_shapes}

  def warmup(self) -> None:
    """Compiles every (batch, bucket) shape ahead of time, on placeholder inputs."""
    for width in self.widths:
      ids = np.zeros((self.batch_size, width), np.int32)
      n = np.full((self.batch_size,), width, np.int32)
      jax.block_until_ready(self._forward(self._params, ids, ids, n))

  def _run_batch(self, batch: Batch, rationales: bool) -> dict[str, Any]:
    lengths = batch["attention_mask"].sum(axis=1, dtype=np.int32)
    logits = self._forward(self._params, batch["input_ids"], batch["token_type_ids"], lengths)
    kept = np.repeat(lengths[:, None], self.cfg.num_layers, axis=1)
    out = {"logits": np.asarray(logits), "kept": kept,
           "slots": np.full((self.cfg.num_layers,), batch["input_ids"].size)}
    if rationales:  # every layer runs on every token; there are no predictor scores.
      out["positions"] = [[np.arange(n)] * self.cfg.num_layers for n in lengths]
      out["scores"] = [None] * len(lengths)
    return out


def per_example_run(cfg: AdapLeRConfig, params: dict, data: TokenizedDataset, *,
                    progress: bool = False) -> EngineResult:
  """The reference: `hard_forward` on each example alone, unpadded (always with rationales)."""
  num = len(data)
  logits = np.zeros((num, cfg.num_labels), np.float32)
  kept = np.zeros((num, cfg.num_layers), np.int32)
  positions, scores, seconds = [], [], []
  rows = range(num)
  start = time.perf_counter()
  for i in _progress(rows, num, progress, "per_example_run"):
    t0 = time.perf_counter()
    n = int(data.lengths[i])
    result = hard_forward(cfg, params, data.input_ids[i, :n], data.token_type_ids[i, :n])
    logits[i], kept[i] = result.logits, result.kept_counts
    positions.append(result.kept_positions)
    scores.append(result.scores)
    seconds.append(time.perf_counter() - t0)
  return EngineResult(logits, kept, np.asarray(data.lengths).copy(), positions, scores,
                      time.perf_counter() - start, np.asarray(seconds), kept.sum(axis=0))
