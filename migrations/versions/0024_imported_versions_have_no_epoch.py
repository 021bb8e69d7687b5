"""an imported model version records no epoch (it was 0)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 09:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

versions = sa.table("model_versions", sa.column("epoch", sa.Integer), sa.column("selector", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("epoch", existing_type=sa.Integer(), nullable=True)
    op.execute(versions.update().where(versions.c.selector == "import").values(epoch=None))


def downgrade() -> None:
    op.execute(versions.update().where(versions.c.epoch.is_(None)).values(epoch=0))
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("epoch", existing_type=sa.Integer(), nullable=False)
