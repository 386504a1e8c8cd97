"""Limits checked before any work, and the published schema that states them.

- :class:`BodyLimitMiddleware`: a pure ASGI middleware that refuses a request body
  over ``max_body_bytes`` while it is read (at once from a too large
  ``Content-Length``, else when the bytes received pass the limit): 413
  ``payload_too_large``, nothing parsed, at most the limit held in memory.
- :class:`AuthFirstMiddleware`: the API key of a request that may carry a body (not
  GET/HEAD/OPTIONS) is checked from its headers before a byte of the body is read, for
  the scope of the route it goes to (:func:`polypindex.service.auth.authenticate_request`,
  the same 401/403 answers as the routers' dependency): a keyless 63 MiB body costs
  nothing but its headers.
- the body's shape, before it is parsed (in :class:`BodyLimitMiddleware`): at most
  :data:`MAX_JSON_VALUES` JSON values (413 ``payload_too_large``) nested at most
  :data:`MAX_JSON_DEPTH` deep (422 ``validation_error``), counted on the raw bytes, so
  no parse can build millions of Python objects.
- :func:`check_image_b64_lengths`: the base64 length of every frame against the
  ``maxLength`` the schema publishes (422 ``validation_error``). The decoded-pixel
  limit (``max_image_pixels``) is read from each image's header before it is decoded
  (:mod:`polypindex.model.data.image_header`, 413 ``image_too_large``).
- :func:`install_openapi`: the OpenAPI document with the limits that depend on the
  settings and on the loaded model written in (``k`` maximum, frames per request,
  ``image_b64`` ``maxLength``, the embedding's exact size) and the documented
  embedding example resized to the model, so every example in it is valid.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import fastapi.routing
import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polypindex.service.auth import SAFE_METHODS, authenticate_request, required_scope
from polypindex.service.errors import classify, error_response, field_error, public
from polypindex.service.schemas import MAX_ID, FrameInput
from polypindex.service.settings import Settings

# Room for a ``data:image/<type>;base64,`` prefix (the schema allows 40 type characters).
_PREFIX_ROOM = 64
# Wrapped base64 (PEM, MIME) breaks lines every 64 or 76 characters; room for CRLF every 64.
_LINE = 64
MAX_JSON_VALUES = 200_000
"""Most JSON values in one request body (counted as ``,`` ``[`` ``{`` on the raw bytes,
an upper bound): the largest valid body, two tracklets of 65,536 embedding values, 10,000
excluded ids and 1,000 procedure uids, holds under 145,000. Parsed, 200,000 numbers take
about 7 MB."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON arrays and objects in a request body (the schema's is 5)."""
_DEPTH_CHUNK = 1 << 20


def max_image_b64_chars(max_image_bytes: int) -> int:
    """The longest ``image_b64`` string accepted: the base64 of ``max_image_bytes`` bytes,
    plus a data URL prefix and CRLF line breaks every 64 characters."""
    b64 = 4 * math.ceil(max_image_bytes / 3)
    return b64 + 2 * math.ceil(b64 / _LINE) + _PREFIX_ROOM


def check_image_b64_lengths(frames: Sequence[FrameInput], where: str, max_image_bytes: int) -> None:
    """422 ``validation_error`` naming the first frame whose ``image_b64`` is longer than
    the published ``maxLength`` (checked before any base64 is decoded)."""
    limit = max_image_b64_chars(max_image_bytes)
    for i, frame in enumerate(frames):
        if len(frame.image_b64) > limit:
            raise field_error(
                (*where.split("."), "frames", i, "image_b64"),
                f"{len(frame.image_b64)} characters, at most {limit} (the base64 of "
                f"max_image_bytes = {max_image_bytes} bytes)",
            )


# -- the request body limit ------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


def payload_too_large_body(limit: int) -> bytes:
    message = f"the request body is over the limit of {limit} bytes (setting max_body_bytes)"
    return json.dumps({"error": {"code": "payload_too_large", "message": message}}).encode()


class BodyLimitMiddleware:
    """Refuse HTTP request bodies over ``max_bytes`` with 413 ``payload_too_large``.

    A ``Content-Length`` over the limit is refused before a byte is read. Otherwise
    the body is read here, counting bytes as they arrive, and refused as soon as the
    count passes the limit; a body within it is replayed to the app unchanged. So
    neither the JSON parser nor the app ever sees an oversized body, and at most
    ``max_bytes`` of it is held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        try:
            messages = await self._read(receive)
        except _BodyTooLarge:
            await self._refuse(send)
            return
        if _is_json(scope):
            refused = json_shape_error([m.get("body", b"") for m in messages])
            if refused is not None:
                await _send_error(send, *refused)
                return
        replay = iter(messages)

        async def replayed() -> Message:
            message = next(replay, None)
            return message if message is not None else await receive()

        await self.app(scope, replayed, send)

    async def _read(self, receive: Receive) -> list[Message]:
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # a disconnect: let the app see it
                return messages
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, send: Send) -> None:
        await _send_error(send, 413, payload_too_large_body(self.max_bytes))


async def _send_error(send: Send, status: int, body: bytes) -> None:
    """Answer ``status`` with a JSON error ``body`` and close (the body may be unread)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return True  # no content type: FastAPI parses the body as JSON


def json_shape_error(chunks: Sequence[bytes]) -> tuple[int, bytes] | None:
    """``(status, error body)`` when the raw JSON in ``chunks`` holds over
    :data:`MAX_JSON_VALUES` values or nests deeper than :data:`MAX_JSON_DEPTH`; else
    ``None``. Counted on the bytes (C speed, nothing parsed); a ``,`` ``[`` or ``{``
    inside a string counts too, so both are upper bounds."""
    commas = opens = 0
    for chunk in chunks:
        commas += chunk.count(b",")
        opens += chunk.count(b"[") + chunk.count(b"{")
    if commas + opens + 1 > MAX_JSON_VALUES:
        return 413, _error_body(
            "payload_too_large",
            f"the request body holds about {commas + opens + 1} JSON values, over the limit "
            f"of {MAX_JSON_VALUES}; refused before parsing",
        )
    if opens > MAX_JSON_DEPTH and _depth_over(chunks, MAX_JSON_DEPTH):
        return 422, _error_body(
            "validation_error",
            f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels; refused before parsing",
        )
    return None


def _depth_over(chunks: Sequence[bytes], limit: int) -> bool:
    depth = 0
    for chunk in chunks:
        for start in range(0, len(chunk), _DEPTH_CHUNK):
            a = np.frombuffer(chunk, dtype=np.uint8)[start : start + _DEPTH_CHUNK]
            step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32)
            step -= ((a == 0x5D) | (a == 0x7D)).astype(np.int32)
            levels = np.cumsum(step) + depth
            if levels.size and int(levels.max()) > limit:
                return True
            depth = int(levels[-1]) if levels.size else depth
    return False


# -- the key before the body -----------------------------------------------------------


_ScopedRoute = tuple[re.Pattern[str], frozenset[str], str, Any]


def scoped_routes(app: Any) -> list[_ScopedRoute]:
    """``(path pattern, methods, scope, route)`` of every route of ``app`` behind a
    :func:`require_scope` dependency, in the router's order (included routers
    flattened, as FastAPI includes them lazily: ``iter_route_contexts``)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = iterate(app.routes) if iterate is not None else app.routes
    found = []
    for route in routes:
        pattern = getattr(route, "path_regex", None)
        for dependency in getattr(route, "dependencies", None) or ():
            needed = required_scope(getattr(dependency, "dependency", None))
            if needed is not None and pattern is not None:
                found.append((pattern, frozenset(route.methods or ()), needed, route))
                break
    return found


class AuthFirstMiddleware:
    """Check the API key of a request that may carry a body before the body is read.

    For a method other than GET/HEAD/OPTIONS to a route with a scope, the check of
    :func:`~polypindex.service.auth.require_scope` runs here on the headers; a refusal
    is answered at once with the same status, body and ``WWW-Authenticate`` header,
    and the body is never read (nor parsed). A pass marks the request checked, so the
    route's dependency does not look the key up again. A check that fails otherwise (a
    storage fault) is left to the route, whose error handlers answer it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: list[_ScopedRoute] | None = None

    def route_scope(self, scope: Scope) -> tuple[str, dict[str, Any]] | None:
        """The scope the route that ``scope`` goes to needs and what routing would put
        on ``scope`` for it (``route``, ``path_params``: a refusal is logged and audited
        under its route like any answer); ``None`` for an open route."""
        if self._routes is None:  # the routes are all in place once a request comes
            self._routes = scoped_routes(scope["app"])
        path, root = scope["path"], scope.get("root_path", "")
        path = path[len(root) :] if root and path.startswith(root) else path
        method = scope.get("method", "GET")
        for pattern, methods, needed, route in self._routes:
            match = pattern.match(path)
            if method in methods and match:
                convertors = getattr(route, "param_convertors", None) or {}
                params = {
                    name: convertors[name].convert(value) if name in convertors else value
                    for name, value in match.groupdict().items()
                }
                return needed, {"route": route, "path_params": params}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        found = self.route_scope(scope)
        if found is not None:
            needed, routed = found
            request = Request(scope)
            try:
                await run_in_threadpool(authenticate_request, request, needed)  # type: ignore[arg-type]
            except Exception as exc:
                row = classify(exc)
                if row is not None:
                    response = error_response(row[0], row[1], public(request, str(exc)))
                    response.headers.update(getattr(exc, "headers", None) or {})
                    response.headers["connection"] = "close"  # the body is left unread
                    scope.update(routed)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- the published schema ------------------------------------------------------------


def _array_branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The ``array`` schema of an optional list property (``anyOf: [array, null]``)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "array":
            return branch  # type: ignore[no-any-return]
    return prop


def example_embedding(dim: int) -> list[float]:
    """A valid example embedding of ``dim`` values (any non-zero vector is normalised)."""
    return [round(math.sin(1.0 + i), 3) or 0.001 for i in range(dim)]


def _patch_embedding_examples(node: Any, dim: int) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if (
                key == "embedding"
                and isinstance(value, list)
                and value
                and not isinstance(value[0], dict)
            ):
                node[key] = example_embedding(dim)
            else:
                _patch_embedding_examples(value, dim)
    elif isinstance(node, list):
        for item in node:
            _patch_embedding_examples(item, dim)


def _exact_integer_bounds(node: Any) -> None:
    """FastAPI's OpenAPI model stores ``minimum``/``maximum`` as floats, so an id's
    ``le=2**63 - 1`` would be published as ``9.223372036854776e18`` (that is, 2**63, one
    more than the server takes): integer bounds are written back as exact integers."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = MAX_ID if value == float(MAX_ID) else int(value)
        for value in node.values():
            _exact_integer_bounds(value)
    elif isinstance(node, list):
        for item in node:
            _exact_integer_bounds(item)


def limited_openapi(app: FastAPI, settings: Settings, dim: int | None) -> dict[str, Any]:
    """The app's OpenAPI document with the settings' and the model's limits written in."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.get("components", {}).get("schemas", {})
    search = schemas.get("SearchRequest", {}).get("properties", {})
    if "k" in search:
        search["k"]["maximum"] = settings.max_k
    frame = schemas.get("FrameInput", {}).get("properties", {})
    if "image_b64" in frame:
        frame["image_b64"]["maxLength"] = max_image_b64_chars(settings.max_image_bytes)
    tracklet = schemas.get("TrackletInput", {}).get("properties", {})
    if "frames" in tracklet:
        _array_branch(tracklet["frames"])["maxItems"] = settings.max_frames_per_request
    if "embedding" in tracklet and dim is not None:
        branch = _array_branch(tracklet["embedding"])
        branch["minItems"] = branch["maxItems"] = dim
    _exact_integer_bounds(doc)
    if dim is not None:
        _patch_embedding_examples(doc.get("paths", {}), dim)
        _patch_embedding_examples(schemas, dim)
    return doc


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`limited_openapi` at ``/openapi.json`` (built again once the encoder
    is loaded, so the embedding size is the model's)."""
    cache: dict[int | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        encoder = getattr(app.state, "encoder", None)
        dim = getattr(encoder, "dim", None) if encoder is not None else None
        dim = int(dim) if isinstance(dim, int) else None
        if dim not in cache:
            cache[dim] = limited_openapi(app, settings, dim)
        app.openapi_schema = cache[dim]
        return cache[dim]

    app.openapi = openapi  # type: ignore[method-assign]
