"""README.md and docs/*.md cite only what a reader of the repository can open: no path outside it
(``../shared``) and no issue number of the project's tracker (``#25``, ``issue 31``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

OUTSIDE = re.compile(r"\.\./shared|/work/shared")
# "#25", "(#25)", "issue 31", "issues 25 and 27", "Issue #14's", "PR 3"; not "## Heading", "(#section)" anchors,
# "&#123;" entities or colours with a hex letter such as "#1f77b4" (an all-digit colour would be flagged)
ISSUE = re.compile(r"(?<![&\w#/])#\d+(?![\w-])|\b(?:issues?|PRs?|pull requests?|tickets?)\b[ (]*#?\d+", re.IGNORECASE)


def _hits(pattern: re.Pattern, text: str) -> list[str]:
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in pattern.finditer(text)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_cite_only_the_repository(path):
    text = path.read_text()
    assert not _hits(OUTSIDE, text), f"{path.name} cites files outside the repository: {_hits(OUTSIDE, text)}"
    assert not _hits(ISSUE, text), (f"{path.name} cites issue numbers a reader cannot look up (say what changed "
                                    f"instead): {_hits(ISSUE, text)}")


@pytest.mark.parametrize("text", ["see #25", "(#7)", "issue 31", "Issues 25 and 27", "issue #14's table", "PR 3"])
def test_issue_numbers_are_caught(text):
    assert _hits(ISSUE, text)


@pytest.mark.parametrize("text", ["## 12. Default sweep", "[x](#default-sweep)", "colour #1f77b4", "&#123;",
                                  "github.com/HobbitLong/RepDistiller/issues/40", "issue the command", "1 #"])
def test_headings_anchors_and_colours_are_not(text):
    assert not _hits(ISSUE, text)
