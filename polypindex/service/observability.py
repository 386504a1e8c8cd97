"""Structured logs, request ids and the audit trail of writes.

:func:`configure_logging` (called by ``polypindex serve``) sends every log record of
the process, the server's and the libraries' included, to stderr as one JSON object
per line; SQLAlchemy's statement logging stays off (its engines also hide bound
parameters, ``indexer.store``). :class:`RequestMiddleware` gives each request an id
(the client's ``X-Request-ID`` when it is 1-128 of ``A-Z a-z 0-9 . _ : -``, else a new
one; echoed in the response header and put on every record logged while the request
runs), writes one ``request`` record when it ends (method, route template, status,
latency, key name; never the raw path, the body, frames or embeddings) and, for an
endpoint that needs the ``write`` or ``admin`` scope, appends its row to the audit table
(:mod:`polypindex.indexer.audit`): marked by the key check (``request.state.audited``,
:mod:`polypindex.service.auth`) or, when the request was refused before any key check
ran (a body over the size limit, a body that is not JSON), found here from the route it
went to (:func:`audited_route`); the actor of such a row is read from its
``Authorization`` header (the key's name, ``invalid-key``, ``anonymous``, or ``open``).

Records never carry absolute paths of the configured artefact folders: the formatter
rewrites them to ``$POLYPINDEX_HOME`` / ``<data root N>``. An exception's traceback is
scrubbed like an error body (:func:`scrub_traceback`): the text of a database error
(its SQL statement and parameters) and any other absolute path are cut from it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import fastapi.routing
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polypindex.indexer import audit
from polypindex.indexer.faults import public_message
from polypindex.indexer.keys import verify_token
from polypindex.indexer.store import Store
from polypindex.service.auth import AUDITED_SCOPES, SAFE_METHODS, required_scope

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("polypindex.access")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
request_id_var: ContextVar[str | None] = ContextVar("polypindex_request_id", default=None)
# Extra record attributes the JSON formatter writes (the request record's fields).
_EXTRA_FIELDS = ("method", "route", "status", "latency_ms", "key", "target")
_HANDLER_NAME = "polypindex-json"
# SQLAlchemy's "[SQL: ...]" and "[parameters: ...]" blocks (a statement may span lines)
_SQL_BLOCK = re.compile(r"\[(?:SQL|parameters): .*?\](?=[ \t]*(?:\n|$))", re.S)
# a traceback's frame line: the code's own file and line, kept
_FRAME_LINE = re.compile(r'^\s*File "[^"]+", line \d+')


def scrub_traceback(text: str) -> str:
    """A formatted traceback as the log may keep it: SQL statements and their parameters
    cut, absolute paths in its messages shortened to their last part (as in an error
    body, :func:`indexer.faults.public_message`); the frame lines (code file, line,
    function) are kept so the traceback still says where it failed."""
    text = _SQL_BLOCK.sub("[SQL hidden]", text)
    return "\n".join(
        line if _FRAME_LINE.match(line) else public_message(line) for line in text.split("\n")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, the request
    fields when present, and the exception; known folders replaced by their names.

    Args:
        scrub: ``(absolute folder, replacement)`` pairs rewritten in every record.
    """

    def __init__(self, scrub: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__()
        # longest first, so a folder inside another is rewritten by its own name
        self._scrub = sorted(((p, r) for p, r in scrub if len(p) > 1), key=lambda x: -len(x[0]))

    def _clean(self, text: str) -> str:
        for prefix, replacement in self._scrub:
            text = text.replace(prefix, replacement)
        return text

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._clean(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = scrub_traceback(self._clean(self.formatException(record.exc_info)))
        return json.dumps(out, default=str, ensure_ascii=False)


def scrub_pairs(home: Path, data_roots: Iterable[Path] = ()) -> list[tuple[str, str]]:
    """The folders :class:`JsonFormatter` rewrites: each data root, then ``home``."""
    pairs = [(str(Path(r).resolve()), f"<data root {i}>") for i, r in enumerate(data_roots)]
    pairs.append((str(Path(home).resolve()), "$POLYPINDEX_HOME"))
    return pairs


def configure_logging(
    level: str = "INFO", stream: IO[str] | None = None, scrub: Sequence[tuple[str, str]] = ()
) -> logging.Handler:
    """Send every record to ``stream`` (stderr) as JSON lines; returns the handler.

    Idempotent (replaces the handler it installed before). uvicorn's own access log is
    silenced (the ``request`` records replace it) and SQLAlchemy's engine logging is
    held at WARNING, so statements and their parameters are never logged.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter(scrub))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True
    for name in ("sqlalchemy.engine", "sqlalchemy.pool", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def request_id_from(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if valid, else a new random id."""
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _audit_target(
    scope: Scope, location: str | None, found: dict[str, Any] | None = None
) -> str | None:
    params = scope.get("path_params") or found or {}
    if params:
        return ", ".join(f"{k}={v}" for k, v in params.items())
    return location


def app_routes(app: Any) -> list[Any]:
    """Every route of ``app``, included routers flattened (FastAPI includes them lazily:
    ``iter_route_contexts``), each with its inclusion's dependencies."""
    routes = getattr(app, "routes", None) or ()
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(iterate(routes) if iterate is not None else routes)


def audited_route(scope: Scope) -> tuple[bool, str | None, dict[str, Any]]:
    """Whether the request ``scope`` is a write to an endpoint needing ``write`` or
    ``admin`` (audited whatever happens to it), its route template and path parameters;
    read from the app's routes (included routers flattened), so before any dependency
    has run."""
    if scope.get("method", "GET") in SAFE_METHODS:
        return False, None, {}
    for route in app_routes(scope.get("app")):
        try:
            match, child = route.matches(scope)
        except Exception:  # a route kind that cannot match this scope
            continue
        if match != Match.FULL:
            continue
        scopes = {required_scope(getattr(d, "dependency", None)) for d in route.dependencies}
        template = str(getattr(route, "path", "<unmatched>"))
        return bool(scopes & AUDITED_SCOPES), template, dict(child.get("path_params") or {})
    return False, None, {}


def _actor(store: Store | None, app_state: Any, headers: Headers) -> str:
    """Who sent a write refused before its key was checked: the key's name, else
    ``invalid-key`` / ``anonymous`` (``open`` when the service checks no key)."""
    auth = getattr(app_state, "auth", None)
    if auth is not None and auth.mode == "open":
        return "open"
    scheme, token = get_authorization_scheme_param(headers.get("authorization"))
    if scheme.lower() != "bearer" or not token:
        return "anonymous"
    if store is None:
        return "invalid-key"  # cannot be checked; never trusted
    key = verify_token(store, token)
    return key.name if key is not None else "invalid-key"


def _write_audit(
    store: Store | None, row: dict[str, Any], app_state: Any = None, headers: Headers | None = None
) -> None:
    if store is None:
        store = getattr(app_state, "key_store", None)  # the auth re-check's (service/auth.py)
    if store is None:
        logger.error("audit row not written (the database is not loaded): %s", row["action"])
        return
    try:
        if row["actor"] is None:
            row = {**row, "actor": _actor(store, app_state, headers or Headers())}
        audit.record(store, **row)
    except Exception:
        logger.exception("audit row not written for %s", row["action"])


class RequestMiddleware:
    """Request id, one ``request`` log record per request, and the audit row of writes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500  # unless a response starts
        location: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                location = headers.get("location")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = str(getattr(route, "path", None) or "<unmatched>")
            key = state.get("key_name")
            access_logger.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "route": template,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - start) * 1000.0, 2),
                    "key": key,
                },
            )
            audited, params = bool(state.get("audited")), None
            if not audited or route is None:  # refused before routing (413) or the key check
                matched, found, params = audited_route(scope)
                audited = audited or matched
                template = template if route is not None else (found or template)
            if audited:
                checked = state.get("key_name") is not None or state.get("audited")
                row = {
                    "actor": key or ("anonymous" if checked else None),
                    "action": f"{scope.get('method')} {template}",
                    "target": _audit_target(scope, location, params),
                    "status": status,
                    "request_id": request_id,
                }
                app_state = getattr(scope.get("app"), "state", None)
                await run_in_threadpool(
                    _write_audit,
                    getattr(app_state, "store", None),
                    row,
                    app_state,
                    Headers(scope=scope),
                )
            request_id_var.reset(token)
