"""Exports a trained run to one self-contained directory (see `adapler_jax.serve`).

  python -m adapler_jax.export --workdir runs/sst2 --output exports/sst2 [--force]
  adapler-export --workdir runs/sst2 --output exports/sst2

The directory holds config.json, model.safetensors and tokenizer/; load it with
`adapler_jax.load_model(DIR)` or predict with `adapler-predict --model DIR`.
"""

from __future__ import annotations

import json

from absl import flags, logging

from adapler_jax.cli import run_console_script

_WORKDIR = flags.DEFINE_string("workdir", None, "The --workdir of a finished train.py run.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the export to (new or empty).")
_FORCE = flags.DEFINE_bool("force", False, "Replace an existing export at --output.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from adapler_jax.serve import from_run, model_dir  # pylint: disable=g-import-not-at-top
  path = from_run.export_run(_WORKDIR.value, _OUTPUT.value, force=_FORCE.value)
  meta = json.loads((path / model_dir.CONFIG_FILE).read_text())
  print(f"wrote {path}: {from_run.speed_summary(meta)}")


def cli() -> None:
  run_console_script(__name__, main)


if __name__ == "__main__":
  cli()
