"""Shared CLI plumbing: user errors become one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from adapler_jax.errors import UserError


def run_cli(main: Callable[[], object]) -> None:
  try:
    main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
