"""datasets: the colour mode an upload was decoded in, and warnings about it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 21:30:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('color', sa.String(length=20), nullable=True))
        batch.add_column(sa.Column('warnings', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('warnings')
        batch.drop_column('color')
