"""API keys of the HTTP service, kept in the store's ``api_keys`` table.

A key has a unique name, a scope and a token. Scopes nest: ``admin`` implies
``write``, which implies ``read`` (:func:`scope_allows`). The token
(``pxk_`` + 43 URL-safe characters, 256 random bits) is returned once by
:func:`create_key`; only its SHA-256 is stored, so a leaked database does not leak
usable tokens, and a lost token cannot be shown again (revoke it, create another).
Names are never reused, so the audit trail (:mod:`indexer.audit`) always names one key.

Key changes are audited here (actor ``cli`` unless told otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy.exc import IntegrityError

from polypindex.indexer import audit
from polypindex.indexer.store import Store
from polypindex.indexer.store_access import (
    active_key_count,
    add_key,
    key_by_token_hash,
    key_rows,
    revoke_key_row,
)
from polypindex.indexer.tables import ApiKeyModel
from polypindex.model.core.errors import ConflictError, InvalidInputError, NotFoundError

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_PREFIX = "pxk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN_BYTES = 32


class KeyNotFoundError(NotFoundError):
    """No key has this name."""


class KeyExistsError(ConflictError):
    """A key (perhaps a revoked one) already has this name."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its token."""

    name: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "name": self.name,
            "scope": self.scope,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def scope_allows(granted: str, needed: str) -> bool:
    """Whether a key of scope ``granted`` may call an endpoint that needs ``needed``."""
    return SCOPES.index(_scope(granted)) >= SCOPES.index(_scope(needed))


def _scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise InvalidInputError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    return scope  # type: ignore[return-value]  # checked above


def token_hash(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _record(model: ApiKeyModel) -> ApiKey:
    return ApiKey(model.name, _scope(model.scope), model.created_at, model.revoked_at)


def create_key(store: Store, name: str, scope: str, *, actor: str = "cli") -> tuple[ApiKey, str]:
    """A new key ``name`` of ``scope``; returns it and its token (shown once, never stored).

    Raises:
        InvalidInputError: a bad name (1-64 of ``A-Z a-z 0-9 . _ -``) or scope.
        KeyExistsError: the name is taken (names are never reused).
    """
    if not _NAME.match(name):
        raise InvalidInputError(
            f"bad key name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    checked = _scope(scope)
    token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    try:
        model = add_key(store, name, checked, token_hash(token))
    except IntegrityError as exc:  # another process created it at the same moment
        raise KeyExistsError(f"a key named {name!r} exists already") from exc
    if model is None:
        raise KeyExistsError(f"a key named {name!r} exists already (names are not reused)")
    key = _record(model)
    audit.record(store, actor, "keys create", f"{name} ({checked})", 201)
    return key, token


def list_keys(store: Store, *, include_revoked: bool = True) -> list[ApiKey]:
    """The keys, oldest first (never their tokens)."""
    return [_record(m) for m in key_rows(store, include_revoked=include_revoked)]


def revoke_key(store: Store, name: str, *, actor: str = "cli") -> ApiKey:
    """Revoke ``name`` (its token stops working at once); revoking twice is a no-op.

    Raises:
        KeyNotFoundError: no key has this name.
    """
    model = revoke_key_row(store, name)
    if model is None:
        raise KeyNotFoundError(f"no key named {name[:80]!r}")
    key = _record(model)
    audit.record(store, actor, "keys revoke", name, 200)
    return key


def verify_token(store: Store, token: str) -> ApiKey | None:
    """The active key whose token this is, else ``None`` (unknown, malformed or revoked)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    digest = token_hash(token)
    model = key_by_token_hash(store, digest)
    # The lookup is by a hash the caller cannot steer; compare the digests in constant
    # time anyway before trusting the row.
    if model is None or not hmac.compare_digest(model.token_hash, digest):
        return None
    return _record(model) if model.revoked_at is None else None


def count_active_keys(store: Store) -> int:
    """How many keys are not revoked."""
    return active_key_count(store)
