"""Exports a trained run to one self-contained directory (see `adapler_jax.serve`).

  python -m adapler_jax.export --workdir runs/sst2 --output exports/sst2 [--force]
  adapler-export --workdir runs/sst2 --output exports/sst2

The directory holds config.json, model.safetensors and tokenizer/; load it with
`adapler_jax.load_model(DIR)` or predict with `adapler-predict --model DIR`.
"""

from __future__ import annotations

import functools
import json
import types

from absl import flags, logging

from adapler_jax.cli import run_console_script


@functools.cache
def define_flags() -> types.SimpleNamespace:
  """Defines the command's flags, once, and returns their holders: the command calls it, not
  the import (see `adapler_jax.predict.define_flags`)."""
  holders = types.SimpleNamespace(
      workdir=flags.DEFINE_string("workdir", None, "The --workdir of a finished train.py run."),
      output=flags.DEFINE_string("output", None, "Directory to write the export to (new or "
                                 "empty)."),
      force=flags.DEFINE_bool("force", False, "Replace an existing export at --output."))
  flags.mark_flags_as_required(["workdir", "output"])
  return holders


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from adapler_jax.serve import from_run, model_dir  # pylint: disable=g-import-not-at-top
  flag = define_flags()
  path = from_run.export_run(flag.workdir.value, flag.output.value, force=flag.force.value)
  meta = json.loads((path / model_dir.CONFIG_FILE).read_text())
  print(f"wrote {path}: {from_run.speed_summary(meta)}")


def cli() -> None:
  define_flags()
  run_console_script(__name__, main)


if __name__ == "__main__":
  cli()
