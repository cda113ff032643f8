"""What happens when things go wrong: no silent corruption, no lost run state, and one line
(exit status 2 from the CLIs) for every bad input. Tiny model, tiny demo data."""

import errno
import hashlib
import logging
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adapler_jax import environment, files, pipeline
from adapler_jax.cli import run_cli
from adapler_jax.data import load_split, num_train_steps
from adapler_jax.errors import DataError, InputError, UserError
from adapler_jax.eval import rationale
from adapler_jax.eval import squad as squad_eval
from adapler_jax.models import adapler
from adapler_jax.models.bert import EncoderConfig, encode
from adapler_jax.pipeline import workdir as workdir_lib
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.train import adapler_step, classifier
from adapler_jax.train.checkpoints import Checkpointer, CheckpointError, DamagedCheckpointError
from adapler_jax.train.guards import NonFiniteError
from tests.test_checkpoints import set_saved_checksum
from tests.test_pipeline import ROOT, TINY, count_steps, tiny_backbone, tiny_config, write_backbone  # pylint: disable=unused-import


def small_config(backbone: Path):
  """`tiny_config` cut to 2 fine-tuning steps and 2 AdapLeR epochs of 2 steps."""
  c = tiny_config(backbone)
  c.data.train_subset, c.data.dev_subset = 32, 8
  c.train.epochs = 1
  return c


@pytest.fixture(scope="module")
def finished(tiny_backbone, tmp_path_factory) -> Path:
  """A finished run of every phase (do not modify: tests work on copies)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  pipeline.run_phase(pipeline.prepare(small_config(tiny_backbone), workdir), "all")
  return workdir


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
  """A copy of the finished run."""
  return Path(shutil.copytree(finished, tmp_path / "run"))


def snapshot(workdir: Path) -> dict[str, tuple[str, int]]:
  """Every file under `workdir` by path: (sha256 of its bytes, mtime in ns); not the lock
  file, which names whichever process took the workdir last."""
  return {str(p.relative_to(workdir)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                        p.stat().st_mtime_ns)
          for p in sorted(workdir.rglob("*")) if p.is_file() and p.name != ".lock"}


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
  """The CLI's only stderr line, after checking it failed with status 2."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: ")
  return lines[0][len("error: "):]


def metric_rows(workdir: Path) -> list[tuple[str, int]]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["phase"], r["step"]) for r in rows]


# ----------------------------------------------------------------- 1. training past positions


def test_max_length_beyond_the_positions_is_refused_before_any_step(tiny_backbone, run_dir):
  before = snapshot(run_dir)
  config = small_config(tiny_backbone)
  config.data.max_length = 128  # TINY has 64 positions.
  with pytest.raises(UserError) as err:
    pipeline.prepare(config, run_dir)
  assert str(err.value) == (f"config data.max_length 128 exceeds the 64 positions of backbone "
                            f"{tiny_backbone}; pass --config.data.max_length=64 or less")
  assert snapshot(run_dir) == before


def test_non_finite_loss_stops_training_before_a_checkpoint(tiny_backbone, tmp_path,
                                                            monkeypatch):
  real = classifier.make_finetune_step

  def nan_loss_step(*args, **kwargs):
    step = real(*args, **kwargs)

    def nan_step(state, batch):
      state, metrics = step(state, batch)
      return state, {**metrics, "loss": metrics["loss"] * jnp.nan}
    return nan_step

  monkeypatch.setattr(classifier, "make_finetune_step", nan_loss_step)
  workdir = tmp_path / "run"
  with pytest.raises(NonFiniteError) as err:
    pipeline.finetune(pipeline.prepare(small_config(tiny_backbone), workdir))
  assert str(err.value) == ("finetune step 1: loss is nan; stopped before saving it. Lower "
                            "the learning rate and rerun")
  assert not [p for p in (workdir / "finetune").iterdir() if p.name.isdigit()]


def test_out_of_memory_is_one_line_and_keeps_the_saved_checkpoints(tiny_backbone, tmp_path,
                                                                   monkeypatch, capsys):
  workdir = tmp_path / "run"
  real, saved = classifier.make_finetune_step, []

  def oom_after_the_first_save(*args, **kwargs):
    step = real(*args, **kwargs)

    def oom_step(state, batch):
      if any(p.name.isdigit() for p in (workdir / "finetune").iterdir()):
        saved.append(snapshot(workdir / "finetune"))
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 25656557760 bytes.")
      return step(state, batch)
    return oom_step

  monkeypatch.setattr(classifier, "make_finetune_step", oom_after_the_first_save)
  config = small_config(tiny_backbone)
  config.train.epochs = 2
  with pytest.raises(SystemExit) as exit_info:
    run_cli(lambda: pipeline.finetune(pipeline.prepare(config, workdir)))
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.endswith("\n") and err.split("\n")[-2] == (  # a line of its own after the bar.
      "error: the device ran out of memory (XLA asked for 23.9 GiB); lower the batch size of "
      "the phase (--config.<train|saliency|adapler|lat|search|eval>.batch_size) or "
      "--config.data.max_length; the checkpoints already saved are kept")
  assert saved and snapshot(workdir / "finetune") == saved[0]
  with pytest.raises(RuntimeError, match="^INTERNAL"):  # other runtime errors keep their trace.
    run_cli(lambda: (_ for _ in ()).throw(jax.errors.JaxRuntimeError("INTERNAL: boom")))
  # The host's memory (numpy's allocation of a huge --batch-size) was a traceback.
  with pytest.raises(SystemExit) as exit_info:
    run_cli(lambda: np.empty((1 << 50,), np.int8))  # a pebibyte.
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: this machine ran out of memory (Unable to "
                                             "allocate ") and err[0].endswith(
      "); lower the batch size (--batch-size, or --config.<phase>.batch_size) or the max length")


def test_an_interrupt_is_one_line_and_a_cut_write_leaves_the_old_file(tmp_path, capsys,
                                                                         monkeypatch):
  """Ctrl-C and a scheduler's SIGTERM stop a command with one line and status 130 / 143
  (Ctrl-C was a traceback of a hundred lines; SIGTERM killed the process outright, so a
  write it cut left its temporary file). SIGTERM raises in the main thread, as Ctrl-C does:
  the write cleans up and the file written before stays whole."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers are installed from the main thread only")
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as exit_info:
    run_cli(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
  assert exit_info.value.code == 130
  assert capsys.readouterr().err == (
      "interrupted (Ctrl-C); what was written before stays as it was: rerun the same command "
      "to go on (training resumes from its last checkpoint)\n")
  out = tmp_path / "eval.json"
  out.write_text("old")
  fsync = os.fsync
  def terminated_while_writing(fd):
    fsync(fd)
    os.kill(os.getpid(), signal.SIGTERM)  # handled before this function returns.
  monkeypatch.setattr(os, "fsync", terminated_while_writing)
  with pytest.raises(SystemExit) as exit_info:
    run_cli(lambda: files.atomic_write_text(out, "new"))
  assert exit_info.value.code == 143
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("interrupted (SIGTERM); what was written before")
  assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
  assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's alone.

  # SIGTERM between the two renames that swap an export for a new one (`--force`) waits for
  # the swap: the export is the new one, whole, and nothing is left beside it (the old
  # export stayed hidden as .export.old-PID, and the new one was deleted with its folder).
  from adapler_jax.serve import model_dir  # pylint: disable=g-import-not-at-top
  monkeypatch.undo()
  write = lambda directory, meta, *_: (directory / model_dir.CONFIG_FILE).write_text(
      json.dumps(meta))
  monkeypatch.setattr(model_dir, "_write", write)
  export = tmp_path / "export"
  model_dir.write_model(export, {"format": model_dir.FORMAT, "n": 1}, {}, None)
  replace = os.replace
  def terminated_after_the_old_moved_out(src, dst):
    replace(src, dst)
    if Path(src) == export:
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(os, "replace", terminated_after_the_old_moved_out)
  with pytest.raises(SystemExit) as exit_info:
    run_cli(lambda: model_dir.write_model(export, {"format": model_dir.FORMAT, "n": 2}, {},
                                          None, force=True))
  assert exit_info.value.code == 143 and "SIGTERM" in capsys.readouterr().err
  assert json.loads((export / model_dir.CONFIG_FILE).read_text())["n"] == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "export"]


def test_an_export_reaches_the_disk_before_it_is_renamed_in(tmp_path, monkeypatch):
  """A power cut after the rename must not find an export whose files were still only in
  memory: each file and the folder are flushed first, then the rename in its parent."""
  from adapler_jax.serve import model_dir  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(model_dir, "_write", lambda directory, meta, *_: (
      (directory / "tokenizer").mkdir(), (directory / "tokenizer" / "vocab.txt").write_text("a"),
      (directory / model_dir.CONFIG_FILE).write_text(json.dumps(meta))))
  events = []
  sync, replace = files._sync, os.replace  # pylint: disable=protected-access
  monkeypatch.setattr(files, "_sync", lambda path: (events.append(("sync", path.name)),
                                                     sync(path)))
  monkeypatch.setattr(os, "replace", lambda src, dst: (
      events.append(("rename", Path(src).name, Path(dst).name)), replace(src, dst)))
  export = tmp_path / "export"
  for force in (False, True):
    events.clear()
    model_dir.write_model(export, {"format": model_dir.FORMAT}, {}, None, force=force)
    tmp = f".export.tmp-{os.getpid()}"
    moved_in = events.index(("rename", tmp, "export"))
    assert {("sync", n) for n in ("vocab.txt", "tokenizer", model_dir.CONFIG_FILE, tmp)} <= set(
        events[:moved_in])
    assert events.index(("sync", "vocab.txt")) < events.index(("sync", "tokenizer"))
    assert ("sync", tmp_path.name) in events[moved_in:]
  assert json.loads((export / model_dir.CONFIG_FILE).read_text())["format"] == model_dir.FORMAT
  # A file system that refuses to flush a folder (some network mounts: EINVAL) still gets
  # the export, and the old one is removed.
  monkeypatch.setattr(files, "_sync", sync)
  fsync = os.fsync
  def no_folder_sync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
      raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    fsync(fd)
  monkeypatch.setattr(os, "fsync", no_folder_sync)
  model_dir.write_model(export, {"format": model_dir.FORMAT, "n": 3}, {}, None, force=True)
  assert json.loads((export / model_dir.CONFIG_FILE).read_text())["n"] == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_path_the_system_refuses_is_one_line(tmp_path, capsys):
  """A folder where a file must be read, a file where a folder would go: one line naming the
  path; an OSError without a path keeps its traceback."""
  for action, path in ((lambda: open(tmp_path), tmp_path),
                       (lambda: (tmp_path / "f").write_text("x") and open(tmp_path / "f" / "g"),
                        tmp_path / "f" / "g")):
    with pytest.raises(SystemExit) as exit_info:
      run_cli(action)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and err[0].endswith(
        "; check the path and its permissions")
  with pytest.raises(PermissionError, match="^no path$"):
    run_cli(lambda: (_ for _ in ()).throw(PermissionError("no path")))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_folder_that_takes_no_file_is_refused_first(tmp_path):
  """Permission bits say nothing for root or on /proc: the check creates a file to know,
  and leaves none behind where it can write."""
  with pytest.raises(UserError, match=r"^--output /proc/r\.json: cannot write in /proc \("):
    files.check_output("/proc/r.json")
  assert files.check_output(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
  with pytest.raises(UserError, match=re.escape(  # not written as a file named "new".
      f"--output {tmp_path}/new/ names a folder (it ends with /); pass a file name, e.g. "
      f"--output {tmp_path / 'new' / 'result.json'}")):
    files.check_output(f"{tmp_path}/new/")
  assert not any(tmp_path.iterdir())


def test_writing_through_a_link_or_to_a_pipe_replaces_neither(tmp_path):
  """A link to a file stays a link to the new text; a pipe (or a device, /dev/stdout) is
  written to, not replaced by a file named like it."""
  target, link = tmp_path / "target.json", tmp_path / "link.json"
  target.write_text("old")
  link.symlink_to(target)
  files.atomic_write_text(link, "new")
  assert link.is_symlink() and target.read_text() == "new"

  pipe, got = tmp_path / "pipe", []
  os.mkfifo(pipe)
  reader = threading.Thread(target=lambda: got.append(pipe.read_text()), daemon=True)
  reader.start()
  files.atomic_write_text(pipe, "through")
  reader.join(timeout=10)
  assert got == ["through"] and stat.S_ISFIFO(pipe.stat().st_mode)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "target.json"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_export_or_a_run_where_none_can_go_is_refused_first(tiny_backbone, run_dir,
                                                               tmp_path):
  from adapler_jax.serve.from_run import export_run  # pylint: disable=g-import-not-at-top
  other = Path(shutil.copytree(run_dir, tmp_path / "other"))  # another run: its checkpoints.
  before = snapshot(run_dir)
  for output, message in (
      (run_dir / "search", f"--output {run_dir / 'search'} is a folder the workdir {run_dir} "
                           "keeps; pass a directory outside it"),
      (other / "finetune" / "99", f"--output {other / 'finetune' / '99'} lies in a folder "
                                  f"{other} keeps; pass a directory outside it"),
      (Path("/proc/export"), "--output /proc/export: cannot write in /proc (")):
    with pytest.raises(UserError) as err:
      export_run(run_dir, output)
    assert str(err.value).startswith(message)
  assert snapshot(run_dir) == before
  with pytest.raises(UserError, match=r"^--workdir /proc/run: cannot write in /proc \("):
    pipeline.prepare(small_config(tiny_backbone), "/proc/run")


# ----------------------------------------------------------------- 2. config.json on a rerun


def test_failed_rerun_leaves_the_workdir_as_it_was(tiny_backbone, run_dir, tmp_path):
  before = snapshot(run_dir)
  bad_data = small_config(tiny_backbone)
  bad_data.data.data_dir = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match=r"^demo: vocabulary file .*nowhere not found; pass a "):
    pipeline.prepare(bad_data, run_dir)

  wider = small_config(write_backbone(tmp_path, EncoderConfig.tiny(
      vocab_size=TINY.vocab_size, hidden_size=48, max_position_embeddings=64)))
  with pytest.raises(CheckpointError) as err:
    pipeline.prepare(wider, run_dir)
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(f"checkpoint {run_dir / 'finetune'} step 2 has "
                                           "shapes ")
  assert re.search(r"has shapes .*32.* that do not match the model's .*48", msg)
  assert snapshot(run_dir) == before


def test_a_rerun_refused_for_what_its_phase_reads_leaves_the_workdir_as_it_was(
    tiny_backbone, run_dir):
  """AdapLeR training on other train rows than the saliency file's (or, with `all`, than
  fine-tuning's), and an import from another checkpoint than the one fine-tuning came
  from: refused before config.json is rewritten (evaluate.py reads it, so a stored seed
  would change the reported dev rows)."""
  shutil.rmtree(run_dir / "adapler")  # not started yet: the saliency file's rows count.
  before = snapshot(run_dir)
  other_rows = small_config(tiny_backbone)
  other_rows.seed = 1
  with pytest.raises(UserError, match=r"saliency.npz has no saliency for \d+ training "
                     r"examples .*; rerun --phase saliency with this data config$"):
    pipeline.prepare(other_rows, run_dir, phase="adapler")
  with pytest.raises(UserError, match=re.escape(  # all would resume fine-tuning on them.
      f"{run_dir / 'finetune'} holds checkpoints trained with seed 22 (config.finetune.json)")):
    pipeline.prepare(other_rows, run_dir, phase="all")
  imported = small_config(tiny_backbone)
  imported.train.init_from_hf = str(run_dir / "elsewhere")
  for phase in ("finetune", "all"):
    with pytest.raises(UserError, match=re.escape(
        f"{run_dir / 'finetune'} holds fine-tuning from train.py, not from "
        f"{run_dir / 'elsewhere'}; delete it or pass another --workdir")):
      pipeline.prepare(imported, run_dir, phase=phase)
  assert snapshot(run_dir) == before


def test_each_phase_records_the_config_it_ran_with(tiny_backbone, run_dir):
  checkpoints = snapshot(run_dir / "finetune")
  config = small_config(tiny_backbone)
  config.train.learning_rate = 0.25
  pipeline.finetune(pipeline.prepare(config, run_dir))  # finished: resumes at the end.
  recorded = json.loads((run_dir / "config.finetune.json").read_text())
  assert recorded["train"]["learning_rate"] == 0.25
  assert json.loads((run_dir / "config.json").read_text()) == recorded
  assert json.loads((run_dir / "config.adapler.json").read_text())["train"][
      "learning_rate"] == 1e-3
  assert snapshot(run_dir / "finetune") == checkpoints


def test_a_phase_without_its_inputs_records_nothing(tiny_backbone, tmp_path):
  """A phase refused at once (no fine-tuned checkpoint, no saliency) leaves no
  config.<phase>.json or environment.<phase>.json claiming it ran."""
  run = pipeline.prepare(small_config(tiny_backbone), tmp_path / "run")
  no_finetune = (f"^no fine-tuned checkpoint in {re.escape(str(run.workdir / 'finetune'))}; "
                 "run --phase finetune first$")
  for phase, message in (
      (pipeline.extract_saliency, no_finetune),
      (pipeline.train_adapler, f"^{re.escape(str(run.workdir / 'saliency.npz'))} is missing; "
                               "run --phase saliency first$"),
      (pipeline.summarize, no_finetune)):
    with pytest.raises(UserError, match=message):
      phase(run)
  assert sorted(p.name for p in run.workdir.glob("*.json")) == ["config.json"]


def test_evaluation_before_adapler_training_records_nothing(run_dir):
  """Fine-tuned, no AdapLeR checkpoint: the evaluate phase stops before it evaluates the
  backbone or records a config."""
  shutil.rmtree(run_dir / "adapler")
  for name in ("summary.json", "config.evaluate.json", "environment.evaluate.json"):
    (run_dir / name).unlink()
  run = pipeline.prepare(pipeline.read_config(run_dir), run_dir, record=False)
  with pytest.raises(UserError, match="^no AdapLeR checkpoint in "):
    pipeline.summarize(run)
  assert not (run_dir / "config.evaluate.json").exists()
  assert not (run_dir / "environment.evaluate.json").exists()


def test_each_phase_records_what_it_ran_on(finished):
  for phase in ("finetune", "saliency", "adapler", "evaluate"):
    recorded = json.loads((finished / f"environment.{phase}.json").read_text())
    assert recorded["versions"]["jax"] == jax.__version__
    assert recorded["backend"] == jax.default_backend()
    assert recorded["local_devices"] == jax.local_device_count()
    assert recorded["cpu"] == environment.cpu_model()
    assert recorded["cpu_features"] == environment.cpu_features()


def test_a_phase_rerun_elsewhere_says_what_changed(tmp_path, caplog):
  run = types.SimpleNamespace(is_main_process=True, workdir=tmp_path,
                              config=ml_collections.ConfigDict({"seed": 0}))
  workdir_lib.record_config(run, "adapler")
  assert not caplog.records  # the first run has nothing to differ from
  workdir_lib.record_config(run, "adapler")
  assert not caplog.records  # nor does a rerun on the same machine
  path = tmp_path / "environment.adapler.json"
  earlier = json.loads(path.read_text())
  earlier["cpu"], earlier["versions"]["jax"] = "Other CPU", "0.0.1"
  earlier["cpu_features"] = ["amx_tile"]  # another instruction set: other kernels, rounding.
  path.write_text(json.dumps(earlier))
  workdir_lib.record_config(run, "adapler")
  [warning] = [r.getMessage() for r in caplog.records]
  assert warning.startswith(f"{path}: the adapler phase last ran elsewhere (")
  assert f"jax 0.0.1 -> {jax.__version__}" in warning
  assert f"cpu Other CPU -> {environment.cpu_model()}" in warning
  assert f"cpu_features ['amx_tile'] -> {environment.cpu_features()}" in warning
  assert json.loads(path.read_text()) == environment.describe()  # the record is now this run's


def test_the_cpu_is_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                     "flags\t\t: fpu sse2 avx2 fma avx512f\n\n"
                     "processor\t: 1\nmodel name\t: Another CPU\nflags\t\t: amx_tile\n")
  assert environment.cpu_model(cpuinfo) == "Test CPU 9000"
  assert environment.cpu_features(cpuinfo) == ["avx2", "fma", "avx512f"]
  assert environment.cpu_features(tmp_path / "absent") == []


# ----------------------------------------------------------------- 3. damaged checkpoints


DAMAGED_FIX = ("fix: delete that step directory (an earlier checkpoint is used) or rerun "
               "training in a new workdir")


def _array_files(step_dir: Path) -> list[Path]:
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def test_flipped_checkpoint_bytes_stop_evaluation(run_dir):
  step = json.loads((run_dir / "summary.json").read_text())["adapler_step"]
  for target in _array_files(run_dir / "adapler" / str(step)):  # the params lie in one of them.
    data = bytearray(target.read_bytes())
    data[100:] = bytes(b ^ 0xFF for b in data[100:])
    target.write_bytes(bytes(data))
  before = snapshot(run_dir)
  with pytest.raises(DamagedCheckpointError) as err:
    pipeline.load_run(run_dir)
  # Which arrays hold which bytes depends on the order orbax's concurrent writes reached
  # the data files: values that still decode fail their checksums, a hit on a file's
  # structure fails the read. Either is one line naming the step and the fix
  # (test_checkpoints pins the checksum message on a one-array layout).
  msg = str(err.value)
  problem = msg.removeprefix(f"checkpoint {run_dir / 'adapler' / str(step)} ")
  assert "\n" not in msg and problem != msg and msg.endswith(DAMAGED_FIX)
  assert (problem.startswith("is damaged: ") and "arrays differ from their saved checksums"
          in problem) or problem.startswith("cannot be read (")
  assert snapshot(run_dir) == before


def test_damaged_optimizer_moments_do_not_stop_evaluation(run_dir):
  """Inference reads the parameters alone; damage confined to the optimizer moments (here
  one moment's saved checksum) stops resuming training, not evaluation."""
  step = json.loads((run_dir / "summary.json").read_text())["adapler_step"]
  step_dir = run_dir / "adapler" / str(step)
  expected = pipeline.load_run(run_dir).adapler_params
  saved = json.loads((step_dir / "checksums" / "metadata").read_text())
  moment = next(p for p in saved if p.startswith("opt_state/") and "/mu/" in p)
  set_saved_checksum(step_dir, moment, "00000000")
  with Checkpointer(run_dir / "adapler", read_only=True) as ckpt:
    with pytest.raises(DamagedCheckpointError, match=re.escape(moment)):
      ckpt.restore(step)
  restored = pipeline.load_run(run_dir).adapler_params
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_truncated_checkpoint_is_one_line_from_evaluate(run_dir):
  step = json.loads((run_dir / "summary.json").read_text())["adapler_step"]
  with open(_array_files(run_dir / "adapler" / str(step))[0], "r+b") as f:
    f.truncate(64)
  before = snapshot(run_dir)
  proc = cli("evaluate.py", "--workdir", str(run_dir))
  msg = one_line_error(proc)  # not one traceback from the reads the failure abandoned.
  assert msg.startswith(f"checkpoint {run_dir / 'adapler' / str(step)} cannot be read (")
  assert msg.endswith(DAMAGED_FIX)
  assert snapshot(run_dir) == before
  shutil.rmtree(run_dir / "adapler" / str(step))  # the fix it names; evaluation then says how
  with pytest.raises(UserError) as err:            # to select one of the steps left.
    pipeline.load_run(run_dir)
  assert re.fullmatch(
      re.escape(f"{run_dir / 'summary.json'} reports AdapLeR step {step}, which "
                f"{run_dir / 'adapler'} no longer holds (steps: ") + r"[0-9, ]+"
      + re.escape("); rerun train.py --phase evaluate to select one of them"), str(err.value))
  for left in (run_dir / "adapler").iterdir():  # with no step left, the phase to rerun.
    if left.name.isdigit():
      shutil.rmtree(left)
  with pytest.raises(UserError) as err:
    pipeline.load_run(run_dir)
  assert str(err.value) == (f"{run_dir / 'summary.json'} reports AdapLeR step {step}, which "
                            f"{run_dir / 'adapler'} no longer holds (steps: none); rerun "
                            "train.py --phase adapler")


# ----------------------------------------------------------------- 4. two processes


def test_second_process_is_refused_and_a_killed_ones_lock_is_not(tiny_backbone, run_dir):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from adapler_jax.pipeline import workdir; "
       f"workdir.lock({str(run_dir)!r}); print('locked', flush=True); sys.stdin.read()"],
      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = snapshot(run_dir)
    with pytest.raises(UserError) as err:
      pipeline.prepare(small_config(tiny_backbone), run_dir)
    assert str(err.value).startswith(
        f"{run_dir} is in use by process {holder.pid} on {socket.gethostname()} (-c); ")
    assert str(err.value).endswith("wait for it to end or pass another --workdir")
    assert snapshot(run_dir) == before
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert f"process {holder.pid}" in (run_dir / ".lock").read_text()  # stale: left behind.
  pipeline.prepare(small_config(tiny_backbone), run_dir)
  assert f"process {os.getpid()}" in (run_dir / ".lock").read_text()


# ----------------------------------------------------------------- 5. stale saliency


def test_saliency_is_recomputed_when_fine_tuning_is_redone(tiny_backbone, run_dir):
  old = (run_dir / "saliency.npz").read_bytes()
  shutil.rmtree(run_dir / "finetune")
  config = small_config(tiny_backbone)
  config.train.eval_every_steps = 1  # other checkpoints to average saliency over.
  run = pipeline.prepare(config, run_dir)
  pipeline.finetune(run)
  assert pipeline.phases.saliency_lib.source(run_dir / "saliency.npz") != \
      pipeline.phases.saliency_source(run)
  adapler_before = snapshot(run_dir / "adapler")
  with pytest.raises(UserError) as err:  # AdapLeR trained on the old saliency: not resumed.
    pipeline.run_all(run)
  assert str(err.value) == (
      f"{run_dir / 'adapler'} was trained on a saliency.npz since recomputed from other "
      f"fine-tuned checkpoints; delete {run_dir / 'adapler'} to train AdapLeR on the new one")
  assert (run_dir / "saliency.npz").read_bytes() != old
  assert pipeline.phases.saliency_lib.source(run_dir / "saliency.npz") == \
      pipeline.phases.saliency_source(run)
  assert snapshot(run_dir / "adapler") == adapler_before


# ----------------------------------------------------------------- 6. metrics of a resumed run


def test_resumed_adapler_epoch_logs_each_row_once(tiny_backbone, run_dir, monkeypatch):
  rows = metric_rows(run_dir)
  last = max(int(p.name) for p in (run_dir / "adapler").iterdir() if p.name.isdigit())
  shutil.rmtree(run_dir / "adapler" / str(last))  # killed before the last epoch's save ...
  with open(run_dir / "metrics.jsonl", "a") as f:
    f.write('{"phase": "adapler", "st')  # ... and in the middle of a row.
  kept = snapshot(run_dir / "adapler")
  run = pipeline.prepare(small_config(tiny_backbone), run_dir)
  taken = count_steps(monkeypatch, adapler_step, "make_train_step")
  pipeline.train_adapler(run)
  per_epoch = num_train_steps(run.dataset("train"), run.config.adapler.batch_size)
  assert taken == list(range(last - per_epoch, last))  # the last epoch alone, again.
  assert metric_rows(run_dir) == rows
  assert all(snapshot(run_dir / "adapler")[k] == v for k, v in kept.items())


# ----------------------------------------------------------------- bad inputs: one line each


@pytest.mark.parametrize("overrides", [(), ("--config.train.epochs=1",)],
                         ids=["alone", "with-overrides"])
def test_missing_config_file(overrides):
  """With overrides the file loads while the flags parse; without, on first use: one line
  either way."""
  msg = one_line_error(cli("train.py", "--config", "configs/nope.py", "--workdir", "/tmp/x",
                           *overrides))
  assert msg == ("config file configs/nope.py cannot be loaded ([Errno 2] No such file or "
                 "directory: 'configs/nope.py'); pass --config configs/<task>.py")


def test_unknown_config_field():
  msg = one_line_error(cli("train.py", "--config=configs/demo.py", "--workdir=/tmp/x",
                           "--config.train.batchsize=8"))
  assert msg == ("override '--config.train.batchsize=8': the config has no field "
                 "'train.batchsize' (did you mean 'train.batch_size'?); write KEY=VALUE with "
                 "a dotted key such as adapler.phi=1e-3")


def refused_first(tiny_backbone, tmp_path, dotted: str, value, method: str = "adapler") -> str:
  """The one-line error `pipeline.prepare` raises with config `dotted` set to `value` (in a
  run of `method`); the workdir is never created."""
  config = small_config(tiny_backbone)
  config.method = method
  section, _, field = dotted.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(UserError) as err:
    pipeline.prepare(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  return str(err.value)


@pytest.mark.parametrize("section", ["train", "eval", "saliency", "adapler"])
@pytest.mark.parametrize("size", [0, -4])
def test_batch_sizes_below_one_are_refused_first(tiny_backbone, tmp_path, section, size):
  assert refused_first(tiny_backbone, tmp_path, f"{section}.batch_size", size) == (
      f"config {section}.batch_size is {size}; it must be at least 1 "
      f"(e.g. --config.{section}.batch_size=32)")


@pytest.mark.parametrize("dotted, value, message", [
    ("method", "foo", "config method is 'foo'; it must be one of adapler, lat, e.g. "
                      "--config.method=adapler"),
    ("dtype", "float8", "config dtype is 'float8'; it must be one of float32, bfloat16, "
                        "float16, e.g. --config.dtype=float32"),
    ("eval.engine", "warp", "config eval.engine is 'warp'; it must be one of bucketed, "
                            "per-example, e.g. --config.eval.engine=bucketed"),
    ("eval.flops", "bogus", "config eval.flops is 'bogus'; it must be one of analytic, paper, "
                            "e.g. --config.eval.flops=analytic"),
    ("lat.kd", "sideways", "config lat.kd is 'sideways'; it must be one of forward, reverse, "
                           "e.g. --config.lat.kd=forward"),
    ("data.train_subset", -5, "config data.train_subset is -5; it must be at least 0, e.g. "
                              "--config.data.train_subset=5000"),
    ("train.log_every_steps", 0, "config train.log_every_steps is 0; it must be at least 1, "
                                 "e.g. --config.train.log_every_steps=50"),
    ("train.epochs", 0, "config train.epochs is 0; it must be at least 1, e.g. "
                        "--config.train.epochs=3"),
    ("search.held_out", 0, "config search.held_out is 0; it must be at least 1, e.g. "
                           "--config.search.held_out=872"),
    ("train.warmup_fraction", 2.0, "config train.warmup_fraction is 2.0; it must be in [0, 1), "
                                   "e.g. --config.train.warmup_fraction=0.06"),
    ("search.mutation_prob", float("nan"), "config search.mutation_prob is nan; it must be in "
                                           "[0, 1], e.g. --config.search.mutation_prob=0.5"),
    ("train.learning_rate", float("nan"), "config train.learning_rate is nan; it must be a "
                                          "positive number, e.g. --config.train.learning_rate=2e-5"),
    ("search.eta_multipliers", ("abc",), "search.eta_multipliers ('abc',) must be numbers, "
                                         "e.g. 0,0.5,1,1.5,2"),
    ("seed", -1, "config seed is -1; it must be at least 0, e.g. --config.seed=22"),
    ("lat.num_sandwich", -1, "config lat.num_sandwich is -1; it must be at least 0, e.g. "
                             "--config.lat.num_sandwich=2"),
    ("adapler.phi", float("nan"), "config adapler.phi is nan; it must be at least 0, e.g. "
                                  "--config.adapler.phi=0.0005"),
    ("adapler.lambda_init", 0.0, "config adapler.lambda_init is 0.0; it must be a positive "
                                 "number, e.g. --config.adapler.lambda_init=10"),
    ("saliency.num_checkpoints", 0, "config saliency.num_checkpoints is 0; it must be at "
                                    "least 1, e.g. --config.saliency.num_checkpoints=3"),
    ("lat.eval_length_ratio", 2.0, "config lat.eval_length_ratio is 2.0; it must be in "
                                   "[0, 1), e.g. --config.lat.eval_length_ratio=0.2"),
    ("lat.smallest_ratio", 0.1, "config lat.smallest_ratio 0.1 is below lat.length_drop 0.2: "
                                "LengthDrop would sample sub-models smaller than the smallest "
                                "one the sandwich trains; set both alike, e.g. "
                                "--config.lat.smallest_ratio=0.2"),
    ("data.test_split", "bogus", "task 'demo' has no split 'bogus'; use one of train, dev, "
                                 "test"),
])
def test_out_of_range_and_unknown_values_are_refused_first(tiny_backbone, tmp_path, dotted,
                                                           value, message):
  """Checked before the workdir exists, rather than stored in config.json and failing (or
  not) phases later."""
  assert refused_first(tiny_backbone, tmp_path, dotted, value) == message


def test_pad_queries_with_actual_lengths_are_refused_first(tiny_backbone, tmp_path):
  """With lengths per example no padding is ever in play, so the flag would do nothing."""
  config = small_config(tiny_backbone)
  config.method, config.lat.length_base = "lat", "actual"
  config.lat.include_pad_queries = True
  with pytest.raises(UserError, match="^config lat.include_pad_queries=True counts padded "
                     r"query rows, but lat.length_base='actual' never puts padding in play"):
    pipeline.prepare(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  with pytest.raises(InputError, match=r"length_base='actual' never puts padding in play"):
    SelectionFlags(include_pad_queries=True, length_base="actual")
  # A run trained before the pair was refused is read as it ran: without padded queries.
  from adapler_jax.pipeline import checks, lat_phases  # pylint: disable=g-import-not-at-top
  checks.check_config(config)
  assert lat_phases.pad_queries(config.lat) is False
  config.lat.length_base = "padded"
  assert lat_phases.pad_queries(config.lat) is True


@pytest.mark.parametrize("phase", [None, "finetune", "lengthdrop"])
def test_float16_training_is_refused_first(tiny_backbone, tmp_path, phase):
  """No loss scaling: in float16 most gradients underflow (silently: zeros are finite).
  Phases that take no optimizer step still run in float16."""
  config = small_config(tiny_backbone)
  config.dtype, config.method = "float16", "lat" if phase == "lengthdrop" else "adapler"
  with pytest.raises(UserError) as err:
    pipeline.prepare(config, tmp_path / "run", phase=phase)
  assert str(err.value) == (
      f"config dtype is float16, and --phase {phase or 'all'} trains: without loss scaling "
      "most gradients underflow in float16; train with --config.dtype=bfloat16 or float32 "
      "(float16 serves a trained run: --phase evaluate or search with --config.dtype=float16)")
  assert not (tmp_path / "run").exists()
  from adapler_jax.pipeline import checks  # pylint: disable=g-import-not-at-top
  for other in ("saliency", "search", "evaluate"):
    checks.check_training_flags(config, other)


def test_a_bad_lat_eval_length_config_is_refused_first(tiny_backbone, tmp_path):
  """The example fits the model: two layers at max length 16, ratio 0.2 per layer."""
  assert refused_first(tiny_backbone, tmp_path, "lat.eval_length_config", "a,b", "lat") == (
      "config lat.eval_length_config 'a,b' is not a comma-separated list of ints, e.g. 13,11")


def test_a_phase_the_method_lacks_leaves_the_stored_config_alone(run_dir, tmp_path):
  """train.py with a phase the run's method does not have, and an override: one line, and
  config.json (which evaluate.py reads) as it was."""
  config_file = tmp_path / "same_run.py"
  config_file.write_text("from adapler_jax import pipeline\n\n\ndef get_config():\n"
                         f"  return pipeline.read_config({str(run_dir)!r})\n")
  before = snapshot(run_dir)
  assert one_line_error(cli("train.py", "--config", str(config_file), "--workdir",
                            str(run_dir), "--phase", "lengthdrop",
                            "--config.data.dev_subset=8")) == (
      "phase 'lengthdrop' is not a phase of adapler; choose one of all, finetune, saliency, "
      "adapler, search, evaluate")
  # A config of the other method: the stored run's method is named first, not the phase.
  assert one_line_error(cli("train.py", "--config", str(config_file), "--workdir",
                            str(run_dir), "--phase", "saliency", "--config.method=lat")) == (
      f"{run_dir} holds an adapler run (config.json method 'adapler'), not lat; pass that "
      "run's config (--config.method=adapler) or another --workdir")
  assert snapshot(run_dir) == before
  # A phase that starts from the fine-tuned model, on a workdir without one: nothing written.
  new = tmp_path / "new"
  assert one_line_error(cli("train.py", "--config", str(config_file), "--workdir", str(new),
                            "--phase", "saliency")) == (
      f"no finetune checkpoint in {new / 'finetune'}; run --phase finetune first")
  assert not new.exists()


def test_check_ready_asks_for_what_each_phase_reads(tmp_path):
  """Each phase needs only its own inputs: LAT's search reads the LengthDrop checkpoints,
  not the fine-tuned ones; AdapLeR reads saliency.npz (and fine-tuning only when it starts
  from it)."""
  def save(phase, step, **metrics):
    with Checkpointer(tmp_path / phase) as ckpt:
      ckpt.save(step, {"w": np.zeros(2)}, metrics=metrics or None)

  adapler, lat = (pipeline.base_config("demo", max_length=16) for _ in range(2))
  lat.method = "lat"
  save("lengthdrop", 12, dev_metric=0.5)
  pipeline.check_ready(lat, tmp_path, "search")
  with pytest.raises(UserError, match=re.escape(
      f"no finetune checkpoint in {tmp_path / 'finetune'}; run --phase finetune first")):
    pipeline.check_ready(lat, tmp_path, "evaluate")
  with pytest.raises(UserError, match=re.escape(
      f"{tmp_path / 'saliency.npz'} is missing; run --phase saliency first")):
    pipeline.check_ready(adapler, tmp_path, "adapler")
  (tmp_path / "saliency.npz").write_bytes(b"")
  pipeline.check_ready(adapler, tmp_path, "adapler")
  adapler.adapler.from_finetuned = True
  with pytest.raises(UserError, match="no finetune checkpoint"):
    pipeline.check_ready(adapler, tmp_path, "adapler")
  (tmp_path / "finetune" / "8.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a cut save.
  with pytest.raises(UserError, match="no finetune checkpoint"):
    pipeline.check_ready(adapler, tmp_path, "saliency")
  save("finetune", 8)  # cut before its first evaluation: the phases would find no model.
  with pytest.raises(UserError, match=re.escape(
      f"{tmp_path / 'finetune'} holds no evaluated finetune checkpoint (step 8 was saved "
      "before its dev evaluation); finish it with --phase finetune")):
    pipeline.check_ready(adapler, tmp_path, "saliency")
  save("finetune", 16, dev_metric=0.5)
  for phase in ("all", "finetune", "saliency", "adapler"):
    pipeline.check_ready(adapler, tmp_path, phase)


def test_fewer_train_rows_than_a_batch_is_refused_first(tiny_backbone, tmp_path):
  assert refused_first(tiny_backbone, tmp_path, "data.train_subset", 4) == (
      "the train split has 4 rows, fewer than train.batch_size 16, so no full batch to train "
      "on; lower --config.train.batch_size or use more rows (data.train_subset)")


def test_a_config_of_the_other_method_leaves_the_run_alone(tiny_backbone, tmp_path):
  workdir = tmp_path / "run"
  pipeline.prepare(small_config(tiny_backbone), workdir)  # an AdapLeR run's config.json.
  before = (workdir / "config.json").read_bytes()
  config = small_config(tiny_backbone)
  config.method = "lat"
  with pytest.raises(UserError) as err:
    pipeline.prepare(config, workdir)
  assert str(err.value) == (f"{workdir} holds an adapler run (config.json method 'adapler'), "
                            "not lat; pass that run's config (--config.method=adapler) or "
                            "another --workdir")
  assert (workdir / "config.json").read_bytes() == before


def test_a_config_of_another_task_leaves_the_run_alone(tiny_backbone, tmp_path):
  """Same method, same label count, another task: refused before config.json is rewritten,
  or the run's checkpoints would be evaluated and exported as the other task's."""
  workdir = tmp_path / "run"
  config = small_config(tiny_backbone)
  pipeline.prepare(config, workdir)
  before = (workdir / "config.json").read_bytes()
  other = small_config(tiny_backbone)
  other.task = "sst2" if config.task != "sst2" else "demo"
  with pytest.raises(UserError) as err:
    pipeline.prepare(other, workdir)
  assert str(err.value) == (f"{workdir} holds a {config.task} run (config.json task "
                            f"{config.task!r}), not {other.task}; pass a {config.task} config "
                            "(the one it was trained with) or another --workdir")
  assert (workdir / "config.json").read_bytes() == before


def test_a_rerun_that_changes_data_fields_says_so(tiny_backbone, tmp_path, caplog):
  workdir = tmp_path / "run"
  pipeline.prepare(small_config(tiny_backbone), workdir)
  config = small_config(tiny_backbone)
  config.data.dev_subset = 4
  with caplog.at_level(logging.WARNING):
    pipeline.prepare(config, workdir)
  assert (f"{workdir / 'config.json'}: this run changes data.dev_subset (8 -> 4); later "
          "phases, evaluate.py and adapler-export read the new values") in caplog.text
  assert json.loads((workdir / "config.json").read_text())["data"]["dev_subset"] == 4
  config.dtype = "bfloat16"  # the compute dtype of every later evaluation and export.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    pipeline.prepare(config, workdir)
  assert "this run changes dtype ('float32' -> 'bfloat16'); later phases" in caplog.text


def test_each_phase_checks_the_batch_sizes_it_splits_over_the_devices(tiny_backbone, run_dir,
                                                                      monkeypatch):
  """A run moved to a device count that does not divide its training batch size may still
  search and evaluate: each phase is asked only for the batch sizes it uses."""
  from adapler_jax.pipeline import context
  checked = []
  monkeypatch.setattr(context.parallel, "check_batch_size",
                      lambda size, mesh, name: checked.append(name))
  for phase, names in [("saliency", ["saliency.batch_size"]), ("search", ["eval.batch_size"]),
                       ("evaluate", ["eval.batch_size"]),
                       ("all", ["train.batch_size", "eval.batch_size", "saliency.batch_size",
                                "adapler.batch_size"])]:
    checked.clear()
    pipeline.prepare(small_config(tiny_backbone), run_dir, phase=phase)
    assert checked == names, phase


def test_a_resume_at_another_batch_size_is_refused(tiny_backbone, run_dir):
  """A training phase's steps, schedule and batch order count in its batch size: resuming it
  at another (as a move to 3 devices would ask of a batch of 16) is refused, the workdir
  left as it was; phases that do not resume it go on."""
  config = small_config(tiny_backbone)
  config.train.batch_size = 18
  before = snapshot(run_dir)
  for phase in ("finetune", "all"):
    with pytest.raises(CheckpointError) as err:
      pipeline.prepare(config, run_dir, phase=phase)
    assert str(err.value) == (
        f"{run_dir / 'finetune'} holds checkpoints trained at train.batch_size 16 "
        "(config.finetune.json), this run asks for 18; a resumed phase keeps its batch size "
        "(its steps and schedule count in it): rerun with --config.train.batch_size=16 on a "
        "number of devices that divides it, or move finetune/ aside to train it again at 18")
  assert snapshot(run_dir) == before
  pipeline.prepare(config, run_dir, phase="evaluate")  # reads fine-tuning, resumes nothing.


@pytest.mark.parametrize("field,value", [("seed", 23), ("data.train_subset", 24)])
def test_a_resume_on_other_train_rows_is_refused(tiny_backbone, run_dir, field, value):
  """A phase resumed with another seed or subset would go on over other rows (and rewrite
  its config.<phase>.json to them, so a search could hold out rows it learned from):
  refused for every training phase it would resume, the workdir left as it was."""
  config = small_config(tiny_backbone)
  section, _, key = field.rpartition(".")
  was = (config[section] if section else config)[key]
  (config[section] if section else config)[key] = value
  before = snapshot(run_dir)
  for phase in ("finetune", "adapler", "all"):
    with pytest.raises(CheckpointError) as err:
      pipeline.prepare(config, run_dir, phase=phase)
    name = "adapler" if phase == "adapler" else "finetune"
    assert str(err.value) == (
        f"{run_dir / name} holds checkpoints trained with {field} {was!r} "
        f"(config.{name}.json), this run asks for {value!r}; a resumed phase keeps the train "
        f"rows it started on: rerun with --config.{field}={was}, move {name}/ aside to train "
        f"it again, or, if {name} is finished, run the later phases alone (--phase)")
  assert snapshot(run_dir) == before
  pipeline.prepare(config, run_dir, phase="evaluate")  # resumes nothing.


def test_the_resume_check_reads_windows_and_skips_an_imported_fine_tuning(tmp_path):
  """Span QA: the windows (max length, stride) count with the rows. A fine-tuning imported
  with train.init_from_hf stepped over no rows of this config: its seed may change."""
  from adapler_jax import data  # pylint: disable=g-import-not-at-top
  from adapler_jax.pipeline import context  # pylint: disable=g-import-not-at-top
  with Checkpointer(tmp_path / "finetune") as ckpt:
    ckpt.save(4, {"w": np.zeros(2)}, metrics={"dev_metric": 0.5})

  def check(task, recorded, **now):
    config = pipeline.base_config(task, max_length=16)
    files.atomic_write_text(tmp_path / "config.finetune.json", json.dumps(
        {**config.to_dict(), **recorded}))
    for field, value in now.items():
      section, _, key = field.rpartition(".")
      (config[section] if section else config)[key] = value
    run = context.Run(config, tmp_path, data.get_task(task), None, {}, None, None)
    context.check_resumed_phases(run, "finetune")

  squad = pipeline.base_config("squad", max_length=16).to_dict()
  with pytest.raises(CheckpointError, match="trained with data.doc_stride 128 "):
    check("squad", {"data": {**squad["data"], "doc_stride": 128}}, **{"data.doc_stride": 64})
  demo = pipeline.base_config("demo", max_length=16).to_dict()
  with pytest.raises(CheckpointError, match="trained with seed 22 "):
    check("demo", {"seed": 22, "train": demo["train"]}, seed=23)
  check("demo", {"seed": 22, "train": {**demo["train"], "init_from_hf": "hf/model"}}, seed=23)


def test_saliency_over_fewer_checkpoints_than_asked_says_so(tiny_backbone, run_dir, caplog):
  config = small_config(tiny_backbone)
  config.saliency.num_checkpoints = 5
  run = pipeline.prepare(config, run_dir, phase="saliency")
  with caplog.at_level(logging.WARNING):
    pipeline.extract_saliency(run)
  kept = len(pipeline.load_finetuned(run, 5))
  assert 0 < kept < 5
  assert (f"saliency.num_checkpoints is 5, but {run_dir / 'finetune'} holds {kept} evaluated "
          f"fine-tuned checkpoint(s) (train.keep_best {config.train.keep_best}): the saliency "
          "averages those") in caplog.text


def test_a_model_folder_given_as_workdir_is_left_alone(tiny_backbone, tmp_path):
  """A Hugging Face model folder (or an export) has a config.json of its own: train.py
  refuses the folder rather than writing its run config over it."""
  folder = tmp_path / "model"
  shutil.copytree(tiny_backbone, folder)
  before = snapshot(folder)
  with pytest.raises(UserError) as err:
    pipeline.prepare(small_config(tiny_backbone), folder)
  assert str(err.value) == (
      f"{folder / 'config.json'} is not a train.py run's config (no 'task' or 'data': an "
      "export or a model folder?); pass the --workdir of a train.py run, or a new folder for "
      "this one")
  assert snapshot(folder) == before


@pytest.mark.parametrize("text", ['{"task": "demo", "da', "", "[1, 2]"])
def test_a_damaged_stored_config_is_one_line(tmp_path, text):
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(UserError, match=r"config.json is damaged \(.+\); rerun train.py with the "
                                      r"run's --config and this --workdir to write it again$"):
    pipeline.read_config(tmp_path)


def test_damaged_run_files_are_one_line(run_dir):
  """summary.json, saliency.npz and search/frontier.json cut short (a kill while a copy was
  made, say): one line naming the file and the fix, never a JSON or zip traceback."""
  from adapler_jax.pipeline import frontier  # pylint: disable=g-import-not-at-top
  from adapler_jax.train import saliency  # pylint: disable=g-import-not-at-top
  summary = run_dir / "summary.json"
  summary.write_text(summary.read_text()[:20])
  with pytest.raises(UserError, match=re.escape(f"{summary} is damaged (") + r".*\); delete "
                     "it to select the checkpoint again, or rerun --phase evaluate$"):
    pipeline.load_run(run_dir)
  npz = run_dir / "saliency.npz"
  npz.write_bytes(npz.read_bytes()[:300])
  with pytest.raises(UserError, match=re.escape(f"{npz} is damaged (") + r".*\); rerun --phase "
                     "saliency$"):
    saliency.load_for(npz, None)  # the file fails before any data is read.
  assert saliency.source(npz) is None  # run_all computes it again.
  (run_dir / "search").mkdir()
  for text in ('{"frontier": [', "[]", "{}", '{"cost": "padded", "frontier": [], "full": {}}',
               '{"cost": "padded", "frontier": [{"config": [1]}], "full": {}}'):
    (run_dir / "search" / "frontier.json").write_text(text)  # cut short, or of another shape.
    with pytest.raises(UserError, match=r"frontier.json is damaged \(.*\); rerun train.py "
                       r"--phase search"):
      frontier.load(run_dir)


def test_a_frontier_point_without_a_multiplier_per_layer_is_one_line(run_dir):
  """A frontier.json of the right shape whose pick lacks the AdapLeR setting (or holds one
  for another depth, or a negative one): one line, and nothing recorded."""
  from adapler_jax.eval import tradeoff  # pylint: disable=g-import-not-at-top
  for bad in (None, [1.0], [1.0, -1.0], [1.0, "x"], [1.0, float("inf")]):
    assert tradeoff.per_layer_multipliers(bad, 2) is None
  np.testing.assert_array_equal(tradeoff.per_layer_multipliers([1, 0.5], 2), [1.0, 0.5])
  (run_dir / "search").mkdir()
  frontier = run_dir / "search" / "frontier.json"
  frontier.write_text(json.dumps({
      "cost": "analytic", "full": {"held_out_metric": 0.5},
      "frontier": [{"config": [3, 3], "analytic_fraction": 0.4, "held_out_metric": 0.5}]}))
  before = snapshot(run_dir)
  assert one_line_error(cli("evaluate.py", "--workdir", str(run_dir), "--flops-budget", "1")) == (
      f"{frontier}: the point it picked ([3, 3]) holds no eta multiplier (a number >= 0) per "
      "layer; rerun train.py --phase search")
  assert snapshot(run_dir) == before


def test_a_full_disk_is_one_line_and_keeps_what_was_written(tmp_path, monkeypatch, capsys):
  """A result file (evaluate.py, adapler-predict) and an export written to a full disk: one
  line naming where, the earlier file or export as it was, no half-written sibling left."""
  from adapler_jax.serve import model_dir  # pylint: disable=g-import-not-at-top
  full = "error: {}: no space left on device; free some space, or write elsewhere\n"
  out = tmp_path / "result.json"
  out.write_text("old")

  def no_space(*_):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", no_space)
  with pytest.raises(SystemExit) as exit_:
    run_cli(lambda: files.atomic_write_text(out, "new"))
  assert exit_.value.code == 2 and capsys.readouterr().err == full.format(out)
  assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
  def read_only(file, *args, **kwargs):  # open() names the temporary file it could not make.
    raise OSError(errno.EROFS, "Read-only file system", str(file))

  monkeypatch.setattr("builtins.open", read_only)
  with pytest.raises(SystemExit):
    run_cli(lambda: files.atomic_write_text(out, "new"))
  assert capsys.readouterr().err == f"error: {out}: read-only file system; write elsewhere\n"
  monkeypatch.undo()
  with pytest.raises(OSError) as err:  # a file in a temporary folder names the destination.
    with files.naming_errors(out, tmp_path / ".tmp"):
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".tmp" / "a"))
  assert err.value.filename == str(out) and err.value.errno == errno.ENOSPC
  if os.path.exists("/dev/full"):  # a device is written as it is, not replaced.
    with pytest.raises(SystemExit):
      run_cli(lambda: files.atomic_write_text("/dev/full", "x"))
    assert capsys.readouterr().err == full.format("/dev/full")
  def write_on_full_disk(*_, **__):  # as a write() names no file.
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(Path, "write_bytes", write_on_full_disk)
  export = tmp_path / "exports" / "model"
  with pytest.raises(SystemExit):
    run_cli(lambda: model_dir.write_model(export, {"method": "lat"}, {"bert": {}, "head": {}},
                                          None))
  assert capsys.readouterr().err == full.format(export.parent)
  assert list(export.parent.iterdir()) == []  # its temporary folder is gone.


def test_a_search_of_another_checkpoint_is_refused_by_evaluate_and_export(run_dir, tmp_path):
  """A frontier (and a pick from it) records the checkpoint it scored: a model trained again
  since would be read at points scored on the old one. One line, nothing written."""
  from adapler_jax.pipeline import frontier, phases  # pylint: disable=g-import-not-at-top
  from adapler_jax.serve.from_run import export_run  # pylint: disable=g-import-not-at-top
  trained = pipeline.load_run(run_dir)
  ckpt = phases.adapler_checkpointer(trained.run, read_only=True)
  now = ckpt.fingerprint([trained.adapler_step])
  ckpt.close()
  (run_dir / "search").mkdir()
  point = {"config": [1, 1], "eta_multipliers": [1.0, 1.0], "analytic_fraction": 0.4,
           "held_out_metric": 0.5}
  path = run_dir / "search" / "frontier.json"
  path.write_text(json.dumps({"cost": "analytic", "full": {"held_out_metric": 0.5},
                              "frontier": [point], "checkpoint": "0" * 16}))
  message = (f"comes from a search of another checkpoint than the one this run now has (step "
             f"{trained.adapler_step}), so its points were scored on another model; move "
             f"{path.parent} aside and rerun train.py --phase search")
  before = snapshot(run_dir)
  assert one_line_error(cli("evaluate.py", "--workdir", str(run_dir), "--flops-budget",
                            "1")) == f"{path} {message}"
  assert snapshot(run_dir) == before
  chosen = run_dir / "search" / "chosen.json"
  chosen.write_text(json.dumps({"rule": {"flops_budget": 1, "max_drop": None}, **point,
                                "checkpoint": "0" * 16}))
  with pytest.raises(UserError) as err:
    export_run(run_dir, tmp_path / "export")
  assert str(err.value) == f"{chosen} {message}" and not (tmp_path / "export").exists()
  frontier.check_searched({"checkpoint": now}, phases.adapler_checkpointer(
      trained.run, read_only=True), trained.adapler_step, path)  # the current one passes.
  # A record saved before records noted their checkpoint: its store's source, which noted
  # it earlier, decides; with neither, it is not checked.
  check = lambda: frontier.check_searched({}, phases.adapler_checkpointer(
      trained.run, read_only=True), trained.adapler_step, path)
  check()
  source = run_dir / "search" / "store.source.json"
  source.write_text(json.dumps({"checkpoint": "0" * 16, "held_out_rows": "1" * 16}))
  with pytest.raises(UserError) as err:
    check()
  assert str(err.value) == f"{path} {message}"
  source.write_text(json.dumps({"checkpoint": now, "held_out_rows": "1" * 16}))
  check()


def test_lat_letting_cls_go_on_a_classification_task_is_refused_first(tiny_backbone, tmp_path):
  assert refused_first(tiny_backbone, tmp_path, "lat.keep_cls", False, method="lat") == (
      "config lat.keep_cls is False, but task demo classifies from [CLS]; keep it "
      "(--config.lat.keep_cls=True)")


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_search_floor_ratio_outside_zero_one_is_refused_first(tiny_backbone, tmp_path, ratio):
  assert refused_first(tiny_backbone, tmp_path, "search.floor_ratio", ratio) == (
      f"config search.floor_ratio is {ratio}; it must lie in [0, 1) (0: the smallest trained "
      "sub-model), e.g. --config.search.floor_ratio=0.25")


@pytest.mark.parametrize("length", [1, 0])
def test_max_length_below_two(tiny_backbone, tmp_path, length):
  assert refused_first(tiny_backbone, tmp_path, "data.max_length", length) == (
      f"config data.max_length is {length}; it must be at least 2 ([CLS] and [SEP]), e.g. "
      "--config.data.max_length=128")


def test_a_run_written_before_a_field_existed_still_loads(tmp_path):
  """A stored config gets the fields added since at their defaults; its own values stay, and
  it passes the checks a run makes before it starts."""
  config = pipeline.base_config("demo", 16)
  config.search.iterations = 3
  stored = json.loads(config.to_json())
  del stored["search"]["floor_ratio"], stored["compilation_cache"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  loaded = pipeline.read_config(tmp_path)
  assert loaded.search.floor_ratio == 0.0 and loaded.compilation_cache is True
  assert loaded.search.iterations == 3 and loaded.to_dict().keys() == config.to_dict().keys()
  from adapler_jax.pipeline import checks  # pylint: disable=g-import-not-at-top
  checks.check_config(loaded)


def test_unknown_frozen_group(tiny_backbone, tmp_path):
  assert refused_first(tiny_backbone, tmp_path, "adapler.frozen", "speed, cutoffs") == (
      "config adapler.frozen names cutoffs, not a parameter group; use any of "
      "speed,predictors,model, e.g. --config.adapler.frozen=speed,predictors")


def test_non_utf8_data_file_names_the_file_and_line(tmp_path):
  (tmp_path / "train.tsv").write_bytes(b"sentence\tlabel\na fine film\t1\nun caf\xe9\t0\n")
  with pytest.raises(DataError) as err:
    load_split("sst2", "train", tmp_path)
  assert str(err.value) == (f"{tmp_path.name}/train.tsv line 3: not UTF-8 text (byte 0xe9); "
                            "convert the file to UTF-8")


def test_workdir_that_is_a_file(tiny_backbone, tmp_path):
  path = tmp_path / "file"
  path.write_text("not a directory")
  want = f"--workdir {path} is a file, not a directory; pass a directory"
  with pytest.raises(UserError, match="^" + re.escape(want) + "$"):
    pipeline.prepare(small_config(tiny_backbone), path)
  assert one_line_error(cli("evaluate.py", "--workdir", str(path))) == want
  assert path.read_text() == "not a directory"


def test_evaluate_unknown_split_names_the_available_ones(finished):
  assert one_line_error(cli("evaluate.py", "--workdir", str(finished), "--split", "val")) == (
      "flag --split=val: value should be one of <dev|test|train>")
  run = pipeline.prepare(pipeline.read_config(finished), finished, record=False)
  with pytest.raises(UserError, match=r"^no split 'val'; use one of train, dev, test \(as the "
                     r"config defines them\)$"):
    run.dataset("val")


@pytest.mark.parametrize("size", ["0", "-3"])
def test_evaluate_batch_size_below_one(finished, size):
  assert one_line_error(cli("evaluate.py", "--workdir", str(finished), f"--batch-size={size}")) \
      == f"flag --batch_size={size}: {size} is not a positive integer"


def test_evaluate_half_finished_workdir_creates_nothing(run_dir):
  shutil.rmtree(run_dir / "adapler")
  (run_dir / "summary.json").unlink()
  before = snapshot(run_dir)
  msg = one_line_error(cli("evaluate.py", "--workdir", str(run_dir)))
  assert msg == f"no AdapLeR checkpoint in {run_dir / 'adapler'}; run --phase adapler"
  assert not (run_dir / "adapler").exists() and snapshot(run_dir) == before


def test_a_run_whose_backbone_moved_names_its_config(run_dir, tmp_path, monkeypatch):
  """evaluate.py has no backbone flag: the fix is the folder, or the run's config.json. A
  name that is no folder here reads as a hub id (a run recorded with a relative path)."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  config = json.loads((run_dir / "config.json").read_text())
  hub = (re.escape("could not fetch 'moved_bert' from the Hugging Face hub (") + r"\w+\)"
         + re.escape("; if you are offline, pass a local directory with config.json and "
                     "model.safetensors"))
  moved = "put it back, or set \"backbone\" there to where it is now"
  relative = ("if it names a folder, that is relative to the folder training ran in: run from "
              "there, or set \"backbone\" there to its absolute path")
  for backbone, reason, fix in (
      (str(tmp_path / "moved"), re.escape(f"checkpoint directory {tmp_path / 'moved'} does "
                                           "not exist"), moved),
      ("moved_bert", hub, relative)):
    (run_dir / "config.json").write_text(json.dumps({**config, "backbone": backbone}))
    before = snapshot(run_dir)
    msg = one_line_error(cli("evaluate.py", "--workdir", str(run_dir)))
    assert re.fullmatch(re.escape(f"the run's backbone {backbone} (\"backbone\" in "
                                  f"{run_dir / 'config.json'}) does not load: ") + reason
                        + re.escape(f"; {fix}"), msg), msg
    assert snapshot(run_dir) == before


def test_explain_refuses_an_empty_text_and_announces_truncation(finished, tmp_path):
  assert one_line_error(cli("evaluate.py", "--workdir", str(finished), "--explain", "  ")) == (
      "--explain got an empty text; pass the text to explain, e.g. --explain \"a gentle, funny "
      "film\"")
  proc = cli("evaluate.py", "--workdir", str(finished), "--explain", "word " * 40,
             "--output", str(tmp_path / "map"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[0] == ("note: the text has 42 tokens; the map shows its "
                                         "first 16 (data.max_length)")


def test_evaluate_defaults_to_the_runs_eval_split(run_dir):
  """--split defaults to the run's eval.split, as --engine and --batch_size default to the
  config's (it was dev whatever split the run's summary reported)."""
  path = run_dir / "config.json"
  config = json.loads(path.read_text())
  config["eval"]["split"] = "train"
  path.write_text(json.dumps(config, indent=2))
  proc = cli("evaluate.py", "--workdir", str(run_dir))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads((run_dir / "eval_train.json").read_text())["split"] == "train"
  assert not (run_dir / "eval_dev.json").exists()


def test_evaluate_refuses_bad_flags_before_touching_the_run(run_dir, tmp_path):
  """An --output on the run's own files or on a folder, and flags that cannot go together or
  hold a bad value: one line each, and the workdir as it was."""
  before = snapshot(run_dir)
  config = run_dir / "config.json"
  cases = [
      (["--output", str(config)], f"--output {config} would overwrite a file {run_dir} keeps; "
                                  "write the result elsewhere, e.g. beside it under another name"),
      (["--output", str(tmp_path)], f"--output {tmp_path} is a directory; pass a file name, "
                                    f"e.g. --output {tmp_path / 'result.json'}"),
      (["--explain", "a film", "--rationales"], "pass only one of --explain and --rationales"),
      (["--rationales", "--flops-budget", "0.5"],  # the map would not be the picked point's.
       "--explain and --rationales draw the trained cutoffs; --flops-budget and --max-drop pick "
       "a search point for an evaluation: pass one or the other"),
      (["--saliency_target", "gold"], "--saliency_target chooses the saliency --rationales "
                                      "compares with; pass --rationales too, or drop it"),
      (["--explain", "\udcff\udcfe"],  # the bytes ff fe: argv that is not UTF-8.
       "--explain got bytes that are not UTF-8 text; pass the text in UTF-8"),
      (["--flops-budget", "0"], "--flops-budget 0.0 must be in (0, 1]: a fraction of the full "
                                "model's cost, e.g. --flops-budget 0.5"),
      (["--max-drop", "-3"], "--max-drop -3.0 must be in [0, 100]: metric points below the "
                             "full model, e.g. --max-drop 1"),
      (["--max-drop", "150"], "--max-drop 150.0 must be in [0, 100]: metric points below the "
                              "full model, e.g. --max-drop 1"),
      (["--rationales", "--output", str(tmp_path / "r.png")],  # the figure would replace it.
       f"--output {tmp_path / 'r.png'}: with --rationales it names the JSON report, and the "
       "figure beside it (.png) would write over it; pass a .json path"),
  ]
  for flags, message in cases:
    assert one_line_error(cli("evaluate.py", "--workdir", str(run_dir), *flags)) == message
  assert snapshot(run_dir) == before


@pytest.mark.parametrize("multipliers", [[1, "x"], [1], [1, -1], None])
def test_an_eta_pick_that_is_not_one_multiplier_per_layer_is_not_exported(run_dir, tmp_path,
                                                                          multipliers):
  from adapler_jax.serve import ExportError  # pylint: disable=g-import-not-at-top
  from adapler_jax.serve.from_run import export_run  # pylint: disable=g-import-not-at-top
  chosen = run_dir / "search" / "chosen.json"
  chosen.parent.mkdir(exist_ok=True)
  chosen.write_text(json.dumps({"eta_multipliers": multipliers}))
  with pytest.raises(ExportError) as err:
    export_run(run_dir, tmp_path / "export")
  assert str(err.value) == (f"{chosen} holds no eta multiplier (a number >= 0) per layer; "
                            "rerun evaluate.py with --flops-budget or --max-drop, or delete it")
  assert not (tmp_path / "export").exists()


def test_a_lat_run_scored_with_padded_queries_is_not_exported(tiny_backbone, tmp_path):
  """Exports predict through the engine, which drops padding before it scores."""
  from adapler_jax.serve import ExportError  # pylint: disable=g-import-not-at-top
  from adapler_jax.serve.from_run import export_run  # pylint: disable=g-import-not-at-top
  config = small_config(tiny_backbone)
  config.method, config.lat.include_pad_queries = "lat", True
  workdir = tmp_path / "lat"
  pipeline.prepare(config, workdir)  # the run's config.json is all the refusal reads.
  with pytest.raises(ExportError, match=re.escape(
      f"{workdir} scores tokens with lat.include_pad_queries=True, which counts padded query "
      "rows; an export predicts through the engine")):
    export_run(workdir, tmp_path / "export")
  assert not (tmp_path / "export").exists()


def test_evaluate_refuses_token_maps_of_a_lat_run(tiny_backbone, tmp_path):
  config = small_config(tiny_backbone)
  config.method = "lat"
  pipeline.prepare(config, tmp_path / "lat")  # the run's config.json is all this reads.
  for flags in (["--explain", "a film"], ["--rationales"]):
    assert one_line_error(cli("evaluate.py", "--workdir", str(tmp_path / "lat"), *flags)) == (
        "--explain and --rationales read AdapLeR's contribution predictors; this run is LAT: "
        "evaluate it at a length config, or pass an AdapLeR run")
  for flags in (["--engine", "per-example"], ["--flops", "paper"]):  # were silently ignored.
    assert one_line_error(cli("evaluate.py", "--workdir", str(tmp_path / "lat"), *flags)) == (
        "--engine and --flops choose AdapLeR's engine and FLOPs count; a LAT run has one "
        "engine and reports both of its conventions (padded MACs and real-token FLOPs): drop "
        "them")


def test_paper_flops_on_a_backbone_of_another_depth_is_refused_first(tiny_backbone, tmp_path):
  """The paper's constants count 12 layers: refused before training, not after it."""
  assert refused_first(tiny_backbone, tmp_path, "eval.flops", "paper") == (
      "FLOPs mode 'paper' counts the AdapLeR paper's 12-layer BERT-base; this backbone has 2 "
      "layers: use --flops analytic (--config.eval.flops=analytic)")


def test_hard_forward_takes_one_example():
  cfg = adapler.AdapLeRConfig(EncoderConfig.tiny(max_position_embeddings=8), num_labels=2)
  params = adapler.init(jax.random.key(0), cfg)
  for ids in (np.ones((2, 5), np.int32), np.ones((1, 5), np.int32), np.ones(0, np.int32),
              np.ones(9, np.int32)):
    with pytest.raises(InputError) as err:
      adapler.hard_forward(cfg, params, ids)
    assert str(err.value) == (
        "hard_forward takes one example of shape (n,) with 1 <= n <= 8 (the model's "
        f"positions), got shape {ids.shape}; for a batch use infer.AdaptiveEngine")
  # Traced (jit, vmap, grad): one line naming what to use instead, not a tracer error.
  with pytest.raises(InputError, match="^hard_forward runs on the host, one example at a "
                                       "time .* use soft_forward to trace"):
    jax.jit(lambda ids: adapler.hard_forward(cfg, params, ids).logits)(np.ones(5, np.int32))


def test_inputs_past_the_models_tables_are_one_line():
  """Ids past the vocabulary or token types, or more tokens than positions, read NaN rows
  of the embedding tables: NaN hidden states from `encode` and `soft_forward`, and from
  `hard_forward` every token dropped behind finite logits. Each is refused, as are side
  inputs of another shape and a soft forward without its key or with lambda 0."""
  enc = EncoderConfig.tiny(max_position_embeddings=8)  # vocabulary 128, 2 token types.
  cfg = adapler.AdapLeRConfig(enc, num_labels=2)
  params = adapler.init(jax.random.key(0), cfg)
  bert = params["model"]["bert"]
  ids = np.array([[1, 5, 7, 2]], np.int32)
  cases = [
      (lambda: encode(enc, bert, np.ones((1, 9), np.int32)),
       "input of 9 tokens is longer than the model's 8 positions; truncate it"),
      (lambda: encode(enc, bert, np.where(ids == 5, 500, ids)),
       "input_ids holds 500, outside the model's vocabulary of 128"),
      (lambda: encode(enc, bert, ids, token_type_ids=np.full_like(ids, 2)),
       "token_type_ids holds 2, outside the model's token-type table of 2"),
      (lambda: encode(enc, bert, ids, attention_mask=np.ones((1, 3))),
       "attention_mask has shape (1, 3), input_ids (1, 4); give one value per token"),
      (lambda: adapler.hard_forward(cfg, params, np.array([1, 500, 2])),
       "input_ids holds 500, outside the model's vocabulary of 128"),
      (lambda: adapler.hard_forward(cfg, params, ids[0], np.zeros(3, np.int32)),
       "token_type_ids has shape (3,), input_ids (4,); give one value per token"),
      (lambda: adapler.soft_forward(cfg, params, _soft_batch(ids), 10.0, deterministic=False),
       "soft_forward with dropout (deterministic=False) needs a key"),
      (lambda: adapler.soft_forward(cfg, params, _soft_batch(ids), 0.0),
       "lam is 0.0; lambda of Eq. 4 must be > 0"),
  ]
  for call, message in cases:
    with pytest.raises(InputError) as err:
      call()
    assert str(err.value).startswith(message), str(err.value)
  # RoBERTa's positions count real tokens from an offset: as many rows past its table.
  roberta = EncoderConfig.tiny(model_type="roberta", type_vocab_size=1, pad_token_id=1,
                               position_offset=2, max_position_embeddings=10)
  assert roberta.max_length == 8
  roberta_params = adapler.init(jax.random.key(0), adapler.AdapLeRConfig(roberta, 2))
  with pytest.raises(InputError, match="input of 9 tokens is longer than the model's 8 "):
    encode(roberta, roberta_params["model"]["bert"], np.full((1, 9), 5, np.int32))
  # Under jit the values are not checked (they are not known), the shapes still are.
  hidden = jax.jit(lambda i: encode(enc, bert, i))(ids)
  assert np.isfinite(np.asarray(hidden)).all()
  with pytest.raises(InputError, match="longer than the model's 8 positions"):
    jax.jit(lambda i: encode(enc, bert, i))(np.ones((1, 9), np.int32))


def _soft_batch(ids):
  return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
          "attention_mask": np.ones(ids.shape, bool)}


def test_init_with_a_backbone_of_another_width():
  cfg = adapler.AdapLeRConfig(EncoderConfig.tiny(), num_labels=2)
  wide = adapler.init(jax.random.key(0), adapler.AdapLeRConfig(
      EncoderConfig.tiny(hidden_size=48), num_labels=2))["model"]["bert"]
  with pytest.raises(InputError) as err:
    adapler.init(jax.random.key(0), cfg, backbone=wide)
  assert str(err.value) == (
      "backbone does not fit the config: parameter shapes differ (word embeddings (128, 48) "
      "against the config's (128, 32), 2 layers); build the AdapLeRConfig from the "
      "backbone's EncoderConfig (load_backbone returns it)")


def test_atomic_write_keeps_the_old_file_until_the_rename(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  workdir_lib.atomic_write_text(path, "old")
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
  with pytest.raises(KeyboardInterrupt):
    workdir_lib.atomic_write_text(path, "new " * 1000)
  assert path.read_text() == "old"


@pytest.mark.parametrize("write", [
    lambda path: squad_eval.write_predictions({"q1": "new " * 1000}, path.parent),
    lambda path: rationale.write_json({"new": "new " * 1000}, path),
], ids=["squad_predictions", "rationale_report"])
def test_result_writers_keep_the_old_file_until_the_rename(tmp_path, monkeypatch, write):
  path = tmp_path / squad_eval.PREDICTIONS_FILE
  path.write_text("old")
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
  with pytest.raises(KeyboardInterrupt):
    write(path)
  assert path.read_text() == "old"
