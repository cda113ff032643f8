"""Shared CLI plumbing: user errors become one line on stderr and exit status 2; compiled
programs are kept on disk for the next run."""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from absl import app, flags

from adapler_jax.errors import UserError

CONFIG_FLAG = "config"
CACHE_ENV = "ADAPLER_JAX_CACHE_DIR"  # where compiled programs go; "" turns the cache off.
CACHE_MAX_BYTES = 2 << 30  # least recently used programs are evicted beyond this.
CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # JAX's names for a program and its last use.


# File-system errors that name a path the user chose (permissions, a file where a folder
# must be): reported as one line. Others, e.g. a missing file, keep their traceback.
PATH_ERRORS = (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# Write errors of the place written to (a full disk, a quota, a read-only file system): one
# line too, naming the file; what was written before stays (the writers replace files whole).
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class Terminated(BaseException):
  """SIGTERM (a scheduler stopping the job), raised in the main thread as Ctrl-C's
  KeyboardInterrupt is, so the writers' cleanup runs: no temporary file is left, and what
  was written before stays as it was."""


def _raise_terminated(signum, frame) -> None:
  del signum, frame
  raise Terminated()


def run_cli(main: Callable[[], object]) -> None:
  # The package reads Hugging Face checkpoints and tokenizers, never PyTorch models, so
  # transformers' advice that PyTorch is missing would only be noise on every command.
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  in_main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
  try:
    _run_reporting_errors(main)
  except (KeyboardInterrupt, Terminated) as e:
    name, status = (("SIGTERM", 128 + signal.SIGTERM) if isinstance(e, Terminated)
                    else ("Ctrl-C", 128 + signal.SIGINT))
    _fail(f"interrupted ({name}); what was written before stays as it was: rerun the same "
          "command to go on (training resumes from its last checkpoint)", status, "")
  finally:
    if in_main_thread:  # None: a handler set outside Python, as the default is.
      signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run_reporting_errors(main: Callable[[], object]) -> None:
  """`main()`, its user errors as one line and exit status 2."""
  try:
    main()
  except UserError as e:
    _fail(str(e))
  except PATH_ERRORS as e:
    if not e.filename:
      raise
    _fail(f"{e.filename}: {(e.strerror or type(e).__name__).lower()}; check the path and its "
          "permissions")
  except OSError as e:
    if e.errno not in DISK_ERRNOS or not e.filename:
      raise
    fix = "write elsewhere" if e.errno == errno.EROFS else "free some space, or write elsewhere"
    _fail(f"{e.filename}: {(e.strerror or os.strerror(e.errno)).lower()}; {fix}")
  except RuntimeError as e:
    message = out_of_memory_message(e)
    if message is None:
      raise
    _fail(message)
  except MemoryError as e:  # the host's: numpy's or Python's own allocation.
    detail = (str(e).splitlines() or ["MemoryError"])[0]
    _fail(f"this machine ran out of memory ({detail}); lower the batch size (--batch-size, "
          "or --config.<phase>.batch_size) or the max length")


def _fail(message: str, status: int = 2, prefix: str = "error: ") -> None:
  newline = _stop_progress_bars()
  # One write: no other thread's output inside the line.
  sys.stderr.write(f"{newline}{prefix}{message}\n")
  sys.stderr.flush()
  sys.exit(status)


def _stop_progress_bars() -> str:
  """Freezes the bars a failed loop left open as last drawn (nothing is redrawn or cleared,
  now or at exit); returns the newlines that move below them (a bar at position p draws p
  lines down and comes back), so the error starts its own line."""
  tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
  bars = [bar for bar in list(getattr(tqdm, "_instances", ())) if not bar.disable]
  for bar in bars:
    bar.disable = True
  return "\n" * (1 + max(abs(getattr(bar, "pos", 0)) for bar in bars)) if bars else ""


def out_of_memory_message(e: BaseException) -> str | None:
  """One line for XLA's out-of-memory error (`RESOURCE_EXHAUSTED`), naming the knobs that
  shrink the program; None for any other error. Raised inside a step, before any save, so
  the checkpoints already written stay as they were."""
  text = str(e)
  if type(e).__name__ not in ("JaxRuntimeError", "XlaRuntimeError") or (
      "RESOURCE_EXHAUSTED" not in text):
    return None
  size = re.search(r"allocating (\d+) bytes", text)
  wanted = f" (XLA asked for {int(size.group(1)) / 2**30:.1f} GiB)" if size else ""
  return (f"the device ran out of memory{wanted}; lower the batch size of the phase "
          "(--config.<train|saliency|adapler|lat|search|eval>.batch_size) or "
          "--config.data.max_length; the checkpoints already saved are kept")


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


VERSION_FLAG = "--version"


def _asks_version(arg: str) -> bool:
  """Whether `arg` sets the version flag, in any form absl reads (`--version`, `-version`,
  `--version=true`)."""
  name, eq, value = arg.partition("=")
  return (name in (VERSION_FLAG, VERSION_FLAG[1:])
          and (not eq or value.lower() in ("true", "t", "1", "yes", "y")))


def run_app(main: Callable[[list[str]], object]) -> None:
  """`absl.app.run(main)` under `run_cli`, with flag errors as one line too: a bad flag
  value, a config file that cannot be loaded, an unknown `--config.<field>`. Asked for,
  help exits 0 (absl exits 1); `--version` prints the version and exits 0, before the
  required flags are checked."""
  if VERSION_FLAG[2:] not in flags.FLAGS:  # defined by the command, not by an import.
    flags.DEFINE_bool(VERSION_FLAG[2:], False, "Print the adapler-jax version and exit.")
  if any(_asks_version(a) for a in sys.argv[1:]):
    import adapler_jax  # pylint: disable=g-import-not-at-top
    print(f"adapler-jax {adapler_jax.__version__}")
    sys.exit(0)
  try:
    run_cli(lambda: app.run(main, flags_parser=parse_flags))
  except SystemExit as e:
    if e.code == 1 and any(a in HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise


def run_console_script(module_name: str, main: Callable[[list[str]], object]) -> None:
  """`run_app(main)` for a console script (`adapler-predict`): `--help` describes the
  module's docstring and flags, as `python -m <module>` does. absl's help shows the
  `__main__` docstring and the flags of `sys.argv[0]`, which here is the generated wrapper:
  it is cut to the command's name, which heads those flags (not the wrapper's full path)."""
  module = sys.modules[module_name]
  sys.modules["__main__"].__doc__ = module.__doc__
  path, sys.argv[0] = sys.argv[0], os.path.basename(sys.argv[0])
  for owner in (module_name, path):  # `python -m` files `__main__`'s flags under its path.
    for flag in flags.FLAGS.get_key_flags_for_module(owner):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  run_app(main)


def parse_flags(argv: list[str]) -> list[str]:
  """`flags.FLAGS(argv)`, raising `UserError` with one line instead of printing usage (an
  argument outside a flag too: the commands take none). The
  config file runs once, in `config_flags`; only when that fails does `_load_config` run it
  again to name the file's own error."""
  path = _config_path(argv) if CONFIG_FLAG in flags.FLAGS else None
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(flag_error(" ".join(str(e).split()), path)) from None
  except Exception as e:  # pylint: disable=broad-except  (the config file's, or an override's)
    if path is None:
      raise
    _load_config(path)  # a file that cannot be loaded: one line naming it.
    if isinstance(e, (AttributeError, KeyError)):  # an override of a field the config lacks.
      raise UserError(_unknown_override(argv)) from None
    raise
  if path is not None:
    try:
      config = flags.FLAGS[CONFIG_FLAG].value  # without overrides the file loads here,
      getattr(config, "keys", None)  # and a failed load raises on first use.
    except Exception:  # pylint: disable=broad-except  (a file missing, a folder, or failing)
      _load_config(path)
      raise
    _check_loaded(path, config)
  if len(rest) > 1:  # the commands take flags only: a stray word was dropped without a word.
    raise UserError(f"unexpected argument {rest[1]!r}; give every value with its flag, as "
                    "--name=value (see --help)")
  return rest


_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")
_UNKNOWN = re.compile(r"Unknown command line flag '([\w.-]+)'")
_BAD_VALUE = re.compile(rf"flag (--{CONFIG_FLAG}\.([\w.]+)=(.*?)): ")


def flag_error(text: str, config_path: str | None = None) -> str:
  """absl's flag error as one line that names the fix: missing required flags together;
  an unknown flag that is a config field's name points to its `--config.<field>` form; a
  `--config.<field>` value of the wrong type names the type and an example value."""
  missing = _REQUIRED.findall(text)
  if missing:
    names = " and ".join(f"--{m}" for m in missing)
    verb = "is" if len(missing) == 1 else "are"
    return f"{names} {verb} missing; pass {'it' if len(missing) == 1 else 'them'} (see --help)"
  unknown = _UNKNOWN.match(text)
  if unknown and config_path is not None:
    name = unknown.group(1).replace("-", "_")
    try:
      fields = _leaf_fields(_load_config(config_path))
    except UserError:
      return text
    near = [f for f in fields if f.rsplit(".", 1)[-1] == name]
    if near:
      return (f"unknown flag --{unknown.group(1)}; config fields are set as "
              f"--{CONFIG_FLAG}.<field>: {', '.join(f'--{CONFIG_FLAG}.{f}' for f in near)}")
    return (f"unknown flag --{unknown.group(1)}; config fields are set as "
            f"--{CONFIG_FLAG}.<field> (list them with --print_config)")
  bad = _BAD_VALUE.match(text)
  if bad and config_path is not None:  # the value as the bench scripts' overrides word it.
    from adapler_jax.pipeline.config import find_field, parse_value  # pylint: disable=g-import-not-at-top
    item, dotted, value = bad.groups()
    try:
      node, leaf = find_field(_load_config(config_path), dotted, item)
      parse_value(value, node[leaf], item)
    except UserError as e:
      return str(e)
  return text


def _leaf_fields(config, prefix: str = "") -> list[str]:
  out = []
  for key, value in config.items():
    if hasattr(value, "items"):
      out += _leaf_fields(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out


def _config_path(argv: list[str]) -> str | None:
  """The `--config` file named in `argv`, if any."""
  name = f"--{CONFIG_FLAG}"
  return next((a.split("=", 1)[1] if "=" in a else b for a, b in zip(argv, argv[1:] + [""])
               if a == name or a.startswith(name + "=")), None)


def _load_config(path: str):
  """`get_config()` of the config file at `path`; one-line `UserError` when the file cannot
  be run or does not give a config of `base_config`'s shape."""
  fix = "pass --config configs/<task>.py, or a copy of one"
  try:
    Path(path).open("rb").close()
  except OSError as e:  # missing, a folder, unreadable: as config_flags words it.
    raise UserError(f"config file {path} cannot be loaded ({e}); pass --config "
                    "configs/<task>.py") from None
  if not path.endswith(".py"):  # Python cannot import it (e.g. a data file passed here).
    raise UserError(f"config file {path} is not a Python file (.py); {fix}; data files go in "
                    "--config.data.train_file (dev_file, test_file)")
  try:
    spec = importlib.util.spec_from_file_location("_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (any error of the user's file)
    reason = f"{type(e).__name__}: {e}".splitlines()[0]
    raise UserError(f"config file {path} cannot be loaded ({reason}); {fix}") from None
  _check_loaded(path, config)
  return config


def _check_loaded(path: str, config) -> None:
  """One line unless the file's `get_config()` gave a config of `base_config`'s shape."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if not isinstance(config, ml_collections.ConfigDict) or "data" not in config:
    raise UserError(f"config file {path}: get_config() returns {type(config).__name__}, not "
                    "the ConfigDict of pipeline.base_config(task, max_length); build it as "
                    "configs/<task>.py do")


def _unknown_override(argv: list[str]) -> str:
  """The message of `find_field` for the first `--config.<key>` the config file lacks."""
  from adapler_jax.pipeline.config import find_field  # pylint: disable=g-import-not-at-top
  prefix, path = f"--{CONFIG_FLAG}.", _config_path(argv)
  config = _load_config(path)
  for arg in argv:
    if arg.startswith(prefix):
      try:
        find_field(config, arg[len(prefix):].split("=", 1)[0], arg)
      except UserError as e:
        return str(e)
  return f"a --{CONFIG_FLAG}.<field> override does not fit the config file {path}"


def compilation_cache_dir() -> Path | None:
  """The per-user folder of compiled programs: `$ADAPLER_JAX_CACHE_DIR` (empty: None), else
  `$XDG_CACHE_HOME/adapler-jax/jax`, else `~/.cache/adapler-jax/jax`."""
  if CACHE_ENV in os.environ:
    return Path(os.environ[CACHE_ENV]).expanduser() if os.environ[CACHE_ENV] else None
  root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(root) / "adapler-jax" / "jax"


def enable_compilation_cache(config=None) -> str | None:
  """Turns on JAX's persistent compilation cache before anything compiles, so a rerun loads
  the programs an earlier run compiled; every program is kept, however small, as CPU ones
  compile in well under JAX's default 1 s threshold. Off when `config.compilation_cache` is
  False or `$ADAPLER_JAX_CACHE_DIR` is empty; a folder set through JAX itself
  (`JAX_COMPILATION_CACHE_DIR`) is kept. Our folder is trimmed to `CACHE_MAX_BYTES` here,
  once per run. Returns the folder in use, or None."""
  import jax  # pylint: disable=g-import-not-at-top
  if config is not None and not config.get("compilation_cache", True):
    return None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = compilation_cache_dir()
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  # JAX's own size limit lists the folder and reads every entry's access-time file on each
  # write (75 ms a write at 1,000 entries, 300 ms at 4,000): the folder is trimmed once per
  # run instead, here.
  jax.config.update("jax_compilation_cache_max_size", -1)
  prune_compilation_cache(path, CACHE_MAX_BYTES)
  return str(path)


def prune_compilation_cache(folder: Path, max_bytes: int) -> int:
  """Deletes the least recently used programs in `folder` until the rest take at most
  `max_bytes`; returns how many it deleted. A program's last use is the later of its file's
  access and modification times (Linux's default `relatime` mounts record an access at least
  daily). Entries another process deletes meanwhile are skipped."""
  entries = []
  for program in Path(folder).glob(f"*{CACHE_SUFFIX}"):
    try:
      st = program.stat()
    except FileNotFoundError:
      continue
    entries.append((max(st.st_atime_ns, st.st_mtime_ns), st.st_size, program))
  total, deleted = sum(size for _, size, _ in entries), 0
  for _, size, program in sorted(entries):
    if total <= max_bytes:
      break
    program.unlink(missing_ok=True)
    program.with_name(program.name[:-len(CACHE_SUFFIX)] + ATIME_SUFFIX).unlink(missing_ok=True)
    total, deleted = total - size, deleted + 1
  return deleted
