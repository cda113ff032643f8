"""The workdir's own safety: one process at a time, and files that are whole or absent.

A run holds an exclusive `flock` on `WORKDIR/.lock` for as long as its process lives; the
kernel drops it when the process ends, however it ends, so a lock file left by a killed run
never blocks the next one. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from absl import logging

from adapler_jax import environment, files
from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text  # noqa: F401  (the workdir's writer)

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # workdir -> the open lock file of this process.


def check_dir(workdir: str | os.PathLike[str]) -> Path:
  """`workdir` as a Path; one-line `UserError` when it exists and is not a directory."""
  path = Path(workdir)
  if path.exists() and not path.is_dir():
    raise UserError(f"--workdir {path} is a file, not a directory; pass a directory")
  return path


def lock(workdir: str | os.PathLike[str]) -> None:
  """Takes `workdir` (created if missing) for the rest of this process; reentrant.

  Raises:
    UserError: another live process holds it (the message names that process).
  """
  path = check_dir(workdir).resolve()
  if path in _held:
    return
  files.check_writable(Path(workdir), "--workdir", folder=True)
  path.mkdir(parents=True, exist_ok=True)
  fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
    os.close(fd)
    raise UserError(f"{path} is in use by {holder}; wait for it to end or pass another "
                    "--workdir") from None
  os.ftruncate(fd, 0)
  os.write(fd, f"process {os.getpid()} on {socket.gethostname()} "
               f"({' '.join(sys.argv)[:200]})\n".encode())
  _held[path] = fd


def record_config(run, phase: str) -> None:
  """Writes the config `phase` runs with to `WORKDIR/config.<phase>.json`, and what it runs
  on to `WORKDIR/environment.<phase>.json` (process 0)."""
  if run.is_main_process:
    run.workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.workdir / f"config.{phase}.json",
                      run.config.to_json_best_effort(indent=2))
    _record_environment(run.workdir / f"environment.{phase}.json", phase)


def _record_environment(path: Path, phase: str) -> None:
  """Writes `environment.describe()` to `path`, warning first if it differs from the record
  an earlier run of `phase` left there (a resumed run will not repeat it bit for bit)."""
  now = environment.describe()
  try:
    before = json.loads(path.read_text())
  except (OSError, ValueError):
    before = None
  changed = environment.differences(before, now) if isinstance(before, dict) else []
  if changed:
    logging.warning("%s: the %s phase last ran elsewhere (%s); a resumed or repeated run "
                    "will not match the earlier one bit for bit", path, phase,
                    "; ".join(changed))
  atomic_write_text(path, json.dumps(now, indent=2) + "\n")
