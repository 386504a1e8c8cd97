"""The screenshot command's capture (``benchmarks/screenshots.py``) in the OS Chromium, on
the tiny index; in its own module, as it runs its own Playwright session."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypindex.benchmarks.screenshots import INSTALL_HINT, capture, find_chromium


@pytest.mark.timeout(120)
def test_the_screenshot_command_captures_the_page(live: str, tmp_path: Path) -> None:
    """The capture of ``python -m polypindex.benchmarks.screenshots``, on the tiny index."""
    executable = find_chromium()
    if executable is None:
        pytest.skip(f"no Chromium found; install one: {INSTALL_HINT}")
    pytest.importorskip("playwright", reason=f"playwright is not installed: {INSTALL_HINT}")
    timings = capture(live, tmp_path, executable, repeats=1)
    for name in ("viewer.png", "viewer-map.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert timings["page_load_ms"] > 0 and timings["search_render_ms_median"] > 0
