"""The change log replicas follow, and the lease of a running job.

``changes`` holds one row per write to a procedure (written, deleted, re-indexed with
``force``), numbered by a sequence that only grows: a replica's index records the
last number it applied and applies the rows after it (docs/store.md#replicas).
``jobs.heartbeat_at`` is the lease of a running job, renewed by its worker: only a job
whose lease expired is queued again by another runner.
"""

import sqlalchemy as sa
from alembic import op

from polypindex.indexer.migrations.columns import row_id

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    """Create ``changes`` (with its version index) and add ``jobs.heartbeat_at``."""
    op.create_table(
        "changes",
        row_id(),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("uid", sa.String(255), nullable=False),
        sa.Column("encoder_version", sa.String(255), nullable=True),
        sa.Column("added_json", sa.Text(), nullable=False),
        sa.Column("removed_json", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_encoder_version_id", "changes", ["encoder_version", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop ``jobs.heartbeat_at`` and ``changes``."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
    op.drop_index("ix_changes_encoder_version_id", table_name="changes")
    op.drop_table("changes")
