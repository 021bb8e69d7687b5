"""marks of the store a service moves to and of those it left; each worker's store

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 09:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("store_marks") as batch:
        batch.add_column(sa.Column("state", sa.String(length=8), server_default="current", nullable=False))
        batch.add_column(sa.Column("store_url", sa.String(length=1000), nullable=True))
        batch.add_column(sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("store", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("store")
    with op.batch_alter_table("store_marks") as batch:
        batch.drop_column("changed_at")
        batch.drop_column("store_url")
        batch.drop_column("state")
