"""Errors a user can act on: each prints as one line naming the thing and the fix."""


class UserError(Exception):
  """Base for errors caused by input the user controls; the CLIs print them as one line."""


class DataError(UserError, ValueError):
  """A data file, column, label or split that cannot be used."""
