"""The viewer page (docs/viewer.md): static HTML, JavaScript and CSS shipped in the package,
served at ``GET /`` and ``GET /ui`` by the same app. No CDN, no build step: the page calls
the JSON and JPEG endpoints of the API itself (``/procedures``, ``/tracklets/...``,
``/search``, ``/reid``, ``/index/map``).

The static files hold no data, so they are served without an API key; every call the page
makes for data sends the key typed into its key field (``Authorization: Bearer``) when
access control is on.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from polypindex.model.core.errors import NotFoundError

# The page's files: served by name from this whitelist only (no path from the request).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "map.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Revalidated on every load (ETag), so a new version of the package shows at once.
CACHE_CONTROL = "no-cache"

router = APIRouter(tags=["viewer"], include_in_schema=False)


@lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[bytes, str]:
    """``(content, ETag)`` of one of the page's files."""
    if name not in ASSETS:
        raise NotFoundError(f"no viewer file {name!r}")
    data = files(__package__).joinpath(name).read_bytes()
    return data, '"' + hashlib.sha1(data).hexdigest()[:16] + '"'


def _serve(name: str, request: Request) -> Response:
    data, etag = asset(name)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content=data, media_type=ASSETS[name], headers=headers)


@router.get("/", response_class=HTMLResponse)
def page(request: Request) -> Response:
    """The viewer page."""
    return _serve("index.html", request)


@router.get("/ui")
def ui_redirect() -> RedirectResponse:
    return RedirectResponse("/", status_code=307)


@router.get("/ui/{name}")
def ui_asset(name: str, request: Request) -> Response:
    """One of the page's static files (by name, from :data:`ASSETS` only)."""
    return _serve(name, request)
