"""Every command the README and docs/ show runs a program that exists, and the CLIs and
bench scripts with flags they accept, enum values they allow, and `--config.<field>`
overrides their config file has.

The commands are read from fenced code blocks (lines joined at trailing backslashes) and
from inline code spans that start with `python` or `adapler-`. Placeholders (`<...>`,
`a|b`, `...`) are not checked as values, and a command shown with the `error:` line it
stops with is an example of a refusal, not checked.
"""

import functools
import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.docs_pages import PAGES, ROOT, code_blocks, prose
from adapler_jax.cli import _leaf_fields, _load_config

ABSL = {"train.py": "train", "evaluate.py": "evaluate", "adapler-predict": "adapler_jax.predict",
        "adapler-export": "adapler_jax.export"}
INLINE = re.compile(r"`((?:python |adapler-(?:predict|export))[^`]*)`")
PLACEHOLDER = re.compile(r"[<>|\[\]]|\.\.\.|…")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")
SEPARATOR = re.compile(r"&&|\|\||;")  # between a line's commands (a lone | is a placeholder's).


def commands(text: str) -> list[tuple[str, list[str], str]]:
  """(program, arguments, the line) of each `python X.py ...` / `adapler-*` command."""
  lines = []
  for block in code_blocks(text):
    block = block.replace("\\\n", " ").splitlines()
    lines += [l for l, nxt in zip(block, block[1:] + [""]) if not nxt.startswith("error:")]
  lines += INLINE.findall(prose(text))
  found = []
  for line in lines:
    for command in SEPARATOR.split(line.strip().removeprefix("$ ")):
      try:
        tokens = shlex.split(command, comments=True)
      except ValueError:  # an unbalanced quote: prose, not a command.
        continue
      while tokens and ENV.match(tokens[0]):  # CUDA_VISIBLE_DEVICES=0 python ...
        tokens = tokens[1:]
      if tokens[:1] == ["python"] and len(tokens) > 1 and tokens[1].endswith(".py"):
        found.append((tokens[1], tokens[2:], line.strip()))
      elif tokens[:1] and tokens[0] in ABSL:
        found.append((tokens[0], tokens[1:], line.strip()))
  return found


def options(args: list[str]) -> list[tuple[str, str | None]]:
  """(--flag, its value or None) for each option of `args`, brackets of optional parts
  stripped; a value is the `=` part or the next argument that is not an option."""
  out = []
  args = [a.strip("[]") for a in args]
  for i, arg in enumerate(args):
    if arg.startswith("--"):
      name, eq, value = arg.partition("=")
      nxt = args[i + 1] if i + 1 < len(args) else None
      out.append((name, value if eq else (nxt if nxt and not nxt.startswith("-") else None)))
  return out


@functools.cache
def accepted_flags() -> dict[str, dict]:
  """{program: {flag: choices}} for every program the pages run, from `tests/cli_flags.py`."""
  scripts = sorted({p for page in PAGES for p, _, _ in commands(page.read_text())
                    if p.startswith("bench/") and (ROOT / p).is_file()})
  runs = [["argparse", *scripts]] + [["absl", m] for m in ABSL.values()]
  procs = [subprocess.Popen([sys.executable, "tests/cli_flags.py", *r], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in runs]
  found = {}
  for proc, run in zip(procs, runs):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"tests/cli_flags.py {' '.join(run)}: {err[-2000:]}"
    found.update(json.loads(out.splitlines()[-1]))
  unparsed = [p for p in scripts if found[p] is None]
  assert not unparsed, f"{unparsed}: parse the arguments with argparse before any work"
  return {**{p: found[m] for p, m in ABSL.items()}, **{p: found[p] for p in scripts}}


@functools.cache
def config_fields(path: str) -> frozenset[str]:
  return frozenset(_leaf_fields(_load_config(str(ROOT / path))))


def problems(program: str, args: list[str], accepted: dict) -> list[str]:
  """Why `program args` would not parse, or a `--config.<field>` its config lacks."""
  if program not in accepted:  # other scripts (tests/golden/...) are not run to list flags.
    return [] if (ROOT / program).is_file() else [f"{program} is not a file of the repository"]
  flags, out = accepted[program], []
  config = dict(options(args)).get("--config")
  for name, value in options(args):
    if name.startswith("--config."):
      if program == "train.py" and config and not PLACEHOLDER.search(config):
        if name[len("--config."):] not in config_fields(config):
          out.append(f"{config} has no field {name[len('--config.'):]}")
      continue
    if program in ABSL and name not in flags and flags.get("--" + name[len("--no"):]) == "bool":
      continue  # --noprint_config
    if name not in flags:
      out.append(f"unknown flag {name}")
    elif isinstance(flags[name], list) and value and not PLACEHOLDER.search(value) \
        and value not in flags[name]:
      out.append(f"{name} {value}: not one of {flags[name]}")
  return out


def test_problems_are_found():
  accepted = {"train.py": {"--config": None, "--workdir": None, "--phase": ["all", "finetune"],
                           "--print_config": "bool"},
              "bench/x.py": {"--out": None, "--mode": ["a", "b"]}}
  assert problems("train.py", ["--config", "configs/demo.py", "--phase", "finetune",
                               "--noprint_config", "--config.train.epochs=1"], accepted) == []
  assert problems("train.py", ["--config", "configs/demo.py", "--phase=al", "--work-dir", "x",
                               "--config.train.epoch=1", "--no-such"], accepted) == [
      "--phase al: not one of ['all', 'finetune']", "unknown flag --work-dir",
      "configs/demo.py has no field train.epoch", "unknown flag --no-such"]
  assert problems("bench/x.py", ["[--mode", "a|b]", "--mode", "c", "--outt", "f"], accepted) == [
      "--mode c: not one of ['a', 'b']", "unknown flag --outt"]
  assert problems("bench/gone.py", [], accepted) == ["bench/gone.py is not a file of the repository"]


def test_commands_are_read_from_blocks_and_inline_code():
  text = ("Run `python bench/x.py --out f` or:\n\n```bash\npython train.py --config c.py \\\n"
          "    --workdir w   # comment --not-a-flag\nadapler-export --model m\nls -l\n"
          "python evaluate.py --wrokdir w\nerror: unknown flag --wrokdir\n"
          "cd x && CUDA_VISIBLE_DEVICES=0 python bench/y.py --z 1;python bench/w.py\n```\n")
  assert [(p, a) for p, a, _ in commands(text)] == [
      ("train.py", ["--config", "c.py", "--workdir", "w"]), ("adapler-export", ["--model", "m"]),
      ("bench/y.py", ["--z", "1"]), ("bench/w.py", []),
      ("bench/x.py", ["--out", "f"])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_parse(page):
  accepted = accepted_flags()
  wrong = [f"{program}: {why} | {line[:120]}" for program, args, line in commands(page.read_text())
           for why in problems(program, args, accepted)]
  assert wrong == []
