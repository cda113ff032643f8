"""Every relative link in the README and docs/ names a file in the repository, and every
`#anchor` names a heading of its page (GitHub's rule for heading anchors)."""

import re
from pathlib import Path

from tests.docs_pages import PAGES, ROOT, prose

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(text: str) -> set[str]:
  """GitHub's anchors: lower case, punctuation dropped (word characters, spaces and hyphens
  stay), spaces to hyphens, a repeated heading suffixed -1, -2, ..."""
  anchors, seen = set(), {}
  for line in prose(text).splitlines():
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    anchors.add(slug if n == 0 else f"{slug}-{n}")
  return anchors


def test_heading_anchors_follow_github():
  text = "# Dot kernels on CPU (`infer/kernels.py`)\n## The paper's 384 tokens\n## A × B\n## A × B\n"
  assert heading_anchors(text) == {"dot-kernels-on-cpu-inferkernelspy", "the-papers-384-tokens",
                                   "a--b", "a--b-1"}


def broken_links(pages=PAGES, root: Path = ROOT) -> list[str]:
  """`page -> target: why` for each relative link that does not resolve."""
  broken = []
  for page in pages:
    for target in LINK.findall(prose(page.read_text())):
      if re.match(r"^[a-z]+:", target):  # http:, https:, mailto: are not checked here
        continue
      path, _, anchor = target.partition("#")
      dest = (page.parent / path).resolve() if path else page
      where = f"{page.relative_to(root)} -> {target}"
      if not dest.exists():
        broken.append(f"{where}: no such file")
      elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
        broken.append(f"{where}: no such heading in {dest.name}")
  return broken


def test_broken_links_are_found(tmp_path):
  page = tmp_path / "page.md"
  (tmp_path / "other.md").write_text("# Other page\n")
  page.write_text("# Top\n[a](other.md#other-page) [b](other.md#nope) [c](missing.md) [d](#top)\n"
                  "```\n[e](in-code.md)\n```\n[f](https://example.com)\n")
  assert broken_links([page], tmp_path) == [
      "page.md -> other.md#nope: no such heading in other.md",
      "page.md -> missing.md: no such file"]


def test_every_relative_link_in_the_docs_resolves():
  assert broken_links() == []
