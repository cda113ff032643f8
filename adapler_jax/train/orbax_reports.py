"""Orbax's stray reports after a failed restore, silenced.

A restore that fails (a truncated or damaged checkpoint) raises one error, which the
`Checkpointer` turns into one line; orbax leaves its other shard reads pending, and they
report the same failure later, from other threads and at interpreter exit.
`silence_abandoned_reads` drops exactly those reports and passes every other one on.
"""

from __future__ import annotations

import logging as py_logging
import re
import sys

_SHARD_READ = "_read_array_index_and_device_put"  # orbax's per-shard read coroutine.


def silence_abandoned_reads() -> None:
  """Silences the reads orbax leaves pending after a failed restore. Installed before
  each restore (the reports can come from TensorStore's threads while the failure is
  still being raised); once one has failed, `gc.collect` finalises what is left.

  Their coroutines fail with the same error and are finalised later (by this collection,
  by orbax's event loop, or at interpreter exit), each printing an 'Exception ignored'
  traceback, and those still running when orbax's event loop closes report that it is
  closed; the restore has already raised the one error that matters. Only those two kinds
  are dropped; every other unraisable exception still reaches the hook. Where orbax runs
  the reads as asyncio tasks, asyncio logs them instead; a filter drops those records. A
  read that completes on a TensorStore thread after the loop closed fails in the
  `call_soon_threadsafe` that TensorStore calls from C, which prints it through
  `sys.excepthook`; that one report is dropped too.
  """
  _filter_hook("unraisablehook", _abandoned_read)
  _filter_hook("excepthook", lambda kind, value, tb: _wake_of_closed_loop(value, tb))
  asyncio_log = py_logging.getLogger("asyncio")
  if not any(isinstance(f, AbandonedReadTasks) for f in asyncio_log.filters):
    asyncio_log.addFilter(AbandonedReadTasks())


def _filter_hook(name: str, drop) -> None:
  """Wraps `sys.<name>` once so that the reports `drop(*args)` accepts go nowhere; every
  other report still reaches the hook that was there before."""
  previous = getattr(sys, name)
  if getattr(previous, "_drops_abandoned_reads", False):
    return

  def hook(*args):
    if not drop(*args):
      previous(*args)

  hook._drops_abandoned_reads = True  # pylint: disable=protected-access
  setattr(sys, name, hook)


class AbandonedReadTasks(py_logging.Filter):
  """Drops asyncio's reports of orbax's abandoned shard reads (newer orbax runs them as
  tasks, and awaits some through futures): '<class> exception was never retrieved', the
  class a Task, a Future or a subclass such as the `_GatheringFuture` of `asyncio.gather`
  (their failure is the one the restore already raised), and 'Task was destroyed but it is
  pending!' (one still running at exit). A task's report names the read; a future's does
  not, but its exception's traceback passes through it."""

  _REPORTS = re.compile(r"\w*(Task|Future) exception was never retrieved"
                        r"|Task was destroyed but it is pending")

  def filter(self, record: py_logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not (self._REPORTS.match(msg)
                and (_SHARD_READ in msg or _raised_in_shard_read(record.exc_info)))


def _raised_in_shard_read(exc_info) -> bool:
  tb = exc_info[2] if exc_info else None
  while tb is not None:
    if tb.tb_frame.f_code.co_name == _SHARD_READ:
      return True
    tb = tb.tb_next
  return False


def _abandoned_read(unraisable) -> bool:
  if getattr(unraisable.object, "__qualname__", "") == _SHARD_READ:
    return True
  return _is_closed_loop(unraisable.exc_value)


def _wake_of_closed_loop(value: BaseException, tb) -> bool:
  """A closed loop's `call_soon_threadsafe` called from C: no Python frame above it."""
  return (_is_closed_loop(value) and tb is not None
          and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def _is_closed_loop(e: BaseException) -> bool:
  return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
