"""API keys of the HTTP service and the audit trail of its writes.

``api_keys`` holds a name, a scope (``read``, ``write``, ``admin``) and the SHA-256
of each token (the token is shown once, at creation); ``audit`` one row per write
(HTTP writes and key changes): who, what, when and the answer's status.
"""

import sqlalchemy as sa
from alembic import op

from polypindex.indexer.migrations.columns import row_id

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    """Create ``api_keys`` and ``audit`` (with its time index)."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "audit",
        row_id(),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("target", sa.String(512), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_at", "audit", ["at"])


def downgrade() -> None:
    """Drop ``audit`` and ``api_keys``."""
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_table("audit")
    op.drop_table("api_keys")
