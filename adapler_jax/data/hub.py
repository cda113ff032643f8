"""Task splits from the Hugging Face hub through `datasets.load_dataset`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from adapler_jax import extras
from adapler_jax.data.dataset import TextDataset
from adapler_jax.data.readers import Record, build_examples, majority_label
from adapler_jax.data.tasks import TaskSpec
from adapler_jax.errors import DataError, format_message


def _first_line(e: BaseException, limit: int = 160) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:limit]}"


def _columns(table, columns: list[str]) -> dict[str, list]:
  """`columns` (those the table has) as plain lists, read at once: indexing a table's
  column (a lazy `datasets.Column` in recent versions) cell by cell costs a lookup each."""
  return table.select_columns([c for c in columns if c in table.column_names]).to_dict()


def _rows(table, columns: list[str], where: str) -> Iterator[tuple[str, Record]]:
  """Records holding `columns` (those the table has)."""
  data = _columns(table, columns)
  for i in range(len(table)):
    yield f"{where} row {i + 1}", {c: v[i] for c, v in data.items()}


def _hatexplain_rows(table, where: str) -> Iterator[tuple[str, Record]]:
  """HateXplain hub rows with the annotators' majority label; posts without one are dropped."""
  data = _columns(table, ["id", "annotators", "post_tokens"])
  for i, (post_id, annotators, tokens) in enumerate(
      zip(data["id"], data["annotators"], data["post_tokens"])):
    label = majority_label(list(annotators["label"]))
    if label is not None:
      yield f"{where} row {i + 1}", {"id": post_id, "text": tokens, "label": label}


PROBE_SECONDS = 3.0
# One probe serves the splits a run loads together; a later load (a notebook) probes again.
PROBE_REUSE_SECONDS = 60.0
_probes: dict[tuple[str, int], tuple[float, str | None]] = {}  # endpoint -> (when, outcome)


def hub_unreachable() -> str | None:
  """Why the hub's endpoint takes no connection within `PROBE_SECONDS`, or None: also in
  offline mode (the user asked for the cache) and behind a proxy (which a direct
  connection cannot judge). Without a route, `datasets` retries for about 25 s, logging
  each attempt, before it falls back to its cache. An outcome is reused for
  `PROBE_REUSE_SECONDS`."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  url = urllib.parse.urlparse(constants.ENDPOINT)
  proxies = urllib.request.getproxies()
  if (constants.HF_HUB_OFFLINE or _true(os.environ.get("HF_DATASETS_OFFLINE"))
      or url.scheme in proxies or "all" in proxies):
    return None
  port = url.port or (80 if url.scheme == "http" else 443)
  last = _probes.get((url.hostname, port))
  if last is not None and time.monotonic() - last[0] < PROBE_REUSE_SECONDS:
    return last[1]
  outcome = []

  def connect():
    try:
      socket.create_connection((url.hostname, port), PROBE_SECONDS).close()
      outcome.append(None)
    except OSError as e:
      outcome.append(f"{url.hostname}: {e.strerror or e}")
  # In a thread, so that the name lookup (which takes no timeout) is bounded too.
  probe = threading.Thread(target=connect, daemon=True)
  probe.start()
  probe.join(PROBE_SECONDS)
  result = outcome[0] if outcome else f"{url.hostname}: no answer within {PROBE_SECONDS:g} s"
  _probes[url.hostname, port] = (time.monotonic(), result)
  return result


def _true(value: str | None) -> bool:
  return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def _cache_only(datasets):
  """`datasets` and `huggingface_hub` in offline mode for the duration: a split already in
  the local cache loads, and nothing waits on the network. The switches are module
  globals, read at call time by the installed versions: process-wide for the duration,
  which the data loading here (one thread) allows."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  switches = [(m, "HF_HUB_OFFLINE") for m in (constants, getattr(datasets, "config", None))
              if m is not None and hasattr(m, "HF_HUB_OFFLINE")]
  saved = [getattr(m, a) for m, a in switches]
  for m, a in switches:
    setattr(m, a, True)
  try:
    yield
  finally:
    for (m, a), value in zip(switches, saved):
      setattr(m, a, value)


def load_table(spec: TaskSpec, split: str, title: str, files: str) -> tuple[Any, str]:
  """`datasets.load_dataset` of `spec`'s hub split -> (table, where it came from), or a
  one-line DataError naming it, with the fix: a local folder of `files` (a missing
  `datasets` package names its extra; `title` names the task in that message). With the
  hub unreachable, only the local datasets cache is read."""
  path, name = spec.hub
  datasets = extras.require("datasets", "hub", f"downloading {title} from the Hugging Face "
                            "hub", "pass a local folder with --config.data.data_dir")
  hub_split = dict(spec.hub_splits)[split]
  where = f"hub {path}" + (f"/{name}" if name else "") + f" split '{hub_split}'"
  fix = f"pass a local folder with {files} with --config.data.data_dir"
  unreachable = hub_unreachable()
  try:
    with _cache_only(datasets) if unreachable else contextlib.nullcontext():
      return datasets.load_dataset(path, name, split=hub_split), where
  except Exception as e:  # Offline, unknown id, missing config: all reported the same way.
    problem = (f"the Hugging Face hub is unreachable ({unreachable}), and the datasets "
               f"cache could not serve it ({_first_line(e)})" if unreachable
               else f"could not load ({_first_line(e)})")
    raise DataError(format_message(where, problem, fix)) from None


def load_from_hub(spec: TaskSpec, split: str) -> TextDataset:
  """Split `split` of `spec` from the hub; DataError (one line) when it cannot be downloaded."""
  table, where = load_table(spec, split, spec.name, f"the {spec.name} files")
  label_values = tuple(str(i) for i in range(spec.num_labels))
  if spec.name == "hatexplain":
    rows, text_columns, label_column, ids = (
        _hatexplain_rows(table, where), (("text",),), "label", ("id",))
  else:
    ids = next(((c,) for c in ("idx", "id") if c in table.column_names), ())
    text_columns, label_column = spec.text_fields, spec.label_field
    needed = [c for g in text_columns for c in g] + [label_column, *ids]
    rows = _rows(table, needed, where)
  fix = f"pass a local folder with labelled {spec.name} files with --config.data.data_dir"
  try:
    return build_examples(rows, task=spec.name, source=where, split=split,
                          text_columns=text_columns, label_column=label_column,
                          label_values=label_values, id_columns=ids, replace=spec.replace)
  except DataError as e:
    if "label '-1'" in str(e):
      raise DataError(format_message(where, "has no gold labels (label -1)", fix)) from None
    raise
