"""The project's Markdown pages, split into prose and fenced code blocks."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")


def _split(text: str) -> tuple[list[str], list[str]]:
  """(prose lines, code blocks): each fenced block's lines joined, fences dropped."""
  prose, blocks, block, in_fence = [], [], [], False
  for line in text.splitlines():
    if FENCE.match(line.strip()):
      if in_fence:
        blocks.append("\n".join(block))
        block = []
      in_fence = not in_fence
    elif in_fence:
      block.append(line)
    else:
      prose.append(line)
  return prose, blocks


def prose(text: str) -> str:
  """The page without its fenced code blocks, where brackets are code, not links."""
  return "\n".join(_split(text)[0])


def code_blocks(text: str) -> list[str]:
  """The page's fenced code blocks."""
  return _split(text)[1]
