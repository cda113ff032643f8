"""Checks run by `test_parallel.py` in a subprocess, whose device count is set by XLA_FLAGS.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_checks.py \\
      four BACKBONE_DIR WORKDIR      # steps + train + bad_batch_size
  python tests/parallel_checks.py restore BACKBONE_DIR WORKDIR   # 1 device, after `train`
  JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1> \\
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/parallel_checks.py \\
      multihost BACKBONE_DIR WORKDIR REFERENCE_WORKDIR   # in 2 processes, after `train`

BACKBONE_DIR is a tiny BERT directory (`test_pipeline.tiny_backbone`). Each command prints
one JSON line (the last line of stdout) that the test reads.
"""

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from adapler_jax import pipeline
from adapler_jax.errors import UserError
from adapler_jax.data.batching import eval_batches
from adapler_jax.eval import report
from adapler_jax.infer import AdaptiveEngine
from adapler_jax.models import adapler, heads
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.pipeline import lat_phases
from adapler_jax.pipeline.phases import SALIENCY_FILE, adapler_checkpointer
from adapler_jax.train import adapler_step, classifier, lat_step, optim, parallel
from adapler_jax.train import saliency as saliency_lib
from adapler_jax.train.checkpoints import Checkpointer
from adapler_jax.train.state import create_train_state

ENCODER = EncoderConfig.tiny()
NUM_LABELS = 3
BATCH, WIDTH = 16, 16


def _batch(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, WIDTH + 1, BATCH)
  mask = np.arange(WIDTH)[None] < lengths[:, None]
  ids = rng.integers(3, ENCODER.vocab_size, (BATCH, WIDTH)) * mask
  ids[:, 0] = 1
  return {"input_ids": ids.astype(np.int32), "token_type_ids": np.zeros_like(ids, np.int32),
          "attention_mask": mask, "labels": rng.integers(0, NUM_LABELS, BATCH).astype(np.int32)}


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def _one_step_each(meshes: dict, make_step, params, opt, seed: int, batch: dict, *args) -> dict:
  """{mesh name: (state, metrics)}: one step from the same state, batch and key on each mesh
  (None: the single-device code path). Each state gets its own key: steps donate it."""
  out = {}
  for name, mesh in meshes.items():
    state, inputs = create_train_state(params, opt, jax.random.key(seed)), batch
    if mesh is not None:
      state, inputs = parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)
    out[name] = make_step(mesh)(state, inputs, *args)
  return out


def steps() -> dict:
  """One fine-tuning, AdapLeR and LengthDrop step each on 4 devices and on device 0 without
  a mesh (the single-device code path)."""
  assert jax.device_count() == 4, jax.devices()
  meshes = {"4": parallel.make_data_mesh(), "none": None}
  batch = _batch()
  key = jax.random.key(0)
  out = {}
  start = time.process_time()

  # Fine-tuning: same params, batch and dropout key; only the device count differs.
  params = classifier.init_classifier(key, ENCODER, NUM_LABELS)
  opt = optim.adamw(1e-3, 0.01)
  finetune_step = lambda mesh: classifier.make_finetune_step(ENCODER, NUM_LABELS, opt, mesh)
  stepped = _one_step_each(meshes, finetune_step, params, opt, 1, batch)
  tuned = {name: _host((new.params, new.opt_state, metrics["loss"]))
           for name, (new, metrics) in stepped.items()}
  out["finetune_4_vs_none"] = _max_diff(tuned["4"], tuned["none"])
  out["finetune_update"] = _max_diff(tuned["4"][0], params)
  out["finetune_out_spec"] = sorted({str(tuple(x.sharding.spec))
                                     for x in jax.tree.leaves(stepped["4"][0])})
  # Another dropout key moves the params more than sharding does: dropout is on.
  other = _one_step_each({"none": None}, finetune_step, params, opt, 2,
                         batch)["none"][0]
  out["finetune_other_key"] = _max_diff(_host(other.params), tuned["none"][0])

  # AdapLeR: one forward, two VJPs, partitioned update.
  cfg = adapler.AdapLeRConfig(ENCODER, NUM_LABELS)
  aparams = adapler.init(jax.random.key(3), cfg)
  aopt = optim.adapler_optimizer(1e-3, 10, weight_decay=0.01, warmup_fraction=0.0,
                                 speed_learning_rate=1e-2)
  saliency = np.random.default_rng(1).random((BATCH, WIDTH), np.float32)
  abatch = {**batch, "saliency": saliency * batch["attention_mask"]}
  weights = adapler_step.LossWeights(gamma=0.1, phi=0.05)
  stepped = _one_step_each(
      meshes, lambda mesh: adapler_step.make_train_step(cfg, aopt, weights, mesh=mesh),
      aparams, aopt, 4, abatch, 10.0)
  trained = {name: _host((new.params, new.opt_state, metrics))
             for name, (new, metrics) in stepped.items()}
  out["adapler_4_vs_none"] = _max_diff(trained["4"], trained["none"])
  out["adapler_update"] = _max_diff(trained["4"][0], aparams)

  # LengthDrop: the full model, then the sub-models one backward at a time in a scan.
  lat = lat_step.LATConfig(base=WIDTH, num_sandwich=1)
  stepped = _one_step_each(
      meshes, lambda mesh: lat_step.make_lat_step(ENCODER, NUM_LABELS, lat, opt, mesh),
      params, opt, 5, batch)
  lat_trained = {name: _host((new.params, new.opt_state, metrics["loss"]))
                 for name, (new, metrics) in stepped.items()}
  out["lat_4_vs_none"] = _max_diff(lat_trained["4"], lat_trained["none"])
  out["lat_update"] = _max_diff(lat_trained["4"][0], params)

  # Span QA: the same three steps with the span head (start / end over every position) and,
  # for AdapLeR and LAT, drop-and-restore.
  rng = np.random.default_rng(6)
  ends = rng.integers(0, batch["attention_mask"].sum(1))
  sbatch = {**{k: v for k, v in batch.items() if k != "labels"},
            "start_positions": rng.integers(0, ends + 1).astype(np.int32),
            "end_positions": ends.astype(np.int32)}
  span, scfg = heads.Span(), adapler.AdapLeRConfig(ENCODER, 2, head="span")
  sparams = classifier.init_classifier(key, ENCODER, span)
  cases = {  # name: (make_step, params, optimizer, batch, extra step args)
      "span_finetune": (lambda mesh: classifier.make_finetune_step(ENCODER, span, opt, mesh),
                        sparams, opt, sbatch, ()),
      "span_adapler": (lambda mesh: adapler_step.make_train_step(scfg, aopt, weights, mesh=mesh),
                       adapler.init(jax.random.key(3), scfg), aopt,
                       {**sbatch, "saliency": abatch["saliency"]}, (10.0,)),
      "span_lat": (lambda mesh: lat_step.make_lat_step(ENCODER, span, lat, opt, mesh),
                   sparams, opt, sbatch, ()),
  }
  for name, (make_step, init, optimizer, inputs, args) in cases.items():
    stepped = _one_step_each(meshes, make_step, init, optimizer, 7, inputs, *args)
    host = {k: _host((new.params, new.opt_state, metrics))
            for k, (new, metrics) in stepped.items()}
    out[f"{name}_4_vs_none"] = _max_diff(host["4"], host["none"])
    out[f"{name}_update"] = _max_diff(host["4"][0], init)

  out["cpu_seconds_steps"] = time.process_time() - start
  return out


def _config(backbone: str):
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from tests.test_pipeline import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config(Path(backbone))
  c.data.train_subset = 32
  c.data.dev_subset = 16
  c.train.epochs = 1
  c.saliency.num_checkpoints = 1
  c.adapler.epochs = 1
  return c


def train(backbone: str, workdir: str) -> dict:
  """The three training phases on 4 devices; writes the best fine-tuned classifier's dev
  logits."""
  assert jax.device_count() == 4, jax.devices()
  start = time.process_time()
  run = pipeline.prepare(_config(backbone), workdir)
  for phase in ("finetune", "saliency", "adapler"):
    pipeline.run_phase(run, phase)
  _, params, metric = pipeline.load_finetuned(run, 1)[0]
  dev = run.dataset("dev")
  logits = classifier.predict(run.encoder, run.num_labels, params, dev, 8, mesh=run.mesh)
  np.save(Path(workdir) / "dev_logits_4.npy", logits)
  with adapler_checkpointer(run) as ckpt:
    adapler_steps = ckpt.all_steps()
  engine_runs = {}  # the AdapLeR engine on the first and the last device.
  for device in (jax.devices()[0], jax.devices()[-1]):
    engine = AdaptiveEngine(run.adapler_config(), pipeline.load_adapler(run, adapler_steps[-1]),
                            batch_size=1, max_length=dev.max_length, device=device)
    batch = next(iter(eval_batches(dev, 1, engine.widths)))
    engine_runs[device.id] = jax.block_until_ready(engine.dispatch(batch))
  first, last = engine_runs.values()
  return {"mesh": run.mesh.size, "params_spec": sorted({str(tuple(x.sharding.spec))
                                                        for x in jax.tree.leaves(params)}),
          "backbone_metric": metric,
          "adapler_steps": adapler_steps,
          "engine_devices": sorted({d.id for x in last.values() for d in x.devices()}),
          "engine_device_diff": _max_diff(_host(first), _host(last)),
          "cpu_seconds_train": time.process_time() - start}


def restore(backbone: str, workdir: str) -> dict:
  """On 1 device: the 4-device run's checkpoints restore and evaluate to the same logits,
  and its saliency (from 4 devices) equals saliency computed here."""
  assert jax.device_count() == 1, jax.devices()
  start = time.process_time()
  run = pipeline.prepare(_config(backbone), workdir, record=False)
  _, params, metric = pipeline.load_finetuned(run, 1)[0]
  dev = run.dataset("dev")
  logits = classifier.predict(run.encoder, run.num_labels, params, dev, 8, mesh=run.mesh)
  result = report.evaluate_backbone(run.encoder, run.num_labels, params, dev, run.metric_name,
                                    8, mesh=run.mesh)
  saved = np.load(Path(workdir) / "dev_logits_4.npy")
  adapler_params = pipeline.load_adapler(run, pipeline.select_adapler_step(run, metric)[0])
  train = run.dataset("train")
  sal = saliency_lib.normalise(saliency_lib.compute_saliency(
      run.encoder, run.num_labels, params, train, run.config.saliency.batch_size,
      mesh=run.mesh))
  sal_4 = saliency_lib.load_for(Path(workdir) / SALIENCY_FILE, train)
  return {"mesh": run.mesh.size, "logits_diff": _max_diff(logits, saved),
          "saliency_diff": _max_diff(sal, sal_4), "saliency_max": float(sal.max()),
          "metric": result["metric"], "saved_metric": metric,
          "adapler_leaves": len(jax.tree.leaves(adapler_params)),
          "cpu_seconds": time.process_time() - start}


def bad_batch_size(backbone: str, workdir: str) -> dict:
  """A batch size that does not split over 4 devices: refused by the phases, and by a run
  that records its config before it writes anything to the workdir."""
  config = _config(backbone)
  config.train.batch_size = 30
  out = {"error": None, "record_error": None}
  try:
    pipeline.run_phase(pipeline.prepare(config, workdir, record=False), "all")
  except UserError as e:
    out["error"] = str(e)
  try:
    pipeline.prepare(config, workdir)
  except UserError as e:
    out["record_error"] = str(e)
  out["workdir_written"] = Path(workdir).exists()
  return out


def four(backbone: str, workdir: str) -> dict:
  """Everything that runs on 4 devices, in one process (one JAX start-up)."""
  return {**steps(), **train(backbone, workdir),
          **bad_batch_size(backbone, workdir + "_bad")}


def multihost(backbone: str, workdir: str, reference: str) -> dict:
  """One of 2 processes with 2 devices each (JAX_COORDINATOR_ADDRESS etc. set): fine-tunes
  reading only this process's half of each batch, and compares the final parameters with
  `reference`, the same fine-tuning on 1 process with 4 devices."""
  assert parallel.maybe_initialize_distributed()
  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  run = pipeline.prepare(_config(backbone), workdir)
  pipeline.finetune(run)
  params = {}
  for name, directory in (("multihost", workdir), ("reference", reference)):
    with Checkpointer(Path(directory) / "finetune") as ckpt:
      step = ckpt.latest_step()
      params[name] = ckpt.restore(step, sharding=parallel.replicated(run.mesh))[0]["params"]
  # The phases after fine-tuning on 2 processes: the saliency phase opens checkpoint
  # managers (each a sync of every process), and LAT's engine evaluates parameters that
  # training left replicated over both processes' devices.
  pipeline.extract_saliency(run)
  pipeline.run_phase(run, "adapler")  # lambda and eta replicated over both processes.
  with adapler_checkpointer(run) as ckpt:
    adapler_steps = ckpt.all_steps()
  _, backbone, _ = pipeline.load_finetuned(run, 1)[0]
  lat = lat_phases.evaluate_at(run, backbone, run.dataset("dev"), None)
  return {"process": jax.process_index(), "step": step,
          "params_diff": _max_diff(_host(params["multihost"]), _host(params["reference"])),
          "saliency_saved": (Path(workdir) / SALIENCY_FILE).exists(),
          "adapler_steps": adapler_steps,
          "lat_metric": lat["metric"]}


def main(argv):
  command = argv[1]
  result = {"steps": steps, "train": train, "restore": restore, "four": four,
            "bad_batch_size": bad_batch_size, "multihost": multihost}[command](*argv[2:])
  print(json.dumps(result))


if __name__ == "__main__":
  main(sys.argv)
