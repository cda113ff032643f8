"""Data parallelism: `jax.jit` over a 1-D device mesh, on one host or many.

Every phase runs on a mesh with one axis, `data`, over all devices of all processes. Params
and optimizer state are replicated; each batch is split along its first axis::

  maybe_initialize_distributed()            # before any other JAX call
  mesh = make_data_mesh()
  check_batch_size(config.train.batch_size, mesh, "train.batch_size")
  state = replicate(state, mesh)
  for batch in train_batches(data, batch_size, seed, epoch, num_shards=jax.process_count(),
                             shard_index=jax.process_index()):
    state, metrics = step(state, shard_batch(batch, mesh))

The steps are jitted with the state replicated in and out and the batch sharded, so the
partitioner inserts the gradient all-reduce. Dropout masks are drawn for the whole global
batch from the step's key; JAX's random bits do not depend on how an array is sharded, and
with `jax_threefry_partitionable` (the default since JAX 0.5) each device generates only its
own rows' bits. So a step gives the same parameters on one device or many, up to the order of
floating-point sums (`tests/test_parallel.py` checks 1e-5).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from adapler_jax.data import eval_batches
from adapler_jax.errors import UserError

DATA_AXIS = "data"
PyTree = Any

# Opt-in / opt-out switch for environments JAX detects only by probing (TPU pods, MPI, k8s).
DISTRIBUTED_ENV = "ADAPLER_DISTRIBUTED"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def _cluster_processes() -> int | None:
  """Process count announced by a launcher JAX auto-detects, or None when there is none."""
  # An srun step (a batch script alone lacks SLURM_STEP_NODELIST): the variables JAX reads.
  if all(k in os.environ for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                   "SLURM_PROCID", "SLURM_LOCALID")):
    return _env_int("SLURM_STEP_NUM_TASKS") or _env_int("SLURM_NTASKS")
  if "OMPI_MCA_orte_hnp_uri" in os.environ:  # Open MPI's mpirun.
    return _env_int("OMPI_COMM_WORLD_SIZE")
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES")  # TPU pod slices (GKE, queued resources).
  if hosts:
    return len(hosts.split(","))
  return None


def maybe_initialize_distributed() -> bool:
  """Starts `jax.distributed` when the environment describes a multi-process job.

  Must run before any other JAX call. Initializes when one of these holds:
    * `JAX_COORDINATOR_ADDRESS` is set (with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, or
      a launcher that provides them);
    * a Slurm step, an Open MPI `mpirun` or a TPU pod slice with more than one process;
    * `ADAPLER_DISTRIBUTED=1` (JAX auto-detects the rest; e.g. multi-host Cloud TPU VMs).
  `ADAPLER_DISTRIBUTED=0` turns it off. A plain single machine starts nothing.

  Returns:
    Whether `jax.distributed` is initialized after the call.
  """
  if jax.distributed.is_initialized():
    return True
  switch = os.environ.get(DISTRIBUTED_ENV, "").strip().lower()
  if switch in ("0", "false", "no"):
    return False
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"),
                               process_id=_env_int("JAX_PROCESS_ID"))
  elif switch in ("1", "true", "yes") or (_cluster_processes() or 1) > 1:
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local of %d devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def make_data_mesh(devices=None) -> Mesh:
  """A 1-D mesh `('data',)` over `devices` (default: every device of every process).

  The axis is `AxisType.Auto`: the model code carries no sharding annotations, and the
  partitioner derives the collectives (the gradient all-reduce) from the in/out shardings.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of params, optimizer state and scalars: a full copy on every device."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: split along the first axis over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh | None, name: str) -> None:
  """Raises a one-line `UserError` unless `batch_size` splits evenly over the mesh."""
  if mesh is None:
    return
  n = mesh.size
  if batch_size % n:
    fix = max(n, math.ceil(batch_size / n) * n)
    raise UserError(f"{name} {batch_size} is not divisible by the {n} devices of the data "
                    f"mesh; pick a multiple of {n} (--config.{name}={fix})")


def _put_replicated(x, sharding: NamedSharding):
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  # Several processes: every one holds the same value (a host array or a replicated array).
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """`tree` (host or device arrays, equal on every process) replicated over the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _put_replicated(x, sharding), tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Process-local rows -> global arrays sharded along `data`.

  Each process passes its own rows (e.g. `train_batches(..., num_shards=jax.process_count(),
  shard_index=jax.process_index())`); the global batch is their concatenation, with
  `jax.process_count()` times as many rows. On one process it is the batch itself.
  """
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def shard_global_batch(batch: dict, mesh: Mesh) -> dict:
  """A batch every process holds in full (e.g. `eval_batches`) -> global arrays sharded along
  `data`; each process places only the rows of its own devices."""
  if jax.process_count() == 1:
    return shard_batch(batch, mesh)
  sharding = data_sharded(mesh)

  def put(v):
    v = np.asarray(v)
    return jax.make_array_from_callback(v.shape, sharding, lambda index: v[index])
  return {k: put(v) for k, v in batch.items()}


def local_copy(tree: PyTree) -> PyTree:
  """Replicated arrays -> copies on this process's first device, for single-device code
  (e.g. hard-removal inference) that mixes them with host inputs. The copies own their
  buffers, so a later step that donates the state leaves them intact."""
  device = jax.local_devices()[0]

  def copy(x):
    if not isinstance(x, jax.Array):
      return x
    local = x.addressable_data(0) if len(x.sharding.device_set) > 1 else x
    return jax.device_put(local, device, may_alias=False)
  return jax.tree.map(copy, tree)


def sync_processes(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op on one process), e.g. before
  others read a file that process 0 wrote."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@functools.lru_cache(maxsize=None)
def jit_on_mesh(fn, mesh: Mesh, static_argnums: tuple[int, ...] = ()):
  """`fn` jitted to return its outputs replicated over `mesh` (one cached jit per pair), so
  every process can read them; inputs keep the shardings they come with."""
  return jax.jit(fn, static_argnums=static_argnums, out_shardings=replicated(mesh))


def jit_train_step(step, mesh: Mesh | None, *, donate: bool = True):
  """`jax.jit` of `step(state, batch, *replicated) -> (state, metrics)`, state donated; with
  a `mesh`, data-parallel: the state (and any further arguments) replicated in and out, the
  batch split along `data`."""
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(step, donate_argnums=donate_argnums)
  rep = replicated(mesh)
  positional = [p for p in inspect.signature(step).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  extra = len(positional) - 2  # (also for a functools.partial of a step.)
  return jax.jit(step, donate_argnums=donate_argnums,
                 in_shardings=(rep, data_sharded(mesh)) + (rep,) * extra, out_shardings=rep)


def map_eval_batches(fn, encoder, head, params: PyTree, data, batch_size: int,
                     keys: tuple[str, ...], mesh: Mesh | None = None):
  """Yields `(dataset rows, output rows)` of `fn(encoder, head, params, inputs)` over
  the length-bucketed evaluation batches of `data`, filler rows dropped.

  `fn` is jitted with `encoder` and `head` (a `models.heads` head, hashable) static;
  `inputs` holds the batch's `keys`.
  With a `mesh`, each batch is split over its devices (`batch_size` must divide by their
  number), params are replicated and every process gets every output row.
  Each batch is dispatched before the previous one's output is read, so the device
  never waits on the host preparing the next.
  """
  if mesh is None:
    run = _jit_static_config(fn)
  else:
    check_batch_size(batch_size, mesh, "batch_size")
    params = replicate(params, mesh)
    run = jit_on_mesh(fn, mesh, (0, 1))

  def dispatched():
    for batch in eval_batches(data, batch_size):
      inputs = {k: batch[k] for k in keys}
      if mesh is not None:
        inputs = shard_global_batch(inputs, mesh)
      yield batch, run(encoder, head, params, inputs)

  for batch, out in read_behind(dispatched()):
    real = batch["real"]
    yield batch["index"][real], np.asarray(out)[real]


def read_behind(dispatched: Iterable[tuple[Any, PyTree]]) -> Iterator[tuple[Any, PyTree]]:
  """`(item, device outputs)` pairs as `(item, host outputs)`, each read only once the next
  pair is dispatched: the device computes one batch while the host prepares the next and
  reads the last."""
  read = lambda out: jax.tree.map(np.asarray, out)  # a replicated array: the local copy.
  pending = None
  for item, out in dispatched:
    if pending is not None:
      yield pending[0], read(pending[1])
    pending = item, out
  if pending is not None:
    yield pending[0], read(pending[1])


@functools.lru_cache(maxsize=None)
def _jit_static_config(fn):
  return jax.jit(fn, static_argnums=(0, 1))
