"""Screenshots of the viewer on a built home, and its page load / search render times
measured in the browser (docs/viewer.md).

    python -m polypindex.benchmarks.screenshots --home var --out docs/img    # make screenshots

Serves the home's model, store and index on a free loopback port, opens the page in the
OS Chromium (headless, driven by Playwright with the system executable: nothing is
downloaded), makes the longest tracklet of the first procedure the query, and saves
``viewer.png`` (the whole page) and ``viewer-map.png`` (the map, a point hovered). The
timings (``performance.now()`` in the page) go to ``--json``. Needs the ``dev`` extra
(playwright) and a Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.serving import free_port
from polypindex.model.core.errors import InvalidInputError
from polypindex.service.app import create_app
from polypindex.service.settings import Settings

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install -y chromium (sudo if not root) and pip install playwright"


def find_chromium() -> str | None:
    """The system Chromium: ``$POLYPINDEX_CHROMIUM``, else the first one on ``PATH``."""
    given = os.environ.get("POLYPINDEX_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` served by uvicorn on loopback in a daemon thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the viewer's server did not start; see the log above")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _wait_search(page: Any, n: int) -> None:
    page.wait_for_selector(f"body[data-searches='{n}']", timeout=60_000)


def capture(url: str, out: Path, chromium: str, repeats: int = 5) -> dict[str, Any]:
    """Open the viewer at ``url``, run a search, save the screenshots; the timings (ms)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 980})
            page.goto(url + "/")
            page.wait_for_selector("body[data-loaded='1']", timeout=60_000)
            load_ms = float(page.evaluate("window.__viewer.loadMs"))
            if page.is_visible("#error"):
                raise InvalidInputError(f"the page shows an error: {page.text_content('#error')}")
            bars = page.eval_on_selector_all(
                "#procedure-tracklets .bar",
                "bs => bs.map(b => [+b.dataset.id, b.getBoundingClientRect().width])",
            )
            if not bars:
                raise InvalidInputError("the first procedure has no tracklets to query")
            query = max(bars, key=lambda b: b[1])[0]
            page.click(f"#procedure-tracklets .bar[data-id='{query}']")
            _wait_search(page, 1)
            first_ms = float(page.evaluate("window.__viewer.searchCompleteMs"))
            rendered, complete = [], []
            for n in range(2, 2 + repeats):
                page.click("#search")
                _wait_search(page, n)
                rendered.append(float(page.evaluate("window.__viewer.searchMs")))
                complete.append(float(page.evaluate("window.__viewer.searchCompleteMs")))
            page.screenshot(path=str(out / "viewer.png"), full_page=True)
            point = page.evaluate(
                "() => { const m = window.indexMap; const p = m.points.find(q => "
                "!m.matches.has(q.tracklet_id) && q.tracklet_id !== m.query); "
                "return p ? m.cssPosition(p) : null; }"
            )
            box = page.locator("#map").bounding_box()
            if point and box:
                page.mouse.move(box["x"] + point[0], box["y"] + point[1])
                page.wait_for_selector("#map-tip img", state="visible")
                page.wait_for_timeout(150)  # the thumbnail drawn
            page.locator("#map-panel").screenshot(path=str(out / "viewer-map.png"))
        finally:
            browser.close()
    return {
        "query_tracklet_id": query,
        "page_load_ms": round(load_ms, 1),
        "first_search_complete_ms": round(first_ms, 1),
        "search_render_ms_median": round(statistics.median(rendered), 1),
        "search_complete_ms_median": round(statistics.median(complete), 1),
        "repeats": repeats,
        "screenshots": sorted(str(p) for p in out.glob("viewer*.png")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--home", type=Path, default=None, help="built home (default: var)")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="screenshot folder")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("benchmarks/results/viewer_timings.json"),
        help="where the timings go",
    )
    parser.add_argument("--repeats", type=int, default=5, help="searches timed")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit(f"error: no Chromium found; {INSTALL_HINT}")
    settings = Settings(home=args.home) if args.home is not None else Settings()
    app = create_app(settings)
    with serving(app) as url:
        timings = capture(url, args.out, chromium, args.repeats)
    result = {
        "benchmark": "viewer_screenshots",
        "home": str(settings.home),
        **timings,
        "environment": environment(browser=chromium),
    }
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
