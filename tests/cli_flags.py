"""Prints, as JSON, the flags command-line programs accept: {program: {flag: choices}}.

  python tests/cli_flags.py absl train          # a module that defines absl flags
  python tests/cli_flags.py argparse bench/inference.py bench/tradeoff.py ...

`choices` is the list of allowed values (an enum), "bool" for an absl boolean (which also
takes --no<flag>), else null. An argparse script runs as `__main__` up to the point where
it parses its arguments, and stops there (so a script must parse them before any work;
one that exits without parsing gets null). absl modules share one flag registry, so one
module per process.
"""

import argparse
import importlib
import json
import runpy
import sys


class _Parsed(Exception):
  """Raised in place of parsing: carries the parser."""


def _stop(parser, *args, **kwargs):
  raise _Parsed(parser)


def argparse_flags(script: str) -> dict | None:
  sys.argv = [script, "--help"]
  try:
    runpy.run_path(script, run_name="__main__")
  except _Parsed as parsed:
    return {o: (list(map(str, a.choices)) if a.choices else None)
            for a in parsed.args[0]._actions for o in a.option_strings}  # pylint: disable=protected-access
  except SystemExit:
    pass
  return None


def absl_flags(module: str) -> dict:
  from absl import flags  # pylint: disable=g-import-not-at-top
  define = getattr(importlib.import_module(module), "define_flags", None)
  if define is not None:  # a command that defines its flags when it runs, not on import.
    define()
  out = {}
  for name in flags.FLAGS:
    flag = flags.FLAGS[name]
    choices = getattr(flag.parser, "enum_values", None)
    out[f"--{name}"] = "bool" if flag.boolean else (list(choices) if choices else None)
  return out


def main(kind: str, programs: list[str]) -> None:
  if kind == "argparse":
    argparse.ArgumentParser.parse_args = _stop
    argparse.ArgumentParser.parse_known_args = _stop
    found = {p: argparse_flags(p) for p in programs}
  else:
    (module,) = programs
    found = {module: absl_flags(module)}
  sys.stdout.write(json.dumps(found) + "\n")


if __name__ == "__main__":
  sys.path.insert(0, ".")
  main(sys.argv[1], sys.argv[2:])
