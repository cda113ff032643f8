"""Checkpoints: a thin wrapper over orbax's `CheckpointManager` (v0 API).

Each step directory holds three items, written atomically by orbax:
``state`` (a pytree of arrays, `StandardSave`), ``config`` (a JSON dict,
`JsonSave`) and ``checksums`` (a CRC-32 of every array, verified on restore),
plus the orbax-managed ``metrics`` JSON when metrics are given.
All file writes go through orbax, which writes from the primary process only
and synchronises processes, so every process calls the same methods.

Retention is an orbax `preservation_policy`: any of
``LatestN(keep_latest)`` and ``BestN(keep_best by best_metric)``.

Fine-tuning (3 best by dev metric, plus the latest for resuming)::

  ckpt = Checkpointer(workdir, keep_latest=1, keep_best=3, best_metric="accuracy")
  ckpt.save(step, state, metrics={"accuracy": 0.91}, extra_json=config_dict)
  state, config = ckpt.restore(target=abstract_state)   # latest
  best = ckpt.best_steps(3)
  params = ckpt.restore_params(best[0])  # its 'params' alone, as inference needs

AdapLeR training (every epoch kept; the caller selects from stored metrics)::

  ckpt = Checkpointer(workdir)
  ckpt.save(epoch, state, metrics={"accuracy": 0.9, "flops_speedup": 2.1})
  metrics = {s: ckpt.metrics(s) for s in ckpt.all_steps()}
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
import os
from typing import Any, Mapping

from absl import logging

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from adapler_jax.errors import UserError
from adapler_jax.files import array_crc32
from adapler_jax.train.orbax_reports import silence_abandoned_reads

PyTree = Any
STATE = "state"
CONFIG = "config"
CHECKSUMS = "checksums"
PARAMS = "params"  # the state subtree inference reads (`restore_params`).
DAMAGED_SUFFIX = ".damaged"
_MAX_LISTED = 3


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing or does not fit the model."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files cannot be read or whose arrays fail their checksums."""

  def __init__(self, message: str, problem: str = ""):
    super().__init__(message)
    self.problem = problem or message


def _to_json(tree: Any) -> Any:
  """Turns numpy/jax values in a JSON-like tree into Python numbers and lists."""
  def leaf(v):
    if isinstance(v, (np.ndarray, np.generic, jax.Array)):
      return np.asarray(v).tolist()
    return v
  return jax.tree.map(leaf, tree)


def _shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """Maps '/'-joined leaf paths to shapes; containers of any kind compare equal."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
      jax.tree_util.keystr(path, simple=True, separator="/"):
          tuple(getattr(x, "shape", np.shape(x)))
      for path, x in leaves
  }


def _crc32(x: Any) -> str | None:
  """CRC-32 of an array's bytes (one replica of a replicated array); None for an array
  sharded over other processes, which this process cannot read whole."""
  if isinstance(x, jax.Array):
    if not (x.is_fully_addressable or x.is_fully_replicated):
      return None
    x = x.addressable_data(0) if x.is_fully_replicated else x
  return array_crc32(x)


def _checksums_by_path(tree: PyTree) -> dict[str, str | None]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): _crc32(x)
          for path, x in leaves}


def _first_line(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
  return f"{type(e).__name__}: {text}"[:200]


def _listing(names: list[str]) -> str:
  more = len(names) - _MAX_LISTED
  return ", ".join(names[:_MAX_LISTED]) + (f" (and {more} more)" if more > 0 else "")


def _metric_getter(metric: str, mode: str):
  """Metric value for ranking; a checkpoint without it ranks last."""
  missing = -math.inf if mode == "max" else math.inf

  def get(metrics: Mapping[str, Any]) -> float:
    return float(metrics[metric]) if metric in metrics else missing
  return get


def _no_ranking(metrics: Mapping[str, Any]) -> float:
  del metrics
  return 0.0


class Checkpointer:
  """Saves and restores training state with metrics and a JSON config.

  Args:
    directory: root directory; one sub-directory per step.
    keep_latest: keep the most recent `keep_latest` steps; None keeps every step
      (then `keep_best` changes nothing).
    keep_best: also keep the `keep_best` steps with the best `best_metric`.
      Steps saved without that metric are kept only while among the latest.
    best_metric: metric name used by `keep_best` and `best_steps`.
    best_mode: "max" (higher is better) or "min".
    enable_async_checkpointing: write in a background thread; `save` returns
      once the arrays are copied. Call `wait()` or `close()` before reading.
    read_only: never create `directory` (a missing one has no steps).
  """

  def __init__(self,
               directory: str | os.PathLike[str],
               *,
               keep_latest: int | None = None,
               keep_best: int = 0,
               best_metric: str | None = None,
               best_mode: str = "max",
               enable_async_checkpointing: bool = False,
               read_only: bool = False):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if keep_best and best_metric is None:
      raise ValueError("keep_best needs best_metric (the metric to rank by)")
    directory = os.fspath(directory)
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self.best_mode = best_mode
    self._keep_best = keep_best

    policies = [pp.LatestN(n=keep_latest)]
    if keep_best:
      policies.append(pp.BestN(
          get_metric_fn=_metric_getter(best_metric, best_mode),
          reverse=best_mode == "min",
          n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        # Orbax writes metrics only when best_fn is set; retention itself is
        # decided by preservation_policy above.
        best_fn=(_metric_getter(best_metric, best_mode) if best_metric
                 else _no_ranking),
        best_mode=best_mode,
        enable_async_checkpointing=enable_async_checkpointing,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
    )
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(STATE, ocp.args.StandardSave)
    registry.add(STATE, ocp.args.StandardRestore)
    registry.add(CONFIG, ocp.args.JsonSave)
    registry.add(CONFIG, ocp.args.JsonRestore)
    registry.add(CHECKSUMS, ocp.args.JsonSave)
    registry.add(CHECKSUMS, ocp.args.JsonRestore)
    self._manager = ocp.CheckpointManager(
        directory, options=options, handler_registry=registry)

  @property
  def directory(self) -> str:
    """Root directory of the checkpoints."""
    return str(self._manager.directory)

  def save(self,
           step: int,
           state: PyTree,
           metrics: Mapping[str, Any] | None = None,
           extra_json: Mapping[str, Any] | None = None,
           *,
           force: bool = False) -> bool:
    """Saves `state` with `metrics` and `extra_json`; applies retention.

    Returns False (writing nothing) when `step` is not after the latest saved
    step, unless `force`. Metric and JSON values may be numpy/jax scalars.
    """
    if metrics is not None:
      metrics = _to_json(dict(metrics))
      if self._keep_best and self.best_metric not in metrics:
        raise ValueError(
            f"metrics {sorted(metrics)} lack {self.best_metric!r}, which "
            "ranks checkpoints for keep_best")
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        CONFIG: ocp.args.JsonSave(_to_json(dict(extra_json or {}))),
        CHECKSUMS: ocp.args.JsonSave(_checksums_by_path(state)),
    })
    return self._manager.save(int(step), args=args, metrics=metrics,
                              force=force)

  def restore(self, step: int | None = None,
              target: PyTree | None = None, *,
              sharding: jax.sharding.Sharding | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores (state, extra_json) at `step` (default: the latest).

    With `target` (concrete arrays or `jax.ShapeDtypeStruct`s, shardings
    honoured), the state takes its tree structure, shapes and dtypes; without
    it, the state comes back as nested dicts/lists of arrays, each placed with
    `sharding` (default: this process's first device), whatever the devices
    it was saved from.

    Every array is checked against the checksum saved with it (checkpoints
    saved before checksums existed are restored unchecked).

    Raises:
      CheckpointError: no checkpoint, or shapes/structure unlike `target`.
      DamagedCheckpointError: unreadable files or arrays unlike their checksums.
    """
    step = self._resolve_step(step)

    def read():
      tree = target
      if tree is not None:
        self._check_target(step, tree)
      else:
        tree = self._saved_tree(step, sharding)
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardRestore(tree),
          CONFIG: ocp.args.JsonRestore(),
      }))
      return restored[STATE], dict(restored[CONFIG] or {})

    return self._read_verified(step, read)

  def restore_params(self, step: int | None = None, *,
                     sharding: jax.sharding.Sharding | None = None) -> PyTree:
    """The ``params`` subtree of the state at `step` (default: the latest), as nested
    dicts/lists of arrays placed with `sharding` (default: this process's first device).

    What inference needs: only those arrays are read and checked against their
    checksums, so an AdamW state reads a third of what `restore` reads, and damage to
    the optimizer moments does not stop an evaluation or an export.

    Raises:
      CheckpointError: no checkpoint, or a state without ``params``.
      DamagedCheckpointError: unreadable parameter files, or parameters unlike their
        checksums.
    """
    step = self._resolve_step(step)

    def read():
      tree = self._saved_tree(step, sharding)
      if tree is None:  # non-array leaves, which orbax restores as saved: read it all.
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(None)}))
        return restored[STATE], None
      target = {PARAMS: self._params_of(step, tree)}
      with ocp.PyTreeCheckpointer() as reader:  # `partial_restore`: those arrays alone.
        restored = reader.restore(
            os.path.join(self._step_dir(step), STATE),
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
      return restored, None

    state, _ = self._read_verified(step, read)
    return self._params_of(step, state)

  def _params_of(self, step: int, state: PyTree) -> PyTree:
    if not isinstance(state, Mapping) or PARAMS not in state:
      raise CheckpointError(
          f"checkpoint {self._step_dir(step)} holds no '{PARAMS}' arrays; fix: pass a "
          "checkpoint directory that train.py wrote")
    return state[PARAMS]

  def restore_latest_intact(self, target: PyTree | None = None, *,
                            sharding: jax.sharding.Sharding | None = None
                            ) -> tuple[int, PyTree, dict[str, Any]] | None:
    """(step, state, extra_json) of the latest checkpoint that restores intact.

    A damaged later checkpoint is moved aside to `<step>.damaged` (`.damaged.2`, ...
    when that is taken; so training can save that step again) with a one-line warning. None when there is no
    checkpoint at all.

    Raises:
      DamagedCheckpointError: every checkpoint is damaged.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        state, extra = self.restore(step, target, sharding=sharding)
      except DamagedCheckpointError as e:
        damaged.append((step, e.problem, self._move_aside(step)))
        continue
      for bad, problem, moved_to in damaged:
        logging.warning("checkpoint %s %s; moved it to %s and resumed from step %d",
                        self._step_dir(bad), problem, moved_to, step)
      return step, state, extra
    if damaged:
      raise DamagedCheckpointError(
          f"no intact checkpoint left in {self.directory} (damaged steps "
          f"{_listing([str(s) for s, _, _ in damaged])} moved to "
          f"{_listing([os.path.basename(m) for _, _, m in damaged])}); "
          f"fix: delete {self.directory} and rerun to train from the start")
    return None

  def check_fits(self, target: PyTree, step: int | None = None, *,
                 under: str | None = None) -> None:
    """One-line CheckpointError unless `target` (arrays or shape structs) fits
    the saved state at `step` (default: the latest), or its `under` subtree."""
    self._check_target(self._resolve_step(step), target, under)

  def fingerprint(self, steps: list[int]) -> str:
    """A digest of `steps` and the checksums saved with them: it changes when
    any of those checkpoints is saved again with other values."""
    digest = hashlib.sha256()
    for step in steps:
      digest.update(json.dumps([int(step), self._saved_checksums(step)],
                               sort_keys=True).encode())
    return digest.hexdigest()[:16]

  def restore_json(self, step: int | None = None) -> dict[str, Any]:
    """Restores only the JSON item (e.g. the config needed to build the model)."""
    step = self._resolve_step(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return dict(restored[CONFIG] or {})

  def recorded(self, key: str) -> Any:
    """`key` of the JSON item saved with the latest step; None when no step is saved or
    it recorded no `key`."""
    return self.restore_json().get(key) if self.latest_step() is not None else None

  def latest_step(self) -> int | None:
    """The most recent saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def metrics(self, step: int) -> dict[str, Any] | None:
    """Metrics saved with `step`, or None."""
    self.wait()
    return self._manager.metrics(step)

  def best_steps(self, k: int | None = None, metric: str | None = None,
                 mode: str | None = None) -> list[int]:
    """Up to `k` steps, best first, among steps whose metrics have `metric`.

    `metric` and `mode` default to `best_metric` and `best_mode`. Ties go to
    the later step.
    """
    metric = metric or self.best_metric
    mode = mode or self.best_mode
    if metric is None:
      raise ValueError("best_steps needs a metric name")
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    scored = []
    for step in self.all_steps():
      m = self.metrics(step)
      if m is not None and metric in m:
        scored.append((float(m[metric]), step))
    sign = 1.0 if mode == "max" else -1.0
    scored.sort(key=lambda vs: (sign * vs[0], vs[1]), reverse=True)
    steps = [s for _, s in scored]
    return steps if k is None else steps[:k]

  def wait(self) -> None:
    """Blocks until pending (async) saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -------------------------------------------------------------------------

  def _resolve_step(self, step: int | None) -> int:
    self.wait()
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(
            f"no checkpoint in {self.directory}; fix: train first or point to "
            "a directory that holds checkpoints")
      return steps[-1]
    if step not in steps:
      raise CheckpointError(
          f"checkpoint {self.directory} has no step {step} (steps: "
          f"{_listing([str(s) for s in steps]) or 'none'}); fix: pick one of "
          "the saved steps")
    return int(step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _damaged(self, step: int, problem: str) -> DamagedCheckpointError:
    others = [s for s in self.all_steps() if s != step]
    instead = ("an earlier checkpoint is used" if others
               else "it is the phase's only checkpoint: then train that phase again")
    return DamagedCheckpointError(
        f"checkpoint {self._step_dir(step)} {problem}; fix: delete that step "
        f"directory ({instead}) or rerun training in a new workdir", problem)

  def _read_verified(self, step: int, read):
    """`read()` -> (state, extra), its arrays checked against their saved checksums; a
    failed read or check is a one-line DamagedCheckpointError naming the step."""
    silence_abandoned_reads()  # before the reads start: see its docstring.
    try:
      state, extra = read()
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      problem = f"cannot be read ({_first_line(e)})"
    else:
      self._verify(step, state)
      return state, extra
    gc.collect()  # the abandoned reads are finalised now, their reports dropped.
    raise self._damaged(step, problem)

  def _saved_checksums(self, step: int) -> dict[str, str | None] | None:
    """The checksums saved with `step`, or None for a checkpoint without them."""
    if not os.path.isdir(os.path.join(self._step_dir(step), CHECKSUMS)):
      return None
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{CHECKSUMS: ocp.args.JsonRestore()}))
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, f"has unreadable checksums ({_first_line(e)})") from None
    return dict(restored[CHECKSUMS] or {})

  def _verify(self, step: int, state: PyTree) -> None:
    """DamagedCheckpointError unless `state` matches the checksums saved with it."""
    saved = self._saved_checksums(step)
    if saved is None:
      return
    got = _checksums_by_path(state)
    unrecorded = sorted(p for p, c in got.items() if c is not None and p not in saved)
    if unrecorded:  # a checksum record that was emptied or cut checks nothing.
      raise self._damaged(step, f"is damaged: its checksum record lacks {len(unrecorded)} of "
                          f"{len(got)} arrays ({_listing(unrecorded)})")
    bad = sorted(p for p, c in got.items()
                 if c is not None and saved.get(p) is not None and saved[p] != c)
    if bad:
      raise self._damaged(step, f"is damaged: {len(bad)} of {len(got)} arrays differ "
                          f"from their saved checksums ({_listing(bad)})")

  def _move_aside(self, step: int) -> str:
    """Moves damaged `step` to the first free `<step>.damaged`, `<step>.damaged.2`, ... (a
    step saved again can be damaged again); returns where it went."""
    base = self._step_dir(step) + DAMAGED_SUFFIX
    names = itertools.chain([base], (f"{base}.{n}" for n in itertools.count(2)))
    moved_to = next(path for path in names if not os.path.exists(path))
    if jax.process_count() > 1:  # every process has chosen before process 0 renames.
      multihost_utils.sync_global_devices(f"move aside {step}")
    if jax.process_index() == 0:
      os.replace(self._step_dir(step), moved_to)
    self._manager.reload()
    return moved_to

  def _saved_tree(self, step: int, sharding: jax.sharding.Sharding | None
                  ) -> PyTree | None:
    """The saved state as `jax.ShapeDtypeStruct`s placed with `sharding`.

    None (orbax then uses the saved shardings) when the state holds
    non-array leaves.
    """
    item = self._manager.metadata(step).item_metadata[STATE]
    tree = getattr(item, "tree", item)
    leaves = jax.tree.leaves(tree)
    if not all(isinstance(x, ocp.metadata.ArrayMetadata) for x in leaves):
      return None
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        tree)

  def _check_target(self, step: int, target: PyTree, under: str | None = None) -> None:
    """Raises a one-line CheckpointError when `target` does not fit `step`
    (or its subtree `under`)."""
    item = self._manager.metadata(step).item_metadata[STATE]
    saved = _shapes_by_path(getattr(item, "tree", item))
    if under is not None:
      prefix = under + "/"
      saved = {p[len(prefix):]: v for p, v in saved.items() if p.startswith(prefix)}
    wanted = _shapes_by_path(target)
    where = f"checkpoint {self.directory} step {step}"
    fix = ("fix: use the model config the checkpoint was saved with "
           "(see its config item), or another checkpoint directory")
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    if missing or extra:
      parts = []
      if missing:
        parts.append(f"lacks {_listing(missing)}")
      if extra:
        parts.append(f"has {_listing(extra)} that the model does not")
      raise CheckpointError(
          f"{where} does not match the model's tree: the checkpoint "
          f"{'; it '.join(parts)}; {fix}")
    # Shallow paths first: model parameters before their optimizer moments.
    bad = sorted((p for p in wanted if saved[p] != wanted[p]),
                 key=lambda p: (p.count("/"), p))
    if bad:
      have = _listing([f"{p} {saved[p]}" for p in bad])
      want = _listing([f"{p} {wanted[p]}" for p in bad])
      raise CheckpointError(
          f"{where} has shapes {have} that do not match the model's {want}; "
          f"{fix}")
