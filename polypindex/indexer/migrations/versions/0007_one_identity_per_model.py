"""One encoder identity per model: legacy ``+bf16`` / ``+fp16`` versions become their base.

Releases before this one appended the runtime's precision to the encoder version, so a
store indexed on a BF16 CPU (OpenVINO) held ``<version>+bf16`` rows that an FP32 runtime
of the same model could not serve. The version now names the weights and preprocessing
only (docs/runtimes.md#one-identity-per-model): every ``procedures``, ``tracklets`` and
``tracklet_entities`` row of a suffixed version is renamed to its base. Where the same
procedure is stored under both (indexed once per precision), the suffixed copy is
dropped with its tracklets, predictions and entities: the base (FP32, the reference)
rows stay. The index generations on disk are derived and follow the store when opened.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

_SUFFIXES = ("+bf16", "+fp16")


def _drop_procedures(bind: sa.Connection, ids: list[int]) -> None:
    """Delete procedures ``ids`` and what hangs off them (explicitly: SQLite connections
    may run without foreign-key enforcement)."""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        params = {f"p{i}": v for i, v in enumerate(chunk)}
        marks = ", ".join(f":p{i}" for i in range(len(chunk)))
        tracklets = f"SELECT id FROM tracklets WHERE procedure_id IN ({marks})"
        for table in ("tracklet_entities", "tracklet_predictions"):
            bind.execute(sa.text(f"DELETE FROM {table} WHERE tracklet_id IN ({tracklets})"), params)
        bind.execute(
            sa.text(f"DELETE FROM tracklet_entities WHERE procedure_id IN ({marks})"), params
        )
        bind.execute(sa.text(f"DELETE FROM tracklets WHERE procedure_id IN ({marks})"), params)
        bind.execute(sa.text(f"DELETE FROM procedures WHERE id IN ({marks})"), params)


def upgrade() -> None:
    """Rename suffixed versions to their base, dropping copies the base already has."""
    bind = op.get_bind()
    for suffix in _SUFFIXES:
        cut = len(suffix)
        pattern = {"pattern": f"%{suffix}", "cut": cut}
        duplicates = bind.execute(
            sa.text(
                "SELECT p.id FROM procedures p WHERE p.encoder_version LIKE :pattern "
                "AND EXISTS (SELECT 1 FROM procedures q WHERE q.uid = p.uid AND "
                "q.encoder_version = substr(p.encoder_version, 1, "
                "length(p.encoder_version) - :cut))"
            ),
            pattern,
        ).scalars()
        _drop_procedures(bind, [int(i) for i in duplicates])
        for table in ("procedures", "tracklets", "tracklet_entities"):
            bind.execute(
                sa.text(
                    f"UPDATE {table} SET encoder_version = substr(encoder_version, 1, "
                    f"length(encoder_version) - :cut) WHERE encoder_version LIKE :pattern"
                ),
                pattern,
            )


def downgrade() -> None:
    # Which rows were suffixed is not recorded: the rename is not undone.
    pass
