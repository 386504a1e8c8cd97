"""Polyp entities: each tracklet's entity within its procedure (docs/grouping.md).

A separate table rather than a tracklet column: the grouping depends on the
calibration, the method and the cut as well as on the embeddings, so
``polypindex index group`` recomputes it without touching the tracklets; the rows
leave with their tracklet or procedure (``ON DELETE CASCADE``).
"""

import sqlalchemy as sa
from alembic import op

from polypindex.indexer.migrations.columns import cascade_ref, row_id_type

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    """Create ``tracklet_entities`` and its procedure index."""
    op.create_table(
        "tracklet_entities",
        cascade_ref("tracklet_id", "tracklets.id", row_id_type(), primary_key=True),
        cascade_ref("procedure_id", "procedures.id", sa.Integer(), nullable=False),
        sa.Column("encoder_version", sa.String(255), nullable=False),
        sa.Column("entity", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("cut", sa.Float(), nullable=False),
        sa.Column("calibrated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tracklet_entities_procedure_id", "tracklet_entities", ["procedure_id"])


def downgrade() -> None:
    """Drop ``tracklet_entities``."""
    op.drop_index("ix_tracklet_entities_procedure_id", table_name="tracklet_entities")
    op.drop_table("tracklet_entities")
