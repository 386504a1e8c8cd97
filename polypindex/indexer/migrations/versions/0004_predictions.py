"""Size and histology predictions of the installed probes, one row per tracklet and task.

A separate table rather than tracklet columns: predictions depend on the probe
as well as the embedding, so a new probe version re-predicts (``polypindex probe
apply``) without touching the tracklets, and the rows leave with their tracklet
(``ON DELETE CASCADE``).
"""

import sqlalchemy as sa
from alembic import op

from polypindex.indexer.migrations.columns import cascade_ref, row_id_type

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    """Create ``tracklet_predictions`` and its (task, label) index."""
    op.create_table(
        "tracklet_predictions",
        cascade_ref("tracklet_id", "tracklets.id", row_id_type(), primary_key=True),
        sa.Column("task", sa.String(32), primary_key=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("probe_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tracklet_predictions_task_label", "tracklet_predictions", ["task", "label"])


def downgrade() -> None:
    """Drop ``tracklet_predictions``."""
    op.drop_index("ix_tracklet_predictions_task_label", table_name="tracklet_predictions")
    op.drop_table("tracklet_predictions")
