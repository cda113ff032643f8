"""Files that are whole or absent (written to a temporary name, then renamed into place),
and result paths that never land on a run's or an export's own files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

from adapler_jax.errors import UserError


def check_output(path: str | os.PathLike[str], owned: str | os.PathLike[str] | None = None,
                 flag: str = "--output") -> Path:
  """`path` as a file a command may write its result to: one-line `UserError` when it is a
  directory, or one of the files the run or export `owned` keeps (see `owns`), or any
  other run or export above it, or a name ending in a slash (a folder to be)."""
  text = os.fspath(path)
  path = Path(path)
  if text.endswith(("/", os.sep)) and not path.is_dir():
    raise UserError(f"{flag} {text} names a folder (it ends with {text[-1]}); pass a file name, "
                    f"e.g. {flag} {path / 'result.json'}")
  if path.is_dir():  # beside the outermost run or export holding it, where none keeps it.
    keepers = [a for a in (path, *path.parents) if _is_run_or_export(a)]
    example = (keepers[-1].with_name(f"{keepers[-1].name}_result.json") if keepers
               else path / "result.json")
    raise UserError(f"{flag} {path} is a directory; pass a file name, e.g. {flag} {example}")
  keeper = kept_by(path, owned)
  if keeper is not None:
    raise UserError(f"{flag} {path} would overwrite a file {keeper} keeps; write the "
                    "result elsewhere, e.g. beside it under another name")
  check_writable(path, flag)
  return path


def check_writable(path: Path, flag: str, *, folder: bool = False) -> None:
  """One line, before any work, when `path` (a file, or with `folder` a folder to write
  in) cannot be created: a file stands where one of its folders would go, or the nearest
  existing folder takes no new file. That is probed by creating one there and removing
  it: permission bits say nothing for root, nor on a read-only or special file system
  such as /proc."""
  parent = Path(path).absolute() if folder else Path(path).absolute().parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise UserError(f"{flag} {path}: {parent} is a file, not a folder; pass a path in a folder")
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=parent)
  except OSError as e:
    raise UserError(f"{flag} {path}: cannot write in {parent} ({e.strerror}); pass a path in "
                    "a folder you can write to") from None
  os.close(fd)
  os.unlink(probe)


def is_number(value) -> bool:
  """Whether a value read from JSON is an int or a float (not a bool)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a workdir or an export keeps: top-level files, and folders with all they hold.
OWNED_FILES = ("summary.json", "metrics.jsonl", "saliency.npz", ".lock", "model.safetensors")
OWNED_PREFIXES = ("config.", "environment.")
OWNED_DIRS = ("finetune", "adapler", "lengthdrop", "search", "tensorboard", "tokenizer")


def _is_run_or_export(folder: Path) -> bool:
  """Whether `folder` holds a run's or an export's config.json (both name their method)."""
  config = folder / "config.json"
  try:
    stored = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else None
  except (OSError, ValueError):
    return False
  return isinstance(stored, dict) and "method" in stored


def kept_by(path: str | os.PathLike[str],
            owned: str | os.PathLike[str] | None = None) -> Path | None:
  """The run or export that keeps `path` (see `owns`): `owned` when it does, else the nearest
  run's workdir or export above `path` that does; None when none does."""
  above = [a for a in Path(path).absolute().parents if _is_run_or_export(a)]
  return next((Path(k) for k in ([owned] if owned is not None else []) + above
               if owns(k, path)), None)


def owns(directory: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
  """Whether `path` is one of the files or folders a run's workdir (or an export)
  `directory` keeps, or lies in one of those folders."""
  root, path = Path(directory).resolve(), Path(path).resolve()
  if root not in path.parents:
    return False
  parts = path.relative_to(root).parts
  first = parts[0]
  if first in OWNED_DIRS:
    return True
  return len(parts) == 1 and (first in OWNED_FILES or (first.startswith(OWNED_PREFIXES)
                                                      and first.endswith(".json")))


def array_crc32(array) -> str:
  """CRC-32 of an array's bytes as 8 hex digits (checkpoints and exports store these)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  data = np.ascontiguousarray(np.asarray(array)).reshape(-1).view(np.uint8)
  return f"{zlib.crc32(data):08x}"


def read_json(path: str | os.PathLike[str], fix: str) -> Any:
  """The JSON in `path`; one-line `UserError` naming the file and `fix` when it is damaged
  (truncated by a kill, say)."""
  try:
    return json.loads(Path(path).read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is damaged ({e}); {fix}") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
  """Writes `text` to `path` whole: a reader sees the old file or the new one, never a part.

  A link to a file has the file it names replaced, and stays a link; a path that is not a
  file (a device such as /dev/null, a pipe, /dev/stdout) is written to as it is, never
  replaced by a file.
  """
  with atomic_writer(path) as f:
    f.write(text)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]):
  """A text file, written piece by piece inside the block, that replaces `path` whole when
  the block ends (as `atomic_write_text`); an error or a kill inside leaves `path` as it was
  and no temporary file. Its write errors name `path`."""
  path = Path(path)
  if path.exists() and not path.is_file():
    with naming_errors(path):
      f = open(path, "w", encoding="utf-8")
    with _closing_named(f, path):
      yield _NamedWrites(f, path)
    return
  path = path.resolve() if path.is_symlink() else path
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with naming_errors(path, tmp):
      f = open(tmp, "w", encoding="utf-8")
    with _closing_named(f, path, tmp):
      yield _NamedWrites(f, path, tmp)
      with naming_errors(path, tmp):
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)  # a full disk, a kill: no half-written sibling stays.
    raise


def sync_tree(directory: str | os.PathLike[str]) -> None:
  """Flushes every file under `directory`, then the folders themselves, to the disk, so a
  rename that publishes the folder never outlives its contents in a power cut."""
  directory = Path(directory)
  for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
    if not path.is_symlink():
      _sync(path)
  _sync(directory)


def sync_folder(directory: str | os.PathLike[str]) -> None:
  """Flushes `directory`'s entries (a rename in it) to the disk."""
  _sync(Path(directory))


def _sync(path: Path) -> None:
  """fsync of a file; of a folder where the system allows it (Windows opens none, some
  network file systems refuse it, a folder without read permission cannot be opened)."""
  folder = path.is_dir()
  if folder and os.name == "nt":
    return
  try:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
  except OSError:
    if folder:
      return
    raise
  try:
    os.fsync(fd)
  except OSError as e:
    if not folder or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES,
                                     errno.EPERM):
      raise
  finally:
    os.close(fd)


@contextlib.contextmanager
def _closing_named(f, *names: Path):
  """Closes `f` at the end of the block, a close error (the last buffered write) naming
  `names[0]`."""
  try:
    yield
  finally:
    with naming_errors(*names):
      f.close()


class _NamedWrites:
  """A text file whose write errors name `path` (not the caller's other OSErrors)."""

  def __init__(self, f, path: Path, *aliases: Path):
    self._f, self._names = f, (path, *aliases)

  def write(self, text: str) -> int:
    with naming_errors(*self._names):
      return self._f.write(text)


@contextlib.contextmanager
def uninterrupted():
  """Ctrl-C and SIGTERM that arrive inside the block are delivered when it ends (to the
  handlers set before it), so steps that only make sense together, such as the two renames
  that swap a folder for another, all happen. Main thread only (elsewhere, and for
  SIGKILL, nothing is deferred)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, handler in previous.items():  # None: set outside Python, as the default is.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    for s in caught:
      signal.raise_signal(s)


@contextlib.contextmanager
def naming_errors(path: str | os.PathLike[str], *aliases: str | os.PathLike[str]):
  """An `OSError` inside that names no file (a write on a full disk), or one of `aliases`
  or a file in it (a temporary file or folder the user never chose), names `path` instead,
  so the CLIs can say where it happened."""
  try:
    yield
  except OSError as e:
    name = None if e.filename is None else os.fspath(e.filename)
    unnamed = name is None or any(name == os.fspath(a) or name.startswith(os.fspath(a) + os.sep)
                                  for a in aliases)
    if unnamed and e.errno is not None:
      raise OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path)) from e
    raise
