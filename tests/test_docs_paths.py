"""Every repository path the architecture page names exists (docs/architecture.md is
checked against the code), and the docs link only to files inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
# a backticked path: folders and files of the tree (model/core/files.py, indexer/kinds/)
_PATH = re.compile(
    r"`((?:polypindex/|tests/|docs/|model/|training/|indexer/|service/|benchmarks/)[\w./-]*)`"
)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _named_paths(text: str) -> list[str]:
    return [
        p
        for p in _PATH.findall(text)
        if not any(mark in p for mark in ("*", "000N", "<", "X."))  # patterns, placeholders
    ]


def test_every_path_the_architecture_page_names_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = _named_paths(text)
    assert len(named) > 40  # the page names the code it describes
    missing = sorted({p for p in named if not (ROOT / p.rstrip("/")).exists()})
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(doc: Path) -> None:
    bad = []
    for target in _LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        resolved = (doc.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            bad.append(target)
    assert not bad, f"{doc.name} links to what is not in the repository: {bad}"
