"""why a sweep stopped launching trials by itself

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 03:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("stopped_reason", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("stopped_reason")
