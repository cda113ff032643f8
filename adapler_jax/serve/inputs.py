"""Prediction inputs: one item -> its texts, text / JSON lines / CSV files, GLUE test TSVs.

Everything that turns a user's input into texts goes through `texts_of`, so a new input
kind (e.g. question + context) is one more branch there.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

from adapler_jax.data import readers
from adapler_jax.errors import DataError

GENERIC_FIELDS = (("text",), ("text_pair",))  # accepted besides the model's own field names.


def texts_of(item: Any, fields: Sequence[Sequence[Sequence[str]]], num_texts: int,
             where: str) -> tuple[str, ...]:
  """The `num_texts` texts (1, or 2 for pairs) of one input.

  Args:
    item: a string (a pair as `first<TAB>second`; a tab in a single text is refused, as a
      TSV line read as text), a tuple / list of strings, or a dict
      holding the texts under one of the `fields` namings.
    fields: namings to try, each one group of field names per text (a group's values are
      joined by a space; a list value, e.g. pre-split tokens, too).
    num_texts: texts the model takes.
    where: the input's place, for the one-line error.
  """
  if isinstance(item, str):
    texts = tuple(item.split("\t"))
  elif isinstance(item, dict):
    texts = _from_record(item, fields, num_texts, where)
  elif isinstance(item, (tuple, list)) and all(isinstance(t, str) for t in item):
    texts = tuple(item)
  else:
    raise DataError(f"{where}: {type(item).__name__} is not a text, a pair of texts or a "
                    "record; pass strings, (text, text) tuples or dicts")
  if not any(readers.visible(t) for t in texts):
    raise DataError(f"{where}: empty text; give every input some text (blank lines of a "
                    "text file are skipped)")
  for text in texts:
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, from bytes decoded leniently.
      raise DataError(f"{where}: the text holds {text[e.start]!r}, a lone surrogate, not "
                      "Unicode text; decode its bytes as UTF-8 (errors='replace' keeps the "
                      "rest)") from None
  if len(texts) != num_texts:
    shape = "a sentence pair" if num_texts == 2 else "one text"
    tabs = " tab-separated fields" if isinstance(item, str) else ""
    raise DataError(f"{where}: the model takes {shape}, this input has {len(texts)}{tabs}; "
                    + ("give text<TAB>text or a record with " + _names(fields[0])
                       if num_texts == 2 else "give one text per input (a tab inside a "
                       "text: a JSON-lines record {\"text\": ...}; a GLUE task's TSV test "
                       "file: --format glue)"))
  return texts


def _from_record(record: dict, fields, num_texts: int, where: str) -> tuple[str, ...]:
  extra = [f for naming in fields for g in list(naming)[num_texts:] for f in g if f in record]
  if extra:  # e.g. text_pair for a single-text model: refused, never silently dropped.
    raise DataError(f"{where}: the model takes one text, and the record also has "
                    f"{', '.join(map(repr, extra))}; drop it, or use a model of a sentence-pair "
                    "task")
  for naming in fields:
    groups = list(naming)[:num_texts]
    if len(groups) == num_texts and all(all(f in record for f in g) for g in groups):
      return tuple(" ".join(_join(record[f], f, where) for f in g) for g in groups)
  generic = _names(GENERIC_FIELDS[:num_texts]).replace(" + ", " / ")
  raise DataError(f"{where}: the record lacks the model's input field(s) {_names(fields[0])} "
                  f"(it has {', '.join(map(str, record)) or 'no fields'}); add them, or use "
                  f"{generic}")


def _join(value, field: str, where: str) -> str:
  """A field's text: a string, or a list of strings (words) joined by spaces."""
  if isinstance(value, str):
    return value
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return " ".join(value)
  raise DataError(f"{where}: field {field!r} holds {type(value).__name__}, not text; give it "
                  "a string")


def _names(groups) -> str:
  return " + ".join("/".join(g) for g in groups)


def read_lines(lines: Iterable[str], source: str,
               kind: str = "auto") -> tuple[list[str], list[Any]]:
  """`(ids, items)` of a text file (`kind` "text": one text per line) or a JSON-lines file
  ("jsonl": one record per line); "auto" tells them by the first non-blank line starting
  with `{`. Lines that show nothing are skipped (blank, or only zero-width or control
  characters). Ids are the record's `id` / `idx` / `index` field,
  else the 1-based line number."""
  ids, items = [], []
  is_json = {"auto": None, "text": False, "jsonl": True}[kind]
  for number, line in enumerate(lines, 1):
    line = line.rstrip("\r\n")
    if number == 1:
      line = line.lstrip("\ufeff")  # a byte-order mark left by the caller's decoding.
    if not readers.visible(line):  # blank, or zero-width or control characters alone.
      continue
    if is_json is None:
      is_json = line.lstrip().startswith("{")
    if is_json:
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        whole = not ids and (line.strip() == "{" or line.lstrip().startswith('{"data"'))
        raise DataError(f"{source} line {number}: not a JSON record ({e.msg}); give one JSON "
                        "object per line, or plain text lines"
                        + (" without --format jsonl" if kind == "jsonl" else "")
                        + (" (an official SQuAD JSON file: --input FILE --format squad)"
                           if whole else "")) from None
      if not isinstance(record, dict):
        raise DataError(f"{source} line {number}: a JSON {type(record).__name__}, not an "
                        "object; give one JSON object per line")
      key = next((k for k in ("id", "idx", "index") if k in record), None)
      value = record[key] if key else number
      if isinstance(value, bool) or not isinstance(value, (str, int)):  # not "None", "True".
        raise DataError(f"{source} line {number}: {key} {json.dumps(value)} is not a string or "
                        "an integer; give each record its own id, or none")
      ids.append(str(value))
      items.append(record)
    else:
      ids.append(str(number))
      items.append(line)
  return ids, items


def read_csv_records(lines: Iterable[str], source: str) -> tuple[list[str], list[dict]]:
  """`(ids, records)` of a CSV file with a header line: each row a record of its columns,
  whose texts are found as in JSON lines (the model's field names, or text / text_pair),
  read as the task data's CSV files are (`data.readers.csv_rows`). Ids are the `id` /
  `idx` / `index` column, else the row's line number."""
  reader = readers.csv_reader(lines)
  header = readers.csv_header(reader, f"{source} line 1")
  if not "".join(header).strip():
    raise DataError(f"{source} line 1: no header; a CSV input names its columns on the first "
                    "line, e.g. text or sentence")
  key = next((k for k in ("id", "idx", "index") if k in header), None)
  ids, records = [], []
  for line_no, record in readers.csv_rows(reader, header, lambda n: f"{source} line {n}"):
    ids.append(record[key] if key else str(line_no))
    records.append(record)
  return ids, records


def read_glue_tsv(lines: Iterable[str], columns: Sequence[Sequence[str]],
                  source: str) -> tuple[list[str], list[tuple[str, ...]]]:
  """`(indices, texts)` of a GLUE test TSV: a header with `index` and the text `columns`,
  read as the task data's TSV files are (`data.readers.tsv_rows`)."""
  lines = iter(lines)
  header = readers.tsv_header(next(lines, None))
  if not header:
    raise DataError(f"{source} is empty; pass a GLUE test TSV with a header line")
  readers.check_unique(header, f"{source} line 1")
  wanted = ["index"] + [c for g in columns for c in g]
  missing = [c for c in wanted if c not in header]
  if missing:
    raise DataError(f"{source}: the header lacks {', '.join(missing)} (has "
                    f"{', '.join(header)}); pass the task's GLUE test TSV")
  at = {c: header.index(c) for c in wanted}
  indices, texts = [], []
  for _, row in readers.tsv_rows(lines, header, lambda n: f"{source} line {n}"):
    indices.append(row[at["index"]])
    texts.append(tuple(" ".join(row[at[c]] for c in g) for g in columns))
  return indices, texts


def glue_lines(indices: Sequence[str], predictions: Sequence[int],
               labels: Sequence[str]) -> list[str]:
  """The GLUE submission TSV: `index<TAB>prediction`, predictions as the task's file labels
  (SST-2 / MRPC 0 or 1, QNLI / MNLI label names)."""
  return ["index\tprediction"] + [f"{i}\t{labels[p]}" for i, p in zip(indices, predictions)]


def check_input(path: str, wanted: str) -> None:
  """One line for an --input that is a folder or does not exist; `wanted` names the fix."""
  if Path(path).is_dir():
    raise DataError(f"--input {path} is a directory; pass {wanted}")
  if not Path(path).exists():  # a pipe, such as <(...), is read like a file.
    raise DataError(f"--input {path} does not exist; pass {wanted}")


@contextmanager
def open_input(path: str):
  """The input as text: UTF-8, strictly (stdin too: Python decodes it with
  surrogateescape), a leading byte-order mark dropped; a .gz file decompressed; lines end
  at "\n" alone (`readers.NEWLINE`)."""
  if path == "-":
    if not hasattr(sys.stdin, "buffer"):  # replaced by a text stream, as in tests.
      yield sys.stdin
      return
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="strict",
                              newline=readers.NEWLINE)
    try:
      yield stream
    finally:
      stream.detach()  # stdin stays open.
    return
  check_input(path, "a text, JSON-lines or CSV file, or -")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8-sig", newline=readers.NEWLINE) as f:
    yield f


GZIP_MAGIC = b"\x1f\x8b"


@contextmanager
def decoding(source: str):
  """An input that does not decode inside the block, as one line naming `source`."""
  try:
    yield
  except UnicodeDecodeError as e:
    if e.object[:2] == GZIP_MAGIC:
      raise DataError(f"{source} is gzip-compressed; rename it to end in .gz, or decompress "
                      "it (gunzip)") from None
    raise DataError(f"{source} is not UTF-8 text (byte 0x{e.object[e.start]:02x}); convert "
                    "it to UTF-8") from None
  except gzip.BadGzipFile as e:
    raise DataError(f"{source} is not a gzip file ({e}); decompress it again, or drop .gz "
                    "from its name") from None
