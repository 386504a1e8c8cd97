"""The viewer in a real browser: headless Chromium from the OS packages, driven by Playwright
with the system browser's executable (never a downloaded one).

Starts the app on a tiny index, opens the page, runs a search, checks the result cards
(tracklet ids as ``/search`` returns them, images loaded), clicks a map point, uploads a
frame, shows an API error, and takes a screenshot. Page load and search render times are
measured in the page with ``performance.now()`` and printed / recorded, not asserted.
"""

from __future__ import annotations

import base64
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.auth import add_key, keys_settings
from helpers.viewer import ViewerWorld, build_world, live_server

from polypindex.benchmarks.screenshots import INSTALL_HINT, find_chromium
from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.contexts import ContextFit, Curve, Rule
from polypindex.model.scoring.reid import format_pair


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(f"no Chromium found; install one: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed: {INSTALL_HINT}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.page_errors = errors
    try:
        yield pg
    finally:
        context.close()


def loaded(page: Any, url: str) -> float:
    """Open the page and wait until it has loaded its data; the load time in ms."""
    page.goto(url + "/")
    page.wait_for_selector("body[data-loaded='1']", timeout=20_000)
    return float(page.evaluate("window.__viewer.loadMs"))


def searched(page: Any, n: int) -> None:
    page.wait_for_selector(f"body[data-searches='{n}']", timeout=20_000)


def card_ids(page: Any) -> list[int]:
    return [
        int(i)
        for i in page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")
    ]


def images_loaded(page: Any, selector: str) -> list[int]:
    """``naturalWidth`` of every image matching ``selector``."""
    return list(
        page.eval_on_selector_all(selector, "xs => xs.map(x => x.complete ? x.naturalWidth : 0)")
    )


def api_hits(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = httpx.post(url + "/search", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def api_search(url: str, body: dict[str, Any]) -> list[int]:
    return [hit["tracklet_id"] for hit in api_hits(url, body)]


def timed(page: Any, action: Callable[[], None], n: int) -> tuple[float, float]:
    """Run ``action`` (one search), wait for it; ``(cards rendered ms, all done ms)``."""
    action()
    searched(page, n)
    return (
        float(page.evaluate("window.__viewer.searchMs")),
        float(page.evaluate("window.__viewer.searchCompleteMs")),
    )


@pytest.mark.timeout(180)
def test_search_map_upload_and_errors_in_a_browser(
    page: Any,
    live: str,
    world: ViewerWorld,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    load_ms = loaded(page, live)
    assert page.is_hidden("#error"), page.text_content("#error")
    assert page.eval_on_selector_all("#procedure option", "os => os.map(o => o.value)") == [
        "ds:001",
        "ds:002",
        "frames-proc",
        "video-proc",
    ]
    # the query: p1's bar on the timeline of procedure ds:001 (two clicks from opening)
    query = world.id_of("001/p1/0")
    page.click(f"#procedure-tracklets .bar[data-id='{query}']")
    searched(page, 1)
    hits = api_hits(live, {"query": {"tracklet_id": query}, "k": 8, "exclude_same_procedure": True})
    expected = [hit["tracklet_id"] for hit in hits]
    assert card_ids(page) == expected
    texts = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.textContent)")
    for hit, text in zip(hits, texts, strict=True):  # what /search says, on each card
        assert f"{hit['score']:.3f}" in text and hit["procedure_uid"] in text
        if hit["entity_id"] is not None:
            assert f"entity {hit['entity_id']}" in text
    assert set(expected) == {i for i, uid in world.procedure_of.items() if uid != "ds:001"}
    assert all(w > 0 for w in images_loaded(page, "#results .card img"))
    assert images_loaded(page, "#query-card img.strip")[0] > 0  # the frame strip (COCO input)
    decisions = page.eval_on_selector_all("#results .decision", "ds => ds.map(d => d.textContent)")
    # the stand-in encoder has no calibration: nothing is decided across procedures
    assert decisions and all(d.startswith("uncertain") for d in decisions), decisions
    assert page.get_attribute("#timelines .bar.query", "data-id") == str(query)
    matched = page.eval_on_selector_all("#timelines .bar.match", "bs => bs.map(b => +b.dataset.id)")
    assert set(matched) == set(expected)
    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)

    # search render time: the same search again, a few times
    times = [timed(page, lambda: page.click("#search"), n) for n in range(2, 7)]

    # click a map point: it becomes the query, and its matches are searched
    target = world.id_of("frames-proc/track/0")
    x, y = page.evaluate(
        "id => window.indexMap.cssPosition(window.indexMap.points.find(p => p.tracklet_id === id))",
        target,
    )
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#map-tip img", state="visible")
    page.mouse.click(box["x"] + x, box["y"] + y)
    searched(page, 7)
    assert page.evaluate("location.hash") == f"#q={target}"
    assert f"Query #{target}" in page.text_content("#query-meta")
    assert target not in card_ids(page) and card_ids(page)

    # an API error is shown as its message: k above the service's max_k
    page.fill("#k", "1000")
    page.click("#search")
    page.wait_for_selector("#error:not([hidden])")
    assert "k must be between 1 and" in page.text_content("#error")
    page.fill("#k", "8")

    # an upload of frames + box: the same input /search takes
    image = world.settings.home / "data" / "coco" / "images" / "001_0000.jpg"
    page.click("#tab-upload")
    page.set_input_files("#upload-files", str(image))
    for field, value in zip(("x", "y", "w", "h"), (4, 8, 12, 12), strict=True):
        page.fill(f"#box-{field}", str(value))
    page.click("#search")
    searched(page, 8)
    b64 = "data:image/jpeg;base64," + base64.b64encode(image.read_bytes()).decode()
    frames = [{"image_b64": b64, "bbox": [4, 8, 12, 12]}]
    assert card_ids(page) == api_search(live, {"query": {"frames": frames}, "k": 8})
    assert page.is_hidden("#error"), page.text_content("#error")
    assert not page.page_errors

    render = statistics.median(t[0] for t in times)
    complete = statistics.median(t[1] for t in times)
    timings = {
        "page_load_ms": round(load_ms, 1),
        "search_render_ms_median": round(render, 1),
        "search_complete_ms_median": round(complete, 1),
        "searches": len(times),
        "index": f"{len(world.ids)} tracklets (tiny test index)",
    }
    print(f"\nviewer timings (shared CPU machine): {json.dumps(timings)}")
    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2))
    for key, value in timings.items():
        record_property(key, value)


@pytest.mark.timeout(120)
def test_the_page_asks_for_a_key_when_access_control_is_on(page: Any, tmp_path: Path) -> None:
    world = build_world(tmp_path / "home")
    settings = keys_settings(world.settings)
    token = add_key(settings, "viewer", "read")
    with live_server(settings, world.encoder) as url:
        loaded(page, url)
        assert page.is_visible("#key-form")
        assert "unauthorized" in page.text_content("#error")
        page.fill("#api-key", token)
        page.click("#key-form button")
        page.wait_for_function("document.querySelector('#procedure').options.length === 4")
        assert page.is_hidden("#error"), page.text_content("#error")
        assert page.evaluate("sessionStorage.getItem('polypindex.apiKey')") == token
        query = world.id_of("001/p1/0")
        page.click(f"#procedure-tracklets .bar[data-id='{query}']")
        searched(page, 1)
        assert card_ids(page)
        assert all(w > 0 for w in images_loaded(page, "#results .card img"))  # sent with the key


def _calibration(same_at: float) -> Calibration:
    """Within one procedure p = sigmoid(10·cosine − 5), same at ≥ ``same_at`` (no
    different point); across procedures not estimable, as on data without
    cross-procedure identities."""
    curve = Curve(
        "logistic", ("cosine",), {"mean": [0.0], "scale": [1.0], "coef": [10.0], "intercept": -5.0}
    )
    none = "no threshold reaches the target"
    within = ContextFit(
        "within",
        True,
        0.3,
        curve,
        Rule("same", threshold=same_at, value=0.95, interval=(0.8, 0.99), n=40, correct=38),
        Rule("different", reason=none),
    )
    why = "no same-polyp pairs across procedures in the calibration data"
    cross = ContextFit(
        "cross",
        False,
        0.0,
        None,
        Rule("same", reason=why),
        Rule("different", reason=why),
        reason=why,
    )
    return Calibration({"within": within, "cross": cross})


def card_decisions(page: Any) -> dict[int, dict[str, str]]:
    return {
        int(d["id"]): d
        for d in page.eval_on_selector_all(
            "#results .card",
            "cs => cs.map(c => { const d = c.querySelector('.decision'); return "
            "{ id: c.dataset.id, answer: d.dataset.answer, context: d.dataset.context, "
            "text: d.textContent }; })",
        )
    }


@pytest.mark.timeout(150)
def test_cards_decide_by_context_and_print_comparable_numbers(page: Any, tmp_path: Path) -> None:
    world = build_world(tmp_path / "home")
    world.encoder.reid_calibration = _calibration(0.9)  # type: ignore[attr-defined]
    with live_server(world.settings, world.encoder) as url:
        loaded(page, url)
        query = world.id_of("001/p1/0")
        own = world.procedure_of[query]
        page.click(f"#procedure-tracklets .bar[data-id='{query}']")
        searched(page, 1)
        cards = card_decisions(page)
        assert cards and all(world.procedure_of[i] != own for i in cards)
        for d in cards.values():  # across procedures: never "same polyp"
            assert d["context"] == "cross" and d["answer"] != "same", d
            assert d["text"].startswith("uncertain") and "same polyp" not in d["text"]

        # within the query's procedure too: a threshold that prints like the probability
        page.uncheck("#exclude-own")
        page.fill("#k", "50")
        page.click("#search")
        searched(page, 2)
        body = {"query": {"tracklet_id": query}, "k": 50}
        within = [h for h in api_hits(url, body) if h["procedure_uid"] == own]
        assert within, "the query's procedure has other tracklets"
        hit = within[0]
        p = hit["decision"]["probability"]
        k = round(p, 2)
        t = (p + k + 0.005) / 2  # above p, and prints as p does with 2 decimals
        assert f"{t:.2f}" == f"{p:.2f}" and t > p
        world.encoder.reid_calibration = _calibration(t)  # type: ignore[attr-defined]
        page.click("#search")
        searched(page, 3)
        card = card_decisions(page)[hit["tracklet_id"]]
        a, b = format_pair(p, t)
        assert a != b and float(a) < float(b)
        assert card["answer"] == "uncertain" and card["context"] == "within"
        assert card["text"] == f"uncertain · p={a} (same needs ≥ {b})", card
        server = {h["tracklet_id"]: h for h in api_hits(url, body)}[hit["tracklet_id"]]
        assert card["text"] == server["decision"]["label"]  # JS prints as the model does
        for i, d in card_decisions(page).items():
            if world.procedure_of[i] != own:
                assert d["answer"] != "same", d
    assert not page.page_errors
