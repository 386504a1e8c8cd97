"""The store's side of who may write and what they wrote: the ``api_keys`` rows of
:mod:`indexer.keys` and the ``audit`` rows of :mod:`indexer.audit`.

Part of the store layer (docs/architecture.md#the-store): the queries run in the
store's sessions; callers get detached rows (read them, do not write them), never a
session. The checks (names, scopes, token hashes, clipping) are the callers'.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from polypindex.indexer.store import Store
from polypindex.indexer.tables import ApiKeyModel, AuditModel

# -- api_keys ---------------------------------------------------------------------------


def add_key(store: Store, name: str, scope: str, token_hash: str) -> ApiKeyModel | None:
    """Insert a key row; ``None`` (nothing written) when a key already has this name.

    Raises:
        IntegrityError: another process inserted the same name meanwhile (rolled back).
    """
    with store.sessions.begin() as session:
        if session.scalar(select(ApiKeyModel.id).where(ApiKeyModel.name == name)) is not None:
            return None
        model = ApiKeyModel(name=name, scope=scope, token_hash=token_hash)
        session.add(model)
        session.flush()
        return model


def key_rows(store: Store, *, include_revoked: bool = True) -> list[ApiKeyModel]:
    """The key rows, oldest first."""
    query = select(ApiKeyModel).order_by(ApiKeyModel.id)
    if not include_revoked:
        query = query.where(ApiKeyModel.revoked_at.is_(None))
    with store.sessions() as session:
        return list(session.scalars(query))


def revoke_key_row(store: Store, name: str) -> ApiKeyModel | None:
    """Mark the key ``name`` revoked now unless it is already; ``None`` when there is none."""
    with store.sessions.begin() as session:
        model = session.scalar(select(ApiKeyModel).where(ApiKeyModel.name == name))
        if model is not None and model.revoked_at is None:
            model.revoked_at = datetime.now(UTC)
        return model


def key_by_token_hash(store: Store, token_hash: str) -> ApiKeyModel | None:
    """The key row whose token has this SHA-256 (revoked or not)."""
    query = select(ApiKeyModel).where(ApiKeyModel.token_hash == token_hash)
    with store.sessions() as session:
        return session.scalar(query)


def active_key_count(store: Store) -> int:
    """How many keys are not revoked."""
    query = select(func.count()).select_from(ApiKeyModel).where(ApiKeyModel.revoked_at.is_(None))
    with store.sessions() as session:
        return int(session.scalar(query) or 0)


# -- audit ------------------------------------------------------------------------------


def add_audit_row(store: Store, row: AuditModel) -> None:
    """Append one audit row, in its own transaction."""
    with store.sessions.begin() as session:
        session.add(row)


def audit_rows(store: Store, limit: int) -> list[AuditModel]:
    """The newest ``limit`` audit rows, newest first."""
    query = select(AuditModel).order_by(AuditModel.id.desc()).limit(max(0, limit))
    with store.sessions() as session:
        return list(session.scalars(query))
