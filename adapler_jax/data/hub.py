"""Task splits from the Hugging Face hub through `datasets.load_dataset`."""

from __future__ import annotations

from collections.abc import Iterator

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


def load_from_hub(spec: TaskSpec, split: str) -> TextDataset:
  """Split `split` of `spec` from the hub; DataError (one line) when it cannot be downloaded."""
  path, name = spec.hub
  datasets = extras.require("datasets", "hub", f"downloading {spec.name} from the Hugging "
                            "Face hub", "pass a local folder with --config.data.data_dir")
  hub_split = dict(spec.hub_splits)[split]
  where = f"hub {path}" + (f"/{name}" if name else "") + f" split '{hub_split}'"
  try:
    table = datasets.load_dataset(path, name, split=hub_split)
  except Exception as e:  # Offline, unknown id, missing config: all reported the same way.
    raise DataError(format_message(
        where, f"could not load ({_first_line(e)})",
        f"pass a local folder with the {spec.name} files with --config.data.data_dir")) from None
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
