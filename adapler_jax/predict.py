"""Predicts labels of raw texts (or answers to questions) with an exported model, through the
batched engine.

  python -m adapler_jax.predict --model exports/sst2 [--input FILE|-] [--output FILE|-]
      [--batch-size 32] [--rationales] [--format auto|text|jsonl|csv|glue|squad]
      [--length-config ...]
  adapler-predict --model exports/sst2 --input texts.txt

Input (--format auto): text lines (pairs as text<TAB>text), or JSON lines with the task's
fields (e.g. {"sentence": ...}, {"question": ..., "sentence": ...}; "text" / "text_pair"
always work), or a CSV file with a header naming the same fields (--format csv, the default
for a .csv --input). Output: JSON lines with id, label, probabilities, logits, length and
kept_tokens per layer; with --rationales also tokens, their characters in the input
(char_spans), kept_positions and (AdapLeR) scores.

--format glue reads a GLUE test TSV (index + text columns, no label) and writes the
submission TSV `index<TAB>prediction` (e.g. --output SST-2.tsv).

A span QA export (SQuAD) answers questions: input lines are question<TAB>context, or JSON
lines with "question" and "context"; each output line holds the answer, its character span
in the context, its score and the tokens kept per layer. --format squad (the default for a
.json or .json.gz --input) reads an official SQuAD v1.1 JSON file, answers optional, and
writes the official predictions file `{question id: answer}` (e.g. --output predictions.json).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import sys
import types
from pathlib import Path

from absl import flags, logging

from adapler_jax import files
from adapler_jax.cli import run_console_script
from adapler_jax.errors import UserError
from adapler_jax.eval.squad import predictions_text
from adapler_jax.reduce.lengths import parse_config, validate_config
from adapler_jax.serve import Predictor, inputs, load_model


@functools.cache
def define_flags() -> types.SimpleNamespace:
  """Defines the command's flags, once, and returns their holders. The command calls it, not
  the import: absl keeps one flag registry per process, and importing this module must leave
  names like --output free (`adapler_jax.export` defines one too, and so may the importer)."""
  holders = types.SimpleNamespace(
      model=flags.DEFINE_string("model", None, "An export directory (adapler-export --output)."),
      input=flags.DEFINE_string("input", "-", "Input file, or - for stdin."),
      output=flags.DEFINE_string("output", "-", "Output file, or - for stdout."),
      batch_size=flags.DEFINE_integer("batch_size", 32, "Rows per engine batch: examples, or "
                                      "for span QA context windows.", lower_bound=1),
      rationales=flags.DEFINE_bool("rationales", False, "Also write the tokens, their "
                                   "characters in the input (char_spans), the positions each "
                                   "layer kept and (AdapLeR) the predictor scores."),
      format=flags.DEFINE_enum("format", "auto", ["auto", "text", "jsonl", "csv", "glue", "squad"],
                               "Input format: auto (a .csv file is csv; JSON lines if the first "
                               "line is an object, else text; for a span QA model a .json(.gz) "
                               "file is squad), text, jsonl, csv (a header naming the fields), "
                               "glue (a GLUE test TSV -> submission) or squad (an official "
                               "SQuAD JSON file -> {id: answer})."),
      length_config=flags.DEFINE_string("length_config", None, "LAT: run at this length config "
                                        "instead of the exported one, e.g. 52,42,34,28,23,19."),
      chunk_size=flags.DEFINE_integer("chunk_size", 16384, "Inputs tokenized, run and written "
                                      "at a time: memory stays bounded however long the input, "
                                      "and the output grows chunk by chunk (a file still "
                                      "appears whole, at the end).", lower_bound=1))
  flags.DEFINE_alias("batch-size", "batch_size")
  flags.DEFINE_alias("chunk-size", "chunk_size")
  flags.DEFINE_alias("length-config", "length_config")
  flags.mark_flag_as_required("model")
  return holders


@contextlib.contextmanager
def _output(path: str):
  """Where the predictions go, written chunk by chunk: stdout, or the file, which replaces
  any earlier one whole at the end (a kill mid-way leaves that one as it was)."""
  if path == "-":
    yield sys.stdout
    return
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  with files.atomic_writer(path) as f:
    yield f


SQUAD_FILE = "an official SQuAD JSON file"
# Output formats without room for rationales: (what they hold, the file, the inputs instead).
_NO_RATIONALES = {
    "squad": ("each window's tokens", "SQuAD predictions file holds answers only",
              "question<TAB>context"),
    "glue": ("the tokens", "GLUE submission file holds labels only", "text"),
}


def _input_format(model, kind: str, path: str) -> str:
  """The --format to read `path` with: `kind`, or for "auto" "csv" for a .csv file and, on a
  span QA model, "squad" for a .json / .json.gz file that is not JSON lines."""
  if kind == "squad" and not model.is_span:
    raise UserError(f"--format squad needs a span QA model (SQuAD); this one is {model.task}: "
                    "pass text or JSON lines")
  if kind == "auto" and path.lower().endswith((".csv", ".csv.gz")):
    return "csv"
  if (kind == "auto" and model.is_span and path.endswith((".json", ".json.gz"))
      and Path(path).is_file() and not _is_json_lines(path)):
    return "squad"
  return kind


def _is_json_lines(path: str) -> bool:
  """Whether the first non-blank line of `path` is a whole JSON record without SQuAD's
  `data` (a SQuAD file is one object: on one line it holds `data`, pretty-printed its first
  line does not parse)."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8-sig") as f:
      line = next((l for l in f if l.strip()), "")
    record = json.loads(line)
  except (OSError, UnicodeDecodeError, EOFError, ValueError):
    return False  # read as SQuAD, whose reader names the problem in one line.
  return isinstance(record, dict) and "data" not in record


def _read_squad(path: str) -> tuple[list[str], list[dict[str, str]]]:
  """`(ids, items)` of an official SQuAD JSON file; answers, when present, are checked."""
  from adapler_jax.data.squad import read_squad_json  # pylint: disable=g-import-not-at-top
  if path == "-":
    raise UserError(f"--format squad reads {SQUAD_FILE}; pass it with --input PATH")
  inputs.check_input(path, SQUAD_FILE)
  dataset = read_squad_json(path, answers_required=False)
  return dataset.ids, [{"question": e.question, "context": e.context} for e in dataset.examples]


def main(argv):
  del argv
  flag = define_flags()
  logging.set_verbosity(logging.WARNING)
  if flag.output.value != "-":
    output = files.check_output(flag.output.value, flag.model.value)
    model_dir = Path(flag.model.value).resolve()
    if model_dir in output.resolve().parents:  # the export stays the export's files alone.
      beside = model_dir.with_name(f"{model_dir.name}_{output.name}")
      raise UserError(f"--output {flag.output.value} is inside the export {flag.model.value}, "
                      "where adapler-export --force would refuse to replace it; write it beside "
                      f"the export, e.g. --output {beside}")
    if flag.input.value != "-" and output.resolve() == Path(flag.input.value).resolve():
      raise UserError(f"--output {flag.output.value} is the --input file; the predictions would "
                      "replace the texts: write them to another file")
  model = load_model(flag.model.value)
  length_config = None
  if flag.length_config.value is not None:  # '' too: it is no config of this model.
    base, depth = model.speed.get("base", model.max_length), model.config.encoder.num_layers
    length_config = parse_config(flag.length_config.value, base=base, num_layers=depth)
    if model.method == "lat":  # the errors name the flag; an AdapLeR model refuses any.
      length_config = validate_config(length_config, base, depth, name="--length-config",
                                      keep_cls=model.selection_flags.keep_cls)
  predictor = Predictor(model, batch_size=flag.batch_size.value, length_config=length_config)
  source = "stdin" if flag.input.value == "-" else flag.input.value
  kind = _input_format(predictor.model, flag.format.value, flag.input.value)
  if flag.rationales.value and kind in _NO_RATIONALES:
    tokens, target, inputs_ = _NO_RATIONALES[kind]
    raise UserError(f"--rationales writes {tokens} to JSON lines, and the {target}: drop "
                    f"--rationales, or pass {inputs_} or JSON lines")
  if kind == "squad":
    ids, items = _read_squad(flag.input.value)
  else:
    columns = predictor.model.meta["inputs"].get("tsv_columns")
    if kind == "glue" and not columns:
      raise UserError(f"--format glue needs a model of a GLUE task; this one is "
                      f"{predictor.model.task}")
    with inputs.open_input(flag.input.value) as f, inputs.decoding(source):
      if kind == "glue":
        ids, items = inputs.read_glue_tsv(f, columns, source)
      elif kind == "csv":
        ids, items = inputs.read_csv_records(f, source)
      else:
        ids, items = inputs.read_lines(f, source, kind)
  if not items:
    raise UserError(f"{source} holds no texts; pass one text or JSON record per line")
  predictor.check(items, ids, source=source)  # every input, before any chunk runs.
  answers, size = {}, flag.chunk_size.value
  labels = predictor.model.meta["inputs"].get("file_labels")  # --format glue's.
  with _output(flag.output.value) as out:
    for start in range(0, len(items), size):
      chunk = slice(start, start + size)
      label = (True if len(items) <= size else
               f"inputs {start + 1}-{min(start + size, len(items))} of {len(items)}")
      rows = predictor.predict(items[chunk], ids[chunk], rationales=flag.rationales.value,
                               progress=label, source=source)
      if kind == "glue":
        lines = inputs.glue_lines(ids[chunk], [r["label_index"] for r in rows], labels)
        out.write("\n".join(lines if start == 0 else lines[1:]) + "\n")
      elif kind == "squad":  # one JSON object: written whole, at the end.
        answers.update((r["id"], r["answer"]) for r in rows)
      else:
        out.write("".join(json.dumps(row) + "\n" for row in rows))
      if out is sys.stdout:
        out.flush()  # each chunk's lines as soon as they are ready.
    if kind == "squad":
      out.write(predictions_text(answers))
  if flag.output.value != "-":
    print(f"wrote {len(items)} predictions to {flag.output.value}", file=sys.stderr)


def cli() -> None:
  define_flags()
  run_console_script(__name__, main)


if __name__ == "__main__":
  cli()
