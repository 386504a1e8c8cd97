"""Access control: API keys with scopes, checked by one dependency per router.

``app.include_router(router, dependencies=[Depends(require_scope("read"))])`` makes
every endpoint of ``router`` need a key of at least that scope (``admin`` ⊃ ``write``
⊃ ``read``; :mod:`polypindex.indexer.keys`), sent as ``Authorization: Bearer <token>``:

- no or a malformed header, an unknown or a revoked token: 401 ``unauthorized`` with
  ``WWW-Authenticate: Bearer``;
- a key whose scope is too small: 403 ``forbidden`` (``error="insufficient_scope"``).

The key's name goes on ``request.state.key_name`` (the request log, the audit), and a
request that may change something (not GET/HEAD/OPTIONS) to an endpoint needing ``write``
or more is marked for the audit trail (``request.state.audited``, written by
:mod:`polypindex.service.observability`).

Which mode the app runs in is decided at start-up (:func:`decide_auth_mode`):
``"keys"`` or ``"open"`` (no key is checked; the actor is ``"open"``). It fails closed:
in ``auto`` mode with a database that cannot be reached, whether keys exist is unknown,
so the app starts in ``keys`` mode, *undetermined*, and every scoped endpoint answers
503 ``auth_unavailable`` (:class:`AuthUnavailableError`) until a request finds the
database again (asked at most every :data:`RECHECK_SECONDS`); then the mode is decided
as at start-up. It never opens because the database is away. The only
endpoints without a scope are :data:`OPEN_PATHS` (health, probes, metrics, API docs); a
test walks ``app.routes`` and fails on any other route without one.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from polypindex.indexer.keys import Scope, count_active_keys, scope_allows, verify_token
from polypindex.indexer.store import Store
from polypindex.model.core.errors import ConfigError, PolypIndexError
from polypindex.service.settings import Settings

logger = logging.getLogger(__name__)

AuthMode = Literal["keys", "open"]
# Route paths answered without a key: health and the orchestrators' probes, Prometheus
# scraping, the API docs, the viewer page.
OPEN_PATHS = frozenset(
    {"/healthz", "/livez", "/readyz", "/metrics", "/openapi.json", "/docs"}
    | {"/docs/oauth2-redirect", "/redoc"}
    # the viewer's static page and assets: no data (its API calls carry the key)
    | {"/", "/ui", "/ui/{name}"}
)
# Requests audited: a method that changes something, on an endpoint needing write or admin
# (polling GET /jobs/{id} is not a write).
# An undetermined auth mode asks the database again at most this often (seconds).
RECHECK_SECONDS = 2.0
AUDITED_SCOPES = frozenset({"write", "admin"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REALM = 'Bearer realm="polypindex"'
_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `polypindex keys create NAME --scope read|write|admin`.",
)


class UnauthorizedError(PolypIndexError):
    """No valid API key (401): none sent, malformed, unknown or revoked."""

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        challenge = _REALM + (', error="invalid_token"' if invalid_token else "")
        self.headers = {"WWW-Authenticate": challenge}


class ForbiddenError(PolypIndexError):
    """A valid API key whose scope is too small for the endpoint (403)."""

    def __init__(self, message: str, needed: str) -> None:
        super().__init__(message)
        self.headers = {
            "WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{needed}"'
        }


class AuthUnavailableError(PolypIndexError):
    """Whether API keys are required cannot be told now: the database holding them does
    not answer (503 ``auth_unavailable``; the service fails closed)."""


class AuthConfigError(ConfigError):
    """The service would be reachable from other machines without any key."""


@dataclass(frozen=True)
class AuthState:
    """How the running app checks requests: ``mode`` and why (logged, in ``/healthz``).

    ``determined=False``: the database could not be asked whether keys exist; the mode is
    ``"keys"`` and scoped endpoints answer 503 until it can (:func:`current_auth`)."""

    mode: AuthMode
    reason: str
    determined: bool = True


UNDETERMINED = AuthState(
    "keys",
    "closed: the database that holds the API keys does not answer, so whether keys are "
    "required cannot be told; every endpoint needing a key answers 503 auth_unavailable "
    "until it answers",
    determined=False,
)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def decide_auth_mode(settings: Settings, store: Store | None) -> AuthState:
    """The mode the app runs in (see :attr:`Settings.auth`).

    Raises:
        AuthConfigError: ``auth="auto"``, a non-loopback ``host`` and no key in the store.
    """
    if settings.auth == "open":
        return AuthState("open", "open by configuration (POLYPINDEX_AUTH=open): no key is checked")
    if settings.auth == "keys":
        return AuthState("keys", "API keys required (POLYPINDEX_AUTH=keys)")
    loopback = is_loopback(settings.host)
    if store is None:  # cannot tell whether keys exist: closed, never open
        return UNDETERMINED
    try:
        n_keys = count_active_keys(store)
    except Exception:
        logger.warning("cannot count the API keys", exc_info=True)
        return UNDETERMINED
    if n_keys:
        return AuthState("keys", f"API keys required ({n_keys} active)")
    if loopback:
        return AuthState(
            "open",
            f"open: no API key exists and the service binds the loopback address "
            f"{settings.host}; create one (`polypindex keys create NAME --scope admin`) and "
            "restart to require keys",
        )
    raise AuthConfigError(
        f"refusing to serve on {settings.host} without API keys: anyone who reaches the port "
        "could index and delete procedures. Create a key first (`polypindex keys create NAME "
        "--scope admin`, against the same database), or bind 127.0.0.1, or open the service "
        "explicitly with POLYPINDEX_AUTH=open (only behind a proxy that authenticates)"
    )


_recheck_lock = threading.Lock()


def _key_store(state: Any) -> Store | None:
    """The store that holds the keys: the loaded one, else the one a re-check opened."""
    store: Store | None = getattr(state, "store", None)
    return store if store is not None else getattr(state, "key_store", None)


def current_auth(state: Any) -> AuthState | None:
    """The app's auth mode; an undetermined one is decided again when the database
    answers (at most every :data:`RECHECK_SECONDS`, one request at a time).

    Raises:
        AuthUnavailableError: the mode is still undetermined.
        AuthConfigError: the database answers now and holds no key, on a non-loopback host.
    """
    auth: AuthState | None = getattr(state, "auth", None)
    if auth is None or auth.determined:
        return auth
    with _recheck_lock:
        auth = state.auth
        now = time.monotonic()
        if not auth.determined and now - getattr(state, "auth_checked_at", 0.0) >= RECHECK_SECONDS:
            state.auth_checked_at = now
            state.auth = auth = _recheck(state)
    if not auth.determined:
        raise AuthUnavailableError(
            "cannot check access: the database that holds the API keys does not answer; "
            "try again later"
        )
    return auth


def _recheck(state: Any) -> AuthState:
    settings: Settings = state.settings
    store = _key_store(state)
    if store is None:
        try:
            store = Store(settings.database_url)
        except Exception:
            logger.warning("the database holding the API keys still does not answer")
            return UNDETERMINED
        state.key_store = store  # closed with the app (service/app.py)
    try:
        auth = decide_auth_mode(settings, store)
    except AuthConfigError as exc:  # no key and a public host: stay closed, say why
        logger.error("%s", exc)
        return UNDETERMINED
    if auth.determined:
        (logger.warning if auth.mode == "open" else logger.info)("access: %s", auth.reason)
    return auth


def _authenticate(request: Request, token: str | None, needed: Scope) -> str:
    """The name of the request's key, checked for ``needed``; or an auth error."""
    state = request.app.state
    auth = current_auth(state)
    if auth is not None and auth.mode == "open":
        return "open"
    if not token:
        raise UnauthorizedError(
            f"this endpoint needs an API key with scope {needed!r}: send "
            "'Authorization: Bearer <token>' (an operator creates keys with "
            "`polypindex keys create`)"
        )
    store = _key_store(state)
    if store is None:
        raise AuthUnavailableError("cannot check the API key: the database is not loaded")
    key = verify_token(store, token)
    if key is None:
        request.state.key_name = "invalid-key"
        raise UnauthorizedError("the API key is not valid (unknown or revoked)", invalid_token=True)
    request.state.key_name = key.name
    if not scope_allows(key.scope, needed):
        raise ForbiddenError(
            f"the key {key.name!r} has scope {key.scope!r}; this endpoint needs {needed!r}",
            needed,
        )
    return key.name


def require_scope(scope: Scope) -> Callable[..., None]:
    """A dependency that lets a request through only with a key of at least ``scope``.

    Use it on a whole router: ``app.include_router(r, dependencies=[Depends(require_scope(
    "read"))])``. The returned function carries ``required_scope`` (read by the tests'
    auth matrix).
    """
    if scope not in ("read", "write", "admin"):
        raise ValueError(f"unknown scope {scope!r}")

    def check_api_key(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if getattr(request.state, "checked_scope", None) == scope:
            return  # checked before the body was read (service.limits.AuthFirstMiddleware)
        if scope in AUDITED_SCOPES and request.method not in SAFE_METHODS:
            request.state.audited = True  # before the check: refusals are audited too
        token = credentials.credentials if credentials is not None else None
        request.state.key_name = _authenticate(request, token, scope)

    check_api_key.required_scope = scope  # type: ignore[attr-defined]
    return check_api_key


def authenticate_request(request: Request, needed: Scope) -> str:
    """What :func:`require_scope`'s dependency checks, from the request's headers alone
    (so before its body is read): the audit mark, then the key from
    ``Authorization: Bearer``. Marks the request checked for ``needed``, so the
    dependency does not check it again. Raises the dependency's errors."""
    if needed in AUDITED_SCOPES and request.method not in SAFE_METHODS:
        request.state.audited = True  # before the check: refusals are audited too
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    name = _authenticate(request, token if scheme.lower() == "bearer" else None, needed)
    request.state.key_name = name
    request.state.checked_scope = needed
    return name


def required_scope(dependency: object) -> str | None:
    """The scope a dependency made by :func:`require_scope` requires, else ``None``."""
    scope = getattr(dependency, "required_scope", None)
    return scope if isinstance(scope, str) else None


def preflight(settings: Settings) -> None:
    """Refuse, before the server binds, what start-up would refuse (:func:`decide_auth_mode`):
    a non-loopback ``host`` in ``auto`` mode with no key in the store. A database that
    cannot be opened is left to start-up (the service then starts degraded and closed)."""
    if settings.auth != "auto" or is_loopback(settings.host):
        return
    try:
        store = Store(settings.database_url)
    except Exception:
        logger.warning("cannot open the database to check for API keys", exc_info=True)
        return
    with store:
        decide_auth_mode(settings, store)
