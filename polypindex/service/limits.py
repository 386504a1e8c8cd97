"""Limits checked before any work, and the published schema that states them.

- :class:`BodyLimitMiddleware`: a pure ASGI middleware that refuses a request body
  over ``max_body_bytes`` while it is read (at once from a too large
  ``Content-Length``, else when the bytes received pass the limit): 413
  ``payload_too_large``, nothing parsed, at most the limit held in memory.
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
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polypindex.service.errors import field_error
from polypindex.service.schemas import MAX_ID, FrameInput
from polypindex.service.settings import Settings

# Room for a ``data:image/<type>;base64,`` prefix (the schema allows 40 type characters).
_PREFIX_ROOM = 64
# Wrapped base64 (PEM, MIME) breaks lines every 64 or 76 characters; room for CRLF every 64.
_LINE = 64


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
        body = payload_too_large_body(self.max_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


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
