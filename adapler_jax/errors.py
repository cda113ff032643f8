"""Errors a user can act on, reported by the CLIs as one line without a traceback."""

from __future__ import annotations

import os


class UserError(Exception):
  """Base class of errors caused by user input; the message names the thing and the fix."""


class DataError(UserError, ValueError):
  """A data file, split, column, label or hub download that cannot be used as given."""


class InputError(UserError, ValueError):
  """An argument to a library function of the wrong shape or size for the model."""


def location(path: str | os.PathLike[str], line: int | None = None) -> str:
  """`'<folder>/<file>'` (plus `' line N'`, 1-based): where a data problem is."""
  path = os.fspath(path)
  parent = os.path.basename(os.path.dirname(path))
  short = os.path.join(parent, os.path.basename(path)) if parent else os.path.basename(path)
  return short if line is None else f"{short} line {line}"


def format_message(where: str, problem: str, fix: str | None = None) -> str:
  """One-line message `'<where>: <problem>; <fix>'` with newlines in the parts flattened."""
  text = f"{where}: {problem}" + (f"; {fix}" if fix else "")
  return " ".join(text.split("\n"))


class MissingExtraError(UserError, ImportError):
  """An optional dependency (a pip extra of the package) that a feature needs is missing."""
