"""Readers for local data files: GLUE TSV, headerless CSV, JSON lines, IMDB and HateXplain.

Every reader yields `(where, record)` pairs, `where` naming the file and 1-based line for
messages and `record` mapping column (name or 0-based index) to value; `build_examples` turns
records into a `TextDataset`, raising `DataError` with one line on bad input.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from adapler_jax.data.dataset import TextDataset
from adapler_jax.data.tasks import LocalFormat, TaskSpec
from adapler_jax.errors import DataError, format_message, location

Record = Mapping[Any, Any]
Rows = Iterator[tuple[str, Record]]


class Hints(NamedTuple):
  """Fix suggestions appended to messages about columns and labels; `empty`: the message
  (problem; fix) for a split without rows, `{split}` standing for its name."""
  column: str
  label: str
  empty: str


TASK_HINTS = Hints(column="use the task's standard file format",
                   label="fix the label or remove the row",
                   empty="split '{split}' has no examples; add data rows or use another split")
FILE_HINTS = Hints(column="pass --config.data.text_fields and --config.data.label_field "
                          "(load_file's text_fields= and label_field=) naming columns of the "
                          "file",
                   label="fix the label or pass --config.data.label_names (load_file's "
                         "label_names=)",
                   empty="no data rows; add data rows or pass another file")


# Lines end at "\n" alone ("\r\n" too, its "\r" stripped by the readers): a carriage return
# inside a line is text, not a row boundary, and the csv module reads quoted newlines whole.
NEWLINE = "\n"


def _open_text(path: Path):
  if path.name.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8-sig", newline=NEWLINE)
  return open(path, encoding="utf-8-sig", newline=NEWLINE)


def _first_bad_line(path: Path) -> int:
  """1-based number of the first line of `path` that is not UTF-8."""
  with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError:
        return line_no
  return 1


def _not_utf8(path: Path, e: UnicodeDecodeError) -> DataError:
  return DataError(format_message(location(path, _first_bad_line(path)),
                                  f"not UTF-8 text (byte 0x{e.object[e.start]:02x})",
                                  "convert the file to UTF-8"))


UNREADABLE_FIX = "use the unmodified file, or gzip it again"


@contextlib.contextmanager
def reading(path: Path):
  """Reads of `path` inside raise one-line DataErrors: text that is not UTF-8 (naming the
  line), or a file that cannot be read (a truncated or mislabelled .gz)."""
  try:
    yield
  except UnicodeDecodeError as e:
    raise _not_utf8(path, e) from None
  except (OSError, EOFError, zlib.error) as e:  # zlib: a .gz with damaged blocks.
    raise DataError(format_message(location(path), f"cannot be read ({e})",
                                   UNREADABLE_FIX)) from None


def _utf8_rows(path: Path, rows: Rows) -> Rows:
  """`rows`, with a decoding or reading error raised as a one-line DataError."""
  with reading(path):
    yield from rows


def read_utf8(path: Path) -> str:
  """The text of `path`; a one-line DataError naming the line when it is not UTF-8."""
  with reading(path):
    return path.read_text(encoding="utf-8")


def tsv_header(line: str | None) -> list[str]:
  """The field names of a TSV header line (a UTF-8 byte-order mark dropped); [] for none."""
  line = (line or "").lstrip("\ufeff").rstrip("\r\n")
  return line.split("\t") if line else []


def tsv_rows(lines: Iterable[str], header: Sequence[str],
             where: Callable[[int], str]) -> Iterator[tuple[int, list[str]]]:
  """`(line_no, fields)` of each non-blank line after a TSV header, numbered from 2:
  tab-separated with quoting off, exactly as many fields as the header (else a one-line
  DataError naming `where(line_no)`)."""
  for line_no, line in enumerate(lines, start=2):
    line = line.rstrip("\r\n")
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != len(header):
      raise DataError(format_message(
          where(line_no), f"expected {len(header)} tab-separated fields as in the header, "
          f"found {len(fields)}", "remove stray tabs or line breaks in that row"))
    yield line_no, fields


def read_tsv(path: Path) -> tuple[list[str], Rows]:
  """Header and rows of a tab-separated file read with quoting off (`tsv_rows`)."""
  with reading(path):
    with _open_text(path) as f:
      header = tsv_header(f.readline())

  def rows() -> Rows:
    with _open_text(path) as f:
      f.readline()
      for line_no, fields in tsv_rows(f, header, lambda n: location(path, n)):
        yield location(path, line_no), dict(zip(header, fields))
  return header, _utf8_rows(path, rows())


# Python's csv module refuses fields over 128 KiB by default; a long document is data, not a
# quoting error. Raising the limit (process-wide, as the csv module keeps it) takes nothing
# from other readers.
CSV_FIELD_LIMIT = 2**31 - 1


def csv_reader(f) -> Iterator[list[str]]:
  """`csv.reader` over `f` with no limit on a field's size, strict about quotes: a quote
  left open (which would swallow every line after it into one field) or text after a
  closing quote is an error, not data."""
  csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
  return csv.reader(f, strict=True)


def read_csv(path: Path, has_header: bool) -> tuple[list[str] | None, Rows]:
  """Header (or None) and rows of a comma-separated file with standard double-quote escaping.
  Rows whose fields are all blank are skipped, as blank lines are in the other formats."""
  header = None
  if has_header:
    with reading(path):
      with _open_text(path) as f:
        header = csv_header(csv_reader(f), location(path, 1))

  def rows() -> Rows:
    with _open_text(path) as f:
      reader = csv_reader(f)
      if has_header:
        next(reader, None)
      for line_no, record in csv_rows(reader, header, lambda n: location(path, n)):
        yield location(path, line_no), record
  return header, _utf8_rows(path, rows())


def csv_header(reader, where: str) -> list[str]:
  """The first row of `reader` ([] for an empty file); bad quoting, or a column named twice
  (a record would keep one of them), is a one-line DataError at `where`."""
  try:
    header = next(reader, [])
  except csv.Error as e:
    raise DataError(format_message(where, f"bad CSV in the header: {e}",
                                   QUOTE_FIX)) from None
  check_unique(header, where)
  return header


def check_unique(header: Sequence[str], where: str) -> None:
  """One-line DataError when the header names a column twice: a record keeps one of them."""
  header = list(header)
  twice = sorted({c for c in header if header.count(c) > 1 and c.strip()})
  if twice:
    raise DataError(format_message(where, f"the header names column {twice[0]!r} "
                                   f"{header.count(twice[0])} times",
                                   "give each column its own name"))


QUOTE_FIX = 'close the quote, or double a quote inside a quoted field ("")'


def csv_rows(reader, header: Sequence[str] | None,
             where: Callable[[int], str]) -> Iterator[tuple[int, Record]]:
  """`(line_no, record)` of each row `reader` (a `csv_reader` past the header) has left,
  numbered by the line the record starts on, rows of blank fields skipped: the header's
  fields by name, or without a header by column index. A row of another width than the
  header, or bad quoting, is a one-line DataError naming `where(line_no)`."""
  while True:
    start = reader.line_num + 1  # a quoted field may run over several lines.
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      if "new-line character seen in unquoted field" in str(e):  # a lone "\r" (NEWLINE).
        raise DataError(f"{where(start)}: a carriage return (\\r) inside an unquoted field; "
                        "quote the field, or remove the carriage return") from None
      raise DataError(format_message(where(start), f"bad CSV in the record starting here: {e}",
                                     QUOTE_FIX)) from None
    if not "".join(fields).strip():
      continue
    if header is None:
      yield start, dict(enumerate(fields))
      continue
    if len(fields) != len(header):
      raise DataError(format_message(
          where(start), f"expected {len(header)} comma-separated fields as in "
          f"the header, found {len(fields)}", "quote fields that contain commas"))
    yield start, dict(zip(header, fields))


def read_jsonl(path: Path) -> Rows:
  """Rows of a JSON-lines file (`.jsonl`, `.jsonl.gz`), one object per line."""
  return _utf8_rows(path, _jsonl_rows(path))


def _jsonl_rows(path: Path) -> Rows:
  with _open_text(path) as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = location(path, line_no)
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(format_message(where, f"invalid JSON ({e.msg})",
                                       "write one JSON object per line")) from None
      if not isinstance(record, dict):
        raise DataError(format_message(where, "expected a JSON object",
                                       "write one JSON object per line"))
      yield where, record


def _label_index(values: Sequence[str] | None) -> dict[str, int] | None:
  return None if values is None else {v: i for i, v in enumerate(values)}


def label_text(raw: Any, where: str, hints: Hints = FILE_HINTS) -> str:
  """A label value as the text classes are named by: a JSON 1.0 is class 1, as 1 is; a
  list, an object or a fraction is one line."""
  if isinstance(raw, float) and raw.is_integer():
    raw = int(raw)
  if isinstance(raw, (float, list, dict)):
    raise DataError(format_message(where, f"label {json.dumps(raw)} is not a class name or "
                                   "index", hints.label))
  return _written(raw)


def _written(raw: Any) -> str:
  """A label value as the file writes it."""
  return str(raw).strip() if not isinstance(raw, bool) else str(raw)


def _parse_label(raw: Any, index: dict[str, int] | None, where: str, hints: Hints) -> int:
  if index is not None and _written(raw) in index:  # label_names "1.0,2.0" hold a JSON 1.0.
    return index[_written(raw)]
  value = label_text(raw, where, hints)
  if index is not None:
    if value in index:
      return index[value]
    if value.isdecimal() and str(int(value)) in index:  # "01" is class "1", as inferred.
      return index[str(int(value))]
    raise DataError(format_message(
        where, f"label {value!r} is not one of {list(index)}", hints.label))
  if value.isdecimal():  # not isdigit: "²" is a digit that int() refuses.
    return int(value)
  raise DataError(format_message(where, f"label {value!r} is not a class index (0, 1, ...)",
                                 hints.label))


def visible(text: str) -> bool:
  """Whether `text` shows anything: whitespace, control and format characters (a zero-width
  space) alone tokenize to nothing."""
  return any(c.isprintable() and not c.isspace() for c in text)


def _missing_column(where: str, column: Any, record: Record, hints: Hints) -> DataError:
  found = [str(c) for c in record]
  kind = "column" if not isinstance(column, int) else "column index"
  return DataError(format_message(where, f"no {kind} {column!r}; found columns {found}",
                                  hints.column))


def check_columns(where: str, header: Sequence[Any], columns: Iterable[Any],
                  hints: Hints) -> None:
  """DataError naming the first of `columns` missing from `header` and the columns found (or
  that there is no header: an empty file, or an empty first line), or a column named twice."""
  if not header:
    raise DataError(format_message(where, "the first line is empty, so there is no header row",
                                   "write the column names on the first line, then the rows"))
  for c in columns:
    if c not in header:
      raise _missing_column(where, c, dict.fromkeys(header), hints)
  check_unique(header, where)


def build_examples(
    rows: Iterable[tuple[str, Record]],
    *,
    task: str,
    source: str,
    split: str,
    text_columns: Sequence[Sequence[Any]],
    label_column: Any,
    label_values: Sequence[str] | None,
    id_columns: Sequence[Any] = (),
    replace: Sequence[tuple[str, str]] = (),
    hints: Hints = TASK_HINTS,
) -> TextDataset:
  """A `TextDataset` from records: texts from column groups, labels (none when `label_column`
  is None), ids; DataError on bad rows."""
  index = _label_index(label_values)
  ids: list[str] = []
  texts: tuple[list[str], ...] = tuple([] for _ in text_columns)
  labels: list[int] = []
  labelled = label_column is not None
  needed = ([c for group in text_columns for c in group] + [label_column] * labelled
            + list(id_columns))
  for row, (where, record) in enumerate(rows):
    for c in needed:
      if c not in record:
        raise _missing_column(where, c, record, hints)
    for group, out in zip(text_columns, texts):
      parts = []
      for c in group:
        value = record[c]
        if isinstance(value, list):
          value = " ".join(map(str, value))
        if not isinstance(value, str):
          raise DataError(format_message(where, f"column {c!r} holds {type(value).__name__}, "
                                         "not text", hints.column))
        for old, new in replace:
          value = value.replace(old, new)
        if visible(value):
          parts.append(value.strip())
      if not parts:
        names = ", ".join(repr(c) for c in group)
        raise DataError(format_message(where, f"empty text in {names}",
                                       "fill in the text or remove the row"))
      out.append(" ".join(parts))
    if labelled:
      labels.append(_parse_label(record[label_column], index, where, hints))
    ids.append("-".join(str(record[c]) for c in id_columns) if id_columns else f"{split}-{row}")
  if not ids:
    raise DataError(format_message(source, hints.empty.format(split=split)))
  return TextDataset(ids=ids, texts=texts, labels=np.asarray(labels, np.int32) if labelled
                     else None, task=task, source=source)


def folder_problem(data_dir: Path) -> str:
  """Why `data_dir`, which is not a folder, cannot be the data folder."""
  if data_dir.exists():
    return f"data folder {data_dir} is a file, not the folder that holds it ({data_dir.parent})"
  return f"data folder {data_dir} does not exist"


def missing_file(spec_name: str, split: str, path: Path, data_dir: Path,
                 fix: str | None = None, also: str = "") -> DataError:
  """Why the data file `path` (or `path` + `also`, e.g. ".gz") of a split is not there."""
  fix = fix or f"pass the folder that holds the {spec_name} files with --config.data.data_dir"
  if not data_dir.is_dir():
    return DataError(format_message(f"{spec_name} {split}", folder_problem(data_dir), fix))
  if path.is_dir():
    return DataError(format_message(f"{spec_name} {split}",
                                    f"{path} is a folder, not the data file", fix))
  names = sorted(p.name for p in data_dir.iterdir())
  listing = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") or "nothing"
  expected = f"{path} (or {path.name}{also})" if also else str(path)
  return DataError(format_message(f"{spec_name} {split}",
                                  f"expected file {expected} not found; the folder has: "
                                  f"{listing}", fix))


def _read_table_task(spec: TaskSpec, fmt: LocalFormat, split: str, data_dir: Path) -> TextDataset:
  path = data_dir / fmt.file_for(split)
  if not path.is_file():
    raise missing_file(spec.name, split, path, data_dir)
  needed = [c for g in fmt.text_columns for c in g] + [fmt.label_column, *fmt.id_columns]
  if fmt.kind == "tsv":
    header, rows = read_tsv(path)
    hints = TASK_HINTS._replace(column=f"{spec.name} files need the columns {needed}")
    check_columns(location(path, 1), header, needed, hints)
  else:
    _, rows = read_csv(path, has_header=False)
    hints = TASK_HINTS._replace(column=f"{spec.name} files have {max(needed) + 1} "
                                "comma-separated columns, label first, no header")
  return build_examples(rows, task=spec.name, source=str(path), split=split,
                        text_columns=fmt.text_columns, label_column=fmt.label_column,
                        label_values=fmt.label_values, id_columns=fmt.id_columns,
                        replace=spec.replace, hints=hints)


def _imdb_folder_rows(root: Path, split: str) -> Rows:
  for label, name in ((0, "neg"), (1, "pos")):
    for path in sorted((root / split / name).glob("*.txt")):
      text = read_utf8(path)
      yield location(path), {"id": f"{split}/{name}/{path.name}", "text": text, "label": label}


def _read_imdb(spec: TaskSpec, fmt: LocalFormat, split: str, data_dir: Path) -> TextDataset:
  name = fmt.file_for(split)
  for candidate in (data_dir / f"{name}.jsonl.gz", data_dir / f"{name}.jsonl"):
    if candidate.is_file():
      rows, source = read_jsonl(candidate), str(candidate)
      break
  else:
    for root in (data_dir, data_dir / "aclImdb"):
      if (root / name / "pos").is_dir() and (root / name / "neg").is_dir():
        rows, source = _imdb_folder_rows(root, name), str(root / name)
        break
    else:
      raise missing_file(spec.name, split, data_dir / f"{name}.jsonl.gz (or {name}/pos, "
                         f"{name}/neg)", data_dir)
  return build_examples(rows, task=spec.name, source=source, split=split,
                        text_columns=fmt.text_columns, label_column=fmt.label_column,
                        label_values=fmt.label_values, id_columns=fmt.id_columns,
                        replace=spec.replace)


def majority_label(votes: Sequence[Any]) -> Any | None:
  """The value more than half of `votes` agree on, else None."""
  if not votes:
    return None
  value, count = collections.Counter(votes).most_common(1)[0]
  return value if count * 2 > len(votes) else None


def _read_hatexplain(spec: TaskSpec, fmt: LocalFormat, split: str,
                     data_dir: Path) -> TextDataset:
  """HateXplain rows of `split`; posts whose annotators have no majority label are dropped."""
  paths = [data_dir / "dataset.json", data_dir / "post_id_divisions.json"]
  for path in paths:
    if not path.is_file():
      raise missing_file(spec.name, split, path, data_dir)
  fix = "use the original HateXplain files"
  loaded = []
  for path in paths:
    try:
      loaded.append(json.loads(read_utf8(path)))
    except json.JSONDecodeError as e:
      raise DataError(format_message(location(path, e.lineno), f"invalid JSON ({e.msg})",
                                     fix)) from None
    if not isinstance(loaded[-1], dict):
      raise DataError(format_message(location(path), f"holds a JSON {type(loaded[-1]).__name__}"
                                     ", not an object", fix))
  posts, divisions = loaded
  key = fmt.file_for(split)
  if key not in divisions:
    raise DataError(format_message(location(paths[1]), f"no key {key!r}; found {list(divisions)}",
                                   "use the original post_id_divisions.json"))

  ids = divisions[key]
  if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
    raise DataError(format_message(location(paths[1]), f"{key!r} is not a list of post ids",
                                   fix))

  def rows() -> Rows:
    for post_id in ids:
      where = f"{location(paths[0])} post {post_id}"
      if post_id not in posts:
        raise DataError(format_message(where, "listed in post_id_divisions.json but missing "
                                       "from dataset.json", "use matching files"))
      post = posts[post_id]
      annotators = post.get("annotators", []) if isinstance(post, dict) else None
      if not isinstance(annotators, list) or not all(
          isinstance(a, dict) and isinstance(a.get("label"), (str, type(None)))
          for a in annotators):
        raise DataError(format_message(where, "expected an object with a list of annotator "
                                       "objects, each with a string label", fix))
      label = majority_label([a.get("label") for a in annotators])
      if label is not None:
        yield where, {"id": post_id, "text": post.get("post_tokens", []), "label": label}

  return build_examples(rows(), task=spec.name, source=str(paths[0]) + f" [{key}]", split=split,
                        text_columns=(("text",),), label_column="label",
                        label_values=fmt.label_values, id_columns=("id",))


def task_file(spec: TaskSpec, split: str, data_dir: Path) -> Path:
  """The file of `split` of a task over named files (relative names: under `data_dir`)."""
  path = data_dir / spec.local.file_for(split)
  if not path.is_file():
    raise missing_file(spec.name, split, path, path.parent,
                       f"pass an existing .csv, .tsv or .jsonl file with "
                       f"--config.data.{split}_file")
  return path


def _read_file_task(spec: TaskSpec, fmt: LocalFormat, split: str, data_dir: Path) -> TextDataset:
  """A split of a task over named files (task `custom`): `load_file` on the split's file."""
  path = task_file(spec, split, data_dir)
  return load_file(path, fmt.text_columns, fmt.label_column, fmt.label_values or None,
                   id_field=fmt.id_columns[0] if fmt.id_columns else None, task=spec.name)


_READERS = {"tsv": _read_table_task, "csv": _read_table_task, "imdb": _read_imdb,
            "hatexplain": _read_hatexplain, "file": _read_file_task}


def read_local(spec: TaskSpec, split: str, data_dir: str | os.PathLike[str]) -> TextDataset:
  """Split `split` of task `spec` from its folder `data_dir` in the task's standard format."""
  if spec.local is None:
    raise DataError(f"task '{spec.name}' has no local file format; leave data_dir unset")
  return _READERS[spec.local.kind](spec, spec.local, split, Path(data_dir))


def _as_groups(text_fields: str | Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
  if isinstance(text_fields, str):
    return ((text_fields,),)
  groups = tuple(tuple(g) if isinstance(g, (list, tuple)) else (g,) for g in text_fields)
  if len(groups) not in (1, 2):
    raise DataError(f"text_fields must name 1 or 2 texts, got {list(text_fields)}")
  return groups


def load_file(
    path: str | os.PathLike[str],
    text_fields: str | Sequence[Any] = ("text",),
    label_field: str | None = "label",
    label_names: Sequence[str] | None = None,
    id_field: str | None = None,
    task: str = "file",
) -> TextDataset:
  """Any CSV/TSV file with a header, or JSON-lines file (`.jsonl`, `.jsonl.gz`), as a dataset.

  Args:
    path: the file; its suffix picks the format (`.tsv`: tabs with quoting off, `.csv`: commas
      with standard quoting, `.jsonl`/`.json`: one object per line; each may end with `.gz`).
    text_fields: one field (single text) or two (pair); an inner tuple joins fields by a space.
    label_field: field holding the label; None: the file is unlabelled (e.g. test texts).
    label_names: raw label values in class-index order; None: labels are class indices 0, 1, ...
    id_field: field with unique ids; None: `'<file stem>-<row>'`.
    task: task name recorded in the dataset.
  """
  path = Path(path)
  if not path.is_file():
    raise missing_file(task, path.stem, path, path.parent)
  groups = _as_groups(text_fields)
  needed = ([c for g in groups for c in g] + ([label_field] if label_field is not None else [])
            + ([id_field] if id_field else []))
  split = path.name.split(".")[0]
  return build_examples(_file_rows(path, needed), task=task, source=str(path), split=split,
                        text_columns=groups, label_column=label_field, label_values=label_names,
                        id_columns=(id_field,) if id_field else (), hints=FILE_HINTS)


def _file_rows(path: Path, needed: Sequence[str]) -> Rows:
  """Rows of a CSV/TSV (header checked for `needed`) or JSON-lines file, by suffix."""
  suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
  ext = suffixes[-1] if suffixes else ""
  if ext == ".tsv":
    header, rows = read_tsv(path)
  elif ext == ".csv":
    header, rows = read_csv(path, has_header=True)
  elif ext in (".jsonl", ".json"):
    return read_jsonl(path)
  else:
    raise DataError(format_message(str(path), f"unknown file type {ext or '(none)'!r}",
                                   "use .tsv, .csv or .jsonl (optionally .gz)"))
  check_columns(location(path, 1), header, needed, FILE_HINTS)
  return rows


def file_labels(spec: TaskSpec, split: str, data_dir: str | os.PathLike[str]) -> tuple[str, ...]:
  """The label values of `split` of a task over named files, in class order: `0, 1, ...,
  max` when every value is a class index, else the distinct values sorted."""
  path, field = task_file(spec, split, Path(data_dir)), spec.local.label_column
  values = set()
  for where, record in _file_rows(path, [field]):
    if field not in record:
      raise _missing_column(where, field, record, FILE_HINTS)
    value = record[field]
    if value is None or not str(value).strip():  # not a class named "None" or "".
      raise DataError(format_message(where, f"empty label (column {field!r})",
                                     "give every row a label, or remove the row"))
    values.add(label_text(value, where))
  if not values:
    raise DataError(format_message(location(path), FILE_HINTS.empty))
  if all(v.isdecimal() for v in values):
    names = tuple(str(i) for i in range(max(map(int, values)) + 1))
    seen = {str(int(v)) for v in values}
    unused = [n for n in names if n not in seen]
    if unused:  # e.g. labels 1..4: class 0 never occurs.
      logging.warning("%s: label column %r holds class indices up to %s, but never %s; the "
                      "model gets %d classes (set data.label_names to the values in class "
                      "order if the labels do not start at 0)", path, field, names[-1],
                      ", ".join(unused), len(names))
    return names
  return tuple(sorted(values))
