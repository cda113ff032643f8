"""Exports a trained run to one self-contained directory (see `adapler_jax.serve`).

  python -m adapler_jax.export --workdir runs/sst2 --output exports/sst2 [--force]
  adapler-export --workdir runs/sst2 --output exports/sst2

The directory holds config.json, model.safetensors and tokenizer/; load it with
`adapler_jax.load_model(DIR)` or predict with `adapler-predict --model DIR`.
"""

from __future__ import annotations

from absl import flags, logging

from adapler_jax.cli import run_console_script

_WORKDIR = flags.DEFINE_string("workdir", None, "The --workdir of a finished train.py run.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the export to (new or empty).")
_FORCE = flags.DEFINE_bool("force", False, "Replace an existing export at --output.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from adapler_jax.serve.from_run import export_run  # pylint: disable=g-import-not-at-top
  path = export_run(_WORKDIR.value, _OUTPUT.value, force=_FORCE.value)
  print(f"wrote {path}")


def cli() -> None:
  run_console_script(__name__, main)


if __name__ == "__main__":
  cli()
