"""Column shapes the revisions share: the int64 row id and the cascading references.

Frozen: a revision must create the same schema for ever (the tests compare the migrated
schema with :mod:`indexer.tables`), so these are never edited; a new shape is a new function.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def row_id_type() -> sa.types.TypeEngine[int]:
    """int64 like FAISS ids; on SQLite exactly ``INTEGER``, which ``AUTOINCREMENT`` needs
    (and which guarantees ids are never reused: what the index catch-up relies on)."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def row_id() -> sa.Column[int]:
    """``id``: the int64 autoincrement primary key."""
    return sa.Column("id", row_id_type(), primary_key=True, autoincrement=True)


def cascade_ref(
    name: str, target: str, type_: sa.types.TypeEngine[int], **kwargs: Any
) -> sa.Column[int]:
    """``name`` referencing ``target`` (``table.column``), its rows deleted with the target's."""
    return sa.Column(name, type_, sa.ForeignKey(target, ondelete="CASCADE"), **kwargs)
