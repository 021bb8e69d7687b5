"""a sweep records why it stopped launching trials (its trials kept failing alike)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 12:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("stopped", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("stopped")
