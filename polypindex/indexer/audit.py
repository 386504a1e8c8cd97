"""The audit trail: one row per write to the service (``audit`` table).

The HTTP service appends a row for every request that may change something (not
GET/HEAD/OPTIONS) to an endpoint that needs the ``write`` or ``admin`` scope (:mod:`polypindex.service.observability`), allowed or
not; :mod:`indexer.keys` appends one for each key created or revoked.
``polypindex audit`` reads them (:func:`recent`). A row says who (the key's name,
``open`` when the service runs without keys, ``anonymous`` / ``invalid-key`` when
refused, ``cli`` for the command line), what (method and route template, or the key
command), the target (path parameters, a created resource's ``Location``, a key
name), when (UTC) and the result (the HTTP status).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from polypindex.indexer.store import Store
from polypindex.indexer.store_access import add_audit_row, audit_rows
from polypindex.indexer.tables import AuditModel

_MAX_ACTOR, _MAX_ACTION, _MAX_TARGET, _MAX_REQUEST_ID = 64, 255, 512, 128


@dataclass(frozen=True)
class AuditEntry:
    """One audited write."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    status: int
    request_id: str | None

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "status": self.status,
            "request_id": self.request_id,
        }


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record(
    store: Store,
    actor: str,
    action: str,
    target: str | None,
    status: int,
    request_id: str | None = None,
) -> None:
    """Append one row (values longer than their column are cut)."""
    row = AuditModel(
        actor=_clip(actor, _MAX_ACTOR) or "",
        action=_clip(action, _MAX_ACTION) or "",
        target=_clip(target, _MAX_TARGET),
        status=int(status),
        request_id=_clip(request_id, _MAX_REQUEST_ID),
    )
    add_audit_row(store, row)


def recent(store: Store, limit: int = 50) -> list[AuditEntry]:
    """The newest ``limit`` rows, newest first."""
    return [
        AuditEntry(int(m.id), m.at, m.actor, m.action, m.target, int(m.status), m.request_id)
        for m in audit_rows(store, limit)
    ]
