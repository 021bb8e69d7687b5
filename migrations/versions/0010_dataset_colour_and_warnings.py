"""datasets: the colour mode an upload was decoded in, warnings about it, and a status while a
large upload is decoded in the background (what decoding finds is unknown until then)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 21:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


FOUND_BY_DECODING = [
    ("kind", sa.String(length=20)),
    ("task", sa.String(length=20)),
    ("input_shape", sa.JSON()),
    ("num_train", sa.Integer()),
    ("num_test", sa.Integer()),
    ("checksum", sa.String(length=64)),
    ("size_bytes", sa.BigInteger()),
]


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("color", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("warnings", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        for name, kind in FOUND_BY_DECODING:
            batch.alter_column(name, existing_type=kind, nullable=True)
    # Every image dataset uploaded before colour was kept is grey.
    op.execute("UPDATE datasets SET color = 'grayscale' WHERE kind IN ('image_folder', 'idx')")


def downgrade() -> None:
    op.execute("DELETE FROM datasets WHERE status != 'ready'")
    with op.batch_alter_table("datasets") as batch:
        for name, kind in FOUND_BY_DECODING:
            batch.alter_column(name, existing_type=kind, nullable=False)
        batch.drop_column("heartbeat_at")
        batch.drop_column("error")
        batch.drop_column("status")
        batch.drop_column("warnings")
        batch.drop_column("color")
