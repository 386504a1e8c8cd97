"""A procedure may be stored once per encoder version (one row per index generation).

Indexing a procedure with a new encoder then adds a new generation beside the
old one instead of replacing it, so the old encoder keeps serving until it is
retired. ``procedures.uid`` is unique per ``encoder_version``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


# Names a reflected unnamed unique constraint on SQLite (databases made by create_all).
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    """Make ``procedures.uid`` unique per ``encoder_version`` instead of alone."""
    uniques = sa.inspect(op.get_bind()).get_unique_constraints("procedures")
    old = [u.get("name") or "uq_procedures_uid" for u in uniques if u["column_names"] == ["uid"]]
    with op.batch_alter_table("procedures", naming_convention=_NAMING) as batch:
        for name in old:
            batch.drop_constraint(name, type_="unique")
        batch.create_unique_constraint(
            "uq_procedures_uid_encoder_version", ["uid", "encoder_version"]
        )
    op.create_index("ix_procedures_uid", "procedures", ["uid"])


def downgrade() -> None:
    # Fails (unique violation) while a procedure is stored under two encoder versions:
    # delete one generation's rows first.
    op.drop_index("ix_procedures_uid", table_name="procedures")
    with op.batch_alter_table("procedures") as batch:
        batch.drop_constraint("uq_procedures_uid_encoder_version", type_="unique")
        batch.create_unique_constraint("uq_procedures_uid", ["uid"])
