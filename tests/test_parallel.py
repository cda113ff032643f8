"""Data parallelism over 4 CPU devices (XLA_FLAGS in a subprocess) against 1 device.

The 4-device checks run once, in one subprocess (`parallel_checks.py four`): one fine-tuning,
AdapLeR and LengthDrop step, each also with the span QA head, on 4 devices and on 1; every
phase of a tiny run on 4 devices; a batch size that does not split. A second, 1-device
subprocess restores the 4-device run's checkpoints, evaluates them to the same logits and
recomputes its saliency. The `slow` test fine-tunes in 2 processes of 2 devices (a local
`jax.distributed` cluster) and compares with the 1-process 4-device run.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapler_jax.train import parallel
from adapler_jax.train.state import create_train_state
from tests.test_pipeline import tiny_backbone  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "parallel_checks.py"
TOL = 1e-5


def _xla_flags(devices: int) -> str:
  """The session's XLA_FLAGS (conftest: fast compiles, which leave the SPMD partitioning and
  collectives under test as they are) with `devices` CPU devices."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def _run(devices: int, *args) -> dict:
  env = {**os.environ, "XLA_FLAGS": _xla_flags(devices), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def four(tiny_backbone, tmp_path_factory):  # noqa: F811
  workdir = tmp_path_factory.mktemp("parallel") / "run"
  return workdir, _run(4, "four", tiny_backbone, workdir)


def test_finetune_step_is_device_count_invariant(four):
  _, r = four
  assert r["finetune_update"] > 100 * TOL  # the step moved the params ...
  assert r["finetune_other_key"] > 100 * TOL  # ... and dropout is on.
  assert r["finetune_4_vs_none"] <= TOL
  assert r["finetune_out_spec"] == ["()"]  # the state stays replicated.


def test_adapler_step_is_device_count_invariant(four):
  _, r = four
  assert r["adapler_update"] > 100 * TOL
  assert r["adapler_4_vs_none"] <= TOL


def test_lengthdrop_step_is_device_count_invariant(four):
  _, r = four
  assert r["lat_update"] > 100 * TOL
  assert r["lat_4_vs_none"] <= TOL


@pytest.mark.parametrize("step", ["span_finetune", "span_adapler", "span_lat"])
def test_span_qa_steps_are_device_count_invariant(four, step):
  _, r = four
  assert r[f"{step}_update"] > 100 * TOL
  assert r[f"{step}_4_vs_none"] <= TOL


def test_every_training_phase_runs_on_4_devices(four):
  workdir, r = four
  assert r["mesh"] == 4 and r["params_spec"] == ["()"]
  assert (workdir / "saliency.npz").exists() and r["adapler_steps"] == [2]
  # The engine runs where it is told: its outputs live on the last device, as on the first.
  assert r["engine_devices"] == [3] and r["engine_device_diff"] <= TOL


@pytest.fixture(scope="module")
def restored(four, tiny_backbone):  # noqa: F811
  workdir, _ = four
  return _run(1, "restore", tiny_backbone, workdir)


def test_checkpoint_from_4_devices_restores_and_evaluates_on_1(restored):
  r = restored
  assert r["mesh"] == 1
  assert r["logits_diff"] <= TOL  # predict on 4 devices (saved) vs on 1 device
  assert r["metric"] == pytest.approx(r["saved_metric"])
  assert r["adapler_leaves"] > 0


def test_saliency_on_4_devices_equals_1_device(restored):
  assert restored["saliency_max"] > 100 * TOL
  assert restored["saliency_diff"] <= TOL


def test_batch_size_not_divisible_by_devices_is_one_line(four):
  _, r = four
  assert r["error"] == r["record_error"] == (
      "train.batch_size 30 is not divisible by the 4 devices of the data mesh; pick a "
      "multiple of 4 (--config.train.batch_size=32)")
  assert not r["workdir_written"]  # refused before config.json, not after it.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # 2 more processes: ~40 s of CPU.
def test_two_processes_with_2_devices_train_like_one_with_4(four, tiny_backbone,  # noqa: F811
                                                            tmp_path):
  reference, _ = four
  port = _free_port()
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": _xla_flags(2)}
    procs.append(subprocess.Popen(
        [sys.executable, str(SCRIPT), "multihost", str(tiny_backbone), str(tmp_path / "run"),
         str(reference)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  assert sorted(r["process"] for r in results) == [0, 1]
  for r in results:
    assert r["step"] == 2 and r["params_diff"] <= TOL
    assert r["saliency_saved"] and 0 <= r["lat_metric"] <= 1
    assert r["adapler_steps"] == [2]  # the AdapLeR phase trains on 2 processes too.
  assert results[0]["lat_metric"] == results[1]["lat_metric"]
  # Metrics are logged by process 0 alone: no row twice.
  rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["phase"], r["step"], tuple(sorted(r))) for r in rows]
  assert rows and len(set(keys)) == len(keys)


class _Mesh:
  size = 8


@pytest.mark.parametrize("batch_size, fix", [(4, 8), (30, 32), (12, 16)])
def test_check_batch_size_suggests_the_next_multiple(batch_size, fix):
  with pytest.raises(parallel.UserError, match=rf"--config.eval.batch_size={fix}\)$"):
    parallel.check_batch_size(batch_size, _Mesh(), "eval.batch_size")
  parallel.check_batch_size(16, _Mesh(), "eval.batch_size")
  parallel.check_batch_size(30, None, "eval.batch_size")


def test_no_distributed_start_on_a_single_machine(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri",
               "TPU_WORKER_HOSTNAMES", parallel.DISTRIBUTED_ENV):
    monkeypatch.delenv(name, raising=False)
  assert parallel._cluster_processes() is None
  assert not parallel.maybe_initialize_distributed()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-0")  # a single-host TPU VM
  assert not parallel.maybe_initialize_distributed()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-0,host-1")
  assert parallel._cluster_processes() == 2
  monkeypatch.setenv(parallel.DISTRIBUTED_ENV, "0")
  assert not parallel.maybe_initialize_distributed()


def test_a_partial_train_step_jits_on_a_mesh():
  """The replicated extra arguments are counted from the step's signature, so a
  `functools.partial` of a step (which has no `__code__`) jits too."""
  import functools  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top

  def step(state, batch, lam, scale):
    new = state + scale * lam * batch.sum()
    return new, {"sum": new}

  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  jitted = parallel.jit_train_step(functools.partial(step, scale=2.0), mesh, donate=False)
  state, metrics = jitted(jnp.float32(1.0), jnp.ones((4, 3)), jnp.float32(0.5))
  assert float(state) == float(metrics["sum"]) == 13.0


def test_a_local_copy_outlives_a_step_that_donates_the_original():
  """Evaluation reads a copy of the params while training goes on: a donating step may
  free the original's buffers, never the copy's (on one device as on several)."""
  params = {"w": jnp.arange(4.0), "step": 3}
  copy = parallel.local_copy(params)
  jax.jit(lambda p: p["w"] + 1, donate_argnums=0)({"w": params["w"]})
  np.testing.assert_array_equal(copy["w"], [0.0, 1.0, 2.0, 3.0])
  assert copy["step"] == 3


def test_a_donated_train_state_leaves_the_callers_params_and_key_alive():
  """Train steps donate the state; the arrays it was made from stay the caller's."""
  params, key = {"w": jnp.arange(4.0)}, jax.random.key(7)
  state = create_train_state(params, optax.sgd(0.1), key)
  jax.jit(lambda s: jax.tree.map(lambda a: a + 1, s), donate_argnums=0)(state)
  assert not params["w"].is_deleted() and not key.is_deleted()
  assert jax.random.key_data(key).tolist() == jax.random.key_data(jax.random.key(7)).tolist()


def test_read_behind_reads_each_batch_once_the_next_is_dispatched():
  events = []

  def dispatched():
    for i in range(3):
      events.append(("dispatch", i))
      yield i, {"out": np.full(2, i)}

  for i, out in parallel.read_behind(dispatched()):
    events.append(("read", i))
    assert out["out"].tolist() == [i, i]
  assert events == [("dispatch", 0), ("dispatch", 1), ("read", 0), ("dispatch", 2),
                    ("read", 1), ("read", 2)]
