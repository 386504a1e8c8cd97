"""The one boundary where exceptions become HTTP responses (docs/architecture.md#errors).

:data:`ERROR_TABLE` maps the library's exceptions (``model.core.errors``) to a status
and a short snake_case code; the first matching row wins, so subclasses come
before their bases. Every error response has one body shape::

    {"error": {"code": "tracklet_not_found", "message": "no tracklet with id 7"}}

Request validation errors (422, ``validation_error``) use it too, with a message
naming the field path (``body.query.frames.0.bbox: ...``). Anything not in the
table is a 500 ``internal_error`` with a generic message; its traceback is
logged, never sent. A storage fault (a full disk: 507 ``insufficient_storage``; a
read-only store: 503 ``store_read_only``; a database that fails: 503
``store_unavailable``) says so (:func:`indexer.faults.storage_fault`). Every message
goes through :func:`indexer.faults.public_message`: no absolute path outside the
data roots (those inside are shown ``<data_root>/...``), no SQL, no bound parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from polypindex.indexer.faults import public_message, storage_fault
from polypindex.indexer.jobs import JobNotFoundError
from polypindex.indexer.reads import ThumbnailNotFoundError
from polypindex.indexer.sources import PathNotAllowedError
from polypindex.indexer.strips import FramesUnavailableError
from polypindex.model.core.errors import (
    ConflictError,
    EncoderMismatchError,
    IndexNotReadyError,
    InvalidInputError,
    ModelLoadError,
    NotFoundError,
    PolypIndexError,
    ProbeNotInstalledError,
    ProcedureNotFoundError,
    TrackletNotFoundError,
)
from polypindex.model.data.image_header import ImageTooLargeError
from polypindex.service.auth import AuthUnavailableError, ForbiddenError, UnauthorizedError
from polypindex.service.observability import app_routes

logger = logging.getLogger(__name__)

# exception class -> (HTTP status, error code); first match wins (subclasses first).
ERROR_TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (UnauthorizedError, 401, "unauthorized"),  # no, a malformed or a revoked API key
    (ForbiddenError, 403, "forbidden"),  # a key whose scope is too small
    (AuthUnavailableError, 503, "auth_unavailable"),  # keys cannot be checked: closed
    (TrackletNotFoundError, 404, "tracklet_not_found"),
    (JobNotFoundError, 404, "job_not_found"),
    (ProcedureNotFoundError, 404, "procedure_not_found"),
    (ThumbnailNotFoundError, 404, "thumbnail_not_found"),
    (NotFoundError, 404, "not_found"),
    (PathNotAllowedError, 403, "path_not_allowed"),  # an input outside the data roots
    (ImageTooLargeError, 413, "image_too_large"),  # over max_image_pixels, from its header
    (InvalidInputError, 422, "invalid_input"),  # includes ImageReadError
    (EncoderMismatchError, 409, "encoder_mismatch"),
    (FramesUnavailableError, 409, "frames_unavailable"),  # a strip of unreadable frames
    (ConflictError, 409, "conflict"),  # two writers on one procedure at once
    (ProbeNotInstalledError, 503, "probe_not_installed"),  # before its base class
    (IndexNotReadyError, 503, "not_ready"),
    (ModelLoadError, 503, "not_ready"),
)
INTERNAL_ERROR_MESSAGE = "internal server error; the details are in the server log"
# storage fault kind (indexer.faults) -> (HTTP status, error code)
FAULT_STATUS = {
    "disk_full": (507, "insufficient_storage"),
    "read_only": (503, "store_read_only"),
    "store_unavailable": (503, "store_unavailable"),
}
_MAX_LISTED_VALIDATION_ERRORS = 5
BODY_PARSE_DETAIL = "There was an error parsing the body"  # FastAPI's 400 for undecodable bodies


class ErrorDetail(BaseModel):
    """What went wrong: a stable code for programs, a message for people."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(status_code=status, content=body.model_dump())


def classify(exc: BaseException) -> tuple[int, str] | None:
    """The ``(status, code)`` row of :data:`ERROR_TABLE` for ``exc``, or ``None``."""
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, code
    return None


def field_error(loc: Sequence[str | int], message: str) -> RequestValidationError:
    """A request validation error on one field, for checks that need the settings or
    the loaded model (limits, embedding size); answered like the schema's own checks."""
    return RequestValidationError([{"loc": tuple(loc), "msg": message, "type": "value_error"}])


def _validation_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors[:_MAX_LISTED_VALIDATION_ERRORS]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > _MAX_LISTED_VALIDATION_ERRORS:
        parts.append(f"and {len(errors) - _MAX_LISTED_VALIDATION_ERRORS} more")
    return "; ".join(parts) or "invalid request"


def public(request: Request, message: str) -> str:
    """``message`` as a client may see it (data roots relative, no other path, no SQL)."""
    settings = getattr(request.app.state, "settings", None)
    return public_message(message, getattr(settings, "data_roots", None) or ())


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(
        422, "validation_error", public(request, _validation_message(exc.errors()))
    )


async def _handle_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and str(exc.detail) == BODY_PARSE_DETAIL:
        # A body that is not UTF-8 JSON: a validation error like a JSON syntax error.
        return error_response(422, "validation_error", "body: not valid JSON (UTF-8 expected)")
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    response = error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), public(request, str(exc.detail))
    )
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:  # every method of the path, not only the first route's
        response.headers["Allow"] = ", ".join(allowed_methods(request.scope))
    return response


def allowed_methods(scope: Any) -> list[str]:
    """The methods of every route whose path matches ``scope``'s (sorted)."""
    methods: set[str] = set()
    for route in app_routes(scope.get("app")):
        try:
            match, _ = route.matches({**scope, "method": "GET"})
        except Exception:  # a route kind that cannot match this scope
            continue
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _handle_known(request: Request, exc: Exception) -> JSONResponse:
    row = classify(exc)
    if row is None:  # a PolypIndexError outside the table (e.g. a ConfigError): a server fault
        return await _handle_unexpected(request, exc)
    status, code = row
    response = error_response(status, code, public(request, str(exc)))
    response.headers.update(getattr(exc, "headers", None) or {})  # e.g. WWW-Authenticate
    return response


async def _handle_fault(request: Request, exc: Exception) -> JSONResponse:
    """An OSError or a database error: a storage fault names its cause, else a 500."""
    fault = storage_fault(exc)
    if fault is None:
        return await _handle_unexpected(request, exc)
    route = getattr(request.scope.get("route"), "path", "<unmatched>")  # never the raw path
    logger.error("storage fault on %s %s: %s", request.method, route, fault.kind, exc_info=exc)
    status, code = FAULT_STATUS[fault.kind]
    return error_response(status, code, fault.message)


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    route = getattr(request.scope.get("route"), "path", "<unmatched>")  # never the raw path
    logger.error("unhandled error on %s %s", request.method, route, exc_info=exc)
    return error_response(500, "internal_error", INTERNAL_ERROR_MESSAGE)


def install_error_handlers(app: FastAPI) -> None:
    """Register the table's handlers, request validation, HTTP errors and the 500 fallback."""
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(PolypIndexError, _handle_known)  # looked up in ERROR_TABLE
    app.add_exception_handler(OSError, _handle_fault)  # a full disk, a read-only store
    app.add_exception_handler(SQLAlchemyError, _handle_fault)  # never the SQL in the body
    # Runs in Starlette's outermost middleware, which re-raises after answering so the
    # server logs it too.
    app.add_exception_handler(Exception, _handle_unexpected)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses an endpoint can return."""
    descriptions = {
        403: "An input path outside the configured data roots (`path_not_allowed`); the "
        "message names the field, never a server path. Nothing is written.",
        413: "A request body over `max_body_bytes` (`payload_too_large`) or a frame over "
        "`max_image_pixels` (`image_too_large`); the message names the limit.",
        404: "An id or procedure that does not exist (`tracklet_not_found`, "
        "`procedure_not_found`, `job_not_found`), or a tracklet without a thumbnail "
        "(`thumbnail_not_found`).",
        409: "Stored embeddings were made by another encoder version (`encoder_mismatch`), "
        "or another writer changed the same procedure at the same time (`conflict`), or a "
        "tracklet's source frames cannot be read for a strip (`frames_unavailable`).",
        422: "Malformed request (`validation_error`) or unusable content such as an "
        "undecodable image (`invalid_input`).",
        500: "Unexpected server fault (`internal_error`); no internals in the body.",
        503: "The encoder model, the index or the job runner is not loaded (`not_ready`), or "
        "a size/histology probe the request needs is not installed (`probe_not_installed`); "
        "the message says how to build it. Also a read-only store (`store_read_only`) or a "
        "database that fails (`store_unavailable`).",
        507: "No space left on the device holding the database or the index "
        "(`insufficient_storage`).",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


# What every endpoint behind an API key can answer besides its own errors
# (service/auth.py); given to ``include_router`` with the key dependency.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "No API key, or one that is unknown or revoked (`unauthorized`); "
        "send `Authorization: Bearer <token>`.",
    },
    403: {
        "model": ErrorBody,
        "description": "The API key's scope is too small for this endpoint (`forbidden`), "
        "or an input path outside the data roots (`path_not_allowed`).",
    },
    503: {
        "model": ErrorBody,
        "description": "Access cannot be checked because the database that holds the API "
        "keys does not answer (`auth_unavailable`; the service fails closed), or what the "
        "endpoint needs is not loaded (`not_ready`).",
    },
}

# What an endpoint that embeds query tracklets (search, re-ID, predict) can answer: an
# unknown id (404), another encoder version (409), a bad input (422), a fault (500), or a
# model, index or probe that is not loaded (503).
QUERY_ERRORS = error_responses(404, 409, 413, 422, 500, 503)
