"""Initial schema: procedures and tracklets (the embedding bytes and encoder version in each row)."""

import sqlalchemy as sa
from alembic import op

from polypindex.indexer.migrations.columns import cascade_ref, row_id

revision = "0001"
down_revision = None


def upgrade() -> None:
    """Create ``procedures`` and ``tracklets`` and their indexes."""
    op.create_table(
        "procedures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(255), nullable=False),
        sa.Column("dataset_id", sa.String(255), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("encoder_version", sa.String(255), nullable=False),
        sa.Column("n_tracklets", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("uid", name="uq_procedures_uid"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tracklets",
        row_id(),  # int64 like FAISS ids, never reused (columns.row_id_type)
        cascade_ref("procedure_id", "procedures.id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("identity_label", sa.String(255), nullable=True),
        sa.Column("start_frame", sa.Integer(), nullable=False),
        sa.Column("end_frame", sa.Integer(), nullable=False),
        sa.Column("n_frames", sa.Integer(), nullable=False),
        sa.Column("boxes_json", sa.Text(), nullable=False),
        sa.Column("thumbnail_path", sa.Text(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("encoder_version", sa.String(255), nullable=False),
        sa.Column("size_mm", sa.Float(), nullable=True),
        sa.Column("histology", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("procedure_id", "key", name="uq_tracklets_procedure_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tracklets_encoder_version_id", "tracklets", ["encoder_version", "id"])
    op.create_index("ix_tracklets_procedure_id", "tracklets", ["procedure_id"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_index("ix_tracklets_procedure_id", table_name="tracklets")
    op.drop_index("ix_tracklets_encoder_version_id", table_name="tracklets")
    op.drop_table("tracklets")
    op.drop_table("procedures")
